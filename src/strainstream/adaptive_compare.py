"""Adaptive vs fixed sampling of one simulated charge, at equal frame budget (issue 19).

:func:`compare_sampling` charges the simulated beamline's cell twice (a fresh pristine cell
each time): once with the adaptive agent, once with the same agent in fixed-interval mode
(``adaptive=False``: the frames spread evenly over the expected charge, the same machinery and
overheads), the worker analysing both live. It then measures both against the simulator's
truth (:func:`strainstream.adaptive.sampling_metrics`, over the same state-of-charge range)
and checks that each run's recorded decisions replay identically
(:func:`strainstream.adaptive.replay_decisions`).

Used by the system test (tests/adaptive) and ``benchmarks/bench_adaptive.py``.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["charge_rows", "compare_sampling", "decision_records", "format_table", "run_charge"]


def run_charge(session, devices: dict[str, Any], root, *, agent, calibration: dict[str, Any],
               duration_s: float, rate_mA_g: float = 200.0, say=print) -> str:
    """One charge of a fresh cell in about ``duration_s`` wall seconds, sampled by ``agent``,
    the worker's results fed back live; returns the run uid."""
    from strainstream.callbacks.live_results import LiveResults
    from strainstream.plans.adaptive import adaptive_operando_xrd

    cycler, det, beam = devices["cycler"], devices["xrd"], devices["beam"]
    cycler.reset_cell().wait(30)
    charge_s = 240.0 / rate_mA_g * 3600.0  # as the demo: ~240 mAh/g in duration_s
    cycler.accel.put(charge_s / duration_s, wait=True)
    live = LiveResults(root)
    mode = "adaptive" if agent.adaptive else "fixed"
    say(f"{mode} sampling: charging the simulated {cycler.preset.get()} cell in ~{duration_s:g} s, "
        f"{agent.budget.frames} frames at most ...")
    try:
        (uid,) = session.RE(adaptive_operando_xrd(det, cycler, calibration=calibration, agent=agent,
                                                  results=live, rate_mA_g=rate_mA_g,
                                                  material=cycler.preset.get(), beam=beam,
                                                  md={"sample": f"{mode} sampling (simulated)"}))
    finally:
        live.close()
    return uid


def charge_rows(root, uid: str, timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """The refined frames of run ``uid`` joined with their cycler readings (``soc``) once the
    worker has analysed every frame."""
    from strainstream.demo import wait_for_results

    primary = root[uid]["primary"]
    seq = [int(s) for s in primary["seq_num"].read().tolist()]
    soc = dict(zip(seq, primary["cycler_soc"].read().tolist(), strict=True))
    doc = wait_for_results(root, uid, len(set(seq)), timeout_s=timeout_s)
    cols = doc["analyses"]["operando_xrd"]["columns"]
    rows = [dict(zip(cols, values, strict=True)) for values in zip(*cols.values(), strict=True)]
    for r in rows:
        r["soc"] = soc.get(int(r["seq_num"]), math.nan)
    return rows


def decision_records(root, uid: str) -> list[dict[str, Any]]:
    """The run's recorded decisions (its ``optimization`` stream), in order."""
    from strainstream.plans.adaptive import OPTIMIZATION_STREAM

    ds = root[uid][OPTIMIZATION_STREAM].read()  # an xarray Dataset, in event order
    columns = {k: ds[k].values for k in ds.data_vars}
    n = len(ds["time"])
    return [{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in columns.items()} for i in range(n)]


def compare_sampling(session, devices: dict[str, Any], root, *, calibration: dict[str, Any],
                     budget, duration_s: float, say=print) -> dict[str, Any]:
    """Adaptive, then fixed, at the same budget; returns ``{"adaptive": {...}, "fixed": {...}}``,
    each with the run ``uid``, :func:`~strainstream.adaptive.sampling_metrics` and
    ``replay_identical``, plus ``ratio_frames_in_window``."""
    from strainstream.adaptive import (
        SUGGESTION_FIELDS,
        OperandoSamplingAgent,
        _num,
        mean_c_A,
        phase_pairs,
        replay_decisions,
        same_decisions,
        sampling_metrics,
    )

    preset = devices["cycler"].preset.get()
    runs: dict[str, Any] = {}
    for mode in ("adaptive", "fixed"):
        agent = OperandoSamplingAgent(budget, adaptive=(mode == "adaptive"))
        uid = run_charge(session, devices, root, agent=agent, calibration=calibration,
                         duration_s=duration_s, say=say)
        rows = charge_rows(root, uid)
        records = decision_records(root, uid)
        config = dict(root[uid].metadata["start"]["adaptive_sampling"])
        replayed = replay_decisions(config, records)
        recorded = [{k: r[k] for k in SUGGESTION_FIELDS} for r in records]
        runs[mode] = {"uid": uid, "rows": rows, "decisions": len(records),
                      "replay_identical": same_decisions(replayed, recorded),
                      "dose_s": sum(r["exposure_s"] for r in records if r["frame"])}
    socs = [[r["soc"] for r in run["rows"]] for run in runs.values()]
    common = (max(min(s) for s in socs), min(max(s) for s in socs))
    for run in runs.values():
        rows = run.pop("rows")
        run.update(sampling_metrics(preset, rows, soc_range=common))
        # each frame as the curves saw it: (soc, phase-fraction weighted c, phases); None where
        # a flagged frame has no value
        run["frames_soc_c"] = [[_round(r["soc"]), _round(mean_c_A(phase_pairs(r))), _round(_num(r.get("n_phases")))]
                               for r in sorted(rows, key=lambda r: r["soc"])]
    fixed_in = runs["fixed"]["frames_in_window"]
    runs["ratio_frames_in_window"] = runs["adaptive"]["frames_in_window"] / fixed_in if fixed_in else math.inf
    runs["preset"] = preset
    return runs


def _round(x: float) -> float | None:
    return round(float(x), 5) if math.isfinite(x) else None


def format_table(result: dict[str, Any]) -> str:
    """The comparison as a text table."""
    lines = [f"{'':10} {'frames':>6} {'in window':>9} {'2-phase':>7} {'c_major RMS':>11} {'c_mean RMS':>10} "
             f"{'max Δc Å':>8} {'true':>5} {'dose s':>6} {'replay':>6}"]
    for mode in ("adaptive", "fixed"):
        r = result[mode]
        lines.append(f"{mode:10} {r['frames']:6d} {r['frames_in_window']:9d} {r['two_phase_frames']:7d} "
                     f"{r['c_curve_rms_A']:11.4f} {r['c_mean_curve_rms_A']:10.4f} "
                     f"{r['max_delta_c_A']:8.3f} {r['max_delta_c_true_A']:5.2f} "
                     f"{r['dose_s']:6.2f} {'same' if r['replay_identical'] else 'DIFFERS':>6}")
    lines.append(f"frames in the two-phase window: adaptive / fixed = {result['ratio_frames_in_window']:.2f}")
    return "\n".join(lines)
