"""Reflection lists and volumes against independent references."""

import numpy as np
import pytest
from _xrd_synth import LAMBDA_A, _pmg_peaks

from strainstream.xrd import hex_volume_A3, r3m_reflections
from strainstream.xrd._lattice import fcc_q_A_inv


def test_r3m_reflections_match_pymatgen_peak_positions():
    a, c = 2.8712, 14.2013
    refl = r3m_reflections(a, c, 8.0)
    q_pmg, i_pmg = _pmg_peaks("layered", a, c, LAMBDA_A, 8.0)
    q_ours = refl.q_A_inv(a, c)
    # every pymatgen peak (nonzero structure factor) is one of ours, to 1e-9 relative
    strong = i_pmg > 1e-6 * i_pmg.max()
    nearest = np.min(np.abs(q_pmg[strong][:, None] - q_ours[None, :]), axis=1)
    assert np.all(nearest < 1e-8 * q_pmg[strong])
    # (003) is first, at Q = 6π/c
    assert refl.labels()[0] == "003"
    assert q_ours[0] == pytest.approx(6 * np.pi / c, rel=1e-12)


def test_dq_dac_matches_finite_differences():
    refl = r3m_reflections(2.87, 14.2, 8.0)
    da, dc = refl.dq_dac(2.87, 14.2)
    h = 1e-6
    fd_a = (refl.q_A_inv(2.87 + h, 14.2) - refl.q_A_inv(2.87 - h, 14.2)) / (2 * h)
    fd_c = (refl.q_A_inv(2.87, 14.2 + h) - refl.q_A_inv(2.87, 14.2 - h)) / (2 * h)
    np.testing.assert_allclose(da, fd_a, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dc, fd_c, rtol=1e-6, atol=1e-9)


def test_fcc_al_reflections():
    n2, q = fcc_q_A_inv(4.0495, 6.0)
    assert list(n2[:5]) == [3, 4, 8, 11, 12]
    assert q[0] == pytest.approx(2 * np.pi * np.sqrt(3) / 4.0495)


def test_volume_and_propagated_uncertainty():
    v, verr = hex_volume_A3(2.87, 14.2, 1e-4, 1e-3)
    assert v == pytest.approx(np.sqrt(3) / 2 * 2.87**2 * 14.2)
    # Monte Carlo propagation
    rng = np.random.default_rng(1)
    a = rng.normal(2.87, 1e-4, 200000)
    c = rng.normal(14.2, 1e-3, 200000)
    assert verr == pytest.approx(np.std(np.sqrt(3) / 2 * a**2 * c), rel=0.02)


def test_bad_lattice_raises():
    with pytest.raises(ValueError, match="positive"):
        r3m_reflections(-1.0, 14.2, 8.0)
