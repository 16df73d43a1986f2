"""Electrochemistry from a cycler record: capacity, state of charge, dQ/dV, GITT diffusivity.

Sign convention: current is positive on charge (delithiation of the positive electrode),
so the net specific capacity grows on charge and falls on discharge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from strainstream.errors import StrainstreamError

__all__ = [
    "ElectrochemInputError",
    "GITTPulse",
    "GITTResult",
    "HalfCycle",
    "cumulative_capacity_mAh_g",
    "cycling_metrics",
    "dqdv",
    "gitt_diffusivity",
    "gitt_diffusivity_cm2_s",
    "half_cycles",
    "mean_voltage_V",
    "split_gitt_pulses",
    "state_of_charge",
]


class ElectrochemInputError(StrainstreamError, ValueError):
    """Bad electrochemistry input (shape, NaN, non-monotonic time, missing mass...)."""


def _as_1d(name: str, x, n: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ElectrochemInputError(f"{name} must be a 1-D array, got shape {a.shape}")
    if n is not None and a.size != n:
        raise ElectrochemInputError(
            f"{name} has {a.size} samples but time_s has {n}; pass arrays of equal length"
        )
    if not np.all(np.isfinite(a)):
        bad = int(np.count_nonzero(~np.isfinite(a)))
        raise ElectrochemInputError(
            f"{name} contains {bad} NaN/inf values; drop or interpolate those samples first"
        )
    return a


def _check_time(time_s) -> np.ndarray:
    t = _as_1d("time_s", time_s)
    if t.size < 2:
        raise ElectrochemInputError("time_s needs at least 2 samples")
    if np.any(np.diff(t) < 0):
        i = int(np.argmax(np.diff(t) < 0))
        raise ElectrochemInputError(
            f"time_s must be non-decreasing (it goes back at sample {i + 1}); sort the record "
            "or split it into separate runs"
        )
    return t


def _check_mass(mass_mg: float) -> float:
    try:
        m = float(mass_mg)
    except (TypeError, ValueError):
        raise ElectrochemInputError(f"mass_mg must be a number (mg), got {mass_mg!r}") from None
    if not (math.isfinite(m) and m > 0):
        raise ElectrochemInputError(
            f"mass_mg must be the positive active-material mass in mg, got {mass_mg!r}"
        )
    return m


def cumulative_capacity_mAh_g(time_s, current_mA, mass_mg: float) -> np.ndarray:
    """Net specific capacity passed since the first sample (trapezoidal rule).

    Parameters
    ----------
    time_s : array_like, shape (n,)
        Sample times (s), non-decreasing.
    current_mA : array_like, shape (n,)
        Current (mA), positive on charge.
    mass_mg : float
        Active material mass (mg).

    Returns
    -------
    ndarray, shape (n,)
        Q(t) = ∫ I dt / 3.6 / mass_mg in mAh/g (starts at 0; charge +, discharge −).
        For a constant current I (mA) over t seconds: Q = I·t/3600/(mass_mg/1000).

    Raises
    ------
    ValueError
        Shape mismatch, NaN, decreasing time or a non-positive mass.
    """
    t = _check_time(time_s)
    i = _as_1d("current_mA", current_mA, t.size)
    m = _check_mass(mass_mg)
    dq_mAh = 0.5 * (i[1:] + i[:-1]) * np.diff(t) / 3600.0
    return np.concatenate([[0.0], np.cumsum(dq_mAh)]) / (m / 1000.0)


def state_of_charge(capacity_mAh_g, reference_capacity_mAh_g: float, soc0: float = 0.0):
    """State of charge from the net specific capacity.

    Parameters
    ----------
    capacity_mAh_g : array_like, shape (n,) or scalar
        Net capacity since the reference state (mAh/g; charge +).
    reference_capacity_mAh_g : float
        Capacity that corresponds to a full charge (mAh/g), e.g. the practical capacity.
    soc0 : float
        State of charge at capacity 0.

    Returns
    -------
    ndarray or float
        soc = soc0 + capacity / reference (not clipped).
    """
    ref = float(reference_capacity_mAh_g)
    if not (math.isfinite(ref) and ref > 0):
        raise ElectrochemInputError("reference_capacity_mAh_g must be a positive number (mAh/g)")
    cap = np.asarray(capacity_mAh_g, dtype=np.float64)
    if not np.all(np.isfinite(cap)):
        raise ElectrochemInputError("capacity_mAh_g contains NaN/inf")
    out = soc0 + cap / ref
    return float(out) if out.ndim == 0 else out


def dqdv(
    voltage_V,
    capacity_mAh_g,
    *,
    bin_width_V: float = 0.002,
    smooth_V: float = 0.006,
    v_range_V: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Differential capacity dQ/dV of one charge or discharge segment.

    Each capacity increment ΔQ between consecutive samples is assigned to the voltage bin of
    the interval's mean voltage (a histogram of charge by voltage), divided by the bin
    width and smoothed with a Gaussian of standard deviation ``smooth_V``. This never
    divides by ΔV, so flat plateaus (ΔV ≈ 0), repeated voltages and noise that makes V
    non-monotonic are harmless: charge passed on a plateau piles up in the plateau's bins.

    Parameters
    ----------
    voltage_V : array_like, shape (n,)
        Cell voltage (V).
    capacity_mAh_g : array_like, shape (n,)
        Net capacity (mAh/g), e.g. from :func:`cumulative_capacity_mAh_g`.
    bin_width_V : float
        Voltage bin (V).
    smooth_V : float
        Gaussian smoothing σ (V); 0 disables smoothing.
    v_range_V : (float, float), optional
        Voltage range of the output; default the data range.

    Returns
    -------
    voltage_V : ndarray, shape (m,)
        Bin centres (V).
    dqdv_mAh_g_V : ndarray, shape (m,)
        Charge passed per volt (mAh g⁻¹ V⁻¹): positive on charge, negative on discharge
        (the usual plotting convention). Its integral over V is the net capacity of the
        segment.
    """
    v = _as_1d("voltage_V", voltage_V)
    q = _as_1d("capacity_mAh_g", capacity_mAh_g, v.size)
    if v.size < 3:
        raise ElectrochemInputError("dqdv needs at least 3 samples")
    if not (bin_width_V > 0 and math.isfinite(bin_width_V)):
        raise ElectrochemInputError("bin_width_V must be > 0 (V)")
    if not (smooth_V >= 0 and math.isfinite(smooth_V)):
        raise ElectrochemInputError("smooth_V must be >= 0 (V)")
    lo, hi = (float(v.min()), float(v.max())) if v_range_V is None else map(float, v_range_V)
    if not hi > lo:
        raise ElectrochemInputError(
            f"voltage range is empty ({lo} to {hi} V): the voltage never changes, or "
            "v_range_V is reversed"
        )
    n_bins = max(int(math.ceil((hi - lo) / bin_width_V)), 1)
    edges = lo + bin_width_V * np.arange(n_bins + 1)
    v_mid = 0.5 * (v[1:] + v[:-1])
    dq = np.diff(q)
    idx = np.floor((v_mid - lo) / bin_width_V).astype(np.intp)
    ok = (idx >= 0) & (idx < n_bins)
    hist = np.bincount(idx[ok], weights=dq[ok], minlength=n_bins) / bin_width_V
    if smooth_V > 0:
        hist = gaussian_filter1d(hist, smooth_V / bin_width_V, mode="constant")
    return 0.5 * (edges[1:] + edges[:-1]), hist


@dataclass(frozen=True)
class HalfCycle:
    """One charge or discharge segment of a record.

    Attributes
    ----------
    start, stop : int
        Sample slice [start, stop) of the segment (rests excluded at both ends).
    direction : int
        +1 charge, −1 discharge.
    capacity_mAh_g : float
        |charge| passed in the segment (mAh/g), trapezoidal.
    """

    start: int
    stop: int
    direction: int
    capacity_mAh_g: float


def half_cycles(time_s, current_mA, mass_mg: float, *,
                threshold_mA: float | None = None) -> list[HalfCycle]:
    """Split a cycling record into charge and discharge segments.

    A segment is a maximal run of samples whose current has the same sign and |I| above
    the threshold; rests (|I| ≤ threshold) separate nothing by themselves, i.e. a CC charge,
    a rest and a CV hold on charge stay one charge segment until the sign changes.

    Parameters
    ----------
    time_s, current_mA : array_like, shape (n,)
        Record (s, mA; + = charge).
    mass_mg : float
        Active mass (mg).
    threshold_mA : float, optional
        Default 1 % of max |I|.

    Returns
    -------
    list of HalfCycle
        In time order. Capacity retention over cycles is
        ``[h.capacity_mAh_g for h in segs if h.direction < 0]`` divided by its first value.
    """
    t = _check_time(time_s)
    i = _as_1d("current_mA", current_mA, t.size)
    q = cumulative_capacity_mAh_g(t, i, mass_mg)
    imax = float(np.max(np.abs(i)))
    if imax == 0:
        return []
    thr = 0.01 * imax if threshold_mA is None else float(threshold_mA)
    sign = np.where(i > thr, 1, np.where(i < -thr, -1, 0))
    active = np.nonzero(sign)[0]
    if active.size == 0:
        return []
    s_act = sign[active]
    breaks = np.nonzero(np.diff(s_act))[0]
    firsts = np.r_[0, breaks + 1]
    lasts = np.r_[breaks, s_act.size - 1]
    out = []
    for f, l_ in zip(firsts, lasts, strict=True):
        a, b = int(active[f]), int(active[l_])
        lo = max(a - 1, 0)  # include the interval leading into the first active sample
        cap = abs(float(q[b] - q[lo]))
        out.append(HalfCycle(start=a, stop=b + 1, direction=int(s_act[f]), capacity_mAh_g=cap))
    return out


def gitt_diffusivity_cm2_s(radius_cm, tau_s, delta_es_V, slope_V_per_sqrt_s):
    """GITT chemical diffusion coefficient (REFERENCE.md, Weppner–Huggins for spheres).

    D = 4/(9π) · (r_p/τ · ΔE_s / (dE/d√t))²

    Parameters
    ----------
    radius_cm : float or ndarray
        Particle radius r_p in **cm**.
    tau_s : float or ndarray
        Current pulse duration τ (s).
    delta_es_V : float or ndarray
        Change of the steady-state (relaxed) voltage over the pulse, ΔE_s (V).
    slope_V_per_sqrt_s : float or ndarray
        dE/d√t during the pulse (V s^-½).

    Returns
    -------
    float or ndarray
        D in cm² s⁻¹ (signs of ΔE_s and slope cancel).
    """
    r = np.asarray(radius_cm, dtype=float)
    ratio = np.asarray(delta_es_V, dtype=float) / np.asarray(slope_V_per_sqrt_s, dtype=float)
    d = 4.0 / (9.0 * np.pi) * (r / np.asarray(tau_s, dtype=float) * ratio) ** 2
    return float(d) if d.ndim == 0 else d


@dataclass(frozen=True)
class GITTPulse:
    """Sample indices of one GITT titration step.

    ``start`` is the first sample with |I| above threshold, ``stop`` the first sample after
    the pulse (|I| back below threshold), ``rest_end`` the last sample of the rest that
    follows (just before the next pulse or the end of the record), ``before`` the last
    sample before the pulse (end of the preceding rest).
    """

    before: int
    start: int
    stop: int
    rest_end: int


@dataclass(frozen=True)
class GITTResult:
    """Per-pulse GITT results (all arrays shape (n_pulses,)).

    Attributes
    ----------
    pulses : list of GITTPulse
    t_start_s, tau_s : ndarray
        Pulse start time and duration (s).
    current_mA : ndarray
        Mean pulse current (mA).
    e_before_V, e_after_V, delta_es_V : ndarray
        Relaxed voltage before/after the pulse and their difference (V).
    slope_V_per_sqrt_s : ndarray
        Fitted dE/d√t in the window (V s^-½).
    n_fit : ndarray of int
        Samples used in the fit.
    d_cm2_s : ndarray
        Diffusivity (cm² s⁻¹); NaN when the pulse could not be analysed.
    reason : list of str
        "" for a good pulse, otherwise why D is NaN.
    """

    pulses: list[GITTPulse]
    t_start_s: np.ndarray
    tau_s: np.ndarray
    current_mA: np.ndarray
    e_before_V: np.ndarray
    e_after_V: np.ndarray
    delta_es_V: np.ndarray
    slope_V_per_sqrt_s: np.ndarray
    n_fit: np.ndarray
    d_cm2_s: np.ndarray
    reason: list[str]


def split_gitt_pulses(time_s, current_mA, *, threshold_mA: float | None = None) -> list[GITTPulse]:
    """Split a GITT record into current pulses and the rests that follow them.

    Parameters
    ----------
    time_s : array_like, shape (n,)
        Sample times (s), non-decreasing.
    current_mA : array_like, shape (n,)
        Current (mA).
    threshold_mA : float, optional
        |I| above this is "on" (default 5 % of max |I|).

    Returns
    -------
    list of GITTPulse
        In time order. A pulse still running at the end of the record is dropped.
    """
    t = _check_time(time_s)
    i = _as_1d("current_mA", current_mA, t.size)
    imax = float(np.max(np.abs(i)))
    if imax == 0:
        return []
    thr = 0.05 * imax if threshold_mA is None else float(threshold_mA)
    on = np.abs(i) > thr
    d = np.diff(on.astype(np.int8))
    starts = np.nonzero(d == 1)[0] + 1
    stops = np.nonzero(d == -1)[0] + 1
    if on[0]:
        starts = np.r_[0, starts]
    pulses: list[GITTPulse] = []
    for k, s in enumerate(starts):
        after = stops[stops > s]
        if after.size == 0:
            break
        stop = int(after[0])
        nxt = starts[k + 1] if k + 1 < starts.size else t.size
        pulses.append(GITTPulse(before=max(int(s) - 1, 0), start=int(s), stop=stop,
                                rest_end=int(nxt) - 1))
    return pulses


def _relaxed_mean(t: np.ndarray, v: np.ndarray, first: int, last: int, window_s: float) -> float:
    """Mean voltage of samples first..last (inclusive) within window_s of t[last]."""
    first = min(first, last)
    lo = first + int(np.searchsorted(t[first:last + 1], t[last] - window_s, side="left"))
    return float(np.mean(v[min(lo, last):last + 1]))


def _sqrt_t_slope(dt: np.ndarray, v: np.ndarray, w0: float, w1: float, step_s: float | None) -> float:
    """Least-squares dE/d√t over w0 < √dt < w1 (V s^-½) of the pulse samples (dt, v).

    With ``step_s`` the voltage is first interpolated linearly onto a uniform time grid of
    that step over the sampled part of the window (a cycler logging at a fixed interval);
    otherwise the samples in the window are fitted as they are.
    """
    sq = np.sqrt(dt)
    sel = (sq > w0) & (sq < w1)
    if step_s is None:
        return float(np.polyfit(sq[sel], v[sel], 1)[0])
    # interpolated linearly in √t: exact for a √t transient, whatever the sample spacing
    lo, hi = max(w0 * w0, float(dt[0])), min(w1 * w1, float(dt[-1]))
    n = max(int(round((hi - lo) / step_s)) + 1, 2)
    grid = np.linspace(lo, hi, n)
    return float(np.polyfit(np.sqrt(grid), np.interp(np.sqrt(grid), sq, v), 1)[0])


def gitt_diffusivity(
    time_s,
    voltage_V,
    current_mA,
    radius_cm: float,
    *,
    fit_window_sqrt_s: tuple[float, float] = (10.0, 20.0),
    threshold_mA: float | None = None,
    min_fit_points: int = 5,
    relaxed_average_s: float = 30.0,
    fit_step_s: float | None = 1.0,
    charge_mAh=None,
) -> GITTResult:
    """GITT diffusivity for every pulse of a record.

    Record convention: sample k's current is the current applied from t[k] on (so a pulse
    runs from t[start] to t[stop]); the sample before ``start`` is the end of the preceding
    rest.

    For each pulse: τ = t[stop] − t[start]; ΔE_s = E_after − E_before, the relaxed voltages
    at the end of the following rest and at the end of the preceding rest, each the mean of
    the rest samples in the last ``relaxed_average_s`` seconds (at least one sample; this
    averages out voltage noise); dE/d√t is the
    least-squares slope of V against √(t − t[start]) in the window
    ``fit_window_sqrt_s[0] < √(t − t_start) < fit_window_sqrt_s[1]`` (default 10–20 s^½,
    i.e. 100–400 s into the pulse); D from :func:`gitt_diffusivity_cm2_s`.

    The pulse voltage of a finite particle is not exactly linear in √t (the bulk term grows
    as t), so a fit to the raw samples depends on where they fall in the window: readings
    polled at uneven times (a cycler read when the control loop is free, readings torn
    by a concurrent update left out) move D by several per cent from pulse to pulse. With
    ``fit_step_s`` (default 1 s) the pulse voltage is interpolated linearly onto a uniform
    time grid of that step over the sampled part of the window — the log of a cycler
    recording at a fixed interval — and the slope is fitted to that, so it depends on the
    transient, not on the sampling. ``fit_step_s=None`` fits the raw samples.

    With ``charge_mAh`` (the cycler's charge counter) the pulse edges come from the charge
    passed, not from the first and last readings under current: the pulse started at
    t_on = t[start] − (q[start] − q[before])·3600/I and lasted τ = (q[stop] − q[before])·3600/I
    (I the pulse current, mA), so a reading taken one cycler update after the current step
    (late, or the one at the step left out as torn) shifts neither τ nor the √t axis.

    Parameters
    ----------
    time_s, voltage_V, current_mA : array_like, shape (n,)
        The record (s, V, mA).
    radius_cm : float
        Particle radius r_p (cm) — D is returned in cm²/s.
    fit_window_sqrt_s : (float, float)
        √t window of the slope fit (s^½).
    threshold_mA : float, optional
        See :func:`split_gitt_pulses`.
    min_fit_points : int
        Fewer samples in the window → D = NaN with a reason.
    relaxed_average_s : float
        Length (s) of the end-of-rest interval averaged for the relaxed voltages.
    fit_step_s : float or None
        Time step (s, > 0) of the uniform grid the slope is fitted on, or None for the raw
        samples (see above).
    charge_mAh : array_like, shape (n,), optional
        Cumulative charge passed (mAh, + on charge) at each sample; NaN-free to be used.

    Returns
    -------
    GITTResult
    """
    t = _check_time(time_s)
    v = _as_1d("voltage_V", voltage_V, t.size)
    i = _as_1d("current_mA", current_mA, t.size)
    r = float(radius_cm)
    if not (math.isfinite(r) and r > 0):
        raise ElectrochemInputError("radius_cm must be the positive particle radius in cm")
    w0, w1 = map(float, fit_window_sqrt_s)
    if not (0 <= w0 < w1):
        raise ElectrochemInputError("fit_window_sqrt_s must be (low, high) with 0 <= low < high")
    if fit_step_s is not None and not (math.isfinite(fit_step_s) and fit_step_s > 0):
        raise ElectrochemInputError(f"fit_step_s must be a positive number of seconds or None, got {fit_step_s!r}")
    q = None if charge_mAh is None else _as_1d("charge_mAh", charge_mAh, t.size)
    if q is not None and not np.isfinite(q).all():
        q = None
    pulses = split_gitt_pulses(t, i, threshold_mA=threshold_mA)
    n = len(pulses)
    out = {k: np.full(n, np.nan) for k in (
        "t_start_s", "tau_s", "current_mA", "e_before_V", "e_after_V", "delta_es_V",
        "slope_V_per_sqrt_s", "d_cm2_s")}
    n_fit = np.zeros(n, dtype=int)
    reasons: list[str] = []
    for k, p in enumerate(pulses):
        out["current_mA"][k] = current = float(np.mean(i[p.start:p.stop]))
        t0, tau = t[p.start], t[p.stop] - t[p.start]
        if q is not None and current != 0 and p.start > 0:  # edges from the charge counter
            t0 = t[p.start] - (q[p.start] - q[p.before]) * 3600.0 / current
            tau = (q[p.stop] - q[p.before]) * 3600.0 / current
        out["t_start_s"][k] = t0
        out["tau_s"][k] = tau
        prev_stop = pulses[k - 1].stop if k > 0 else 0
        e_before = _relaxed_mean(t, v, prev_stop, p.before, relaxed_average_s)
        e_after = _relaxed_mean(t, v, p.stop, p.rest_end, relaxed_average_s)
        out["e_before_V"][k] = e_before
        out["e_after_V"][k] = e_after
        out["delta_es_V"][k] = e_after - e_before
        dt = np.maximum(t[p.start:p.stop] - t0, 0.0)
        sq = np.sqrt(dt)
        sel = (sq > w0) & (sq < w1)
        n_fit[k] = int(np.count_nonzero(sel))
        reason = ""
        if p.start == 0:
            reason = "no rest before the first pulse: relaxed starting voltage unknown"
        elif p.rest_end <= p.stop:
            reason = "no rest after the pulse"
        elif n_fit[k] < min_fit_points:
            reason = (f"only {n_fit[k]} samples in the fit window {w0}–{w1} s^1/2 "
                      f"(pulse is {tau:.0f} s long)")
        if not reason:
            slope = _sqrt_t_slope(dt, v[p.start:p.stop], w0, w1, fit_step_s)
            out["slope_V_per_sqrt_s"][k] = slope
            if slope == 0 or np.sign(slope) != np.sign(out["current_mA"][k]):
                reason = "voltage does not move with the current during the pulse"
            else:
                out["d_cm2_s"][k] = gitt_diffusivity_cm2_s(r, tau, out["delta_es_V"][k], slope)
        reasons.append(reason)
    return GITTResult(pulses=pulses, n_fit=n_fit, reason=reasons, **out)


def cycling_metrics(charge_capacity_mAh_g, discharge_capacity_mAh_g) -> dict[str, np.ndarray]:
    """Coulombic efficiency and capacity retention of a sequence of cycles.

    Parameters
    ----------
    charge_capacity_mAh_g, discharge_capacity_mAh_g : array_like, shape (n_cycles,)
        Charge passed on charge and on discharge in each cycle (mAh/g, > 0), cycle 1 first.

    Returns
    -------
    dict of ndarray, shape (n_cycles,)
        ``coulombic_efficiency`` = Q_discharge / Q_charge of the same cycle (fraction) and
        ``retention`` = Q_discharge / Q_discharge of cycle 1 (fraction; the study's
        "capacity retention after 100 cycles" is ``retention[99]``).

    Raises
    ------
    ElectrochemInputError
        Shapes differ, or a capacity is not finite and > 0.
    """
    chg = _as_1d("charge_capacity_mAh_g", charge_capacity_mAh_g)
    dis = _as_1d("discharge_capacity_mAh_g", discharge_capacity_mAh_g, chg.size)
    if not (np.all(np.isfinite(chg)) and np.all(np.isfinite(dis)) and np.all(chg > 0) and np.all(dis > 0)):
        raise ElectrochemInputError("capacities must be finite and > 0 mAh/g (a cycle without charge "
                                    "or discharge?)")
    return {"coulombic_efficiency": dis / chg, "retention": dis / dis[0]}


def mean_voltage_V(capacity_mAh_g, voltage_V) -> float:
    """Capacity-weighted mean voltage of one charge or discharge, ∫V dQ / ∫dQ (V).

    Parameters
    ----------
    capacity_mAh_g, voltage_V : array_like, shape (n,)
        Samples of the half cycle (net capacity, mAh/g, monotonic; voltage, V), n ≥ 2.

    Returns
    -------
    float
        The mean voltage (trapezoidal), NaN when no charge passed.
    """
    q = _as_1d("capacity_mAh_g", capacity_mAh_g)
    v = _as_1d("voltage_V", voltage_V, q.size)
    dq = np.abs(np.diff(q))
    total = float(dq.sum())
    if q.size < 2 or total <= 0:
        return math.nan
    return float(np.sum(0.5 * (v[1:] + v[:-1]) * dq) / total)


def frames_after_rests(rest_end_time_s, frame_time_s) -> np.ndarray:
    """For each GITT pulse, the XRD frame taken at the relaxed point that ends its rest.

    The ``operando_gitt`` plan takes a frame before the first pulse and one at the end of
    every rest (before the next pulse starts). Pulse k's frame is the first frame at or after
    the last reading of its rest (``rest_end_time_s[k]``) and before the end of the next
    rest; none (−1) when the frame is missing (a bad or dropped frame, the run stopped).

    Parameters
    ----------
    rest_end_time_s : array_like, shape (n,)
        Cell time of the last reading of each pulse's rest, s (increasing; NaN: unknown).
    frame_time_s : array_like, shape (m,)
        Cell time of the cycler reading in each frame's event, s (NaN for a frame without
        one); frames in the order they were taken.

    Returns
    -------
    ndarray of int, shape (n,)
        Index into the frames, −1 where no frame belongs to the pulse.
    """
    ends = np.asarray(rest_end_time_s, dtype=float).ravel()
    times = np.asarray(frame_time_s, dtype=float).ravel()
    out = np.full(ends.size, -1, dtype=np.intp)
    ok = np.flatnonzero(np.isfinite(times))
    for k, end in enumerate(ends):
        if not math.isfinite(end):
            continue
        limit = ends[k + 1] if k + 1 < ends.size and math.isfinite(ends[k + 1]) else math.inf
        after = ok[(times[ok] >= end) & (times[ok] < limit)]
        if after.size:
            out[k] = after[0]
    return out
