"""Registration and magnification correction (strainstream.xanes)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from strainstream import xanes
from strainstream.sim import txm_images as T


def _particles(shape=(96, 112)) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    img = ((yy - 50) ** 2 + (xx - 55) ** 2 < 28**2) * 0.6
    img += ((yy - 30) ** 2 + (xx - 40) ** 2 < 9**2) * 0.3
    img += ((yy - 70) ** 2 + (xx - 85) ** 2 < 12**2) * 0.4
    return ndimage.gaussian_filter(img, 1.0)


@pytest.mark.parametrize("true", [(1.3, -2.7), (0.25, 0.6), (-3.4, 4.15), (0.0, 0.0)])
@pytest.mark.parametrize("noise", [0.0, 0.01])
def test_phase_correlation_recovers_known_subpixel_shift(true, noise):
    rng = np.random.default_rng(0)
    ref = _particles()
    mov = ndimage.shift(ref, true, order=3, mode="nearest")
    r = ref + noise * rng.standard_normal(ref.shape)
    m = mov + noise * rng.standard_normal(ref.shape)
    s = xanes.phase_correlation_shift(r, m)
    # convention: shifting `moving` by the result aligns it with `reference`
    np.testing.assert_allclose(s, -np.array(true), atol=0.05)
    back = xanes.shift_image(mov, s)
    assert np.abs(back - ref)[10:-10, 10:-10].max() < 0.05


@pytest.mark.parametrize(("noise", "size", "tol_px"), [(False, 96, 0.07), (True, 192, 0.15)])
def test_register_stack_recovers_simulated_drift_across_the_edge(noise, size, tol_px):
    scan = T.simulate_txm_scan(sample=T.particle_sample((size, size)),
                               magnification_changes=False, drift_px_rms=0.7, seed=5,
                               noise=noise)
    a = xanes.absorbance_from_counts(scan.stack, scan.flats, scan.darks)
    reg = xanes.register_stack(a)
    ref = reg.reference_index
    expected = -(scan.drift_px - scan.drift_px[ref])
    assert np.abs(scan.drift_px).max() > 1.0  # a real drift to recover
    # images whose contrast changes across the edge (the particles differ in SOC, so their
    # relative absorbance changes with energy); measured max errors 0.06 px noiseless (96 px),
    # 0.12 px with counting noise (192 px; pre-edge images have little contrast)
    np.testing.assert_allclose(reg.shifts_px, expected, atol=tol_px)
    np.testing.assert_array_equal(reg.shifts_px[ref], [0.0, 0.0])


def test_register_stack_propagates_nan_instead_of_crashing():
    img = _particles()
    stack = np.stack([img, ndimage.shift(img, (0.5, -1.0), order=3, mode="nearest")])
    stack[1, 5, 5] = np.nan
    reg = xanes.register_stack(stack, reference_index=0)
    np.testing.assert_allclose(reg.shifts_px[1], [-0.5, 1.0], atol=0.05)
    assert np.isnan(reg.aligned[1]).sum() >= 1
    assert np.isfinite(reg.aligned[1, 30:, 30:]).all()
    assert np.isnan(reg.aligned[1, 4:7, 4:7]).any()


def test_phase_correlation_of_a_constant_image_is_zero():
    img = _particles()
    np.testing.assert_array_equal(xanes.phase_correlation_shift(img, np.full_like(img, 0.3)), [0.0, 0.0])
    np.testing.assert_array_equal(xanes.phase_correlation_shift(np.full_like(img, np.nan), img), [0.0, 0.0])


def test_zone_plate_optics_follows_the_lens_equation():
    e = np.array([8340.0, 8350.0, 8360.0])
    o = xanes.zone_plate_optics(e, zp_diameter_um=244.0, outer_zone_width_nm=30.0,
                                sample_to_detector_m=1.0)
    lam_m = 12398.419843320026 / e * 1e-10
    np.testing.assert_allclose(o.focal_length_m, 244e-6 * 30e-9 / lam_m, rtol=1e-12)
    assert o.focal_length_m[1] == pytest.approx(0.049298, rel=1e-4)
    np.testing.assert_allclose(1 / o.sample_to_zp_m + 1 / o.zp_to_detector_m,
                               1 / o.focal_length_m, rtol=1e-12)
    np.testing.assert_allclose(o.sample_to_zp_m + o.zp_to_detector_m, 1.0, rtol=1e-12)
    # magnification falls with energy by about dE/E (times L/(L - 2f) ~ 1.1)
    rel = o.magnification[-1] / o.magnification[0] - 1
    assert rel == pytest.approx(-20 / 8350 * 1.11, rel=0.05)
    with pytest.raises(xanes.XanesInputError, match="shorter than 4 f"):
        xanes.zone_plate_optics(8350.0, sample_to_detector_m=0.1)


def test_correct_magnification_undoes_the_zone_plate_scaling():
    ref = _particles((101, 101))
    mags = np.array([1.02, 1.0, 0.97])  # relative magnifications
    c = np.array([50.0, 50.0])
    stack = []
    for m in mags:  # forward: detector image at magnification m of the reference frame
        s = 1.0 / m
        stack.append(ndimage.affine_transform(ref, [s, s], offset=c - s * c, order=3,
                                              mode="nearest"))
    out = xanes.correct_magnification(np.array(stack), mags, reference_magnification=1.0)
    for i in range(3):
        assert np.abs(out[i] - ref)[8:-8, 8:-8].max() < 0.03
    # without correction the outer edges are displaced by ~1.5 px: large differences
    assert np.abs(stack[2] - ref)[8:-8, 8:-8].max() > 0.1
    with pytest.raises(xanes.XanesInputError, match="magnification"):
        xanes.correct_magnification(np.array(stack), mags[:2])
