"""Electrochemistry, live: per-cycle capacity/efficiency/retention and GITT diffusivity.

Reads the ``cycle_summary`` stream of an ``operando_cycling`` run (one event per cycle, see
:func:`strainstream.plans.electrochem.operando_cycling`) and writes one row per cycle:
charge and discharge capacity (mAh/g), coulombic efficiency and retention vs cycle 1
(fractions, :func:`strainstream.electrochem.cycling_metrics`), mean charge/discharge
voltage (V). The XRD frames of the same run go to :class:`~strainstream.callbacks.xrd.OperandoXRDCallback`
(the router gives a cycling run both analyses), so a, c and microstrain sit in
``derived/<uid>/operando_xrd`` next to ``derived/<uid>/cycling``.

:class:`GITTCallback` reads the ``cycler`` stream of an ``operando_gitt`` run (the cycler
at every poll) and fits the study's D = 4/(9π)·(r_p/τ · ΔE_s/(dE/d√t))² for each pulse
(:func:`strainstream.electrochem.gitt_diffusivity`, 10 < √t < 20 s^½ on a uniform 1 s grid,
r_p from the start document's ``particle_radius_um``; with ``mass_mg`` there and the cycler's
capacity in the readings, the pulse start and τ come from the charge counter) as soon as the next pulse starts (the last one at the
stop); the pulse's D, τ, ΔE_s, slope and the state of charge after it go into the row of
the event that completed it, and all pulses into ``derived/<uid>/gitt_arrays`` (D vs soc),
next to the XRD table (a, c at each relaxed point) of the same run.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from strainstream.electrochem import ElectrochemInputError, cycling_metrics, gitt_diffusivity
from strainstream.framestats import FrameError
from strainstream.rundesc import XRDKeys

from .base import AnalysisCallback, RunDocumentError, checked_number
from .tiled_format import is_timestamp_column

__all__ = ["CyclingCallback", "GITTCallback"]

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
        rows = sorted((r for rows in self.known_rows() for r in rows if r["seq_num"] < seq),
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


_GITT_SOURCES = ("time", "voltage", "current")
#: readings whose EPICS timestamps differ by more are from different cycler updates, s
_SAME_UPDATE_S = 1e-3


class GITTCallback(AnalysisCallback):
    """The cycler record of a GITT run, one row per reading; D per pulse when it is complete."""

    name = "gitt"
    version = "2"  # 2: dE/d√t on the uniform 1 s grid, pulse edges from the charge counter
    columns = {
        "cell_time_s": "float64",
        "voltage_V": "float64",
        "current_mA": "float64",
        "soc": "float64",
        "pulse": "int64",
        "d_cm2_s": "float64",
        "tau_s": "float64",
        "delta_es_V": "float64",
        "slope_V_per_sqrt_s": "float64",
        "pulse_soc": "float64",
        "rest_end_time_s": "float64",
        "pulse_reason": "string",
    }

    def __init__(self, sink, parameters: dict[str, Any] | None = None, frame_fallback=None) -> None:
        params = {"stream": "cycler", **(parameters or {})} if parameters is None or isinstance(
            parameters, dict) else parameters
        super().__init__(sink, parameters=params, frame_fallback=frame_fallback)
        self._record: list[tuple[float, ...]] = []  # (t, V, I, soc, capacity), good readings
        self._reported = 0  # pulses whose D has been written

    def on_start(self, doc) -> None:
        uid = doc["uid"]
        r_um = checked_number(doc.get("particle_radius_um"), f"run {uid}: start document particle_radius_um",
                              positive=True)
        self.radius_cm = r_um * 1e-4
        mass = doc.get("mass_mg")  # with the capacity readings: the pulse edges from the charge counter
        self.mass_mg = float(mass) if isinstance(mass, int | float) and math.isfinite(mass) and mass > 0 else None
        try:
            self.keys = XRDKeys.from_start(doc)
        except ValueError as exc:
            raise RunDocumentError(f"run {uid}: {exc}") from None

    def _readings(self, event: dict[str, Any]) -> dict[str, float]:
        data, stamps = event["data"], event.get("timestamps") or {}
        keys = [k for k in data if not is_timestamp_column(k)]
        out, when = {}, []
        for name in (*_GITT_SOURCES, "capacity"):
            key = self.keys.reading_key(name, keys)
            value = data.get(key) if key is not None else None
            number = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool) \
                and math.isfinite(value)
            if name == "capacity" and not number:  # optional: pulse edges from the readings then
                out[name] = math.nan
                continue
            when.append(stamps.get(key))
            if not number:
                raise FrameError("bad_event", f"cycler reading {name!r} missing or not a number ({value!r})")
            out[name] = float(value)
        # the cycler stamps the readings of one update alike: different stamps mean the read
        # straddled two updates (time of one moment, voltage of the next) — not a sample
        if all(isinstance(w, int | float) for w in when) and max(when) - min(when) > _SAME_UPDATE_S:
            raise FrameError("torn_reading", f"cycler readings of different updates (timestamps spread "
                             f"{max(when) - min(when):.3f} s): left out of the GITT record")
        soc = [k for k in keys if k.endswith("_soc")]
        out["soc"] = float(data[min(soc, key=len)]) if soc else math.nan
        return out

    def _append(self, event: dict[str, Any]) -> None:
        r = self._readings(event)
        if self._record and r["time"] < self._record[-1][0]:
            raise FrameError("bad_event", f"cycler time goes back ({r['time']} s after {self._record[-1][0]} s)")
        self._record.append((r["time"], r["voltage"], r["current"], r["soc"], r["capacity"]))

    def _fit(self):
        if len(self._record) < 3:
            return None
        t, v, i, soc, cap = (np.array(c) for c in zip(*self._record, strict=True))
        charge = cap * self.mass_mg / 1000.0 if self.mass_mg is not None and np.isfinite(cap).all() else None
        try:
            return gitt_diffusivity(t, v, i, self.radius_cm, fit_step_s=1.0, charge_mAh=charge), soc
        except ElectrochemInputError as exc:
            raise FrameError("bad_record", f"GITT record unusable: {exc}") from None

    def restore(self, event, row) -> None:
        if not row["flag"]:
            self._append(event)
            if row["pulse"] >= 0:
                self._reported = max(self._reported, row["pulse"] + 1)

    def analyse(self, event, frames) -> dict[str, Any]:
        self._append(event)
        t, v, i, soc, _ = self._record[-1]
        row: dict[str, Any] = {"cell_time_s": t, "voltage_V": v, "current_mA": i, "soc": soc, "pulse": -1}
        # a pulse is complete (its rest ended) when the next one starts
        prev_i = self._record[-2][2] if len(self._record) > 1 else 0.0
        if i != 0.0 and prev_i == 0.0:
            row.update(self._pulse_row())
        return row

    def _pulse_row(self) -> dict[str, Any]:
        fitted = self._fit()
        if fitted is None:
            return {}
        res, soc = fitted
        n_done = len(res.pulses)  # the pulse just started is not among them (no end yet)
        if n_done <= self._reported:
            return {}
        k = n_done - 1  # one pulse completes per new pulse
        self._reported = n_done
        end = res.pulses[k].rest_end
        return {"pulse": k, "d_cm2_s": res.d_cm2_s[k], "tau_s": res.tau_s[k], "delta_es_V": res.delta_es_V[k],
                "slope_V_per_sqrt_s": res.slope_V_per_sqrt_s[k], "pulse_soc": float(soc[end]),
                "rest_end_time_s": self._record[end][0], "pulse_reason": res.reason[k]}

    def summary(self) -> dict[str, Any]:
        fitted = self._fit()
        if fitted is None:
            return {"pulses": 0}
        res, soc = fitted
        soc_after = np.array([soc[p.rest_end] for p in res.pulses])
        # the cell time ending each rest: the XRD frame of that relaxed point is the first one
        # taken at or after it (strainstream.electrochem.frames_after_rests joins D to a, c)
        rest_end_t = np.array([self._record[p.rest_end][0] for p in res.pulses], dtype=float)
        self.publish_arrays({"pulse_soc": soc_after, "rest_end_time_s": rest_end_t,
                             "d_cm2_s": np.asarray(res.d_cm2_s),
                             "tau_s": np.asarray(res.tau_s), "delta_es_V": np.asarray(res.delta_es_V)},
                            {"radius_cm": self.radius_cm, "fit_window_sqrt_s": [10.0, 20.0], "fit_step_s": 1.0,
                             "edges_from_charge": self.mass_mg is not None})
        good = np.isfinite(res.d_cm2_s)
        return {"pulses": len(res.pulses), "pulses_fitted": int(good.sum()),
                "d_median_cm2_s": float(np.median(res.d_cm2_s[good])) if good.any() else math.nan,
                "d_cm2_s": [float(d) for d in res.d_cm2_s], "pulse_soc": [float(x) for x in soc_after]}
