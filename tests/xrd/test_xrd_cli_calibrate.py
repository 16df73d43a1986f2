"""`strainstream xrd calibrate FRAME.h5 --approx GEOM.json` through strainstream.cli.xrd.main.

Truth: the frame simulator's detector geometry and instrument (0.02° 2θ FWHM).
"""

import json

import h5py
import numpy as np
import pytest

from strainstream.cli.xrd import main
from strainstream.sim.xrd_frames import DetectorGeometry, XRDFrameSimulator
from strainstream.xrd import make_azimuthal_integrator, validate_geometry

GEO = DetectorGeometry.binned(4)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cal")
    sim = XRDFrameSimulator(GEO)
    frame = sim.ceo2_frame(seed=11)
    blank = sim.draw(sim.background(sim.q_A_inv), seed=2)
    with h5py.File(d / "ceo2.h5", "w") as fh:  # a 3-D stack as an area detector writes it
        fh.create_dataset("/entry/data/data", data=np.stack([blank, frame.image]))
    np.save(d / "ceo2.npy", frame.image)
    np.save(d / "blank.npy", blank)
    truth = frame.geometry
    # nominal set-up: distance 2 % long, beam centre (1.5, −1) px off
    approx = dict(truth, distance_m=1.02, poni1_m=truth["poni1_m"] + 0.0012,
                  poni2_m=truth["poni2_m"] - 0.0008)
    (d / "approx.json").write_text(json.dumps(approx))
    (d / "bad.json").write_text("{not json")
    (d / "partial.json").write_text(json.dumps({"distance_m": 1.0}))
    return d, truth


def test_calibrate_h5_json_and_out(files, capsys):
    d, truth = files
    out = d / "geom.json"
    rc = main(["calibrate", str(d / "ceo2.h5"), "--approx", str(d / "approx.json"),
               "--index", "1", "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    g = json.loads(captured.out)
    assert json.loads(out.read_text()) == g
    validate_geometry(g)
    fit = make_azimuthal_integrator(g).getFit2D()
    true = make_azimuthal_integrator(truth).getFit2D()
    assert abs(fit["centerX"] - true["centerX"]) < 0.05  # pixels (800 µm)
    assert abs(fit["centerY"] - true["centerY"]) < 0.05
    # instrumental FWHM: 0.02° at λ = 0.1665 Å is 0.01316 Å⁻¹; the 2500-bin integration
    # and the simulator's 300 nm CeO2 add ≈3.5 % (measured 0.01365)
    inst = 2 * np.pi / truth["wavelength_A"] * np.radians(0.02)
    assert g["instrument_fwhm_A_inv"] == pytest.approx(1.035 * inst, rel=0.02)


def test_calibrate_npy_text(files, capsys):
    d, _ = files
    rc = main(["calibrate", str(d / "ceo2.npy"), "--approx", str(d / "approx.json"),
               "--no-width"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "control points" in out and "distance_m" in out
    assert "instrument_fwhm_A_inv" not in out


@pytest.mark.parametrize("args,message", [
    (["missing.h5", "--approx", "approx.json"], "no such file"),
    (["ceo2.h5", "--approx", "missing.json"], "no such file"),
    (["ceo2.h5", "--approx", "bad.json"], "JSON geometry"),
    (["ceo2.h5", "--approx", "partial.json"], "missing"),
    (["ceo2.h5", "--approx", "approx.json", "--dataset", "/entry/nothing"],
     "no dataset /entry/nothing; 2-D/3-D datasets in the file: /entry/data/data"),
    (["ceo2.h5", "--approx", "approx.json", "--index", "2"], "holds 2 frames"),
    (["ceo2.npy", "--approx", "approx.json", "--index", "1"], "one 2-D frame"),
    (["approx.json", "--approx", "approx.json"], "as HDF5"),
    (["blank.npy", "--approx", "approx.json"], "no CeO2 rings"),  # background only
])
def test_errors(files, capsys, args, message):
    d, _ = files
    args = [str(d / a) if a.endswith((".h5", ".json", ".npy")) else a for a in args]
    rc = main(["calibrate", *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("strainstream xrd: error: ") and message in err, err
    assert err.count("\n") == 1


def test_approx_is_required(capsys):
    assert main(["calibrate", "x.h5"]) == 2
    assert "--approx" in capsys.readouterr().err
