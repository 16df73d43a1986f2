"""Per-cycle metrics (strainstream.electrochem.cycling_metrics) and the simulator's capacity fade.

Known answer: 100 cycles at 100 mA/g between 2.7 and 4.5 V of the simulated cells give the
study's retentions (SC-NC91 89.2 %, SC-NM91 75.9 %) within 1 point, with a coulombic
efficiency of 1 after the first cycle (the model has no side reactions).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from strainstream.electrochem import ElectrochemInputError, cycling_metrics, mean_voltage_V
from strainstream.sim.cell import CoinCell


def test_cycling_metrics_known_values():
    m = cycling_metrics([200.0, 190.0, 180.0], [180.0, 171.0, 162.0])
    np.testing.assert_allclose(m["coulombic_efficiency"], [0.9, 0.9, 0.9], rtol=1e-15)
    np.testing.assert_allclose(m["retention"], [1.0, 0.95, 0.9], rtol=1e-15)


@pytest.mark.parametrize("chg, dis", [([1.0, 0.0], [1.0, 1.0]), ([1.0], [math.nan]), ([1.0, 2.0], [1.0])])
def test_cycling_metrics_refuses_bad_capacities(chg, dis):
    with pytest.raises(ElectrochemInputError):
        cycling_metrics(chg, dis)


def test_mean_voltage_is_capacity_weighted():
    q = np.array([0.0, 1.0, 3.0])
    v = np.array([3.0, 4.0, 4.0])
    assert mean_voltage_V(q, v) == pytest.approx((3.5 * 1 + 4.0 * 2) / 3)
    assert mean_voltage_V(q[::-1], v[::-1]) == pytest.approx((3.5 * 1 + 4.0 * 2) / 3)  # discharge
    assert math.isnan(mean_voltage_V([1.0, 1.0], [3.0, 3.0]))


def _cycle(cell: CoinCell, rate_mA_g: float, n: int):
    chg, dis = [], []
    for _ in range(n):
        q0 = cell.capacity_mAh_g
        cell.set_mode("CC", current_mA_g=rate_mA_g, v_limit_V=4.5)
        while cell.mode != "REST":
            cell.step(3600.0)
        q1 = cell.capacity_mAh_g
        cell.set_mode("CC", current_mA_g=-rate_mA_g, v_limit_V=2.7)
        while cell.mode != "REST":
            cell.step(3600.0)
        chg.append(q1 - q0)
        dis.append(q1 - cell.capacity_mAh_g)
    return np.array(chg), np.array(dis)


@pytest.mark.slow
@pytest.mark.parametrize("name, study_pct", [("SC-NC91", 89.2), ("SC-NM91", 75.9)])
def test_simulated_100_cycles_reproduce_the_study_retention(name, study_pct):
    cell = CoinCell(name, 10.0, max_substep_s=20.0)
    chg, dis = _cycle(cell, 100.0, 100)
    assert cell.cycle == 100
    m = cycling_metrics(chg, dis)
    print(f"{name}: retention after 100 cycles {100 * m['retention'][-1]:.2f} % (study {study_pct} %), "
          f"CE cycle 1 {100 * m['coulombic_efficiency'][0]:.2f} %, "
          f"CE 2-100 {100 * m['coulombic_efficiency'][1:].min():.3f}-{100 * m['coulombic_efficiency'][1:].max():.3f} %")
    assert 100 * m["retention"][-1] == pytest.approx(study_pct, abs=1.0)
    np.testing.assert_allclose(m["coulombic_efficiency"][1:], 1.0, atol=0.001)
    assert m["coulombic_efficiency"][0] < 0.997  # the pristine cell's first charge is the longest
    assert np.all(np.diff(m["retention"]) < 0)  # fades every cycle


def test_gitt_known_answer_of_the_simulated_cell_matches_the_core_fit():
    """sim.cell.gitt_formula_diffusivity_cm2_s (the known answer the GITT plan tests use) equals
    the study's formula applied to a finely sampled transient of the simulated cell (≈0.17·D)."""
    from strainstream.electrochem import gitt_diffusivity
    from strainstream.sim.cell import gitt_formula_diffusivity_cm2_s

    cell = CoinCell("SC-NC91", 10.0, soc=0.3)
    cell.set_mode("rest")
    rec = []
    for _ in range(2):
        cell.step(300.0)
        rec.append((cell.time_s, cell.voltage_V, 0.0))
    for _ in range(2):
        cell.set_mode("CC", current_mA_g=20.0)
        for k in range(300):
            cell.step(2.0)
            rec.append((cell.time_s, cell.voltage_V, cell.current_mA if k < 299 else 0.0))
        cell.set_mode("rest")
        for _ in range(40):
            cell.step(60.0)
            rec.append((cell.time_s, cell.voltage_V, 0.0))
    t, v, i = np.array(rec).T
    i = np.r_[i[1:], 0.0]  # sample k's current is the one applied from t[k] on
    res = gitt_diffusivity(t, v, i, cell.preset.particle_radius_um * 1e-4)
    expected = gitt_formula_diffusivity_cm2_s("SC-NC91")
    assert expected == pytest.approx(0.166 * cell.preset.diffusivity_cm2_s, rel=0.01)
    np.testing.assert_allclose(res.d_cm2_s, expected, rtol=0.03)
