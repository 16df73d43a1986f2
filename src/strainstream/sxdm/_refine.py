"""Final refinement: Gaussian fits of the 3-D peak's projections (vectorised over raster points).

The 3-D peak of one raster point, in detector/rocking coordinates (θ, row, col), is projected
onto its three axes: the rocking curve (intensity vs θ), the row profile and the column
profile. For a 3-D Gaussian (any orientation) each projection is a 1-D Gaussian centred on the
matching coordinate of the peak centre, so three 1-D fits give (θc, rc, cc) and
Q = Rmz(θc)ᵀ·Q_lab(rc, cc). Unlike the centre of mass, the fits extrapolate a peak cut by the
θ range or the frame border, and a constant offset absorbs residual background.
"""

from __future__ import annotations

import numpy as np


def fit_gaussians_1d(
    u: np.ndarray, y: np.ndarray, *, fit_offset: bool = True, n_iter: int = 40
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares fits of ``A·exp(−(u−μ)²/2σ²) + c`` to many profiles at once (Levenberg–Marquardt).

    Parameters
    ----------
    u : ndarray, shape (L,)
        Common abscissa (any unit).
    y : ndarray, shape (N, L)
        Profiles.
    fit_offset : bool
        Fit the constant c (else c = 0).
    n_iter : int
        LM iterations.

    Returns
    -------
    amplitude, centre, sigma, offset : ndarray, shape (N,)
        Fitted parameters (centre and sigma in the unit of ``u``).
    ok : ndarray of bool, shape (N,)
        A peak was found: amplitude above 3× the RMS fit residual, σ between 0.1 sample step
        and twice the range, and the centre within the abscissa range extended by 2σ.
    """
    u = np.asarray(u, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, L = y.shape
    if u.shape != (L,):
        raise ValueError(f"abscissa has shape {u.shape}, profiles have length {L}")
    edge = max(1, L // 10)
    c = 0.5 * (y[:, :edge].mean(1) + y[:, -edge:].mean(1)) if fit_offset else np.zeros(n)
    yp = np.clip(y - c[:, None], 0, None)
    s0 = yp.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = (yp * u).sum(1) / s0
        var = (yp * (u - mu[:, None]) ** 2).sum(1) / s0
    du = np.abs(np.diff(u)).min() if L > 1 else 1.0
    mu = np.where(np.isfinite(mu), mu, u.mean())
    sig = np.sqrt(np.where(np.isfinite(var) & (var > 0), var, du**2))
    sig = np.clip(sig, 0.5 * du, np.ptp(u) + du)
    amp = np.clip(y.max(1) - c, 1e-12, None)
    p = np.stack([amp, mu, sig, c], -1)
    npar = 4 if fit_offset else 3
    lam = np.full(n, 1e-3)

    def resid_jac(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, m, s, cc = p[:, 0:1], p[:, 1:2], p[:, 2:3], p[:, 3:4]
        z = (u - m) / s
        g = np.exp(-0.5 * z**2)
        r = y - (a * g + cc)
        jac = np.stack([g, a * g * z / s, a * g * z**2 / s, np.ones_like(g)], -1)[..., :npar]
        return r, jac

    r, jac = resid_jac(p)
    cost = (r**2).sum(1)
    eye = np.eye(npar)
    for _ in range(n_iter):
        jtj = np.einsum("nli,nlj->nij", jac, jac)
        jtr = np.einsum("nli,nl->ni", jac, r)
        dg = np.einsum("nii->ni", jtj)
        a = jtj + lam[:, None, None] * (dg[:, :, None] * eye + 1e-30 * eye)
        try:
            step = np.linalg.solve(a, jtr[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = np.zeros((n, npar))
            for i in range(n):  # rare singular systems: fall back one by one
                step[i] = np.linalg.lstsq(a[i], jtr[i], rcond=None)[0]
        trial = p.copy()
        trial[:, :npar] += np.nan_to_num(step)
        trial[:, 2] = np.abs(trial[:, 2]) + 1e-12
        r_t, jac_t = resid_jac(trial)
        cost_t = (r_t**2).sum(1)
        better = np.isfinite(cost_t) & (cost_t < cost)
        p = np.where(better[:, None], trial, p)
        r = np.where(better[:, None], r_t, r)
        jac = np.where(better[:, None, None], jac_t, jac)
        cost = np.where(better, cost_t, cost)
        lam = np.where(better, lam * 0.3, lam * 10.0)
        lam = np.clip(lam, 1e-9, 1e9)
    amp, mu, sig, off = p.T
    lo, hi = u.min() - 2 * sig, u.max() + 2 * sig
    rms = np.sqrt(cost / L)
    ymax = np.abs(y).max(1)
    ok = (
        np.isfinite(p).all(1)
        & (ymax > 0)
        & (amp > 3.0 * rms)  # a peak above the fit residual
        & (sig > 0.1 * du)
        & (sig < 2 * (np.ptp(u) + du))
        & (mu > lo)
        & (mu < hi)
    )
    return amp, mu, sig, off, ok
