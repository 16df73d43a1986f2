"""Known-answer tests for the TXM-XANES forward model (strainstream.sim.txm_images)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from strainstream import xanes
from strainstream.sim import txm_images as T


def test_default_energies_and_lineshape_landmarks():
    e = T.DEFAULT_ENERGIES_EV
    assert e[0] == 8340.0 and e[-1] == 8360.0 and e.size == 21
    ef = np.arange(8330.0, 8370.0, 0.001)
    mu = T.ni_k_edge_absorbance(ef, 0.0)
    # half jump of the arctan at 8345 eV, white-line maximum near 8350 eV, height ~1.6
    assert T.ni_k_edge_absorbance(8345.0, 0.0) == pytest.approx(0.5 + 0.6 * (
        0.5 * np.exp(-4 * np.log(2) * 25 / 25) + 0.5 / (1 + 4)), rel=1e-12)
    assert 8350.0 < ef[np.argmax(mu)] < 8350.3
    assert 1.5 < mu.max() < 1.7
    assert abs(mu[0]) < 0.1 and 0.95 < mu[-1] < 1.1


def test_true_whiteline_is_the_numerical_maximum():
    soc = np.array([0.0, 0.13, 0.5, 0.77, 1.0])
    truth = T.true_whiteline_eV(soc, background_ratio=0.17)
    ef = np.arange(8346.0, 8356.0, 1e-4)
    brute = ef[np.argmax(T.ni_k_edge_absorbance(ef[:, None], soc[None], background_ratio=0.17),
                         axis=0)]
    np.testing.assert_allclose(truth, brute, atol=1e-4)
    # not the pseudo-Voigt centre: the edge step under the peak moves the maximum up
    ls = T.NiKEdgeLineshape()
    assert np.all(truth - (ls.whiteline_eV + ls.whiteline_shift_eV * soc) > 0.05)
    assert np.isnan(T.true_whiteline_eV(np.array([np.nan]))).all()


def test_whiteline_shifts_with_valence():
    # pristine (SOC 0, Ni3+) -> charged (SOC 1, ~Ni4+): +1.5 eV shift of the white line,
    # slightly less for the maximum because the white line also weakens
    shift = np.diff(T.true_whiteline_eV(np.array([0.0, 1.0])))[0]
    assert 1.3 < shift < 1.6
    assert np.all(np.diff(T.true_whiteline_eV(np.linspace(0, 1, 11))) > 0)  # monotonic


def test_simulated_scan_whiteline_shift_between_particles_is_measured():
    # two particles at SOC 0.3 and 0.75: the analysed WL difference matches the truth
    smp = T.particle_sample((96, 96), voxel_size_um=0.08, shell_contrast=0.0, roughness=0.0)
    scan = T.simulate_txm_scan(sample=smp, drift_px_rms=0.0, magnification_changes=False,
                               seed=4)
    a = xanes.absorbance_from_counts(scan.stack, scan.flats, scan.darks)
    wl = xanes.whiteline_map(scan.energies_eV, a, min_edge_jump=0.2)
    soc = smp.soc
    p1 = np.isclose(soc, 0.3) & np.isfinite(wl)
    p2 = np.isclose(soc, 0.75) & np.isfinite(wl)
    assert p1.sum() > 200 and p2.sum() > 100
    measured = np.mean(wl[p2]) - np.mean(wl[p1])
    expected = np.diff(T.true_whiteline_eV(np.array([0.3, 0.75])))[0]
    assert expected == pytest.approx(0.65, abs=0.05)
    assert measured == pytest.approx(expected, abs=0.05)


def test_particle_sample_geometry_and_soc_map():
    smp = T.particle_sample((100, 100), particles=[(50, 50, 20, 0.5)], voxel_size_um=0.04,
                            shell_contrast=0.4, roughness=0.0)
    assert smp.thickness_um[50, 50] == pytest.approx(2 * 20 * 0.04)  # chord through centre
    assert smp.thickness_um[0, 0] == 0 and np.isnan(smp.soc[0, 0])
    assert smp.soc[50, 50] == pytest.approx(0.5 - 0.2)  # core less charged than shell
    assert smp.soc[50, 69] > smp.soc[50, 50]
    assert smp.material.sum() == pytest.approx(np.pi * 20**2, rel=0.03)


def test_zone_plate_focus_must_follow_energy():
    smp = T.particle_sample((64, 64))
    follow = T.simulate_txm_scan(sample=smp, noise=False, drift_px_rms=0.0)
    fixed = T.simulate_txm_scan(sample=smp, noise=False, drift_px_rms=0.0,
                                zp_follows_focus=False)
    np.testing.assert_allclose(follow.defocus_sigma_px, 0.0)
    np.testing.assert_allclose(follow.zp_position_m, follow.focus_position_m)
    # fixed zone plate (in focus at the middle energy): blur grows with |E - E_mid|
    s = fixed.defocus_sigma_px
    assert s[10] == 0.0 and s[0] > 1.5 and s[-1] > 1.5
    assert np.all(np.diff(s[10:]) > 0) and np.all(np.diff(s[:11]) < 0)
    # the focus moves by ~ f dE / E ~ 130 um over 20 eV
    dz = follow.focus_position_m[-1] - follow.focus_position_m[0]
    assert dz == pytest.approx(0.052 * 20 / 8350 * 1.05, rel=0.1)
    # blurred images: lower edge sharpness (of the absorbance) at the ends of the scan
    def sharpness(scan, i):
        a = xanes.absorbance_from_counts(scan.stack, scan.flats, scan.darks)[i]
        return (np.diff(a, axis=1) ** 2).sum()  # gradient energy falls with blur

    assert sharpness(fixed, 20) < 0.7 * sharpness(follow, 20)
    assert sharpness(fixed, 10) == pytest.approx(sharpness(follow, 10), rel=1e-9)


def test_magnification_changes_with_energy_when_refocusing():
    scan = T.simulate_txm_scan(sample=T.particle_sample((64, 64)), noise=False,
                               drift_px_rms=0.0)
    m = scan.magnification
    assert np.all(np.diff(m) < 0)
    assert m[-1] / m[0] - 1 == pytest.approx(-20 / 8350, rel=0.15)
    assert scan.reference_magnification == pytest.approx(np.median(m))
    # correcting the magnification restores the sample-frame absorbance
    a = xanes.absorbance_from_counts(scan.stack, scan.flats, scan.darks)
    c = xanes.correct_magnification(a, m)
    inner = (slice(6, -6), slice(6, -6))
    err_before = np.abs(a[0] - scan.absorbance_true[0])[inner].max()
    err_after = np.abs(c[0] - scan.absorbance_true[0])[inner].max()
    assert err_after < 0.3 * err_before


def test_counting_noise_is_poisson():
    scan = T.simulate_txm_scan(sample=T.particle_sample((64, 64)), drift_px_rms=0.0,
                               magnification_changes=False, flat_counts=5000.0, seed=9)
    clean = T.simulate_txm_scan(sample=T.particle_sample((64, 64)), drift_px_rms=0.0,
                                magnification_changes=False, flat_counts=5000.0, noise=False,
                                seed=9)
    resid = scan.flats - clean.flats
    # variance = mean counts (Poisson) + read noise^2
    ratio = resid.var() / (clean.flats - 100.0).mean()
    assert ratio == pytest.approx(1.0, rel=0.05)
    assert abs(resid.mean()) < 0.5


def test_write_txm_file_layout(tmp_path):
    scan = T.simulate_txm_scan(sample=T.particle_sample((32, 40)))
    p = T.write_txm_file(tmp_path / "s.h5", scan)
    with h5py.File(p) as f:
        assert f["energies_eV"].shape == (21,)
        assert f["stack"].shape == f["flats"].shape == (21, 32, 40)
        assert f["darks"].shape == (32, 40)
        assert f["magnification"].shape == (21,)
        np.testing.assert_array_equal(f["truth/whiteline_eV"][()], scan.whiteline_true_eV)
    p2 = T.write_txm_file(tmp_path / "a.h5", scan, raw=False, include_truth=False)
    with h5py.File(p2) as f:
        assert set(f) == {"energies_eV", "stack"}
        np.testing.assert_array_equal(f["stack"][()], scan.absorbance_true)
