"""Known-answer tests for the XRD frame forward model (strainstream.sim.xrd_frames)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from strainstream.sim import cell as C
from strainstream.sim import xrd_frames as X

LAM = 0.1665
PIX_M = 200e-6


@pytest.fixture(scope="module")
def sim_full():
    # PONI exactly on the centre of pixel (1024, 1020), no tilt: row 1024 is a diameter
    geo = X.DetectorGeometry(poni1_m=1024.5 * PIX_M, poni2_m=1020.5 * PIX_M, distance_m=1.0)
    return X.XRDFrameSimulator(geo)


@pytest.fixture(scope="module")
def sim_small():
    return X.XRDFrameSimulator(X.DetectorGeometry.binned(4), dead_pixel_fraction=1e-3,
                               hot_pixel_fraction=2e-4)


def _pristine():
    return [{"a_A": 2.87, "c_A": 14.19, "fraction": 1.0, "microstrain": 5e-4, "size_nm": 200.0}]


def _subpixel_max(y: np.ndarray, guess: float, half: int = 4) -> float:
    lo = int(round(guess)) - half
    i = lo + int(np.argmax(y[lo: lo + 2 * half + 1]))
    den = y[i - 1] - 2 * y[i] + y[i + 1]
    return i + 0.5 * (y[i - 1] - y[i + 1]) / den


def _ring_radii_px(sim, image, q_A_inv):
    """Measured radius (px) of the ring at each Q to the right and left of the PONI on row 1024."""
    row = image[1024].astype(float)
    out = []
    for q in q_A_inv:
        tth = 2 * math.asin(q * LAM / (4 * math.pi))
        r_exp = 1.0 * math.tan(tth) / PIX_M
        right = _subpixel_max(row, 1020 + r_exp) - 1020
        left = 1020 - _subpixel_max(row, 1020 - r_exp)
        out.append((r_exp, right, left))
    return np.array(out)


def test_bragg_angle_of_003():
    pos = X.layered_peak_positions(2.87, 14.19, LAM, [(0, 0, 3), (1, 0, 4), (1, 1, 0)])
    # 2θ(003) = 2 asin(3λ/(2c)); hand value 2.0169640°, Q = 6π/c = 1.3283690 Å⁻¹
    assert pos["two_theta_deg"][0] == pytest.approx(2.0169640, abs=1e-6)
    assert pos["q_A_inv"][0] == pytest.approx(1.3283690, abs=1e-6)
    # (110): d = a/2 ; (104): 1/d² = 4/(3a²) + 16/c²
    assert pos["d_A"][2] == pytest.approx(2.87 / 2, rel=1e-12)
    assert pos["d_A"][1] == pytest.approx((4 / (3 * 2.87**2) + 16 / 14.19**2) ** -0.5, rel=1e-12)
    assert X.two_theta_deg_to_q(pos["two_theta_deg"], LAM) == pytest.approx(pos["q_A_inv"])


def test_layered_ring_positions_on_detector(sim_full):
    hkl = [(0, 0, 3), (1, 0, 1), (1, 0, 4), (0, 1, 5), (1, 1, 0), (1, 1, 3)]
    q = X.layered_peak_positions(2.87, 14.19, LAM, hkl)["q_A_inv"]
    _, inten = sim_full.profile(_pristine(), al_scale=0.0)
    img = sim_full.expected_image(inten)
    radii = _ring_radii_px(sim_full, img, q)
    # radius of maximum intensity = L tan 2θ within 0.2 px on both sides of the beam
    np.testing.assert_allclose(radii[:, 1], radii[:, 0], atol=0.2)
    np.testing.assert_allclose(radii[:, 2], radii[:, 0], atol=0.2)


def test_one_d_model_peaks_at_exact_q(sim_full):
    hkl = [(0, 0, 3), (1, 0, 1), (1, 0, 4), (0, 1, 5)]
    q_exact = X.layered_peak_positions(2.87, 14.19, LAM, hkl)["q_A_inv"]
    q, inten = sim_full.profile(_pristine(), al_scale=0.0)
    for qe in q_exact:
        sel = np.abs(q - qe) < 0.02
        q_max = q[sel][np.argmax(inten[sel])]
        assert abs(q_max - qe) <= sim_full.q_step_A_inv


def test_aluminium_ring_positions(sim_full):
    # a layered phase with zero fraction leaves only the Al current collector + background
    phases = [dict(_pristine()[0], fraction=0.0)]
    _, inten = sim_full.profile(phases, al_scale=1.0)
    img = sim_full.expected_image(inten)
    hkl = np.array([(1, 1, 1), (2, 0, 0), (2, 2, 0), (3, 1, 1)])
    q = 2 * np.pi * np.sqrt((hkl**2).sum(1)) / 4.0495
    radii = _ring_radii_px(sim_full, img, q)
    np.testing.assert_allclose(radii[:, 1], radii[:, 0], atol=0.2)
    np.testing.assert_allclose(radii[:, 2], radii[:, 0], atol=0.2)


def test_ceo2_rings_match_pyfai_calibrant(sim_full):
    from pyFAI.calibrant import get_calibrant

    d = np.asarray(get_calibrant("CeO2").dspacing[:8], dtype=float)  # NIST 674b
    frame = sim_full.ceo2_frame(noise=False)
    assert frame.image.dtype == np.uint16
    img = sim_full.expected_image(frame.intensity)
    radii = _ring_radii_px(sim_full, img, 2 * np.pi / d)
    np.testing.assert_allclose(radii[:, 1], radii[:, 0], atol=0.2)
    np.testing.assert_allclose(radii[:, 2], radii[:, 0], atol=0.2)
    # (111) is the strongest CeO2 ring
    q, inten = frame.q_A_inv, frame.intensity - sim_full.background(frame.q_A_inv, 0.5)
    peak_heights = [inten[np.abs(q - 2 * np.pi / dd) < 0.01].max() for dd in d[:4]]
    assert int(np.argmax(peak_heights)) == 0


def test_ring_positions_with_tilted_detector():
    geo = X.DetectorGeometry(poni1_m=0.2052, poni2_m=0.2031, rot1_rad=0.012, rot2_rad=-0.009,
                             distance_m=0.95)
    sim = X.XRDFrameSimulator(X.DetectorGeometry.binned(
        2, distance_m=geo.distance_m, poni1_m=geo.poni1_m, poni2_m=geo.poni2_m,
        rot1_rad=geo.rot1_rad, rot2_rad=geo.rot2_rad))
    tth_px = np.degrees(sim.ai.twoThetaArray(sim.geometry.shape))
    _, inten = sim.profile(_pristine(), al_scale=0.0)
    img = sim.expected_image(inten)
    tth_exp = X.layered_peak_positions(2.87, 14.19, LAM, [(0, 0, 3), (1, 0, 4)])["two_theta_deg"]
    row = 512
    cols = np.arange(sim.geometry.shape[1])
    for t in tth_exp:
        guess = np.interp(t, tth_px[row, 512:], cols[512:])  # right half: 2θ increases
        x = _subpixel_max(img[row].astype(float), guess, half=3)
        t_meas = np.interp(x, cols, tth_px[row])
        step = np.interp(x + 1, cols, tth_px[row]) - t_meas
        assert abs(t_meas - t) < 0.25 * step


def test_pyfai_integration_of_frame_returns_the_model(sim_small):
    _, inten = sim_small.profile(_pristine())
    img = sim_small.draw(inten, noise=False)
    res = sim_small.ai.integrate1d(img.astype(float), 1500, unit="q_A^-1",
                                   mask=sim_small.defect_mask, method=("full", "csr", "cython"))
    model = np.interp(res.radial, sim_small.q_A_inv, inten)
    bg = (res.radial > 0.6) & (res.radial < 1.2)  # background-only region
    np.testing.assert_allclose(res.intensity[bg], model[bg], rtol=0.01)
    win = (res.radial > 1.25) & (res.radial < 1.41)
    y = res.intensity[win] - np.interp(res.radial[win], sim_small.q_A_inv,
                                       sim_small.background(sim_small.q_A_inv))
    centroid = np.sum(res.radial[win] * y) / np.sum(y)
    assert centroid == pytest.approx(6 * np.pi / 14.19, abs=0.003)


def test_expected_image_equals_pyfai_calcfrom1d(sim_small):
    # pyFAI's own 1-D → 2-D reconstruction of the same profile is an independent reference
    q, inten = sim_small.profile(_pristine())
    ref = sim_small.ai.calcfrom1d(q, inten, shape=sim_small.geometry.shape, dim1_unit="q_A^-1",
                                  correctSolidAngle=True)
    np.testing.assert_allclose(sim_small.expected_image(inten), ref, rtol=1e-9)


def test_poisson_noise_statistics_and_seed(sim_small):
    _, inten = sim_small.profile(_pristine())
    mu = sim_small.expected_image(inten)
    good = ~sim_small.defect_mask & (mu < 6e4)
    for exact in (False, True):
        img = sim_small.draw(inten, seed=7, exact_poisson=exact).astype(float)
        z = (img[good] - mu[good]) / np.sqrt(mu[good])
        assert abs(z.mean()) < 0.01
        assert z.std() == pytest.approx(1.0, abs=0.02)
    a = sim_small.draw(inten, seed=3)
    b = sim_small.draw(inten, seed=3)
    c = sim_small.draw(inten, seed=4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_dead_and_hot_pixels(sim_small):
    frame = sim_small.frame(_pristine(), seed=1)
    n = frame.image.size
    assert 0.5e-3 * n < sim_small.dead_mask.sum() < 1.5e-3 * n
    assert np.all(frame.image[sim_small.dead_mask] == 0)
    assert np.all(frame.image[sim_small.hot_mask] == 65535)
    assert np.array_equal(frame.mask, sim_small.dead_mask | sim_small.hot_mask)
    assert frame.image.shape == (512, 512)


def test_williamson_hall_peak_width(sim_small):
    # (003) FWHM in Q = sqrt((2πK/D + 2εQ)² + w_inst²), measured on the 1-D model
    q = sim_small.q_A_inv
    q003 = 6 * np.pi / 14.19
    cos_t = math.sqrt(1 - (q003 * LAM / (4 * math.pi)) ** 2)
    w_inst = 2 * math.pi / LAM * cos_t * math.radians(0.02)
    for eps, size in ((1e-3, 200.0), (4e-3, 60.0)):
        ph = [dict(_pristine()[0], microstrain=eps, size_nm=size)]
        _, inten = sim_small.profile(ph, al_scale=0.0)
        y = inten - sim_small.background(q)
        sel = np.abs(q - q003) < 0.2
        qs, ys = q[sel], y[sel]
        half = ys.max() / 2
        above = np.nonzero(ys >= half)[0]
        i0, i1 = above[0], above[-1]
        left = np.interp(half, [ys[i0 - 1], ys[i0]], [qs[i0 - 1], qs[i0]])
        right = np.interp(half, [ys[i1 + 1], ys[i1]], [qs[i1 + 1], qs[i1]])
        w_exp = math.hypot(2 * math.pi * 0.9 / (size * 10) + 2 * eps * q003, w_inst)
        assert right - left == pytest.approx(w_exp, rel=0.01)


def test_two_phase_003_split_for_sc_nm91(sim_small):
    phases = C.lattice_at_soc("SC-NM91", 0.81)
    assert len(phases) == 2
    q, inten = sim_small.profile(phases)
    win = (q > 1.27) & (q < 1.42)
    qw, yw = q[win], inten[win]
    peaks = np.nonzero((yw[1:-1] > yw[:-2]) & (yw[1:-1] >= yw[2:]))[0] + 1
    tops = qw[peaks[np.argsort(yw[peaks])[-2:]]]
    expected = sorted(6 * np.pi / p.c_A for p in phases)
    np.testing.assert_allclose(np.sort(tops), expected, atol=2 * sim_small.q_step_A_inv)
    # H3 is the majority at soc 0.81 (fraction 0.5) — heights follow fractions roughly
    assert expected[1] - expected[0] > 0.06  # Δc ≈ 0.68 Å → ΔQ ≈ 0.064 Å⁻¹


def test_cell_lattice_drives_the_frame(sim_small):
    cell = C.CoinCell("PC-NC91", 10.0)
    cell.set_mode("CC", current_mA_g=200.0)
    cell.step(1800.0)
    frame = sim_small.cell_frame(cell, seed=0)
    assert frame.metadata["capacity_mAh_g"] == pytest.approx(100.0)
    assert frame.metadata["preset"] == "PC-NC91"
    assert frame.phases[0]["c_A"] == pytest.approx(cell.lattice()[0].c_A)
    q, inten = frame.q_A_inv, frame.intensity
    sel = np.abs(q - 6 * np.pi / cell.lattice()[0].c_A) < 0.03
    assert abs(q[sel][np.argmax(inten[sel])] - 6 * np.pi / cell.lattice()[0].c_A) <= 5e-4


def test_relative_intensities_match_pymatgen(sim_small):
    pytest.importorskip("pymatgen")
    from pymatgen.analysis.diffraction.xrd import XRDCalculator
    from pymatgen.core import Lattice, Structure

    from strainstream.sim import _crystal

    s = Structure.from_spacegroup(
        "R-3m", Lattice.hexagonal(2.87, 14.19), [{"Ni": 0.9, "Co": 0.1}, "Li", "O"],
        [[0, 0, 0], [0, 0, 0.5], [0, 0, 0.2585]])
    pat = XRDCalculator(wavelength=LAM).get_pattern(s, scaled=False, two_theta_range=(0, 8))
    refl = _crystal.layered_reflections(2.87, 14.19, 5.0, {"Ni": 0.9, "Co": 0.1}, b_iso_A2=0.0)
    tth = X.q_to_two_theta_deg(refl.q_A_inv, LAM)
    th = np.radians(tth / 2)
    ours = refl.f2_sum / (np.sin(th) ** 2 * np.cos(th)) * (1 + np.cos(2 * th) ** 2)
    theirs = np.array([pat.y[np.argmin(np.abs(pat.x - t))] for t in tth])
    np.testing.assert_allclose(np.abs(pat.x[[np.argmin(np.abs(pat.x - t)) for t in tth]] - tth),
                               0, atol=1e-4)
    np.testing.assert_allclose(ours / ours[0], theirs / theirs[0], rtol=0.03, atol=0.003)


def test_poni_file_roundtrip(tmp_path):
    import pyFAI

    geo = X.DetectorGeometry.binned(8, rot1_rad=0.01, rot2_rad=-0.02, distance_m=0.9)
    path = tmp_path / "sim.poni"
    geo.write_poni(path)
    geo.write_poni(path)  # overwriting must not append a second geometry
    ai = pyFAI.load(str(path))
    q_ref = geo.integrator().array_from_unit(shape=geo.shape, typ="center", unit="q_A^-1")
    q = ai.array_from_unit(shape=geo.shape, typ="center", unit="q_A^-1")
    np.testing.assert_allclose(q, q_ref, rtol=1e-12)


def test_geometry_dict_roundtrip_and_bad_input():
    geo = X.DetectorGeometry(rot1_rad=0.01)
    d = geo.to_dict()
    assert set(d) >= {"distance_m", "poni1_m", "poni2_m", "rot1", "rot2", "rot3",
                      "wavelength_A", "pixel_size_um", "shape"}
    assert d["rot1"] == 0.01
    assert X.DetectorGeometry.from_dict(d) == geo
    with pytest.raises(ValueError, match="unknown geometry keys"):
        X.DetectorGeometry.from_dict({"distance": 1.0})
    with pytest.raises(ValueError, match="wavelength_A"):
        X.DetectorGeometry(wavelength_A=-1)
    small = X.DetectorGeometry.binned(4)
    assert small.shape == (512, 512) and small.pixel_size_um == 800.0
    sim = X.XRDFrameSimulator(X.DetectorGeometry.binned(8))
    with pytest.raises(ValueError, match="missing 'c_A'"):
        sim.profile([{"a_A": 2.87, "fraction": 1.0, "microstrain": 0.0, "size_nm": 100.0}])
    with pytest.raises(ValueError, match="NaN"):
        sim.expected_image(np.full(sim.q_A_inv.shape, np.nan))
    with pytest.raises(ValueError, match="simulator grid"):
        sim.expected_image(np.ones(10))
    with pytest.raises(ValueError, match=">= 0"):
        sim.expected_image(np.full(sim.q_A_inv.shape, -1.0))
    with pytest.raises(ValueError, match="phases is empty"):
        sim.profile([])
