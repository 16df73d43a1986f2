"""The variable-projection model: analytic Jacobian, uncertainties, options."""

import numpy as np
import pytest
from _xrd_synth import LAMBDA_A, synth_pattern

from strainstream.xrd import r3m_reflections, refine_pattern
from strainstream.xrd._model import PatternModel

TRUTH = dict(a_A=2.8712, c_A=14.2013, microstrain=1.2e-3, size_nm=150.0, fraction=1.0)


@pytest.mark.parametrize("n_phases", [1, 2])
def test_analytic_model_derivatives_match_finite_differences(n_phases):
    q, y, s, _ = synth_pattern([TRUTH], seed=0)
    refl = r3m_reflections(2.87, 14.2, q[-1] + 0.05)
    model = PatternModel(q, y, 1 / s, LAMBDA_A, refl, n_phases, True, 0.004,
                         refl.q_A_inv(2.87, 14.2))
    x = [2.8705, 14.195, 1.1e-3, 0.008]
    if n_phases == 2:
        x += [2.8690, 14.10, 1.5e-3, 0.01]
    x += [0.45]
    if n_phases == 2:
        x += [0.3]
    x += [4.049, 0.006, 1e-4]
    x = np.array(x)
    deriv = model.model_derivatives(x)
    coef = model._solve(x)["coef"].copy()

    def at(xv):  # model with the linear coefficients held fixed
        return model._solve(xv)["amat"] @ coef

    for k in range(x.size):
        # small steps: peak windows (±25 FWHM) must not move by a grid point
        h = 1e-7 * max(abs(x[k]), 1e-3)
        xp, xm = x.copy(), x.copy()
        xp[k] += h
        xm[k] -= h
        fd = (at(xp) - at(xm)) / (2 * h)
        rel = np.linalg.norm(deriv[:, k] - fd) / np.linalg.norm(fd)
        assert rel < 1e-5, (model.layout.names[k], rel)
    # the Kaufman Jacobian is the projection of these derivatives: orthogonal to the
    # linear columns (weighted)
    jac = model.jacobian(x)
    aw = model._solve(x)["aw"]
    assert np.max(np.abs(aw.T @ jac)) < 1e-6 * np.max(np.abs(aw.T @ (deriv * model.wt[:, None])))


def test_uncertainties_match_scatter_over_noise():
    """Reported a_err/c_err agree with the scatter of repeated noisy patterns (±factor 2)."""
    a, c, a_err, c_err = [], [], [], []
    for seed in range(12):
        q, y, s, _ = synth_pattern([TRUTH], seed=1000 + seed, counts_003=2.0e4)
        res = refine_pattern(q, y, LAMBDA_A, phases=1, sigma=s, instrument_fwhm_A_inv=0.004)
        p = res.phases[0]
        a.append(p.a_A)
        c.append(p.c_A)
        a_err.append(p.a_err_A)
        c_err.append(p.c_err_A)
    assert 0.5 < np.std(a, ddof=1) / np.mean(a_err) < 2.0
    assert 0.5 < np.std(c, ddof=1) / np.mean(c_err) < 2.0


def test_no_al_in_pattern_is_flagged_and_fit_is_accurate():
    q, y, s, _ = synth_pattern([TRUTH], seed=9, al_scale=0.0)
    res = refine_pattern(q, y, LAMBDA_A, sigma=s, instrument_fwhm_A_inv=0.004)
    assert "al_not_detected" in res.flags and res.al_a_A is None
    assert abs(res.phases[0].a_A - TRUTH["a_A"]) < 2e-4
    assert abs(res.phases[0].c_A - TRUTH["c_A"]) < 2e-3


def test_q_range_and_17bm_wavelength():
    lam = 0.4520  # APS 17-BM
    q = np.linspace(0.9, 6.0, 2500)
    q, y, s, _ = synth_pattern([TRUTH], q=q, wavelength_A=lam, seed=4)
    res = refine_pattern(q, y, lam, sigma=s, q_range_A_inv=(1.0, 5.5),
                         instrument_fwhm_A_inv=0.004)
    assert res.q_A_inv[0] >= 1.0 and res.q_A_inv[-1] <= 5.5
    p = res.phases[0]
    assert abs(p.a_A - TRUTH["a_A"]) < 2e-4
    assert abs(p.c_A - TRUTH["c_A"]) < 2e-3
    assert p.microstrain == pytest.approx(TRUTH["microstrain"], rel=0.15)


def test_fit_arrays_are_returned():
    q, y, s, _ = synth_pattern([TRUTH], seed=2)
    res = refine_pattern(q, y, LAMBDA_A, sigma=s, instrument_fwhm_A_inv=0.004)
    assert res.fit.shape == res.intensity.shape == res.q_A_inv.shape
    rwp = np.sqrt(np.sum(((res.intensity - res.fit) / s) ** 2) / np.sum((res.intensity / s) ** 2))
    assert rwp == pytest.approx(res.rwp, rel=1e-6)
