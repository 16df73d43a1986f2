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


def _frame_2d(frame) -> np.ndarray:
    """``frame`` as a 2-D array (a leading axis of one frame dropped), else FrameError."""
    arr = np.asarray(frame)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise FrameError("wrong_shape", f"expected a 2-D frame, got shape {arr.shape}")
    return arr


def check_frame(frame, expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Return ``frame`` as a 2-D float64 array or raise :class:`FrameError`.

    Parameters
    ----------
    frame : array_like, shape (rows, cols)
        Detector counts.
    expected_shape : tuple, optional
        The shape the detector declared; a mismatch is an error.
    """
    arr = _frame_2d(frame)
    if expected_shape is not None and tuple(arr.shape) != tuple(expected_shape)[-2:]:
        raise FrameError(
            "wrong_shape", f"frame shape {arr.shape} differs from the declared {tuple(expected_shape)}"
        )
    arr = arr.astype(np.float64, copy=False)
    finite = np.isfinite(arr)
    if not finite.any():
        raise FrameError("all_nan", "every pixel of the frame is NaN or infinite")
    return arr


#: pixels of a frame processed at a time: float64 temporaries of 1 MiB, reused while in the
#: cache, where whole-frame ones (32 MB each for 2048²) cost a page fault per 4 KiB when first
#: touched. Measured for a 2048² float32 frame: 13 ms, where the whole-frame version took
#: 48 ms warm and 230 ms with fresh temporaries (a worker's usual case).
CHUNK_PIXELS = 1 << 17


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

    Notes
    -----
    Computed in blocks of rows (:data:`CHUNK_PIXELS`) in float64, in two passes: sums, maximum,
    saturated pixels and the centroid's row and column weights, then the squared deviations
    from the mean (the standard deviation without the cancellation of E[x²] - E[x]²).
    """
    arr = _frame_2d(frame)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is named below
        return _block_statistics(arr, saturation)


def _block(arr: np.ndarray, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows r0:r1 of ``arr`` in float64 and, if any pixel is not finite, the finite mask."""
    chunk = np.asarray(arr[r0:r1], dtype=np.float64)
    finite = np.isfinite(chunk)
    return chunk, (None if finite.all() else finite)


def _block_statistics(arr: np.ndarray, saturation: float | None) -> dict[str, float]:
    n_rows, n_cols = arr.shape
    step = max(1, CHUNK_PIXELS // max(n_cols, 1))
    blocks = [(r0, min(r0 + step, n_rows)) for r0 in range(0, n_rows, step)]
    total, count, vmax, n_sat = 0.0, 0, -math.inf, 0
    row_w = np.zeros(n_rows)
    col_w = np.zeros(n_cols)
    for r0, r1 in blocks:
        chunk, finite = _block(arr, r0, r1)
        values = chunk if finite is None else chunk[finite]
        if values.size == 0:
            continue
        total += float(values.sum())
        count += values.size
        vmax = max(vmax, float(values.max()))
        if saturation is not None:
            n_sat += int(np.count_nonzero(values >= saturation))
        weights = np.clip(chunk, 0, None)
        if finite is not None:
            weights[~finite] = 0.0
        row_w[r0:r1] = weights.sum(axis=1)
        col_w += weights.sum(axis=0)
    if count == 0:
        raise FrameError("all_nan", "every pixel of the frame is NaN or infinite")
    mean = total / count
    squares = 0.0
    for r0, r1 in blocks:
        chunk, finite = _block(arr, r0, r1)
        dev = (chunk if finite is None else chunk[finite]) - mean
        # numpy's own (pairwise) sum, not BLAS's dot: the same bits with any number of BLAS
        # threads (the worker analyses with one, a test or a replay may use several)
        squares += float(np.square(dev, out=dev).sum())
    std = math.sqrt(squares / count) if math.isfinite(squares) else math.inf
    if not math.isfinite(total) or not math.isfinite(std):
        big = max(abs(vmax), abs(float(np.nanmin(np.where(np.isfinite(arr), arr, np.nan)))))
        raise FrameError("overflow", "the frame's counts overflow float64 (values up to "
                         f"{big:.3g}): not detector counts")
    if total <= 0 and vmax <= 0:
        raise FrameError("blank", "the frame holds no counts (blank frame: shutter closed or no beam?)")
    wsum = float(row_w.sum())
    return {
        "mean": mean,
        "std": std,
        "max": vmax,
        "total": total,
        "n_nonfinite": int(arr.size - count),
        "n_saturated": n_sat,
        "centroid_row": float(row_w @ np.arange(n_rows, dtype=np.float64) / wsum),
        "centroid_col": float(col_w @ np.arange(n_cols, dtype=np.float64) / wsum),
    }
