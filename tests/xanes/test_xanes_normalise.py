"""Flat/dark normalisation and edge normalisation (strainstream.xanes)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf

from strainstream import xanes
from strainstream.sim import txm_images as T


def test_normalisation_round_trip_recovers_absorbance_exactly():
    # noiseless counts, no drift/magnification/defocus: -ln((I-D)/(F-D)) is the truth,
    # although the flat-field structure changes with energy
    scan = T.simulate_txm_scan(noise=False, drift_px_rms=0.0, magnification_changes=False,
                               sample=T.particle_sample((48, 40)))
    a = xanes.absorbance_from_counts(scan.stack, scan.flats, scan.darks)
    np.testing.assert_allclose(a, scan.absorbance_true, atol=1e-10)
    # the flats really differ between energies (so the same-energy flat matters)
    rel = scan.flats[0] / scan.flats[-1]
    assert rel.std() / rel.mean() > 0.02
    wrong = xanes.absorbance_from_counts(scan.stack, scan.flats[::-1], scan.darks)
    assert np.abs(wrong - scan.absorbance_true).max() > 0.05


def test_noisy_normalisation_is_unbiased_in_vacuum():
    scan = T.simulate_txm_scan(drift_px_rms=0.0, magnification_changes=False,
                               sample=T.particle_sample((64, 64)), seed=3)
    a = xanes.absorbance_from_counts(scan.stack, scan.flats, scan.darks)
    vac = ~scan.sample.material
    # Poisson noise of sample and flat: sigma ~ sqrt(2 / 2e4) = 0.010 per pixel
    assert abs(a[:, vac].mean()) < 1e-3
    assert a[:, vac].std() == pytest.approx(np.sqrt(2 / 2e4), rel=0.25)


def test_darks_per_energy_and_shape_errors():
    i = np.full((3, 4, 5), 600.0)
    f = np.full((3, 4, 5), 1100.0)
    d = np.full((4, 5), 100.0)
    np.testing.assert_allclose(xanes.absorbance_from_counts(i, f, d), np.log(2.0))
    np.testing.assert_allclose(xanes.absorbance_from_counts(i, f, np.stack([d] * 3)),
                               np.log(2.0))
    with pytest.raises(xanes.XanesInputError, match="flat field is missing"):
        xanes.absorbance_from_counts(i, f[:2], d)
    with pytest.raises(xanes.XanesInputError, match="darks"):
        xanes.absorbance_from_counts(i, f, d[:3])


def test_non_positive_ratios_are_flagged_or_clipped():
    i = np.array([[[600.0, 90.0, 100.0]]] * 2)  # below and at the dark level
    f = np.full((2, 1, 3), 1100.0)
    d = np.full((1, 3), 100.0)
    a = xanes.absorbance_from_counts(i, f, d)
    assert a[0, 0, 0] == pytest.approx(np.log(2.0))
    assert np.isnan(a[:, 0, 1:]).all()
    c = xanes.absorbance_from_counts(i, f, d, clip_ratio=1e-4)
    assert np.isfinite(c).all()
    assert c[0, 0, 1] == pytest.approx(-np.log(1e-4))


def test_edge_normalise_recovers_jump_slope_and_levels():
    e = T.DEFAULT_ENERGIES_EV
    rng = np.random.default_rng(0)
    jump = rng.uniform(0.2, 1.0, (3, 4))
    base = rng.uniform(0.0, 0.3, (3, 4))
    x = e[:, None, None] - 8345.5
    a = base + jump * 0.5 * (1 + erf(x / 1.0))
    res = xanes.edge_normalise(e, a, edge_eV=8345.5)
    np.testing.assert_allclose(res.edge_jump, jump, rtol=1e-5)
    np.testing.assert_allclose(res.pre_edge_at_edge, base, atol=1e-5)
    np.testing.assert_allclose(res.post_edge_level, base + jump, atol=1e-5)
    np.testing.assert_allclose(res.normalised[:3], 0.0, atol=1e-5)
    np.testing.assert_allclose(res.normalised[-5:], 1.0, atol=1e-5)
    # default edge reference from the steepest rise of the mean spectrum
    assert xanes.edge_normalise(e, a).edge_eV == pytest.approx(8345.5)
    # a sloped background: the pre-edge line is recovered; the post-edge *level* is the mean
    # over 8356-8360 eV, so the jump includes the background rise up to x = 12.5 eV
    slope = rng.uniform(-0.01, 0.01, (3, 4))
    res = xanes.edge_normalise(e, a + slope * x, edge_eV=8345.5)
    np.testing.assert_allclose(res.pre_edge_slope_per_eV, slope, atol=1e-6)
    np.testing.assert_allclose(res.pre_edge_at_edge, base, atol=1e-5)
    np.testing.assert_allclose(res.edge_jump, jump + 12.5 * slope, rtol=1e-5)


def test_edge_normalise_rejects_a_range_without_edge():
    e = np.arange(8300.0, 8321.0)
    a = 0.2 + 0.001 * (e - 8300)[:, None] ** 2 * np.ones((1, 5))  # rises at the end only
    with pytest.raises(xanes.EnergyRangeError, match="misses the absorption edge"):
        xanes.edge_normalise(e, a)
