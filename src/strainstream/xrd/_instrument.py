"""Instrumental peak width from a calibrant frame (CeO2, NIST SRM 674b).

The calibrant's own (sample) broadening is negligible, so the FWHM of its reflections in the
integrated pattern is the instrumental FWHM of that pattern: beam divergence and energy
spread, detector point spread and the Q binning of the integration. This is the
``instrument_fwhm_A_inv`` that :func:`strainstream.xrd.refine_pattern` adds in quadrature
to the Williamson–Hall sample width; the width model and the pseudo-Voigt η
(:meth:`InstrumentWidth.instrument_function`) give every peak its own instrumental width
(``refine_pattern(..., instrument=...)``).

Every resolved reflection is fitted on its own window (area-normalised pseudo-Voigt of
:mod:`._model` + linear background, all windows in one batched Levenberg–Marquardt loop);
the per-peak FWHM are then described by a width model in 2θ, converted to Q with
ΔQ = (2π/λ)·cosθ·Δ2θ (Δ2θ in rad):

* ``"constant_2theta"`` (default): Δ2θ constant — the high-energy, area-detector case
  where the Caglioti U and V terms are negligible; one parameter.
* ``"caglioti"``: Δ2θ² = U tan²θ + V tanθ + W (weighted linear least squares on Δ2θ²).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ._errors import FrameError, PatternError
from ._lattice import SCHERRER_K
from ._model import _pv_window

#: Width models understood by :func:`instrument_fwhm`.
WIDTH_MODELS = ("constant_2theta", "caglioti")

_WINDOW_FWHM = 5.0      # half-width of a fit window, in FWHM
_MIN_POINTS = 12        # points per window
_MIN_PEAKS = {"constant_2theta": 2, "caglioti": 4}


@dataclass(frozen=True)
class InstrumentWidth:
    """Instrumental FWHM measured on a calibrant pattern.

    Attributes
    ----------
    instrument_fwhm_A_inv : float
        One instrumental FWHM in Q (Å⁻¹) for :func:`refine_pattern`
        (``instrument_fwhm_A_inv=``): the width model averaged over ``average_range_A_inv``.
    model : str
        Width model, one of :data:`WIDTH_MODELS`.
    params : dict
        Model parameters: ``{"fwhm_2theta_deg": Δ2θ}`` or ``{"U_deg2": U, "V_deg2": V,
        "W_deg2": W}`` (Δ2θ² = U tan²θ + V tanθ + W in deg²).
    params_err : dict
        Standard uncertainties of ``params`` (same keys).
    wavelength_A : float
        Wavelength, Å.
    calibrant : str
        pyFAI calibrant name.
    average_range_A_inv : (float, float)
        Q range over which the model was averaged into ``instrument_fwhm_A_inv``, Å⁻¹.
    bin_width_A_inv : float
        Q step of the integrated pattern (its binning is part of the measured width), Å⁻¹.
    peak_q_A_inv, peak_fwhm_A_inv, peak_fwhm_err_A_inv, peak_eta : ndarray, shape (n,)
        Fitted position, FWHM, its standard uncertainty (Å⁻¹) and pseudo-Voigt mixing of
        every resolved, significant calibrant reflection.
    peak_used : ndarray of bool, shape (n,)
        Reflections used by the width model (False: rejected as > 4σ outliers).
    rel_scatter : float
        Robust relative scatter of the used per-peak FWHM about the model (e.g. 0.01 = 1 %).
    eta, eta_err : float
        Pseudo-Voigt mixing η of the instrument (inverse-variance mean of the used
        reflections' η) and its standard uncertainty; the refinement starts from it.
    """

    instrument_fwhm_A_inv: float
    model: str
    params: dict
    params_err: dict
    wavelength_A: float
    calibrant: str
    average_range_A_inv: tuple
    bin_width_A_inv: float
    peak_q_A_inv: np.ndarray = field(repr=False)
    peak_fwhm_A_inv: np.ndarray = field(repr=False)
    peak_fwhm_err_A_inv: np.ndarray = field(repr=False)
    peak_eta: np.ndarray = field(repr=False)
    peak_used: np.ndarray = field(repr=False)
    rel_scatter: float = 0.0
    eta: float = float("nan")
    eta_err: float = float("nan")

    def fwhm_A_inv(self, q_A_inv):
        """Instrumental FWHM in Q of the width model at ``q_A_inv``.

        Parameters
        ----------
        q_A_inv : float or ndarray, shape (m,)
            Momentum transfer, Å⁻¹.

        Returns
        -------
        float or ndarray, shape (m,)
            FWHM in Q, Å⁻¹.
        """
        return _model_fwhm_q(self.model, self.params, np.asarray(q_A_inv, dtype=float),
                             self.wavelength_A)

    def instrument_function(self) -> dict:
        """The instrument function as carried in the calibration (geometry dict key
        ``"instrument_function"``) and taken by :func:`refine_pattern` (``instrument=``).

        Returns
        -------
        dict
            ``{"model": ..., **params, "eta": η}``, e.g. ``{"model": "caglioti",
            "U_deg2": U, "V_deg2": V, "W_deg2": W, "eta": 0.4}`` (deg², Δ2θ² = U tan²θ +
            V tanθ + W) or ``{"model": "constant_2theta", "fwhm_2theta_deg": Δ2θ, ...}``.
        """
        out = {"model": self.model, **{k: float(v) for k, v in self.params.items()}}
        if math.isfinite(self.eta):
            out["eta"] = float(self.eta)
        return out

    def to_dict(self) -> dict:
        """JSON-able summary (scalars, model parameters and the per-peak lists)."""
        return {
            "instrument_fwhm_A_inv": self.instrument_fwhm_A_inv,
            "model": self.model,
            "params": dict(self.params),
            "params_err": dict(self.params_err),
            "wavelength_A": self.wavelength_A,
            "calibrant": self.calibrant,
            "average_range_A_inv": list(self.average_range_A_inv),
            "bin_width_A_inv": self.bin_width_A_inv,
            "rel_scatter": self.rel_scatter,
            "eta": self.eta,
            "eta_err": self.eta_err,
            "instrument_function": self.instrument_function(),
            "peaks": {
                "q_A_inv": self.peak_q_A_inv.tolist(),
                "fwhm_A_inv": self.peak_fwhm_A_inv.tolist(),
                "fwhm_err_A_inv": self.peak_fwhm_err_A_inv.tolist(),
                "eta": self.peak_eta.tolist(),
                "used": self.peak_used.tolist(),
            },
        }


# --------------------------------------------------------------------------- width models
def _theta_rad(q, wavelength_A):
    return np.arcsin(np.clip(q * wavelength_A / (4.0 * np.pi), 0.0, 1.0))


def _dq_per_rad(q, wavelength_A):
    """dQ/d(2θ) = (2π/λ)·cosθ, Å⁻¹ per radian of 2θ."""
    return (2.0 * np.pi / wavelength_A) * np.cos(_theta_rad(q, wavelength_A))


def _model_fwhm_q(model, params, q, wavelength_A):
    if model == "constant_2theta":
        d2t = np.radians(params["fwhm_2theta_deg"])
    else:
        t = np.tan(_theta_rad(q, wavelength_A))
        d2t_sq = params["U_deg2"] * t * t + params["V_deg2"] * t + params["W_deg2"]
        d2t = np.radians(np.sqrt(np.maximum(d2t_sq, 0.0)))
    return _dq_per_rad(q, wavelength_A) * d2t


def _fit_width_model(model, q, w, w_err, wavelength_A):
    """Weighted fit of the per-peak FWHM (Å⁻¹); returns params, params_err, model FWHM."""
    d2t = np.degrees(w / _dq_per_rad(q, wavelength_A))
    d2t_err = np.degrees(w_err / _dq_per_rad(q, wavelength_A))
    if model == "constant_2theta":
        wt = 1.0 / d2t_err**2
        mean = float(np.sum(wt * d2t) / np.sum(wt))
        chi2 = float(np.sum(wt * (d2t - mean) ** 2)) / max(q.size - 1, 1)
        err = math.sqrt(max(chi2, 1.0) / float(np.sum(wt)))
        return {"fwhm_2theta_deg": mean}, {"fwhm_2theta_deg": err}
    t = np.tan(_theta_rad(q, wavelength_A))
    y = d2t**2
    y_err = 2.0 * d2t * d2t_err
    a = np.stack([t * t, t, np.ones_like(t)], axis=1) / y_err[:, None]
    coef, *_ = np.linalg.lstsq(a, y / y_err, rcond=None)
    r = a @ coef - y / y_err
    chi2 = float(r @ r) / max(q.size - 3, 1)
    cov = np.linalg.pinv(a.T @ a) * max(chi2, 1.0)
    err = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    keys = ("U_deg2", "V_deg2", "W_deg2")
    return ({k: float(v) for k, v in zip(keys, coef, strict=True)},
            {k: float(v) for k, v in zip(keys, err, strict=True)})


# --------------------------------------------------------------------------- peak fitting
def _windows(q, centres, half):
    """Index windows (k, M) into q around each centre; points outside ±half are invalid."""
    lo = np.searchsorted(q, centres - half)
    hi = np.searchsorted(q, centres + half)
    m = int(max(1, np.max(hi - lo)))
    idx = lo[:, None] + np.arange(m)[None, :]
    valid = idx < hi[:, None]
    return np.minimum(idx, q.size - 1), valid


def _peak_model(p, x, tnorm):
    """Model and Jacobian on windows. p: (k, 6) = area, centre, fwhm, eta, b0, b1."""
    area, x0, w, eta, b0, b1 = p.T
    pv, d_x0, d_w, d_eta = _pv_window(x - x0[:, None], w[:, None], eta[:, None])
    a = area[:, None]
    model = a * pv + b0[:, None] + b1[:, None] * tnorm
    jac = np.stack([pv, a * d_x0, a * d_w, a * d_eta, np.ones_like(pv), tnorm], axis=-1)
    return model, jac


def _batched_lm(p0, x, y, wt, lower, upper, tnorm, max_iter=60):
    """Levenberg–Marquardt on many independent small problems at once.

    p0, lower, upper: (k, 6); x, y, wt, tnorm: (k, M), wt = 0 for points outside a window.
    Returns parameters, covariance (k, 6, 6) scaled by the reduced χ², reduced χ² (k,) and a
    convergence flag (k,).
    """
    k, n_par = p0.shape
    p = np.clip(p0, lower, upper)
    model, jac = _peak_model(p, x, tnorm)
    r = (y - model) * wt
    cost = np.sum(r * r, axis=1)
    lam = np.full(k, 1e-3)
    done = np.zeros(k, bool)
    eye = np.eye(n_par)
    for _ in range(max_iter):
        jw = jac * wt[..., None]
        jtj = np.einsum("kmi,kmj->kij", jw, jw)
        g = np.einsum("kmi,km->ki", jw, r)
        diag = np.einsum("kii->ki", jtj)
        damp = jtj + lam[:, None, None] * (diag[:, :, None] * eye + 1e-12 * eye)
        step = np.linalg.solve(damp, g[..., None])[..., 0]
        p_new = np.clip(p + step, lower, upper)
        model_new, jac_new = _peak_model(p_new, x, tnorm)
        r_new = (y - model_new) * wt
        cost_new = np.sum(r_new * r_new, axis=1)
        better = (cost_new < cost) & ~done
        small = np.abs(cost - cost_new) <= 1e-10 * np.maximum(cost, 1e-300)
        done |= better & small
        p[better], r[better], jac[better] = p_new[better], r_new[better], jac_new[better]
        cost = np.where(better, cost_new, cost)
        lam = np.where(better, lam * 0.3, np.minimum(lam * 10.0, 1e12))
        done |= lam >= 1e12  # no further decrease possible: at the minimum (or stuck)
        if np.all(done):
            break
    jw = jac * wt[..., None]
    jtj = np.einsum("kmi,kmj->kij", jw, jw)
    dof = np.maximum(np.count_nonzero(wt, axis=1) - n_par, 1)
    chi2 = cost / dof
    cov = np.linalg.pinv(jtj, rcond=1e-12, hermitian=True) * chi2[:, None, None]
    return p, cov, chi2, done


def _fit_peaks(q, y, wt, centres, half):
    """Fit pseudo-Voigt + linear background on ±half around every centre (vectorised).

    Returns (params (k, 6), errors (k, 6), ok (k,)).
    """
    idx, valid = _windows(q, centres, half)
    x = q[idx]
    yy = np.where(valid, y[idx], 0.0)
    ww = np.where(valid, wt[idx], 0.0)
    tnorm = np.where(valid, (x - centres[:, None]) / half[:, None], 0.0)
    npts = np.count_nonzero(ww > 0, axis=1)
    # starting values: linear background through the window ends, area and width from the
    # excess over it
    m = np.maximum(npts // 6, 2)
    pos = np.arange(idx.shape[1])[None, :]
    nvalid = np.count_nonzero(valid, axis=1)
    left = valid & (pos < m[:, None])
    right = valid & (pos >= (nvalid - m)[:, None])
    yl = np.sum(yy * left, axis=1) / np.maximum(np.count_nonzero(left, axis=1), 1)
    yr = np.sum(yy * right, axis=1) / np.maximum(np.count_nonzero(right, axis=1), 1)
    b0, b1 = 0.5 * (yl + yr), 0.5 * (yr - yl)
    excess = np.where(valid, yy - (b0[:, None] + b1[:, None] * tnorm), 0.0)
    dq = np.gradient(q)[idx]
    area = np.sum(np.clip(excess, 0.0, None) * dq * valid, axis=1)
    height = np.max(excess, axis=1)
    imax = np.argmax(excess, axis=1)
    x0 = np.take_along_axis(x, imax[:, None], axis=1)[:, 0]
    w0 = np.clip(area / np.maximum(1.3 * height, 1e-300), 2.0 * dq[:, 0], half)
    p0 = np.stack([np.maximum(area, 1e-12), x0, w0, np.full_like(w0, 0.5), b0, b1], axis=1)
    big = np.full_like(b0, np.inf)
    lower = np.stack([np.zeros_like(b0), centres - 0.5 * half, 0.5 * dq[:, 0],
                      np.zeros_like(b0), -big, -big], axis=1)
    upper = np.stack([big, centres + 0.5 * half, 2.0 * half, np.ones_like(b0), big, big], axis=1)
    p, cov, _, conv = _batched_lm(p0, x, yy, ww, lower, upper, tnorm)
    err = np.sqrt(np.clip(np.einsum("kii->ki", cov), 0.0, None))
    span = lower[:, 2:3] < upper[:, 2:3]
    at_bound = (np.abs(p[:, 2] - lower[:, 2]) < 1e-9 * half) | \
               (np.abs(p[:, 2] - upper[:, 2]) < 1e-9 * half) | \
               (np.abs(p[:, 1] - lower[:, 1]) < 1e-9 * half) | \
               (np.abs(p[:, 1] - upper[:, 1]) < 1e-9 * half)
    ok = conv & ~at_bound & span[:, 0] & (npts >= _MIN_POINTS) & np.all(np.isfinite(err), axis=1)
    return p, err, ok


def _calibrant_q(calibrant, wavelength_A):
    """Distinct reflection positions Q = 2π/d of a pyFAI calibrant, Å⁻¹ (increasing)."""
    from pyFAI.calibrant import get_calibrant

    try:
        cal = get_calibrant(calibrant)
    except Exception as exc:  # pyFAI raises KeyError or its own error for unknown names
        raise ValueError(f"unknown calibrant {calibrant!r}: use a pyFAI calibrant name such "
                         f"as 'CeO2' or 'LaB6' ({exc})") from None
    cal.wavelength = wavelength_A * 1e-10
    d = np.asarray(cal.dspacing, dtype=float)
    q = np.sort(2.0 * np.pi / d[d > 0])
    keep = np.concatenate([[True], np.diff(q) > 1e-6 * q[1:]])
    return q[keep]


# --------------------------------------------------------------------------- public
def instrument_fwhm(frame_or_q, intensity=None, *, geometry=None, sigma=None,
                    calibrant="CeO2", model="constant_2theta", integrator=None, npt=2500,
                    mask=None, q_range_A_inv=None, average_range_A_inv=None,
                    calibrant_size_nm=None, min_snr=30.0):
    """Instrumental FWHM in Q from a calibrant frame (or its integrated pattern).

    The frame is integrated to I(Q) with :class:`Integrator` (pinned method; pass the
    ``integrator`` used for the operando frames, or the same ``npt``, so that the Q binning
    — part of the measured width — is the same). Each calibrant reflection is fitted on a
    ±5 FWHM window by an area-normalised pseudo-Voigt (the peak model of
    :func:`refine_pattern`) plus a linear background, all windows at once (windows from a
    first fit of the isolated reflections). Reflections whose window overlaps a neighbour's,
    with fewer than 12 points, a failed fit or an area below ``min_snr`` standard
    deviations are not used.
    The per-peak FWHM are fitted by the width model (``model``, see :data:`WIDTH_MODELS`),
    with > 4σ outliers (robust scale) rejected; the model is averaged over
    ``average_range_A_inv`` into the single ``instrument_fwhm_A_inv`` that
    :func:`refine_pattern` takes.

    The calibrant's own broadening is assumed negligible (NIST SRM 674b) unless
    ``calibrant_size_nm`` is given: then its Williamson–Hall size width 2πK/D is removed
    from every per-peak FWHM in quadrature, as :func:`refine_pattern` combines the sample
    and instrumental widths (a 300 nm calibrant adds ≈1 % at 0.013 Å⁻¹).

    ``instrument_fwhm_A_inv`` is one number (the model averaged over Q). A constant-Δ2θ
    width in Q falls by (1 − cosθ): 0.6 % from Q = 1 to 8 Å⁻¹ at λ = 0.1665 Å, and a
    Caglioti instrument changes far more; one width then biases ε by tens of per cent on a
    broad instrument (17-BM-like, λ = 0.452 Å: +37 % at ε = 5·10⁻⁴). Pass the
    instrument function instead (``refine_pattern(..., instrument=width)`` or its
    :meth:`InstrumentWidth.instrument_function` dict, as the calibration carries it):
    each peak then gets the width of the model at its own Q (ε within 5 % on both
    simulated instruments).

    Parameters
    ----------
    frame_or_q : ndarray, shape (rows, cols) or (n,)
        Calibrant frame (counts), or the Q grid (Å⁻¹, increasing) of an integrated pattern.
    intensity : ndarray, shape (n,), optional
        Intensity of the integrated pattern (only with a 1-D ``frame_or_q``).
    geometry : dict
        Geometry dict (see :func:`validate_geometry`): needed for a frame; for a 1-D
        pattern only its ``wavelength_A`` is used (a dict ``{"wavelength_A": λ}`` will do).
    sigma : ndarray, shape (n,), optional
        Standard deviations of a 1-D pattern (default: equal weights, errors scaled by the
        fit residuals).
    calibrant : str
        pyFAI calibrant name (``"CeO2"`` = NIST SRM 674b lattice).
    model : {"constant_2theta", "caglioti"}
        Width model (module docstring).
    integrator : Integrator, optional
        Integrator to use for a frame (default: ``Integrator(geometry, npt=npt, mask=mask)``).
    npt : int
        Q bins of the default integrator over the whole detector (default 2500, the
        operando XRD callback's default).
    mask : ndarray of bool, shape (rows, cols), optional
        Pixels to exclude (True = masked) for the default integrator.
    q_range_A_inv : (float, float), optional
        Use only reflections inside this Q range, Å⁻¹.
    average_range_A_inv : (float, float), optional
        Q range (Å⁻¹) over which the model is averaged into ``instrument_fwhm_A_inv``,
        e.g. the refinement range of the operando patterns. Default: the span of the
        reflections used.
    calibrant_size_nm : float, optional
        Crystallite size of the calibrant (nm) whose size broadening 2πK/D (K = 0.9) is
        removed; default None (negligible).
    min_snr : float
        Minimum peak area over its standard uncertainty.

    Returns
    -------
    InstrumentWidth

    Raises
    ------
    ValueError
        Missing geometry/wavelength, bad array shapes, unknown calibrant or model.
    FrameError
        (a ``ValueError``) for a frame that cannot be integrated (wrong shape, blank...).
    PatternError
        (a ``ValueError``) when too few resolved calibrant reflections are found (wrong
        calibrant, wavelength or geometry).
    """
    from ._geometry import validate_geometry
    from ._integrate import Integrator

    if model not in WIDTH_MODELS:
        raise ValueError(f"model must be one of {WIDTH_MODELS}, got {model!r}")
    if calibrant_size_nm is not None and not (calibrant_size_nm > 0):
        raise ValueError(f"calibrant_size_nm must be > 0 nm, got {calibrant_size_nm!r}")
    arr = np.asarray(frame_or_q)
    if arr.ndim == 2:
        if intensity is not None:
            raise ValueError("intensity is only for a 1-D pattern; a 2-D frame is integrated")
        if integrator is None:
            if geometry is None:
                raise ValueError("a calibrant frame needs geometry= (the calibrated geometry "
                                 "dict) to be integrated")
            integrator = Integrator(validate_geometry(geometry), npt=npt, mask=mask)
        elif mask is not None:
            raise ValueError("mask is for the default integrator; give it to your Integrator")
        wavelength_A = integrator.wavelength_A
        q, y, s = integrator(arr)
    elif arr.ndim == 1:
        if intensity is None:
            raise ValueError("a 1-D Q grid needs intensity= (the integrated pattern)")
        if geometry is None or "wavelength_A" not in geometry:
            raise ValueError("a 1-D pattern needs geometry= with 'wavelength_A' (Å)")
        wavelength_A = float(geometry["wavelength_A"])
        q = np.asarray(arr, dtype=float)
        y = np.asarray(intensity, dtype=float)
        s = np.ones_like(q) if sigma is None else np.asarray(sigma, dtype=float)
        if y.shape != q.shape or s.shape != q.shape:
            raise ValueError(f"q, intensity and sigma must have the same shape, got {q.shape}, "
                             f"{y.shape} and {s.shape}")
    else:
        raise FrameError("shape", f"expected a 2-D calibrant frame or a 1-D Q grid, got shape "
                                  f"{arr.shape}")
    if not (math.isfinite(wavelength_A) and wavelength_A > 0):
        raise ValueError(f"wavelength_A must be > 0, got {wavelength_A!r}")
    good = np.isfinite(q) & np.isfinite(y) & np.isfinite(s) & (s > 0)
    q, y, s = q[good], y[good], s[good]
    if q.size < 50:
        raise PatternError("input", f"only {q.size} usable points in the calibrant pattern")
    if not np.all(np.diff(q) > 0):
        raise PatternError("input", "the Q grid must be strictly increasing")
    bin_width = float(np.median(np.diff(q)))
    wt = 1.0 / s

    refl = _calibrant_q(calibrant, wavelength_A)
    gap = np.minimum(np.diff(refl, prepend=-np.inf), np.diff(refl, append=np.inf))
    lo_q, hi_q = q[0], q[-1]
    if q_range_A_inv is not None:
        lo_q, hi_q = max(lo_q, q_range_A_inv[0]), min(hi_q, q_range_A_inv[1])

    # pass 1: isolated reflections on generous windows give the width scale; pass 2: windows
    # of ±5 expected FWHM on every reflection resolved at that width
    half1 = np.minimum(0.45 * gap, 0.25)
    inside = (refl - half1 > lo_q) & (refl + half1 < hi_q) & (half1 > 10.0 * bin_width)
    if np.count_nonzero(inside) < 2:
        raise PatternError("no_calibrant_peaks",
                           f"fewer than 2 {calibrant} reflections inside the pattern's Q range "
                           f"{lo_q:.3f}–{hi_q:.3f} Å⁻¹: check the calibrant and the wavelength")
    p1, e1, ok1 = _fit_peaks(q, y, wt, refl[inside], half1[inside])
    ok1 &= p1[:, 0] > min_snr * e1[:, 0]
    ok1 &= half1[inside] > 2.5 * p1[:, 2]
    if np.count_nonzero(ok1) < 2:
        raise PatternError("no_calibrant_peaks",
                           f"no {calibrant} reflections found in the pattern (fewer than 2 "
                           "significant peaks): check that this is a calibrant frame, the "
                           "calibrant name, the wavelength and the geometry")
    # expected FWHM of every reflection from a first width model of the isolated peaks
    pre_model = model if np.count_nonzero(ok1) >= 2 * _MIN_PEAKS[model] else "constant_2theta"
    pre, _ = _fit_width_model(pre_model, p1[ok1, 1], p1[ok1, 2], e1[ok1, 2], wavelength_A)
    w_exp = _model_fwhm_q(pre_model, pre, refl, wavelength_A)
    w_exp = np.clip(w_exp, 0.5 * p1[ok1, 2].min(), 2.0 * p1[ok1, 2].max())
    half = _WINDOW_FWHM * w_exp
    # resolved: the nearest neighbour lies outside this window and this outside its window
    apart = np.diff(refl) >= half[1:] + half[:-1]
    use = (np.concatenate([[True], apart]) & np.concatenate([apart, [True]])
           & (refl - half > lo_q) & (refl + half < hi_q))
    if np.count_nonzero(use) < _MIN_PEAKS[model]:
        raise PatternError("no_calibrant_peaks",
                           f"only {np.count_nonzero(use)} {calibrant} reflections are resolved "
                           f"at FWHM ≈ {np.median(w_exp):.4f} Å⁻¹ in {lo_q:.3f}–{hi_q:.3f} Å⁻¹; "
                           f"the '{model}' model needs {_MIN_PEAKS[model]}")
    p, e, ok = _fit_peaks(q, y, wt, refl[use], half[use])
    ok &= p[:, 0] > min_snr * e[:, 0]
    ok &= (p[:, 2] > 0.5 * w_exp[use]) & (p[:, 2] < 2.0 * w_exp[use])
    pq, pw, pe, peta, peta_err = p[ok, 1], p[ok, 2], e[ok, 2], p[ok, 3], e[ok, 3]
    if calibrant_size_nm is not None:
        w_size = 2.0 * np.pi * SCHERRER_K / (10.0 * float(calibrant_size_nm))
        corrected = np.sqrt(np.maximum(pw**2 - w_size**2, (0.1 * pw) ** 2))
        pe = pe * pw / corrected
        pw = corrected
    if pq.size < _MIN_PEAKS[model]:
        raise PatternError("no_calibrant_peaks",
                           f"only {pq.size} {calibrant} reflections could be fitted; the "
                           f"'{model}' model needs {_MIN_PEAKS[model]}: check the frame "
                           "(exposure, saturation) and the geometry")

    used = np.ones(pq.size, bool)
    for _ in range(3):  # robust: drop > 4σ outliers (robust scale) and refit
        params, params_err = _fit_width_model(model, pq[used], pw[used], pe[used],
                                              wavelength_A)
        rel = pw / _model_fwhm_q(model, params, pq, wavelength_A) - 1.0
        scale = 1.4826 * np.median(np.abs(rel[used] - np.median(rel[used])))
        z = rel / np.hypot(pe / pw, scale)
        new = np.abs(z) < 4.0
        if np.count_nonzero(new) < _MIN_PEAKS[model] or np.array_equal(new, used):
            break
        used = new
    params, params_err = _fit_width_model(model, pq[used], pw[used], pe[used], wavelength_A)
    rel = pw / _model_fwhm_q(model, params, pq, wavelength_A) - 1.0
    rel_scatter = float(1.4826 * np.median(np.abs(rel[used])))
    if average_range_A_inv is None:
        avg = (float(pq[used].min()), float(pq[used].max()))
    else:
        avg = (float(average_range_A_inv[0]), float(average_range_A_inv[1]))
        if not (0 < avg[0] < avg[1] < 4.0 * np.pi / wavelength_A):
            raise ValueError(f"average_range_A_inv must be (low, high) within (0, 4π/λ), got "
                             f"{average_range_A_inv!r}")
    grid = np.linspace(avg[0], avg[1], 201)
    w_mean = float(np.mean(_model_fwhm_q(model, params, grid, wavelength_A)))
    # instrument η: inverse-variance mean of the used reflections (errors floored at 0.01 so
    # that a few very strong peaks do not decide alone), uncertainty from the scatter
    e_eta = np.maximum(peta_err[used], 0.01)
    w_eta = 1.0 / e_eta**2
    eta = float(np.sum(w_eta * peta[used]) / np.sum(w_eta))
    chi2_eta = float(np.sum(w_eta * (peta[used] - eta) ** 2)) / max(int(np.sum(used)) - 1, 1)
    eta_err = math.sqrt(max(chi2_eta, 1.0) / float(np.sum(w_eta)))
    return InstrumentWidth(
        instrument_fwhm_A_inv=w_mean, model=model, params=params, params_err=params_err,
        wavelength_A=float(wavelength_A), calibrant=calibrant, average_range_A_inv=avg,
        bin_width_A_inv=bin_width, peak_q_A_inv=pq, peak_fwhm_A_inv=pw,
        peak_fwhm_err_A_inv=pe, peak_eta=peta, peak_used=used, rel_scatter=rel_scatter,
        eta=eta, eta_err=eta_err)


# --------------------------------------------------------------------------- refinement side
def instrument_width_function(instrument, wavelength_A):
    """Instrumental FWHM in Q as a function of Q, from any form the refinement accepts.

    Parameters
    ----------
    instrument : float or InstrumentWidth or dict
        A constant FWHM in Q (Å⁻¹); an :class:`InstrumentWidth`; or an instrument-function
        dict (:meth:`InstrumentWidth.instrument_function`, the calibration's
        ``"instrument_function"``): ``{"model": "caglioti", "U_deg2", "V_deg2", "W_deg2"}``
        or ``{"model": "constant_2theta", "fwhm_2theta_deg"}``, optional ``"eta"``.
    wavelength_A : float
        Wavelength of the patterns to refine, Å.

    Returns
    -------
    fwhm : callable
        ``fwhm(q)`` → (w_inst (m,), dw_inst/dQ (m,)) in Å⁻¹ and Å⁻¹ per Å⁻¹ for Q (m,).
    eta : float or None
        The instrument's pseudo-Voigt mixing, when known.

    Raises
    ------
    ValueError
        Unknown model, missing or non-finite parameters, or a negative width.
    """
    if isinstance(instrument, InstrumentWidth):
        instrument = instrument.instrument_function()
    if isinstance(instrument, dict):
        model = instrument.get("model")
        if model not in WIDTH_MODELS:
            raise ValueError(f"instrument function model must be one of {WIDTH_MODELS}, got "
                             f"{model!r}")
        keys = ("fwhm_2theta_deg",) if model == "constant_2theta" else \
            ("U_deg2", "V_deg2", "W_deg2")
        try:
            params = {k: float(instrument[k]) for k in keys}
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"the '{model}' instrument function needs {keys} (deg/deg²), got "
                             f"{sorted(instrument)}") from None
        if not all(math.isfinite(v) for v in params.values()):
            raise ValueError(f"instrument function parameters must be finite, got {params}")
        eta = instrument.get("eta")
        eta = None if eta is None else float(eta)
        if eta is not None and not (0.0 <= eta <= 1.0):
            raise ValueError(f"instrument function eta must be in [0, 1], got {eta!r}")
        lam = float(wavelength_A)
        h = 1e-5

        def fwhm(q):
            q = np.asarray(q, dtype=float)
            w = _model_fwhm_q(model, params, q, lam)
            dw = (_model_fwhm_q(model, params, q + h, lam)
                  - _model_fwhm_q(model, params, q - h, lam)) / (2.0 * h)
            return w, dw

        return fwhm, eta
    w0 = float(instrument)
    if not (math.isfinite(w0) and w0 >= 0):
        raise ValueError(f"instrument_fwhm_A_inv must be a finite width ≥ 0 Å⁻¹, got "
                         f"{instrument!r}")

    def constant(q):
        q = np.asarray(q, dtype=float)
        return np.full(q.shape, w0), np.zeros(q.shape)

    return constant, None
