"""CeO2 geometry calibration: a fake CeO2 frame with known (tilted) geometry is recovered."""

import json

import numpy as np
import pytest

from strainstream.xrd import (
    GEOMETRY_KEYS,
    FrameError,
    calibrate,
    geometry_to_poni,
    load_poni,
    make_azimuthal_integrator,
    pixel_two_theta_rad,
    save_poni,
)

TRUTH = dict(distance_m=1.05, poni1_m=0.2001, poni2_m=0.2110, rot1=0.012, rot2=-0.008, rot3=0.0,
             wavelength_A=0.1665, pixel_size_um=[400.0, 400.0], shape=[1024, 1024])


@pytest.fixture(scope="module")
def ceo2_frame():
    from pyFAI.calibrant import get_calibrant

    cal = get_calibrant("CeO2")
    cal.wavelength = TRUTH["wavelength_A"] * 1e-10
    img = cal.fake_calibration_image(make_azimuthal_integrator(TRUTH), Imax=1000.0,
                                     resolution=0.03)
    return np.random.default_rng(0).poisson(img + 50).astype(float)


@pytest.fixture(scope="module")
def approx():
    """Nominal set-up: distance 5 % short, beam centre off by (2, −1.5) px, no tilt."""
    f2d = make_azimuthal_integrator(TRUTH).getFit2D()
    px = TRUTH["pixel_size_um"][0] * 1e-6
    return dict(TRUTH, distance_m=1.0, poni1_m=(f2d["centerY"] + 2) * px,
                poni2_m=(f2d["centerX"] - 1.5) * px, rot1=0.0, rot2=0.0)


@pytest.fixture(scope="module")
def calibrated_diag(ceo2_frame, approx):
    return calibrate(ceo2_frame, approx, "CeO2", return_diagnostics=True)


@pytest.fixture(scope="module")
def calibrated(calibrated_diag):
    return calibrated_diag[0]


def test_calibration_recovers_geometry(calibrated_diag):
    g, diag = calibrated_diag
    assert set(g) == set(GEOMETRY_KEYS)
    fit = make_azimuthal_integrator(g).getFit2D()
    true = make_azimuthal_integrator(TRUTH).getFit2D()
    # beam centre within 0.3 px, direct-beam distance within 0.5 mm
    assert abs(fit["centerX"] - true["centerX"]) < 0.3
    assert abs(fit["centerY"] - true["centerY"]) < 0.3
    assert abs(fit["directDist"] - true["directDist"]) < 0.5
    # the 2θ map: azimuthally averaged relative error < 5e-5 in every ring band
    # (what the lattice parameters see), per-pixel error < 0.02°
    yy, xx = np.mgrid[0:1024:2, 0:1024:2]
    t0 = pixel_two_theta_rad(yy.ravel(), xx.ravel(), TRUTH)
    t1 = pixel_two_theta_rad(yy.ravel(), xx.ravel(), g)
    band = np.digitize(t0, np.linspace(0.05, 0.18, 14))
    rel = [(t1 - t0)[band == k].mean() / t0[band == k].mean() for k in range(1, 14)]
    assert np.max(np.abs(rel)) < 5e-5
    assert np.degrees(np.max(np.abs(t1 - t0))) < 0.02
    assert diag["rms_2theta_deg"] < 0.01
    assert diag["n_control_points"] > 1000
    assert diag["calibrant"] == "CeO2"


def test_geometry_is_json_and_poni(calibrated, tmp_path):
    g = json.loads(json.dumps(calibrated))
    path = save_poni(g, tmp_path / "cal.poni")
    import pyFAI

    ai = pyFAI.load(str(path))
    assert ai.dist == pytest.approx(g["distance_m"], rel=1e-12)
    assert ai.rot2 == pytest.approx(g["rot2"], abs=1e-14)
    assert ai.wavelength == pytest.approx(g["wavelength_A"] * 1e-10, rel=1e-12)
    back = load_poni(path)
    for k in ("distance_m", "poni1_m", "poni2_m", "rot1", "rot2", "rot3", "wavelength_A"):
        assert back[k] == pytest.approx(g[k], rel=1e-12, abs=1e-15)
    assert back["shape"] == g["shape"] and back["pixel_size_um"] == g["pixel_size_um"]
    assert "poni_version: 2" in geometry_to_poni(g)
    # unit-suffixed rotation names are accepted as well
    alias = {("rot1_rad" if k == "rot1" else k): v for k, v in g.items()}
    assert make_azimuthal_integrator(alias).rot1 == pytest.approx(g["rot1"])


def test_calibration_bad_input(ceo2_frame, approx, tmp_path):
    with pytest.raises(FrameError, match="shape"):
        calibrate(ceo2_frame[:10], approx)
    with pytest.raises(FrameError, match="no CeO2 rings"):
        calibrate(np.random.default_rng(1).poisson(50, ceo2_frame.shape).astype(float), approx)
    with pytest.raises(ValueError, match="does not exist"):
        load_poni(tmp_path / "missing.poni")
