"""Known-answer tests of the SXDM geometry (issue 6 conventions)."""

import numpy as np
import pytest

from strainstream.sxdm import (
    GEOMETRY_KEYS,
    SXDMGeometry,
    SXDMMetadataError,
    pixel_q_vectors,
    q_to_d_and_tilts,
    rocking_matrix,
)

D003_A = 14.2 / 3.0


def _geometry(**kw):
    g = dict(energy_keV=10.0, distance_m=0.5, pixel_size_um=55.0, delta_deg=15.0, gamma_deg=0.0,
             cen_row=31.5, cen_col=20.25, step_nm=50.0, hkl=(0, 0, 3))
    g.update(kw)
    return SXDMGeometry(**g)


def test_rocking_matrix_rotates_about_minus_z():
    t = 30.0
    r = rocking_matrix(t)
    c, s = np.cos(np.deg2rad(t)), np.sin(np.deg2rad(t))
    np.testing.assert_allclose(r @ [1, 0, 0], [c, -s, 0], atol=1e-15)
    np.testing.assert_allclose(r @ [0, 0, 1], [0, 0, 1], atol=1e-15)
    np.testing.assert_allclose(rocking_matrix([0.0, t])[1], r)


def test_central_pixel_at_bragg_angle_is_along_x():
    lam = 12.398419843 / 10.0
    theta_b = np.rad2deg(np.arcsin(lam / (2 * D003_A)))
    g = _geometry(delta_deg=2 * theta_b)
    assert g.bragg_angle_deg(D003_A) == pytest.approx(theta_b, rel=1e-12)
    q = g.pixel_q_vectors(theta_b, (64, 41))
    # the arm ray hits (cen_row, cen_col): interpolate the Q field there (it is smooth)
    qc = g.q_lab(g.cen_row, g.cen_col) @ rocking_matrix(theta_b)
    np.testing.assert_allclose(qc, [2 * np.pi / D003_A, 0, 0], atol=1e-12)
    assert q.shape == (64, 41, 3)
    d, txy, txz = q_to_d_and_tilts(qc)
    assert d == pytest.approx(D003_A, rel=1e-12)
    assert abs(txy) < 1e-9 and abs(txz) < 1e-9


def test_detector_axes_directions():
    g = _geometry(delta_deg=20.0, gamma_deg=5.0)
    n, e_col, e_row = g.arm_vectors()
    np.testing.assert_allclose([n @ e_col, n @ e_row, e_col @ e_row], 0, atol=1e-15)
    q = g.pixel_q_lab((64, 64))
    k, p, dist = g.k_A_inv, 55e-6, 0.5
    # one column step moves k_f by k·p/D along e_col (small-angle), one row step along e_row
    np.testing.assert_allclose((q[32, 33] - q[32, 32]) / (k * p / dist), e_col, atol=2e-3)
    np.testing.assert_allclose((q[33, 32] - q[32, 32]) / (k * p / dist), e_row, atol=2e-3)
    # elastic: |k_f| = k, i.e. |Q + k ŷ| = k everywhere
    np.testing.assert_allclose(np.linalg.norm(q + [0, k, 0], axis=-1), k, rtol=1e-13)


def test_pixel_q_vectors_sample_frame_is_rotated_lab_frame():
    g = _geometry(gamma_deg=1.0)
    ql = g.pixel_q_lab((8, 9))
    qs = pixel_q_vectors(g, 7.0, (8, 9))
    np.testing.assert_allclose(np.einsum("ij,...j->...i", rocking_matrix(7.0), qs), ql, atol=1e-14)


def test_matches_xrayutilities():
    xu = pytest.importorskip("xrayutilities")
    g = _geometry(delta_deg=15.6, gamma_deg=2.5, cen_row=20.3, cen_col=11.7)
    rows, cols = 40, 30
    qc = xu.QConversion(["z-"], ["z-", "x+"], [0, 1, 0])
    qc.init_area("z-", "x+", cch1=g.cen_row, cch2=g.cen_col, Nch1=rows, Nch2=cols,
                 pwidth1=55e-6, pwidth2=55e-6, distance=0.5)
    for th in (7.1, 7.9):
        qx, qy, qz = qc.area(th, g.delta_deg, g.gamma_deg, en=g.energy_keV * 1000)
        np.testing.assert_allclose(g.pixel_q_vectors(th, (rows, cols)), np.stack([qx, qy, qz], -1), atol=1e-9)


def test_q_to_d_and_tilts_known_values():
    q = np.array([[2.0, 2.0 * np.tan(np.deg2rad(0.1)), 2.0 * np.tan(np.deg2rad(-0.05))]])
    d, txy, txz = q_to_d_and_tilts(q)
    assert d[0] == pytest.approx(2 * np.pi / np.linalg.norm(q[0]), rel=1e-14)
    assert txy[0] == pytest.approx(0.1, abs=1e-12)
    assert txz[0] == pytest.approx(-0.05, abs=1e-12)
    with pytest.raises(ValueError, match="last axis"):
        q_to_d_and_tilts(np.zeros((3, 2)))


def test_from_metadata_roundtrip_and_missing_keys():
    g = _geometry()
    md = g.to_metadata()
    assert set(md) == set(GEOMETRY_KEYS)
    assert SXDMGeometry.from_metadata(md) == g
    assert SXDMGeometry.from_metadata({**md, "hkl": "003"}).hkl == (0, 0, 3)
    assert SXDMGeometry.from_metadata({**md, "hkl": b"0 0 3"}).hkl == (0, 0, 3)
    bad = {k: v for k, v in md.items() if k not in ("distance_m", "cen_col")}
    with pytest.raises(SXDMMetadataError, match="distance_m, cen_col"):
        SXDMGeometry.from_metadata(bad)
    with pytest.raises(SXDMMetadataError, match="energy_keV"):
        SXDMGeometry.from_metadata({**md, "energy_keV": -1.0})
    with pytest.raises(SXDMMetadataError, match="one number"):
        SXDMGeometry.from_metadata({**md, "delta_deg": [1.0, 2.0]})
    with pytest.raises(ValueError):  # SXDMMetadataError is a ValueError
        SXDMGeometry.from_metadata({**md, "hkl": "abc"})
