"""The simulated beamline: caproto IOCs as subprocesses on loopback, and their ophyd devices.

Three IOCs (see :mod:`strainstream.devices.ioc`), each a ``python -m
strainstream.devices.ioc <name>`` subprocess bound to 127.0.0.1 with its own CA server port
(TCP and UDP search):

==============  ===========================================================================
``cycler``      ``<prefix>CYC:*`` cycler/potentiostat + ``<prefix>XRD:*`` operando XRD detector
``endstation``  ``<prefix>ES:<motor>.*`` motors and mono energy, ``<prefix>SXDM:*``, ``<prefix>TXM:*``
``beam``        ``<prefix>BEAM:*`` ring current and shutter
==============  ===========================================================================

:class:`Beamline` starts them (free ports unless given), waits until each prints its READY
line *and* answers a CA read, sets the client environment of this process
(``EPICS_CA_AUTO_ADDR_LIST=NO``, ``EPICS_CA_ADDR_LIST=127.0.0.1:<p1> ...``,
``EPICS_CAS_INTF_ADDR_LIST=127.0.0.1``) and stops them cleanly (SIGTERM, then SIGKILL after
a grace period); each IOC also exits by itself when this process dies. pyepics reads the
address list once, when its CA context is created: start the beamline before the first
Channel Access use in a process (and keep the same ports when
restarting an IOC with :meth:`Beamline.restart`).

CLI helpers for ``strainstream beamline up|status``: :func:`up` and :func:`status`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strainstream.config import IOC_NAMES, apply_environment, environment_value, process_environment
from strainstream.errors import StrainstreamError
from strainstream.supervisor import Supervisor, find_free_port

__all__ = ["IOC_NAMES", "PROBE_PVS", "Beamline", "BeamlineError", "client_env", "parse_ports",
           "probe"]


#: PVs (after the prefix) read by ``status``; the first one of each IOC is the start-up probe
PROBE_PVS: dict[str, tuple[str, ...]] = {
    "cycler": ("CYC:voltage_V", "CYC:soc", "CYC:capacity_mAh_g", "CYC:mode_RBV",
               "XRD:HDF1:NumCaptured_RBV", "XRD:HDF1:FullFileName_RBV"),
    "endstation": ("ES:sample_x.RBV", "ES:sample_y.RBV", "ES:sample_z.RBV", "ES:theta.RBV",
                   "ES:zp_z.RBV", "ES:det_z.RBV", "ES:sample_inout.RBV", "ES:energy.RBV",
                   "SXDM:HDF1:NumCaptured_RBV", "TXM:HDF1:NumCaptured_RBV"),
    "beam": ("BEAM:ring_current_mA", "BEAM:shutter_status"),
}

_ENV_LOCK = threading.Lock()
logger = logging.getLogger(__name__)


class BeamlineError(StrainstreamError, RuntimeError):
    """An IOC did not start, exited, or does not answer."""


def client_env(ports: Iterable[int], host: str = "127.0.0.1") -> dict[str, str]:
    """Channel Access client environment for IOCs on ``host`` at ``ports``."""
    return {
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CA_ADDR_LIST": " ".join(f"{host}:{p}" for p in ports),
        "EPICS_CAS_INTF_ADDR_LIST": host,
        "EPICS_CA_MAX_ARRAY_BYTES": "100000000",
    }


@contextlib.contextmanager
def _env(values: Mapping[str, str]):
    with _ENV_LOCK:
        old = apply_environment(values)
        try:
            yield
        finally:
            apply_environment(old)


def probe(pvs: Iterable[str], addresses: Iterable[str], timeout_s: float = 1.0
          ) -> dict[str, Any]:
    """Read ``pvs`` with caproto's sync client against ``addresses`` (``host:port``).

    Returns ``{pv: value}`` with ``None`` for PVs that did not answer within ``timeout_s``.
    """
    from caproto.sync.client import read

    env = {"EPICS_CA_AUTO_ADDR_LIST": "NO", "EPICS_CA_ADDR_LIST": " ".join(addresses)}
    out: dict[str, Any] = {}
    with _env(env):
        for pv in pvs:
            try:
                # repeater=False: caproto would otherwise spawn a caproto-repeater that
                # outlives this process and holds its stdout/stderr open (a caller
                # waiting for EOF on them would hang)
                data = read(pv, timeout=timeout_s, repeater=False).data
            except Exception:  # any failure means "not answering" here
                out[pv] = None
                continue
            out[pv] = _plain(data)
    return out


def _plain(data: Any) -> Any:
    """A CA reply's data as a plain Python value (char arrays become strings)."""
    dtype = getattr(data, "dtype", None)
    if dtype is None:  # DBR_STRING: a list of bytes
        items = [v.decode(errors="replace") if isinstance(v, bytes) else v for v in data]
        return items[0] if len(items) == 1 else items
    if dtype.itemsize == 1 and dtype.kind == "u":  # CHAR waveform carrying a string
        return bytes(data.tobytes()).split(b"\0")[0].decode(errors="replace")
    if data.size == 1:
        return data.reshape(-1)[0].item()
    return data.tolist()


def _warn_if_ca_context_exists(env: Mapping[str, str]) -> None:
    """pyepics fixes the address list when its CA context is created: say so if it is too late."""
    ca = sys.modules.get("epics.ca")
    if ca is None or getattr(ca, "libca", None) is None:
        return
    if environment_value("EPICS_CA_ADDR_LIST") != env["EPICS_CA_ADDR_LIST"]:
        logger.warning(
            "pyepics already created its Channel Access context with EPICS_CA_ADDR_LIST=%r; "
            "devices in this process will not find the new IOCs at %r. Start the Beamline "
            "before the first CA use, or reuse the same ports.",
            environment_value("EPICS_CA_ADDR_LIST"), env["EPICS_CA_ADDR_LIST"])


@dataclass
class _IOC:
    name: str
    port: int
    args: list[str]
    log_path: Path
    supervisor: Supervisor | None = None
    ready_info: dict = field(default_factory=dict)

    @property
    def proc(self) -> subprocess.Popen | None:
        """The IOC's process (``None`` before the first start and after a stop)."""
        return None if self.supervisor is None else self.supervisor.process


class Beamline:
    """Start/stop the simulated beamline's IOCs on loopback (context manager).

    Parameters
    ----------
    write_dir : path
        Directory where the detector IOCs write their HDF5 files (created).
    prefix : str
        PV prefix of the beamline (default ``SS:``).
    iocs : iterable of str
        Which IOCs to start (default all: cycler, endstation, beam).
    ports : mapping name -> port, optional
        Fixed CA server ports; missing ones are chosen free.
    xrd_shape, sxdm_shape, txm_shape : int
        Detector frame sizes (rows = cols): XRD 2048 (must divide 2048), SXDM 64, TXM 128.
    preset : str
        Coin-cell preset of the cycler (SC-NM91, SC-NC91, PC-NM91, PC-NC91).
    extra_args : mapping name -> list of str, optional
        More command-line options per IOC (e.g. ``{"endstation": ["--sxdm-state", "pristine"]}``).
    startup_timeout_s : float
        Time allowed for each IOC to answer.
    set_env : bool
        Set the CA client environment variables of this process (default True).
    log_dir : path, optional
        Where each IOC's stdout/stderr goes (``<name>.log``); default a temporary directory.
    nodelay : bool
        TCP_NODELAY on the IOCs' client sockets (False only to benchmark the difference).
    """

    def __init__(self, write_dir: str | os.PathLike, *, prefix: str = "SS:",
                 iocs: Iterable[str] = IOC_NAMES, ports: Mapping[str, int] | None = None,
                 xrd_shape: int = 2048, sxdm_shape: int = 64, txm_shape: int = 128,
                 preset: str = "SC-NM91", extra_args: Mapping[str, list[str]] | None = None,
                 startup_timeout_s: float = 60.0, set_env: bool = True,
                 log_dir: str | os.PathLike | None = None, nodelay: bool = True) -> None:
        self.write_dir = Path(write_dir).resolve()
        self.prefix = prefix
        names = list(iocs)
        unknown = set(names) - set(IOC_NAMES)
        if unknown:
            raise ValueError(f"unknown IOC(s) {sorted(unknown)}; choose from {list(IOC_NAMES)}")
        self.startup_timeout_s = float(startup_timeout_s)
        self.set_env = set_env
        self.nodelay = nodelay
        self._tmp = None
        if log_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="strainstream-iocs-")
            log_dir = self._tmp.name
        self.log_dir = Path(log_dir)
        ports = dict(ports or {})
        opts = {
            "cycler": ["--xrd-shape", str(xrd_shape), "--preset", preset],
            "endstation": ["--sxdm-shape", str(sxdm_shape), "--txm-shape", str(txm_shape)],
            "beam": [],
        }
        self.iocs: dict[str, _IOC] = {}
        used: set[int] = set()
        for name in names:
            port = int(ports.get(name) or 0)
            while not port or port in used:
                port = find_free_port(udp=True)
            used.add(port)
            args = opts[name] + list((extra_args or {}).get(name, []))
            self.iocs[name] = _IOC(name, port, args, self.log_dir / f"{name}.log")

    # ----------------------------------------------------------------- addresses
    @property
    def addresses(self) -> dict[str, str]:
        """``{ioc name: "127.0.0.1:<port>"}``."""
        return {n: f"127.0.0.1:{i.port}" for n, i in self.iocs.items()}

    @property
    def ports(self) -> dict[str, int]:
        return {n: i.port for n, i in self.iocs.items()}

    def client_env(self) -> dict[str, str]:
        """The CA client environment variables for these IOCs."""
        return client_env(self.ports.values())

    def pv_prefixes(self) -> dict[str, list[str]]:
        """PV prefixes served by each IOC."""
        p = self.prefix
        table = {"cycler": [f"{p}CYC:", f"{p}XRD:"],
                 "endstation": [f"{p}ES:", f"{p}SXDM:", f"{p}TXM:"],
                 "beam": [f"{p}BEAM:"]}
        return {n: table[n] for n in self.iocs}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Beamline:
        """Start every IOC, wait until each answers; on failure stop them and raise."""
        self.write_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.set_env:
            _warn_if_ca_context_exists(self.client_env())
            apply_environment(self.client_env())
        try:
            for ioc in self.iocs.values():
                self._spawn(ioc)
            for ioc in self.iocs.values():
                self._wait(ioc)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, ioc: _IOC) -> None:
        """Start the IOC process (its own process group, output in ``ioc.log_path``)."""
        env = process_environment({"STRAINSTREAM_IOC_NODELAY": "1" if self.nodelay else "0",
                                   "PYTHONUNBUFFERED": "1"})
        cmd = [sys.executable, "-m", "strainstream.devices.ioc", ioc.name, "--prefix",
               self.prefix, "--port", str(ioc.port), "--write-dir", str(self.write_dir),
               "--exit-with-parent", *ioc.args]
        if ioc.supervisor is None:  # stopped at interpreter exit: no orphaned IOCs if the caller
            ioc.supervisor = Supervisor(  # forgets (or crashes)
                f"{ioc.name} IOC on 127.0.0.1:{ioc.port}", ioc.log_path, stop_timeout_s=5.0,
                stop_at_exit=True, error=BeamlineError)
        ioc.ready_info = {}
        ioc.supervisor.start(cmd, env=env)

    def _wait(self, ioc: _IOC) -> None:
        """Wait for the IOC's ``READY {json}`` line, then for its first PV to answer."""
        deadline = time.monotonic() + self.startup_timeout_s
        try:
            line = ioc.supervisor.wait_ready(ready_line="READY ", timeout_s=self.startup_timeout_s,
                                             waiting_for="start", on_timeout="kill")
        except BeamlineError as exc:
            raise BeamlineError(self._failure(ioc, str(exc))) from None
        with contextlib.suppress(ValueError, IndexError):
            ioc.ready_info = json.loads(line.split("READY ", 1)[1])
        pv = self.prefix + PROBE_PVS[ioc.name][0]
        while True:
            if probe([pv], [f"127.0.0.1:{ioc.port}"], timeout_s=1.0)[pv] is not None:
                return
            if not ioc.supervisor.running or time.monotonic() > deadline:
                raise BeamlineError(self._failure(ioc, f"does not answer ({pv}) within "
                                                       f"{self.startup_timeout_s:g} s"))

    def _failure(self, ioc: _IOC, what: str) -> str:
        rc = ioc.supervisor.returncode if ioc.supervisor else None
        state = f"exited with code {rc}" if rc is not None else "still running"
        tail = ioc.supervisor.log_tail(1500) if ioc.supervisor else ""
        return f"{ioc.name} IOC on 127.0.0.1:{ioc.port}: {what} ({state}); log {ioc.log_path}:\n{tail}"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop all IOCs (SIGTERM: detector files are closed; SIGKILL after ``timeout_s``)."""
        running = [i.supervisor for i in self.iocs.values() if i.supervisor and i.supervisor.running]
        for sup in running:  # all asked at once, then each waited for
            with contextlib.suppress(ProcessLookupError):
                sup.send_signal(signal.SIGTERM)
        for ioc in self.iocs.values():
            if ioc.supervisor is not None:
                ioc.supervisor.stop(timeout_s)

    def kill(self, name: str) -> None:
        """SIGKILL one IOC (to test how clients see a dead IOC)."""
        ioc = self.iocs[name]
        if ioc.supervisor is not None:
            ioc.supervisor.kill()

    def restart(self, name: str, options: Mapping[str, str] | None = None) -> None:
        """(Re)start one IOC on its port and wait until it answers.

        ``options`` replace (or add) command-line options of the IOC from now on, e.g.
        ``{"--preset": "PC-NC91"}``: another coin cell on the cycler (clients reconnect to the
        same address, as after a real IOC reboot).
        """
        ioc = self.iocs[name]
        for opt, value in (options or {}).items():
            if opt in ioc.args:
                ioc.args[ioc.args.index(opt) + 1] = str(value)
            else:
                ioc.args += [opt, str(value)]
        if ioc.supervisor is not None:
            ioc.supervisor.stop(5.0)
        self._spawn(ioc)
        self._wait(ioc)

    def is_running(self, name: str) -> bool:
        ioc = self.iocs[name]
        return ioc.supervisor is not None and ioc.supervisor.running

    def __enter__(self) -> Beamline:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # ------------------------------------------------------------------- clients
    def status(self, timeout_s: float = 1.0) -> dict[str, dict[str, Any]]:
        """``{ioc: {pv: value or None}}`` for the :data:`PROBE_PVS` of each IOC."""
        return {n: probe([self.prefix + s for s in PROBE_PVS[n]], [a], timeout_s)
                for n, a in self.addresses.items()}

    def devices(self, write_dir: str | os.PathLike | None = None) -> dict[str, Any]:
        """ophyd devices for the running IOCs (not yet connected).

        Keys: ``cycler``, ``xrd`` (cycler IOC); ``es`` (motors incl. ``es.energy``), ``sxdm``,
        ``txm`` (endstation IOC); ``beam`` (beam IOC); ``<detector>_sim``: each simulated
        detector's simulation controls (sample changer, noise, seed). Detectors write to
        ``write_dir`` (default the beamline's).
        """
        from strainstream.beamlines import make_devices

        return make_devices("sim", iocs=self.iocs, prefix=self.prefix,
                            write_dir=write_dir or self.write_dir, addresses=self.addresses)


def parse_ports(text: str | None) -> dict[str, int]:
    """``"cycler=5064,beam=5068"`` -> ``{"cycler": 5064, "beam": 5068}`` (``{}`` for ``None``)."""
    out: dict[str, int] = {}
    if not text:
        return out
    for item in text.split(","):
        name, _, port = item.partition("=")
        if name.strip() not in IOC_NAMES or not port.strip().isdigit():
            raise ValueError(f"--ports wants name=port[,name=port...] with names {list(IOC_NAMES)}, "
                             f"got {item!r}")
        out[name.strip()] = int(port)
    return out
