"""Refinement of a 2θ pattern with the diffractometer's zero shift refined (issue 20).

A laboratory Bragg–Brentano pattern carries a 2θ zero error (and a specimen displacement)
that no calibrant fixed: on the 00l reflections that decide c (low angle, where Δd/d ∝ cot θ
is largest) a 0.1° zero moves c by ~3e-3 relative. :func:`refine_pattern` works in Q with the
geometry taken as exact (transmission synchrotron data, calibrated on CeO2); here the zero
``z`` (observed 2θ = true 2θ + z) is refined around it: the refinement's weighted residual is
minimised over ``z`` — a coarse scan of the range, then Brent's search around its best
point — each refinement started from the unshifted one.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ._errors import PatternError
from ._refine import RefinementResult, refine_pattern

__all__ = ["refine_two_theta_pattern"]

#: how closely the zero shift is located, degrees 2θ
ZERO_TOLERANCE_DEG = 1e-3
#: points of the coarse scan of the zero range before the fine search
ZERO_SCAN_POINTS = 13


def _q(two_theta_deg: np.ndarray, wavelength_A: float, zero_deg: float) -> np.ndarray:
    return 4.0 * np.pi * np.sin(np.radians(two_theta_deg - zero_deg) / 2.0) / wavelength_A


def refine_two_theta_pattern(two_theta_deg, intensity, wavelength_A: float, *, zero_deg: float | str = 0.0,
                             zero_range_deg: float = 0.3, **kwargs) -> RefinementResult:
    """:func:`refine_pattern` on a 2θ pattern, with its zero shift given or refined.

    Parameters
    ----------
    two_theta_deg, intensity : array_like, shape (n,)
        The pattern (2θ in degrees, increasing; one wavelength: strip a Kα2 first).
    wavelength_A : float
    zero_deg : float or "refine"
        The 2θ zero shift (observed = true + zero), degrees; ``"refine"`` finds it within
        ± ``zero_range_deg`` (the residual minimised over it, to ``ZERO_TOLERANCE_DEG``).
    zero_range_deg : float
        Half-width of the zero search, degrees.
    **kwargs
        Passed to :func:`refine_pattern` (phases, al, cell, instrument, q_range_A_inv, ...).

    Returns
    -------
    RefinementResult
        With ``zero_shift_deg`` set (and ``"zero_at_bound"`` in its flags when the best zero
        lies on the edge of the search).
    """
    x = np.asarray(two_theta_deg, dtype=np.float64)
    y = np.asarray(intensity, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise PatternError("input", f"2θ and intensity must be 1-D of one length, got {x.shape} and {y.shape}")
    if not np.all((x > 0) & (x < 180)):
        raise PatternError("input", "2θ values must lie in (0, 180) degrees")
    if zero_deg != "refine":
        z = float(zero_deg)
        if not math.isfinite(z) or abs(z) >= 5.0:
            raise PatternError("input", f"zero shift must be a finite number of degrees below 5, got {zero_deg!r}")
        return replace(refine_pattern(_q(x, wavelength_A, z), y, wavelength_A, **kwargs), zero_shift_deg=z)
    if not 0 < zero_range_deg < 5:
        raise PatternError("input", f"zero_range_deg must lie in (0, 5), got {zero_range_deg}")

    from scipy.optimize import minimize_scalar

    results: dict[float, RefinementResult] = {}
    base = refine_pattern(_q(x, wavelength_A, 0.0), y, wavelength_A, **kwargs)
    results[0.0] = base
    start = kwargs.pop("start", None) or base

    def cost(z: float) -> float:
        z = float(z)
        if z not in results:
            try:
                results[z] = refine_pattern(_q(x, wavelength_A, z), y, wavelength_A, start=start, **kwargs)
            except PatternError:
                return math.inf
        return results[z].rwp

    # a coarse scan first (the residual over the zero need not have one minimum: each point is
    # a whole refinement), then Brent's search between the best scan point's neighbours
    grid = np.linspace(-zero_range_deg, zero_range_deg, ZERO_SCAN_POINTS)
    step = grid[1] - grid[0]
    z0 = min(grid, key=cost)
    lo, hi = max(z0 - step, -zero_range_deg), min(z0 + step, zero_range_deg)
    minimize_scalar(cost, bounds=(lo, hi), method="bounded", options={"xatol": ZERO_TOLERANCE_DEG})
    z = min(results, key=lambda k: results[k].rwp)  # Brent may end next to its best point
    res = results[z]
    flags = res.flags
    if abs(z) > zero_range_deg - 10 * ZERO_TOLERANCE_DEG:
        flags = (*flags, "zero_at_bound")
    return replace(res, zero_shift_deg=z, flags=flags)
