"""Frame simulator: Caglioti instrument, peak-shape η and per-sector lattices (known answers)."""

import numpy as np
import pytest

from strainstream.sim.xrd_frames import DetectorGeometry, XRDFrameSimulator

GEO = DetectorGeometry.binned(8, wavelength_A=0.452, distance_m=0.5)  # 256², 17-BM-like


def test_caglioti_width_and_eta():
    u, v, w = 0.05, -0.005, 1.2e-3
    sim = XRDFrameSimulator(GEO, instrument_caglioti_deg2=(u, v, w), peak_eta=0.3)
    q = np.array([1.0, 3.0, 6.0])
    t = np.tan(np.arcsin(q * GEO.wavelength_A / (4 * np.pi)))
    d2t = np.sqrt(u * t * t + v * t + w)
    assert sim.instrument_fwhm_2theta_deg_at(q) == pytest.approx(d2t, rel=1e-12)
    dq = 2 * np.pi / GEO.wavelength_A * np.cos(np.arctan(t)) * np.radians(d2t)
    assert sim.instrument_fwhm_A_inv(q) == pytest.approx(dq, rel=1e-12)
    # a lone CeO2 peak of the 1-D model: its FWHM (half-maximum crossings) is the
    # quadrature sum of the instrument and the 300 nm size width, within 1 %
    qq, y = sim.ceo2_profile(background_level=0.0)
    k = (qq > 2.0) & (qq < 2.05)  # CeO2 (111) at 2.010 Å⁻¹
    x, yy = qq[k], y[k]
    half = yy.max() / 2
    above = x[yy >= half]
    fwhm = above[-1] - above[0] + (x[1] - x[0])
    expected = np.hypot(sim.instrument_fwhm_A_inv(np.array([2.010]))[0],
                        2 * np.pi * 0.9 / 3000.0)
    assert fwhm == pytest.approx(expected, rel=0.1)  # grid step 5e-4 on a 0.01 Å⁻¹ peak
    # η sets the tails: 10 FWHM out, the Lorentzian share dominates
    sim_l = XRDFrameSimulator(GEO, instrument_caglioti_deg2=(u, v, w), peak_eta=0.9)
    _, y_l = sim_l.ceo2_profile(background_level=0.0)
    far = np.argmin(np.abs(qq - (x[np.argmax(yy)] + 10 * expected)))
    assert y_l[far] > 2.5 * y[far]
    with pytest.raises(ValueError, match="non-positive"):
        XRDFrameSimulator(GEO, instrument_caglioti_deg2=(0.0, -0.01, 1e-4))
    with pytest.raises(ValueError, match="peak_eta"):
        XRDFrameSimulator(GEO, peak_eta=1.5)


def test_sector_frame_draws_each_sector_from_its_own_lattice():
    sim = XRDFrameSimulator(GEO)
    base = dict(a_A=2.87, fraction=1.0, microstrain=5e-4, size_nm=200.0)
    fr = sim.sector_frame([[dict(base, c_A=14.20)], [dict(base, c_A=14.40)]], noise=False)
    chi = np.asarray(sim.ai.center_array(GEO.shape, unit="chi_deg", scale=True))
    # the expected image of each half equals the one-lattice frame on those pixels
    for c, sel in ((14.20, chi < 0), (14.40, chi >= 0)):
        one = sim.frame([dict(base, c_A=c)], noise=False).image
        assert np.array_equal(fr.image[sel], one[sel])
    assert [p[0]["c_A"] for p in fr.metadata["sector_phases"]] == [14.20, 14.40]
    with pytest.raises(ValueError, match="empty"):
        sim.sector_frame([])
