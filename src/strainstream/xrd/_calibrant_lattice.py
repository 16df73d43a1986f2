"""Lattice parameter of a cubic calibrant (CeO2, LaB6, Si) from its 1-D powder pattern."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ._errors import PatternError
from ._instrument import _calibrant_q, _fit_peaks


@dataclass(frozen=True)
class CalibrantLattice:
    """Result of :func:`refine_calibrant_lattice`.

    Attributes
    ----------
    calibrant : str
        pyFAI calibrant name.
    a_A, a_err_A : float
        Refined cubic lattice parameter and its standard uncertainty, Å.
    reference_a_A : float
        The calibrant's lattice parameter in pyFAI's calibrant file (the certified value
        for the NIST SRMs: CeO2 674b 5.411651 Å, LaB6 660c 4.156826 Å, Si 640e 5.431179 Å).
    n_peaks : int
        Reflections used.
    peak_q_A_inv, peak_a_A : ndarray, shape (n_peaks,)
        Fitted position of each used reflection (Å⁻¹) and the lattice parameter it gives.
    """

    calibrant: str
    a_A: float
    a_err_A: float
    reference_a_A: float
    n_peaks: int
    peak_q_A_inv: np.ndarray = field(repr=False, compare=False)
    peak_a_A: np.ndarray = field(repr=False, compare=False)

    @property
    def relative_deviation(self) -> float:
        """(a − reference)/reference."""
        return self.a_A / self.reference_a_A - 1.0


def _cubic_index(q_ref):
    """N = h²+k²+l² of each calibrant reflection (Q ∝ √N) and a = 2π√N/Q, or None."""
    ratio = (q_ref / q_ref[0]) ** 2
    for n0 in range(1, 9):
        n = ratio * n0
        if np.all(np.abs(n - np.round(n)) < 2e-4 * n):
            n = np.round(n)
            return n, float(2.0 * np.pi * math.sqrt(n0) / q_ref[0])
    return None


def refine_calibrant_lattice(q_A_inv, intensity, wavelength_A, calibrant="CeO2", *,
                             sigma=None, q_range_A_inv=None, min_snr=20.0):
    """Cubic lattice parameter of a calibrant from the positions of its resolved reflections.

    Every resolved reflection of the pyFAI calibrant is fitted on its own window by a
    pseudo-Voigt plus a linear background (the fits of :func:`instrument_fwhm`, so sloping
    backgrounds are handled locally); each gives a = 2π√(h²+k²+l²)/Q, and a is their
    weighted mean (weights from the position uncertainties, > 4σ outliers dropped). No zero
    shift is refined: for patterns integrated from an area detector the geometry sets the
    2θ scale (a wrong distance shows up as a wrong a).

    Parameters
    ----------
    q_A_inv : array_like, shape (n,)
        Increasing Q grid, Å⁻¹.
    intensity : array_like, shape (n,)
        Intensity (NaN points dropped).
    wavelength_A : float
        Wavelength, Å.
    calibrant : str
        pyFAI calibrant name of a cubic calibrant ("CeO2", "LaB6", "Si"...).
    sigma : array_like, shape (n,), optional
        Standard deviations (default √max(I, 1)).
    q_range_A_inv : (float, float), optional
        Q range used, Å⁻¹.
    min_snr : float
        Minimum peak area over its uncertainty for a reflection to be used.

    Returns
    -------
    CalibrantLattice

    Raises
    ------
    ValueError
        Unknown or non-cubic calibrant.
    PatternError
        Fewer than 3 resolved reflections found.
    """
    q = np.asarray(q_A_inv, dtype=float)
    y = np.asarray(intensity, dtype=float)
    s = np.sqrt(np.maximum(y, 1.0)) if sigma is None else np.asarray(sigma, dtype=float)
    if q.ndim != 1 or y.shape != q.shape or s.shape != q.shape:
        raise PatternError("input", "q_A_inv, intensity and sigma must be 1-D of equal length")
    good = np.isfinite(q) & np.isfinite(y) & np.isfinite(s) & (s > 0)
    if q_range_A_inv is not None:
        good &= (q >= q_range_A_inv[0]) & (q <= q_range_A_inv[1])
    q, y, s = q[good], y[good], s[good]
    if q.size < 50 or not np.all(np.diff(q) > 0):
        raise PatternError("input", "the pattern needs ≥ 50 points on a strictly increasing Q grid")
    q_ref = _calibrant_q(calibrant, wavelength_A)
    index = _cubic_index(q_ref)
    if index is None:
        raise ValueError(f"calibrant {calibrant!r} is not cubic: its lattice parameter cannot "
                         "be refined here")
    n_hkl, a_ref = index
    gap = np.minimum(np.diff(q_ref, prepend=-np.inf), np.diff(q_ref, append=np.inf))
    bin_width = float(np.median(np.diff(q)))
    half = np.minimum(0.45 * gap, 0.15)
    inside = (q_ref - half > q[0]) & (q_ref + half < q[-1]) & (half > 8.0 * bin_width)
    if np.count_nonzero(inside) < 3:
        raise PatternError("no_calibrant_peaks", f"fewer than 3 resolved {calibrant} reflections "
                                                 f"inside Q {q[0]:.3f}–{q[-1]:.3f} Å⁻¹")
    # pass 1: generous windows give the widths; pass 2: ±5 FWHM windows
    with np.errstate(divide="ignore", invalid="ignore"):  # flat windows: no peak
        p, e, ok = _fit_peaks(q, y, 1.0 / s, q_ref[inside], half[inside])
    ok &= p[:, 0] > min_snr * e[:, 0]
    if np.count_nonzero(ok) >= 2:
        w = float(np.median(p[ok, 2]))
        half2 = np.minimum(half, max(5.0 * w, 12.0 * bin_width))
        with np.errstate(divide="ignore", invalid="ignore"):
            p2, e2, ok2 = _fit_peaks(q, y, 1.0 / s, q_ref[inside], half2[inside])
        ok2 &= p2[:, 0] > min_snr * e2[:, 0]
        if np.count_nonzero(ok2) >= 3:
            p, e, ok = p2, e2, ok2
    pq, pe = p[ok, 1], e[ok, 1]
    n_used = n_hkl[inside][ok]
    if pq.size < 3:
        raise PatternError("no_calibrant_peaks",
                           f"only {pq.size} {calibrant} reflections found (need 3): check the "
                           "calibrant, the wavelength and the x units")
    a_i = 2.0 * np.pi * np.sqrt(n_used) / pq
    a_err_i = a_i * pe / pq
    use = np.ones(a_i.size, bool)
    for _ in range(3):
        wt = 1.0 / a_err_i[use] ** 2
        a = float(np.sum(wt * a_i[use]) / np.sum(wt))
        rel = (a_i - a) / a
        scale = max(1.4826 * float(np.median(np.abs(rel[use]))), 1e-7)
        new = np.abs(rel) < 4.0 * np.hypot(scale, a_err_i / a)
        if np.count_nonzero(new) < 3 or np.array_equal(new, use):
            break
        use = new
    wt = 1.0 / a_err_i[use] ** 2
    a = float(np.sum(wt * a_i[use]) / np.sum(wt))
    chi2 = float(np.sum(wt * (a_i[use] - a) ** 2)) / max(np.count_nonzero(use) - 1, 1)
    a_err = float(math.sqrt(max(chi2, 1.0) / np.sum(wt)))
    return CalibrantLattice(calibrant=calibrant, a_A=a, a_err_A=a_err, reference_a_A=a_ref,
                            n_peaks=int(np.count_nonzero(use)), peak_q_A_inv=pq[use],
                            peak_a_A=a_i[use])
