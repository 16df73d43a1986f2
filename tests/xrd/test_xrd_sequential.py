"""SequentialRefiner: frame-to-frame starts, and recovery after a large lattice jump."""

import numpy as np
import pytest
from _xrd_synth import LAMBDA_A, synth_pattern

from strainstream.xrd import PatternError, SequentialRefiner


def _series():
    """A charge: a shrinks, c grows; then a beam interruption and a jump to the H3 state."""
    states = []
    for k in range(5):
        states.append(dict(a_A=2.8712 - 0.004 * k, c_A=14.2013 + 0.03 * k,
                           microstrain=1.0e-3 + 1e-4 * k, size_nm=150.0, fraction=1.0))
    states.append(dict(a_A=2.8150, c_A=13.6400, microstrain=2.2e-3, size_nm=100.0,
                       fraction=1.0))  # after the gap
    states.append(dict(a_A=2.8148, c_A=13.6300, microstrain=2.3e-3, size_nm=100.0,
                       fraction=1.0))
    return states


def test_sequence_with_jump_is_tracked():
    seq = SequentialRefiner(LAMBDA_A, instrument_fwhm_A_inv=0.004)
    for k, truth in enumerate(_series()):
        q, y, s, _ = synth_pattern([truth], seed=100 + k)
        res = seq.refine(q, y, s)
        p = res.phases[0]
        assert abs(p.a_A - truth["a_A"]) < 2e-4, k
        assert abs(p.c_A - truth["c_A"]) < 2e-3, k
        assert p.microstrain == pytest.approx(truth["microstrain"], rel=0.15), k
        assert ("reseeded" in res.flags) == (k == 5), (k, res.flags)
    assert seq.n_reseeded == 1


def test_sequence_into_two_phases_and_back():
    h2 = dict(a_A=2.8190, c_A=14.400, microstrain=1.5e-3, size_nm=150.0, fraction=1.0)
    h3 = dict(a_A=2.8150, c_A=13.720, microstrain=2.0e-3, size_nm=120.0, fraction=0.0)
    seq = SequentialRefiner(LAMBDA_A, instrument_fwhm_A_inv=0.004)
    for k, f3 in enumerate([0.0, 0.3, 0.6, 1.0]):
        truth = [dict(h2, fraction=1 - f3), dict(h3, fraction=f3)]
        present = [t for t in truth if t["fraction"] > 0]
        q, y, s, _ = synth_pattern(present, seed=200 + k)
        res = seq.refine(q, y, s)
        assert res.n_phases == len(present), (k, res.flags)
        for p, t in zip(res.phases, present, strict=True):
            assert abs(p.c_A - t["c_A"]) < 0.01
            assert abs(p.fraction - t["fraction"]) < 0.05


def test_bad_frame_keeps_previous_state():
    seq = SequentialRefiner(LAMBDA_A, instrument_fwhm_A_inv=0.004)
    truth = _series()[0]
    q, y, s, _ = synth_pattern([truth], seed=1)
    first = seq.refine(q, y, s)
    with pytest.raises(PatternError):
        seq.refine(q, np.full_like(y, 100.0) + np.random.default_rng(0).normal(0, 10, y.size))
    assert seq.previous is first
    seq.reset()
    assert seq.previous is None


def test_replay_is_bit_identical():
    """Live and replay passes over the same frames give identical numbers."""
    frames = [synth_pattern([t], seed=300 + k)[:3] for k, t in enumerate(_series()[3:])]
    passes = []
    for _ in range(2):
        seq = SequentialRefiner(LAMBDA_A, instrument_fwhm_A_inv=0.004)
        passes.append([seq.refine(q, y, s).to_dict() for q, y, s in frames])
    assert passes[0] == passes[1]
