"""ophyd devices for the beam IOC (``<prefix>BEAM:``): ring current and shutter.

The ring current is a hinted, monitored signal, usable by bluesky suspenders, e.g.
``SuspendFloor(beam.ring_current_mA, 300, resume_thresh=390)``. The monochromator energy
is the ``energy`` motor of the endstation (:func:`strainstream.devices.motors.endstation`).
"""

from __future__ import annotations

from typing import Any

from ophyd import Component as Cpt
from ophyd import EpicsSignal, EpicsSignalRO
from ophyd.status import Status

from ._ioc import PUT_TIMEOUT_S, IOCDevice, ioc_guard, mock_device

__all__ = ["Beam", "BeamStatus", "Shutter", "beam"]

_OPEN = {"open", "1", "true"}
_CLOSE = {"close", "closed", "0", "false"}


class Shutter(IOCDevice):
    """Photon shutter: ``set("open")`` / ``set("close")`` finish when the shutter has moved.

    A real beamline's shutter is a subclass naming its own records and values
    (``command``/``status`` components, ``open_value``, ``close_value``, ``open_status``).
    """

    ioc_default_name = "beam"
    open_value, close_value, open_status = "Open", "Close", "Open"

    command = Cpt(EpicsSignal, "BEAM:shutter", string=True, put_complete=True, kind="omitted",
                  write_timeout=PUT_TIMEOUT_S)
    status = Cpt(EpicsSignalRO, "BEAM:shutter_status", string=True, kind="normal")

    def set(self, value: Any) -> Status:
        v = str(value).strip().lower()
        if v in _OPEN:
            target = self.open_value
        elif v in _CLOSE:
            target = self.close_value
        else:
            raise ValueError(f"{self.name}: shutter value must be 'open' or 'close', got {value!r}")
        with ioc_guard(self):
            return self.command.set(target)

    def open(self) -> Status:
        return self.set("open")

    def close(self) -> Status:
        return self.set("close")

    @property
    def is_open(self) -> bool:
        with ioc_guard(self):
            return self.status.get(use_monitor=False) == self.open_status


class BeamStatus(IOCDevice):
    """What the plans need of the beam: the storage-ring current (mA, monitored: suspenders)
    and the photon shutter. A real beamline subclasses it with its own records."""

    ioc_default_name = "beam"

    ring_current_mA = Cpt(EpicsSignalRO, "BEAM:ring_current_mA", kind="hinted", auto_monitor=True)
    shutter = Cpt(Shutter, "")

    def __init__(self, prefix: str = "", *, name: str, ioc_name=None, ioc_address=None,
                 **kwargs: Any) -> None:
        super().__init__(prefix, name=name, ioc_name=ioc_name, ioc_address=ioc_address, **kwargs)
        self.shutter.ioc_name, self.shutter.ioc_address = self.ioc_name, self.ioc_address


class Beam(BeamStatus):
    """The simulated beam IOC: ring current, shutter, and the beam-dump trigger (for
    suspender tests; a real ring has no such record)."""

    ring_nominal_mA = Cpt(EpicsSignal, "BEAM:ring_nominal_mA", kind="config")
    dump_duration_s = Cpt(EpicsSignal, "BEAM:dump_duration_s", kind="config")
    dump_cmd = Cpt(EpicsSignal, "BEAM:dump", put_complete=True, kind="omitted",
                  write_timeout=PUT_TIMEOUT_S)

    def dump(self, duration_s: float | None = None) -> Status:
        """Make the simulated beam dump (current 0 for ``duration_s``, then a 2 s ramp back)."""
        with ioc_guard(self):
            if duration_s is not None:
                self.dump_duration_s.put(float(duration_s), wait=True)
            return self.dump_cmd.set(1)


def beam(prefix: str = "SS:", *, name: str = "beam", ioc_address: str | None = None,
         mock: bool = False) -> Beam:
    """Factory: ring current + shutter (PVs ``<prefix>BEAM:*``); no connection is made here."""
    kw = dict(name=name, ioc_name="beam", ioc_address=ioc_address)
    if mock:
        return mock_device(Beam, prefix, **kw)
    return Beam(prefix, **kw)
