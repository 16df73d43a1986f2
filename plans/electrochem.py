"""The study's electrochemical protocols with operando XRD: cycling, GITT, a rate series.

Every XRD event (``primary`` stream) holds the detector frame and the cycler readings of the
same moment, as in :func:`strainstream.plans.xrd.operando_xrd`; the cycling run adds one
``cycle_summary`` event per cycle (the cycler readings at the end of the discharge plus the
cycle's charge/discharge capacity, coulombic efficiency, retention vs cycle 1 and mean
voltages, from :mod:`strainstream.electrochem`).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from typing import Any

import bluesky.plan_stubs as bps
from bluesky.protocols import Readable
from bluesky.utils import MsgGenerator
from ophyd import Component as Cpt
from ophyd import Device, Signal

from strainstream.electrochem import cycling_metrics, mean_voltage_V
from strainstream.rundesc import XRDKeys

from ._common import base_metadata, beam_guarded, cell_run, preflight
from .xrd import operando_xrd

__all__ = ["CycleSummary", "operando_cycling", "operando_gitt", "rate_series"]

#: data keys of the ``cycle_summary`` stream (besides the cycler's readings)
SUMMARY_FIELDS = ("number", "charge_capacity_mAh_g", "discharge_capacity_mAh_g", "coulombic_efficiency",
                  "retention", "mean_charge_voltage_V", "mean_discharge_voltage_V")


class CycleSummary(Device):
    """Soft signals holding one cycle's summary (keys ``cycle_<field>``)."""

    number = Cpt(Signal, value=0, kind="hinted")
    charge_capacity_mAh_g = Cpt(Signal, value=0.0, kind="hinted")
    discharge_capacity_mAh_g = Cpt(Signal, value=0.0, kind="hinted")
    coulombic_efficiency = Cpt(Signal, value=0.0, kind="hinted")
    retention = Cpt(Signal, value=0.0, kind="hinted")
    mean_charge_voltage_V = Cpt(Signal, value=0.0, kind="normal")
    mean_discharge_voltage_V = Cpt(Signal, value=0.0, kind="normal")


def _xrd_keys(cycler: Any) -> dict[str, Any]:
    return XRDKeys(**{name: f"{cycler.name}_{suffix}" for name, suffix in XRDKeys.SUFFIXES.items()
                      if hasattr(cycler, suffix)}).to_start()


def operando_cycling(
    detector: Readable,
    cycler: Readable,
    *,
    calibration: dict[str, Any],
    n_cycles: int = 3,
    rate_mA_g: float = 100.0,
    v_max_V: float = 4.5,
    v_min_V: float = 2.7,
    cv_hold: bool = False,
    cv_cutoff_mA_g: float | None = None,
    xrd_interval_s: float | None = 600.0,
    xrd_socs: Sequence[float] = (),
    poll_s: float = 0.2,
    max_frames: int = 1000,
    material: str = "SC-NM91",
    mass_mg: float | None = None,
    beam: Readable | None = None,
    open_shutter: bool = True,
    min_ring_current_mA: float = 50.0,
    md: dict[str, Any] | None = None,
) -> MsgGenerator:
    """Cycle the cell ``n_cycles`` times between voltage limits with XRD frames on the way.

    Each cycle is a constant-current charge at ``+rate_mA_g`` to ``v_max_V`` (then, with
    ``cv_hold``, a constant-voltage hold at ``v_max_V`` until the current falls below
    ``cv_cutoff_mA_g``) and a constant-current discharge at ``−rate_mA_g`` to ``v_min_V``.
    The plan polls the cycler every ``poll_s`` s (wall time) and takes an XRD frame
    (``primary`` stream: detector + cycler readings) when ``xrd_interval_s`` s of *cell*
    time have passed since the last frame, and when the state of charge crosses one of
    ``xrd_socs`` (in either direction). After each discharge one ``cycle_summary`` event is
    emitted: the cycler readings plus ``cycle_number``, ``cycle_charge_capacity_mAh_g``,
    ``cycle_discharge_capacity_mAh_g`` (from the cycler's capacity counter at the step
    ends), ``cycle_coulombic_efficiency`` (discharge/charge), ``cycle_retention``
    (discharge / discharge of cycle 1) and the capacity-weighted mean voltages of charge and
    discharge (from the polled readings, each step closed at its limit voltage; a poll gap,
    e.g. a suspension, is bridged linearly). With ``beam`` the plan pauses while the beam is
    unusable (the cell keeps cycling: only frames wait) and resumes by itself.

    Parameters
    ----------
    detector : area detector
        The XRD detector (frames written to HDF5 by the detector).
    cycler : Cycler
        The commanded cycler (:mod:`strainstream.devices.cycler`); a read-only
        (``follow_only``) one is refused.
    calibration : dict
        Detector geometry with ``wavelength_A`` (:func:`strainstream.xrd.calibrate`).
    n_cycles : int
        Number of charge/discharge cycles (≥ 1).
    rate_mA_g : float
        Charge and discharge current, mA per g of active material (> 0); the study's
        cycling used 100 mA/g.
    v_max_V, v_min_V : float
        Voltage window, V vs Li/Li⁺.
    cv_hold : bool
        Hold ``v_max_V`` after each constant-current charge.
    cv_cutoff_mA_g : float, optional
        End of the CV hold, mA/g (default ``rate_mA_g / 20``).
    xrd_interval_s : float or None
        Cell time between frames, s (``None``: only at ``xrd_socs``).
    xrd_socs : sequence of float
        States of charge (0–1, the cycler's ``soc``) at which a frame is taken when crossed.
    poll_s : float
        Wall time between cycler polls, s (> 0); with the cycler's time acceleration
        ``accel`` one poll spans ``accel × poll_s`` s of cell time.
    max_frames : int
        Upper bound on XRD frames (later frames are skipped; the cycling goes on).
    material : str
        Cathode material / preset, e.g. ``"SC-NM91"``.
    mass_mg : float, optional
        Active mass; read from the cycler when it reports one.
    beam : Beam device, optional
        Enables the beam suspenders.
    open_shutter : bool
        With ``beam``: open the photon shutter before the run starts.
    min_ring_current_mA : float
        Ring-current floor of the suspenders, mA.
    md : dict, optional
        Extra start-document metadata.
    """
    if n_cycles < 1 or not rate_mA_g > 0 or not v_min_V < v_max_V or not poll_s > 0:
        raise ValueError("operando_cycling needs n_cycles >= 1, rate_mA_g > 0, v_min_V < v_max_V "
                         f"and poll_s > 0 (got {n_cycles}, {rate_mA_g}, [{v_min_V}, {v_max_V}], {poll_s})")
    if xrd_interval_s is not None and not xrd_interval_s > 0:
        raise ValueError(f"xrd_interval_s must be > 0 s of cell time or None, got {xrd_interval_s}")
    socs = sorted(float(s) for s in xrd_socs)
    if any(not 0.0 <= s <= 1.0 for s in socs):
        raise ValueError(f"xrd_socs must lie in [0, 1], got {list(xrd_socs)}")
    if not calibration or "wavelength_A" not in calibration:
        raise ValueError("calibration must be a geometry dict with wavelength_A (strainstream.xrd.calibrate)")
    if getattr(cycler, "follow_only", False):
        raise ValueError(f"{cycler.name} can only be read (follow_only): operando_cycling commands "
                         "the cycler; record a potentiostat-run protocol with operando_xrd")
    cutoff = rate_mA_g / 20.0 if cv_cutoff_mA_g is None else float(cv_cutoff_mA_g)
    if not cutoff > 0:
        raise ValueError(f"cv_cutoff_mA_g must be > 0, got {cv_cutoff_mA_g}")
    yield from preflight([detector], max_frames)
    if mass_mg is None and hasattr(cycler, "mass_mg"):
        mass_mg = yield from bps.rd(cycler.mass_mg)
    _md = base_metadata(
        "operando_cycling", md,
        material=material, mass_mg=mass_mg, rate_mA_g=rate_mA_g, v_window_V=[v_min_V, v_max_V],
        n_cycles=n_cycles, cv_hold=cv_hold, cv_cutoff_mA_g=cutoff, xrd_interval_s=xrd_interval_s,
        xrd_socs=socs, max_frames=max_frames, cycler_control="command",
        wavelength_A=calibration["wavelength_A"], calibration=dict(calibration),
        detectors=[detector.name], motors=[], plan_name="operando_cycling",
        xrd_keys=_xrd_keys(cycler),
    )
    summary = CycleSummary(name="cycle")
    state = {"frames": 0, "last_frame_t": -math.inf}

    def frame():
        if state["frames"] >= max_frames:
            return
        yield from bps.checkpoint()
        yield from bps.trigger_and_read([detector, cycler])
        yield from bps.checkpoint()
        state["frames"] += 1
        state["last_frame_t"] = yield from bps.rd(cycler.time_s)

    counts_energy = hasattr(cycler, "energy_mWh_g")

    def half_cycle(direction: int):
        """One CC (± CV) step; returns the polled capacities and its mean voltage: the cycler's
        energy over its capacity when it counts energy (exact however rarely it was polled),
        else ∫V dQ over the polled (capacity, voltage) samples."""
        yield from bps.mv(cycler.mode, "CC", cycler.current_sp_mA_g, direction * rate_mA_g,
                          cycler.v_max_V, v_max_V, cycler.v_min_V, v_min_V,
                          cycler.then_cv, int(bool(cv_hold and direction > 0)),
                          cycler.step_time_s, 0.0)
        q0 = yield from bps.rd(cycler.capacity_mAh_g)  # at rest: the step starts here
        e0 = (yield from bps.rd(cycler.energy_mWh_g)) if counts_energy else math.nan
        hits0 = yield from bps.rd(cycler.limit_hits)
        stopped = False
        yield from bps.mv(cycler.start_cmd, 1)
        yield from bps.checkpoint()
        caps, volts = [q0], [math.nan]
        soc_prev = None
        while True:
            # a checkpoint per poll: a suspension rewinds one poll, not the whole step
            yield from bps.checkpoint()
            q = yield from bps.rd(cycler.capacity_mAh_g)
            v = yield from bps.rd(cycler.voltage_V)
            soc = yield from bps.rd(cycler.soc)
            t = yield from bps.rd(cycler.time_s)
            # ended: the CC limit was reached (then rest) or the CV hold was stopped; a
            # 'running' readback not yet updated after the start must not end the step
            hits = yield from bps.rd(cycler.limit_hits)
            running = (yield from bps.rd(cycler.running)) or not (hits > hits0 or stopped)
            if running:
                caps.append(q), volts.append(v)
                if math.isnan(volts[0]):
                    volts[0] = v
            crossed = soc_prev is not None and any(min(soc_prev, soc) < s <= max(soc_prev, soc) for s in socs)
            due = xrd_interval_s is not None and t - state["last_frame_t"] >= xrd_interval_s
            if crossed or due:
                yield from frame()
            soc_prev = soc
            if not running:
                break
            if direction > 0 and cv_hold:
                mode = yield from bps.rd(cycler.mode_rbv)
                i = yield from bps.rd(cycler.current_mA_g)
                if mode == "CV" and abs(i) < cutoff:
                    yield from bps.mv(cycler.stop_cmd, 1)
                    yield from bps.checkpoint()
                    stopped = True
                    continue
            yield from bps.sleep(poll_s)
        # the step ended at its limit voltage (CC) or was stopped at v_max (CV): the last
        # point, so that a gap in the polls (a suspension) is bridged linearly
        q_end = yield from bps.rd(cycler.capacity_mAh_g)
        caps.append(q_end), volts.append(v_max_V if direction > 0 else v_min_V)
        if math.isnan(volts[0]):  # ended before the first poll
            volts[0] = volts[-1]
        v_mean = math.nan
        if counts_energy and q_end != q0:
            e_end = yield from bps.rd(cycler.energy_mWh_g)
            if e_end != e0:  # a counter that did not move (a stand-in device) says nothing
                v_mean = (e_end - e0) / (q_end - q0)
        if not math.isfinite(v_mean):
            v_mean = mean_voltage_V(caps, volts)
        return caps, v_mean

    def body():
        yield from bps.open_run(md=_md)
        yield from bps.checkpoint()
        yield from frame()  # the state before cycling
        chg, dis = [], []
        for _ in range(n_cycles):
            q_c, v_mean_c = yield from half_cycle(+1)
            q_d, v_mean_d = yield from half_cycle(-1)
            chg.append(q_c[-1] - q_c[0])
            dis.append(q_c[-1] - q_d[-1])
            m = cycling_metrics(chg, dis)
            cycle_no = yield from bps.rd(cycler.cycle)
            yield from bps.mv(summary.number, int(cycle_no), summary.charge_capacity_mAh_g, chg[-1],
                              summary.discharge_capacity_mAh_g, dis[-1],
                              summary.coulombic_efficiency, float(m["coulombic_efficiency"][-1]),
                              summary.retention, float(m["retention"][-1]),
                              summary.mean_charge_voltage_V, v_mean_c,
                              summary.mean_discharge_voltage_V, v_mean_d)
            yield from bps.trigger_and_read([cycler, summary], name="cycle_summary")
            yield from bps.checkpoint()
        yield from bps.close_run()

    return (yield from cell_run(body(), detector, cycler, beam=beam, open_shutter=open_shutter,
                                min_ring_current_mA=min_ring_current_mA))


def operando_gitt(
    detector: Readable,
    cycler: Readable,
    *,
    calibration: dict[str, Any],
    particle_radius_um: float,
    current_mA_g: float = 20.0,
    pulse_s: float = 600.0,
    rest_s: float = 1800.0,
    n_pulses: int = 5,
    v_max_V: float = 4.5,
    v_min_V: float = 2.7,
    poll_s: float = 0.1,
    material: str = "SC-NM91",
    mass_mg: float | None = None,
    beam: Readable | None = None,
    open_shutter: bool = True,
    min_ring_current_mA: float = 50.0,
    md: dict[str, Any] | None = None,
) -> MsgGenerator:
    """Galvanostatic intermittent titration with an XRD frame at each relaxed point.

    ``n_pulses`` times: a constant-current pulse of ``current_mA_g`` (+ = charge) for
    ``pulse_s`` s of cell time (timed by the cycler itself, ``step_time_s``; it ends earlier
    at the voltage limit), then open circuit for ``rest_s`` s of cell time. The cycler is
    read at every poll (``poll_s`` wall seconds) and right after each command into the
    ``cycler`` stream: the record the live analysis
    (:class:`strainstream.callbacks.electrochem.GITTCallback`) fits the study's
    D = 4/(9π)·(r_p/τ · ΔE_s/(dE/d√t))² to (10 < √t < 20 s^½, so ``pulse_s`` ≥ 400); the
    pulse start and τ come from the cycler's charge counter (``capacity_mAh_g`` in every
    reading, ``mass_mg`` in the start document), exact whatever the poll rate. An XRD frame (``primary``: detector + cycler) is taken before the first pulse and
    at the end of every rest. With ``beam`` a frame due while the beam is unusable waits for
    it (the beam suspenders guard the frames only: a beam dump during a pulse or a rest
    leaves the pulse length and the cycler record, hence D, alone).

    Parameters
    ----------
    detector : area detector
        The XRD detector.
    cycler : Cycler
        The commanded cycler (``follow_only`` is refused).
    calibration : dict
        Detector geometry with ``wavelength_A``.
    particle_radius_um : float
        Particle radius r_p (µm), recorded in the start document for the analysis.
    current_mA_g : float
        Pulse current (mA/g, + = charge, ≠ 0).
    pulse_s, rest_s : float
        Pulse and rest durations, s of cell time (> 0).
    n_pulses : int
        Number of pulses (≥ 1).
    v_max_V, v_min_V : float
        Voltage limits of the pulses (V).
    poll_s : float
        Wall time between cycler polls (s); a reading is recorded when the cycler has
        updated since the last one. Keep the cell time between updates ≤ 40 s (with the
        simulated cycler: ``accel`` × 0.1 s) for ≥ 5 points in the fit window.
    material, mass_mg, beam, open_shutter, min_ring_current_mA, md
        As in :func:`operando_cycling`.
    """
    if n_pulses < 1 or not current_mA_g or not pulse_s > 0 or not rest_s > 0 or not poll_s > 0:
        raise ValueError("operando_gitt needs n_pulses >= 1, current_mA_g != 0 and pulse_s, rest_s, "
                         f"poll_s > 0 (got {n_pulses}, {current_mA_g}, {pulse_s}, {rest_s}, {poll_s})")
    if not (particle_radius_um > 0 and math.isfinite(particle_radius_um)):
        raise ValueError(f"particle_radius_um must be the particle radius in µm (> 0), got {particle_radius_um}")
    if not calibration or "wavelength_A" not in calibration:
        raise ValueError("calibration must be a geometry dict with wavelength_A (strainstream.xrd.calibrate)")
    if getattr(cycler, "follow_only", False):
        raise ValueError(f"{cycler.name} can only be read (follow_only): operando_gitt commands the cycler")
    yield from preflight([detector], n_pulses + 1)
    if mass_mg is None and hasattr(cycler, "mass_mg"):
        mass_mg = yield from bps.rd(cycler.mass_mg)
    _md = base_metadata(
        "operando_gitt", md,
        material=material, mass_mg=mass_mg, particle_radius_um=float(particle_radius_um),
        current_mA_g=current_mA_g, pulse_s=pulse_s, rest_s=rest_s, n_pulses=n_pulses,
        v_window_V=[v_min_V, v_max_V], cycler_control="command",
        wavelength_A=calibration["wavelength_A"], calibration=dict(calibration),
        detectors=[detector.name], motors=[], plan_name="operando_gitt", xrd_keys=_xrd_keys(cycler),
    )

    def record(n: int = 1):
        # n > 1 right after a command: the same update read again, so that one reading torn
        # by a concurrent update (left out by the analysis) does not lose the step's edge
        for _ in range(n):
            yield from bps.trigger_and_read([cycler], name="cycler")

    def frame():
        # the beam matters only here: a dump during a pulse or rest leaves the cycler record
        # and the pulse length alone; a frame due while the beam is down waits for it
        yield from bps.checkpoint()
        yield from beam_guarded(bps.trigger_and_read([detector, cycler]), beam,
                                min_ring_current_mA=min_ring_current_mA)
        yield from bps.checkpoint()

    def wait_cell(duration_s: float, t0: float, *, pulse: bool):
        """Record every poll until ``duration_s`` of cell time after ``t0`` (or the limit)."""
        hits0 = yield from bps.rd(cycler.limit_hits)
        t_last = t0
        while True:
            yield from bps.checkpoint()
            yield from bps.sleep(poll_s)
            t = yield from bps.rd(cycler.time_s)
            if t == t_last:
                continue  # no new cycler update since the last reading: nothing to record
            yield from record()
            t_last = t = yield from bps.rd(cycler.time_s)
            if t - t0 >= duration_s:
                return True
            if pulse and (yield from bps.rd(cycler.limit_hits)) > hits0:
                return False  # the voltage limit ended the pulse: the cycler rests
            if pulse and not (yield from bps.rd(cycler.running)):
                return True  # the cycler's step timer ended the pulse

    def body():
        yield from bps.open_run(md=_md)
        yield from bps.checkpoint()
        # the cycler times each pulse itself (step_time_s): its length is exact to the simulated
        # second whatever the latency of this plan's polls on a loaded machine
        yield from bps.mv(cycler.mode, "CC", cycler.current_sp_mA_g, current_mA_g,
                          cycler.v_max_V, v_max_V, cycler.v_min_V, v_min_V, cycler.then_cv, 0,
                          cycler.step_time_s, float(pulse_s))
        # the relaxed state before the first pulse: a few readings of the rest
        t_rest = yield from bps.rd(cycler.time_s)
        yield from record()
        yield from wait_cell(min(rest_s, 120.0), t_rest, pulse=False)
        yield from frame()
        for _ in range(n_pulses):
            yield from bps.mv(cycler.start_cmd, 1)  # published at the cell time it took effect
            yield from bps.checkpoint()
            yield from record(2)
            t_on = yield from bps.rd(cycler.time_s)
            full = yield from wait_cell(pulse_s, t_on, pulse=True)
            yield from bps.mv(cycler.stop_cmd, 1)
            yield from bps.checkpoint()
            yield from record(2)
            t_off = yield from bps.rd(cycler.time_s)
            yield from wait_cell(rest_s, t_off, pulse=False)
            yield from frame()  # the relaxed point
            if not full:
                break
        yield from bps.mv(cycler.step_time_s, 0.0)  # later steps untimed unless asked
        yield from bps.close_run()

    return (yield from cell_run(body(), detector, cycler, beam=beam, open_shutter=open_shutter,
                                min_ring_current_mA=min_ring_current_mA, suspend=False))


def rate_series(
    detector: Readable,
    cycler: Readable,
    *,
    calibration: dict[str, Any],
    rates_mA_g: Sequence[float] = (20.0, 100.0, 200.0),
    v_max_V: float = 4.5,
    v_min_V: float = 2.7,
    frame_interval_s: float = 1.0,
    max_frames: int = 500,
    discharge_rate_mA_g: float | None = None,
    material: str = "SC-NM91",
    beam: Readable | None = None,
    series: str | None = None,
    md: dict[str, Any] | None = None,
) -> MsgGenerator:
    """Charge the same cell at several rates, one :func:`operando_xrd` run each.

    Between the charges the cell is discharged to ``v_min_V`` at ``discharge_rate_mA_g``
    (default the lowest rate) outside any run. The runs share ``series`` (a fresh uuid by
    default) and record ``series_index`` and ``series_rates_mA_g`` in their start documents,
    so the microstrain vs rate can be gathered afterwards (``strainstream plot`` of any run
    of the series draws it: :func:`strainstream.callbacks.plots.electrochem.rate_series_figure`).

    Parameters
    ----------
    detector, cycler, calibration, v_max_V, v_min_V, frame_interval_s, max_frames, material, beam
        As in :func:`strainstream.plans.xrd.operando_xrd`.
    rates_mA_g : sequence of float
        Charge currents, mA/g (> 0), in the order they are applied.
    discharge_rate_mA_g : float, optional
        Discharge current between the charges, mA/g (> 0).
    series : str, optional
        The series id (default: a new uuid4).
    md : dict, optional
        Extra start-document metadata of every run.

    Returns
    -------
    str
        The series id.
    """
    rates = [float(r) for r in rates_mA_g]
    if not rates or any(not r > 0 for r in rates):
        raise ValueError(f"rates_mA_g must be a non-empty list of currents > 0 mA/g, got {list(rates_mA_g)}")
    dis = min(rates) if discharge_rate_mA_g is None else float(discharge_rate_mA_g)
    if not dis > 0:
        raise ValueError(f"discharge_rate_mA_g must be > 0, got {discharge_rate_mA_g}")
    series = series or str(uuid.uuid4())
    for k, rate in enumerate(rates):
        if k:  # back to the discharged state, outside the runs
            yield from bps.mv(cycler.mode, "CC", cycler.current_sp_mA_g, -dis, cycler.v_min_V, v_min_V,
                              cycler.then_cv, 0, cycler.step_time_s, 0.0)
            yield from bps.mv(cycler.start_cmd, 1)
            while (yield from bps.rd(cycler.running)):
                yield from bps.sleep(0.2)
        run_md = {**(md or {}), "series": series, "series_index": k, "series_rates_mA_g": rates}
        yield from operando_xrd(detector, cycler, calibration=calibration, rate_mA_g=rate,
                                      v_max_V=v_max_V, v_min_V=v_min_V, frame_interval_s=frame_interval_s,
                                      max_frames=max_frames, material=material, beam=beam,
                                      md=run_md)
    return series
