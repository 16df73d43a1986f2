"""What the figures share: column access, the title naming sample and conditions, scale bars."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["column", "robust_limits", "run_title", "scale_bar", "spread", "symmetric_limit"]

#: how each experiment is named in a figure title
EXPERIMENT_LABEL = {
    "operando_xrd": "operando XRD",
    "sxdm": "SXDM",
    "txm_xanes": "TXM-XANES",
    "frame_series": "frame series",
    "operando_cycling": "operando cycling",
    "operando_gitt": "GITT",
    "rate_series": "rate series (operando XRD)",
}


def column(cols: dict[str, list], key: str) -> np.ndarray:
    """A results column as float64 (NaN for None or a missing column of the same length)."""
    return np.asarray([np.nan if v is None else v for v in cols.get(key) or []], dtype=float)


def _material(start: dict[str, Any]) -> str | None:
    """``material · sample`` of a start document (either may be missing)."""
    material, sample = start.get("material"), start.get("sample")
    if isinstance(sample, dict):
        material = material or sample.get("material")
        sample = sample.get("name")
    names = [str(n) for n in (material, sample) if n]
    return " · ".join(dict.fromkeys(names)) or None


def run_title(analysis: str, start: dict[str, Any] | None = None, entry: dict[str, Any] | None = None,
              source: str | None = None) -> str:
    """The figure title: sample/material, experiment and conditions, run and progress.

    Parameters
    ----------
    analysis : str
        Analysis name (``operando_xrd``, ``sxdm``, ``txm_xanes``, ``frame_stats``).
    start : dict, optional
        The run's start document: ``material``, ``sample``, ``rate_mA_g`` (mA/g),
        ``pixel_size_um``, ``uid`` are used when present.
    entry : dict, optional
        The results entry (``n_rows``, ``status``).
    source : str, optional
        Where the data came from when there is no run (e.g. an input file name).
    """
    start = start or {}
    parts = []
    material = _material(start)
    if material:
        parts.append(material)
    label = EXPERIMENT_LABEL.get(start.get("experiment") or analysis, analysis.replace("_", " "))
    rate = start.get("rate_mA_g")
    if analysis == "operando_xrd" and isinstance(rate, int | float):
        label += f", charge at {rate:g} mA g$^{{-1}}$"
    parts.append(label)
    if start.get("uid"):
        run = f"run {str(start['uid'])[:8]}"
        if entry:
            run += f" ({entry.get('n_rows', 0)} events, {entry.get('status', 'unknown')})"
        parts.append(run)
    if source:
        parts.append(source)
    return " — ".join(parts)


def spread(fig, w_pad: float = 0.08, wspace: float = 0.04) -> None:
    """More room between panels of a constrained-layout figure (colour-bar labels beside the
    next panel's axis label)."""
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    engine = fig.get_layout_engine()
    if isinstance(engine, ConstrainedLayoutEngine):
        engine.set(w_pad=w_pad, wspace=wspace)


def symmetric_limit(v: np.ndarray, percentile: float = 99.0) -> float:
    """A colour limit L for a diverging map centred on 0: the ``percentile`` of |v| (finite)."""
    finite = np.abs(v[np.isfinite(v)])
    lim = float(np.percentile(finite, percentile)) if finite.size else 0.0
    return lim if lim > 0 else 1.0


def robust_limits(v: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float] | None:
    """Percentile colour limits of the finite values of ``v``; None if it has none."""
    finite = v[np.isfinite(v)]
    if not finite.size:
        return None
    lo, hi = np.percentile(finite, [low, high])
    return (float(lo), float(hi)) if hi > lo else (float(lo) - 0.5, float(hi) + 0.5)


def scale_bar(ax, nx: int, ny: int, pixel_um: float, color: str = "k") -> float:
    """Draw a bar of a round length in the lower left corner of an ``imshow`` map.

    Parameters
    ----------
    ax : matplotlib Axes
        Axes holding a map of ``ny`` × ``nx`` pixels (``origin="upper"``).
    pixel_um : float
        Pixel (raster step, voxel) size, µm.

    Returns
    -------
    float
        The bar length, µm.
    """
    target = nx * pixel_um / 4
    nice = (0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500)
    length = max((v for v in nice if v <= target), default=target)
    px = length / pixel_um
    x0, y0 = -0.5 + 0.05 * nx, ny - 0.5 - 0.07 * ny
    ax.plot([x0, x0 + px], [y0, y0], "-", color=color, lw=3, solid_capstyle="butt",
            label="_scale_bar")
    label = f"{length * 1000:.0f} nm" if length < 1 else f"{length:g} µm"
    ax.text(x0 + px / 2, y0 - 0.03 * ny, label, color=color, ha="center", va="bottom",
            fontsize=8, fontweight="bold", gid="scale_bar")
    return length
