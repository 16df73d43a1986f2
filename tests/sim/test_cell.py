"""Known-answer tests for the simulated coin cell (strainstream.sim.cell)."""

from __future__ import annotations

import numpy as np
import pytest

from strainstream.electrochem import dqdv
from strainstream.sim import cell as C

# ---------------------------------------------------------------- lattice presets


@pytest.mark.parametrize(
    ("name", "c_pct", "v_pct"),
    [("PC-NC91", 6.0, 7.8), ("PC-NM91", 3.6, 5.9), ("SC-NC91", 5.0, 6.8), ("SC-NM91", 5.33, 7.0)],
)
def test_presets_reproduce_contractions(name, c_pct, v_pct):
    # definitions: 100(c_max - c(soc=1))/c_max and 100(V_max - V(soc=1))/V_max; tol 0.01 %-pt
    m = C.contraction_metrics(name)
    assert m["c_contraction_pct"] == pytest.approx(c_pct, abs=0.01)
    assert m["volume_contraction_pct"] == pytest.approx(v_pct, abs=0.01)
    # numbers of REFERENCE.md: pristine a ≈ 2.87, c 14.18–14.21, c_max ≈ 14.45, a → ≈2.81
    first = C.lattice_at_soc(name, 0.0)[0]
    assert first.a_A == pytest.approx(2.87, abs=0.006)
    assert 14.18 <= first.c_A <= 14.21
    assert m["c_max_A"] == pytest.approx(14.45, abs=0.011)
    assert 2.805 <= m["a_end_A"] <= 2.826
    # independent check of the volume formula on the end state
    last = C.lattice_at_soc(name, 1.0)[-1]
    assert last.volume_A3 == pytest.approx(np.sqrt(3) / 2 * last.a_A**2 * last.c_A, rel=1e-12)
    assert m["volume_end_A3"] == pytest.approx(last.volume_A3, rel=1e-9)


def test_c_grows_then_collapses_above_4p2_volts_and_a_shrinks():
    s = np.linspace(0, 1, 401)
    for name in C.PRESETS:
        a = np.array([sum(p.a_A * p.fraction for p in C.lattice_at_soc(name, x)) for x in s])
        assert np.all(np.diff(a) < 0), name
        c = np.array([max(p.c_A for p in C.lattice_at_soc(name, x)) for x in s])
        v = C.ocv_V(name, s)
        i_max = int(np.argmax(c))
        assert 3.95 < v[i_max] < 4.2, name  # c peaks in H2, before the 4.2 V plateau
        # still within 0.1 Å of the maximum at 4.15 V, mostly collapsed by 4.25 V
        c_415 = np.interp(4.15, v, c)
        assert c_415 > c[i_max] - 0.1, name
        c_min_h3 = C.contraction_metrics(name)["c_end_A"]
        c_425 = c[np.searchsorted(v, 4.25)]
        assert c_425 - c_min_h3 < 0.45 * (c[i_max] - c_min_h3), name


def test_h3_c_values_match_reference():
    assert 13.5 <= C.contraction_metrics("PC-NC91")["c_end_A"] <= 13.7
    assert 13.5 <= C.contraction_metrics("SC-NM91")["c_end_A"] <= 13.7


def test_two_phase_window_only_for_sc_nm91():
    s = np.linspace(0, 1, 501)
    for name in ("SC-NC91", "PC-NC91", "PC-NM91"):
        assert all(len(C.lattice_at_soc(name, x)) == 1 for x in s)
        assert C.contraction_metrics(name)["max_delta_c_A"] == 0.0
    n = np.array([len(C.lattice_at_soc("SC-NM91", x)) for x in s])
    two = s[n == 2]
    assert two.size > 50  # a window of soc, not a point
    assert two.min() == pytest.approx(0.74, abs=0.005)
    assert two.max() == pytest.approx(0.88, abs=0.005)
    m = C.contraction_metrics("SC-NM91")
    assert m["max_delta_c_A"] == pytest.approx(0.68, abs=0.005)
    h2, h3 = C.lattice_at_soc("SC-NM91", 0.81)
    assert (h2.name, h3.name) == ("H2", "H3")
    assert h2.fraction + h3.fraction == pytest.approx(1.0, abs=1e-12)
    assert h3.fraction == pytest.approx((0.81 - 0.74) / (0.88 - 0.74), abs=1e-9)  # lever rule
    assert 0.64 < h2.c_A - h3.c_A <= 0.68
    # the weighted mean lattice is continuous across the window edges
    for edge in (0.74, 0.88):
        lo = C.lattice_at_soc("SC-NM91", edge - 1e-7)
        hi = C.lattice_at_soc("SC-NM91", edge + 1e-7)
        for attr in ("a_A", "c_A"):
            mlo = sum(getattr(p, attr) * p.fraction for p in lo)
            mhi = sum(getattr(p, attr) * p.fraction for p in hi)
            assert mlo == pytest.approx(mhi, abs=2e-4)


def test_microstrain_rises_at_high_soc_more_for_nm91():
    for name in C.PRESETS:
        assert C.lattice_at_soc(name, 0.95)[0].microstrain > 1.5 * C.lattice_at_soc(name, 0.2)[
            0].microstrain
    for morph in ("SC", "PC"):
        e_nc = C.lattice_at_soc(f"{morph}-NC91", 0.95)[0].microstrain
        e_nm = C.lattice_at_soc(f"{morph}-NM91", 0.95)[0].microstrain
        assert e_nm > 1.3 * e_nc


def test_microstrain_rises_with_rate():
    eps = {}
    for rate in (20.0, 200.0):
        cell = C.CoinCell("PC-NM91", 12.0)
        cell.set_mode("CC", current_mA_g=rate)
        cell.step(0.8 * cell.practical_capacity_mAh_g / rate * 3600.0)  # to soc 0.8
        assert cell.soc == pytest.approx(0.8, abs=1e-12)
        eps[rate] = cell.lattice()[0].microstrain
    assert eps[200.0] > eps[20.0] * 1.05


# ---------------------------------------------------------------- electrochemistry


def test_ocv_curve_window_and_plateau():
    for name in C.PRESETS:
        s = np.linspace(-0.0055, 1.0, 5001)
        v = C.ocv_V(name, s)
        assert np.all(np.diff(v) > 0), name
        assert C.ocv_V(name, 0.0) == pytest.approx(3.45, abs=1e-9)
        assert C.ocv_V(name, 1.0) == pytest.approx(4.5, abs=1e-9)
        assert v[0] < 2.75  # the curve reaches 2.7 V just beyond full lithiation
        # H2 -> H3 plateau: the highest dQ/dV peak above 3.9 V sits at 4.17-4.21 V
        vc, d = dqdv(v, s * 230.0, bin_width_V=0.002, smooth_V=0.004)
        hi = vc > 3.9
        assert 4.17 <= vc[hi][np.argmax(d[hi])] <= 4.21, name


def test_integrated_charge_equals_current_times_time():
    cell = C.CoinCell("SC-NC91", mass_mg=8.0)
    cell.set_mode("CC", current_mA_g=200.0)
    for _ in range(360):
        cell.step(5.0)
    # 200 mA/g for 1800 s = 100 mAh/g; current in mA = 200 * 8 mg / 1000
    assert cell.capacity_mAh_g == pytest.approx(100.0, rel=1e-12)
    assert cell.charge_capacity_mAh_g == pytest.approx(100.0, rel=1e-12)
    assert cell.current_mA == pytest.approx(1.6, rel=1e-12)
    assert cell.soc == pytest.approx(100.0 / 238.0, rel=1e-12)
    assert cell.time_s == pytest.approx(1800.0, rel=1e-12)


def test_step_size_does_not_change_the_result():
    a = C.CoinCell("SC-NM91", 10.0)
    b = C.CoinCell("SC-NM91", 10.0)
    for cell in (a, b):
        cell.set_mode("CC", current_mA_g=150.0)
    a.step(1200.0)
    for _ in range(1200):
        b.step(1.0)
    assert a.voltage_V == pytest.approx(b.voltage_V, abs=1e-9)
    assert a.surface_soc == pytest.approx(b.surface_soc, abs=1e-12)


def test_relaxation_after_a_pulse_decays_to_ocv():
    cell = C.CoinCell("SC-NC91", 10.0, soc=0.4)
    cell.step(10.0)
    v_rest0 = cell.voltage_V
    cell.set_mode("CC", current_mA_g=100.0)
    cell.step(600.0)
    v_on = cell.voltage_V
    assert v_on > v_rest0 + 0.02  # ohmic + polarisation + diffusion overpotential
    cell.set_mode("rest")
    v = []
    for _ in range(200):
        cell.step(30.0)
        v.append(cell.voltage_V)
    v = np.array(v)
    assert np.all(np.diff(v) <= 1e-12)  # monotonic relaxation ...
    assert np.all(np.diff(v[:10]) < 0)  # ... that takes minutes, not one step
    assert v[0] - cell.ocv_V > 4e-3
    assert abs(v[-1] - cell.ocv_V) < 2e-4
    assert cell.ocv_V > v_rest0  # charge was passed


def _polled_energy(cell, dt_s: float, until) -> tuple[float, float]:
    """Step ``cell`` by ``dt_s`` until ``until(cell)``; (∫V dQ by the trapezoid over the
    dt_s samples, the charge passed), mWh/g and mAh/g."""
    i = cell.current_mA_g
    q, v = [cell.capacity_mAh_g], [cell._advance(0.0, i, commit=False)]  # the voltage under current
    while not until(cell):
        cell.step(dt_s)
        q.append(cell.capacity_mAh_g)
        v.append(cell.voltage_V)
    q, v = np.array(q), np.array(v)
    return float(np.sum(0.5 * (v[1:] + v[:-1]) * np.diff(q))), float(q[-1] - q[0])


def test_energy_counter_is_the_integral_of_voltage_over_charge():
    """The cycler's energy counter against ∫V dQ polled every simulated second (known answer up
    to the polls' own trapezoid error), a CV hold (V constant: ΔE = V·ΔQ), a rest (no charge,
    no energy) and the counter's independence of the caller's step."""
    cell = C.CoinCell("SC-NM91", 10.0)
    cell.set_mode("CC", current_mA_g=100.0, v_limit_V=4.5, then="cv")
    e0 = cell.energy_mWh_g
    e_polled, dq = _polled_energy(cell, 1.0, lambda c: c.mode == "CV")
    assert dq > 200.0
    v_charge = (cell.energy_mWh_g - e0) / dq
    assert v_charge == pytest.approx(e_polled / dq, abs=2e-5)
    assert 3.7 < v_charge < 4.2
    # the CV hold at 4.5 V down to 5 mA/g
    e1, q1 = cell.energy_mWh_g, cell.capacity_mAh_g
    while cell.current_mA_g > 5.0:
        cell.step(10.0)
    assert cell.capacity_mAh_g - q1 > 1.0
    # (the model holds 4.5 V at the end of each sub-step, its current constant within it: 0.1 mV)
    assert cell.energy_mWh_g - e1 == pytest.approx(4.5 * (cell.capacity_mAh_g - q1), rel=5e-5)
    cell.set_mode("REST")
    e2 = cell.energy_mWh_g
    cell.step(3600.0)
    assert cell.energy_mWh_g == e2
    # discharge: negative charge, negative energy, a lower mean voltage; the caller's step
    # (1 s or 300 s, the IOC's at accel 3000) does not change the count
    twins = [C.CoinCell("SC-NM91", 10.0, soc=cell.soc) for _ in range(2)]
    means = []
    for k, (c, dt) in enumerate(zip(twins, (1.0, 300.0), strict=True)):
        c.set_mode("CC", current_mA_g=-100.0, v_limit_V=2.7)
        e_start, q_start = c.energy_mWh_g, c.capacity_mAh_g
        e_polled, dq = _polled_energy(c, dt, lambda c: c.mode == "REST")
        means.append((c.energy_mWh_g - e_start) / (c.capacity_mAh_g - q_start))
        if k == 0:
            assert dq < -150.0 and c.energy_mWh_g - e_start < 0
            assert means[0] == pytest.approx(e_polled / dq, abs=2e-5)
    assert means[1] == pytest.approx(means[0], abs=1e-6)
    assert 3.6 < means[0] < v_charge


def test_cv_hold_current_decays():
    cell = C.CoinCell("PC-NC91", 10.0, soc=0.5)
    v_hold = C.ocv_V("PC-NC91", 0.5) + 0.05
    cell.set_mode("CV", voltage_V=v_hold, current_mA_g=500.0)
    cur = []
    for _ in range(240):
        cell.step(30.0)
        cur.append(cell.current_mA_g)
        assert cell.voltage_V == pytest.approx(v_hold, abs=1e-6)
    cur = np.array(cur)
    assert cur[0] > 0
    assert np.all(np.diff(cur) <= 1e-12)
    assert cur[-1] < 0.1 * cur[0]
    assert abs(cell.ocv_V - v_hold) < 0.01


def test_cc_voltage_limit_then_cv_then_discharge_counts_cycles():
    cell = C.CoinCell("SC-NM91", 10.0)
    cell.set_mode("CC", current_mA_g=200.0, v_limit_V=4.5, then="cv")
    cell.step(3 * 3600.0)  # long enough to reach the limit and then hold
    assert cell.limit_hits == 1
    assert cell.mode == "CV"
    assert cell.voltage_V == pytest.approx(4.5, abs=1e-6)
    q_charge = cell.charge_capacity_mAh_g
    assert 200.0 < q_charge <= 228.0 * 1.05
    cap0 = cell.practical_capacity_mAh_g
    cell.set_mode("CC", current_mA_g=-200.0, v_limit_V=2.7, then="rest")
    cell.step(3 * 3600.0)
    assert cell.limit_hits == 2 and cell.mode == "REST"
    assert cell.cycle == 1
    q_dis = cell.discharge_capacity_mAh_g
    assert 0.7 * q_charge < q_dis < q_charge
    cell.set_mode("CC", current_mA_g=200.0)
    cell.step(10.0)
    assert cell.cycle == 2
    assert cell.discharge_capacity_mAh_g == 0.0
    assert cell.practical_capacity_mAh_g == pytest.approx(cap0 * 0.759 ** 0.01, rel=1e-12)


def test_voltage_limit_hit_is_exact_for_large_steps():
    cell = C.CoinCell("PC-NC91", 10.0)
    cell.set_mode("CC", current_mA_g=100.0, v_limit_V=4.2)
    cell.step(4 * 3600.0)
    assert cell.mode == "REST"
    # the charge stopped when V reached 4.2 V: recompute the voltage at that capacity
    twin = C.CoinCell("PC-NC91", 10.0)
    twin.set_mode("CC", current_mA_g=100.0)
    twin.step(cell.capacity_mAh_g / 100.0 * 3600.0)
    assert twin.voltage_V == pytest.approx(4.2, abs=1e-6)


def test_deterministic():
    runs = []
    for _ in range(2):
        cell = C.CoinCell("PC-NM91", 10.0)
        cell.set_mode("CC", current_mA_g=200.0, v_limit_V=4.5, then="cv")
        out = []
        for _ in range(50):
            cell.step(97.3)
            out.append((cell.voltage_V, cell.current_mA, cell.capacity_mAh_g,
                        cell.lattice()[0].c_A, cell.lattice()[0].microstrain))
        runs.append(out)
    assert runs[0] == runs[1]


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="unknown cell preset"):
        C.CoinCell("XX-NC91")
    with pytest.raises(ValueError, match="mass_mg"):
        C.CoinCell("SC-NC91", mass_mg=-1)
    cell = C.CoinCell("SC-NC91")
    with pytest.raises(ValueError, match="dt_s"):
        cell.step(-1.0)
    with pytest.raises(ValueError, match="dt_s"):
        cell.step(float("nan"))
    with pytest.raises(ValueError, match="current_mA_g"):
        cell.set_mode("CC")
    with pytest.raises(ValueError, match="voltage_V"):
        cell.set_mode("CV")
    with pytest.raises(ValueError, match="unknown mode"):
        cell.set_mode("PULSE")
