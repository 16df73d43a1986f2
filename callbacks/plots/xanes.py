"""The TXM-XANES figure: white-line energy map (colour bar in eV), its histogram and the
edge-jump map — the panels of the TXM-XANES state-of-charge papers — beside the image mean
per energy of every frame (dark / sample / flat) as the scan goes."""

from __future__ import annotations

import numpy as np

__all__ = ["txm_xanes_figure"]


def _arr(cols, key):
    return np.asarray([np.nan if v is None else v for v in cols.get(key, [])], dtype=float)


def _maps(entry, arrays):
    """The analysis arrays as numpy arrays (``entry["arrays"]`` may hold only digests)."""
    src = arrays if arrays is not None else entry.get("arrays") or {}
    return {k: np.asarray(v) for k, v in src.items() if not isinstance(v, dict)}


def txm_xanes_figure(entry, fig=None, arrays=None):
    """Build the figure from a results entry of ``txm_xanes``.

    Parameters
    ----------
    entry : dict
        Results entry (``columns`` as lists, ``summary``), see
        :func:`strainstream.callbacks.sinks.read_results`.
    fig : matplotlib Figure, optional
        Drawn into (cleared) if given.
    arrays : dict of str to array_like, optional
        ``whiteline_eV``, ``mask``, ``edge_jump`` (ny, nx); default ``entry["arrays"]`` when it
        holds arrays (a sink's digests are skipped: then only the histogram from the summary
        and the per-frame panel are drawn).
    """
    from matplotlib.figure import Figure

    cols, summ = entry["columns"], entry.get("summary") or {}
    maps = _maps(entry, arrays)
    fig = fig or Figure(figsize=(15, 4.2), layout="constrained")
    fig.clear()
    ax_wl, ax_h, ax_j, ax_s = fig.subplots(1, 4, gridspec_kw={"width_ratios": [1.1, 1, 1.1, 1]})

    wl = maps.get("whiteline_eV")
    if wl is not None and wl.ndim == 2 and np.isfinite(wl).any():
        lo, hi = np.nanpercentile(wl, [1, 99])
        im = ax_wl.imshow(wl, cmap="jet", vmin=lo, vmax=hi, interpolation="nearest")
        fig.colorbar(im, ax=ax_wl, label="white-line energy (eV)", shrink=0.85)
    ax_wl.set(title="white-line energy", xlabel="x (pixel)", ylabel="y (pixel)")

    counts, edges = summ.get("histogram_counts"), summ.get("histogram_edges_eV")
    if counts and edges:
        e, c = np.asarray(edges, float), np.asarray(counts, float)
        ax_h.bar(0.5 * (e[1:] + e[:-1]), c, width=np.diff(e), color="C0")
        cum = np.cumsum(c) / max(c.sum(), 1.0)  # zoom on the central 99 % (noise outliers aside)
        lo, hi = int(np.searchsorted(cum, 0.005)), int(np.searchsorted(cum, 0.995))
        ax_h.set_xlim(e[lo], e[min(hi + 1, e.size - 1)])
    elif wl is not None and np.isfinite(wl).any():
        ax_h.hist(wl[np.isfinite(wl)], bins=50, color="C0")
    mean, std = summ.get("whiteline_mean_eV"), summ.get("whiteline_std_eV")
    title = "white-line histogram"
    if mean is not None and std is not None:
        title += f"\nmean {mean:.2f} eV, σ {std:.2f} eV ({summ.get('n_voxels', 0)} voxels)"
    ax_h.set(title=title, xlabel="white-line energy (eV)", ylabel="voxels")

    jump = maps.get("edge_jump")
    if jump is not None and jump.ndim == 2 and np.isfinite(jump).any():
        im = ax_j.imshow(jump, cmap="gray", interpolation="nearest")
        fig.colorbar(im, ax=ax_j, label="edge jump (absorbance)", shrink=0.85)
    ax_j.set(title="edge jump", xlabel="x (pixel)")

    energy, mean_counts = _arr(cols, "energy_eV"), _arr(cols, "image_mean")
    roles = np.asarray(cols.get("role", []), dtype=object)
    for role, marker in (("sample", "o"), ("flat", "s"), ("dark", "v")):
        sel = roles == role
        if sel.any():
            ax_s.plot(energy[sel], mean_counts[sel], marker, ms=4, label=role)
    if roles.size:
        ax_s.legend(fontsize="small")
    ax_s.set(title="frames", xlabel="energy (eV)", ylabel="image mean (counts)")
    return fig
