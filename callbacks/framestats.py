"""Frame statistics per event: the foundation's analysis of any area-detector run."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from strainstream.framestats import FrameError, frame_statistics

from .base import AnalysisCallback, RunDocumentError

__all__ = ["FrameStatsCallback"]


class FrameStatsCallback(AnalysisCallback):
    """Mean, spread, maximum, total counts, bad pixels and centroid of every frame."""

    name = "frame_stats"
    #: each frame's statistics depend on that frame alone: under load the live follower may
    #: analyse the newest frame before older ones (skip-ahead) with the same results
    order_free = True
    version = "1"
    columns = {
        "mean": "float64",
        "std": "float64",
        "max": "float64",
        "total": "float64",
        "n_nonfinite": "int64",
        "n_saturated": "int64",
        "centroid_row": "float64",
        "centroid_col": "float64",
    }

    def on_start(self, doc) -> None:
        sat = self.parameters.get("saturation")
        if sat is not None and (isinstance(sat, bool) or not isinstance(sat, int | float)
                                or not math.isfinite(sat)):
            raise RunDocumentError(f"run {doc['uid']}: analysis_parameters.frame_stats.saturation must "
                                   f"be a number of counts, got {sat!r}")
        self.saturation = None if sat is None else float(sat)

    def analyse(self, event: dict, frames: dict[str, np.ndarray]) -> dict[str, Any]:
        if not frames:
            raise FrameError("no_frame", "the run has no detector frames (no STREAM: data key in "
                             "its descriptor)")
        if len(frames) > 1:
            raise FrameError("wrong_shape", f"a frame series has one detector, this run has "
                             f"{sorted(frames)}")
        (frame,) = frames.values()  # one detector in a frame series
        return frame_statistics(frame, saturation=self.saturation)

    def summary(self) -> dict[str, Any]:
        good = [r for r in self.rows if not r["flag"]]
        means = [r["mean"] for r in good]
        return {
            "events_analysed": len(self.rows),
            "events_flagged": len(self.rows) - len(good),
            "mean_counts": float(np.mean(means)) if means else math.nan,
            "max_counts": max((r["max"] for r in good), default=math.nan),
        }
