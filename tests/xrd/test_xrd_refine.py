"""Known-answer tests of refine_pattern on synthetic patterns from pymatgen intensities.

Tolerances (issue 5): a within 2e-4 Å, c within 2e-3 Å, microstrain within 15 %,
two-phase c within 0.01 Å and fractions within 0.05 — with Al peaks and Poisson noise.
"""

import json

import numpy as np
import pytest
from _xrd_synth import LAMBDA_A, synth_pattern

from strainstream.xrd import PatternError, refine_pattern

W_INST = 0.004

SINGLE = [
    dict(a_A=2.8712, c_A=14.2013, microstrain=1.2e-3, size_nm=150.0, fraction=1.0),
    dict(a_A=2.8391, c_A=14.4420, microstrain=6.0e-4, size_nm=300.0, fraction=1.0),
    dict(a_A=2.8150, c_A=13.6420, microstrain=2.5e-3, size_nm=80.0, fraction=1.0),
]


@pytest.mark.parametrize("truth", SINGLE, ids=["pristine", "H2", "H3"])
def test_single_phase_known_answer(truth):
    q, y, s, _ = synth_pattern([truth], seed=3)
    res = refine_pattern(q, y, LAMBDA_A, phases="auto", sigma=s, instrument_fwhm_A_inv=W_INST)
    assert res.n_phases == 1
    p = res.phases[0]
    assert abs(p.a_A - truth["a_A"]) < 2e-4
    assert abs(p.c_A - truth["c_A"]) < 2e-3
    assert p.microstrain == pytest.approx(truth["microstrain"], rel=0.15)
    assert p.size_nm == pytest.approx(truth["size_nm"], rel=0.25)
    assert p.fraction == 1.0
    v = np.sqrt(3) / 2 * truth["a_A"] ** 2 * truth["c_A"]
    assert p.volume_A3 == pytest.approx(v, abs=0.01)
    # uncertainties are positive, small, and the truth lies within 6σ (model is not exact)
    for val, err, true in ((p.a_A, p.a_err_A, truth["a_A"]), (p.c_A, p.c_err_A, truth["c_A"])):
        assert 0 < err < 1e-3
        assert abs(val - true) < 6 * err + 2e-5
    assert res.al_a_A == pytest.approx(4.0495, abs=2e-4)
    assert res.rwp < 0.05
    assert res.converged


def test_no_sigma_and_excluded_al_still_accurate():
    truth = SINGLE[0]
    q, y, _, _ = synth_pattern([truth], seed=5)
    for al in ("model", "exclude"):
        res = refine_pattern(q, y, LAMBDA_A, phases=1, al=al, instrument_fwhm_A_inv=W_INST)
        p = res.phases[0]
        assert abs(p.a_A - truth["a_A"]) < 2e-4, al
        assert abs(p.c_A - truth["c_A"]) < 2e-3, al
        assert p.microstrain == pytest.approx(truth["microstrain"], rel=0.15), al
    assert res.al_a_A is None  # excluded, not modelled


def test_ignoring_al_biases_the_fit():
    """A test that the Al handling matters: without it the fit is clearly worse."""
    truth = SINGLE[0]
    q, y, s, _ = synth_pattern([truth], seed=5, al_scale=0.4)
    good = refine_pattern(q, y, LAMBDA_A, phases=1, sigma=s, instrument_fwhm_A_inv=W_INST)
    bad = refine_pattern(q, y, LAMBDA_A, phases=1, sigma=s, al="none",
                         instrument_fwhm_A_inv=W_INST)
    assert bad.rwp > 2 * good.rwp


TWO = [
    dict(a_A=2.8190, c_A=14.400, microstrain=1.5e-3, size_nm=150.0, fraction=0.6),
    dict(a_A=2.8150, c_A=13.720, microstrain=2.0e-3, size_nm=120.0, fraction=0.4),
]


@pytest.mark.parametrize("fractions,dc", [((0.6, 0.4), 0.68), ((0.25, 0.75), 0.68), ((0.9, 0.1), 0.15),
                                          ((0.5, 0.5), 0.15)])
def test_two_phase_known_answer(fractions, dc):
    truth = [dict(TWO[0], fraction=fractions[0]),
             dict(TWO[1], fraction=fractions[1], c_A=TWO[0]["c_A"] - dc)]
    q, y, s, _ = synth_pattern(truth, seed=11)
    res = refine_pattern(q, y, LAMBDA_A, phases="auto", sigma=s, instrument_fwhm_A_inv=W_INST)
    assert res.n_phases == 2
    assert sum(p.fraction for p in res.phases) == pytest.approx(1.0)
    for p, t in zip(res.phases, truth, strict=True):  # phases come largest c first
        assert abs(p.c_A - t["c_A"]) < 0.01
        assert abs(p.fraction - t["fraction"]) < 0.05
        assert abs(p.a_A - t["a_A"]) < 2e-3
        assert p.fraction_err > 0


def test_forced_phase_count_overrides_auto():
    q, y, s, _ = synth_pattern([SINGLE[0]], seed=2)
    two = refine_pattern(q, y, LAMBDA_A, phases=2, sigma=s, instrument_fwhm_A_inv=W_INST)
    assert two.n_phases == 2
    assert sum(p.fraction for p in two.phases) == pytest.approx(1.0)
    q, y, s, _ = synth_pattern(TWO, seed=2)
    one = refine_pattern(q, y, LAMBDA_A, phases=1, sigma=s, instrument_fwhm_A_inv=W_INST)
    assert one.n_phases == 1
    auto = refine_pattern(q, y, LAMBDA_A, sigma=s, instrument_fwhm_A_inv=W_INST)
    assert auto.n_phases == 2 and auto.bic < one.bic


def test_to_dict_is_json_with_issue_keys():
    q, y, s, _ = synth_pattern([SINGLE[0]], seed=1)
    res = refine_pattern(q, y, LAMBDA_A, sigma=s, instrument_fwhm_A_inv=W_INST)
    d = json.loads(json.dumps(res.to_dict()))
    assert d["rwp"] == pytest.approx(res.rwp)
    keys = {"a_A", "c_A", "volume_A3", "microstrain", "size_nm", "fraction", "a_err_A",
            "c_err_A", "volume_err_A3", "microstrain_err", "size_err_nm", "fraction_err"}
    assert keys <= set(d["phases"][0])
    assert d["n_phases"] == 1


def test_start_from_previous_result_gives_same_answer():
    q, y, s, _ = synth_pattern([SINGLE[0]], seed=4)
    first = refine_pattern(q, y, LAMBDA_A, sigma=s, instrument_fwhm_A_inv=W_INST)
    again = refine_pattern(q, y, LAMBDA_A, sigma=s, start=first, instrument_fwhm_A_inv=W_INST)
    assert again.phases[0].a_A == pytest.approx(first.phases[0].a_A, abs=1e-6)
    assert again.phases[0].c_A == pytest.approx(first.phases[0].c_A, abs=1e-5)
    # the dict form is accepted too
    again2 = refine_pattern(q, y, LAMBDA_A, sigma=s, start=first.to_dict(),
                            instrument_fwhm_A_inv=W_INST)
    assert again2.phases[0].c_A == pytest.approx(first.phases[0].c_A, abs=1e-5)


# ---------------------------------------------------------------------------- bad input
def test_pattern_without_layered_peaks_is_rejected():
    q = np.linspace(0.8, 8.0, 3000)
    rng = np.random.default_rng(0)
    y = rng.poisson(1000 + 200 * np.exp(-q)).astype(float)
    with pytest.raises(PatternError, match="no layered-oxide") as err:
        refine_pattern(q, y, LAMBDA_A)
    assert err.value.reason == "no_layered_peaks"


def test_al_only_pattern_is_rejected():
    q = np.linspace(0.8, 8.0, 3000)
    _, y, _, _ = synth_pattern([dict(SINGLE[0], fraction=0.0)], al_scale=2.0, seed=0)
    with pytest.raises(PatternError):
        refine_pattern(q, y, LAMBDA_A)


def test_wrong_wavelength_is_rejected():
    q, y, s, _ = synth_pattern([SINGLE[0]], seed=1)
    # 4π/λ must exceed the largest Q; λ = 1.6 Å (a lab-source mix-up) makes Q=8 impossible
    with pytest.raises(PatternError, match="wrong wavelength") as err:
        refine_pattern(q, y, 1.6)
    assert err.value.reason == "wavelength"
    # a 2θ pattern converted with the wrong λ puts the peaks at the wrong Q
    tth = 2 * np.degrees(np.arcsin(q * LAMBDA_A / (4 * np.pi)))
    q_wrong = 4 * np.pi * np.sin(np.radians(tth) / 2) / 0.4520
    with pytest.raises(PatternError):
        refine_pattern(q_wrong, y, 0.4520)


@pytest.mark.parametrize("bad,match", [
    (lambda q, y: (q[::-1].copy()[np.r_[0:100, 50:3000]], y), "1-D arrays of equal length"),
    (lambda q, y: (np.r_[q[:10], q[5:15], q[20:]], np.r_[y[:10], y[5:15], y[20:]]),
     "strictly monotonic"),
    (lambda q, y: (np.where(np.arange(q.size) == 7, np.nan, q), y), "NaN"),
    (lambda q, y: (q[:100], y[:100]), "usable points"),
    (lambda q, y: (q, np.zeros_like(y)), "blank"),
])
def test_bad_arrays_raise_clear_errors(bad, match):
    q, y, _, _ = synth_pattern([SINGLE[0]], seed=1)
    qb, yb = bad(q, y)
    with pytest.raises(PatternError, match=match):
        refine_pattern(qb, yb, LAMBDA_A)


def test_bad_options_raise():
    q, y, _, _ = synth_pattern([SINGLE[0]], seed=1)
    with pytest.raises(PatternError, match="phases"):
        refine_pattern(q, y, LAMBDA_A, phases=3)
    with pytest.raises(PatternError, match="al must"):
        refine_pattern(q, y, LAMBDA_A, al="maybe")
    with pytest.raises(PatternError, match="wavelength"):
        refine_pattern(q, y, -1.0)


def test_decreasing_q_is_accepted():
    q, y, s, _ = synth_pattern([SINGLE[0]], seed=1)
    res = refine_pattern(q[::-1], y[::-1], LAMBDA_A, sigma=s[::-1],
                         instrument_fwhm_A_inv=W_INST)
    assert abs(res.phases[0].c_A - SINGLE[0]["c_A"]) < 2e-3
