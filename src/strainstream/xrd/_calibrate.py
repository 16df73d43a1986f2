"""Geometry calibration from a CeO2 (or other pyFAI calibrant) frame."""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage, signal
from scipy.optimize import least_squares

from ._errors import FrameError, PatternError
from ._geometry import GEOMETRY_KEYS, make_azimuthal_integrator, validate_geometry

_PARAMS = ("distance_m", "poni1_m", "poni2_m", "rot1", "rot2", "rot3")
_FIRST_RINGS = 8
#: the beam-centre search assumes circular rings: skipped when the start tilt is larger
_MAX_CENTRE_SEARCH_TILT_RAD = 0.1


def pixel_two_theta_rad(d1, d2, geometry):
    """2θ (rad) at pixel coordinates (d1 = row, d2 = column; pixel centres at +0.5).

    Same convention as pyFAI's ``Geometry.tth`` (rotations about the sample, PONI in the
    detector plane), vectorised in numpy.

    Parameters
    ----------
    d1, d2 : ndarray, shape (n,)
        Row and column pixel coordinates.
    geometry : dict
        Geometry dict (see :func:`validate_geometry`).

    Returns
    -------
    ndarray, shape (n,)
    """
    g = geometry
    px1, px2 = (v * 1e-6 for v in g["pixel_size_um"])
    p1 = px1 * (np.asarray(d1) + 0.5) - g["poni1_m"]
    p2 = px2 * (np.asarray(d2) + 0.5) - g["poni2_m"]
    big_l = g["distance_m"]
    c1, s1 = np.cos(g["rot1"]), np.sin(g["rot1"])
    c2, s2 = np.cos(g["rot2"]), np.sin(g["rot2"])
    c3, s3 = np.cos(g["rot3"]), np.sin(g["rot3"])
    t1 = p1 * c2 * c3 + p2 * (c3 * s1 * s2 - c1 * s3) - big_l * (c1 * c3 * s2 + s1 * s3)
    t2 = p1 * c2 * s3 + p2 * (c1 * c3 + s1 * s2 * s3) - big_l * (-(c3 * s1) + c1 * s2 * s3)
    t3 = p1 * s2 - p2 * c2 * s1 + big_l * c1 * c2
    return np.arctan2(np.sqrt(t1 * t1 + t2 * t2), t3)


def _subpixel_points(frame, d1, d2, geometry, half_px=4.0, n_samples=33, bad=None):
    """Move control points to the intensity centroid of their ring along the 2θ gradient.

    Returns refined (d1, d2) and a boolean array of points with a clear ring profile.
    """
    e = 0.5
    g1 = (pixel_two_theta_rad(d1 + e, d2, geometry) - pixel_two_theta_rad(d1 - e, d2, geometry))
    g2 = (pixel_two_theta_rad(d1, d2 + e, geometry) - pixel_two_theta_rad(d1, d2 - e, geometry))
    norm = np.hypot(g1, g2)
    norm[norm == 0] = 1.0
    u1, u2 = g1 / norm, g2 / norm
    s = np.linspace(-half_px, half_px, n_samples)
    r1 = d1[:, None] + s[None, :] * u1[:, None]
    r2 = d2[:, None] + s[None, :] * u2[:, None]
    v = ndimage.map_coordinates(frame, [r1.ravel(), r2.ravel()], order=1, mode="nearest")
    v = v.reshape(r1.shape)
    near_bad = np.zeros(d1.shape, bool)
    if bad is not None:
        mb = ndimage.map_coordinates(bad.astype(float), [r1.ravel(), r2.ravel()], order=1,
                                     mode="nearest")
        near_bad = mb.reshape(r1.shape).max(axis=1) > 0
    k = max(2, n_samples // 8)
    left, right = v[:, :k].mean(axis=1), v[:, -k:].mean(axis=1)
    base = left[:, None] + (right - left)[:, None] * (s[None, :] + half_px) / (2 * half_px)
    w = np.clip(v - base, 0.0, None)
    imax = np.argmax(w, axis=1)
    near = np.abs(s[None, :] - s[imax][:, None]) <= 0.4 * half_px
    w = w * near
    tot = w.sum(axis=1)
    ok = tot > 0
    shift = np.where(ok, (w * s[None, :]).sum(axis=1) / np.where(ok, tot, 1.0), 0.0)
    ok &= (np.abs(shift) < 0.75 * half_px) & ~near_bad
    return d1 + shift * u1, d2 + shift * u2, ok


#: flips that bring an image of pyFAI orientation 1, 2, 4 to the default orientation 3
_TO_ORIENTATION_3 = {1: (0, 1), 2: (0,), 3: (), 4: (1,)}


def _bad_pixel_mask(frame, geometry, mask, saturation_level):
    """True where a pixel must not be used: user mask, detector gaps/dead pixels (named pyFAI
    detector), negative (Pilatus/Eiger gap and bad-pixel markers), non-finite and saturated."""
    from ._geometry import make_detector

    bad = ~np.isfinite(frame) | (frame < 0)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != frame.shape:
            raise FrameError("shape", f"mask shape {mask.shape} does not match the frame shape "
                                      f"{frame.shape}")
        bad |= mask.astype(bool)
    det_mask = make_detector(geometry).mask if geometry.get("detector") else None
    if det_mask is not None:
        bad |= np.asarray(det_mask).astype(bool)
    if saturation_level is not None:
        bad |= frame >= saturation_level
    return bad


def _sharpness(rows, cols, vals, c1, c2, scale, r_min_px):
    """Sharpness of the radial profile around centre (c1, c2): mean square of the profile
    minus its running median (rings are sharp only around the true centre)."""
    rb = (np.hypot(rows - c1, cols - c2) / scale).astype(np.intp)
    n = np.bincount(rb)
    s = np.bincount(rb, vals, n.size)
    good = n > 3
    good[: int(r_min_px / scale)] = False
    if np.count_nonzero(good) < 20:
        return 0.0
    p = s[good] / n[good]
    hp = p - ndimage.median_filter(p, 9, mode="nearest")
    return float(np.sum(hp * hp * n[good]) / n[good].sum())


def find_beam_centre(frame, bad, centre_px, half_width_px, r_min_px=0.0):
    """Direct-beam position that makes the rings sharpest, by a coarse-to-fine grid search.

    The radial profile about a trial centre (flat-detector circles, log intensity) is sharp
    only near the true centre; tilt makes rings slightly elliptical, which the geometry
    refinement handles afterwards. Binned images (about 60 000 super-pixels) are searched
    first over ±``half_width_px``, then finer images around the best point, down to about
    1 px (0.5 px on images of ≤ 1.2 Mpixel); the geometry refinement takes over from there.

    Parameters
    ----------
    frame : ndarray, shape (rows, cols)
        Calibrant image.
    bad : ndarray of bool, shape (rows, cols)
        Pixels to ignore.
    centre_px : (float, float)
        Starting direct-beam position (row, column) in pixels (pixel centres at +0.5).
    half_width_px : float
        Half width of the searched square, pixels.
    r_min_px : float
        Radii below this (beam stop, its shadow) are ignored, pixels.

    Returns
    -------
    (float, float)
        Direct-beam position (row, column), pixels.
    """
    good = ~bad
    floor = np.percentile(frame[good], 1.0) if np.any(good) else 0.0
    logv = np.where(good, np.log1p(np.clip(frame - floor, 0.0, None)), 0.0)
    c1, c2 = map(float, centre_px)
    b = max(1, int(np.sqrt(frame.size / 60000.0)))
    b_last = max(1, b // 4)  # the geometry refinement takes over from ≈1 px
    levels = []
    while b >= b_last:
        levels.append(b)
        b //= 2
    half = float(half_width_px)
    for k, b in enumerate(levels):
        h, w = (frame.shape[0] // b) * b, (frame.shape[1] // b) * b
        vs = logv[:h, :w].reshape(h // b, b, w // b, b).sum(axis=(1, 3))
        ns = good[:h, :w].reshape(h // b, b, w // b, b).sum(axis=(1, 3))
        ok = ns >= 0.75 * b * b
        rows, cols = np.nonzero(ok)
        vals = vs[ok] / ns[ok]
        rows = (rows + 0.5) * b
        cols = (cols + 0.5) * b
        last = k == len(levels) - 1
        step = max(0.5, b / 2) if last else float(b)
        if k:  # the previous level's best point lies within ± half its step of the optimum
            half = float(b) if last else float(levels[k - 1])
        offs = np.arange(-half, half + 1e-9, step)
        scores = np.array([[_sharpness(rows, cols, vals, c1 + o1, c2 + o2, b, r_min_px)
                            for o2 in offs] for o1 in offs])
        i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
        c1, c2 = c1 + offs[i], c2 + offs[j]
    return c1, c2


def _coarse_distance(ai, frame, tth_rings_rad, mask=None):
    """Scale the distance so that the azimuthally averaged ring positions match the calibrant.

    Returns (scale, rings matched, rings expected on the detector, rings matched by a
    typical scale: the 90th percentile over the grid). A wrong distance D_g maps a ring of
    true angle 2θ to tan(2θ_app) = (D/D_g)·tan 2θ; the scale D/D_g is found by a grid search
    maximising the profile at the predicted rings. A calibrant matches most rings at one
    scale only; background structure "matches" about as many at any scale.
    """
    npt = int(0.5 * np.hypot(*frame.shape))  # about one bin per pixel of radius
    res = ai.integrate1d(frame, npt, unit="2th_rad", method=("bbox", "histogram", "cython"),
                         mask=mask)
    tth, prof = np.asarray(res.radial), np.asarray(res.intensity)
    ok = np.isfinite(prof)
    tth, prof = tth[ok], prof[ok]
    base = signal.medfilt(prof, 2 * (npt // 100) + 1)
    prof = prof - base
    noise = 1.4826 * np.median(np.abs(np.diff(prof))) / np.sqrt(2.0) + 1e-12
    hit = (prof > 5.0 * noise).astype(float)  # rings are counted, not weighted by intensity
    rings = tth_rings_rad[tth_rings_rad < tth[-1]]
    scales = np.linspace(0.88, 1.12, 2401)
    pred = np.arctan(np.tan(rings)[None, :] * scales[:, None])
    score = np.interp(pred, tth, hit, left=0, right=0).sum(axis=1)
    best = int(np.argmax(score))
    return (float(scales[best]), float(score[best]), int(rings.size),
            float(np.percentile(score, 90)))


def calibrate(frame, approx_geometry, calibrant="CeO2", *, fix_wavelength=True,
              fix_rot3=True, max_rings=None, n_iter=3, mask=None, return_diagnostics=False,
              measure_width=False, width_options=None, find_centre=True, centre_search_mm=5.0,
              saturation_level="auto", max_rms_px=1.0):
    """Refine the detector geometry from a calibrant powder frame.

    Coarse steps: the direct-beam position is searched so the rings are sharpest
    (:func:`find_beam_centre`), then the distance is rescaled so the azimuthal average matches
    the calibrant ring angles. Then, ``n_iter`` times: control points are extracted on the rings with pyFAI
    (``SingleGeometry.extract_cp``, massif peak search guided by the current geometry) and
    the geometry is refined by ``scipy.optimize.least_squares`` on the 2θ residuals of all
    control points. With ``measure_width=True`` the instrumental FWHM is then measured on
    the same frame with the refined geometry (:func:`instrument_fwhm`) and added to the
    geometry as ``instrument_fwhm_A_inv`` (Å⁻¹, one width averaged over Q) and as
    ``instrument_function`` (:meth:`InstrumentWidth.instrument_function`: Caglioti U, V, W in
    deg² and the pseudo-Voigt η; a constant Δ2θ when fewer than 4 reflections are resolved),
    which :func:`refine_pattern` (``instrument=``) and the operando XRD callback evaluate
    at every peak's own Q.

    Parameters
    ----------
    frame : ndarray, shape (rows, cols)
        Calibrant image (counts).
    approx_geometry : dict
        Starting geometry (see :func:`validate_geometry`), e.g. the nominal set-up; distance
        within ~10 % and beam centre within a few mm (``centre_search_mm``). Optional
        ``detector`` (pyFAI name: module gaps masked) and ``orientation`` are kept in the
        result.
    calibrant : str
        pyFAI calibrant name (``"CeO2"`` = NIST SRM 674b lattice).
    fix_wavelength : bool
        Keep the wavelength fixed (recommended: it is degenerate with the distance at small
        angles).
    fix_rot3 : bool
        Keep rot3 fixed (rot3 is undefined for a flat detector with isotropic rings).
    max_rings : int, optional
        Use at most this many rings (default: all rings on the detector).
    n_iter : int
        Number of extract/refine cycles on all rings (after a first cycle on the 8 inner
        rings).
    mask : ndarray of bool, shape (rows, cols), optional
        Pixels to ignore (True = masked), e.g. a user mask file. Negative pixels (the gap
        and bad-pixel markers of Pilatus/Eiger images), non-finite and saturated pixels,
        and the module gaps of a named detector (geometry ``"detector"``) are masked too.
    find_centre : bool
        Search the direct-beam position first (:func:`find_beam_centre`, default True):
        a start beam centre a few mm off is then enough. Skipped when the start geometry
        is tilted by more than 0.1 rad (rot1 or rot2): rings are then far from circles.
    centre_search_mm : float
        Half width of the beam-centre search, mm (default 5).
    saturation_level : float, None or "auto"
        Counts at or above which pixels are masked; "auto" (default): the maximum of an
        integer frame's dtype, none for a float frame.
    max_rms_px : float
        Largest accepted rms radial ring residual of the control points, pixels (default 1);
        a poorer fit raises ``FrameError``.
    return_diagnostics : bool
        Also return a dict with ``"calibrant"``, ``"n_control_points"`` and
        ``"rms_2theta_deg"`` (rms 2θ residual of the control points, degrees),
        ``"rms_px"`` (rms radial residual, pixels), ``"n_rings"``, ``"n_masked_px"``, and with
        ``measure_width=True`` ``"instrument_width"`` (:meth:`InstrumentWidth.to_dict`).
    measure_width : bool
        Also measure the instrumental FWHM on the calibrant (default False).
    width_options : dict, optional
        Keyword arguments for :func:`instrument_fwhm` (``npt``, ``model`` (default
        ``"caglioti"``, falling back to ``"constant_2theta"``), ``calibrant_size_nm``,
        ``average_range_A_inv``...); ``mask`` and ``calibrant`` are those of this call.

    Returns
    -------
    dict
        Geometry dict (:data:`GEOMETRY_KEYS`, ``detector``/``orientation`` if given, plus ``instrument_fwhm_A_inv`` and
        ``instrument_function`` with ``measure_width=True``; JSON-able, see :func:`save_poni`).
        With ``return_diagnostics=True``: (geometry, diagnostics).

    Raises
    ------
    FrameError
        Wrong frame shape, too few control points (no rings found), or a ring residual
        above ``max_rms_px``.
    PatternError
        ``measure_width=True`` and too few resolved calibrant reflections to fit widths.
    """
    from pyFAI.calibrant import get_calibrant
    from pyFAI.goniometer import SingleGeometry

    g = validate_geometry(approx_geometry)
    raw_frame = frame
    frame = np.asarray(frame)
    if frame.shape != tuple(g["shape"]):
        raise FrameError("shape", f"calibrant frame shape {frame.shape} does not match the "
                                  f"geometry shape {tuple(g['shape'])}")
    if isinstance(saturation_level, str):
        if saturation_level != "auto":
            raise ValueError(f"saturation_level must be a number, None or 'auto', got "
                             f"{saturation_level!r}")
        saturation_level = (float(np.iinfo(frame.dtype).max) if frame.dtype.kind in "iu"
                            else None)
    frame = frame.astype(float)
    bad = _bad_pixel_mask(frame, g, mask, saturation_level)
    if np.count_nonzero(~bad) < 0.1 * frame.size:
        raise FrameError("masked", f"{np.count_nonzero(bad)} of {frame.size} pixels are masked "
                                   "(negative, saturated, gaps or the mask): nothing to calibrate")
    # work in pyFAI's default orientation 3 on a generic detector: flip the image
    kept = {k: g[k] for k in ("detector", "orientation") if k in g}
    flips = _TO_ORIENTATION_3[g.get("orientation", 3)]
    if flips:
        frame, bad = np.flip(frame, flips), np.flip(bad, flips)
    g = {k: v for k, v in g.items() if k not in ("detector", "orientation")}
    frame = np.where(bad, 0.0, frame)
    cal = get_calibrant(calibrant)
    cal.wavelength = g["wavelength_A"] * 1e-10
    tth_rings = np.asarray(cal.get_2th(), dtype=float)
    px1, px2 = (v * 1e-6 for v in g["pixel_size_um"])
    ai = make_azimuthal_integrator(g)
    # rings are near-circles only on a detector roughly normal to the beam
    if find_centre and max(abs(g["rot1"]), abs(g["rot2"])) < _MAX_CENTRE_SEARCH_TILT_RAD:
        f2d = ai.getFit2D()
        r_first = g["distance_m"] * np.tan(tth_rings[0]) / max(px1, px2)
        half = max(centre_search_mm * 1e-3 / min(px1, px2), 3.0)
        c1, c2 = find_beam_centre(frame, bad, (f2d["centerY"], f2d["centerX"]), half,
                                  r_min_px=0.6 * r_first)
        g["poni1_m"] += (c1 - f2d["centerY"]) * px1
        g["poni2_m"] += (c2 - f2d["centerX"]) * px2
        ai = make_azimuthal_integrator(g)
    scale, n_rings, n_expected, n_typical = _coarse_distance(ai, frame, tth_rings, bad)
    if n_rings < max(4.0, 0.4 * n_expected) or n_rings - n_typical < 0.25 * n_expected:
        raise FrameError("blank", f"no {calibrant} rings found in the azimuthal average (matched "
                                  f"{n_rings:.0f} of {n_expected}): check the frame, the wavelength and the "
                                  "approximate distance (within ~10 %)")
    g["distance_m"] *= scale
    free = [p for p in _PARAMS if not (fix_rot3 and p == "rot3")]
    if not fix_wavelength:
        free.append("wavelength_A")
    x = np.array([g[p] for p in free])
    scale = np.array([0.01 if p == "distance_m" else 1e-3 for p in free])
    pyfai_logger = logging.getLogger("pyFAI")
    old_level = pyfai_logger.level
    pyfai_logger.setLevel(logging.ERROR)
    try:
        for it in range(n_iter + 1):
            ai = make_azimuthal_integrator(g)
            ai.detector.mask = bad.astype(np.int8)
            sg = SingleGeometry("calibrant", frame, calibrant=cal, detector=ai.detector,
                                geometry=ai)
            # first cycle on the inner rings only: the outer rings lie a few pixels apart, so
            # a start beam centre off by a pixel or two would assign points to the wrong ring
            n_rings_i = max_rings if it else min(max_rings or _FIRST_RINGS, _FIRST_RINGS)
            sg.extract_cp(max_rings=n_rings_i, pts_per_deg=1.0)
            pts = np.array(sg.control_points.getList(), dtype=float)
            if pts.ndim != 2 or pts.shape[0] < 20:
                raise FrameError("blank", f"only {0 if pts.ndim != 2 else pts.shape[0]} control "
                                          f"points found on the {calibrant} rings: check the "
                                          "frame and the approximate geometry")
            d1, d2, ring = pts[:, 0], pts[:, 1], pts[:, 2].astype(int)
            d1, d2, ok = _subpixel_points(frame, d1, d2, g, bad=bad)
            d1, d2, ring = d1[ok], d2[ok], ring[ok]

            def resid(xv, d1=d1, d2=d2, ring=ring):
                gg = dict(g)
                gg.update(zip(free, xv, strict=True))
                lam = gg["wavelength_A"]
                if lam != g["wavelength_A"]:
                    ratio = lam / g["wavelength_A"]
                    ring_tth = 2 * np.arcsin(np.clip(ratio * np.sin(tth_rings / 2), 0, 1))
                else:
                    ring_tth = tth_rings
                return (pixel_two_theta_rad(d1, d2, gg) - ring_tth[ring]) * 1e3

            res = least_squares(resid, x, x_scale=scale, method="lm")
            # weight every ring by its own scatter (weak/overlapping rings scatter more),
            # drop > 4σ outliers and refit
            r = res.fun
            rings_used = np.unique(ring)
            med = np.zeros(ring.max() + 1)
            spread = np.ones(ring.max() + 1)
            for k in rings_used:
                rk = r[ring == k]
                med[k] = np.median(rk)
                spread[k] = max(1.4826 * np.median(np.abs(rk - med[k])), 1e-4)
            z = (r - med[ring]) / spread[ring]
            keep = np.abs(z) < 4.0
            d1, d2, ring = d1[keep], d2[keep], ring[keep]
            wpt = 1.0 / spread[ring]
            res = least_squares(lambda xv, d1=d1, d2=d2, ring=ring, wpt=wpt:
                                resid(xv, d1, d2, ring) * wpt, res.x, x_scale=scale, method="lm")
            res.fun = res.fun / wpt
            x = res.x
            g.update(zip(free, (float(v) for v in x), strict=True))
    finally:
        pyfai_logger.setLevel(old_level)
    # radial residual in pixels: Δr = L·Δ(2θ)/cos²(2θ) on a detector normal to the beam
    tth_pts = pixel_two_theta_rad(d1, d2, g)
    r_px = res.fun * 1e-3 * g["distance_m"] / np.cos(tth_pts) ** 2 / np.sqrt(px1 * px2)
    rms_px = float(np.sqrt(np.mean(r_px**2)))
    rings_used = np.unique(ring)
    out = validate_geometry({**{k: g[k] for k in GEOMETRY_KEYS}, **kept})
    diag = {"calibrant": calibrant, "n_control_points": int(d1.size),
            "n_rings": int(rings_used.size),
            "rms_2theta_deg": float(np.degrees(np.sqrt(np.mean(res.fun**2)) * 1e-3)),
            "rms_px": rms_px, "n_masked_px": int(np.count_nonzero(bad))}
    if not rms_px <= max_rms_px or rings_used.size < 3:
        raise FrameError("blank", f"calibration failed: ring residual {rms_px:.2f} px rms over "
                                  f"{d1.size} control points on {rings_used.size} {calibrant} rings "
                                  f"(limit {max_rms_px:g} px, at least 3 rings): check the "
                                  "calibrant, the wavelength, the detector (pixel size, name, "
                                  "orientation) and the mask; a start closer than ~10 % in "
                                  "distance and a few mm in beam centre")
    if measure_width:
        from ._instrument import instrument_fwhm

        opts = dict(width_options or {})
        for key in ("mask", "calibrant", "geometry", "integrator"):
            if key in opts:
                raise ValueError(f"width_options must not set {key!r} (given by calibrate)")
        if "model" in opts:
            width = instrument_fwhm(raw_frame, geometry=out, calibrant=calibrant, mask=mask,
                                    **opts)
        else:  # Caglioti U, V, W when enough reflections are resolved, else a constant Δ2θ
            try:
                width = instrument_fwhm(raw_frame, geometry=out, calibrant=calibrant,
                                        mask=mask, model="caglioti", **opts)
            except PatternError:
                width = instrument_fwhm(raw_frame, geometry=out, calibrant=calibrant,
                                        mask=mask, model="constant_2theta", **opts)
        out["instrument_fwhm_A_inv"] = width.instrument_fwhm_A_inv
        out["instrument_function"] = width.instrument_function()
        diag["instrument_width"] = width.to_dict()
    if not return_diagnostics:
        return out
    return out, diag
