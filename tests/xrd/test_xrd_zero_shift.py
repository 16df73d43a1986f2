"""A laboratory Bragg-Brentano pattern with a 2θ zero error (issue 20): refined with the zero
shift (strainstream.xrd.refine_two_theta_pattern, `xrd refine --zero-shift`), the lattice
comes back; without it, c is biased by the shift's cot θ lever on the low-angle 00l lines."""

import json

import numpy as np
import pytest
from _xrd_synth import synth_pattern

from strainstream.cli.xrd import main
from strainstream.xrd import CU_KALPHA1_A, CU_KALPHA2_A, PatternError, refine_two_theta_pattern

TRUTH = dict(a_A=2.8160, c_A=14.0500, microstrain=5e-4, size_nm=300.0, fraction=1.0)  # LiCoO2-like
ZERO_DEG = 0.095  # observed 2θ = true 2θ + zero (the size PowBase's LiCoO2 pattern shows)


def _lab_pattern(zero_deg, *, doublet=False, seed=0):
    tth = np.arange(15.0, 120.0, 0.02)

    def one_line(lam):
        q = 4 * np.pi * np.sin(np.radians(tth - zero_deg) / 2) / lam
        return synth_pattern([TRUTH], q=q, wavelength_A=lam, noise=False, al_scale=0,
                             background=0.0, w_inst=0.003)[1]

    mu = one_line(CU_KALPHA1_A) + (0.5 * one_line(CU_KALPHA2_A) if doublet else 0.0) + 300.0
    return tth, np.random.default_rng(seed).poisson(mu).astype(float)


def test_refined_zero_recovers_the_shift_and_the_lattice():
    tth, y = _lab_pattern(ZERO_DEG)
    plain = refine_two_theta_pattern(tth, y, CU_KALPHA1_A, phases=1, al="none")
    assert plain.zero_shift_deg == 0.0
    # uncorrected, c is short by ~2.5e-3 relative (more than 100x what the data support)
    assert TRUTH["c_A"] - plain.phases[0].c_A > 0.02
    res = refine_two_theta_pattern(tth, y, CU_KALPHA1_A, zero_deg="refine", phases=1, al="none")
    p = res.phases[0]
    assert res.zero_shift_deg == pytest.approx(ZERO_DEG, abs=0.003)
    assert p.a_A == pytest.approx(TRUTH["a_A"], rel=5e-5)
    assert p.c_A == pytest.approx(TRUTH["c_A"], rel=5e-5)
    assert res.rwp < plain.rwp and "zero_at_bound" not in res.flags
    assert res.to_dict()["zero_shift_deg"] == res.zero_shift_deg
    # a given zero is applied as it is
    fixed = refine_two_theta_pattern(tth, y, CU_KALPHA1_A, zero_deg=ZERO_DEG, phases=1, al="none")
    assert fixed.phases[0].c_A == pytest.approx(TRUTH["c_A"], rel=5e-5)


def test_zero_beyond_the_search_is_flagged_and_bad_zeros_refused():
    tth, y = _lab_pattern(0.25)
    res = refine_two_theta_pattern(tth, y, CU_KALPHA1_A, zero_deg="refine", zero_range_deg=0.1,
                                   phases=1, al="none")
    assert "zero_at_bound" in res.flags
    with pytest.raises(PatternError, match="zero shift"):
        refine_two_theta_pattern(tth, y, CU_KALPHA1_A, zero_deg=float("nan"))
    with pytest.raises(PatternError, match="2θ values"):
        refine_two_theta_pattern(tth + 100, y, CU_KALPHA1_A)


def test_cli_refines_the_zero_of_a_copper_doublet_pattern(tmp_path, capsys):
    tth, y = _lab_pattern(ZERO_DEG, doublet=True, seed=3)
    f = tmp_path / "lab.xy"
    np.savetxt(f, np.column_stack([tth, y]))
    args = ["refine", str(f), "--x", "two_theta_deg", "--kalpha2", "--al", "none", "--phases", "1",
            "--instrument-fwhm", "0"]
    assert main([*args, "--zero-shift", "refine", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["zero_shift_deg"] == pytest.approx(ZERO_DEG, abs=0.005)
    assert out["phases"][0]["c_A"] == pytest.approx(TRUTH["c_A"], rel=1e-4)
    assert main([*args, "--zero-shift", "refine"]) == 0
    assert "2θ zero = +0.09" in capsys.readouterr().out
    assert main([*args, "--zero-shift", "0.095", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["phases"][0]["c_A"] == pytest.approx(TRUTH["c_A"], rel=1e-4)
    for bad, msg in ((["--zero-shift", "abc"], "degrees or 'refine'"), (["--zero-shift", "7"], "below 5")):
        assert main([*args, *bad]) == 2
        assert msg in capsys.readouterr().err
    q_args = ["refine", str(f), "--zero-shift", "refine"]
    assert main(q_args) == 2
    assert "needs a 2θ pattern" in capsys.readouterr().err
