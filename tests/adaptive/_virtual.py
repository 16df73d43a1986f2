"""A virtual charge for the sampling agent: the simulator's SC-NM91 cell charged in ``duration_s``
(soc linear in time, the open-circuit voltage), frames that take their exposure plus a readout,
and a live analysis that returns the simulator's true lattice ``latency_s`` after each frame
(or never, or failing, to test the fallbacks). No IOC, no tiled: the agent's policy alone."""

from __future__ import annotations

import math

import numpy as np

from strainstream.adaptive import OBSERVATION_FIELDS, OperandoSamplingAgent, mean_c_A
from strainstream.sim import cell as simcell

PRESET = "SC-NM91"


def truth(soc: float) -> tuple[float, int, float]:
    """(c of the majority phase — the strongest (003) — phases present, microstrain) of the
    preset at ``soc``."""
    phases = simcell.lattice_at_soc(PRESET, soc)
    major = max(phases, key=lambda p: p.fraction)
    return major.c_A, len(phases), phases[0].microstrain


def window() -> tuple[float, float]:
    return simcell.contraction_metrics(PRESET)["two_phase_soc"]


def virtual_charge(agent: OperandoSamplingAgent, *, duration_s: float = 60.0, readout_s: float = 0.05,
                   latency_s: float = 0.4, analysis: str = "ok", max_steps: int = 100000,
                   soc0: float = 0.0):
    """Run ``agent`` over the virtual charge (starting at state of charge ``soc0``: where the
    frames fall against the two-phase window); returns the frames as (t, soc, exposure) and
    the observations it was given."""
    q_end = simcell.preset(PRESET).practical_capacity_mAh_g
    t = 0.0
    frames: list[tuple[float, float, float]] = []
    rows: list[tuple[float, dict]] = []  # (time available, row)
    observations = []
    for _ in range(max_steps):
        (s,) = agent.suggest(1)
        t += s["wait_s"]
        soc = min(soc0 + t / duration_s, 1.0)
        frame_t = math.nan
        if s["frame"]:
            frame_t = t
            t += s["exposure_s"] + readout_s
            frames.append((t, soc, s["exposure_s"]))
            c, n, eps = truth(soc)
            row = {"an_seq_num": float(len(frames)), "an_capacity_mAh_g": soc * q_end, "an_c_A": c,
                   "an_n_phases": float(n), "an_microstrain": eps,
                   "an_failed": float(analysis == "fail")}
            if analysis != "none":
                rows.append((t + latency_s, row))
        soc = min(soc0 + t / duration_s, 1.0)
        ready = [r for when, r in rows if when <= t]
        newest = ready[-1] if ready else {k: math.nan for k in OBSERVATION_FIELDS if k.startswith("an_")}
        obs = {"t_s": t, "capacity_mAh_g": soc * q_end, "voltage_V": float(simcell.ocv_V(PRESET, soc)),
               "running": float(soc < 1.0), "frame_t_s": frame_t, "frames_taken": float(len(frames)),
               "frames_analysed": float(len(ready)), **newest}
        observations.append(obs)
        agent.ingest([{"_id": s["_id"], **obs}])
        if agent.should_stop()[0]:
            break
    return frames, observations


def majority_c(soc: float) -> float:
    """The c of the majority phase (the strongest (003)) of the preset at ``soc``."""
    return truth(soc)[0]


def mean_c(soc: float) -> float:
    """The phase-fraction weighted c (the (003) centroid's) of the preset at ``soc``."""
    return mean_c_A([(p.c_A, p.fraction) for p in simcell.lattice_at_soc(PRESET, soc)])


def c_curve_error(socs, c_of=majority_c) -> float:
    """RMS error (Å) of the curve ``c_of(soc)`` (default the majority phase's c) linearly
    interpolated between the frames, against the truth, over the soc range the frames span."""
    socs = np.sort(np.asarray(socs))
    grid = np.linspace(socs[0], socs[-1], 2001)
    meas = np.interp(grid, socs, [c_of(s) for s in socs])
    return float(np.sqrt(np.mean((meas - np.array([c_of(s) for s in grid])) ** 2)))


def c_mean_error(socs) -> float:
    """:func:`c_curve_error` for the phase-fraction weighted c."""
    return c_curve_error(socs, mean_c)
