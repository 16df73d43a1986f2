"""Building blocks for beamline profiles whose records are not the simulated beamline's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ophyd import Component as Cpt
from ophyd import EpicsMotor, EpicsSignal, EpicsSignalRO

from strainstream.devices._ioc import IOCDevice, mock_device
from strainstream.devices.beam import BeamStatus, Shutter
from strainstream.devices.motors import named_errors

__all__ = ["beam_status", "motor_stage"]


class _MotorStage(IOCDevice):
    def __init__(self, prefix: str = "", *, name: str, ioc_name=None, ioc_address=None,
                 **kwargs: Any) -> None:
        super().__init__(prefix, name=name, ioc_name=ioc_name, ioc_address=ioc_address, **kwargs)
        for cpt in self.component_names:
            named_errors(getattr(self, cpt), ioc_name=self.ioc_name, ioc_address=self.ioc_address)


def motor_stage(name: str, records: Mapping[str, str], *, ioc_name: str = "motors",
                mock: bool = False) -> Any:
    """An :class:`~strainstream.devices.motors.Endstation`-like container of stock
    ``EpicsMotor`` on the motor records ``records`` (``{attribute: full record name}``), e.g.
    ``{"sample_x": "XF:03IDC-ES{Ppmac:1-zpssx}Mtr", ...}``; the plans address the motors by
    attribute (``es.sample_x``)."""
    cls = type(f"{name.title().replace('_', '')}Stage", (_MotorStage,), {
        "ioc_default_name": ioc_name,
        "__doc__": f"Motors of the {name} profile (stock EpicsMotor).",
        **{attr: Cpt(EpicsMotor, record) for attr, record in records.items()},
    })
    if mock:
        return mock_device(cls, "", name=name, ioc_name=ioc_name)
    return cls("", name=name, ioc_name=ioc_name)


def beam_status(name: str, *, ring_current: str, shutter_command: str, shutter_status: str,
                open_value: str = "Open", close_value: str = "Close", open_status: str = "Open",
                ioc_name: str = "machine", mock: bool = False) -> BeamStatus:
    """A :class:`~strainstream.devices.beam.BeamStatus` on a facility's own records: ring
    current (mA) and photon shutter (command and status PVs with their values)."""
    shutter_cls = type("FacilityShutter", (Shutter,), {
        "command": Cpt(EpicsSignal, shutter_command, string=True, put_complete=True, kind="omitted"),
        "status": Cpt(EpicsSignalRO, shutter_status, string=True, kind="normal"),
        "open_value": open_value, "close_value": close_value, "open_status": open_status,
        "ioc_default_name": ioc_name,
    })
    cls = type("FacilityBeam", (BeamStatus,), {
        "ring_current_mA": Cpt(EpicsSignalRO, ring_current, kind="hinted", auto_monitor=True),
        "shutter": Cpt(shutter_cls, ""),
        "ioc_default_name": ioc_name,
    })
    if mock:
        return mock_device(cls, "", name=name, ioc_name=ioc_name)
    return cls("", name=name, ioc_name=ioc_name)


__all__ += ["named_errors"]
