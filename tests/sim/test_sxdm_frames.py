"""Known-answer tests of the SXDM forward model (independent of strainstream.sxdm)."""

import h5py
import numpy as np
import pytest

from strainstream.sim.sxdm_frames import (
    SXDMParticle,
    particle_preset,
    simulate_sxdm,
    write_sxdm_file,
)

HC = 12.398419843


def _flat_particle(**kw):
    return SXDMParticle(ny=6, nx=6, d_mean_A=14.2 / 3, strain_std=0.0, tilt_std_deg=0.0, **kw)


def test_bragg_angle_of_003_puts_the_peak_on_the_arm_pixel():
    pt = _flat_particle()
    sim = simulate_sxdm(pt, shape=(48, 48), cen=(23.0, 21.0), noise=False, background_counts=0.0,
                        n_theta=41, drift_step_nm=0.0)
    theta_b = np.rad2deg(np.arcsin(HC / 10.0 / (2 * 14.2 / 3)))
    assert sim.theta_deg[20] == pytest.approx(theta_b, abs=1e-12)
    assert sim.metadata["delta_deg"] == pytest.approx(2 * theta_b, abs=1e-10)
    lam = sim.expected_frames(20)[3, 3]  # centre of the particle, at θ_B
    r, c = np.unravel_index(lam.argmax(), lam.shape)
    assert (r, c) == (23, 21)
    # the Q of the arm pixel at θ_B is (2π/d, 0, 0) in the sample frame
    q = sim.pixel_q_sample(theta_b)[23, 21]
    np.testing.assert_allclose(q, [2 * np.pi / (14.2 / 3), 0, 0], atol=1e-12)
    # rocking curve of the integrated intensity peaks at θ_B
    tot = [sim.expected_frames(i)[3, 3].sum() for i in range(16, 25)]
    assert int(np.argmax(tot)) + 16 == 20


def test_peak_moves_with_strain_and_tilt():
    base = dict(ny=6, nx=6, d_mean_A=14.2 / 3, strain_std=0.0, tilt_std_deg=0.0)
    sim0 = simulate_sxdm(SXDMParticle(**base), shape=(64, 64), noise=False, background_counts=0.0,
                         drift_step_nm=0.0)
    tilted = SXDMParticle(**base, tilt_mean_deg=(0.0, 0.1))
    sim1 = simulate_sxdm(tilted, shape=(64, 64), noise=False, background_counts=0.0, drift_step_nm=0.0)
    a, b = sim0.expected_frames(20)[3, 3], sim1.expected_frames(20)[3, 3]
    rows = np.arange(64)
    ra = (a.sum(1) * rows).sum() / a.sum()
    rb = (b.sum(1) * rows).sum() / b.sum()
    # θxz = +0.1° tilts Q up (+z) by |Q|·tan(0.1°); rows grow downwards and one row is k·p/D in Q
    # (small angles), so the peak moves by Δrow ≈ −|Q|·tan(0.1°)/(k·p/D)
    k = 2 * np.pi / (HC / 10.0)
    expect = -(2 * np.pi / (14.2 / 3)) * np.tan(np.deg2rad(0.1)) / (k * 55e-6 / 0.5)
    assert rb - ra == pytest.approx(expect, rel=0.05)


def test_fields_have_reference_magnitudes():
    nm = particle_preset("SC-NM91", "charged", ny=32, nx=32, seed=0).truth()
    nc = particle_preset("SC-NC91", "charged", ny=32, nx=32, seed=0).truth()
    inside = nm["weight"] > 0.5
    assert nm["strain"][inside].std() == pytest.approx(0.0018, rel=0.05)
    assert nm["strain"][inside].std() / nc["strain"][inside].std() == pytest.approx(3.0, rel=1e-6)
    r = np.corrcoef(nm["strain"][inside], nm["tilt_xy_deg"][inside])[0, 1]
    assert r == pytest.approx(-0.7, abs=0.1)
    d = nm["d_spacing_A"]
    np.testing.assert_allclose(np.linalg.norm(nm["q_sample_A_inv"], axis=-1), 2 * np.pi / d, rtol=1e-13)
    with pytest.raises(ValueError, match="unknown material"):
        particle_preset("PC-XYZ")


def test_drift_noise_and_detector_defects():
    pt = particle_preset(ny=8, nx=8, seed=1)
    sim = simulate_sxdm(pt, shape=(24, 24), n_theta=9, theta_range_deg=0.4, hot_pixels=[(2, 3)],
                        dead_pixels=[(12, 12)], seed=4)
    assert np.all(sim.drift_px[sim.reference_index] == 0)
    assert np.abs(sim.drift_px).max() > 0
    f = sim.frames_at(4)
    assert f.dtype == np.uint32 and f.shape == (8, 8, 24, 24)
    assert np.all(f[..., 12, 12] == 0) and f[..., 2, 3].mean() > 4000
    np.testing.assert_array_equal(f, sim.frames_at(4))  # reproducible
    np.testing.assert_array_equal(f[3, 5], sim.frame_at(4, 3, 5))  # one frame (simulated detector)
    np.testing.assert_array_equal(f[6], sim.line_at(4, 6))
    lam = sim.expected_frames(4)
    # Poisson: mean and variance of background pixels ≈ background
    bg = f[0, 0][2:10, 14:22].astype(float)
    assert abs(bg.mean() - sim.background_counts) < 0.15
    assert lam.min() == pytest.approx(sim.background_counts)


def test_pixel_q_matches_xrayutilities():
    xu = pytest.importorskip("xrayutilities")
    sim = simulate_sxdm(_flat_particle(), shape=(30, 20), gamma_deg=1.5, cen=(12.5, 8.25))
    md = sim.metadata
    qc = xu.QConversion(["z-"], ["z-", "x+"], [0, 1, 0])
    qc.init_area("z-", "x+", cch1=md["cen_row"], cch2=md["cen_col"], Nch1=30, Nch2=20,
                 pwidth1=55e-6, pwidth2=55e-6, distance=md["distance_m"])
    qx, qy, qz = qc.area(7.4, md["delta_deg"], md["gamma_deg"], en=md["energy_keV"] * 1000)
    np.testing.assert_allclose(sim.pixel_q_sample(7.4), np.stack([qx, qy, qz], -1), atol=1e-9)


def test_write_sxdm_file_layout_and_errors(tmp_path):
    sim = simulate_sxdm(particle_preset(ny=4, nx=5), shape=(16, 16), n_theta=3, theta_range_deg=0.2)
    p = tmp_path / "s.h5"
    sim.write(p)
    with h5py.File(p, "r") as f:
        assert f["frames"].shape == (3, 4, 5, 16, 16)
        np.testing.assert_allclose(f["theta_deg"][()], sim.theta_deg)
        for k in ("energy_keV", "distance_m", "pixel_size_um", "delta_deg", "gamma_deg", "step_nm",
                  "hkl", "cen_row", "cen_col"):
            assert k in f.attrs
        np.testing.assert_array_equal(f["frames"][1], sim.frames_at(1))
    with pytest.raises(ValueError, match="n_theta=2"):
        write_sxdm_file(p, sim.all_frames(), sim.theta_deg[:2], sim.metadata)
    with pytest.raises(ValueError, match="frames for 2 rocking angles"):
        write_sxdm_file(p, iter(sim.all_frames()[:2]), sim.theta_deg, sim.metadata,
                        frame_shape=(4, 5, 16, 16))
