"""Frame statistics vs event number."""

from __future__ import annotations

import numpy as np


def frame_stats_figure(entry, fig=None):
    from matplotlib.figure import Figure

    cols = entry["columns"]
    fig = fig or Figure(figsize=(8, 4), layout="constrained")
    fig.clear()
    ax1, ax2 = fig.subplots(1, 2)
    seq = np.asarray(cols["seq_num"])
    mean = np.asarray([np.nan if v is None else v for v in cols["mean"]], float)
    mx = np.asarray([np.nan if v is None else v for v in cols["max"]], float)
    ax1.plot(seq, mean, "o-", ms=3)
    ax1.set(xlabel="event", ylabel="mean counts", title="frame mean")
    ax2.plot(seq, mx, "o-", ms=3, color="C1")
    ax2.set(xlabel="event", ylabel="max counts", title="frame maximum")
    flagged = [s for s, f in zip(seq, cols["flag"], strict=True) if f]
    for s in flagged:
        ax1.axvline(s, color="r", alpha=0.3)
    return fig
