"""(003) H2/H3 split detection and seeding."""

import numpy as np
import pytest
from _xrd_synth import LAMBDA_A, synth_pattern

from strainstream.xrd import PatternError, detect_003_split, refine_pattern, seed_lattice

H2 = dict(a_A=2.8190, c_A=14.400, microstrain=1.5e-3, size_nm=150.0, fraction=1.0)
H3 = dict(a_A=2.8150, c_A=13.720, microstrain=2.0e-3, size_nm=120.0, fraction=1.0)


@pytest.mark.parametrize("c2,f2", [(13.72, 0.5), (14.20, 0.3), (14.25, 0.1)])
def test_split_is_detected_with_c_values(c2, f2):
    q, y, s, _ = synth_pattern([dict(H2, fraction=1 - f2), dict(H3, c_A=c2, fraction=f2)],
                               seed=3)
    split = detect_003_split(q, y, s)
    assert split.n_peaks == 2
    assert split.c_A[0] == pytest.approx(H2["c_A"], abs=0.01)
    assert split.c_A[1] == pytest.approx(c2, abs=0.01)
    frac = split.areas[1] / sum(split.areas)
    assert frac == pytest.approx(f2, abs=0.05)  # peak areas (LP factor ≈ equal here)


@pytest.mark.parametrize("truth", [H2, H3])
def test_single_003_is_not_split(truth):
    q, y, s, _ = synth_pattern([truth], seed=5)
    split = detect_003_split(q, y, s)
    assert split.n_peaks == 1
    assert split.c_A[0] == pytest.approx(truth["c_A"], abs=0.005)


def test_seed_finds_lattice_on_a_humped_background():
    q, y, s, _ = synth_pattern([H2], seed=6, background=8000.0)
    # an amorphous hump (electrolyte/separator) under the low-Q peaks
    hump = 30000.0 * np.exp(-0.5 * ((q - 1.6) / 0.35) ** 2)
    y = y + np.random.default_rng(0).poisson(hump)
    s = np.sqrt(np.maximum(y, 1))
    seed, _ = seed_lattice(q, y, s)
    assert seed.c_A[0] == pytest.approx(H2["c_A"], abs=0.01)
    assert seed.a_A[0] == pytest.approx(H2["a_A"], abs=0.002)
    res = refine_pattern(q, y, LAMBDA_A, sigma=s, instrument_fwhm_A_inv=0.004)
    assert abs(res.phases[0].a_A - H2["a_A"]) < 2e-4
    assert abs(res.phases[0].c_A - H2["c_A"]) < 2e-3


def test_window_without_points_raises():
    q = np.linspace(2.0, 8.0, 2000)
    with pytest.raises(PatternError, match="fewer than 12 points"):
        detect_003_split(q, np.ones_like(q))
