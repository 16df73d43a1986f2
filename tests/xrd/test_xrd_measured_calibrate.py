"""Calibration and PONI files on measured public data (tests/data/measured/SOURCES.md).

Reference: the facility's own calibration of the Dioptas test image CeO2_Pilatus1M.tif
(pyFAI, version-1 PONI file CeO2_Pilatus1M.poni, written for Dioptas's up-down flipped image,
i.e. pyFAI orientation 2 on the raw file): direct-beam distance 208.689 mm, beam centre
x = 487.259, y = 512.548 px, tilt 1.083° (the fit2d values in the header of
CeO2_Pilatus1M.xy).
"""

import json
from pathlib import Path

import numpy as np
import pytest

from strainstream.cli.xrd import _read_image, main
from strainstream.xrd import (
    FrameError,
    calibrate,
    geometry_to_poni,
    load_poni,
    make_azimuthal_integrator,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "measured"
IMAGE = DATA / "CeO2_Pilatus1M.tif.gz"
# published (fit2d form of the facility's PONI, header of CeO2_Pilatus1M.xy)
REF_DIST_MM, REF_X_PX, REF_Y_PX, REF_TILT_DEG = 208.689, 487.259, 512.548, 1.083


@pytest.fixture(scope="module")
def image():
    return _read_image(IMAGE)


@pytest.fixture(scope="module")
def published(image):
    g = load_poni(DATA / "CeO2_Pilatus1M.poni", shape=image.shape, orientation=2)
    return dict(g, detector="Pilatus1M")


def _rough(published, d_dist=1.10, d1_m=3e-3, d2_m=-1e-3):
    """Rough start: distance off by d_dist, beam centre off by (d1, d2) m, no tilt."""
    f2d = make_azimuthal_integrator(published).getFit2D()
    px = published["pixel_size_um"][0] * 1e-6
    return dict(published, distance_m=published["distance_m"] * d_dist, rot1=0.0, rot2=0.0,
                rot3=0.0, poni1_m=f2d["centerY"] * px + d1_m, poni2_m=f2d["centerX"] * px + d2_m)


def test_published_geometry_is_read_as_published(published):
    f2d = make_azimuthal_integrator(published).getFit2D()
    assert f2d["directDist"] == pytest.approx(REF_DIST_MM, abs=1e-3)
    assert f2d["centerX"] == pytest.approx(REF_X_PX, abs=1e-3)
    assert f2d["centerY"] == pytest.approx(REF_Y_PX, abs=1e-3)
    assert f2d["tilt"] == pytest.approx(REF_TILT_DEG, abs=1e-3)


@pytest.mark.slow
def test_pilatus_calibration_from_a_rough_start(image, published):
    start = _rough(published)
    g, diag = calibrate(image, start, "CeO2", return_diagnostics=True)
    fit = make_azimuthal_integrator(g).getFit2D()
    ref = make_azimuthal_integrator(published).getFit2D()
    assert g["detector"] == "Pilatus1M" and g["orientation"] == 2
    # acceptance: 0.5 mm in distance, 2 px in beam centre, tilt refined
    assert abs(fit["directDist"] - ref["directDist"]) < 0.5
    assert abs(g["distance_m"] - published["distance_m"]) < 0.5e-3
    assert abs(fit["centerX"] - ref["centerX"]) < 2.0
    assert abs(fit["centerY"] - ref["centerY"]) < 2.0
    assert abs(fit["tilt"] - ref["tilt"]) < 0.1  # degrees (measured 0.02)
    assert abs(fit["tiltPlanRotation"] - ref["tiltPlanRotation"]) < 5.0
    assert diag["n_rings"] >= 15
    assert diag["rms_px"] < 0.4  # measured 0.19 px
    assert diag["n_masked_px"] >= 73533  # the module gaps of the Pilatus 1M


def test_poor_calibration_is_refused(image, published):
    # a LaB6 calibrant on a CeO2 image: refused at the ring search, not a wrong geometry
    with pytest.raises(FrameError, match="no LaB6 rings"):
        calibrate(image, published, "LaB6", find_centre=False)
    # a residual limit below what the data allow: refused, naming the residual in pixels
    with pytest.raises(FrameError, match=r"ring residual 0\.\d\d px rms"):
        calibrate(image, published, "CeO2", find_centre=False, n_iter=0, max_rms_px=0.05)


@pytest.mark.slow
def test_cli_calibrates_the_pilatus_tiff_with_a_version_1_poni(tmp_path, capsys):
    rough = tmp_path / "rough.poni"  # version 1, as the facility's; no detector shape
    rough.write_text("# rough start\nPixelSize1: 0.000172\nPixelSize2: 0.000172\n"
                     "Distance: 0.2295\nPoni1: 0.0912\nPoni2: 0.0828\nRot1: 0\nRot2: 0\n"
                     "Rot3: 0\nSplineFile: None\nWavelength: 4.066e-11\n")
    out = tmp_path / "geom.json"
    rc = main(["calibrate", str(IMAGE), "--approx", str(rough), "--detector", "Pilatus1M",
               "--orientation", "2", "--no-width", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "rings, rms residual 0." in captured.out
    g = json.loads(out.read_text())
    fit = make_azimuthal_integrator(g).getFit2D()
    assert abs(fit["directDist"] - REF_DIST_MM) < 0.5
    assert abs(fit["centerX"] - REF_X_PX) < 2.0 and abs(fit["centerY"] - REF_Y_PX) < 2.0


# ------------------------------------------------------------------ PONI files, all versions
@pytest.mark.parametrize("name, version, shape, expect", [
    # Dioptas test data: version 1 (no detector), version 2 (generic detector, no shape),
    # version 2.1 with Dioptas's orientation
    ("CeO2_Pilatus1M.poni", 1, (1043, 981),
     dict(distance_m=0.208651380603, poni1_m=0.0872948482846, rot1=-0.0184422457059,
          wavelength_A=0.4066, pixel_size_um=[172.0, 172.0])),
    ("transfer.poni", 2, (1043, 981),
     dict(distance_m=0.240882519989, rot1=-0.489909991194, wavelength_A=0.2952)),
    ("Lambda_L2.poni", 2, (516, 1556),
     dict(distance_m=0.3091923560063649, pixel_size_um=[55.0, 55.0], wavelength_A=0.4836)),
    ("LaB6_40keV_MarCCD_new_with_orientation.poni", 2.1, (2048, 2048),
     dict(distance_m=0.196711580484, poni2_m=0.0820662115429, orientation=2,
          wavelength_A=0.31)),
])
def test_every_poni_version_loads(name, version, shape, expect):
    path = DATA / name
    with pytest.raises(ValueError, match="holds no detector shape.*image shape"):
        load_poni(path)
    g = load_poni(path, shape=shape)
    assert g["shape"] == list(shape)
    for key, value in expect.items():
        assert g[key] == pytest.approx(value, rel=1e-12), key


def test_poni_written_by_pyfai_and_by_us_round_trip(tmp_path, published):
    import pyFAI

    # pyFAI's own writer (the newest version it writes), with a named detector
    ai = make_azimuthal_integrator(published)
    ai.save(str(tmp_path / "pyfai.poni"))
    text = (tmp_path / "pyfai.poni").read_text()
    assert "poni_version" in text
    g = load_poni(tmp_path / "pyfai.poni")  # named detector: the shape comes with it
    assert g["detector"] == "Pilatus1M" and g["orientation"] == 2 and g["shape"] == [1043, 981]
    for k in ("distance_m", "poni1_m", "poni2_m", "rot1", "rot2", "wavelength_A"):
        assert g[k] == pytest.approx(published[k], rel=1e-12)
    # ours: version 2.1 with detector and orientation, read back by pyFAI and by load_poni
    (tmp_path / "ours.poni").write_text(geometry_to_poni(published))
    back = pyFAI.load(str(tmp_path / "ours.poni"))
    assert int(back.detector.orientation) == 2 and back.detector.max_shape == (1043, 981)
    again = load_poni(tmp_path / "ours.poni")
    assert {k: again[k] for k in ("detector", "orientation", "shape")} == \
        {"detector": "Pilatus1M", "orientation": 2, "shape": [1043, 981]}
    # the geometry puts the ring centre where the published one does on the raw image
    tth = make_azimuthal_integrator(again).center_array((1043, 981), unit="2th_rad")
    row, col = np.unravel_index(np.argmin(tth), tth.shape)
    assert abs(row - (1043 - REF_Y_PX)) < 1.5 and abs(col - REF_X_PX) < 1.5


# ------------------------------------------------------------------ detectors and masks
def test_detectors_by_name():
    from strainstream.xrd import make_detector

    flat = dict(distance_m=1.0, poni1_m=0.2, poni2_m=0.2, rot1=0.0, rot2=0.0, rot3=0.0,
                wavelength_A=0.1665, pixel_size_um=200.0, shape=[2048, 2048])
    perkin = make_detector(dict(flat, detector="Perkin"))  # 2×2-binned read-out
    assert perkin.shape == (2048, 2048) and perkin.pixel1 == pytest.approx(200e-6)
    eiger = make_detector(dict(flat, detector="Eiger2_4M", pixel_size_um=75.0,
                               shape=[2162, 2068], orientation=2))
    assert eiger.mask.sum() > 200_000  # module gaps
    assert int(eiger.orientation) == 2
    with pytest.raises(ValueError, match=r"'Pilatus1M' has \(1043, 981\) pixels"):
        make_detector(dict(flat, detector="Pilatus1M"))
    with pytest.raises(ValueError, match="unknown pyFAI detector 'NoSuch'"):
        make_detector(dict(flat, detector="NoSuch"))
    with pytest.raises(ValueError, match="orientation must be"):
        make_detector(dict(flat, orientation=5))


def test_masks_negative_saturated_gap_and_user_pixels(image, published):
    user = np.zeros(image.shape, bool)
    user[:100, :200] = True  # e.g. a shadowed corner from a user mask file
    _, diag = calibrate(image, published, "CeO2", find_centre=False, n_iter=0, mask=user,
                        saturation_level=2000, return_diagnostics=True)
    from strainstream.xrd import make_detector

    gaps = make_detector(published).mask.astype(bool)
    expected = gaps | (image < 0) | (image >= 2000) | user
    assert diag["n_masked_px"] == np.count_nonzero(expected)
    assert np.count_nonzero(image >= 2000) > 1000  # the saturation level did mask ring pixels
    with pytest.raises(FrameError, match="mask shape"):
        calibrate(image, published, "CeO2", mask=user[:10])


def test_cli_reads_a_user_mask_file(tmp_path, capsys):
    user = np.zeros((1043, 981), np.uint8)
    user[:40] = 1
    np.save(tmp_path / "mask.npy", user)
    rc = main(["calibrate", str(IMAGE), "--approx", str(DATA / "CeO2_Pilatus1M.poni"),
               "--detector", "Pilatus1M", "--orientation", "2", "--no-width", "--json",
               "--mask", str(tmp_path / "mask.npy"), "--max-rms-px", "0.5",
               "--no-centre-search"])  # the facility's centre is good to a pixel
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    g = json.loads(captured.out)
    assert abs(g["distance_m"] - 0.208651380603) < 0.5e-3
    np.save(tmp_path / "small.npy", user[:10])
    rc = main(["calibrate", str(IMAGE), "--approx", str(DATA / "CeO2_Pilatus1M.poni"),
               "--mask", str(tmp_path / "small.npy")])
    assert rc == 2 and "has shape (10, 981)" in capsys.readouterr().err
