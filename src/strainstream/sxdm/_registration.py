"""Sub-pixel registration of raster maps (sample drift between rocking angles).

The translation of each map pair is scikit-image's ``phase_cross_correlation``: the
cross-correlation peak on the FFT grid, refined by an upsampled matrix-multiply DFT around it
(Guizar-Sicairos et al., Opt. Lett. 33, 156 (2008)).
"""

from __future__ import annotations

import numpy as np


def register_translation(
    reference: np.ndarray, moving: np.ndarray, *, upsample: int = 50, normalize: bool = False
) -> np.ndarray:
    """Sub-pixel shifts of maps relative to a reference.

    Parameters
    ----------
    reference : ndarray, shape (ny, nx) or (n, ny, nx)
        Reference map (one for all, or one per moving map).
    moving : ndarray, shape (ny, nx) or (n, ny, nx)
        Map(s) to register.
    upsample : int
        Upsampling factor of the refinement (precision 1/upsample raster steps).
    normalize : bool
        True: phase correlation (whitened spectrum); False: plain cross-correlation (more robust
        for small, noisy maps).

    Returns
    -------
    ndarray, shape (2,) or (n, 2)
        Shift (dy, dx) in raster steps such that ``moving(p) ≈ reference(p − shift)``; zero
        for a pair in which either map is blank (all zero).

    Raises
    ------
    ValueError
        If the maps do not share a shape or are not finite.
    """
    from skimage.registration import phase_cross_correlation

    ref = np.asarray(reference, dtype=np.float64)
    mov = np.asarray(moving, dtype=np.float64)
    single = mov.ndim == 2
    if single:
        mov = mov[None]
    if ref.ndim == 2:
        ref = ref[None]
    if ref.ndim != 3 or mov.shape[1:] != ref.shape[1:] or ref.shape[0] not in (1, mov.shape[0]):
        raise ValueError(f"maps must share the shape (ny, nx): reference {ref.shape}, moving {mov.shape}")
    if not (np.isfinite(ref).all() and np.isfinite(mov).all()):
        raise ValueError("maps to register must be finite: replace NaN/inf (e.g. by 0) first")
    f_ref = np.fft.fft2(ref)  # once for a common reference
    f_mov = np.fft.fft2(mov)
    blank_ref = ~ref.any((1, 2))
    blank_mov = ~mov.any((1, 2))
    shifts = np.zeros((len(mov), 2))
    for i in range(len(mov)):  # one call per map pair (angle): skimage registers pairs
        j = i % len(ref)
        if blank_ref[j] or blank_mov[i]:
            continue
        s, _, _ = phase_cross_correlation(
            f_ref[j], f_mov[i], space="fourier", upsample_factor=upsample,
            normalization="phase" if normalize else None,
        )
        shifts[i] = -s  # skimage returns the shift that registers moving onto reference
    return shifts[0] if single else shifts


def shift_maps(stack: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Resample per-angle maps at drift-corrected positions (bilinear, zero outside).

    Parameters
    ----------
    stack : ndarray, shape (n, ny, nx, ...)
        Maps (any trailing channel axes).
    shifts : ndarray, shape (n, 2)
        (dy, dx) in raster steps; output[i](p) = stack[i](p + shifts[i]).

    Returns
    -------
    ndarray, same shape as ``stack``
    """
    stack = np.asarray(stack)
    s = np.asarray(shifts, dtype=np.float64)
    n, ny, nx = stack.shape[:3]
    if s.shape != (n, 2):
        raise ValueError(f"shifts must have shape ({n}, 2), got {s.shape}")
    yy = np.arange(ny)[None, :] + s[:, 0, None]  # (n, ny)
    xx = np.arange(nx)[None, :] + s[:, 1, None]
    y0 = np.floor(yy).astype(np.intp)
    x0 = np.floor(xx).astype(np.intp)
    wy1, wx1 = yy - y0, xx - x0
    out = np.zeros(stack.shape, dtype=np.result_type(stack.dtype, np.float64))
    tail = (1,) * (stack.ndim - 3)
    ii = np.arange(n)[:, None, None]
    for dy, wy in ((0, 1 - wy1), (1, wy1)):
        yi = y0 + dy
        vy = (yi >= 0) & (yi < ny)
        for dx, wx in ((0, 1 - wx1), (1, wx1)):
            xi = x0 + dx
            vx = (xi >= 0) & (xi < nx)
            w = (wy * vy)[:, :, None] * (wx * vx)[:, None, :]
            g = stack[ii, np.clip(yi, 0, ny - 1)[:, :, None], np.clip(xi, 0, nx - 1)[:, None, :]]
            out += g * w.reshape(w.shape + tail)
    return out


def _saturate(maps: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Outline maps: each map divided by ``fraction`` × its 95th percentile, clipped to [0, 1]."""
    p = np.percentile(maps.reshape(len(maps), -1), 95, axis=1)[:, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nan_to_num(np.clip(maps / (fraction * p), 0.0, 1.0))


def particle_points(intensity_maps: np.ndarray) -> int:
    """Raster points whose intensity summed over the maps (n, ny, nx) (negative values
    clipped) is at least half the maximum: the particle's extent as registration sees it."""
    total = np.clip(np.asarray(intensity_maps, dtype=np.float64), 0, None).sum(0)
    peak = float(total.max()) if total.size else 0.0
    return int((total >= 0.5 * peak).sum()) if peak > 0 else 0


def _fill_unused(shifts: np.ndarray, use: np.ndarray) -> np.ndarray:
    idx = np.flatnonzero(use)
    out = shifts.copy()
    for a in range(2):
        out[:, a] = np.interp(np.arange(len(shifts)), idx, shifts[idx, a])
    return out


def estimate_drift(
    intensity_maps: np.ndarray,
    theta_deg: np.ndarray,
    use: np.ndarray | None = None,
    *,
    texture_maps: np.ndarray | None = None,
    n_iter: int = 6,
    min_points: int = 9,
) -> np.ndarray:
    """Drift between rocking angles from their integrated-intensity maps.

    The intensity map of one rocking angle is the particle's outline modulated by where the
    local rocking curve peaks (lattice tilts), so maps of different angles differ by more than
    a translation. Registration therefore (1) aligns the saturated outlines of the maps to
    their sum, then (2) iterates: from the aligned maps build a per-point Gaussian rocking
    curve (intensity, centre, width), predict each angle's map from it and register the
    measured map to its prediction, and (3) when ``texture_maps`` are given, refines each
    angle's shift by weighted least squares (Lucas–Kanade) between that angle's map of a
    θ-independent peak coordinate (e.g. Q_z, unchanged by rocking about z) and the combined
    map: the lattice-tilt texture inside the particle pins the translation.

    Parameters
    ----------
    intensity_maps : ndarray, shape (n_theta, ny, nx)
        Integrated intensity per angle (ascending θ) and raster point.
    theta_deg : ndarray, shape (n_theta,)
        Rocking angles, ascending, degrees.
    use : ndarray of bool, shape (n_theta,), optional
        Angles to register (bright enough); the others get shifts interpolated in θ order.
        Default: angles with ≥ 10 % of the brightest angle's total.
    texture_maps : ndarray, shape (n_theta, ny, nx), optional
        Per-angle intensity-weighted sums of a θ-independent peak coordinate (same units for
        all angles), e.g. Σ I·ΔQ_z.
    n_iter : int
        Model-prediction iterations.
    min_points : int
        Fewest raster points the particle must cover (summed intensity of the used angles at
        least half its maximum, see :func:`particle_points`); below it the shifts are all zero:
        the intensity maps of a particle a couple of raster steps wide change with θ through
        the lattice tilts far more than through any drift (a 2 × 2 core on a 4 × 4 raster gave
        spurious shifts of 0.5–1.3 raster steps on drift-free data).

    Returns
    -------
    ndarray, shape (n_theta, 2)
        Shifts (dy, dx), raster steps: angle i's content at p belongs at p + shift (the input of
        :func:`shift_maps`). The gauge (a common offset) is arbitrary.

    Notes
    -----
    A drift that grows linearly with θ is nearly degenerate with a lattice-tilt gradient (both
    sweep the bright region across the particle); from intensities alone only the particle
    outline separates them and such ramps are recovered only partly (≈ 60–80 % in the
    simulations); the texture step removes most of the remainder (shift errors ≈ 0.01–0.04
    raster steps in the simulations).
    """
    m0 = np.clip(np.asarray(intensity_maps, dtype=np.float64), 0, None)
    th = np.asarray(theta_deg, dtype=np.float64)
    n_t = m0.shape[0]
    totals = m0.sum((1, 2))
    if use is None:
        use = totals >= 0.1 * totals.max()
    use = np.asarray(use, dtype=bool)
    if use.sum() < 2:
        return np.zeros((n_t, 2))
    if particle_points(m0[use]) < min_points:
        return np.zeros((n_t, 2))
    idx = np.flatnonzero(use)
    outlines = _saturate(m0[use])
    ref = outlines.sum(0)
    s = np.zeros((idx.size, 2))
    for _ in range(3):
        s = register_translation(ref, outlines)
        ref = shift_maps(outlines, s).sum(0)
    shifts = np.zeros((n_t, 2))
    shifts[idx] = s
    shifts = _fill_unused(shifts, use)
    dth = np.gradient(th) if n_t > 1 else np.ones(1)
    for _ in range(n_iter):
        a = shift_maps(m0, shifts)
        s0 = a.sum(0)
        good = s0 > 0
        if not good.any():
            break
        with np.errstate(invalid="ignore", divide="ignore"):
            tc = (a * th[:, None, None]).sum(0) / s0
            var = (a * (th[:, None, None] - tc) ** 2).sum(0) / s0
        tc = np.where(good, tc, np.median(tc[good]))
        var = np.clip(np.where(good, var, np.median(var[good])), (0.25 * dth.min()) ** 2, None)
        pred = s0 * dth[:, None, None] / np.sqrt(2 * np.pi * var) * np.exp(-((th[:, None, None] - tc) ** 2) / (2 * var))
        shifts[idx] = register_translation(pred[idx], m0[idx])
        shifts = _fill_unused(shifts, use)
    if texture_maps is not None:
        tex = np.asarray(texture_maps, dtype=np.float64)
        if tex.shape != m0.shape:
            raise ValueError(f"texture_maps must have the shape of intensity_maps {m0.shape}, got {tex.shape}")
        shifts = _texture_refine(m0, tex, shifts, idx)
        shifts = _fill_unused(shifts, use)
    return shifts


#: the texture (Lucas–Kanade) step updates an angle's shift only with at least this many
#: weighted raster points (a 3 × 3 patch) ...
_LK_MIN_POINTS = 9
#: ... and a normal matrix whose smaller eigenvalue is at least this fraction of the larger
#: (well-posed cases in the simulations: 0.3; degenerate 4 × 4 rasters: 0 to 0.19)
_LK_MIN_CONDITION = 0.05


def _texture_refine(m0: np.ndarray, tex: np.ndarray, shifts: np.ndarray, idx: np.ndarray, n_iter: int = 5) -> np.ndarray:
    """Lucas–Kanade refinement of the shifts of angles ``idx`` on a texture map (see estimate_drift)."""
    shifts = shifts.copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        z_ang = np.where(m0 > 0, tex / m0, 0.0)  # per-angle coordinate map
    for _ in range(n_iter):
        a = shift_maps(np.stack([m0, tex], -1), shifts)
        s0 = a[..., 0].sum(0)
        if not np.any(s0 > 0):
            break
        z = np.where(s0 > 0, a[..., 1].sum(0) / np.where(s0 > 0, s0, 1.0), 0.0)
        good = (s0 > 0.3 * np.percentile(s0[s0 > 0], 99)).astype(float)
        gy, gx = np.gradient(z)
        ref = np.stack([z, gy, gx, good], -1)
        # the combined map seen from each angle's raster: Z(q − s_i)
        zs = shift_maps(np.broadcast_to(ref, (idx.size,) + ref.shape), -shifts[idx])
        w = m0[idx] * (zs[..., 3] > 0.99) * (m0[idx] > 0.2 * m0[idx].max((1, 2), keepdims=True))
        r = z_ang[idx] - zs[..., 0]
        g = zs[..., 1:3]
        a_mat = np.einsum("nyx,nyxi,nyxj->nij", w, g, g)
        b_vec = np.einsum("nyx,nyxi,nyx->ni", w, g, r)
        tr = np.trace(a_mat, axis1=1, axis2=2)
        # a 2-D shift needs gradients in two directions over enough points: with fewer than
        # _LK_MIN_POINTS weighted points or a near-singular normal matrix (e.g. one point, or
        # the 2 × 2 core of a particle on a 4 × 4 raster) the step along the weak direction is
        # noise / a tiny gradient, and the clipped steps add up to whole raster steps
        finite = np.isfinite(a_mat).all((1, 2))
        lam = np.linalg.eigvalsh(np.where(finite[:, None, None], a_mat, 0.0))  # ascending, (n, 2)
        n_pts = (w > 0).sum((1, 2))
        posed = finite & (n_pts >= _LK_MIN_POINTS) & (lam[:, 0] >= _LK_MIN_CONDITION * lam[:, 1]) & (tr > 0)
        a_mat = a_mat + 1e-6 * tr[:, None, None] * np.eye(2) + 1e-300 * np.eye(2)
        step = -np.linalg.solve(a_mat, b_vec[..., None])[..., 0]
        ok = np.isfinite(step).all(1) & posed
        shifts[idx[ok]] += np.clip(step[ok], -0.5, 0.5)
    return shifts
