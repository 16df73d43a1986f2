"""The sampling agent's policy on a virtual SC-NM91 charge (tests/adaptive/_virtual.py: the
simulator's true lattice as the "analysis"), without IOCs or servers."""

from __future__ import annotations

import math

import pytest

from strainstream.adaptive import (
    OBSERVATION_FIELDS,
    SUGGESTION_FIELDS,
    OperandoSamplingAgent,
    SamplingBudget,
    Triggers,
    replay_decisions,
    same_decisions,
    sampling_metrics,
)

from ._virtual import c_curve_error, c_mean_error, truth, virtual_charge, window


def _charge(adaptive=True, frames=30, duration_s=60.0, **kw):
    agent = OperandoSamplingAgent(SamplingBudget(frames=frames, expected_capacity_mAh_g=228.0), adaptive=adaptive)
    fr, obs = virtual_charge(agent, duration_s=duration_s, **kw)
    return agent, fr, obs


@pytest.mark.parametrize(("duration_s", "soc0"), [(60.0, 0.0), (90.0, 0.012), (600.0, 0.0), (600.0, 0.025),
                                                   (3600.0, 0.0)])
def test_adaptive_puts_3x_the_frames_in_the_two_phase_window_at_any_charge_rate(duration_s, soc0):
    lo, hi = window()
    results = {}
    for adaptive in (True, False):
        agent, fr, _ = _charge(adaptive, duration_s=duration_s, soc0=soc0)
        socs = [s for _, s, _ in fr]
        results[adaptive] = (len(fr), sum(lo <= s <= hi for s in socs), socs, agent)
    (n_a, in_a, socs_a, agent), (n_f, in_f, socs_f, _) = results[True], results[False]
    assert n_a <= 30 and n_f == 30
    assert in_f in (4, 5)  # 30 frames evenly over the charge: the window (14 % of it) gets ~4
    assert in_a >= 3 * in_f
    # the dense frames start at the plateau's onset (dQ/dV at least doubling in one step),
    # within about one dense step (~1 % of the capacity) of the window's start, not a quiet
    # interval after it
    first_dense = min(d["capacity_mAh_g"] for d in agent.decisions if d["frame"] and d["mode"] == "dense")
    assert lo - 0.03 <= first_dense / 228.0 <= lo + (0.01 if duration_s >= 90 else 0.02), first_dense / 228.0
    # with an exact analysis (the truth as its rows) both c(soc) curves come out better: the
    # majority phase's (the H2 -> H3 jump bracketed by frames 1 % apart, not 3.3 %) and the
    # phase-fraction weighted one (its kinks at the window's ends caught) — measured up to the
    # fixed run's last frame (it ends a frame's step earlier), as the system test compares
    # them. Not for the 60 s charge: its
    # cycler is read every 0.8 % of the capacity, so a dQ/dV step spans 1.7 % and the onset is
    # seen up to a dense step late (the window's start kink then falls in a quiet gap)
    top = max(socs_f)
    a = [s for s in socs_a if s <= top]
    assert c_curve_error(a) < c_curve_error(socs_f)
    if duration_s >= 90:
        assert c_mean_error(a) < 0.6 * c_mean_error(socs_f)


def test_budget_and_dose_are_respected():
    agent, fr, _ = _charge(True, frames=20)
    assert len(fr) <= 20
    assert sum(e for *_, e in fr) <= agent.budget.total_dose_s + 1e-12
    # a dose budget below frames x exposure: fewer or shorter exposures, never more dose
    budget = SamplingBudget(frames=30, dose_s=2.0, expected_capacity_mAh_g=228.0)
    agent = OperandoSamplingAgent(budget)
    fr, _ = virtual_charge(agent)
    assert sum(e for *_, e in fr) <= 2.0 + 1e-12
    assert agent.should_stop()[0]
    assert all(e >= budget.quiet_exposure_s - 1e-12 for *_, e in fr[:-1])


def test_dense_frames_have_the_full_exposure_quiet_ones_the_short_one():
    agent, fr, _ = _charge(True)
    modes = [d for d in agent.decisions if d["frame"]]
    assert {d["exposure_s"] for d in modes if d["mode"] == "dense"} == {0.2}
    assert {d["exposure_s"] for d in modes if d["mode"] == "quiet"} == {0.1}


def test_analysis_lagging_or_failing_falls_back_to_the_fixed_interval():
    for analysis, word in (("none", "analysis lags"), ("fail", "analysis failed")):
        agent, fr, _ = _charge(True, analysis=analysis)
        fixed = [d for d in agent.decisions if d["mode"] == "fixed"]
        assert fixed and all(word in d["reason"] for d in fixed), analysis
        # no analysis signal acted on; the cycler's dQ/dV peak still calls dense frames
        dense = [d for d in agent.decisions if d["mode"] == "dense"]
        assert dense and all("dQ/dV" in d["reason"] or "holding" in d["reason"] for d in dense)
        assert not any("two phases" in d["reason"] for d in agent.decisions)
    # a dead analysis (lag) with no dQ/dV signal (factor out of reach): fixed spacing only
    agent = OperandoSamplingAgent(SamplingBudget(frames=30, expected_capacity_mAh_g=228.0),
                                  Triggers(dqdv_factor=1e9, dqdv_onset=1e9))
    fr, _ = virtual_charge(agent, analysis="none")
    lo, hi = window()
    assert sum(lo <= s <= hi for _, s, _ in fr) <= 5
    assert {d["mode"] for d in agent.decisions if d["frame"]} <= {"fixed", "quiet"}


def test_decisions_replay_identically_from_the_observations():
    agent, _, obs = _charge(True)
    recorded = [{k: d[k] for k in SUGGESTION_FIELDS} for d in agent.decisions]
    records = [{**{k: d[k] for k in OBSERVATION_FIELDS}} for d in agent.decisions]
    assert same_decisions(replay_decisions(agent.config(), records), recorded)
    # one observation changed: the decisions after it change (the replay is not vacuous)
    k = next(i for i, d in enumerate(agent.decisions) if d["mode"] == "dense")
    records[k - 1] = {**records[k - 1], "voltage_V": records[k - 1]["voltage_V"] + 0.05}
    assert not same_decisions(replay_decisions(agent.config(), records), recorded)


def test_same_decisions_treats_nan_as_equal_and_types_strictly():
    a = [{"wait_s": math.nan, "frame": 1, "reason": "x"}]
    assert same_decisions(a, [{"wait_s": math.nan, "frame": 1, "reason": "x"}])
    assert not same_decisions(a, [{"wait_s": 0.0, "frame": 1, "reason": "x"}])
    assert not same_decisions(a, [{"wait_s": math.nan, "frame": 1.0, "reason": "x"}])
    assert not same_decisions(a, a + a)


def test_agent_follows_the_bluesky_adaptive_optimizer_protocols():
    from bluesky_adaptive.protocols import Optimizer, SupportsStoppingCriteria, TrialFaultAware

    agent = OperandoSamplingAgent(SamplingBudget(frames=10))
    assert isinstance(agent, Optimizer) and isinstance(agent, SupportsStoppingCriteria)
    assert isinstance(agent, TrialFaultAware)
    (s,) = agent.suggest()
    assert set(s) == {"_id", *SUGGESTION_FIELDS} and s["frame"] == 0  # a first look
    with pytest.raises(ValueError, match="one point at a time"):
        agent.suggest(2)
    again = OperandoSamplingAgent.from_config(agent.config())
    assert again.config() == agent.config()


@pytest.mark.parametrize("kwargs, match", [
    ({"frames": 1}, "at least 2 frames"),
    ({"frames": 10, "quiet_exposure_s": 0.5, "exposure_s": 0.2}, "exposures"),
    ({"frames": 10, "dose_s": 0.1}, "dose budget"),
    ({"frames": 10, "watch_s": 1.0, "min_interval_s": 0.5}, "watch_s"),
    ({"frames": 10, "dense_share": 1.0}, "dense_share"),
])
def test_budget_refuses_what_cannot_work(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingBudget(**kwargs)


def test_sampling_metrics_against_the_truth():
    lo, hi = window()
    socs = [0.1, 0.5, 0.7, 0.75, 0.8, 0.85, 0.95]
    frames = []
    for s in socs:
        c, n, _ = truth(s)
        frames.append({"soc": s, "c_A": c, "fraction": 1.0, "n_phases": n, "delta_c_A": 0.5 if n == 2 else None})
    m = sampling_metrics("SC-NM91", frames)
    assert m["window_soc"] == [lo, hi] and m["frames_in_window"] == 3
    assert m["two_phase_frames"] == 3 and m["max_delta_c_A"] == 0.5
    assert m["max_delta_c_true_A"] == pytest.approx(0.68, abs=0.01)
    assert m["c_curve_rms_A"] == pytest.approx(c_curve_error(socs), rel=1e-6)
    assert m["c_curve_rms_A"] > 0.01  # the H2 -> H3 jump lies between 0.80 and 0.85


def test_newest_refined_reads_the_live_rows():
    from strainstream.plans.adaptive import newest_refined

    assert math.isnan(newest_refined([])["an_c_A"])
    rows = [{"seq_num": 1, "c_A": 14.2, "fraction": 1.0, "c_A_2": math.nan, "fraction_2": math.nan,
             "n_phases": 1, "microstrain": 5e-4, "capacity_mAh_g": 10.0, "flag": ""},
            {"seq_num": 3, "c_A": 14.4, "fraction": 0.75, "c_A_2": 13.8, "fraction_2": 0.25,
             "n_phases": 2, "microstrain": 8e-4, "capacity_mAh_g": 170.0, "flag": ""},
            {"seq_num": 2, "c_A": math.nan, "n_phases": 0, "flag": "no peak"}]
    got = newest_refined(rows)
    assert got["an_seq_num"] == 3 and got["an_n_phases"] == 2 and got["an_failed"] == 0
    assert got["an_c_A"] == pytest.approx(14.4 * 0.75 + 13.8 * 0.25)
    assert newest_refined(rows[2:])["an_failed"] == 1


def test_queued_trigger_settings_become_the_agents():
    from strainstream.plans.adaptive import adaptive_operando_xrd, triggers_from

    assert triggers_from(None) == Triggers()
    t = triggers_from({"dqdv_onset": 3.0, "hold_frames": 2})
    assert (t.dqdv_onset, t.hold_frames, t.dqdv_factor) == (3.0, 2, Triggers().dqdv_factor)
    with pytest.raises(ValueError, match=r"unknown trigger setting\(s\) \['dqdv_onsett'\]"):
        triggers_from({"dqdv_onsett": 3.0})
    # refused before any device is touched
    with pytest.raises(ValueError, match="dqdv_onsett"):
        next(adaptive_operando_xrd(None, None, calibration={}, triggers={"dqdv_onsett": 3.0}))
