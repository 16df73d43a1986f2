"""Common base of the IOC-backed ophyd devices: named errors for IOCs that do not answer.

Every IOC-backed device knows which IOC serves it (``ioc_name``, ``ioc_address`` such as
``127.0.0.1:5064``, and its prefix). A connection, read or put that times out or finds the
channel disconnected is re-raised as :class:`IOCNotAnswering` naming the IOC, its address,
the prefix and the PV, instead of ophyd's raw timeout.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterable
from typing import Any

from epics.ca import ChannelAccessException  # pyepics: "timed out waiting ... to connect"
from ophyd import Device
from ophyd.utils.errors import DisconnectedError

from strainstream.config import environment_value
from strainstream.errors import StrainstreamError

__all__ = ["IOCDevice", "IOCNotAnswering", "OperationTimeout", "check_connected", "ioc_guard", "mock_device",
           "existing_signals", "name_ioc_errors", "read_text"]

_PV_RE = re.compile(r"[A-Za-z0-9_:\-]+[:.][A-Za-z0-9_:\-.]+")


#: bound on a put (incl. pyepics' wait for the channel): ophyd's default is none, and a put
#: racing an IOC's death would otherwise wait for years instead of failing with a named error
PUT_TIMEOUT_S = 60.0


def read_text(signal: Any) -> str:
    """Read a CHAR-waveform string PV (a path, a message) from the IOC, whole.

    pyepics remembers the element count of a PV's last monitor update and asks a later
    ``get(use_monitor=False)`` for only that many elements: when the string has just grown
    (a new, longer file name whose monitor update is still in flight), the read returns the
    old length's prefix, e.g. ``'/'``. Asking for the channel's full length (``nelm``; the
    IOC sends the string up to its NUL) gives the IOC's current value.
    """
    pv = getattr(signal, "_read_pv", None)
    if pv is None:  # not a Channel Access signal (a mocked device in unit tests)
        return str(signal.get() or "")
    nelm = pv.nelm
    count = nelm if isinstance(nelm, int) and nelm > 0 else None
    return str(signal.get(use_monitor=False, as_string=True, count=count) or "")


class IOCNotAnswering(StrainstreamError, TimeoutError):
    """The IOC serving a device does not answer (not started, killed, wrong address)."""

    def __init__(self, ioc_name: str, address: str | None, prefix: str, pv: str | None,
                 detail: str = "") -> None:
        self.ioc_name, self.address, self.prefix, self.pv = ioc_name, address, prefix, pv
        where = address or f"(EPICS_CA_ADDR_LIST={environment_value('EPICS_CA_ADDR_LIST') or ''!r})"
        what = f"PV {pv} timed out" if pv else "no PV answered"
        msg = f"{ioc_name} IOC at {where} (prefix {prefix}) not answering: {what}"
        if detail:
            msg += f" [{detail}]"
        super().__init__(msg)


class OperationTimeout(StrainstreamError, TimeoutError):
    """An operation of a device (a move, a home) that did not end within its timeout while
    the device's IOC still answers: the device is slow or stuck, the IOC is not dead."""


_IOC_ERRORS = (TimeoutError, DisconnectedError, ChannelAccessException)


def _operation_timeout(exc: BaseException, device: Device, what: str) -> OperationTimeout | None:
    """An :class:`OperationTimeout` for ``exc`` when it is an ophyd status that timed out
    (``StatusTimeoutError``/``WaitTimeoutError``) on a device whose PVs are all connected;
    None otherwise (a dead IOC: the caller names it)."""
    from ophyd.utils.errors import StatusTimeoutError, WaitTimeoutError

    if not isinstance(exc, StatusTimeoutError | WaitTimeoutError):
        return None
    signals = existing_signals(device)
    if not signals or not all(getattr(sig, "connected", False) for sig in signals):
        return None
    where = ""
    readback = getattr(device, "user_readback", None)  # a motor: where it is now
    if readback is not None:
        try:
            egu = str(getattr(device, "egu", "") or "")
            where = f" (readback {float(readback.get()):g}{' ' + egu if egu else ''})"
        except Exception:  # (the message goes without it)
            pass
    return OperationTimeout(f"{device.name}: {what} did not end within its timeout{where}; its "
                            f"IOC answers (the device is slow or stuck): {exc}")


def existing_signals(device: Any) -> list:
    """The signals of ``device`` and its sub-devices that exist now. Never instantiates a
    lazy one: that would wait for its PV (ophyd's ``walk_signals`` does, for the lazy
    signals of sub-devices): naming a dead IOC's error must not touch the IOC, and a device
    built while its IOC is down lists what it made so far."""
    out = []
    for sig in list(getattr(device, "_signals", {}).values()):
        out.extend(existing_signals(sig) if hasattr(sig, "_signals") else [sig])
    return out


def _pv_from(exc: BaseException, device: Device) -> str | None:
    """The PV an ophyd error is about: by PV name, or by the ophyd name of one of our signals."""
    text = str(exc)
    best, best_len = None, 0
    for sig in existing_signals(device):
        for attr in ("pvname", "setpoint_pvname"):
            pv = getattr(sig, attr, None)
            if isinstance(pv, str) and pv and pv in text and len(pv) > best_len:
                best, best_len = pv, len(pv)
        pv = getattr(sig, "pvname", None)
        if isinstance(pv, str) and sig.name in text and len(sig.name) > best_len:
            best, best_len = pv, len(sig.name)
    if best is None:
        found = _PV_RE.findall(text)
        best = found[0].rstrip(".,;") if found else None
    return best


@contextlib.contextmanager
def ioc_guard(device: IOCDevice):
    """Re-raise ophyd timeouts/disconnections inside the block as :class:`IOCNotAnswering`."""
    try:
        yield
    except IOCNotAnswering:
        raise
    except _IOC_ERRORS as exc:
        raise device.ioc_error(exc) from exc


class IOCDevice(Device):
    """An ophyd ``Device`` served by one named IOC.

    Parameters (keyword-only, besides those of ``Device``)
    ----------
    ioc_name : str
        E.g. "cycler", "endstation", "beam" (used in error messages).
    ioc_address : str, optional
        ``host:port`` of the IOC (from :class:`strainstream.beamline.Beamline`).
    """

    ioc_default_name = "IOC"

    def __init__(self, prefix: str = "", *, ioc_name: str | None = None,
                 ioc_address: str | None = None, **kwargs: Any) -> None:
        self.ioc_name = ioc_name or self.ioc_default_name
        self.ioc_address = ioc_address
        super().__init__(prefix, **kwargs)

    def ioc_error(self, exc: BaseException) -> IOCNotAnswering:
        """An :class:`IOCNotAnswering` for an ophyd timeout/disconnection ``exc``."""
        root = self.root if isinstance(self.root, IOCDevice) else self
        return IOCNotAnswering(root.ioc_name, root.ioc_address, root.prefix,
                               _pv_from(exc, self), type(exc).__name__)

    def wait_for_connection(self, all_signals=False, timeout=2.0):
        try:
            return super().wait_for_connection(all_signals=all_signals, timeout=timeout)
        except TimeoutError as exc:
            raise self.ioc_error(exc) from exc

    def read(self):
        with ioc_guard(self):
            return super().read()

    def describe(self):
        with ioc_guard(self):
            return super().describe()

    def read_configuration(self):
        with ioc_guard(self):
            return super().read_configuration()

    def describe_configuration(self):
        with ioc_guard(self):
            return super().describe_configuration()


def name_ioc_errors(device: Device, methods: Iterable[str], *, ioc_name: str,
                    ioc_address: str | None = None, prefix: str | None = None) -> Device:
    """Give a stock ophyd device (class unchanged, e.g. ``EpicsMotor``) the named IOC errors.

    Each of ``methods`` of this one instance is wrapped: a timeout or disconnection inside
    it is re-raised as :class:`IOCNotAnswering` naming ``ioc_name``, ``ioc_address``,
    ``prefix`` (default the device's own) and the PV. Returns ``device``.
    """
    where = prefix if prefix is not None else device.prefix

    def guard(method):
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except (IOCNotAnswering, OperationTimeout):
                raise
            except _IOC_ERRORS as exc:
                slow = _operation_timeout(exc, device, method.__name__)
                if slow is not None:
                    raise slow from exc
                raise IOCNotAnswering(ioc_name, ioc_address, where, _pv_from(exc, device),
                                      type(exc).__name__) from exc
        return call

    for attr in methods:
        setattr(device, attr, guard(getattr(device, attr)))
    return device


def set_connection_timeout(seconds: float) -> None:
    """Give every ophyd EPICS signal created from now on ``seconds`` to connect its channel.

    ophyd resolves its class-wide default (1 s) when a signal is made, and areaDetector
    signals are made lazily, at their first use in a plan: under load 1 s was seen to be too
    short (``NumImages_RBV could not connect within 1.0-second timeout`` with the IOC up). The
    read/write timeouts and ``auto_monitor`` are kept as they are. The class default is set
    directly: ophyd's ``set_defaults`` refuses once any signal exists (the same process may
    have made devices before), and the default is only read when a signal is made.
    """
    from ophyd.signal import EpicsSignalBase

    EpicsSignalBase._EpicsSignalBase__default_connection_timeout = float(seconds)


def check_connected(device: IOCDevice, timeout: float = 2.0) -> IOCDevice:
    """Wait for all of ``device``'s PVs; raise :class:`IOCNotAnswering` naming the first missing one."""
    device.wait_for_connection(timeout=timeout)
    return device


def mock_device(cls: type[Device], prefix: str, **kwargs: Any) -> Device:
    """A disconnected stand-in of ``cls`` for unit tests (``ophyd.sim.make_fake_device``).

    Its EPICS signals are ``FakeEpicsSignal``s: ``sim_put`` sets readbacks, puts just
    store values; no Channel Access is involved.
    """
    from ophyd.sim import make_fake_device

    return make_fake_device(cls)(prefix, **kwargs)
