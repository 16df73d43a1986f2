import math

import numpy as np
import pytest

from strainstream.framestats import FrameError, check_frame, frame_statistics


def test_statistics_of_known_frame():
    frame = np.zeros((5, 7))
    frame[1, 2] = 30.0
    frame[3, 6] = 10.0
    s = frame_statistics(frame, saturation=25)
    assert s["total"] == 40.0
    assert s["max"] == 30.0
    assert s["mean"] == pytest.approx(40 / 35, rel=1e-15)
    assert s["centroid_row"] == pytest.approx((1 * 30 + 3 * 10) / 40, rel=1e-15)
    assert s["centroid_col"] == pytest.approx((2 * 30 + 6 * 10) / 40, rel=1e-15)
    assert s["n_saturated"] == 1
    assert s["n_nonfinite"] == 0


def test_nan_pixels_are_counted_and_ignored():
    frame = np.full((4, 4), 2.0)
    frame[0, 0] = np.nan
    frame[1, 1] = np.inf
    s = frame_statistics(frame)
    assert s["n_nonfinite"] == 2
    assert s["mean"] == 2.0 and s["total"] == 28.0
    assert math.isfinite(s["centroid_row"])


@pytest.mark.parametrize(
    "frame, reason",
    [
        (np.full((3, 3), np.nan), "all_nan"),
        (np.zeros((3, 3)), "blank"),
        (np.zeros(9), "wrong_shape"),
        (np.zeros((2, 3, 3)), "wrong_shape"),
    ],
)
def test_bad_frames_raise_named_errors(frame, reason):
    with pytest.raises(FrameError) as info:
        frame_statistics(frame)
    assert info.value.reason == reason


def test_declared_shape_mismatch():
    with pytest.raises(FrameError, match="differs from the declared"):
        check_frame(np.ones((4, 4)), expected_shape=(5, 4))


@pytest.mark.parametrize("shape", [(2048, 2048), (7, 300_001), (300_001, 3)])
def test_blockwise_statistics_equal_the_whole_frame_formulas(shape):
    """frame_statistics works in blocks of rows; its numbers are those of the whole-frame
    formulas (to float64 rounding) on a frame with NaN, inf, negative and saturated pixels,
    including blocks of one row longer than the block size and frames of few columns."""
    rng = np.random.default_rng(3)
    frame = rng.poisson(100, size=shape).astype(np.float32) - 5
    flat = frame.reshape(-1)
    flat[rng.choice(flat.size, 50, replace=False)] = np.nan
    flat[rng.choice(flat.size, 20, replace=False)] = np.inf
    flat[rng.choice(flat.size, 10, replace=False)] = -40.0
    s = frame_statistics(frame, saturation=125)
    a = frame.astype(np.float64)
    fin = np.isfinite(a)
    v = a[fin]
    w = np.where(fin, np.clip(a, 0, None), 0.0)
    assert s["n_nonfinite"] == int((~fin).sum()) > 0
    assert s["n_saturated"] == int((v >= 125).sum()) > 0
    assert s["max"] == v.max()
    assert s["total"] == pytest.approx(v.sum(), rel=1e-12)
    assert s["mean"] == pytest.approx(v.mean(), rel=1e-12)
    assert s["std"] == pytest.approx(v.std(), rel=1e-10)
    assert s["centroid_row"] == pytest.approx(w.sum(axis=1) @ np.arange(shape[0]) / w.sum(), rel=1e-12)
    assert s["centroid_col"] == pytest.approx(w.sum(axis=0) @ np.arange(shape[1]) / w.sum(), rel=1e-12)


def test_counts_that_overflow_float64_are_named():
    frame = np.full((4, 4), 1e308)
    with pytest.raises(FrameError) as info:
        frame_statistics(frame)
    assert info.value.reason == "overflow" and "1e+308" in str(info.value)
