"""The SXDM figure: intensity, strain Δd/d and rotation (θxy, θxz) maps with scale bars in µm,
beside the strain histogram inside the particle — the panels of the study's SXDM figures.

The maps are arrays next to the results table (``derived/<uid>/sxdm_arrays`` in tiled), not
in the results entry (which holds their digests only): pass them as ``arrays`` (e.g. from
:func:`strainstream.callbacks.sinks.read_arrays`). Without them the figure shows the rocking curve from the per-frame
table.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["sxdm_figure"]


def _vals(cols: dict[str, list], key: str) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in cols.get(key, [])], dtype=float)


def _scale_bar(ax, nx: int, ny: int, step_nm: float, color: str = "w") -> None:
    """A bar of a round length (µm) in the lower left corner of a map."""
    width_um = nx * step_nm / 1000.0
    target = width_um / 4
    length = max((v for v in (0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 20, 50) if v <= target), default=target)
    px = length * 1000.0 / step_nm
    x0, y0 = -0.5 + 0.05 * nx, ny - 0.5 - 0.08 * ny
    ax.plot([x0, x0 + px], [y0, y0], "-", color=color, lw=3, solid_capstyle="butt")
    label = f"{length * 1000:.0f} nm" if length < 1 else f"{length:g} µm"
    ax.text(x0 + px / 2, y0 - 0.04 * ny, label, color=color, ha="center", va="bottom", fontsize=8,
            fontweight="bold")


def _symmetric_limit(v: np.ndarray) -> float:
    finite = np.abs(v[np.isfinite(v)])
    lim = float(np.percentile(finite, 99)) if finite.size else 0.0
    return lim if lim > 0 else 1.0


def sxdm_figure(entry: dict[str, Any], fig=None, arrays: dict[str, np.ndarray] | None = None,
                step_nm: float | None = None):
    """Build the SXDM figure from a results entry of ``sxdm`` and (optionally) its maps.

    Parameters
    ----------
    entry : dict
        The results entry (:func:`strainstream.callbacks.sinks.read_results` form).
    fig : matplotlib Figure, optional
        Reused (cleared) when given.
    arrays : dict of ndarray, optional
        ``intensity``, ``mask``, ``strain``, ``tilt_xy_deg``, ``tilt_xz_deg`` ((ny, nx) each).
    step_nm : float, optional
        Raster step for the scale bars; default the summary's ``step_nm`` (else 50 nm).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib
    from matplotlib.figure import Figure

    fig = fig or Figure(figsize=(15, 7.5), layout="constrained")
    fig.clear()
    summary = entry.get("summary") or {}
    step = float(step_nm or summary.get("step_nm") or 50.0)
    cols = entry.get("columns") or {}
    gs = fig.add_gridspec(2, 3)
    have_maps = bool(arrays) and all(k in arrays for k in ("intensity", "strain", "tilt_xy_deg", "tilt_xz_deg"))
    if have_maps:
        panels = [
            ("intensity", "intensity (counts)", "magma", False, 1.0),
            ("strain", "strain Δd/d (10$^{-3}$)", "RdBu_r", True, 1e3),
            ("tilt_xy_deg", "θxy (deg)", "PuOr_r", True, 1.0),
            ("tilt_xz_deg", "θxz (deg)", "PiYG", True, 1.0),
        ]
        for k, (key, title, cmap, diverging, scale) in enumerate(panels):
            ax = fig.add_subplot(gs[k // 2, k % 2])
            v = np.asarray(arrays[key], dtype=float) * scale
            ny, nx = v.shape
            cm = matplotlib.colormaps[cmap].copy()
            cm.set_bad("0.88")  # outside the particle mask (NaN)
            kw: dict[str, Any] = {"cmap": cm, "origin": "upper", "interpolation": "nearest"}
            if diverging:
                lim = _symmetric_limit(v)
                kw.update(vmin=-lim, vmax=lim)
            im = ax.imshow(v, **kw)
            fig.colorbar(im, ax=ax, shrink=0.85)
            _scale_bar(ax, nx, ny, step, color="k" if diverging else "w")
            ax.set_title(title)
            ax.set_xticks([])
            ax.set_yticks([])
        ax_h = fig.add_subplot(gs[0, 2])
        s = np.asarray(arrays["strain"], dtype=float)
        s = s[np.isfinite(s)] * 1e3
        if s.size:
            ax_h.hist(s, bins=max(10, min(60, s.size // 10)), color="C3", alpha=0.8)
            ax_h.axvline(0.0, color="k", lw=0.8)
        std = summary.get("strain_std")
        txt = f"std {std * 1e3:.2f}×10$^{{-3}}$" if isinstance(std, float) else ""
        ax_h.set(xlabel="strain Δd/d (10$^{-3}$)", ylabel="pixels", title=f"strain histogram {txt}".strip())
    else:
        ax_n = fig.add_subplot(gs[:, :2])
        ax_n.text(0.5, 0.5, "maps not loaded\n(pass arrays: sinks.read_arrays)",
                  ha="center", va="center", transform=ax_n.transAxes)
        ax_n.set_axis_off()
    # rocking curve from the per-frame table: summed counts per angle
    ax_r = fig.add_subplot(gs[1, 2])
    theta, total, flags = _vals(cols, "theta_deg"), _vals(cols, "total_counts"), cols.get("flag", [])
    ok = np.isfinite(theta) & np.isfinite(total)
    if flags:
        ok &= np.array([not f for f in flags])
    if ok.any():
        th, inv = np.unique(np.round(theta[ok], 4), return_inverse=True)
        ax_r.plot(th, np.bincount(inv, weights=total[ok]), "o-", ms=3, color="C0")
    ax_r.set(xlabel="θ (deg)", ylabel="total counts", title="rocking curve (all raster points)")
    return fig
