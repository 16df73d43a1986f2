"""Long cycling: per-cycle capacity, coulombic efficiency and retention, live.

Reads the ``cycle_summary`` stream of an ``operando_cycling`` run (one event per cycle, see
:func:`strainstream.plans.electrochem.operando_cycling`) and writes one row per cycle:
charge and discharge capacity (mAh/g), coulombic efficiency and retention vs cycle 1
(fractions, :func:`strainstream.electrochem.cycling_metrics`), mean charge/discharge
voltage (V). The XRD frames of the same run go to :class:`~strainstream.callbacks.xrd.OperandoXRDCallback`
(the router gives a cycling run both analyses), so a, c and microstrain sit in
``derived/<uid>/operando_xrd`` next to ``derived/<uid>/cycling``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from strainstream.electrochem import ElectrochemInputError, cycling_metrics
from strainstream.framestats import FrameError

from .base import AnalysisCallback

__all__ = ["CyclingCallback"]

_SOURCE = {"cycle": "cycle_number", "charge_capacity_mAh_g": "cycle_charge_capacity_mAh_g",
           "discharge_capacity_mAh_g": "cycle_discharge_capacity_mAh_g",
           "mean_charge_voltage_V": "cycle_mean_charge_voltage_V",
           "mean_discharge_voltage_V": "cycle_mean_discharge_voltage_V"}


class CyclingCallback(AnalysisCallback):
    """One row per cycle from the ``cycle_summary`` stream."""

    name = "cycling"
    version = "1"
    columns = {
        "cycle": "int64",
        "charge_capacity_mAh_g": "float64",
        "discharge_capacity_mAh_g": "float64",
        "coulombic_efficiency": "float64",
        "retention": "float64",
        "mean_charge_voltage_V": "float64",
        "mean_discharge_voltage_V": "float64",
    }

    def __init__(self, sink, parameters: dict[str, Any] | None = None, frame_fallback=None) -> None:
        params = {"stream": "cycle_summary", **(parameters or {})} if parameters is None or isinstance(
            parameters, dict) else parameters
        super().__init__(sink, parameters=params, frame_fallback=frame_fallback)

    def _first_discharge(self, seq: int) -> float | None:
        """Discharge capacity of the earliest good cycle row before ``seq`` (cycle 1)."""
        rows = sorted((r for r in (*self.rows, *self._pending) if r["seq_num"] < seq),
                      key=lambda r: r["seq_num"])
        for r in rows:
            if not r["flag"] and math.isfinite(r["discharge_capacity_mAh_g"]):
                return r["discharge_capacity_mAh_g"]
        return None

    def analyse(self, event, frames) -> dict[str, Any]:
        data = event["data"]
        row: dict[str, Any] = {}
        for col, key in _SOURCE.items():
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
                raise FrameError("bad_event", f"cycle_summary event lacks a number for {key!r} ({value!r})")
            row[col] = value
        chg, dis = float(row["charge_capacity_mAh_g"]), float(row["discharge_capacity_mAh_g"])
        first = self._first_discharge(int(event["seq_num"]))
        dis_seq = [dis] if first is None else [first, dis]
        try:
            m = cycling_metrics([chg] * len(dis_seq), dis_seq)
        except ElectrochemInputError as exc:  # a cycle without charge or discharge
            raise FrameError("bad_capacity", f"cycle {row['cycle']}: {exc}") from None
        row["coulombic_efficiency"] = float(m["coulombic_efficiency"][-1])
        row["retention"] = float(m["retention"][-1])
        return row

    def summary(self) -> dict[str, Any]:
        good = [r for r in self.rows if not r["flag"]]
        if not good:
            return {"cycles": 0}
        return {
            "cycles": len(good),
            "first_discharge_mAh_g": good[0]["discharge_capacity_mAh_g"],
            "last_discharge_mAh_g": good[-1]["discharge_capacity_mAh_g"],
            "retention_last": good[-1]["retention"],
            "coulombic_efficiency_last": good[-1]["coulombic_efficiency"],
        }
