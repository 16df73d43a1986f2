"""Instrumental FWHM from the CeO2 calibrant (strainstream.xrd.instrument_fwhm).

Truth: the frame simulator's instrument, FWHM(Q) = (2π/λ)·cosθ·Δ2θ_inst added in quadrature
to the calibrant's own Williamson–Hall size width (its CeO2 has size_nm = 300); a 1-D
pattern with Caglioti widths; the simulator's microstrain of a layered cell.
"""

import numpy as np
import pytest

from strainstream.sim.cell import CoinCell
from strainstream.sim.xrd_frames import DetectorGeometry, XRDFrameSimulator
from strainstream.xrd import (
    FrameError,
    InstrumentWidth,
    Integrator,
    PatternError,
    calibrate,
    instrument_fwhm,
    make_azimuthal_integrator,
    refine_pattern,
    validate_geometry,
)

GEO = DetectorGeometry.binned(4)  # 512², the full detector's Q range (to 10.6 Å⁻¹)
LAMBDA_A = GEO.wavelength_A
CEO2_SIZE_NM = 300.0  # the simulator's CeO2 crystallite size (ceo2_profile default)


def _inst_q(q, two_theta_deg):
    cos_t = np.cos(np.arcsin(q * LAMBDA_A / (4 * np.pi)))
    return 2 * np.pi / LAMBDA_A * cos_t * np.radians(two_theta_deg)


@pytest.mark.parametrize("inst_deg", [0.02, 0.04])
def test_width_of_simulated_instrument(inst_deg):
    sim = XRDFrameSimulator(GEO, instrument_fwhm_2theta_deg=inst_deg)
    frame = sim.ceo2_frame(seed=1)
    # fine Q bins (0.0013 Å⁻¹) so that the binning adds < 0.3 % to the width
    res = instrument_fwhm(frame.image, geometry=frame.geometry, npt=8000,
                          calibrant_size_nm=CEO2_SIZE_NM)
    assert isinstance(res, InstrumentWidth) and res.model == "constant_2theta"
    # Δ2θ within 1.5 % (measured: +0.40 % at 0.02°, +0.15 % at 0.04°)
    assert res.params["fwhm_2theta_deg"] == pytest.approx(inst_deg, rel=0.015)
    # every resolved reflection within 3 % of the truth at its own Q
    assert res.peak_q_A_inv.size >= 8  # 16 at 0.02°, 8 at 0.04°
    ratio = res.peak_fwhm_A_inv / _inst_q(res.peak_q_A_inv, inst_deg)
    assert np.all(np.abs(ratio - 1) < 0.03), ratio
    assert res.rel_scatter < 0.01
    # the scalar for refine_pattern: the model averaged over the reflections used
    mid = _inst_q(np.mean(res.average_range_A_inv), inst_deg)
    assert res.instrument_fwhm_A_inv == pytest.approx(mid, rel=0.015)
    assert res.fwhm_A_inv(np.array([2.0, 8.0])) == pytest.approx(
        _inst_q(np.array([2.0, 8.0]), inst_deg), rel=0.015)
    # the pseudo-Voigt mixing of the simulator (η = 0.4)
    assert np.median(res.peak_eta) == pytest.approx(0.4, abs=0.03)
    # the Caglioti model describes the same constant-Δ2θ instrument within 1 %
    cag = instrument_fwhm(frame.image, geometry=frame.geometry, npt=8000,
                          calibrant_size_nm=CEO2_SIZE_NM, model="caglioti")
    q = np.linspace(2.0, 9.0, 8)
    assert cag.fwhm_A_inv(q) == pytest.approx(_inst_q(q, inst_deg), rel=0.01)


def _caglioti_pattern(u, v, w, seed=0):
    """1-D CeO2 pattern, pseudo-Voigt (η = 0.3) FWHM from Caglioti's law (deg²)."""
    from pyFAI.calibrant import get_calibrant

    q = np.arange(1.0, 10.5, 0.0008)
    qk = np.unique(np.round(2 * np.pi / np.asarray(get_calibrant("CeO2").dspacing), 9))
    qk = qk[(qk > 1.2) & (qk < 10.3)]
    tan_t = np.tan(np.arcsin(qk * LAMBDA_A / (4 * np.pi)))
    wk = _inst_q(qk, np.sqrt(u * tan_t**2 + v * tan_t + w))
    area = np.full(qk.shape, 20.0)
    x = (q[:, None] - qk[None, :]) / wk[None, :]
    lor = (2 / (np.pi * wk)) / (1 + 4 * x**2)
    gau = (2 * np.sqrt(np.log(2) / np.pi) / wk) * np.exp(-4 * np.log(2) * x**2)
    y = (area * (0.3 * lor + 0.7 * gau)).sum(axis=1) + 200.0 + 30.0 * np.exp(-q / 2)
    sigma = np.sqrt(y / 200.0)
    y = y + sigma * np.random.default_rng(seed).standard_normal(q.size)
    return q, y, sigma, (lambda qq: _inst_q(qq, np.sqrt(u * np.tan(np.arcsin(
        qq * LAMBDA_A / (4 * np.pi))) ** 2 + v * np.tan(np.arcsin(qq * LAMBDA_A / (4 * np.pi)))
        + w)))


def test_caglioti_known_answer_on_a_pattern():
    u, v, w = 0.1, 0.0, 4e-4  # deg²: FWHM 0.02° at 2θ → 0, 0.037° at Q = 9 Å⁻¹
    q, y, s, truth = _caglioti_pattern(u, v, w)
    cag = instrument_fwhm(q, y, sigma=s, geometry={"wavelength_A": LAMBDA_A}, model="caglioti")
    grid = np.linspace(1.5, 10.0, 12)
    assert cag.fwhm_A_inv(grid) == pytest.approx(truth(grid), rel=0.01)
    assert cag.params["W_deg2"] == pytest.approx(w, rel=0.05)
    assert cag.rel_scatter < 0.01
    # a constant Δ2θ cannot describe it: its per-peak residuals are tens of per cent
    const = instrument_fwhm(q, y, sigma=s, geometry={"wavelength_A": LAMBDA_A})
    assert const.rel_scatter > 0.1
    d = cag.to_dict()
    assert d["model"] == "caglioti" and len(d["peaks"]["q_A_inv"]) == cag.peak_q_A_inv.size


def test_measured_width_recovers_the_microstrain():
    """The width from the CeO2 frame, integrated like the cell frame, gives ε within 15 %."""
    sim = XRDFrameSimulator(GEO)  # 0.02° instrument
    integ = Integrator(GEO.to_dict(), npt=2500)  # the operando callback's binning
    width = instrument_fwhm(sim.ceo2_frame(seed=3).image, integrator=integ)
    cell = CoinCell("SC-NM91", 10.0, soc=0.05)
    (truth,) = cell.lattice()
    q, i, s = integ(sim.cell_frame(cell, seed=5).image)
    res = refine_pattern(q, i, LAMBDA_A, sigma=s, instrument_fwhm_A_inv=width.instrument_fwhm_A_inv)
    # measured: ε = 1.09 × truth (5.0e-4), D = 267 nm (truth 200)
    assert res.phases[0].microstrain == pytest.approx(truth.microstrain, rel=0.15)
    # without the instrumental width, ε comes out about half the truth
    naive = refine_pattern(q, i, LAMBDA_A, sigma=s)
    assert naive.phases[0].microstrain < 0.7 * truth.microstrain


def test_calibrate_adds_the_width():
    sim = XRDFrameSimulator(GEO)
    frame = sim.ceo2_frame(seed=2)
    truth = frame.geometry
    # nominal set-up: distance 3 % long, beam centre (1.5, −1) px off; the outer CeO2 rings
    # are ~2 px apart on this 800 µm-pixel detector (the first cycle uses the inner rings)
    approx = dict(truth, distance_m=1.03, poni1_m=truth["poni1_m"] + 0.0012,
                  poni2_m=truth["poni2_m"] - 0.0008)
    g, diag = calibrate(frame.image, approx, measure_width=True, return_diagnostics=True,
                        width_options={"npt": 2500})
    fit = make_azimuthal_integrator(g).getFit2D()
    true = make_azimuthal_integrator(truth).getFit2D()
    # measured: centre within 0.015 px, direct-beam distance within 0.1 mm
    assert abs(fit["centerX"] - true["centerX"]) < 0.05
    assert abs(fit["centerY"] - true["centerY"]) < 0.05
    assert abs(fit["directDist"] - true["directDist"]) < 0.2
    assert g["instrument_fwhm_A_inv"] == pytest.approx(_inst_q(5.0, 0.02), rel=0.06)
    assert diag["instrument_width"]["instrument_fwhm_A_inv"] == g["instrument_fwhm_A_inv"]
    assert validate_geometry(g)["instrument_fwhm_A_inv"] == g["instrument_fwhm_A_inv"]
    # the instrument function (Caglioti by default) rides with the geometry: the simulated
    # instrument is a constant 0.02° (U = V = 0, W = 4e-4 deg²) plus the 2500-bin binning
    fn = g["instrument_function"]
    assert fn["model"] == "caglioti" and fn["eta"] == pytest.approx(0.4, abs=0.03)
    assert make_azimuthal_integrator(g) is not None and validate_geometry(g)["instrument_function"] == fn
    assert np.sqrt(fn["W_deg2"]) == pytest.approx(0.02, rel=0.1)
    assert "instrument_fwhm_A_inv" not in calibrate(frame.image, approx)
    # a background-only frame is rejected by the geometry step itself
    blank = sim.draw(sim.background(sim.q_A_inv), seed=2)
    with pytest.raises(FrameError, match="no CeO2 rings"):
        calibrate(blank, truth)


def test_bad_input():
    sim = XRDFrameSimulator(GEO)
    frame = sim.ceo2_frame(seed=4)
    with pytest.raises(ValueError, match="needs geometry"):
        instrument_fwhm(frame.image)
    with pytest.raises(ValueError, match="model must be"):
        instrument_fwhm(frame.image, geometry=frame.geometry, model="cubic")
    with pytest.raises(ValueError, match="unknown calibrant"):
        instrument_fwhm(frame.image, geometry=frame.geometry, calibrant="unobtainium")
    with pytest.raises(ValueError, match="needs intensity"):
        instrument_fwhm(np.linspace(1, 9, 500), geometry=frame.geometry)
    # a frame without calibrant rings (a flat background)
    flat = sim.draw(sim.background(sim.q_A_inv), seed=1)
    with pytest.raises(PatternError, match="no CeO2 reflections"):
        instrument_fwhm(flat, geometry=frame.geometry)
