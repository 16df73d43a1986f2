"""Adaptive operando XRD sampling: when to take the next frame of a charging cell, and with
what exposure, from what the live analysis and the cycler show (issue 19).

A charge to 4.5 V takes hours; the physics worth the beam (the H2→H3 collapse of Ni-rich
layered oxides, H2/H3 coexistence in SC-NM91) happens in a few minutes of it. A fixed frame
interval either spends the dose on the quiet stretches or misses the collapse. The agent here
spends a frame and dose budget where the data move:

- **dQ/dV peak** (from the cycler's voltage and capacity, read at every decision point): a
  two-phase plateau is the sharpest dQ/dV peak of the charge; above
  :attr:`Triggers.dqdv_factor` × the charge's median dQ/dV so far the frames come densely —
  this is the early warning, it needs no frame; so is its **onset**, dQ/dV at least
  :attr:`Triggers.dqdv_onset` × the step before (the frames then start where the second phase
  appears — the kink of c̄(Q) — not a quiet interval after it);
- **a second phase** in the newest refined frame (``n_phases`` ≥ 2);
- **c moving fast**: |dc̄/dQ| between the two newest refined frames (c̄ the phase-fraction
  weighted c) above :attr:`Triggers.dcdq_factor` × its median so far;
- **microstrain rising** by more than :attr:`Triggers.strain_rise` × its median between the two
  newest refined frames.

While one of them holds (and :attr:`Triggers.hold_frames` frames after), frames are
:attr:`SamplingBudget.dense_step` of the capacity apart (at least
:attr:`SamplingBudget.min_interval_s`) with the full exposure — past the
:attr:`SamplingBudget.dense_share` of the budget while a quiet frame can be borrowed —; otherwise the frames left
outside the share held back for dense stretches are spread over the time the charge is
expected to last, with the shorter quiet exposure. When the analysis lags (more than
:attr:`Triggers.max_lag_frames` frames not refined yet) or its newest frame failed, its
signals are not acted on and, unless the cycler's dQ/dV calls for dense frames, the frames
left are spread evenly (the fixed interval) until it catches up.

The agent is the optimizer of :mod:`bluesky_adaptive`'s in-run loop (it follows its
``Optimizer`` protocol: ``suggest``/``ingest``/``get_best_points``, plus ``should_stop``):
each suggestion is one decision point — wait ``wait_s``, then take a frame (``frame`` = 1,
exposure ``exposure_s``) or only look (``frame`` = 0) — with its ``reason``; each outcome is
what was seen then. The plan (:func:`strainstream.plans.adaptive.adaptive_operando_xrd`)
records both as the run's ``optimization`` stream. The agent reads no clock and no device:
its decisions are a function of the outcomes it ingested, so :func:`replay_decisions`
recomputes them from a recorded run exactly.

Imports: the standard library (numpy and the simulator for :func:`sampling_metrics`); the
analysis-core layering: no bluesky, no tiled.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["OBSERVATION_FIELDS", "SUGGESTION_FIELDS", "OperandoSamplingAgent", "SamplingBudget",
           "Triggers", "mean_c_A", "phase_pairs", "same_decisions", "replay_decisions", "sampling_metrics"]

#: what each outcome holds (floats; NaN when not known): the plan's observation at a decision point
OBSERVATION_FIELDS = (
    "t_s",                   # seconds since the run started
    "capacity_mAh_g",        # cycler capacity
    "voltage_V",             # cycler voltage
    "running",               # 1 while the cycler's step runs
    "frame_t_s",             # when this decision point's frame was triggered (NaN: no frame)
    "frames_taken",          # frames recorded so far in this run
    "frames_analysed",       # result rows of the live analysis for this run
    "an_seq_num",            # the newest refined frame: its seq_num,
    "an_capacity_mAh_g",     # capacity,
    "an_c_A",                # phase-fraction weighted c,
    "an_n_phases",           # number of layered phases,
    "an_microstrain",        # microstrain (first phase),
    "an_failed",             # 1 when its refinement failed or was flagged
)
#: what each suggestion holds besides bluesky-adaptive's ``_id``
SUGGESTION_FIELDS = ("wait_s", "frame", "exposure_s", "interval_s", "mode", "reason")


@dataclass(frozen=True)
class SamplingBudget:
    """What the user allows the charge.

    Parameters
    ----------
    frames : int
        At most this many frames.
    dose_s : float, optional
        Total exposure, s (default ``frames × exposure_s``: the budget of the fixed interval).
    exposure_s : float
        Exposure of a frame in a dense stretch, s.
    quiet_exposure_s : float
        Exposure of a frame in a quiet stretch, s (≤ ``exposure_s``).
    min_interval_s, max_interval_s : float
        Bounds of the time between frames, s (the densest sampling the detector and the live
        analysis keep up with; the sparsest a quiet stretch is allowed).
    watch_s : float
        Decision points between frames: the cycler and the analysis are looked at this often.
    expected_capacity_mAh_g : float
        Capacity at which the charge is expected to end (the frames are spread up to it).
    dense_share : float
        Share of the frame budget held back for dense stretches (0–1).
    dense_span_share : float
        Share of the expected capacity the dense stretches are expected to span (the two-phase
        plateau of a Ni-rich layered oxide, ~14 %, and the stretch before it where the cell's
        voltage already plateaus: under current the particles' surface runs ahead of their
        bulk, so the dQ/dV onset comes a few % of the capacity before the bulk's second phase).
    dense_step_share : float, optional
        Frames in a dense stretch are this share of the expected capacity apart (converted to
        time with the present charge rate; at least ``min_interval_s``): the density follows
        the capacity, so a slow charge is sampled like a fast one. Default: the dense frames
        spread over ``dense_span_share`` (``dense_span_share / (dense_share × frames)``).
    """

    frames: int
    dose_s: float | None = None
    exposure_s: float = 0.2
    quiet_exposure_s: float = 0.1
    min_interval_s: float = 0.5
    max_interval_s: float = 3600.0
    watch_s: float = 0.5
    expected_capacity_mAh_g: float = 220.0
    dense_share: float = 0.7
    dense_span_share: float = 0.2
    dense_step_share: float | None = None

    def __post_init__(self) -> None:
        if self.frames < 2:
            raise ValueError(f"frame budget must be at least 2 frames, got {self.frames}")
        if not 0 < self.quiet_exposure_s <= self.exposure_s:
            raise ValueError(f"exposures must satisfy 0 < quiet_exposure_s ({self.quiet_exposure_s}) "
                             f"<= exposure_s ({self.exposure_s})")
        if self.dose_s is not None and not self.dose_s >= 2 * self.quiet_exposure_s:
            raise ValueError(f"dose budget {self.dose_s} s is less than two quiet frames "
                             f"({2 * self.quiet_exposure_s} s)")
        if not 0 < self.min_interval_s <= self.max_interval_s:
            raise ValueError(f"need 0 < min_interval_s ({self.min_interval_s}) <= max_interval_s "
                             f"({self.max_interval_s})")
        if not 0 < self.watch_s <= self.min_interval_s:
            raise ValueError(f"watch_s ({self.watch_s}) must be > 0 and <= min_interval_s "
                             f"({self.min_interval_s}): a dense stretch is decided at the watch points")
        if not self.expected_capacity_mAh_g > 0:
            raise ValueError(f"expected_capacity_mAh_g must be > 0, got {self.expected_capacity_mAh_g}")
        if not 0 <= self.dense_share < 1:
            raise ValueError(f"dense_share must be in [0, 1), got {self.dense_share}")
        if not 0 < self.dense_span_share <= 1:
            raise ValueError(f"dense_span_share must be in (0, 1], got {self.dense_span_share}")
        if self.dense_step_share is not None and not 0 < self.dense_step_share < 1:
            raise ValueError(f"dense_step_share must be in (0, 1), got {self.dense_step_share}")

    @property
    def dense_step(self) -> float:
        """Share of the expected capacity between frames of a dense stretch."""
        if self.dense_step_share is not None:
            return float(self.dense_step_share)
        return min(self.dense_span_share / max(self.dense_share * self.frames, 1.0), 1.0)

    @property
    def total_dose_s(self) -> float:
        return self.frames * self.exposure_s if self.dose_s is None else float(self.dose_s)


@dataclass(frozen=True)
class Triggers:
    """What makes a stretch dense (see the module's description)."""

    dqdv_factor: float = 2.5
    #: the onset of a plateau: dQ/dV at least this many times the step before (and at least
    #: ``dqdv_onset_floor`` × its median): caught one step before it is a peak
    dqdv_onset: float = 2.0
    dqdv_onset_floor: float = 0.5
    dcdq_factor: float = 4.0
    strain_rise: float = 0.5
    #: dense frames kept after the last trigger
    hold_frames: int = 1
    #: more frames than this not refined yet: the analysis lags, the fixed interval holds
    max_lag_frames: int = 2
    #: dQ/dV is taken over at least this capacity step (mAh/g) between cycler readings
    dqdv_step_mAh_g: float = 2.0
    #: medians need this many values before a trigger may fire
    min_history: int = 4
    #: and the dQ/dV median this share of the expected capacity (the steep start of a charge
    #: is no baseline)
    dqdv_history_share: float = 0.1


@dataclass
class _State:
    """What the agent has seen; rebuilt exactly by ingesting the same outcomes."""

    #: the last cycler readings (the capacity rate)
    seen: deque = field(default_factory=lambda: deque(maxlen=10))
    #: (capacity, voltage) of the first reading and of the last dQ/dV point
    first: tuple[float, float] | None = None
    anchor: tuple[float, float] | None = None
    frames: int = 0
    dense_frames: int = 0
    dose_s: float = 0.0
    last_frame_t: float = math.nan
    hold: int = 0
    dqdv: list[float] = field(default_factory=list)
    dcdq: list[float] = field(default_factory=list)
    strain: list[float] = field(default_factory=list)
    last_row: dict[str, float] | None = None
    charge_ended: bool = False


class OperandoSamplingAgent:
    """Decides when the next operando XRD frame is taken and with what exposure (see the
    module's description); a :mod:`bluesky_adaptive` ``Optimizer``.

    Parameters
    ----------
    budget : SamplingBudget
    triggers : Triggers, optional
    adaptive : bool
        False: the fixed-interval reference with the same machinery (frames spread evenly over
        the expected charge, every frame with the full exposure, no trigger acted on).
    """

    def __init__(self, budget: SamplingBudget, triggers: Triggers | None = None, *,
                 adaptive: bool = True) -> None:
        self.budget = budget
        self.triggers = triggers or Triggers()
        self.adaptive = bool(adaptive)
        self._state = _State()
        self._last_obs: dict[str, float] | None = None
        self._next_id = 0
        self._pending: dict[str, dict[str, Any]] = {}
        self.decisions: list[dict[str, Any]] = []

    # -- configuration, recorded with the run and used to replay it -------------------------
    def config(self) -> dict[str, Any]:
        """The agent's settings as plain data (recorded in the start document)."""
        return {"budget": asdict(self.budget), "triggers": asdict(self.triggers), "adaptive": self.adaptive}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> OperandoSamplingAgent:
        """The agent :meth:`config` describes."""
        def pick(kind, values):
            names = {f.name for f in fields(kind)}
            return kind(**{k: v for k, v in dict(values or {}).items() if k in names})
        return cls(pick(SamplingBudget, config["budget"]), pick(Triggers, config.get("triggers")),
                   adaptive=bool(config.get("adaptive", True)))

    # -- bluesky_adaptive's Optimizer protocol -----------------------------------------------
    def suggest(self, num_points: int | None = None) -> list[dict[str, Any]]:
        """The next decision point(s): one at a time (each depends on what the last one saw)."""
        if num_points not in (None, 1):
            raise ValueError("the sampling agent decides one point at a time (num_points=1)")
        decision = self._decide()
        decision["_id"] = str(self._next_id)
        self._next_id += 1
        self._pending[decision["_id"]] = decision
        return [decision]

    def ingest(self, points: Sequence[Mapping[str, Any]]) -> None:
        """What was seen at the decision point(s) (``OBSERVATION_FIELDS``, plus ``_id``)."""
        for point in points:
            decision = self._pending.pop(str(point.get("_id")), None)
            obs = {k: _num(point.get(k)) for k in OBSERVATION_FIELDS}
            self._observe(obs, took_frame=bool(decision and decision["frame"]),
                          exposure_s=decision["exposure_s"] if decision else 0.0,
                          dense=bool(decision and decision["mode"] == "dense"))
            if decision is not None:
                self.decisions.append({**decision, **obs})

    def register_failures(self, suggestions: Sequence[Mapping[str, Any]]) -> None:
        for s in suggestions:
            self._pending.pop(str(s.get("_id")), None)

    def get_best_points(self) -> list[tuple[Any, Mapping, Mapping]]:
        """Sampling has no optimum: the decisions are in :attr:`decisions`."""
        return []

    def should_stop(self) -> tuple[bool, str | None]:
        st, b = self._state, self.budget
        if st.charge_ended:
            return True, "the charge ended (cycler step over)"
        if st.frames >= b.frames:
            return True, f"frame budget spent ({st.frames} of {b.frames})"
        if st.dose_s >= b.total_dose_s - 1e-9:
            return True, f"dose budget spent ({st.dose_s:.3g} of {b.total_dose_s:.3g} s)"
        return False, None

    # -- the policy --------------------------------------------------------------------------
    def _observe(self, obs: dict[str, float], *, took_frame: bool, exposure_s: float, dense: bool) -> None:
        st, tr = self._state, self.triggers
        if took_frame:
            st.frames += 1
            st.dose_s += exposure_s
            st.last_frame_t = obs["frame_t_s"] if math.isfinite(obs["frame_t_s"]) else obs["t_s"]
            st.dense_frames += int(dense)
            st.hold = max(0, st.hold - 1)
        if obs["running"] == 0 and st.seen:
            st.charge_ended = True
        # dQ/dV over the last capacity step of at least dqdv_step_mAh_g
        q, v = obs["capacity_mAh_g"], obs["voltage_V"]
        if math.isfinite(q) and math.isfinite(v):
            if st.anchor is None:
                st.anchor = st.first = (q, v)
            elif q - st.anchor[0] >= tr.dqdv_step_mAh_g:  # one value per capacity step
                dv = v - st.anchor[1]
                st.dqdv.append((q - st.anchor[0]) / dv if dv > 1e-6 else math.inf)
                st.anchor = (q, v)
            st.seen.append({"capacity_mAh_g": q, "voltage_V": v, "t_s": obs["t_s"]})
        # the analysis: slopes between the newest refined frame and the one seen before it
        row = {k: obs[k] for k in ("an_seq_num", "an_capacity_mAh_g", "an_c_A", "an_n_phases",
                                   "an_microstrain", "an_failed")}
        if math.isfinite(row["an_seq_num"]) and (st.last_row is None or row["an_seq_num"] != st.last_row["an_seq_num"]):
            prev, st.last_row = st.last_row, row
            if prev is not None and row["an_failed"] == 0 and prev["an_failed"] == 0:
                dq = row["an_capacity_mAh_g"] - prev["an_capacity_mAh_g"]
                if dq > 0 and math.isfinite(row["an_c_A"]) and math.isfinite(prev["an_c_A"]):
                    st.dcdq.append(abs(row["an_c_A"] - prev["an_c_A"]) / dq)
                if math.isfinite(row["an_microstrain"]) and math.isfinite(prev["an_microstrain"]):
                    st.strain.append(row["an_microstrain"] - prev["an_microstrain"])
        self._last_obs = obs

    def _trigger(self, analysis: bool = True) -> str:
        """Why the present stretch is dense ('' when it is not); the live analysis' signals
        only with ``analysis``."""
        st, tr = self._state, self.triggers
        span = st.anchor[0] - st.first[0] if st.anchor is not None else 0.0
        if len(st.dqdv) > tr.min_history and span >= tr.dqdv_history_share * self.budget.expected_capacity_mAh_g:
            med = statistics.median(st.dqdv[:-1])
            if med > 0 and st.dqdv[-1] > tr.dqdv_factor * med:
                return f"dQ/dV {st.dqdv[-1]:.3g} mAh/g/V = {st.dqdv[-1] / med:.1f}x the median (plateau)"
            if med > 0 and st.dqdv[-1] >= tr.dqdv_onset_floor * med and st.dqdv[-1] >= tr.dqdv_onset * st.dqdv[-2]:
                return (f"dQ/dV {st.dqdv[-1]:.3g} mAh/g/V = {st.dqdv[-1] / st.dqdv[-2]:.1f}x the step before "
                        f"(a plateau's onset)")
        row = st.last_row
        if analysis and row is not None and row["an_failed"] == 0:
            if row["an_n_phases"] >= 2:
                return f"two phases in frame {int(row['an_seq_num'])}"
            if len(st.dcdq) > tr.min_history:
                med = statistics.median(st.dcdq[:-1])
                if med > 0 and st.dcdq[-1] > tr.dcdq_factor * med:
                    return f"|dc/dQ| {st.dcdq[-1]:.3g} A per mAh/g = {st.dcdq[-1] / med:.1f}x the median"
            if len(st.strain) > tr.min_history and math.isfinite(row["an_microstrain"]):
                level = row["an_microstrain"]
                if st.strain[-1] > tr.strain_rise * abs(level) and level > 0:
                    return f"microstrain up {st.strain[-1]:.2g} to {level:.3g}"
        return ""

    def _decide(self) -> dict[str, Any]:
        st, b, tr = self._state, self.budget, self.triggers
        obs = self._last_obs
        if obs is None:  # nothing seen yet: look first
            return self._decision(0.0, False, b.quiet_exposure_s, math.nan, "watch", "first look")
        now = obs["t_s"]
        frames_left = b.frames - st.frames
        dose_left = b.total_dose_s - st.dose_s
        remaining_s = self._remaining_s()
        lag = obs["frames_taken"] - obs["frames_analysed"] if math.isfinite(obs["frames_analysed"]) else math.inf
        fixed = _clip(remaining_s / max(frames_left, 1), b.min_interval_s, b.max_interval_s)
        if not self.adaptive:
            mode, interval, exposure, why = "fixed", fixed, b.exposure_s, "fixed interval"
        else:
            lagging = st.frames > 0 and lag > tr.max_lag_frames
            # the analysis' triggers wait while it lags; the cycler's (dQ/dV) need no frame
            trigger = self._trigger(analysis=not lagging)
            dense_left = max(0, round(b.dense_share * b.frames) - st.dense_frames)
            if trigger:
                st.hold = tr.hold_frames
            if lagging and not trigger:
                mode, interval, exposure = "fixed", fixed, b.exposure_s
                why = (f"analysis lags {lag:.0f} frames: fixed interval" if math.isfinite(lag)
                       else "no live analysis: fixed interval")
            elif st.last_row is not None and st.last_row["an_failed"] != 0 and not trigger:
                mode, interval, exposure = "fixed", fixed, b.exposure_s
                why = f"analysis failed on frame {int(st.last_row['an_seq_num'])}: fixed interval"
            elif (trigger or st.hold > 0) and (dense_left > 0 or self._can_borrow(frames_left)):
                rate = self._rate()
                step_s = b.dense_step * b.expected_capacity_mAh_g / rate if rate > 0 else 0.0
                mode, interval, exposure = "dense", _clip(step_s, b.min_interval_s, b.max_interval_s), b.exposure_s
                why = trigger or f"holding dense ({st.hold} more frames)"
                if dense_left == 0:
                    why += " (dense share spent: a quiet frame borrowed)"
            else:
                quiet_frames = max(frames_left - dense_left, 1)
                mode = "quiet"
                interval = _clip(remaining_s / quiet_frames, b.min_interval_s, b.max_interval_s)
                exposure = b.quiet_exposure_s
                why = (f"{quiet_frames} frames over ~{remaining_s:.0f} s" + (
                    f" ({dense_left} held for dense stretches)" if dense_left else "")
                       + (f"; {trigger}, but no dense frames left" if trigger else ""))
        # never more exposure than the dose left, keeping a quiet frame for each frame left
        exposure = min(exposure, max(dose_left - (frames_left - 1) * b.quiet_exposure_s, b.quiet_exposure_s))
        exposure = min(exposure, dose_left)
        due = now if math.isnan(st.last_frame_t) else st.last_frame_t + interval
        wait = max(0.0, due - now)
        if wait <= b.watch_s:
            return self._decision(wait, True, exposure, interval, mode, why)
        return self._decision(b.watch_s, False, exposure, interval, mode, why)

    def _can_borrow(self, frames_left: int) -> bool:
        """Whether a dense stretch that outlasts the dense share may take a frame from the quiet
        ones: only while more frames are left than the quiet share of the capacity still to
        come needs (the rest of the charge keeps its quiet sampling)."""
        st, b = self._state, self.budget
        if not st.seen:
            return False
        left = max(b.expected_capacity_mAh_g - st.seen[-1]["capacity_mAh_g"], 0.0) / b.expected_capacity_mAh_g
        reserve = max(1, math.floor((1.0 - b.dense_share) * b.frames * left))
        return frames_left > reserve

    def _remaining_s(self) -> float:
        """Seconds the charge is expected to last from now (capacity rate over the last ~10
        decision points; the expected end capacity)."""
        st, b = self._state, self.budget
        rate = self._rate()
        if not rate > 0:
            return b.max_interval_s * b.frames
        left = b.expected_capacity_mAh_g - st.seen[-1]["capacity_mAh_g"]
        # past the expected end: the charge is about to end, the frames left go densely
        return max(left, 0.0) / rate

    def _rate(self) -> float:
        """Capacity rate, mAh/g per s, over the last ~10 decision points (NaN: not known yet)."""
        seen = self._state.seen
        if len(seen) < 2:
            return math.nan
        dq = seen[-1]["capacity_mAh_g"] - seen[0]["capacity_mAh_g"]
        dt = seen[-1]["t_s"] - seen[0]["t_s"]
        return dq / dt if dt > 0 else math.nan

    @staticmethod
    def _decision(wait_s, frame, exposure_s, interval_s, mode, reason) -> dict[str, Any]:
        return {"wait_s": float(wait_s), "frame": int(bool(frame)), "exposure_s": float(exposure_s),
                "interval_s": float(interval_s), "mode": str(mode), "reason": str(reason)}


def _num(value: Any) -> float:
    """``value`` as a float, NaN when it is none (None, text, a missing key)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _clip(x: float, lo: float, hi: float) -> float:
    if math.isnan(x):
        return hi
    return min(max(x, lo), hi)


def replay_decisions(config: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The decisions a fresh agent makes from the outcomes of ``records`` (the rows of a run's
    ``optimization`` stream, in order): what the recorded run's decisions must equal.

    Returns one ``{SUGGESTION_FIELDS...}`` dict per record.
    """
    agent = OperandoSamplingAgent.from_config(config)
    out = []
    for rec in records:
        (decision,) = agent.suggest(1)
        out.append({k: decision[k] for k in SUGGESTION_FIELDS})
        agent.ingest([{"_id": decision["_id"], **{k: rec.get(k) for k in OBSERVATION_FIELDS}}])
    return out


def phase_pairs(row: Mapping[str, Any]) -> list[tuple[float, float]]:
    """``[(c, fraction), ...]`` of the refined layered phases of a result row (``c_A``,
    ``fraction``, ``c_A_2``, ``fraction_2``); a phase without a fraction counts as 1."""
    pairs = [(_num(row.get(f"c_A{s}")), _num(row.get(f"fraction{s}"))) for s in ("", "_2")]
    return [(c, w if math.isfinite(w) else 1.0) for c, w in pairs if math.isfinite(c)]


def mean_c_A(pairs: Sequence[tuple[float, float]]) -> float:
    """The phase-fraction weighted c of :func:`phase_pairs` (NaN without phases)."""
    total = sum(w for _, w in pairs)
    return sum(c * w for c, w in pairs) / total if pairs and total > 0 else math.nan


def same_decisions(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> bool:
    """Whether two decision lists are identical field by field (NaN equals NaN: a float that
    went through the catalog must come back bit for bit)."""
    def same(x, y):
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            return True
        return type(x) is type(y) and x == y
    return len(a) == len(b) and all(
        set(p) == set(q) and all(same(p[k], q[k]) for k in p) for p, q in zip(a, b, strict=True))


def sampling_metrics(preset_name: str, frames: Sequence[Mapping[str, Any]],
                     soc_range: tuple[float, float] | None = None) -> dict[str, Any]:
    """How well a charge's frames caught a simulated cell's lattice, against the simulator's truth.

    Parameters
    ----------
    preset_name : str
        The cell preset the charge ran on (:mod:`strainstream.sim.cell`).
    frames : sequence of mappings
        One per refined frame: ``soc`` (the cycler's bulk state of charge at the frame),
        ``c_A``, ``fraction``, ``c_A_2``, ``fraction_2`` (NaN/None for a single phase),
        ``n_phases`` and ``delta_c_A`` of the live analysis.
    soc_range : (float, float), optional
        The state-of-charge range the curve error is taken over (default: the frames' own);
        give two charges the same range to compare them.

    Returns
    -------
    dict
        ``frames``; ``window_soc`` (the truth's two-phase window) and ``frames_in_window``
        (frames whose soc lies in it); ``two_phase_frames`` (refined with two phases);
        ``c_curve_rms_A``: RMS difference over ``soc_range`` between the c of the majority
        phase (the strongest (003): what the curve of c against capacity shows) linearly
        interpolated between the frames and the truth's; ``c_mean_curve_rms_A``: the same for
        the phase-fraction weighted c (the (003) centroid's); ``max_delta_c_A`` recovered and
        ``max_delta_c_true_A``.
    """
    import numpy as np

    from strainstream.sim import cell as simcell

    def major_c(pairs):
        return max(pairs, key=lambda p: p[1])[0] if pairs else math.nan

    truth = simcell.contraction_metrics(preset_name)
    window = truth["two_phase_soc"]
    socs = np.array([_num(f.get("soc")) for f in frames])
    pairs = [phase_pairs(f) for f in frames]
    refined = np.isfinite(socs) & np.array([bool(p) for p in pairs], dtype=bool)
    s_ok = np.sort(socs[refined])
    lo, hi = soc_range if soc_range is not None else ((s_ok[0], s_ok[-1]) if s_ok.size else (math.nan, math.nan))
    rms = {major_c: math.nan, mean_c_A: math.nan}
    if s_ok.size >= 2 and hi > lo:
        grid = np.linspace(lo, hi, 2001)
        true_pairs = [[(p.c_A, p.fraction) for p in simcell.lattice_at_soc(preset_name, x)] for x in grid]
        for reduce in rms:  # the same c of the frames and of the truth, interpolated between frames
            cs = np.array([reduce(p) for p in pairs])
            ok = np.isfinite(socs) & np.isfinite(cs)
            order = np.argsort(socs[ok])
            true = np.array([reduce(p) for p in true_pairs])
            rms[reduce] = float(np.sqrt(np.mean((np.interp(grid, socs[ok][order], cs[ok][order]) - true) ** 2)))
    dcs = [_num(f.get("delta_c_A")) for f in frames]
    dcs = [d for d in dcs if math.isfinite(d)]
    return {
        "frames": len(frames),
        "window_soc": list(window) if window else None,
        "frames_in_window": int(np.sum((socs >= window[0]) & (socs <= window[1]))) if window else 0,
        "two_phase_frames": sum(_num(f.get("n_phases")) == 2 for f in frames),
        "c_curve_rms_A": rms[major_c],
        "c_mean_curve_rms_A": rms[mean_c_A],
        "soc_range": [float(lo), float(hi)],
        "max_delta_c_A": max(dcs) if dcs else math.nan,
        "max_delta_c_true_A": truth["max_delta_c_A"],
    }
