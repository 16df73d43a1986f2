"""ophyd devices for the endstation IOC's motors (``<prefix>ES:<motor>.VAL`` etc.).

:class:`IOCMotor` is a put-completion positioner on the motor-record-like PVs of
:mod:`strainstream.devices.ioc.endstation`: ``set(x)`` returns a status that finishes when
the IOC reports the move ended (the ``VAL`` put completes); a target outside the soft
limits ``[LLM, HLM]`` raises ``ophyd.utils.LimitError`` naming the motor, target, limits and
units before anything is sent (the IOC refuses such puts too). Factories:
:func:`motor`, :func:`endstation`.
"""

from __future__ import annotations

from typing import Any

from ophyd import Component as Cpt
from ophyd import EpicsSignal, EpicsSignalRO
from ophyd.pv_positioner import PVPositionerPC
from ophyd.utils.errors import LimitError

from ._ioc import IOCDevice, ioc_guard, mock_device

__all__ = ["Endstation", "IOCMotor", "MOTOR_NAMES", "endstation", "motor"]

MOTOR_NAMES = ("sample_x", "sample_y", "sample_z", "theta", "zp_z", "det_z", "sample_inout",
               "energy")


class IOCMotor(IOCDevice, PVPositionerPC):
    """A motor of the endstation IOC; ``prefix`` is the record name, e.g. ``SS:ES:sample_x``."""

    ioc_default_name = "endstation"

    # readbacks are read fresh (no cached monitor value): right after a put completion a
    # monitor update may still be in flight; subscriptions still get every update
    setpoint = Cpt(EpicsSignal, ".VAL", kind="normal")
    readback = Cpt(EpicsSignalRO, ".RBV", kind="hinted")
    dmov = Cpt(EpicsSignalRO, ".DMOV", kind="omitted")
    stop_signal = Cpt(EpicsSignal, ".STOP", kind="omitted")
    velocity = Cpt(EpicsSignal, ".VELO", kind="config")
    high_limit = Cpt(EpicsSignal, ".HLM", kind="config")
    low_limit = Cpt(EpicsSignal, ".LLM", kind="config")
    units = Cpt(EpicsSignalRO, ".EGU", kind="config", string=True)

    stop_value = 1

    def __init__(self, prefix: str = "", *, name: str, **kwargs: Any) -> None:
        super().__init__(prefix, name=name, **kwargs)
        self.readback.name = self.name  # the position appears as "<motor name>" in events

    @property
    def egu(self) -> str:
        with ioc_guard(self):
            return self.units.get()

    @property
    def limits(self) -> tuple[float, float]:
        with ioc_guard(self):
            return float(self.low_limit.get()), float(self.high_limit.get())

    def check_value(self, pos) -> None:
        low, high = self.limits
        if low < high and not (low <= pos <= high):
            raise LimitError(
                f"{self.name}: target {pos:g} {self.egu} is outside the soft limits "
                f"[{low:g}, {high:g}] {self.egu} ({self.prefix}.HLM/.LLM); move refused")

    def move(self, position, wait=True, timeout=None, moved_cb=None):
        self.check_value(position)
        with ioc_guard(self):
            return super().move(position, wait=wait, timeout=timeout, moved_cb=moved_cb)

    def set(self, new_position, *, timeout=None, moved_cb=None, wait=False):
        return self.move(new_position, wait=wait, timeout=timeout, moved_cb=moved_cb)

    @property
    def position(self):
        with ioc_guard(self):
            return self.readback.get()


class Endstation(IOCDevice):
    """All endstation motors; PV prefix ``<prefix>ES:``."""

    ioc_default_name = "endstation"

    sample_x = Cpt(IOCMotor, "ES:sample_x")
    sample_y = Cpt(IOCMotor, "ES:sample_y")
    sample_z = Cpt(IOCMotor, "ES:sample_z")
    theta = Cpt(IOCMotor, "ES:theta")
    zp_z = Cpt(IOCMotor, "ES:zp_z")
    det_z = Cpt(IOCMotor, "ES:det_z")
    sample_inout = Cpt(IOCMotor, "ES:sample_inout")
    energy = Cpt(IOCMotor, "ES:energy")

    def __init__(self, prefix: str = "", *, name: str, ioc_name=None, ioc_address=None,
                 **kwargs: Any) -> None:
        super().__init__(prefix, name=name, ioc_name=ioc_name, ioc_address=ioc_address, **kwargs)
        for cpt in self.component_names:
            m = getattr(self, cpt)
            m.ioc_name, m.ioc_address = self.ioc_name, self.ioc_address


def motor(prefix: str, motor_name: str, *, name: str | None = None,
          ioc_address: str | None = None, mock: bool = False) -> IOCMotor:
    """Factory: one endstation motor, e.g. ``motor("SS:", "sample_x")`` (no connection made).

    Parameters
    ----------
    prefix : str
        Beamline PV prefix (``SS:``); the record is ``<prefix>ES:<motor_name>``.
    motor_name : str
        One of :data:`MOTOR_NAMES`.
    name : str, optional
        ophyd name (default ``motor_name``).
    ioc_address : str, optional
        ``host:port`` of the endstation IOC, for error messages.
    mock : bool
        A fake (no CA) device for unit tests.
    """
    if motor_name not in MOTOR_NAMES:
        raise ValueError(f"unknown motor {motor_name!r}; choose one of {list(MOTOR_NAMES)}")
    kw = dict(name=name or motor_name, ioc_name="endstation", ioc_address=ioc_address)
    if mock:
        return mock_device(IOCMotor, f"{prefix}ES:{motor_name}", **kw)
    return IOCMotor(f"{prefix}ES:{motor_name}", **kw)


def endstation(prefix: str = "SS:", *, name: str = "es", ioc_address: str | None = None,
               mock: bool = False) -> Endstation:
    """Factory: all endstation motors (``es.sample_x``, ..., ``es.energy``); no connection made."""
    kw = dict(name=name, ioc_name="endstation", ioc_address=ioc_address)
    if mock:
        return mock_device(Endstation, prefix, **kw)
    return Endstation(prefix, **kw)
