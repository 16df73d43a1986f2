"""Frame statistics: the simplest derived quantity of an area-detector frame.

Used by the foundation's ``frame_series`` analysis and as a per-frame quality check
(saturated / non-finite pixels) by the experiment analyses. numpy only.
"""

from __future__ import annotations

import math

import numpy as np

from strainstream.errors import StrainstreamError

__all__ = ["FrameError", "frame_statistics", "check_frame"]


class FrameError(StrainstreamError, ValueError):
    """A frame that cannot be analysed; ``reason`` is a short machine-readable tag."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_frame(frame, expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Return ``frame`` as a 2-D float64 array or raise :class:`FrameError`.

    Parameters
    ----------
    frame : array_like, shape (rows, cols)
        Detector counts.
    expected_shape : tuple, optional
        The shape the detector declared; a mismatch is an error.
    """
    arr = np.asarray(frame)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise FrameError("wrong_shape", f"expected a 2-D frame, got shape {arr.shape}")
    if expected_shape is not None and tuple(arr.shape) != tuple(expected_shape)[-2:]:
        raise FrameError(
            "wrong_shape", f"frame shape {arr.shape} differs from the declared {tuple(expected_shape)}"
        )
    arr = arr.astype(np.float64, copy=False)
    finite = np.isfinite(arr)
    if not finite.any():
        raise FrameError("all_nan", "every pixel of the frame is NaN or infinite")
    return arr


def frame_statistics(frame, saturation: float | None = None) -> dict[str, float]:
    """Summary statistics of one frame.

    Parameters
    ----------
    frame : array_like, shape (rows, cols)
        Detector counts.
    saturation : float, optional
        Counts at or above this level are counted as saturated.

    Returns
    -------
    dict
        ``mean``, ``std``, ``max``, ``total`` (counts, over finite pixels),
        ``n_nonfinite``, ``n_saturated`` (pixels) and the intensity-weighted centroid
        ``centroid_row``, ``centroid_col`` (pixels).

    Raises
    ------
    FrameError
        For a frame that is not 2-D, all NaN, or blank (no counts at all).
    """
    arr = check_frame(frame)
    finite = np.isfinite(arr)
    values = arr[finite]
    total = float(values.sum())
    if not math.isfinite(total) or not math.isfinite(float(values.std())):
        raise FrameError("overflow", "the frame's counts overflow float64 (values up to "
                         f"{float(np.abs(values).max()):.3g}): not detector counts")
    if total <= 0 and float(values.max()) <= 0:
        raise FrameError("blank", "the frame holds no counts (blank frame: shutter closed or no beam?)")
    weights = np.where(finite, np.clip(arr, 0, None), 0.0)
    wsum = float(weights.sum())
    rows = np.arange(arr.shape[0], dtype=np.float64)
    cols = np.arange(arr.shape[1], dtype=np.float64)
    centroid_row = float(weights.sum(axis=1) @ rows / wsum)
    centroid_col = float(weights.sum(axis=0) @ cols / wsum)
    n_sat = int((values >= saturation).sum()) if saturation is not None else 0
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "max": float(values.max()),
        "total": total,
        "n_nonfinite": int(arr.size - values.size),
        "n_saturated": n_sat,
        "centroid_row": centroid_row,
        "centroid_col": centroid_col,
    }
