"""Integrator: 2-D frame → I(Q) → refine recovers the lattice; masking and bad frames."""

import numpy as np
import pytest
from _xrd_synth import LAMBDA_A, frame_geometry, synth_frame

from strainstream.xrd import FrameError, Integrator, refine_pattern

TRUTH = [dict(a_A=2.8650, c_A=14.2300, microstrain=1.0e-3, size_nm=200.0, fraction=1.0)]
Q_RANGE = (0.8, 7.4)


@pytest.fixture(scope="module")
def geometry():
    # PerkinElmer-type flat panel: 2048² pixels of 200 µm at 1 m (Q up to ≈ 7.6 Å⁻¹ at edges)
    return frame_geometry(shape=(2048, 2048), pixel_um=200.0, distance_m=1.0)


@pytest.fixture(scope="module")
def frame(geometry):
    return synth_frame(TRUTH, geometry, seed=1)


@pytest.fixture(scope="module")
def integrator(geometry):
    return Integrator(geometry, npt=2000)


def test_frame_to_lattice(frame, integrator):
    q, i, s = integrator(frame, q_range=Q_RANGE)
    assert q.shape == i.shape == s.shape == (2000,)
    assert q[0] >= Q_RANGE[0] and q[-1] <= Q_RANGE[1]
    assert np.all(np.diff(q) > 0)
    # the 1-D profile behind the frame has an instrumental FWHM of 0.004 Å⁻¹ (_xrd_synth)
    res = refine_pattern(q, i, LAMBDA_A, sigma=s, instrument_fwhm_A_inv=0.004)
    p = res.phases[0]
    assert abs(p.a_A - TRUTH[0]["a_A"]) < 2e-4
    assert abs(p.c_A - TRUTH[0]["c_A"]) < 2e-3
    # no pixel splitting: the integration adds no broadening worth mentioning
    assert p.microstrain == pytest.approx(TRUTH[0]["microstrain"], rel=0.15)
    assert integrator.last_report.n_saturated == 0
    assert res.n_phases == 1


def test_dead_nan_and_saturated_pixels_are_masked_and_counted(frame, integrator):
    q0, i0, _ = integrator(frame, q_range=Q_RANGE)
    bad = frame.astype(np.float64)
    rng = np.random.default_rng(3)
    idx = rng.choice(frame.size, 3000, replace=False)
    dead, nan, sat = idx[:1000], idx[1000:2000], idx[2000:]
    bad.flat[dead] = 0.0
    bad.flat[nan] = np.nan
    bad.flat[sat] = 65535.0
    integ = Integrator(integrator.geometry, npt=2000, saturation_level=65535)
    q1, i1, _ = integ(bad, q_range=Q_RANGE)
    rep = integ.last_report
    assert (rep.n_dead, rep.n_nan, rep.n_saturated) == (1000, 1000, 1000)
    assert rep.fraction_masked == pytest.approx(3000 / frame.size)
    np.testing.assert_allclose(q1, q0)
    # the masked pixels do not pull the averages (zeros or 65535 would bias them by ≫ 1 %)
    ok = np.isfinite(i0) & np.isfinite(i1)
    assert np.median(np.abs(i1[ok] / i0[ok] - 1)) < 0.01
    # a per-call mask is applied and reported
    m = np.zeros(frame.shape, bool)
    m[:100] = True
    integrator(frame, mask=m, q_range=Q_RANGE)
    assert integrator.last_report.n_user == 100 * frame.shape[1]


def test_dark_subtracted_frame_keeps_nonpositive_pixels(frame, integrator):
    """With dead_level=None, pixels ≤ 0 of a dark-subtracted frame are kept (no bias)."""
    dark = 600.0
    sub = frame.astype(np.float64) - dark  # background ≈ 600 counts: many pixels ≤ 0
    q0, i0, _ = integrator(frame, q_range=Q_RANGE)
    keep = Integrator(integrator.geometry, npt=2000, dead_level=None)
    q1, i1, _ = keep(sub, q_range=Q_RANGE)
    assert keep.last_report.n_dead == 0
    dark_frame = dark + np.random.default_rng(2).normal(0.0, 1e-3, frame.shape)
    _, i_dark, _ = keep(dark_frame, q_range=Q_RANGE)
    ok = np.isfinite(i0) & np.isfinite(i1)
    # integration is linear: I(frame − dark) = I(frame) − I(dark), to float32 rounding
    np.testing.assert_allclose(i1[ok], (i0 - i_dark)[ok], atol=0.05)
    # the default (dead_level=0) masks them and biases the averages upwards
    # (the pixels ≤ 0 are where the background is lowest: beyond Q_RANGE, in the corners)
    masked = Integrator(integrator.geometry, npt=2000)
    _, i2, _ = masked(sub)
    _, i3, _ = keep(sub)
    assert masked.last_report.n_dead > 1000
    ok = np.isfinite(i2) & np.isfinite(i3)
    assert np.all(i2[ok] >= i3[ok] - 1e-3) and np.max(i2[ok] - i3[ok]) > 1.0


def test_azimuthal_sector(frame, integrator):
    q, i, s = integrator(frame, q_range=Q_RANGE, azimuth_range=(-45.0, 45.0))
    res = refine_pattern(q, i, LAMBDA_A, sigma=s, instrument_fwhm_A_inv=0.004)
    assert abs(res.phases[0].c_A - TRUTH[0]["c_A"]) < 2e-3


@pytest.mark.parametrize("make,reason", [
    (lambda f: f[:-1], "shape"),
    (lambda f: np.full(f.shape, np.nan), "all_nan"),
    (lambda f: np.zeros(f.shape), "blank"),
    (lambda f: np.full(f.shape, 7.0), "blank"),
    (lambda f: np.full(f.shape, 65535, np.uint16), "saturated"),
    (lambda f: np.where(np.arange(f.size).reshape(f.shape) < 0.7 * f.size, 0, f), "masked"),
    (lambda f: f.astype(complex), "dtype"),
])
def test_bad_frames_raise_frame_error(frame, integrator, make, reason):
    with pytest.raises(FrameError) as err:
        integrator(make(frame))
    assert err.value.reason == reason
    assert isinstance(err.value, ValueError)
    assert len(str(err.value)) > 20


def test_bad_geometry_and_mask():
    with pytest.raises(ValueError, match="missing"):
        Integrator({"distance_m": 1.0})
    g = frame_geometry(shape=(64, 64))
    with pytest.raises(FrameError, match="mask shape"):
        Integrator(g, mask=np.zeros((10, 10), bool))
    with pytest.raises(ValueError, match="positive"):
        Integrator(dict(g, distance_m=-1.0))
