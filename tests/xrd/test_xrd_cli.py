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
