"""Shared pieces of the simulated-beamline caproto IOCs.

* :func:`patch_caproto_tcp` — caproto 1.3.0's asyncio server neither pins its server port
  nor sets TCP_NODELAY explicitly on its client sockets; the patch sets TCP_NODELAY on every
  accepted connection (``STRAINSTREAM_IOC_NODELAY=0`` forces it *off*, for the benchmark) and
  makes a busy port an error instead of caproto's silent fall-back to a random port.
* motors: :mod:`strainstream.devices.ioc._motor`.
* :class:`AreaDetectorGroup` — HDF5 file series PVs shared by every detector IOC: ``Capture``
  (1 opens a new file, 0 closes it), ``Acquire`` (one frame; the put completes when the
  frame is in the file), ``FileDir``, ``FileName``, ``FullFileName_RBV``, ``NumCaptured_RBV``,
  ``ArrayCounter_RBV``, ``Rows_RBV``, ``Cols_RBV``, ``Noise``, ``Status_RBV``; ``CheckDir`` (put 1:
  is ``FileDir`` a writable directory, how many bytes are free: ``DirStatus_RBV``,
  ``DirFree_RBV``), checked by the plans before a run starts.
* :func:`serve` — run one IOC on 127.0.0.1 and a given port, print one ``READY {json}`` line
  on stdout once the server listens, close detector files on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from caproto import ChannelType
from caproto.server import PVGroup, pvproperty

from strainstream.config import apply_environment, load_config

from .._hdf5 import DataDirError, H5FrameWriter, writable_dir_free_bytes

__all__ = ["AreaDetectorGroup", "MONITOR_FLUSH_S", "add_common_args", "long_string", "patch_caproto_tcp", "serve"]

_PATCHED: dict[str, Any] = {}
LONG_STRING = 1024
#: pause before a motor move / shutter / cycler command put completes, so the last monitor
#: update (caproto batches subscription updates for up to 10 ms) reaches monitoring clients
#: before the completion (ophyd devices here read these readbacks fresh anyway)
MONITOR_FLUSH_S = load_config().ioc_monitor_flush_s


def patch_caproto_tcp(port: int | None = None, nodelay: bool | None = None) -> None:
    """Patch caproto's asyncio server: TCP_NODELAY on client sockets, strict port binding.

    Parameters
    ----------
    port : int, optional
        The port this IOC must use; binding any other port raises instead of caproto's
        silent random fall-back.
    nodelay : bool, optional
        Default from the configuration's ``ioc_nodelay`` (``STRAINSTREAM_IOC_NODELAY``).
    """
    import caproto.asyncio.server as srv
    from caproto.asyncio.utils import _TransportWrapper

    if nodelay is None:
        nodelay = load_config().ioc_nodelay
    _PATCHED["nodelay"] = bool(nodelay)
    _PATCHED["port"] = port

    if "orig_bind" not in _PATCHED:
        _PATCHED["orig_bind"] = srv._create_bound_tcp_socket

        class _NoDelayTransport(_TransportWrapper):
            def __init__(self, reader, writer):
                super().__init__(reader, writer)
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY,
                                    1 if _PATCHED["nodelay"] else 0)

        async def _bind(addr, port_):
            want = _PATCHED.get("port")
            if want and port_ != want:
                raise RuntimeError(f"TCP port {want} on {addr} is in use; pick another --port")
            sock = await _PATCHED["orig_bind"](addr, port_)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if _PATCHED["nodelay"] else 0)
            return sock

        srv._create_bound_tcp_socket = _bind
        srv._TransportWrapper = _NoDelayTransport


def long_string(value: str = "", doc: str = "", read_only: bool = False) -> pvproperty:
    """A string PV longer than CA's 40 characters (a CHAR waveform, UTF-8)."""
    return pvproperty(value=value, dtype=ChannelType.CHAR, max_length=LONG_STRING,
                      string_encoding="utf-8", doc=doc, read_only=read_only)


# ------------------------------------------------------------------------- detectors
class AreaDetectorGroup(PVGroup):
    """File-series PVs of a detector IOC; subclasses implement :meth:`make_frame`.

    ``make_frame(index)`` runs in the event loop and must return ``(compute, scalars)``:
    a zero-argument callable computing the frame (run in a worker thread, so motors and the
    cycler keep running meanwhile) and a dict of per-frame scalars (the state the frame was
    computed from), written to ``/entry/instrument/NDAttributes/<key>``.
    """

    #: names of the per-frame scalars (fixed per detector: SWMR cannot add datasets later)
    scalar_keys: tuple[str, ...] = ()
    det_name = "det"
    dtype = "uint32"

    Acquire = pvproperty(value=0, doc="put 1: take one frame; completes when it is written")
    Capture = pvproperty(value=0, doc="1: open a new HDF5 file (series); 0: close it")
    FileDir = long_string(doc="directory of the HDF5 files")
    FileName = long_string(doc="file name of the next series ('' = automatic)")
    FullFileName_RBV = long_string(doc="full path of the current/last file", read_only=True)
    NumCaptured_RBV = pvproperty(value=0, read_only=True, doc="frames in the current file")
    ArrayCounter_RBV = pvproperty(value=0, read_only=True, doc="frames since IOC start")
    Rows_RBV = pvproperty(value=0, read_only=True)
    Cols_RBV = pvproperty(value=0, read_only=True)
    AcquireTime = pvproperty(value=0.0, precision=3, doc="extra exposure wait (s)")
    Noise = pvproperty(value=1, doc="1: counting noise, 0: expected counts (rounded)")
    Seed = pvproperty(value=0, doc="noise seed; frame n uses (Seed, ArrayCounter)")
    NextIndex = pvproperty(value=0, doc="put n <= NumCaptured: drop frames n.. of the file; the "
                                        "next frame is written at n (re-take after a rewind)")
    Status_RBV = long_string(value="idle", read_only=True)
    CheckDir = pvproperty(value=0, doc="put 1: check FileDir (created if missing, a probe file "
                                       "written and removed); see DirStatus_RBV, DirFree_RBV")
    DirStatus_RBV = long_string(value="unchecked", read_only=True,
                                doc="'ok' or the problem with FileDir (last CheckDir)")
    DirFree_RBV = pvproperty(value=0.0, read_only=True, doc="free bytes in FileDir (last CheckDir)")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.frame_shape: tuple[int, int] = (64, 64)
        self._writer: H5FrameWriter | None = None
        self._lock = asyncio.Lock()
        self._initial_dir = "."

    def configure(self, frame_shape: tuple[int, int], write_dir: str) -> None:
        """Set the frame shape and the initial file directory (before the server starts)."""
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self._initial_dir = str(Path(write_dir).resolve())

    def make_frame(self, index: int) -> tuple[Callable[[], np.ndarray], dict[str, float]]:
        raise NotImplementedError

    @Rows_RBV.startup
    async def Rows_RBV(self, instance, async_lib):
        await self.Rows_RBV.write(self.frame_shape[0])
        await self.Cols_RBV.write(self.frame_shape[1])
        await self.FileDir.write(self._initial_dir)

    async def _open(self) -> None:
        self.close()
        d = Path(self.FileDir.value or ".")
        fname = self.FileName.value or f"{self.det_name}_{uuid.uuid4().hex[:12]}.h5"
        path = d / fname
        self._writer = H5FrameWriter(path, self.frame_shape, self.dtype,
                                     scalar_keys=self.scalar_keys)
        await self.FileName.write("")
        await self.FullFileName_RBV.write(str(self._writer.path))
        await self.NumCaptured_RBV.write(0)
        await asyncio.sleep(MONITOR_FLUSH_S)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    @Capture.putter
    async def Capture(self, instance, value):
        async with self._lock:
            try:
                if value:
                    await self._open()
                else:
                    self.close()
            except Exception as exc:
                await self.Status_RBV.write(f"error: {exc}"[:LONG_STRING - 1])
                raise
        return 1 if value else 0

    @CheckDir.putter
    async def CheckDir(self, instance, value):
        if not value:
            return 0
        d = self.FileDir.value or "."
        loop = asyncio.get_running_loop()
        try:
            free = await loop.run_in_executor(None, writable_dir_free_bytes, d)
        except DataDirError as exc:
            await self.DirFree_RBV.write(0.0)
            await self.DirStatus_RBV.write(f"error: {exc}"[:LONG_STRING - 1])
        else:
            await self.DirFree_RBV.write(float(free))
            await self.DirStatus_RBV.write("ok")
        await asyncio.sleep(MONITOR_FLUSH_S)
        return 0

    @NextIndex.putter
    async def NextIndex(self, instance, value):
        async with self._lock:
            if self._writer is None:
                raise ValueError("no open file (Capture = 0)")
            writer = self._writer
            await asyncio.get_running_loop().run_in_executor(None, lambda: writer.rewind(int(value)))
            await self.NumCaptured_RBV.write(writer.count)
            await asyncio.sleep(MONITOR_FLUSH_S)
        return int(value)

    @Acquire.putter
    async def Acquire(self, instance, value):
        if not value:
            return 0
        async with self._lock:
            try:
                if self._writer is None:
                    await self._open()
                    await self.Capture.write(1, verify_value=False)
                counter = int(self.ArrayCounter_RBV.value)
                compute, scalars = self.make_frame(counter)
                await self.Status_RBV.write("acquiring")
                loop = asyncio.get_running_loop()
                frame, t_exp = await loop.run_in_executor(None, compute), float(self.AcquireTime.value)
                if t_exp > 0:
                    await asyncio.sleep(t_exp)
                writer = self._writer
                await loop.run_in_executor(None, lambda: writer.append(frame, scalars))
                await self.NumCaptured_RBV.write(writer.count)
                await self.ArrayCounter_RBV.write(counter + 1)
                await self.Status_RBV.write("idle")
            except Exception as exc:
                await self.Status_RBV.write(f"error: {exc}"[:LONG_STRING - 1])
                raise
        return 0


# ---------------------------------------------------------------------------- serving
def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--prefix", default="SS:", help="PV prefix of the beamline (default SS:)")
    ap.add_argument("--port", type=int, required=True, help="CA server port (TCP and UDP search)")
    ap.add_argument("--write-dir", default=".", help="directory for detector HDF5 files")
    ap.add_argument("--list-pvs", action="store_true", help="print the PV names and exit")
    ap.add_argument("--exit-with-parent", action="store_true",
                    help="shut down when the parent process dies (used by Beamline)")


def _watch_parent(ppid: int) -> None:
    """SIGTERM ourselves when the parent is gone (no orphaned IOCs after a crashed parent)."""
    import signal
    import threading
    import time

    def watch():
        while os.getppid() == ppid:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def serve(ioc: PVGroup, port: int, name: str, closers: Sequence[Callable[[], None]] = (),
          list_pvs: bool = False, exit_with_parent: bool = False) -> int:
    """Run ``ioc`` on 127.0.0.1:``port`` until SIGINT/SIGTERM; print ``READY {json}`` once up.

    SIGINT and SIGTERM both shut the server down cleanly (detector files closed), also when
    the process inherited an ignored SIGINT (background jobs of a non-interactive shell).
    With ``exit_with_parent`` the IOC also stops when its parent process dies.
    """
    import signal

    from caproto.asyncio.server import run

    if list_pvs:
        print("\n".join(sorted(ioc.pvdb)))
        return 0
    apply_environment({"EPICS_CA_SERVER_PORT": str(port), "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
                       "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
                       "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1"})
    patch_caproto_tcp(port)
    # beacons go to 127.0.0.1:5065; with no CA repeater there, each one logs a traceback
    logging.getLogger("caproto.ctx").addFilter(
        lambda record: not str(record.msg).startswith("Failed to send beacon"))

    async def ready(async_lib):
        print("READY " + json.dumps({"ioc": name, "port": port, "pid": os.getpid(),
                                     "pvs": len(ioc.pvdb), "nodelay": _PATCHED["nodelay"]}),
              flush=True)

    def _term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    if exit_with_parent:
        _watch_parent(os.getppid())
    try:
        run(ioc.pvdb, interfaces=["127.0.0.1"], startup_hook=ready)
    except KeyboardInterrupt:
        pass
    finally:
        for close in closers:
            try:
                close()
            except Exception as exc:  # report, keep closing the others
                print(f"{name}: closing failed: {exc}", file=sys.stderr)
    return 0
