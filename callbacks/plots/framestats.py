"""Frame statistics (mean and maximum counts) against the event number."""

from __future__ import annotations

from typing import Any

from ._common import column, run_title

__all__ = ["frame_stats_figure"]


def frame_stats_figure(entry: dict[str, Any], fig=None, *, start: dict[str, Any] | None = None):
    """Build the frame-statistics figure from a results entry of ``frame_stats``.

    Flagged frames are marked by red vertical lines; ``start`` (the run's start document)
    names the sample in the title.
    """
    from matplotlib.figure import Figure

    cols = entry.get("columns") or {}
    fig = fig or Figure(figsize=(9, 4), layout="constrained")
    fig.clear()
    ax1, ax2 = fig.subplots(1, 2)
    seq = column(cols, "seq_num")
    mean, mx = column(cols, "mean"), column(cols, "max")
    if mean.size == seq.size:
        ax1.plot(seq, mean, "o-", ms=3)
    if mx.size == seq.size:
        ax2.plot(seq, mx, "o-", ms=3, color="C1")
    ax1.set(xlabel="event", ylabel="mean (counts)", title="frame mean")
    ax2.set(xlabel="event", ylabel="max (counts)", title="frame maximum")
    flags = cols.get("flag") or []
    for s, f in zip(seq, flags, strict=False):
        if f:
            ax1.axvline(s, color="r", alpha=0.3)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle(run_title("frame_stats", start, entry if start else None), x=0.02, ha="left")
    return fig
