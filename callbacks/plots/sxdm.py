"""The SXDM figure: intensity, strain Δd/d and rotation (θxy, θxz) maps with scale bars in µm
and colour bars, beside the histograms inside the particle, the strain–rotation correlation
and the rocking curve — the panels of the study's SXDM figures.

Strain and rotations are drawn with diverging colour maps centred on 0 (symmetric limits at
the 99th percentile of |value|); raster points outside the particle mask are grey.

The maps are arrays next to the results table (``derived/<uid>/sxdm_arrays`` in tiled), not
in the results entry (which holds their digests only): pass them as ``arrays`` (e.g. from
:func:`strainstream.callbacks.sinks.read_arrays`). Without them the figure shows the rocking
curve from the per-frame table.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import column, run_title, scale_bar, spread, symmetric_limit

__all__ = ["sxdm_figure"]

#: (array key, title, colour-bar label, colour map, diverging, scale)
MAP_PANELS = (
    ("intensity", "intensity", "integrated (003) counts", "magma", False, 1.0),
    ("strain", "strain Δd/d", "Δd/d (10$^{-3}$)", "RdBu_r", True, 1e3),
    ("tilt_xy_deg", "rotation θxy", "θxy (deg)", "PuOr_r", True, 1.0),
    ("tilt_xz_deg", "rotation θxz", "θxz (deg)", "PiYG", True, 1.0),
)


def _map(fig, ax, v: np.ndarray, title: str, label: str, cmap: str, diverging: bool,
         pixel_um: float, short_rows: np.ndarray | None = None) -> None:
    import matplotlib

    cm = matplotlib.colormaps[cmap].copy()
    cm.set_bad("0.85")  # outside the particle mask (NaN)
    kw: dict[str, Any] = {"cmap": cm, "origin": "upper", "interpolation": "nearest"}
    if diverging:
        lim = symmetric_limit(v)
        kw.update(vmin=-lim, vmax=lim)
    im = ax.imshow(v, **kw)
    fig.colorbar(im, ax=ax, shrink=0.85, label=label)
    ny, nx = v.shape
    scale_bar(ax, nx, ny, pixel_um, color="k" if diverging else "w")
    if short_rows is not None and short_rows.size:
        # raster rows with a fly line mapped short: a red mark beside the row, outside the map
        ax.plot(np.full(short_rows.size, -0.9), short_rows, ">", color="red", ms=5, clip_on=False)
        ax.set_xlim(-0.5, nx - 0.5)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])


def _stats_text(v: np.ndarray, unit: str) -> str:
    """``mean ±M unit, σ S unit`` of strain in units of 10⁻³ (two decimals)."""
    return f"mean {np.mean(v):+.2f} {unit}, σ {np.std(v):.2f} {unit}"


def sxdm_figure(entry: dict[str, Any], fig=None, arrays: dict[str, np.ndarray] | None = None,
                step_nm: float | None = None, *, start: dict[str, Any] | None = None,
                source: str | None = None):
    """Build the SXDM figure from a results entry of ``sxdm`` and (optionally) its maps.

    Parameters
    ----------
    entry : dict
        The results entry (:func:`strainstream.callbacks.sinks.read_results` form); ``summary``
        ``step_nm`` and ``strain_std`` are used, the ``theta_deg``/``total_counts`` columns
        give the rocking curve.
    fig : matplotlib Figure, optional
        Reused (cleared) when given.
    arrays : dict of ndarray, optional
        ``intensity``, ``mask``, ``strain`` (Δd/d), ``tilt_xy_deg``, ``tilt_xz_deg``
        ((ny, nx) each, NaN outside the particle); optional ``shifts_px`` (n_theta, 2; drift
        in raster steps) with ``theta_deg`` (n_theta,), drawn when the entry has no per-frame
        rocking curve; optional ``incomplete_lines`` (k, 3: itheta, iy, frames of the fly
        lines mapped short, :func:`strainstream.results_doc.figure_arrays`): their rows are
        marked beside the maps and counted in the title.
    step_nm : float, optional
        Raster step for the scale bars, nm; default the summary's (else the start document's,
        else 50 nm).
    start : dict, optional
        The run's start document (material/sample for the title, ``step_nm``).
    source : str, optional
        Named in the title when there is no run (the analysed file).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    fig = fig or Figure(figsize=(17, 8), layout="constrained")
    fig.clear()
    spread(fig)
    summary = entry.get("summary") or {}
    step = float(step_nm or summary.get("step_nm") or (start or {}).get("step_nm") or 50.0)
    cols = entry.get("columns") or {}
    gs = fig.add_gridspec(2, 4, width_ratios=[1, 1, 0.9, 0.9])
    have_maps = bool(arrays) and all(k in arrays for k, *_ in MAP_PANELS)
    if have_maps:
        vals = {key: np.asarray(arrays[key], dtype=float) * scale for key, *_, scale in MAP_PANELS}
        mask = np.asarray(arrays.get("mask", np.isfinite(vals["strain"])), dtype=bool)
        short = np.asarray(arrays.get("incomplete_lines", np.empty((0, 3))), dtype=int).reshape(-1, 3)
        short_rows = np.unique(short[:, 1]) if short.size else None
        for k, (key, title, label, cmap, diverging, _) in enumerate(MAP_PANELS):
            _map(fig, fig.add_subplot(gs[k // 2, k % 2]), vals[key], title, label, cmap, diverging,
                 step / 1000.0, short_rows)

        inside = mask & np.isfinite(vals["strain"])
        s = vals["strain"][inside]
        ax_h = fig.add_subplot(gs[0, 2])
        if s.size:
            ax_h.hist(s, bins=max(10, min(60, s.size // 10)), color="C3", alpha=0.8)
            ax_h.axvline(0.0, color="k", lw=0.8)
            ax_h.axvline(float(np.mean(s)), color="C3", lw=1.2, ls="--")
            ax_h.text(0.02, 0.97, f"{inside.sum()} pixels\n{_stats_text(s, '×10$^{-3}$')}",
                      transform=ax_h.transAxes, va="top", fontsize=8,
                      bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9})
            ax_h.set_ylim(top=ax_h.get_ylim()[1] * 1.25)  # room for the numbers above the bars
        ax_h.set(xlabel="strain Δd/d (10$^{-3}$)", ylabel="pixels", title="strain histogram")

        ax_t = fig.add_subplot(gs[1, 2])
        lines = []
        for key, color, name in (("tilt_xy_deg", "C1", "θxy"), ("tilt_xz_deg", "C2", "θxz")):
            t = vals[key][mask & np.isfinite(vals[key])]
            if t.size:
                ax_t.hist(t, bins=max(10, min(60, t.size // 10)), histtype="step", color=color,
                          lw=1.5, label=f"{name}: σ {np.std(t):.3g}°")
                lines.append(name)
        ax_t.axvline(0.0, color="k", lw=0.8)
        if lines:
            ax_t.legend(fontsize=8, frameon=False)
        ax_t.set(xlabel="rotation (deg)", ylabel="pixels", title="rotation histograms")

        ax_x = fig.add_subplot(gs[1, 3])
        txy = vals["tilt_xy_deg"]
        both = inside & np.isfinite(txy)
        if both.sum() >= 3:
            ax_x.plot(vals["strain"][both], txy[both], "o", ms=3, color="0.3", alpha=0.6)
            r = np.corrcoef(vals["strain"][both], txy[both])[0, 1]
            ax_x.text(0.97, 0.97, f"r = {r:+.2f}", transform=ax_x.transAxes, ha="right", va="top")
        ax_x.set(xlabel="strain Δd/d (10$^{-3}$)", ylabel="θxy (deg)", title="strain vs rotation")
        for ax in (ax_h, ax_t, ax_x):
            ax.grid(alpha=0.3)
        ax_r = fig.add_subplot(gs[0, 3])
    else:
        ax_n = fig.add_subplot(gs[:, :2])
        ax_n.text(0.5, 0.5, "maps not loaded\n(pass arrays: sinks.read_arrays)",
                  ha="center", va="center", transform=ax_n.transAxes)
        ax_n.set_axis_off()
        ax_r = fig.add_subplot(gs[:, 2:])
    # rocking curve from the per-frame table: summed counts per angle
    theta, total = column(cols, "theta_deg"), column(cols, "total_counts")
    flags = cols.get("flag") or []
    ok = np.isfinite(theta) & np.isfinite(total) if theta.size == total.size else np.zeros(0, bool)
    if len(flags) == ok.size:
        ok &= np.array([not f for f in flags], dtype=bool)
    shifts = np.asarray((arrays or {}).get("shifts_px", np.empty((0, 2))), dtype=float)
    theta_all = np.asarray((arrays or {}).get("theta_deg", []), dtype=float)
    if ok.any():
        th, inv = np.unique(np.round(theta[ok], 4), return_inverse=True)
        ax_r.plot(th, np.bincount(inv, weights=total[ok]), "o-", ms=3, color="C0")
        ax_r.set(xlabel="θ (deg)", ylabel="total counts", title="rocking curve (all raster points)")
    elif shifts.ndim == 2 and shifts.shape[1] == 2 and theta_all.size == shifts.shape[0] > 0:
        # no per-frame table (a file analysed by `strainstream sxdm map`): the registration
        ax_r.plot(theta_all, shifts[:, 0] * step, "o-", ms=3, label="y")
        ax_r.plot(theta_all, shifts[:, 1] * step, "s-", ms=3, label="x")
        ax_r.legend(fontsize=8, frameon=False)
        ax_r.set(xlabel="θ (deg)", ylabel="drift (nm)", title="sample drift per rocking angle")
    else:
        ax_r.set(xlabel="θ (deg)", ylabel="total counts", title="rocking curve (all raster points)")
    ax_r.grid(alpha=0.3)
    short_note = ""
    if have_maps and short_rows is not None:
        short_note = (f" — {len(short)} fly line{'s' if len(short) != 1 else ''} mapped short, "
                      f"rows marked ▸ ({len(short_rows)} of {vals['strain'].shape[0]})")
    fig.suptitle(run_title("sxdm", start, entry if start else None, source) +
                 f" — {step:g} nm raster step" + short_note, x=0.02, ha="left", fontsize=13)
    return fig
