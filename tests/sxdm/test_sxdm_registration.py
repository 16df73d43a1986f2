"""Sub-pixel registration and map resampling on maps with known shifts."""

import numpy as np
import pytest

from strainstream.sxdm import estimate_drift, register_translation, shift_maps


def _blob(cy, cx, n=32):
    y, x = np.mgrid[0:n, 0:n].astype(float)
    r = np.hypot((y - cy) / 7.0, (x - cx) / 5.0)
    return 0.5 * (1 - np.tanh((r - 1.0) / 0.15)) * (1 + 0.3 * np.cos((y - cy) / 3.0))


def test_register_translation_recovers_subpixel_shifts():
    ref = _blob(15.0, 16.0)
    true = np.array([[0.37, -1.21], [-2.6, 0.05], [0.0, 0.0]])
    moving = np.stack([_blob(15.0 + dy, 16.0 + dx) for dy, dx in true])
    est = register_translation(ref, moving, upsample=100)
    # moving(p) = ref(p - shift) for a pure translation of the blob centre
    np.testing.assert_allclose(est, true, atol=0.03)
    one = register_translation(ref, moving[0])
    assert one.shape == (2,)
    with pytest.raises(ValueError, match="shape"):
        register_translation(ref, np.zeros((3, 10, 10)))


def test_register_translation_phase_correlation_blank_and_nan_maps():
    ref = _blob(15.0, 16.0)
    moving = np.stack([_blob(16.3, 15.2), np.zeros_like(ref)])
    est = register_translation(ref, moving, normalize=True)
    # whitening weights the blob's sharp rim: 0.06 off (as with the pre-skimage code)
    np.testing.assert_allclose(est[0], [1.3, -0.8], atol=0.1)
    np.testing.assert_array_equal(est[1], [0.0, 0.0])  # a blank map has no shift to find
    bad = moving[0].copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="finite"):
        register_translation(ref, bad)


def test_shift_maps_bilinear_known_values_and_alignment():
    y, x = np.mgrid[0:10, 0:12].astype(float)
    plane = 2.0 * y + 3.0 * x  # bilinear interpolation of a plane is exact
    out = shift_maps(plane[None, ..., None], np.array([[0.25, -0.5]]))[0, ..., 0]
    inner = (slice(1, 9), slice(1, 11))
    np.testing.assert_allclose(out[inner], (2.0 * (y + 0.25) + 3.0 * (x - 0.5))[inner], atol=1e-12)
    assert out[0, 0] == pytest.approx(0.5 * (2 * 0.25) * 1.0)  # zero outside: half of column -1 lost
    # aligning with the registered shift brings the blob back onto the reference
    ref = _blob(15.0, 16.0)
    mov = _blob(16.3, 15.2)
    s = register_translation(ref, mov)
    aligned = shift_maps(mov[None], s[None])[0]
    assert np.abs(aligned - ref).sum() < 0.2 * np.abs(mov - ref).sum()
    with pytest.raises(ValueError, match="shifts"):
        shift_maps(plane[None], np.zeros((2, 2)))


def test_fit_gaussians_1d_known_parameters():
    from strainstream.sxdm import fit_gaussians_1d

    u = np.linspace(-5.0, 5.0, 41)
    amp = np.array([100.0, 20.0, 50.0])
    mu = np.array([0.3, -1.7, 4.0])  # the last is cut by the range end
    sig = np.array([0.8, 1.5, 1.0])
    off = np.array([2.0, -1.0, 0.5])
    y = amp[:, None] * np.exp(-0.5 * ((u - mu[:, None]) / sig[:, None]) ** 2) + off[:, None]
    a, m, s, c, ok = fit_gaussians_1d(u, y)
    assert ok.all()
    np.testing.assert_allclose(m, mu, atol=1e-6)
    np.testing.assert_allclose(s, sig, rtol=1e-6)
    np.testing.assert_allclose(a, amp, rtol=1e-6)
    np.testing.assert_allclose(c, off, atol=1e-5)
    a0, m0, s0, c0, ok0 = fit_gaussians_1d(u, y - off[:, None], fit_offset=False)
    np.testing.assert_allclose(m0, mu, atol=1e-6)
    assert np.all(c0 == 0)
    flat = np.zeros((1, 41))
    assert not fit_gaussians_1d(u, flat)[4][0]


def test_texture_refinement_leaves_ill_posed_angles_alone():
    """The texture (Lucas–Kanade) step on a particle whose core is 2 x 2 raster points: one to
    four weighted points per angle, a singular normal matrix. It ran away to 1.3 raster steps
    on drift-free data (clipped 0.5-step updates along the unconstrained direction); it must
    leave those angles at the intensity-model shifts."""
    from strainstream.sim.sxdm_frames import particle_preset, simulate_sxdm
    from strainstream.sxdm import StrainMapper

    sim = simulate_sxdm(particle_preset("SC-NC91", "charged", ny=4, nx=4), energy_keV=8.35,
                        shape=(64, 64), n_theta=13, theta_range_deg=1.2, drift_step_nm=0.0, seed=1)
    mp = StrainMapper(sim.metadata, (4, 4), theta_deg=sim.theta_deg, register=False)
    iy, ix = (a.ravel() for a in np.mgrid[0:4, 0:4])
    for i in range(sim.n_theta):
        mp.add_frames(sim.theta_deg[i], iy, ix, sim.frames_at(i).reshape(-1, 64, 64))
    theta, _, mean = mp._per_angle()
    m0 = mean[..., 0]
    totals = np.clip(m0, 0, None).sum((1, 2))
    use = totals >= 0.1 * totals.max()
    assert use.sum() == 5
    model = estimate_drift(m0, theta, use, min_points=0)  # the size guard off: the steps alone
    textured = estimate_drift(m0, theta, use, texture_maps=mean[..., 3], min_points=0)
    np.testing.assert_allclose(textured, model, atol=1e-12)
    assert np.abs(model - model[6]).max() < 0.1  # seen: 0.06 (no drift simulated)
    # with the size guard (the default 9 points) nothing is registered at all
    np.testing.assert_array_equal(estimate_drift(m0, theta, use, texture_maps=mean[..., 3]), 0.0)
