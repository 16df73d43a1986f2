"""Adaptive operando XRD: the live analysis decides when the next frame is taken (issue 19).

The plan is :func:`bluesky_adaptive.plans.optimize_in_run` (the field's in-run agent loop)
with :class:`strainstream.adaptive.OperandoSamplingAgent` as its optimizer: at every decision
point the agent suggests how long to wait and whether to take a frame then (and its
exposure); the acquisition step waits, takes the frame (``primary`` stream: detector and
cycler, as :func:`~strainstream.plans.xrd.operando_xrd` records it, so the worker analyses it
alike) or only reads the cycler, and the evaluation step adds what the live analysis has
refined so far. bluesky-adaptive records each suggestion with what was seen in the run's
``optimization`` stream: time, action, exposure, interval, mode, reason and the observations —
why each frame was taken, and what :func:`strainstream.adaptive.replay_decisions` recomputes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.protocols import Readable
from bluesky.utils import Msg, MsgGenerator

from strainstream.adaptive import (
    OBSERVATION_FIELDS,
    OperandoSamplingAgent,
    SamplingBudget,
    Triggers,
    _num,
    mean_c_A,
    phase_pairs,
)

from ._common import cell_run
from .xrd import charge_setup, start_charge

__all__ = ["OPTIMIZATION_STREAM", "adaptive_operando_xrd", "newest_refined", "triggers_from"]

#: the stream bluesky-adaptive's in-run loop records the decisions in
OPTIMIZATION_STREAM = "optimization"
#: an upper bound on decision points (the agent stops the loop: charge over or budget spent)
MAX_DECISIONS = 10_000_000

#: rows of the live ``operando_xrd`` analysis of a run so far, by its uid
ResultsSource = Callable[[str], Sequence[Mapping[str, Any]]]


def triggers_from(settings: Mapping[str, float] | None) -> Triggers:
    """:class:`Triggers` from plain data (a queued plan's ``triggers``): the defaults for the
    fields not given; ValueError naming an unknown field."""
    known = {f.name for f in fields(Triggers)}
    unknown = sorted(set(settings or {}) - known)
    if unknown:
        raise ValueError(f"adaptive_operando_xrd: unknown trigger setting(s) {unknown}; known: {sorted(known)}")
    return Triggers(**dict(settings or {}))


def newest_refined(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The ``an_*`` observations from the newest result row of the live analysis (NaN when
    there is none): its seq_num, capacity, phase-fraction weighted c, phases, microstrain,
    and whether it failed (no finite c, or flagged)."""
    out = {k: math.nan for k in OBSERVATION_FIELDS if k.startswith("an_")}
    if not rows:
        return out
    row = max(rows, key=lambda r: int(r["seq_num"]))

    c_bar = mean_c_A(phase_pairs(row))
    failed = not math.isfinite(c_bar) or bool(row.get("flag"))
    out.update(an_seq_num=float(row["seq_num"]), an_capacity_mAh_g=_num(row.get("capacity_mAh_g")), an_c_A=c_bar,
               an_n_phases=_num(row.get("n_phases")), an_microstrain=_num(row.get("microstrain")),
               an_failed=float(failed))
    return out


def adaptive_operando_xrd(
    detector: Readable,
    cycler: Readable,
    *,
    calibration: dict[str, Any],
    frames: int = 30,
    dose_s: float | None = None,
    exposure_s: float = 0.2,
    quiet_exposure_s: float = 0.1,
    min_interval_s: float = 0.5,
    watch_s: float = 0.5,
    expected_capacity_mAh_g: float = 220.0,
    dense_share: float = 0.7,
    dense_span_share: float = 0.2,
    triggers: dict[str, float] | None = None,
    adaptive: bool = True,
    agent: OperandoSamplingAgent | None = None,
    results: ResultsSource | None = None,
    rate_mA_g: float = 200.0,
    v_max_V: float = 4.5,
    v_min_V: float = 2.7,
    material: str = "SC-NM91",
    mass_mg: float | None = None,
    beam: Readable | None = None,
    open_shutter: bool = True,
    min_ring_current_mA: float = 50.0,
    md: dict[str, Any] | None = None,
) -> MsgGenerator:
    """Charge the cell at constant current; the agent decides when each frame is taken.

    The run is an ``operando_xrd`` run (the worker refines its frames live, a replay
    analyses it like any other) with the agent's settings in ``adaptive_sampling`` and its
    decisions in the ``optimization`` stream. It ends when the charge reaches ``v_max_V``
    or the frame or dose budget is spent; the cell is then set to rest.

    Parameters
    ----------
    detector, cycler, calibration, rate_mA_g, v_max_V, v_min_V, material, mass_mg, beam,
    open_shutter, min_ring_current_mA, md
        As :func:`strainstream.plans.xrd.operando_xrd`.
    frames, dose_s, exposure_s, quiet_exposure_s, min_interval_s, watch_s, expected_capacity_mAh_g, dense_share, dense_span_share
        The budget and the sampling (:class:`strainstream.adaptive.SamplingBudget`): at most
        ``frames`` frames and ``dose_s`` s of exposure (default frames × exposure_s).
    triggers : dict, optional
        What makes a stretch dense, by :class:`strainstream.adaptive.Triggers` field (e.g.
        ``{"dqdv_factor": 3.0, "dqdv_onset": 2.5}``; plain data, so a queued plan can set it);
        the defaults for fields not given. An unknown field is refused before the run.
    adaptive : bool
        False: the fixed interval with the same machinery (the reference).
    agent : OperandoSamplingAgent, optional
        A ready agent (its own budget and triggers) instead of the arguments above.
    results : callable, optional
        ``results(run_uid)`` → the live analysis' result rows of the run so far (e.g.
        :class:`strainstream.callbacks.live_results.LiveResults`); it must not block for long.
        Without it the agent decides from the cycler alone (dQ/dV).

    Raises
    ------
    DataDirError
        Before the run starts, when the detector's data directory cannot hold the budget.
    """
    from bluesky_adaptive.plans import optimize_in_run
    from bluesky_adaptive.protocols import OptimizationProblem

    if agent is None:
        agent = OperandoSamplingAgent(SamplingBudget(
            frames=frames, dose_s=dose_s, exposure_s=exposure_s, quiet_exposure_s=quiet_exposure_s,
            min_interval_s=min_interval_s, watch_s=watch_s, expected_capacity_mAh_g=expected_capacity_mAh_g,
            dense_share=dense_share, dense_span_share=dense_span_share),
            triggers_from(triggers), adaptive=adaptive)
    budget = agent.budget
    _md, follow_only = yield from charge_setup(
        detector, cycler, calibration=calibration, rate_mA_g=rate_mA_g, v_max_V=v_max_V, v_min_V=v_min_V,
        cv_hold=False, frame_interval_s=None, max_frames=budget.frames, material=material,
        mass_mg=mass_mg, reserve_frames=None, sectors=None, md=md, plan_name="adaptive_operando_xrd")
    _md["adaptive_sampling"] = {**agent.config(), "stream": OPTIMIZATION_STREAM,
                                "observations": list(OBSERVATION_FIELDS)}
    exposure_signal = getattr(getattr(detector, "cam", None), "acquire_time", None)
    state: dict[str, Any] = {"uid": None, "t0": None, "frames": 0, "obs": {}, "exposure": None}

    def acquire(suggestions: Sequence[Mapping[str, Any]], actuators, sensors=None, **kwargs) -> MsgGenerator:
        (s,) = suggestions
        if state["t0"] is None:  # the first decision point: the charge starts
            state["t0"] = time.time()
            if not follow_only:
                yield from start_charge(cycler, rate_mA_g=rate_mA_g, v_max_V=v_max_V, v_min_V=v_min_V,
                                        cv_hold=False)
        if s["wait_s"] > 0:
            yield from bps.sleep(float(s["wait_s"]))
        frame_t = math.nan
        if s["frame"]:
            if exposure_signal is not None and state["exposure"] != s["exposure_s"]:
                yield from bps.mv(exposure_signal, float(s["exposure_s"]))
                state["exposure"] = s["exposure_s"]
            yield from bps.checkpoint()  # a suspension re-takes this frame only
            frame_t = time.time() - state["t0"]
            yield from bps.trigger_and_read([detector, cycler])
            yield from bps.checkpoint()
            state["frames"] += 1
        voltage = float((yield from bps.rd(cycler.voltage_V)))
        capacity = float((yield from bps.rd(cycler.capacity_mAh_g)))
        if follow_only:
            running = voltage < v_max_V
        else:
            running = bool((yield from bps.rd(cycler.running)))
        state["obs"] = {"t_s": time.time() - state["t0"], "capacity_mAh_g": capacity, "voltage_V": voltage,
                        "running": float(running), "frame_t_s": frame_t,
                        "frames_taken": float(state["frames"])}
        return (s["_id"],)

    def evaluate(uid, suggestions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        rows = list(results(state["uid"])) if results is not None and state["uid"] else []
        obs = {**state["obs"], "frames_analysed": float(len({int(r["seq_num"]) for r in rows}))
               if results is not None else math.nan, **newest_refined(rows)}
        return [{"_id": s["_id"], **obs} for s in suggestions]

    acquire.__name__ = "adaptive_frame_or_look"
    evaluate.__name__ = "live_operando_xrd_results"
    problem = OptimizationProblem(optimizer=agent, actuators=[], sensors=[detector, cycler],
                                  evaluation_function=evaluate, acquisition_plan=acquire)

    def with_our_start(msg: Msg) -> Msg:
        if msg.command == "open_run":  # bluesky-adaptive's keys, then the charge's
            return msg._replace(kwargs={**msg.kwargs, **_md})
        return msg

    loop = _noting_run_uid(bpp.msg_mutator(optimize_in_run(problem, iterations=MAX_DECISIONS), with_our_start),
                           state)
    return (yield from cell_run(loop, detector, cycler, beam=beam, open_shutter=open_shutter,
                                min_ring_current_mA=min_ring_current_mA, stop_cell=not follow_only))


def _noting_run_uid(plan: MsgGenerator, state: dict[str, Any]) -> MsgGenerator:
    """``plan`` as it is, with the uid its ``open_run`` returns put in ``state["uid"]``."""
    response: Any = None
    error: BaseException | None = None
    while True:
        try:
            msg = plan.throw(error) if error is not None else plan.send(response)
        except StopIteration as stop:
            return stop.value
        error = None
        try:
            response = yield msg
        except GeneratorExit:
            plan.close()
            raise
        except BaseException as exc:  # into the plan, as the RunEngine threw it
            error, response = exc, None
            continue
        if msg.command == "open_run":
            state["uid"] = response
