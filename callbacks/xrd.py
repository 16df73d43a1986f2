"""Operando XRD: per-frame lattice parameters, microstrain and H2/H3 phases, live.

For each event: the detector frame is integrated to I(Q) with the run's calibrated geometry
(one pyFAI integrator per run, pinned method), the layered R-3m phase(s) are refined
sequentially (each frame seeded from the previous frame's *stored* result row, so a resumed
worker and a replay seed exactly as the live pass did), and one row is written with the
cycler readings of the same event (voltage, current, capacity) beside a, c, V, ε, size,
phase fractions (second phase: columns suffixed ``_2``), Rwp and the (003) window of I(Q) for the contour plot.

Start-document metadata used (written by the ``operando_xrd`` plan):
``calibration`` (geometry dict, see :func:`strainstream.xrd.validate_geometry`; its
``wavelength_A`` is the wavelength; its ``instrument_function`` — Caglioti U, V, W and η
from the CeO2 frame — gives every peak its own instrumental width, else its one
``instrument_fwhm_A_inv`` is used), optional ``analysis_parameters.operando_xrd``:
``phases`` ("auto" | 1 | 2), ``npt``, ``q_range_A_inv``, ``saturation_level``,
``instrument_fwhm_A_inv`` / ``instrument_function`` (override the calibration's), and
``sectors``: a number n of equal azimuthal sectors (e.g. 8 → 8 × 45° from χ = −180°) or a
list of ``[χ_lo, χ_hi]`` sectors in degrees (pyFAI's χ); each sector's pattern is refined
too (one phase, the largest-c phase of the full pattern) and its ``a_A_sNN``, ``c_A_sNN``,
``c_err_A_sNN`` are stored (texture or strain-anisotropy check; ``c_spread_A`` is the
largest minus the smallest sector c).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from strainstream.framestats import FrameError
from strainstream.rundesc import XRDKeys

from .base import AnalysisCallback, RunDocumentError, checked_number, checked_range
from .tiled_format import is_timestamp_column

__all__ = ["OperandoXRDCallback", "Q003_GRID_A_INV", "i003_matrix", "sector_ranges", "start_from_row"]

#: Q grid (Å⁻¹) of the stored (003) window, REFERENCE.md's 1.27–1.42 Å⁻¹
Q003_GRID_A_INV = np.round(np.linspace(1.27, 1.42, 61), 10)

_PHASE_COLS = ("a_A", "a_err_A", "c_A", "c_err_A", "volume_A3", "volume_err_A3", "microstrain",
               "microstrain_err", "size_nm", "fraction")
_MAX_NPT = 100_000  # Q bins of the integration
_MAX_SECTORS = 36


def sector_ranges(sectors: Any) -> list[tuple[float, float]]:
    """Azimuthal sectors (χ_lo, χ_hi) in degrees from ``analysis_parameters.operando_xrd.sectors``.

    Parameters
    ----------
    sectors : int or list of (float, float)
        n equal sectors covering χ = −180°…180° (sector k: −180 + k·360/n to
        −180 + (k+1)·360/n), or explicit ``[χ_lo, χ_hi]`` pairs in degrees.

    Returns
    -------
    list of (float, float)

    Raises
    ------
    RunDocumentError
        Not a count 2…36 nor a list of increasing pairs within −360…360°.
    """
    if isinstance(sectors, int | np.integer) and not isinstance(sectors, bool):
        n = int(sectors)
        if not 2 <= n <= _MAX_SECTORS:
            raise RunDocumentError(f"analysis_parameters.operando_xrd.sectors must be 2–{_MAX_SECTORS} "
                                   f"sectors, got {n}")
        edges = np.linspace(-180.0, 180.0, n + 1)
        return [(float(lo), float(hi)) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    msg = (f"analysis_parameters.operando_xrd.sectors must be a number of sectors (e.g. 8) or a list "
           f"of [chi_lo, chi_hi] pairs in degrees, got {sectors!r}")
    if not isinstance(sectors, list | tuple) or not 1 <= len(sectors) <= _MAX_SECTORS:
        raise RunDocumentError(msg)
    out = []
    for pair in sectors:
        try:
            lo, hi = (float(v) for v in pair)
        except (TypeError, ValueError):
            raise RunDocumentError(msg) from None
        if not (math.isfinite(lo) and math.isfinite(hi) and -360.0 <= lo < hi <= 360.0):
            raise RunDocumentError(msg)
        out.append((lo, hi))
    return out


def _sector_columns(n: int) -> dict[str, str]:
    cols = {"c_spread_A": "float64"}
    for k in range(n):
        cols.update({f"a_A_s{k:02d}": "float64", f"c_A_s{k:02d}": "float64",
                     f"c_err_A_s{k:02d}": "float64"})
    return cols


def i003_matrix(columns: dict[str, list]) -> np.ndarray:
    """The stored (003) window as an array (n_frames, len(Q003_GRID_A_INV)); NaN where missing."""
    keys = [f"i003_{k:02d}" for k in range(Q003_GRID_A_INV.size)]
    if not columns.get(keys[0]):
        return np.empty((0, len(keys)))
    return np.array([[np.nan if v is None else v for v in columns[k]] for k in keys], float).T


_ECHEM_COLUMN = {"voltage_V": "voltage_V", "current_mA": "current_mA",
                 "capacity_mAh_g": "capacity_mAh_g", "time_s": "cell_time_s"}


def _phase_columns(suffix: str) -> dict[str, str]:
    return {f"{c}{suffix}" if suffix else c: "float64" for c in _PHASE_COLS}


def start_from_row(row: dict[str, Any]) -> dict[str, Any] | None:
    """A refinement start (``RefinementResult.to_dict()`` form) from a stored result row."""
    if row is None or row.get("flag") or not math.isfinite(row.get("c_A", math.nan)):
        return None
    phases = []
    for sfx in ("", "_2"):
        c = row.get(f"c_A{sfx}", math.nan)
        if not math.isfinite(c):
            continue
        size = row.get(f"size_nm{sfx}", math.nan)
        phases.append({
            "a_A": row[f"a_A{sfx}"], "c_A": c, "microstrain": row[f"microstrain{sfx}"],
            "size_nm": size if math.isfinite(size) else None, "fraction": row[f"fraction{sfx}"],
        })
    al = row.get("al_a_A", math.nan)
    return {"phases": phases, "rwp": row["rwp"], "eta": row["eta"],
            "al_a_A": al if math.isfinite(al) else None}


class OperandoXRDCallback(AnalysisCallback):
    """Sequential refinement of the layered phase(s), one row per frame."""

    name = "operando_xrd"
    version = "2"  # 2: per-peak instrumental widths from the calibration, statistical LM stop, sectors
    columns = {
        **{c: "float64" for c in _ECHEM_COLUMN.values()},
        "n_phases": "int64",
        **_phase_columns(""),
        **_phase_columns("_2"),
        "delta_c_A": "float64",
        "rwp": "float64",
        "eta": "float64",
        "al_a_A": "float64",
        "converged": "bool",
        "refine_flags": "string",
        "n_masked": "int64",
        # I(Q) on Q003_GRID_A_INV, one column per Q point (tiled tables hold scalar columns)
        **{f"i003_{k:02d}": "float64" for k in range(Q003_GRID_A_INV.size)},
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        sectors = self.parameters.get("sectors")
        self.sectors = [] if sectors is None else sector_ranges(sectors)
        if self.sectors:  # per-sector columns, declared before the result table is made
            self.columns = {**type(self).columns, **_sector_columns(len(self.sectors))}

    def on_start(self, doc) -> None:
        from strainstream.xrd import Integrator, SequentialRefiner, validate_geometry

        geometry = doc.get("calibration")
        uid = doc["uid"]
        try:
            self.keys = XRDKeys.from_start(doc)
        except ValueError as exc:
            raise RunDocumentError(f"run {uid}: {exc}") from None
        self.frame_keys = (self.keys.image,) if self.keys.image else ()
        if not geometry:
            raise RunDocumentError(
                f"run {uid} has no 'calibration' geometry in its start document; "
                "record the CeO2 calibration (strainstream.xrd.calibrate) with the run"
            )
        try:
            self.geometry = validate_geometry(geometry)
        except ValueError as exc:
            raise RunDocumentError(f"run {uid}: the start document's 'calibration' is unusable: {exc}") from None
        p = self.parameters
        npt = self.param_number("npt", 2500, integer=True, minimum=10)
        if npt > _MAX_NPT:
            raise RunDocumentError(f"analysis_parameters.operando_xrd.npt must be ≤ {_MAX_NPT}, got {npt}")
        self.integrator = Integrator(self.geometry, npt=npt,
                                     saturation_level=self.param_number("saturation_level", None,
                                                                        allow_none=True))
        # instrumental breadth measured on the calibrant (strainstream.xrd calibration), so
        # that size/microstrain are the sample's own
        fwhm = p.get("instrument_fwhm_A_inv", self.geometry.get("instrument_fwhm_A_inv", 0.0))
        kwargs = {"instrument_fwhm_A_inv": checked_number(
            fwhm, f"run {uid}: instrument_fwhm_A_inv (calibration or analysis_parameters)", minimum=0.0)}
        # per-peak instrumental widths (Caglioti U, V, W and η of the CeO2 frame); an explicit
        # analysis parameter wins over the calibration's, and an explicit one-width override
        # without a function means one width
        function = p.get("instrument_function",
                         None if "instrument_fwhm_A_inv" in p else self.geometry.get("instrument_function"))
        if function is not None:
            from strainstream.xrd._instrument import instrument_width_function

            try:
                instrument_width_function(function, self.geometry["wavelength_A"])
            except (TypeError, ValueError) as exc:
                raise RunDocumentError(f"run {uid}: instrument_function (calibration or "
                                       f"analysis_parameters) is unusable: {exc}") from None
            kwargs["instrument"] = dict(function)
        q_range = checked_range(p.get("q_range_A_inv"), "analysis_parameters.operando_xrd.q_range_A_inv")
        if q_range is not None:
            kwargs["q_range_A_inv"] = q_range
        phases = p.get("phases", "auto")
        if phases not in ("auto", 1, 2) or isinstance(phases, bool):
            raise RunDocumentError(f"analysis_parameters.operando_xrd.phases must be 'auto', 1 or 2, "
                                   f"got {phases!r}")
        self.refiner = SequentialRefiner(self.geometry["wavelength_A"], phases=phases, **kwargs)
        self.refine_kwargs = kwargs

    def _echem(self, data: dict[str, Any]) -> dict[str, float]:
        """Cycler readings of the event: the keys the run description (``xrd_keys``) names,
        else by data-key suffix (e.g. ``cycler_voltage_V``)."""
        out = {}
        keys = [k for k in data if not is_timestamp_column(k)]
        for name, suffix in XRDKeys.SUFFIXES.items():
            key = self.keys.reading_key(name, keys)
            value = data[key] if key is not None else None
            ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
            out[_ECHEM_COLUMN[suffix]] = float(value) if ok and math.isfinite(value) else math.nan
        return out

    def analyse(self, event, frames) -> dict[str, Any]:
        row: dict[str, Any] = self._echem(event["data"])
        if not frames:
            raise FrameError("no_frame", "the run has no detector frames (no STREAM: data key)")
        if len(frames) > 1:
            raise FrameError("wrong_shape", f"operando XRD uses one detector, the run has {sorted(frames)}")
        (frame,) = frames.values()
        q, intensity, sigma = self.integrator(frame)
        rep = self.integrator.last_report
        row["n_masked"] = int(rep.n_dead + rep.n_nan + rep.n_saturated)
        ok = np.isfinite(intensity)
        if not ok.any():
            raise FrameError("masked", "no Q bin of the integrated pattern holds a finite intensity "
                             "(frame or geometry wrong?)")
        for k, value in enumerate(np.interp(Q003_GRID_A_INV, q[ok], intensity[ok])):
            row[f"i003_{k:02d}"] = value
        # seed from the previous stored row: identical for live, resumed and replayed passes
        self.refiner.previous = start_from_row(self.previous_row(int(event["seq_num"])))
        res = self.refiner.refine(q, intensity, sigma)
        row.update(n_phases=res.n_phases, rwp=res.rwp, eta=res.eta,
                   al_a_A=res.al_a_A if res.al_a_A is not None else math.nan,
                   converged=res.converged, refine_flags=",".join(res.flags))
        for sfx, ph in zip(("", "_2"), res.phases, strict=False):
            for col in _PHASE_COLS:
                value = getattr(ph, col)
                row[f"{col}{sfx}"] = math.nan if value is None else value
        if res.n_phases == 2:
            row["delta_c_A"] = abs(res.phases[0].c_A - res.phases[1].c_A)
        if self.sectors:
            row.update(self._sector_rows(frame, res))
        return row

    def _sector_rows(self, frame, res) -> dict[str, float]:
        """a, c of the largest-c phase refined on every azimuthal sector's pattern."""
        from strainstream.xrd import PatternError, refine_pattern

        main = res.phases[0]
        start = {"phases": [{"a_A": main.a_A, "c_A": main.c_A, "microstrain": main.microstrain,
                             "size_nm": main.size_nm, "fraction": 1.0}],
                 "eta": res.eta, "al_a_A": res.al_a_A, "rwp": res.rwp}
        out: dict[str, float] = {}
        cs = []
        patterns = self.integrator.sectors(frame, self.sectors)
        for k, (q, y, s) in enumerate(patterns):
            ok = np.isfinite(y) & np.isfinite(s)
            a = c = c_err = math.nan
            if np.count_nonzero(ok) > 200:
                try:
                    r = refine_pattern(q[ok], y[ok], self.geometry["wavelength_A"], sigma=s[ok],
                                       start=start, phases=1, **self.refine_kwargs)
                    a, c, c_err = r.phases[0].a_A, r.phases[0].c_A, r.phases[0].c_err_A
                    cs.append(c)
                except PatternError:
                    pass  # a sector without enough signal stays NaN
            out.update({f"a_A_s{k:02d}": a, f"c_A_s{k:02d}": c, f"c_err_A_s{k:02d}": c_err})
        out["c_spread_A"] = max(cs) - min(cs) if len(cs) >= 2 else math.nan
        return out

    def summary(self) -> dict[str, Any]:
        good = [r for r in self.rows if not r["flag"] and math.isfinite(r["c_A"])]
        if not good:
            return {"frames_refined": 0, "frames_flagged": len(self.rows)}

        def mean_c(r):
            if r["n_phases"] == 2:
                return r["fraction"] * r["c_A"] + r["fraction_2"] * r["c_A_2"]
            return r["c_A"]

        def mean_v(r):
            if r["n_phases"] == 2:
                return r["fraction"] * r["volume_A3"] + r["fraction_2"] * r["volume_A3_2"]
            return r["volume_A3"]

        c_all = [max(r["c_A"], r["c_A_2"]) if r["n_phases"] == 2 else r["c_A"] for r in good]
        c_max = max(c_all)
        c_last, v_first, v_last = mean_c(good[-1]), mean_v(good[0]), mean_v(good[-1])
        dcs = [r["delta_c_A"] for r in good if math.isfinite(r["delta_c_A"])]
        return {
            "frames_refined": len(good),
            "frames_flagged": len(self.rows) - len(good),
            "a_first_A": good[0]["a_A"], "a_last_A": good[-1]["a_A"],
            "c_first_A": good[0]["c_A"], "c_max_A": c_max, "c_last_A": c_last,
            "c_contraction_pct": 100.0 * (c_max - c_last) / c_max,
            "volume_change_pct": 100.0 * (v_last - v_first) / v_first,
            "max_delta_c_A": max(dcs) if dcs else 0.0,
            "two_phase_frames": sum(r["n_phases"] == 2 for r in good),
            "max_microstrain": max(r["microstrain"] for r in good),
            "voltage_last_V": good[-1]["voltage_V"],
        }
