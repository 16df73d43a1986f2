"""A small bounded Levenberg–Marquardt solver working on the p×p normal matrix.

``scipy.optimize.least_squares(method="trf")`` factorises the full n×p Jacobian (SVD) every
iteration; with a multithreaded BLAS on a busy machine that single call can cost more than
the whole model evaluation. Here only JᵀJ (p×p, p ≤ 15) is factorised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LMResult:
    """Outcome of :func:`levenberg_marquardt`."""

    x: np.ndarray
    fun: np.ndarray
    cost: float
    nfev: int
    njev: int
    converged: bool
    message: str


def levenberg_marquardt(fun, jac, x0, lower, upper, max_nfev=60, ftol=1e-9, xtol=1e-9,
                        chi2_tol=None):
    """Minimise ½‖fun(x)‖² subject to lower ≤ x ≤ upper.

    Parameters
    ----------
    fun : callable
        x (p,) → residual vector (n,).
    jac : callable
        x (p,) → Jacobian (n, p) of ``fun``.
    x0, lower, upper : ndarray, shape (p,)
        Start and bounds.
    max_nfev : int
        Maximum number of residual evaluations.
    ftol : float
        Stop when an accepted step lowers the cost by less than ftol × cost.
    xtol : float
        Stop when every step component is below xtol × (|x| + xtol).
    chi2_tol : float, optional
        Statistical stop for weighted residuals (fun = (y − model)/σ): stop when an
        accepted step lowers χ² = 2·cost by less than ``chi2_tol`` × the reduced χ²
        (χ²/(n − p)). A step that small moves the parameters by about √chi2_tol standard
        uncertainties (0.03σ for 1e-3), so iterating on is noise-level polishing.

    Returns
    -------
    LMResult
    """
    x = np.clip(np.asarray(x0, dtype=float), lower, upper)
    r = fun(x)
    cost = 0.5 * float(r @ r)
    dof = max(r.size - x.size, 1)
    nfev, njev = 1, 0
    lam = 1e-3
    converged, message = False, "maximum number of evaluations reached"
    need_jac = True
    while nfev < max_nfev:
        if need_jac:
            j = jac(x)
            njev += 1
            h = j.T @ j
            g = j.T @ r
            need_jac = False
            need_newton = True
        d = np.diag(h).copy()
        d[d <= 0] = 1.0
        # bound constraints: freeze coordinates sitting on a bound with the gradient outward
        at_lo = (x <= lower) & (g > 0)
        at_hi = (x >= upper) & (g < 0)
        free = ~(at_lo | at_hi)
        if not np.any(free):
            converged, message = True, "all parameters at bounds"
            break
        step = None
        for _ in range(2):  # a step that leaves the box: fix those coordinates on their bound
            hf = h[np.ix_(free, free)] + lam * np.diag(d[free])
            try:
                step_f = -np.linalg.solve(hf, g[free])
            except np.linalg.LinAlgError:
                step = None
                break
            step = np.zeros_like(x)
            step[free] = step_f
            out = free & ((x + step < lower) | (x + step > upper))
            if chi2_tol is None or not np.any(out) or np.all(out | ~free):
                break
            free = free & ~out
        if step is None:
            lam *= 10.0
            continue
        if chi2_tol is not None and need_newton:
            # Newton decrement: the largest decrease of χ² the (undamped) Gauss–Newton model
            # predicts over the free coordinates; below the statistical tolerance nothing
            # measurable is left to gain
            need_newton = False
            try:
                gn = np.linalg.lstsq(h[np.ix_(free, free)], g[free], rcond=1e-12)[0]
                decrement = float(g[free] @ gn)  # = Δχ² predicted (2 × Δcost)
            except np.linalg.LinAlgError:
                decrement = np.inf
            if 0.0 <= decrement < chi2_tol * (2.0 * cost / dof):
                converged, message = True, "converged (Newton decrement below tolerance)"
                break
        x_new = np.clip(x + step, lower, upper)
        r_new = fun(x_new)
        nfev += 1
        cost_new = 0.5 * float(r_new @ r_new)
        if np.isfinite(cost_new) and cost_new < cost:
            dcost = cost - cost_new
            dx = np.abs(x_new - x)
            x, r, cost = x_new, r_new, cost_new
            lam = max(lam / 5.0, 1e-12)
            need_jac = True
            small = chi2_tol is not None and 2.0 * dcost < chi2_tol * (2.0 * cost / dof)
            if small or dcost < ftol * cost or np.all(dx <= xtol * (np.abs(x) + xtol)):
                converged, message = True, "converged"
                break
        else:
            lam *= 4.0
            if lam > 1e12:
                converged, message = True, "no further decrease possible"
                break
    return LMResult(x=x, fun=r, cost=cost, nfev=nfev, njev=njev, converged=converged,
                    message=message)
