"""ophyd device for the cycler/potentiostat IOC (``<prefix>CYC:``).

Set-points are configuration; ``voltage_V``, ``capacity_mAh_g`` and ``soc`` are hinted
readbacks. :meth:`Cycler.start_cc`, :meth:`Cycler.start_cv` and :meth:`Cycler.rest` return
statuses (usable with ``bps.mv``-free plans through ``bps.wait``); in plans the plain
signals work too: ``yield from bps.mv(cyc.mode, "CC", cyc.current_sp_mA_g, 20)`` then
``yield from bps.mv(cyc.start_cmd, 1)``.
"""

from __future__ import annotations

from typing import Any

from ophyd import Component as Cpt
from ophyd import EpicsSignal, EpicsSignalRO
from ophyd.status import Status

from ._ioc import PUT_TIMEOUT_S, IOCDevice, ioc_guard, mock_device

__all__ = ["Cycler", "cycler"]


class Cycler(IOCDevice):
    """Battery cycler of the simulated coin cell."""

    ioc_default_name = "cycler"

    mode = Cpt(EpicsSignal, "CYC:mode", string=True, kind="config")
    current_sp_mA_g = Cpt(EpicsSignal, "CYC:current_sp_mA_g", kind="config")
    voltage_sp_V = Cpt(EpicsSignal, "CYC:voltage_sp_V", kind="config")
    v_max_V = Cpt(EpicsSignal, "CYC:v_max_V", kind="config")
    v_min_V = Cpt(EpicsSignal, "CYC:v_min_V", kind="config")
    then_cv = Cpt(EpicsSignal, "CYC:then_cv", kind="config")
    #: a started step ends after this many s of cell time (the cycler's step timer; 0: none)
    step_time_s = Cpt(EpicsSignal, "CYC:step_time_s", kind="config")
    accel = Cpt(EpicsSignal, "CYC:accel", kind="config")
    preset = Cpt(EpicsSignalRO, "CYC:preset", string=True, kind="config")
    mass_mg = Cpt(EpicsSignalRO, "CYC:mass_mg", kind="config")
    start_cmd = Cpt(EpicsSignal, "CYC:start", put_complete=True, kind="omitted",
                  write_timeout=PUT_TIMEOUT_S)
    stop_cmd = Cpt(EpicsSignal, "CYC:stop", put_complete=True, kind="omitted",
                  write_timeout=PUT_TIMEOUT_S)
    reset_cmd = Cpt(EpicsSignal, "CYC:reset", put_complete=True, kind="omitted",
                  write_timeout=PUT_TIMEOUT_S)

    voltage_V = Cpt(EpicsSignalRO, "CYC:voltage_V", kind="hinted", auto_monitor=True)
    current_mA = Cpt(EpicsSignalRO, "CYC:current_mA", kind="normal", auto_monitor=True)
    current_mA_g = Cpt(EpicsSignalRO, "CYC:current_mA_g", kind="normal", auto_monitor=True)
    capacity_mAh_g = Cpt(EpicsSignalRO, "CYC:capacity_mAh_g", kind="hinted", auto_monitor=True)
    charge_capacity_mAh_g = Cpt(EpicsSignalRO, "CYC:charge_capacity_mAh_g", kind="normal",
                                auto_monitor=True)
    #: net energy put into the cell, ∫V dQ (mWh/g; charge +, discharge −), counted by the cycler
    energy_mWh_g = Cpt(EpicsSignalRO, "CYC:energy_mWh_g", kind="normal", auto_monitor=True)
    soc = Cpt(EpicsSignalRO, "CYC:soc", kind="hinted", auto_monitor=True)
    cycle = Cpt(EpicsSignalRO, "CYC:cycle", kind="normal", auto_monitor=True)
    time_s = Cpt(EpicsSignalRO, "CYC:time_s", kind="normal", auto_monitor=True)
    mode_rbv = Cpt(EpicsSignalRO, "CYC:mode_RBV", string=True, kind="normal", auto_monitor=True)
    running = Cpt(EpicsSignalRO, "CYC:running", kind="omitted", auto_monitor=True)
    limit_hits = Cpt(EpicsSignalRO, "CYC:limit_hits", kind="omitted", auto_monitor=True)

    def _put_and_start(self, settings: dict[str, Any]) -> Status:
        with ioc_guard(self):
            for sig, value in settings.items():
                getattr(self, sig).put(value, wait=True)
            return self.start_cmd.set(1)

    def start_cc(self, current_mA_g: float, *, v_max_V: float | None = None,
                 v_min_V: float | None = None, then_cv: bool = False,
                 step_time_s: float = 0.0) -> Status:
        """Constant current (mA/g, + = charge) until v_max_V (charge) / v_min_V (discharge),
        or for ``step_time_s`` s of cell time if > 0 (then rest)."""
        s: dict[str, Any] = {"mode": "CC", "current_sp_mA_g": float(current_mA_g),
                             "then_cv": int(bool(then_cv)), "step_time_s": float(step_time_s)}
        if v_max_V is not None:
            s["v_max_V"] = float(v_max_V)
        if v_min_V is not None:
            s["v_min_V"] = float(v_min_V)
        return self._put_and_start(s)

    def start_cv(self, voltage_V: float, *, current_limit_mA_g: float | None = None,
                 step_time_s: float = 0.0) -> Status:
        """Hold ``voltage_V`` (V) with an optional current compliance (mA/g), for
        ``step_time_s`` s of cell time if > 0 (then rest)."""
        s: dict[str, Any] = {"mode": "CV", "voltage_sp_V": float(voltage_V),
                             "step_time_s": float(step_time_s)}
        if current_limit_mA_g is not None:
            s["current_sp_mA_g"] = float(current_limit_mA_g)
        return self._put_and_start(s)

    def rest(self) -> Status:
        """Open circuit."""
        with ioc_guard(self):
            return self.stop_cmd.set(1)

    def reset_cell(self) -> Status:
        """Replace the cell by a fresh pristine one (soc 0, cycle 1)."""
        with ioc_guard(self):
            return self.reset_cmd.set(1)


def cycler(prefix: str = "SS:", *, name: str = "cycler", ioc_address: str | None = None,
           mock: bool = False) -> Cycler:
    """Factory: the cycler device (PVs ``<prefix>CYC:*``); no connection is made here.

    ``mock=True`` gives a fake device (``FakeEpicsSignal``s) for unit tests.
    """
    kw = dict(name=name, ioc_name="cycler", ioc_address=ioc_address)
    if mock:
        return mock_device(Cycler, prefix, **kw)
    return Cycler(prefix, **kw)
