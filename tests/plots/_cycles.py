"""A synthetic ``operando_cycling`` run with known per-cycle values (figure and dashboard tests).

Discharge capacity 210·R100^((k−1)/100) mAh/g, coulombic efficiency 0.88 in the first cycle
then 0.998, mean voltages drifting linearly: the retention after 100 cycles is R100 exactly.
"""

from __future__ import annotations

import numpy as np

N_CYCLES = 30
R100 = 0.759  # retention after 100 cycles of the synthetic cycling run


def known_cycles(n: int = N_CYCLES):
    """(cycle, charge mAh/g, discharge mAh/g, mean charge V, mean discharge V), arrays of ``n``."""
    k = np.arange(1, n + 1)
    dis = 210.0 * R100 ** ((k - 1) / 100.0)
    ce = np.where(k == 1, 0.88, 0.998)
    return k, dis / ce, dis, 3.90 + 0.002 * k, 3.72 - 0.003 * k


def cycling_plan(summary, n: int = N_CYCLES):
    """An ``operando_cycling`` run of SC-NM91 whose ``cycle_summary`` stream holds
    :func:`known_cycles` (``summary``: a :class:`strainstream.plans.electrochem.CycleSummary`)."""
    import bluesky.plan_stubs as bps

    yield from bps.open_run(md={"experiment": "operando_cycling", "material": "SC-NM91",
                                "sample": "coin cell 3", "rate_mA_g": 100.0})
    for row in zip(*known_cycles(n), strict=True):
        k, chg, dis, vc, vd = map(float, row)
        yield from bps.mv(summary.number, int(k), summary.charge_capacity_mAh_g, chg,
                          summary.discharge_capacity_mAh_g, dis, summary.coulombic_efficiency, dis / chg,
                          summary.mean_charge_voltage_V, vc, summary.mean_discharge_voltage_V, vd)
        yield from bps.trigger_and_read([summary], name="cycle_summary")
    yield from bps.close_run()
