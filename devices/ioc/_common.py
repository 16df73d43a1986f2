"""Shared pieces of the simulated-beamline caproto IOCs.

* :func:`patch_caproto_tcp` — caproto 1.3.0's asyncio server neither pins its server port
  nor sets TCP_NODELAY explicitly on its client sockets; the patch sets TCP_NODELAY on every
  accepted connection (``STRAINSTREAM_IOC_NODELAY=0`` forces it *off*, for the benchmark) and
  makes a busy port an error instead of caproto's silent fall-back to a random port.
* motors: :mod:`strainstream.devices.ioc._motor`.
* :class:`AreaDetectorGroup` — an areaDetector IOC's stock record set: the driver
  (``cam1:``: Acquire, AcquireTime, ImageMode, NumImages, TriggerMode, DetectorState_RBV,
  ArrayCounter_RBV, ArraySizeX/Y_RBV, DataType, Manufacturer/Model_RBV, ...) and an HDF5 file
  plugin (``HDF1:``: FilePath, FileName, FileTemplate, FileNumber, AutoIncrement,
  FileWriteMode, Capture, NumCapture, NumCaptured_RBV, FullFileName_RBV,
  FilePathExists_RBV, EnableCallbacks, ArrayCounter_RBV, SWMRMode, WriteStatus/Message),
  writing ``/entry/data/data`` like the real plugin; simulation controls under ``SIM:``.
* :class:`BeamGateMixin` — simulation controls ``SIM:BeamGate``, ``SIM:BeamMin_mA``,
  ``SIM:BeamOn_RBV`` of a detector that sees the beam IOC's photons (ring current and
  shutter, followed over Channel Access); each detector decides what a beam-off frame is.
* :func:`serve` — run one IOC on 127.0.0.1 and a given port, print one ``READY {json}`` line
  on stdout once the server listens, close detector files on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from caproto import ChannelType
from caproto.server import PVGroup, pvproperty

from strainstream.config import apply_environment, load_config

from .._hdf5 import H5FrameWriter

__all__ = ["AreaDetectorGroup", "BEAM_LINK_TIMEOUT_S", "BeamGateMixin", "MONITOR_FLUSH_S", "add_common_args", "long_string", "patch_caproto_tcp", "serve"]

_PATCHED: dict[str, Any] = {}
LONG_STRING = 1024
#: pause before a motor move / shutter / cycler command put completes, so the last monitor
#: update (caproto batches subscription updates for up to 10 ms) reaches monitoring clients
#: before the completion (ophyd devices here read these readbacks fresh anyway)
MONITOR_FLUSH_S = load_config().ioc_monitor_flush_s
#: how often an armed detector checks for its trigger / its next exposure's end, s
TRIGGER_POLL_S = 0.005
#: frames computed and written together in External trigger mode (at most)
MAX_BATCH_FRAMES = 32
#: External trigger mode: frames are computed and written in batches of about this much
#: acquisition time (the series' last frame at once): one write, one flush and one set of
#: counter updates per batch, as a detector's HDF5 plugin flushing every N frames
FRAME_BATCH_S = 0.01
#: longest a ``SIM:BeamGate`` = 1 put waits for the first ring-current and shutter values
BEAM_LINK_TIMEOUT_S = 5.0


def patch_caproto_tcp(port: int | None = None, nodelay: bool | None = None,
                      monitor_batch_s: float | None = None) -> None:
    """Patch caproto's asyncio server: TCP_NODELAY on client sockets, strict port binding,
    monitor updates sent within ``monitor_batch_s``.

    caproto's server holds each monitor update up to ``HIGH_LOAD_TIMEOUT`` (10 ms) for more
    to send with it, and doubles that limit after every batch while updates keep coming (a
    moving motor posts its readback every 10 ms): a move's ``DMOV`` = 1 then reached ophyd
    16 ms after a 41 ms motion ended on an idle machine, 30 ms under load. EPICS's own server
    (rsrv) sends monitors as they are posted; a 1 ms hold keeps caproto's batching for bursts
    (the fields one motor-record update writes) without that latency.

    Parameters
    ----------
    port : int, optional
        The port this IOC must use; binding any other port raises instead of caproto's
        silent random fall-back.
    nodelay : bool, optional
        Default from the configuration's ``ioc_nodelay`` (``STRAINSTREAM_IOC_NODELAY``).
    monitor_batch_s : float, optional
        Default from the configuration's ``ioc_monitor_batch_s``.
    """
    import caproto.asyncio.server as srv
    import caproto.server.common as common
    from caproto.asyncio.utils import _TransportWrapper

    config = load_config()
    if nodelay is None:
        nodelay = config.ioc_nodelay
    common.HIGH_LOAD_TIMEOUT = float(config.ioc_monitor_batch_s if monitor_batch_s is None
                                     else monitor_batch_s)
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


def long_string(value: str = "", doc: str = "", read_only: bool = False,
                name: str | None = None) -> pvproperty:
    """A string PV longer than CA's 40 characters (a CHAR waveform, UTF-8)."""
    return pvproperty(value=value, dtype=ChannelType.CHAR, max_length=LONG_STRING,
                      string_encoding="utf-8", doc=doc, read_only=read_only, name=name)


# ------------------------------------------------------------------------- detectors
DETECTOR_STATES = ["Idle", "Acquire", "Readout", "Correct", "Saving", "Aborting", "Error",
                   "Waiting", "Initializing", "Disconnected", "Aborted"]
DATA_TYPES = ["Int8", "UInt8", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64",
              "Float32", "Float64"]


def _enum(pv: str, strings: Sequence[str], value: str, doc: str = "", read_only: bool = False,
          record: str | None = None) -> pvproperty:
    return pvproperty(name=pv, value=value, dtype=ChannelType.ENUM, enum_strings=list(strings),
                      doc=doc, read_only=read_only, record=record)


def _num(pv: str, value: float | int, doc: str = "", read_only: bool = False, **kw) -> pvproperty:
    return pvproperty(name=pv, value=value, doc=doc, read_only=read_only, **kw)


def _text(pv: str, value: str = "", doc: str = "", read_only: bool = False) -> pvproperty:
    """A stringin/stringout record (DBR_STRING, <= 40 characters)."""
    return pvproperty(name=pv, value=value, dtype=ChannelType.STRING, doc=doc, read_only=read_only)


def _wave(pv: str, value: str = "", doc: str = "", read_only: bool = False) -> pvproperty:
    """A CHAR waveform holding a path or message, as areaDetector serves them."""
    return long_string(value, doc=doc, read_only=read_only, name=pv)


class AreaDetectorGroup(PVGroup):
    """An areaDetector IOC: the driver (``cam1:``) and one HDF5 file plugin (``HDF1:``).

    The PV names, types and semantics are those of ADCore's ``ADBase.template`` /
    ``NDFile.template`` / ``NDFileHDF5.template`` (the subset ophyd's ``AreaDetector``,
    ``SingleTrigger`` and ``HDF5Plugin`` + ``FileStoreHDF5IterativeWrite`` use): every
    settable ``X`` has its read-back ``X_RBV``.

    - ``cam1:Acquire`` = 1 takes ``NumImages`` frames (``ImageMode`` Multiple; one in Single,
      until stopped in Continuous); ``Acquire_RBV``/``DetectorState_RBV`` follow, and the put
      completes when the frames are taken (and written, with the plugin capturing:
      blocking callbacks). ``ArrayCounter_RBV`` counts frames.
    - ``cam1:TriggerMode`` External: ``Acquire`` = 1 arms the detector; the series starts at
      the pulse on its trigger input (:meth:`arm_trigger`, wired by the subclass) and
      runs on the detector's clock (``AcquirePeriod``, ``AcquireTime``); frames are written in
      batches of ``FRAME_BATCH_S`` of acquisition (at most ``MAX_BATCH_FRAMES``), each batch
      written once its last exposure has ended (the series' last batch at once). A batch is
      computed while it is exposed and checked against what it was computed from (the
      stage's motion, the beam, the counter) when it is written: recomputed if that changed.
    - ``HDF1:Capture`` = 1 (``FileWriteMode`` Stream) opens ``FileTemplate % (FilePath,
      FileName, FileNumber)`` (``FileNumber`` then increments with ``AutoIncrement``); each
      frame is appended to ``/entry/data/data`` (SWMR) with its NDAttributes (the simulated
      state it was computed from) in ``/entry/instrument/NDAttributes``; ``NumCaptured_RBV``
      counts them; ``NumCapture`` > 0 ends the capture after that many frames; Capture = 0
      closes the file. A file that cannot be opened leaves ``Capture_RBV`` at Done with
      ``WriteStatus`` "Write error" and the reason in ``WriteMessage``. ``FilePathExists_RBV``
      says whether ``FilePath`` is a directory (``CreateDirectory`` < 0 creates it at open).
    - Simulation controls (no real detector has them; not used to acquire): ``SIM:Noise``
      (1: counting noise, 0: expected counts rounded), ``SIM:Seed`` (frame n uses (Seed, n)).

    Subclasses implement :meth:`make_frame` and set ``det_name``, ``dtype``, ``scalar_keys``.
    ``make_frame(index)`` runs in the event loop and returns ``(compute, scalars)``: a
    zero-argument callable computing the frame (run in a worker thread, so motors and the
    cycler keep running meanwhile) and a dict of per-frame scalars.
    """

    #: names of the per-frame scalars (fixed per detector: SWMR cannot add datasets later)
    scalar_keys: tuple[str, ...] = ()
    det_name = "det"
    dtype = "uint32"
    manufacturer = "strainstream"
    model = "simulated"

    # -- driver (ADBase.template) -------------------------------------------------------
    cam_Acquire = _enum("cam1:Acquire", ["Done", "Acquire"], "Done",
                        doc="Acquire: take NumImages frames; the put completes when done")
    cam_Acquire_RBV = _enum("cam1:Acquire_RBV", ["Done", "Acquire"], "Done", read_only=True)
    cam_AcquireTime = _num("cam1:AcquireTime", 0.0, precision=4, doc="exposure (s)")
    cam_AcquireTime_RBV = _num("cam1:AcquireTime_RBV", 0.0, precision=4, read_only=True)
    cam_AcquirePeriod = _num("cam1:AcquirePeriod", 0.0, precision=4, doc="period (s)")
    cam_AcquirePeriod_RBV = _num("cam1:AcquirePeriod_RBV", 0.0, precision=4, read_only=True)
    cam_ImageMode = _enum("cam1:ImageMode", ["Single", "Multiple", "Continuous"], "Multiple")
    cam_ImageMode_RBV = _enum("cam1:ImageMode_RBV", ["Single", "Multiple", "Continuous"],
                              "Multiple", read_only=True)
    cam_NumImages = _num("cam1:NumImages", 1)
    cam_NumImages_RBV = _num("cam1:NumImages_RBV", 1, read_only=True)
    cam_NumImagesCounter_RBV = _num("cam1:NumImagesCounter_RBV", 0, read_only=True)
    cam_NumExposures = _num("cam1:NumExposures", 1)
    cam_NumExposures_RBV = _num("cam1:NumExposures_RBV", 1, read_only=True)
    cam_TriggerMode = _enum("cam1:TriggerMode", ["Internal", "External"], "Internal")
    cam_TriggerMode_RBV = _enum("cam1:TriggerMode_RBV", ["Internal", "External"], "Internal",
                                read_only=True)
    cam_DetectorState_RBV = _enum("cam1:DetectorState_RBV", DETECTOR_STATES, "Idle",
                                  read_only=True)
    cam_StatusMessage_RBV = _wave("cam1:StatusMessage_RBV", "Idle", read_only=True)
    cam_ArrayCounter = _num("cam1:ArrayCounter", 0)
    cam_ArrayCounter_RBV = _num("cam1:ArrayCounter_RBV", 0, read_only=True)
    cam_ArrayCallbacks = _enum("cam1:ArrayCallbacks", ["Disable", "Enable"], "Enable")
    cam_ArrayCallbacks_RBV = _enum("cam1:ArrayCallbacks_RBV", ["Disable", "Enable"], "Enable",
                                   read_only=True)
    cam_ArraySizeX_RBV = _num("cam1:ArraySizeX_RBV", 0, read_only=True)
    cam_ArraySizeY_RBV = _num("cam1:ArraySizeY_RBV", 0, read_only=True)
    cam_ArraySizeZ_RBV = _num("cam1:ArraySizeZ_RBV", 0, read_only=True)
    cam_MaxSizeX_RBV = _num("cam1:MaxSizeX_RBV", 0, read_only=True)
    cam_MaxSizeY_RBV = _num("cam1:MaxSizeY_RBV", 0, read_only=True)
    cam_DataType = _enum("cam1:DataType", DATA_TYPES, "UInt32")
    cam_DataType_RBV = _enum("cam1:DataType_RBV", DATA_TYPES, "UInt32", read_only=True,
                             record="mbbi")
    cam_Manufacturer_RBV = _text("cam1:Manufacturer_RBV", read_only=True)
    cam_Model_RBV = _text("cam1:Model_RBV", read_only=True)
    cam_PortName_RBV = _text("cam1:PortName_RBV", read_only=True)

    # -- HDF5 file plugin (NDPluginBase/NDFile/NDFileHDF5.template) -----------------------
    hdf_PluginType_RBV = _text("HDF1:PluginType_RBV", "NDFileHDF5", read_only=True)
    hdf_PortName_RBV = _text("HDF1:PortName_RBV", "FileHDF1", read_only=True)
    hdf_NDArrayPort = _text("HDF1:NDArrayPort", "")
    hdf_NDArrayPort_RBV = _text("HDF1:NDArrayPort_RBV", "", read_only=True)
    hdf_EnableCallbacks = _enum("HDF1:EnableCallbacks", ["Disable", "Enable"], "Enable")
    hdf_EnableCallbacks_RBV = _enum("HDF1:EnableCallbacks_RBV", ["Disable", "Enable"], "Enable",
                                    read_only=True)
    hdf_BlockingCallbacks = _enum("HDF1:BlockingCallbacks", ["No", "Yes"], "Yes")
    hdf_BlockingCallbacks_RBV = _enum("HDF1:BlockingCallbacks_RBV", ["No", "Yes"], "Yes",
                                      read_only=True)
    hdf_ArraySize0_RBV = _num("HDF1:ArraySize0_RBV", 0, read_only=True, doc="width of the last array")
    hdf_ArraySize1_RBV = _num("HDF1:ArraySize1_RBV", 0, read_only=True, doc="height of the last array")
    hdf_ArraySize2_RBV = _num("HDF1:ArraySize2_RBV", 0, read_only=True)
    hdf_NDimensions_RBV = _num("HDF1:NDimensions_RBV", 0, read_only=True)
    hdf_DataType_RBV = _enum("HDF1:DataType_RBV", DATA_TYPES, "UInt32", read_only=True)
    hdf_ArrayCounter = _num("HDF1:ArrayCounter", 0)
    hdf_ArrayCounter_RBV = _num("HDF1:ArrayCounter_RBV", 0, read_only=True)
    hdf_FilePath = _wave("HDF1:FilePath", doc="directory of the files (trailing /)")
    hdf_FilePath_RBV = _wave("HDF1:FilePath_RBV", read_only=True)
    hdf_FilePathExists_RBV = _enum("HDF1:FilePathExists_RBV", ["No", "Yes"], "No", read_only=True)
    hdf_CreateDirectory = _num("HDF1:CreateDirectory", 0,
                               doc="< 0: create up to -N missing levels of FilePath at open")
    hdf_CreateDirectory_RBV = _num("HDF1:CreateDirectory_RBV", 0, read_only=True)
    hdf_FileName = _wave("HDF1:FileName")
    hdf_FileName_RBV = _wave("HDF1:FileName_RBV", read_only=True)
    hdf_FileNumber = _num("HDF1:FileNumber", 0)
    hdf_FileNumber_RBV = _num("HDF1:FileNumber_RBV", 0, read_only=True)
    hdf_FileTemplate = _wave("HDF1:FileTemplate", "%s%s_%6.6d.h5")
    hdf_FileTemplate_RBV = _wave("HDF1:FileTemplate_RBV", "%s%s_%6.6d.h5", read_only=True)
    hdf_FullFileName_RBV = _wave("HDF1:FullFileName_RBV", read_only=True)
    hdf_AutoIncrement = _enum("HDF1:AutoIncrement", ["No", "Yes"], "Yes")
    hdf_AutoIncrement_RBV = _enum("HDF1:AutoIncrement_RBV", ["No", "Yes"], "Yes", read_only=True)
    hdf_AutoSave = _enum("HDF1:AutoSave", ["No", "Yes"], "Yes")
    hdf_AutoSave_RBV = _enum("HDF1:AutoSave_RBV", ["No", "Yes"], "Yes", read_only=True)
    hdf_FileWriteMode = _enum("HDF1:FileWriteMode", ["Single", "Capture", "Stream"], "Stream")
    hdf_FileWriteMode_RBV = _enum("HDF1:FileWriteMode_RBV", ["Single", "Capture", "Stream"],
                                  "Stream", read_only=True)
    hdf_Capture = _enum("HDF1:Capture", ["Done", "Capture"], "Done",
                        doc="Capture: open a new file and append every frame; Done: close it")
    hdf_Capture_RBV = _enum("HDF1:Capture_RBV", ["Done", "Capture"], "Done", read_only=True)
    hdf_NumCapture = _num("HDF1:NumCapture", 0, doc="frames per file (0: until Capture = 0)")
    hdf_NumCapture_RBV = _num("HDF1:NumCapture_RBV", 0, read_only=True)
    hdf_NumCaptured_RBV = _num("HDF1:NumCaptured_RBV", 0, read_only=True)
    hdf_WriteStatus = _enum("HDF1:WriteStatus", ["Write OK", "Write error"], "Write OK",
                            read_only=True)
    hdf_WriteMessage = _wave("HDF1:WriteMessage", read_only=True)
    hdf_SWMRMode = _enum("HDF1:SWMRMode", ["Off", "On"], "On")
    hdf_SWMRMode_RBV = _enum("HDF1:SWMRMode_RBV", ["Off", "On"], "On", read_only=True)
    hdf_LazyOpen = _enum("HDF1:LazyOpen", ["No", "Yes"], "No")
    hdf_LazyOpen_RBV = _enum("HDF1:LazyOpen_RBV", ["No", "Yes"], "No", read_only=True)

    # -- simulation controls ------------------------------------------------------------
    Noise = _num("SIM:Noise", 1, doc="1: counting noise, 0: expected counts (rounded)")
    Seed = _num("SIM:Seed", 0, doc="noise seed; frame n uses (Seed, ArrayCounter)")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.frame_shape: tuple[int, int] = (64, 64)
        self._writer: H5FrameWriter | None = None
        self._file_lock = asyncio.Lock()
        self._acquiring = False
        self._stop_requested = False
        self._initial_dir = "."
        # setpoint PV -> its _RBV (areaDetector's convention)
        self._rbv = {pv: self.pvdb[pv + "_RBV"] for pv in self.pvdb if pv + "_RBV" in self.pvdb}

    def configure(self, frame_shape: tuple[int, int], write_dir: str) -> None:
        """Set the frame shape and the initial file directory (before the server starts)."""
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self._initial_dir = str(Path(write_dir).resolve())

    def make_frame(self, index: int, t: float | None = None) -> tuple[Callable[[], np.ndarray], dict[str, float]]:
        raise NotImplementedError

    async def group_write(self, instance, value):
        """A put to a setting updates its ``_RBV`` (as the driver/plugin would)."""
        rbv = self._rbv.get(instance.pvname)
        if rbv is not None:
            await rbv.write(value)
        return value

    @cam_ArraySizeX_RBV.startup
    async def cam_ArraySizeX_RBV(self, instance, async_lib):
        rows, cols = self.frame_shape
        for prop, v in ((self.cam_ArraySizeX_RBV, cols), (self.cam_ArraySizeY_RBV, rows),
                        (self.cam_MaxSizeX_RBV, cols), (self.cam_MaxSizeY_RBV, rows),
                        (self.cam_ArraySizeZ_RBV, 0)):
            await prop.write(v)
        dtype = {"uint8": "UInt8", "uint16": "UInt16", "uint32": "UInt32", "int32": "Int32",
                 "float32": "Float32", "float64": "Float64"}[np.dtype(self.dtype).name]
        await self.cam_DataType.write(dtype)
        await self.hdf_DataType_RBV.write(dtype)
        # the plugin is primed (it has seen an array of this size, as after ophyd's warmup()):
        # ophyd's HDF5Plugin refuses to stage an unprimed plugin
        await self.hdf_ArraySize0_RBV.write(cols)
        await self.hdf_ArraySize1_RBV.write(rows)
        await self.hdf_NDimensions_RBV.write(2)
        await self.cam_Manufacturer_RBV.write(self.manufacturer)
        await self.cam_Model_RBV.write(f"{self.model} {self.det_name}"[:39])
        await self.cam_PortName_RBV.write(self.det_name.upper() + "1")
        await self.hdf_NDArrayPort.write(self.det_name.upper() + "1")
        path = self._initial_dir.rstrip("/") + "/"
        await self.hdf_FilePath.write(path)

    # -- file plugin ------------------------------------------------------------------------
    async def _set_path_exists(self) -> bool:
        exists = os.path.isdir(self.hdf_FilePath.value or "")
        await self.hdf_FilePathExists_RBV.write("Yes" if exists else "No")
        return exists

    @hdf_FilePath.putter
    async def hdf_FilePath(self, instance, value):
        if value and not value.endswith("/"):
            value += "/"
        await self.hdf_FilePath_RBV.write(value)
        exists = os.path.isdir(value)
        await self.hdf_FilePathExists_RBV.write("Yes" if exists else "No")
        return value

    async def _write_error(self, message: str) -> None:
        await self.hdf_WriteStatus.write("Write error")
        await self.hdf_WriteMessage.write(message[:LONG_STRING - 1])

    async def _open(self) -> None:
        self.close()
        mode = self.hdf_FileWriteMode.value
        if mode == "Single":
            raise ValueError("this simulated HDF5 plugin writes Stream or Capture mode only")
        d = self.hdf_FilePath.value or ""
        levels = -int(self.hdf_CreateDirectory.value)
        if d and not os.path.isdir(d) and levels > 0:
            missing = [p for p in [Path(d), *Path(d).parents] if not p.exists()]
            if len(missing) <= levels:  # areaDetector creates at most -CreateDirectory levels
                Path(d).mkdir(parents=True, exist_ok=True)
        if not await self._set_path_exists():
            raise FileNotFoundError(f"FilePath {d!r} is not a directory on the IOC host")
        template = self.hdf_FileTemplate.value or "%s%s_%6.6d.h5"
        number = int(self.hdf_FileNumber.value)
        path = template % (d, self.hdf_FileName.value or self.det_name, number)
        loop = asyncio.get_running_loop()
        self._writer = await loop.run_in_executor(
            None, lambda: H5FrameWriter(path, self.frame_shape, self.dtype,
                                        scalar_keys=self.scalar_keys))
        await self.hdf_FullFileName_RBV.write(str(self._writer.path))
        await self.hdf_NumCaptured_RBV.write(0)
        if self.hdf_AutoIncrement.value == "Yes":
            await self.hdf_FileNumber.write(number + 1)
        await self.hdf_WriteStatus.write("Write OK")
        await self.hdf_WriteMessage.write("")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    @hdf_Capture.putter
    async def hdf_Capture(self, instance, value):
        capture = value in ("Capture", 1)
        async with self._file_lock:
            if capture:
                try:
                    await self._open()
                except Exception as exc:
                    await self._write_error(f"cannot open file: {exc}")
                    await self.hdf_Capture_RBV.write("Done")
                    raise
            else:
                self.close()
            await self.hdf_Capture_RBV.write("Capture" if capture else "Done")
        return "Capture" if capture else "Done"

    async def _plugin_receive(self, frame: np.ndarray, scalars: dict[str, float]) -> None:
        """The HDF5 plugin gets one frame (blocking callbacks: before Acquire ends)."""
        await self._plugin_receive_many([frame], [scalars])

    # -- external trigger -----------------------------------------------------------------------
    def arm_trigger(self) -> asyncio.Future:
        """Arm the trigger input: a future set to the time of the next pulse
        (``time.monotonic()`` clock). Called before the Acquire put yields, so a pulse that
        follows the put is never missed. Subclasses wire it (e.g. to a motion's start)."""
        raise RuntimeError(f"{self.det_name}: nothing is wired to the external trigger input")

    async def _acquire_triggered(self, n: int | None, trigger: asyncio.Future) -> int:
        """``TriggerMode`` External: wait for the trigger, then take ``n`` frames timed by the
        detector's clock (frame ``i`` exposed from ``t_trigger + i · AcquirePeriod`` for
        ``AcquireTime``), each computed for the moment of its mid-exposure (``make_frame(index,
        t)``) and written when its exposure has ended, in batches. Returns the frames taken."""
        loop = asyncio.get_running_loop()
        try:
            while not trigger.done():
                if self._stop_requested:
                    return 0
                await asyncio.wait({trigger}, timeout=TRIGGER_POLL_S)
        finally:
            if not trigger.done():
                trigger.cancel()
        t0 = trigger.result()
        exposure = float(self.cam_AcquireTime.value)
        period = max(float(self.cam_AcquirePeriod.value), exposure)
        if period <= 0:
            raise ValueError("External trigger needs AcquirePeriod (or AcquireTime) > 0")
        exposure = exposure if exposure > 0 else period
        batch = max(1, min(MAX_BATCH_FRAMES, int(round(FRAME_BATCH_S / period))))

        def mid(i: int) -> float:  # frame i's mid-exposure (monotonic clock)
            return t0 + i * period + exposure / 2.0

        def jobs_for(first: int, count: int, counter: int) -> list:
            return [self.make_frame(counter + k, mid(first + k)) for k in range(count)]

        def compute(jobs: list) -> asyncio.Future:
            return loop.run_in_executor(None, lambda: [job() for job, _ in jobs])

        def batch_end(first: int) -> int:  # one past the last frame of the batch from ``first``
            return first + batch if n is None else min(first + batch, n)

        # the next batch is computed while it is exposed (where the stage will be is known from
        # its motion), then checked when its exposures have ended: if what it was computed
        # from changed meanwhile (motion re-aimed or stopped, beam lost, counter reset), it is
        # computed again; so the series' last frame is in the file a write after its exposure
        ahead: tuple[int, int, list, asyncio.Future] | None = None  # (first, counter, jobs, frames)
        taken = 0
        try:
            while (n is None or taken < n) and not self._stop_requested:
                now = time.monotonic()
                ended = int(math.floor((now - t0 - exposure) / period)) + 1  # exposures ended by now
                due = batch_end(taken)  # the next batch's frames
                if n is not None:
                    ended = min(ended, n)
                counter = int(self.cam_ArrayCounter_RBV.value)
                if ended < due:  # its last exposure has not ended yet
                    if ahead is None:
                        jobs = jobs_for(taken, due - taken, counter)
                        ahead = (taken, counter, jobs, compute(jobs))
                    await asyncio.sleep(min(max(t0 + (due - 1) * period + exposure - now, 0.0), TRIGGER_POLL_S))
                    continue
                mine = ahead is not None and ahead[:2] == (taken, counter)  # computed for these frames
                # the batch computed ahead (the rest follows), or all that ended (catching up)
                count = len(ahead[2]) if mine else min(ended - taken, MAX_BATCH_FRAMES)
                jobs = jobs_for(taken, count, counter)
                if mine and [sc for _, sc in ahead[2]] == [sc for _, sc in jobs]:
                    frames = await ahead[3]
                else:
                    frames = await compute(jobs)
                ahead = None
                nxt = taken + count  # the batch after: computed while this one is written
                end = batch_end(nxt)
                if end > nxt and not self._stop_requested:
                    later = jobs_for(nxt, end - nxt, counter + count)
                    ahead = (nxt, counter + count, later, compute(later))
                await self.cam_ArrayCounter_RBV.write(counter + len(jobs))
                await self.cam_ArrayCounter.write(counter + len(jobs), verify_value=False)
                await self._plugin_receive_many(frames, [sc for _, sc in jobs])
                taken += len(jobs)
                await self.cam_NumImagesCounter_RBV.write(taken)
        finally:
            if ahead is not None:  # (a stop: the frames computed ahead are not written)
                ahead[3].cancel()
        return taken

    async def _plugin_receive_many(self, frames: list[np.ndarray], scalars: list[dict[str, float]]) -> None:
        """The HDF5 plugin gets a batch of frames (one write and flush for the batch)."""
        if self.hdf_EnableCallbacks.value != "Enable" or self.cam_ArrayCallbacks.value != "Enable":
            return
        counter = int(self.hdf_ArrayCounter_RBV.value) + len(frames)
        await self.hdf_ArrayCounter_RBV.write(counter)
        await self.hdf_ArrayCounter.write(counter, verify_value=False)
        async with self._file_lock:
            writer = self._writer
            if writer is None or self.hdf_Capture_RBV.value != "Capture":
                return
            n_capture = int(self.hdf_NumCapture.value)
            if n_capture > 0:
                keep = max(n_capture - writer.count, 0)
                frames, scalars = frames[:keep], scalars[:keep]
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, lambda: writer.append_many(frames, scalars))
            except Exception as exc:
                await self._write_error(f"frames not written: {exc}")
                raise
            await self.hdf_NumCaptured_RBV.write(writer.count)
            if n_capture > 0 and writer.count >= n_capture:
                self.close()
                await self.hdf_Capture_RBV.write("Done")
                await self.hdf_Capture.write("Done", verify_value=False)

    # -- driver -------------------------------------------------------------------------------
    @cam_Acquire.putter
    async def cam_Acquire(self, instance, value):
        if value in ("Done", 0):
            self._stop_requested = True
            return "Done"
        if self._acquiring:
            return "Acquire"
        self._acquiring, self._stop_requested = True, False
        trigger = None
        if self.cam_TriggerMode.value == "External":
            try:  # armed before the first await: a pulse right after this put is seen
                trigger = self.arm_trigger()
            except Exception as exc:
                self._acquiring = False
                await self.cam_StatusMessage_RBV.write(f"error: {exc}"[:LONG_STRING - 1])
                raise
        mode = self.cam_ImageMode.value
        n = 1 if mode == "Single" else (None if mode == "Continuous" else
                                        max(int(self.cam_NumImages.value), 1))
        loop = asyncio.get_running_loop()
        await self.cam_Acquire_RBV.write("Acquire")
        acquire_shown = loop.time()
        await self.cam_DetectorState_RBV.write("Acquire")
        await self.cam_NumImagesCounter_RBV.write(0)
        taken = 0
        try:
            if trigger is not None:
                taken = await self._acquire_triggered(n, trigger)
            while (n is None or taken < n) and not self._stop_requested:
                counter = int(self.cam_ArrayCounter_RBV.value)
                compute, scalars = self.make_frame(counter)
                t0 = loop.time()
                frame = await loop.run_in_executor(None, compute)
                t_exp = float(self.cam_AcquireTime.value)
                if t_exp > 0:
                    await asyncio.sleep(max(t_exp - (loop.time() - t0), 0.0))
                await self.cam_ArrayCounter_RBV.write(counter + 1)
                await self.cam_ArrayCounter.write(counter + 1, verify_value=False)
                await self._plugin_receive(frame, scalars)
                taken += 1
                await self.cam_NumImagesCounter_RBV.write(taken)
                period = float(self.cam_AcquirePeriod.value)
                if period > 0 and (n is None or taken < n):
                    await asyncio.sleep(max(period - (loop.time() - t0), 0.0))
            state = "Aborted" if self._stop_requested and (n is None or taken < n) else "Idle"
            await self.cam_StatusMessage_RBV.write("Acquisition aborted" if state == "Aborted" else "Idle")
        except Exception as exc:
            state = "Error"
            await self.cam_StatusMessage_RBV.write(f"error: {exc}"[:LONG_STRING - 1])
            raise
        finally:
            # let Acquire_RBV = Acquire reach monitoring clients (caproto batches updates for
            # ~10 ms) before Done: ophyd's SingleTrigger finishes on the 1 -> 0 edge
            await asyncio.sleep(max(MONITOR_FLUSH_S - (loop.time() - acquire_shown), 0.0))
            self._acquiring = False
            await self.cam_DetectorState_RBV.write(state)
            await self.cam_Acquire_RBV.write("Done")
        return "Done"


# ------------------------------------------------------------------------- beam gate
class _BeamWatch:
    """Ring current and shutter of the beam IOC, followed with caproto's threading client.

    The client reconnects by itself when the beam IOC restarts; while it is away the last
    known state is kept (the photons do not stop because a monitoring IOC died).
    """

    def __init__(self, beam_prefix: str) -> None:
        from caproto.threading.client import Context

        self.current_mA: float | None = None
        self.shutter_open: bool | None = None
        self._ctx = Context()
        cur, sh = self._ctx.get_pvs(beam_prefix + "ring_current_mA", beam_prefix + "shutter_status")
        self._subs = [cur.subscribe(), sh.subscribe(data_type=ChannelType.STRING)]
        # caproto holds subscription callbacks weakly: keep the bound methods alive here
        self._callbacks = [self._on_current, self._on_shutter]
        for sub, cb in zip(self._subs, self._callbacks, strict=True):
            sub.add_callback(cb)

    def _on_current(self, sub, response) -> None:
        self.current_mA = float(response.data[0])

    def _on_shutter(self, sub, response) -> None:
        value = response.data[0]
        self.shutter_open = (value.decode() if isinstance(value, bytes) else str(value)) == "Open"

    @property
    def heard(self) -> bool:
        """Whether both the ring current and the shutter status have arrived."""
        return self.current_mA is not None and self.shutter_open is not None

    def on(self, min_current_mA: float) -> bool:
        if not self.heard:
            return True  # not heard from the beam IOC yet: assume the beam is there
        return self.shutter_open and self.current_mA >= min_current_mA


class BeamGateMixin(PVGroup):
    """Mixin for a simulated detector (an :class:`AreaDetectorGroup` subclass) whose frames
    depend on the beam: ``SIM:`` controls no real detector has.

    - ``SIM:BeamGate`` (default 0): 1 makes the detector see the beam IOC's photons
      (``<parent prefix>BEAM:ring_current_mA`` and ``BEAM:shutter_status``, followed over
      Channel Access from the first put of 1 on). The put completes once both values have
      arrived (at most :data:`BEAM_LINK_TIMEOUT_S`; until then the beam counts as on).
    - ``SIM:BeamMin_mA`` (mA, default 1): ring current below which no photons arrive.
    - ``SIM:BeamOn_RBV``: 1 while photons reach the detector (updated at 10 Hz): the gate is
      0, or the ring current is at least ``BeamMin_mA`` and the shutter is ``Open`` (a moving
      shutter counts as closed).

    :meth:`beam_on` is what ``make_frame`` asks; what a beam-off frame holds is the
    detector's business (no photons: zeros for a photon counter, the dark current for an
    integrating camera). Put it before :class:`AreaDetectorGroup` in the bases.
    """

    BeamGate = _num("SIM:BeamGate", 0, doc="1: frames see the beam IOC's photons (no photons while "
                                           "the ring current is below BeamMin_mA or the shutter "
                                           "is not Open)")
    BeamMin_mA = _num("SIM:BeamMin_mA", 1.0, precision=2,
                      doc="ring current (mA) below which no photons arrive")
    BeamOn_RBV = _num("SIM:BeamOn_RBV", 1, read_only=True, doc="1 while photons reach the detector")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._beam_watch: _BeamWatch | None = None

    def beam_prefix(self) -> str:
        """PV prefix of the beam IOC (the beamline prefix of the IOC holding this detector)."""
        return self.parent.prefix + "BEAM:"

    @BeamGate.putter
    async def BeamGate(self, instance, value):
        if value and self._beam_watch is None:
            self._beam_watch = _BeamWatch(self.beam_prefix())
        if value:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + BEAM_LINK_TIMEOUT_S
            while not self._beam_watch.heard and loop.time() < deadline:
                await asyncio.sleep(0.02)
        return 1 if value else 0

    @BeamOn_RBV.scan(period=0.1, use_scan_field=False)
    async def BeamOn_RBV(self, instance, async_lib):
        on = int(self.beam_on())
        if instance.value != on:
            await instance.write(on)

    def beam_on(self) -> bool:
        """Whether photons reach the detector (always True unless ``BeamGate`` is 1)."""
        if not self.BeamGate.value or self._beam_watch is None:
            return True
        return self._beam_watch.on(float(self.BeamMin_mA.value))


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
