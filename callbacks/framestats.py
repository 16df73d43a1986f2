"""Frame statistics per event: the foundation's analysis of any area-detector run."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from strainstream.framestats import frame_statistics

from .base import AnalysisCallback

__all__ = ["FrameStatsCallback"]


class FrameStatsCallback(AnalysisCallback):
    """Mean, spread, maximum, total counts, bad pixels and centroid of every frame."""

    name = "frame_stats"
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

    def analyse(self, event: dict, frames: dict[str, np.ndarray]) -> dict[str, Any]:
        if not frames:
            raise ValueError("the run has no detector frames (no STREAM: data key)")
        (frame,) = frames.values()  # one detector in a frame series
        return frame_statistics(frame, saturation=self.parameters.get("saturation"))

    def summary(self) -> dict[str, Any]:
        good = [r for r in self.rows if not r["flag"]]
        means = [r["mean"] for r in good]
        return {
            "events_analysed": len(self.rows),
            "events_flagged": len(self.rows) - len(good),
            "mean_counts": float(np.mean(means)) if means else math.nan,
            "max_counts": max((r["max"] for r in good), default=math.nan),
        }
