"""`strainstream xrd refine FILE.xy` through strainstream.cli.xrd.main."""

import json

import numpy as np
import pytest
from _xrd_synth import LAMBDA_A, synth_pattern

from strainstream.cli.xrd import main

TRUTH = dict(a_A=2.8712, c_A=14.2013, microstrain=1.2e-3, size_nm=150.0, fraction=1.0)


@pytest.fixture(scope="module")
def pattern():
    q, y, _, _ = synth_pattern([TRUTH], seed=7)
    return q, y


def _write(path, x, y, header="# Q_A^-1 intensity\n"):
    with open(path, "w") as fh:
        fh.write(header)
        for a, b in zip(x, y, strict=True):
            fh.write(f"{a:.7f} {b:.3f}\n")
    return str(path)


def test_refine_json_q(tmp_path, pattern, capsys):
    f = _write(tmp_path / "p.xy", *pattern)
    rc = main(["refine", f, "--wavelength", "0.1665", "--json", "--instrument-fwhm", "0.004"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    d = json.loads(out.out)
    p = d["phases"][0]
    assert abs(p["a_A"] - TRUTH["a_A"]) < 2e-4
    assert abs(p["c_A"] - TRUTH["c_A"]) < 2e-3
    for key in ("volume_A3", "microstrain", "size_nm", "fraction", "a_err_A", "c_err_A"):
        assert key in p
    assert "rwp" in d and d["n_phases"] == 1


def test_refine_two_theta_and_text(tmp_path, pattern, capsys):
    q, y = pattern
    tth = 2 * np.degrees(np.arcsin(q * LAMBDA_A / (4 * np.pi)))
    f = _write(tmp_path / "p2.xy", tth, y, header="# 2theta intensity\n# second comment\n")
    rc = main(["refine", f, "--x", "two_theta_deg", "--phases", "1", "--json"])
    d = json.loads(capsys.readouterr().out)
    assert rc == 0 and abs(d["phases"][0]["c_A"] - TRUTH["c_A"]) < 2e-3
    rc = main(["refine", f, "--x", "two_theta_deg"])
    out = capsys.readouterr().out
    assert rc == 0 and "phase 1: a = 2.87" in out


@pytest.mark.parametrize("content,extra,message", [
    (None, [], "no such file"),
    ("# nothing\n", [], "data rows"),
    ("1.0 2.0\nabc def\n", [], "not a number"),
    ("1.0\n", [], "two columns"),
])
def test_unreadable_files(tmp_path, capsys, content, extra, message):
    path = tmp_path / "bad.xy"
    if content is not None:
        path.write_text(content)
    rc = main(["refine", str(path), *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("strainstream xrd: error: ") and message in err
    assert err.count("\n") == 1


def test_pattern_without_layered_peaks(tmp_path, capsys):
    q = np.linspace(0.8, 8, 3000)
    f = _write(tmp_path / "flat.xy", q, 1000 + 100 * np.exp(-q))
    assert main(["refine", f, "--json"]) == 2
    captured = capsys.readouterr()
    assert "no layered-oxide" in captured.err and captured.out == ""


def test_wrong_wavelength(tmp_path, pattern, capsys):
    q, y = pattern
    f = _write(tmp_path / "p.xy", q, y)
    assert main(["refine", f, "--wavelength", "2.2909"]) == 2  # Cr Kα: 4π/λ < 8 Å⁻¹
    assert "wrong wavelength" in capsys.readouterr().err
    tth = 2 * np.degrees(np.arcsin(q * LAMBDA_A / (4 * np.pi)))
    f2 = _write(tmp_path / "t.xy", tth, y)
    assert main(["refine", f2, "--x", "two_theta_deg", "--wavelength", "0.4520"]) == 2
    assert "wavelength" in capsys.readouterr().err


def test_bad_arguments(tmp_path, capsys):
    assert main(["refine", "x.xy", "--phases", "3"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main([]) == 0


def test_calibration_file_gives_the_instrument_function(tmp_path, pattern, capsys):
    """--calibration GEOM.json removes the calibrant's instrumental FWHM (and supplies λ); without
    any width option the refinement warns and reads the instrument's breadth as the sample's (#21 point 5)."""
    f = _write(tmp_path / "p.xy", *pattern)
    geometry = {"distance_m": 1.0, "poni1_m": 0.2045, "poni2_m": 0.2055, "rot1": 0.0, "rot2": 0.0,
                "rot3": 0.0, "wavelength_A": LAMBDA_A, "pixel_size_um": 200.0, "shape": [2048, 2048],
                "instrument_fwhm_A_inv": 0.004}  # synth_pattern's w_inst
    geo = tmp_path / "geom.json"
    geo.write_text(json.dumps(geometry))
    assert main(["refine", f, "--calibration", str(geo), "--json"]) == 0
    out = capsys.readouterr()
    assert "warning" not in out.err
    with_cal = json.loads(out.out)["phases"][0]
    assert main(["refine", f, "--instrument-fwhm", "0.004", "--wavelength", str(LAMBDA_A), "--json"]) == 0
    explicit = json.loads(capsys.readouterr().out)["phases"][0]
    assert with_cal == explicit  # the file's width and wavelength are exactly the options'
    assert abs(with_cal["microstrain"] - TRUTH["microstrain"]) < 0.1 * TRUTH["microstrain"]
    assert main(["refine", f, "--json"]) == 0
    out = capsys.readouterr()
    assert out.err.startswith("strainstream xrd: warning: no instrumental width")
    assert len(out.err.strip().splitlines()) == 1
    without = json.loads(out.out)["phases"][0]
    assert without["size_nm"] < 0.8 * with_cal["size_nm"]  # instrument breadth read as small crystallites
    # a calibration without a measured width is refused, naming what to do
    del geometry["instrument_fwhm_A_inv"]
    geo.write_text(json.dumps(geometry))
    assert main(["refine", f, "--calibration", str(geo)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("strainstream xrd: error: ") and "no instrument_fwhm_A_inv" in err



def test_calibration_instrument_function_gives_per_peak_widths(tmp_path, capsys):
    """A calibration carrying the instrument function (Caglioti U, V, W, η) is used per peak.

    Known answer: a 17-BM-like instrument (λ = 0.452 Å, U 0.05, V −0.005, W 1.2e-3 deg²,
    η 0.3) whose width varies across the pattern as much as the sample's. The simulated
    CeO2 frame gives the calibration's instrument function; the SC-NM91 cell frame at
    ε = 1.93·10⁻³ (soc 0.95), integrated to an .xy file (no σ column), is refined from the
    command line with that calibration file: ε within 10 % (measured −6.6 %) and exactly the library call
    with ``instrument=``. (At ε = 5·10⁻⁴ the sample is ~5 % of the peak width and ε moves
    by ±15 % with the weights alone: −18 % from this file, +0.7 % with the integrator's σ.)"""
    from strainstream.sim.cell import CoinCell
    from strainstream.sim.xrd_frames import DetectorGeometry, XRDFrameSimulator
    from strainstream.xrd import Integrator, instrument_fwhm, refine_pattern

    lam = 0.4520
    sim = XRDFrameSimulator(DetectorGeometry.binned(4, wavelength_A=lam, distance_m=0.5),
                            instrument_caglioti_deg2=(0.05, -0.005, 1.2e-3), peak_eta=0.3)
    integ = Integrator(sim.geometry.to_dict(), npt=2500)
    width = instrument_fwhm(sim.ceo2_frame(seed=3).image, integrator=integ, model="caglioti",
                            calibrant_size_nm=300.0)
    cell = CoinCell("SC-NM91", 10.0, soc=0.95)
    (truth,) = cell.lattice()
    q, y, _ = integ(sim.cell_frame(cell, seed=5).image)
    f = _write(tmp_path / "p.xy", q, y)
    geometry = dict(sim.geometry.to_dict(), instrument_fwhm_A_inv=width.instrument_fwhm_A_inv,
                    instrument_function=width.instrument_function())
    geo = tmp_path / "geom.json"
    geo.write_text(json.dumps(geometry))
    assert main(["refine", f, "--calibration", str(geo), "--phases", "1", "--json"]) == 0
    out = capsys.readouterr()
    assert "warning" not in out.err
    got = json.loads(out.out)["phases"][0]
    qf, yf = np.loadtxt(f, unpack=True)
    lib = refine_pattern(qf, yf, lam, phases=1, instrument=width.instrument_function()).phases[0]
    assert got["microstrain"] == lib.microstrain and got["c_A"] == lib.c_A
    assert got["microstrain"] == pytest.approx(truth.microstrain, rel=0.10)
    # an unusable instrument function in the file is a one-line error
    geometry["instrument_function"] = {"model": "caglioti", "U_deg2": 0.05}
    geo.write_text(json.dumps(geometry))
    assert main(["refine", f, "--calibration", str(geo)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("strainstream xrd: error: ") and len(err.strip().splitlines()) == 1
