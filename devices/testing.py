"""Devices for tests and offline demos: a beamline without any IOC.

- :func:`mock_beamline` — a profile's real device classes as disconnected fake-signal devices
  (``ophyd.sim.make_fake_device``): construction, names, PV prefixes, plan validation;
- :func:`wait_for` — poll a condition with a deadline (IOC restarts, reconnections);
- :class:`SimStage`, :class:`SimBeam` — in-process simulated motors (``ophyd.sim.SynAxis``,
  moves finish at once) and an always-on beam with a shutter that follows its commands,
  for running the plans end to end with the in-process detector
  (:func:`strainstream.devices.detectors.sim_frame_detector`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.sim import SynAxis
from ophyd.status import Status

__all__ = ["SimBeam", "SimShutter", "SimStage", "mock_beamline", "wait_for"]


def wait_for(pred: Callable[[], Any], timeout_s: float = 30.0, period_s: float = 0.05) -> bool:
    """Poll ``pred()`` until it is true (True) or ``timeout_s`` has passed (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(period_s)
    return False


def mock_beamline(profile: str = "sim", **kwargs: Any) -> dict[str, Any]:
    """The devices of beamline ``profile`` (:mod:`strainstream.beamlines`) with fake signals."""
    from strainstream.beamlines import make_devices

    return make_devices(profile, mock=True, **kwargs)


class SimShutter(Device):
    """A shutter that moves when told (``set("open")``/``set("close")``); starts closed, as
    the beam IOC does."""

    status = Cpt(Signal, value="Closed", kind="normal")
    open_status = "Open"

    def set(self, value: Any) -> Status:
        self.status.put("Open" if str(value).lower() == "open" else "Closed")
        st = Status(obj=self)
        st.set_finished()
        return st

    def open(self) -> Status:
        return self.set("open")

    def close(self) -> Status:
        return self.set("close")


class SimBeam(Device):
    """Ring current (constant) and a :class:`SimShutter`."""

    ring_current_mA = Cpt(Signal, value=400.0, kind="hinted")
    shutter = Cpt(SimShutter, "")


class SimStage(Device):
    """The endstation's axes as in-process simulated motors (same attribute names as
    :class:`strainstream.devices.motors.Endstation`)."""

    sample_x = Cpt(SynAxis, value=0.0)
    sample_y = Cpt(SynAxis, value=0.0)
    sample_z = Cpt(SynAxis, value=0.0)
    theta = Cpt(SynAxis, value=0.0)
    zp_z = Cpt(SynAxis, value=49.0)
    det_z = Cpt(SynAxis, value=1000.0)
    sample_inout = Cpt(SynAxis, value=0.0)
    energy = Cpt(SynAxis, value=8350.0)
