"""Peak search, lattice seeding and (003) H2/H3 splitting detection."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal
from scipy.optimize import least_squares

from ._errors import PatternError
from ._model import _pv_window

#: The (003) window of the study (REFERENCE.md), Å⁻¹.
WINDOW_003_A_INV = (1.27, 1.42)
# wider search window used for seeding: c from 12.8 to 15.2 Å
_SEARCH_003 = (6.0 * np.pi / 15.2, 6.0 * np.pi / 12.8)
# strong layered reflections used to find a: (M = h²+hk+k², l)
_STRONG = np.array([(1, 1), (1, 2), (1, 4), (1, 5), (3, 0), (3, 3), (1, 8)], dtype=float)


@dataclass(frozen=True)
class Split003:
    """Result of the (003) splitting test.

    Attributes
    ----------
    n_peaks : int
        1 or 2 resolved (003) components.
    q_A_inv : tuple of float
        Component positions, Å⁻¹, decreasing c (increasing Q) order.
    c_A : tuple of float
        c = 6π/Q for each component, Å.
    areas : tuple of float
        Integrated intensity of each component (intensity × Å⁻¹).
    fwhm_A_inv : tuple of float
        FWHM of each component, Å⁻¹.
    delta_bic : float
        BIC(one peak) − BIC(two peaks); large positive values favour a split.
    """

    n_peaks: int
    q_A_inv: tuple
    c_A: tuple
    areas: tuple
    fwhm_A_inv: tuple
    delta_bic: float


@dataclass(frozen=True)
class Seed:
    """Starting values found by peak search.

    Attributes
    ----------
    c_A : tuple of float
        c of the layered phase(s), Å (1 or 2 entries, largest c first).
    a_A : tuple of float
        a for each entry of ``c_A``, Å.
    fraction : float
        Starting fraction of the second phase (0 for one phase).
    fwhm_003_A_inv : float
        FWHM of the strongest (003) component, Å⁻¹.
    noise : float
        Robust noise estimate of the intensity.
    """

    c_A: tuple
    a_A: tuple
    fraction: float
    fwhm_003_A_inv: float
    noise: float


def _baseline(q, y):
    """Rough baseline: running minimum then smoothing over ≈0.15 Å⁻¹."""
    dq = np.median(np.diff(q))
    n = max(3, int(round(0.15 / dq)) | 1)
    base = ndimage.minimum_filter1d(y, n, mode="nearest")
    return ndimage.uniform_filter1d(base, n, mode="nearest")


def _noise(y):
    d2 = np.diff(y, 2)
    mad = np.median(np.abs(d2 - np.median(d2)))
    return max(float(mad / 0.6745 / np.sqrt(6.0)), 1e-12 * float(np.max(np.abs(y)) + 1e-300))


def _pv(q, q0, w, eta):
    u2 = (2.0 * (q - q0) / w) ** 2
    return eta * (2.0 / (np.pi * w)) / (1.0 + u2) + (1.0 - eta) * (
        2.0 * np.sqrt(np.log(2.0) / np.pi) / w) * np.exp(-np.log(2.0) * u2)


def _fit_window(q, y, wt, starts):
    """Fit n pseudo-Voigt peaks + a linear background; linear parts by projection."""
    npk = len(starts)
    yw = y * wt
    lin = np.column_stack([np.ones_like(q), q - q.mean()]) * wt[:, None]

    def design(p):
        cols = [_pv(q, p[2 * i], p[2 * i + 1], p[-1]) * wt for i in range(npk)]
        return np.column_stack(cols + [lin])

    def solve(a):
        g = a.T @ a
        g[np.diag_indices_from(g)] *= 1.0 + 1e-10
        try:
            return np.linalg.solve(g, a.T @ yw)
        except np.linalg.LinAlgError:
            return np.linalg.lstsq(a, yw, rcond=None)[0]

    def resid(p):
        a = design(p)
        return yw - a @ solve(a)

    def jac(p):
        # Kaufman variable-projection Jacobian −(I − P)·∂(A c)/∂p with analytic peak
        # derivatives (a finite-difference Jacobian costs 6–10 model evaluations per step)
        a = design(p)
        c = solve(a)
        w = np.array([p[2 * i + 1] for i in range(npk)])[:, None]
        x = q[None, :] - np.array([p[2 * i] for i in range(npk)])[:, None]
        _, d_x0, d_w, d_eta = _pv_window(x, w, p[-1])
        d = np.empty((q.size, 2 * npk + 1))
        d[:, 0:2 * npk:2] = (d_x0 * c[:npk, None] * wt[None, :]).T
        d[:, 1:2 * npk:2] = (d_w * c[:npk, None] * wt[None, :]).T
        d[:, -1] = np.sum(d_eta * c[:npk, None], axis=0) * wt
        g = a.T @ a
        g[np.diag_indices_from(g)] *= 1.0 + 1e-10
        try:
            proj = a @ np.linalg.solve(g, a.T @ d)
        except np.linalg.LinAlgError:
            proj = a @ np.linalg.lstsq(a, d, rcond=None)[0]
        return -(d - proj)

    p0 = []
    for q0, w0 in starts:
        p0 += [q0, w0]
    p0.append(0.5)
    lo = [v for q0, _ in starts for v in (q[0], 1e-4)] + [0.0]
    hi = [v for q0, _ in starts for v in (q[-1], 0.2)] + [1.0]
    p0 = np.clip(p0, np.array(lo) + 1e-9, np.array(hi) - 1e-9)
    res = least_squares(resid, p0, jac=jac, bounds=(lo, hi), method="trf", x_scale="jac",
                        max_nfev=100, ftol=1e-6, xtol=1e-7)
    coef = solve(design(res.x))
    rss = float(np.sum(res.fun**2))
    return res.x, coef, rss


def _design_eval(q, p, coef):
    """Model of :func:`_fit_window` (one peak) from its parameters and linear coefficients."""
    return coef[0] * _pv(q, p[0], p[1], p[-1]) + coef[1] + coef[2] * (q - q.mean())


def _bic(rss, n, k):
    return n * np.log(max(rss, 1e-300) / n) + k * np.log(n)


def detect_003_split(q_A_inv, intensity, sigma=None, window_A_inv=_SEARCH_003):
    """Test whether the (003) reflection is split into two layered phases (H2/H3).

    One- and two-peak pseudo-Voigt models (with a linear background) are fitted in the
    (003) window and compared with the Bayesian information criterion. A split is reported
    when the two-peak model wins clearly (ΔBIC > 25), the weaker component holds at least
    3 % of the (003) intensity and the components are separated by at least 0.8 FWHM.

    Parameters
    ----------
    q_A_inv : ndarray, shape (n,)
        Increasing Q grid, Å⁻¹.
    intensity : ndarray, shape (n,)
        Intensity.
    sigma : ndarray, shape (n,), optional
        Standard deviation of each point (default: noise estimated from the data).
    window_A_inv : (float, float)
        Q window searched for (003), Å⁻¹ (default 1.24–1.47, c = 12.8–15.2 Å).

    Returns
    -------
    Split003

    Raises
    ------
    PatternError
        If no significant peak exists in the window.
    """
    q = np.asarray(q_A_inv, dtype=float)
    y = np.asarray(intensity, dtype=float)
    sel = (q >= window_A_inv[0]) & (q <= window_A_inv[1])
    if np.count_nonzero(sel) < 12:
        raise PatternError("no_layered_peaks",
                           f"the pattern has fewer than 12 points in the (003) window "
                           f"Q {window_A_inv[0]:.2f}–{window_A_inv[1]:.2f} Å⁻¹; "
                           "check the Q range and the x units")
    qw, yw = q[sel], y[sel]
    if sigma is None:
        noise = _noise(y[(q > window_A_inv[0] - 0.3) & (q < window_A_inv[1] + 0.3)])
        wt = np.full(qw.size, 1.0 / noise)
    else:
        s = np.asarray(sigma, dtype=float)[sel]
        noise = float(np.median(s))
        wt = 1.0 / np.maximum(s, 1e-12 * np.max(s) + 1e-300)
    base = np.linspace(np.median(yw[:5]), np.median(yw[-5:]), qw.size)
    yd = ndimage.uniform_filter1d(yw - base, 3)
    ipk = int(np.argmax(yd))
    height = yd[ipk]
    if not height > 8.0 * noise:
        raise PatternError(
            "no_layered_peaks",
            f"no layered-oxide (003) peak in Q {window_A_inv[0]:.2f}–{window_A_inv[1]:.2f} Å⁻¹ "
            f"(c = 12.8–15.2 Å): check the wavelength, the x units (Q in Å⁻¹ or 2θ) and "
            "that the sample is a layered oxide")
    half = yd > 0.5 * height
    # FWHM of the strongest component from the half-maximum run around the maximum
    left = ipk
    while left > 0 and half[left - 1]:
        left -= 1
    right = ipk
    while right < qw.size - 1 and half[right + 1]:
        right += 1
    dq = np.median(np.diff(qw))
    w0 = max(float(qw[right] - qw[left]) + dq, 2.0 * dq)
    p1, c1, rss1 = _fit_window(qw, yw, wt, [(qw[ipk], w0)])
    peaks, props = signal.find_peaks(yd, prominence=5.0 * noise)
    candidates = []
    if peaks.size >= 2:
        top = peaks[np.argsort(props["prominences"])[-2:]]
        candidates.append([(qw[i], w0 * 0.7) for i in np.sort(top)])
    else:
        # a shoulder: second component where the one-peak fit leaves the largest excess,
        # and a symmetric pair as a fallback
        one = _design_eval(qw, p1, c1)
        excess = ndimage.uniform_filter1d((yw - one) * wt, 5)
        far = np.abs(qw - p1[0]) > 0.5 * p1[1]
        if np.any(far):
            j = int(np.argmax(np.where(far, excess, -np.inf)))
            candidates.append([(p1[0], 0.9 * p1[1]), (qw[j], 0.9 * p1[1])])
        candidates.append([(p1[0] - 0.35 * p1[1], 0.7 * p1[1]),
                           (p1[0] + 0.35 * p1[1], 0.7 * p1[1])])
    fits = [_fit_window(qw, yw, wt, st) for st in candidates]
    p2, c2, rss2 = min(fits, key=lambda f: f[2])
    n = qw.size
    dbic = _bic(rss1, n, 6) - _bic(rss2, n, 9)
    qs = np.array([p2[0], p2[2]])
    ws = np.array([p2[1], p2[3]])
    areas = np.array(c2[:2])
    order = np.argsort(qs)
    qs, ws, areas = qs[order], ws[order], areas[order]
    tot = np.sum(np.abs(areas))
    split = (dbic > 25.0 and np.all(areas > 0) and np.min(areas) > 0.03 * tot
             and abs(qs[1] - qs[0]) > 0.8 * np.mean(ws))
    if split:
        return Split003(2, tuple(qs), tuple(6 * np.pi / qs), tuple(areas), tuple(ws), float(dbic))
    return Split003(1, (p1[0],), (6 * np.pi / p1[0],), (float(c1[0]),), (p1[1],), float(dbic))


def _window_003(cell):
    """(003) search window, Å⁻¹: c = 12.8–15.2 Å, or c within ±4 % of a starting cell's."""
    if cell is None:
        return _SEARCH_003
    c0 = float(cell[1])
    return (6.0 * np.pi / (1.04 * c0), 6.0 * np.pi / (0.96 * c0))


def _prominent_peaks(q, y, noise):
    """Peaks of the lightly smoothed pattern with their prominence over the local background.

    Returns (indices, prominences, left base level, FWHM in points)."""
    ys = ndimage.uniform_filter1d(y, 3, mode="nearest")
    idx, props = signal.find_peaks(ys, prominence=3.0 * noise, width=0.5, rel_height=0.5)
    base = np.maximum(ys[props["left_bases"]], ys[props["right_bases"]]) if idx.size else ys[:0]
    return idx, props["prominences"] if idx.size else ys[:0], base, \
        props["widths"] if idx.size else ys[:0]


def find_003(q_A_inv, intensity, sigma=None, cell=None, min_prominence=6.0):
    """Position of the layered (003) reflection: the most prominent peak of its window.

    Prominence is the height of a peak over the higher of the two minima that separate it
    from higher neighbours (the local background), so a peak standing 30 % over a high,
    sloping background is found and a background slope is not. With a starting cell
    ``(a, c)`` the window is c ± 4 %; otherwise c = 12.8–15.2 Å.

    Parameters
    ----------
    q_A_inv, intensity : ndarray, shape (n,)
        Increasing Q (Å⁻¹) and intensity.
    sigma : ndarray, shape (n,), optional
        Standard deviations (default: noise from the data).
    cell : (float, float), optional
        Starting lattice (a, c), Å.
    min_prominence : float
        Minimum prominence in noise standard deviations.

    Returns
    -------
    q003 : float
        Peak position, Å⁻¹.
    prominence : float
        In noise standard deviations.

    Raises
    ------
    PatternError
        No prominent peak in the window; the message names the strongest peak seen there
        and in the whole pattern (position, prominence).
    """
    q = np.asarray(q_A_inv, dtype=float)
    y = np.asarray(intensity, dtype=float)
    lo, hi = _window_003(cell)
    region = (q > lo - 0.3) & (q < hi + 0.3)
    if np.count_nonzero((q >= lo) & (q <= hi)) < 12:
        raise PatternError("no_layered_peaks",
                           f"the pattern has fewer than 12 points in the (003) window "
                           f"Q {lo:.2f}–{hi:.2f} Å⁻¹; check the Q range and the x units")
    if sigma is None:
        noise = _noise(y[region])
    else:
        noise = float(np.median(np.asarray(sigma, dtype=float)[region]))
    qr, yr = q[region], y[region]
    idx, prom, base, _ = _prominent_peaks(qr, yr, noise)
    inside = (qr[idx] >= lo) & (qr[idx] <= hi)
    if np.any(inside) and np.max(prom[inside]) > min_prominence * noise:
        j = np.flatnonzero(inside)[int(np.argmax(prom[inside]))]
        return float(qr[idx[j]]), float(prom[j] / noise)
    if np.any(inside):
        j = np.flatnonzero(inside)[int(np.argmax(prom[inside]))]
        seen = (f"the most prominent peak there is at Q = {qr[idx[j]]:.3f} Å⁻¹, "
                f"{prom[j] / noise:.1f} σ ({100 * prom[j] / max(abs(base[j]), 1e-300):.0f} %) over "
                "its local background")
    else:
        seen = "no peak stands out there"
    gi, gprom, gbase, _ = _prominent_peaks(q, y, _noise(y) if sigma is None else
                                           float(np.median(sigma)))
    if gi.size:
        k = int(np.argmax(gprom))
        seen += (f"; the most prominent peak of the pattern is at Q = {q[gi[k]]:.3f} Å⁻¹ "
                 f"(2π/Q = {2 * np.pi / q[gi[k]]:.3f} Å, {100 * gprom[k] / max(abs(gbase[k]), 1e-300):.0f} % "
                 "over its background)")
    raise PatternError(
        "no_layered_peaks",
        f"no layered-oxide (003) peak in Q {lo:.3f}–{hi:.3f} Å⁻¹ (c = {6 * np.pi / hi:.2f}–"
        f"{6 * np.pi / lo:.2f} Å): {seen}. Check the wavelength, the x units (Q in Å⁻¹ or "
        "2θ), that the sample is a layered oxide, or give a starting cell (--cell A,C)")


def _score_positions(q, yd, noise, qpos):
    """Detrended intensity (in noise units) at positions qpos (any shape)."""
    return np.interp(qpos, q, yd, left=0.0, right=0.0) / noise


def find_a(q, yd, noise, c_A, a_range=(2.70, 3.00), step=0.0004):
    """Grid search of a (Å) for given c using the strong layered reflections."""
    a = np.arange(a_range[0], a_range[1], step)
    m, ll = _STRONG[:, 0], _STRONG[:, 1]
    qpos = 2 * np.pi * np.sqrt(4 * m[None, :] / (3 * a[:, None] ** 2) + ll[None, :] ** 2 / c_A**2)
    sc = _score_positions(q, yd, noise, qpos)
    ok = (qpos <= q[-1]) & (qpos >= q[0])
    # score: intensity relative to the strongest peak, so that very high signal-to-noise
    # patterns do not saturate the score everywhere
    total = np.sum(np.clip(sc / max(np.max(yd) / noise, 1e-12), 0, 1) * ok, axis=1)
    i = int(np.argmax(total))
    n_sig = int(np.sum((sc[i] > 5.0) & ok[i]))
    n_in = int(np.sum(ok[i]))
    return float(a[i]), n_sig, n_in


def seed_lattice(q_A_inv, intensity, sigma=None, n_phases=None, cell=None):
    """Starting lattice from a peak search: c from (003), a from strong (hkl) reflections.

    Parameters
    ----------
    q_A_inv : ndarray, shape (n,)
        Increasing Q, Å⁻¹.
    intensity : ndarray, shape (n,)
        Intensity.
    sigma : ndarray, shape (n,), optional
        Standard deviations.
    n_phases : {None, 1, 2}
        Force one or two layered phases; None follows :func:`detect_003_split`.
    cell : (float, float), optional
        Starting lattice (a, c), Å: (003) is searched within c ± 4 % and a within ± 3 %.

    Returns
    -------
    Seed, Split003

    Raises
    ------
    PatternError
        No (003) peak, or the other strong reflections do not index as an R-3m layered
        oxide with a = 2.70–3.00 Å (e.g. the wavelength or x units are wrong).
    """
    q = np.asarray(q_A_inv, dtype=float)
    y = np.asarray(intensity, dtype=float)
    lo, hi = _window_003(cell)
    q003, _ = find_003(q, y, sigma, cell)
    # the (003) window of the split test is centred on the most prominent peak: H2/H3 lie
    # within ≈0.08 Å⁻¹ of each other
    split = detect_003_split(q, y, sigma, window_A_inv=(max(q003 - 0.1, lo - 0.03),
                                                         min(q003 + 0.1, hi + 0.03)))
    base = _baseline(q, y)
    yd = ndimage.uniform_filter1d(y - base, 3)
    noise = _noise(y) if sigma is None else float(np.median(sigma))
    low = q < min(lo, q003 - 0.1) - 0.02
    if np.count_nonzero(low) >= 20:
        # a peak below (003) (by prominence over its local background, so that a rising
        # low-angle background or a beam-stop edge does not count)
        idx, prom, _, widths = _prominent_peaks(q, y, noise)
        near = np.abs(q[idx] - q003) < 0.02
        p003 = float(np.max(prom[near])) if np.any(near) else 0.0
        w003 = float(np.max(widths[near])) if np.any(near) else 3.0
        strong = (q[idx] < q[low][-1]) & (prom > max(0.25 * p003, 10.0 * noise)) & \
                 (widths < 4.0 * w003 + 3.0)
        if np.any(strong):
            i_low = idx[np.flatnonzero(strong)[int(np.argmax(prom[strong]))]]
            raise PatternError(
                "not_indexed",
                f"strong peak at Q = {q[i_low]:.3f} Å⁻¹, below the (003) reflection at "
                f"{q003:.3f} Å⁻¹, where an R-3m layered oxide has none: wrong wavelength or x "
                "units (Q vs 2θ)?")
    if n_phases == 2 and split.n_peaks == 1:
        q0, w0 = split.q_A_inv[0], split.fwhm_A_inv[0]
        cs = (6 * np.pi / (q0 - 0.3 * w0), 6 * np.pi / (q0 + 0.3 * w0))
        frac = 0.5
    elif n_phases == 1 or split.n_peaks == 1:
        i = int(np.argmax(split.areas))
        cs = (split.c_A[i],)
        frac = 0.0
    else:
        cs = split.c_A  # increasing Q → decreasing c
        frac = float(split.areas[1] / np.sum(split.areas))
    a_vals = []
    a_range = (2.70, 3.00) if cell is None else (0.97 * cell[0], 1.03 * cell[0])
    need = 3 if cell is None else 1  # a starting cell vouches for the indexing
    for c in cs:
        a, n_sig, n_in = find_a(q, yd, noise, c, a_range=a_range)
        if n_in >= 3 and n_sig < min(need, n_in):
            raise PatternError(
                "not_indexed",
                f"a (003)-like peak at c = {c:.3f} Å was found but the other strong layered "
                f"reflections are missing (only {n_sig} of {n_in} found): the pattern does not "
                "index as an R-3m layered oxide — check the wavelength and the x units")
        a_vals.append(a)
    return Seed(c_A=tuple(float(c) for c in cs), a_A=tuple(a_vals), fraction=frac,
                fwhm_003_A_inv=float(split.fwhm_A_inv[0]), noise=noise), split
