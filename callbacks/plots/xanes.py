"""The TXM-XANES figure: white-line energy map (perceptual colour map, colour bar in eV, scale
bar in µm), its histogram with mean and standard deviation, the edge-jump map — the panels of
the TXM-XANES state-of-charge papers — beside the image mean per energy of every frame
(dark / sample / flat) as the scan goes.

Isolated pixels that passed the edge-jump mask outside the particles (connected groups
smaller than :data:`MIN_PARTICLE_FRACTION` of the largest particle, at least
:data:`MIN_PARTICLE_PX` pixels) are noise, not material: the map and the histogram leave them
out and say how many.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import column, robust_limits, run_title, scale_bar, spread

__all__ = ["particle_mask", "txm_xanes_figure"]

#: white-line energy colour map (perceptually uniform, readable in grey scale)
WHITELINE_CMAP = "viridis"
#: connected pixel groups smaller than this many pixels are not particles...
MIN_PARTICLE_PX = 5
#: ... nor smaller than this fraction of the largest particle
MIN_PARTICLE_FRACTION = 0.01


def _maps(entry, arrays):
    """The analysis arrays as numpy arrays (``entry["arrays"]`` may hold only digests)."""
    src = arrays if arrays is not None else entry.get("arrays") or {}
    return {k: np.asarray(v) for k, v in src.items() if not isinstance(v, dict)}


def particle_mask(valid: np.ndarray) -> np.ndarray:
    """The pixels of ``valid`` (ny, nx; bool) that belong to particles.

    A particle is an 8-connected group of at least :data:`MIN_PARTICLE_PX` pixels and at
    least :data:`MIN_PARTICLE_FRACTION` of the largest group; smaller groups (isolated noise
    pixels outside the particles) are dropped.
    """
    from scipy import ndimage

    valid = np.asarray(valid, dtype=bool)
    labels, n = ndimage.label(valid, structure=np.ones((3, 3), bool))
    if n == 0:
        return valid
    sizes = np.bincount(labels.ravel())[1:]
    keep_min = max(MIN_PARTICLE_PX, MIN_PARTICLE_FRACTION * sizes.max())
    keep = np.r_[False, sizes >= keep_min]
    return keep[labels]


def _pixel_size_um(start: dict[str, Any] | None, summary: dict[str, Any], pixel_size_um):
    for v in (pixel_size_um, summary.get("pixel_size_um"), (start or {}).get("pixel_size_um")):
        try:
            v = float(v)
        except (TypeError, ValueError):
            continue
        if np.isfinite(v) and v > 0:
            return v
    return None


def _map_axes(ax, image: np.ndarray, pixel_um: float | None, color: str) -> None:
    """Scale bar in µm (no pixel ticks) when the pixel size is known, else pixel axes."""
    if pixel_um:
        scale_bar(ax, image.shape[1], image.shape[0], pixel_um, color=color)
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        ax.set(xlabel="x (pixel)", ylabel="y (pixel)")


def txm_xanes_figure(entry, fig=None, arrays=None, *, start: dict[str, Any] | None = None,
                     pixel_size_um: float | None = None, source: str | None = None,
                     spectrum: tuple[Any, Any] | None = None):
    """Build the figure from a results entry of ``txm_xanes``.

    Parameters
    ----------
    entry : dict
        Results entry (``columns`` as lists, ``summary``), see
        :func:`strainstream.callbacks.sinks.read_results`.
    fig : matplotlib Figure, optional
        Drawn into (cleared) if given.
    arrays : dict of str to array_like, optional
        ``whiteline_eV`` (eV, NaN outside the mask), ``mask``, ``edge_jump`` (ny, nx); default
        ``entry["arrays"]`` when it holds arrays (a sink's digests are skipped: then only the
        histogram from the summary and the per-frame panel are drawn).
    start : dict, optional
        The run's start document: material/sample for the title, ``pixel_size_um``.
    pixel_size_um : float, optional
        Pixel (voxel) size in the sample plane, µm, for the scale bars; default the
        summary's or the start document's. Without it the maps have pixel axes.
    source : str, optional
        Named in the title when there is no run (the analysed file).
    spectrum : (energies_eV, absorbance), optional
        Mean spectrum of the particles, drawn when the entry has no per-frame table.

    Returns
    -------
    matplotlib.figure.Figure
        Axes 0–3: white-line map, histogram, edge-jump map, frames; then the colour bars.
    """
    import matplotlib
    from matplotlib.figure import Figure

    cols, summ = entry.get("columns") or {}, entry.get("summary") or {}
    maps = _maps(entry, arrays)
    pixel_um = _pixel_size_um(start, summ, pixel_size_um)
    fig = fig or Figure(figsize=(17, 4.8), layout="constrained")
    fig.clear()
    spread(fig)
    ax_wl, ax_h, ax_j, ax_s = fig.subplots(1, 4, gridspec_kw={"width_ratios": [1.15, 1, 1.15, 1]})

    wl = maps.get("whiteline_eV")
    values = None  # white-line energies of the particles' pixels
    n_outliers = 0
    if wl is not None and wl.ndim == 2 and np.isfinite(wl).any():
        wl = wl.astype(float)
        valid = np.isfinite(wl)
        particles = particle_mask(valid)
        n_outliers = int((valid & ~particles).sum())
        values = wl[particles]
        limits = robust_limits(values) or (None, None)
        cmap = matplotlib.colormaps[WHITELINE_CMAP].copy()
        cmap.set_bad("white")
        # the image keeps the analysis' map; the outliers are hidden (fully transparent)
        im = ax_wl.imshow(wl, cmap=cmap, vmin=limits[0], vmax=limits[1], interpolation="nearest",
                          alpha=particles.astype(float))
        fig.colorbar(im, ax=ax_wl, label="white-line energy (eV)", shrink=0.85)
        _map_axes(ax_wl, wl, pixel_um, "k")
        if n_outliers:
            ax_wl.text(0.99, 0.01, f"{n_outliers} isolated pixel{'s' * (n_outliers != 1)} outside "
                       "the particles masked", transform=ax_wl.transAxes, ha="right", va="bottom",
                       fontsize=7, color="0.3")
    elif not pixel_um:
        ax_wl.set(xlabel="x (pixel)", ylabel="y (pixel)")
    ax_wl.set_title("white-line energy")

    counts, edges = summ.get("histogram_counts"), summ.get("histogram_edges_eV")
    if values is not None and values.size:
        mean, std, n = float(values.mean()), float(values.std()), int(values.size)
        # every pixel counted; the view zooms on the central 99 % (bad fits aside) with ~50 bins
        lo, hi = np.percentile(values, [0.5, 99.5])
        if hi > lo:
            width = (hi - lo) / 50
            n_bins = int(min(5000, np.ceil((values.max() - values.min()) / width) + 1))
            ax_h.hist(values, bins=np.linspace(values.min(), values.min() + n_bins * width, n_bins + 1),
                      color="C0")
            ax_h.set_xlim(lo - width, hi + width)
        else:
            ax_h.hist(values, bins=50, color="C0")
        note = f" ({n_outliers} outside excluded)" if n_outliers else ""
        label = f"{n} pixels{note}"
    elif counts and edges:
        e, c = np.asarray(edges, float), np.asarray(counts, float)
        ax_h.bar(0.5 * (e[1:] + e[:-1]), c, width=np.diff(e), color="C0")
        cum = np.cumsum(c) / max(c.sum(), 1.0)  # zoom on the central 99 % (noise outliers aside)
        lo_i, hi_i = int(np.searchsorted(cum, 0.005)), int(np.searchsorted(cum, 0.995))
        ax_h.set_xlim(e[lo_i], e[min(hi_i + 1, e.size - 1)])
        mean, std = summ.get("whiteline_mean_eV"), summ.get("whiteline_std_eV")
        label = f"{summ.get('n_voxels', int(c.sum()))} voxels"
    else:
        mean = std = None
        label = ""
    if isinstance(mean, float) and isinstance(std, float) and np.isfinite(mean):
        ax_h.axvline(mean, color="k", lw=1.2, label=f"mean {mean:.2f} eV")
        # a band (a collection: the histogram's bars stay the only patches)
        ax_h.fill_betweenx([0, 1], mean - std, mean + std, transform=ax_h.get_xaxis_transform(),
                           color="0.5", alpha=0.25, zorder=0, lw=0, label=f"±σ  {std:.2f} eV")
        ax_h.set_ylim(top=ax_h.get_ylim()[1] * 1.3)  # room for the legend above the bars
        ax_h.legend(fontsize=8, loc="upper right", title=label, title_fontsize=8)
        ax_h.set_title(f"white-line histogram\nmean {mean:.2f} eV, σ {std:.2f} eV")
    else:
        ax_h.set_title("white-line histogram")
    ax_h.set(xlabel="white-line energy (eV)", ylabel="pixels")
    ax_h.grid(alpha=0.3)

    jump = maps.get("edge_jump")
    if jump is not None and jump.ndim == 2 and np.isfinite(jump).any():
        im = ax_j.imshow(jump, cmap="gray", interpolation="nearest")
        fig.colorbar(im, ax=ax_j, label="edge jump (absorbance)", shrink=0.85)
        _map_axes(ax_j, jump, pixel_um, "C1")
    ax_j.set_title("edge jump")

    energy, mean_counts = column(cols, "energy_eV"), column(cols, "image_mean")
    roles = np.asarray(cols.get("role") or [], dtype=object)
    if roles.size and roles.size == energy.size == mean_counts.size:
        for role, marker in (("sample", "o"), ("flat", "s"), ("dark", "v")):
            sel = roles == role
            if sel.any():
                ax_s.plot(energy[sel], mean_counts[sel], marker, ms=4, label=role)
        ax_s.legend(fontsize="small")
        ax_s.set(title="frames (image mean per energy)", xlabel="energy (eV)",
                 ylabel="image mean (counts)")
    elif spectrum is not None:
        # no per-frame table (a file analysed by `strainstream xanes whiteline`)
        e_s, mu = (np.asarray(v, dtype=float) for v in spectrum)
        ax_s.plot(e_s, mu, "o-", ms=3, color="k")
        if isinstance(mean, float) and np.isfinite(mean):
            ax_s.axvline(mean, color="C0", lw=1, ls="--", label=f"mean white line {mean:.2f} eV")
            ax_s.legend(fontsize="small")
        ax_s.set(title="mean spectrum of the particles", xlabel="energy (eV)",
                 ylabel="absorbance (μt)")
    else:
        ax_s.set(title="frames (image mean per energy)", xlabel="energy (eV)",
                 ylabel="image mean (counts)")
    ax_s.grid(alpha=0.3)
    title = run_title("txm_xanes", start, entry if start else None, source)
    if pixel_um:
        title += f" — {pixel_um * 1000:g} nm pixels"
    fig.suptitle(title, x=0.02, ha="left", fontsize=13)
    return fig
