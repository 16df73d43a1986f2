"""The report's table of figures of merit, each traced to its run, analysis and version.

Per operando XRD charge: c contraction (from c_max to the end of charge, %), volume change
(first to last frame, %), the largest Δc between coexisting phases (Å), the two-phase window
(capacity range of the frames refined with two phases, mAh/g) and the microstrain of the last
refined frame (the top of charge, near 4.5 V). Per SXDM map: the Δd/d standard deviation and
the strain–rotation correlations (θxy, θxz). Per TXM-XANES scan: white-line mean and standard
deviation (eV). The analysis' own summary gives each number where it has it; the two-phase
window and the top-of-charge microstrain come from its result columns.

On simulated runs each figure carries the truth of :mod:`strainstream.report._truth`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from strainstream.study import _num  # a summary value as float, NaN when none

from ._collect import RunData
from ._truth import simulation_of, sxdm_truth, txm_truth, xrd_truth

__all__ = ["Merit", "figures_of_merit", "merits_of_run"]

Value = float | tuple[float, float] | None


@dataclass
class Merit:
    """One figure of merit of one run.

    ``value``, ``simulated``, ``sampled``: a number, a (low, high) range, or None (not
    measured / not simulated). ``source`` names where the analysis put it (summary key or
    result columns); ``detail`` says at what (the frame's voltage, the pixel count).
    """

    key: str
    label: str
    unit: str
    value: Value
    material: str
    experiment: str
    uid: str
    analysis: str
    version: str | None
    source: str
    detail: str = ""
    simulated: Value = None
    sampled: Value = None

    def as_json(self) -> dict[str, Any]:
        """A dict of strict-JSON values (NaN → None, ranges → lists)."""
        def clean(v):
            if isinstance(v, tuple):
                return [clean(x) for x in v]
            if isinstance(v, float) and not math.isfinite(v):
                return None
            return v
        return {k: clean(v) for k, v in asdict(self).items()}


def _col(cols: dict[str, list], key: str, n: int) -> np.ndarray:
    from strainstream.callbacks.plots._common import column

    arr = column(cols, key)
    return arr if arr.size == n else np.full(n, np.nan)


def _xrd(run: RunData, entry: dict[str, Any], make) -> list[Merit]:
    cols, summary = entry.get("columns") or {}, entry.get("summary") or {}
    n = int(entry.get("n_rows") or 0)
    flags = cols.get("flag") or [""] * n
    c = _col(cols, "c_A", n)
    good = np.array([not f for f in flags], bool)[:n] & np.isfinite(c) if n else np.zeros(0, bool)
    cap, t = _col(cols, "capacity_mAh_g", n)[good], _col(cols, "cell_time_s", n)[good]
    volt, eps = _col(cols, "voltage_V", n)[good], _col(cols, "microstrain", n)[good]
    nph = _col(cols, "n_phases", n)[good]
    two = nph == 2
    window = (float(np.min(cap[two])), float(np.max(cap[two]))) if two.any() and np.isfinite(cap[two]).all() else None
    truth = None
    sim = simulation_of(run.start, run.configuration)
    if sim and sim.get("cell_preset") and good.any():
        truth = xrd_truth(sim["cell_preset"], cap, t, _num(run.start.get("rate_mA_g")) or None)

    def tr(key):
        if truth is None:
            return {}
        return {"simulated": truth["simulated"].get(key), "sampled": truth["sampled"].get(key)}

    out = [
        make("c_contraction_pct", "c contraction (c_max → end of charge)", "%",
             _num(summary.get("c_contraction_pct")), "summary c_contraction_pct", **tr("c_contraction_pct")),
        make("volume_change_pct", "unit-cell volume change (first → last frame)", "%",
             _num(summary.get("volume_change_pct")), "summary volume_change_pct", **tr("volume_change_pct")),
        make("max_delta_c_A", "max Δc between coexisting phases", "Å",
             _num(summary.get("max_delta_c_A")), "summary max_delta_c_A", **tr("max_delta_c_A")),
        make("two_phase_window_mAh_g", "two-phase window (capacity of the frames refined with 2 phases)",
             "mAh/g", window, "columns n_phases, capacity_mAh_g",
             detail=f"{int(two.sum())} of {int(good.sum())} frames", **tr("two_phase_mAh_g")),
    ]
    if good.any():
        out.append(make("microstrain_top", "microstrain ε at the top of charge (last frame)", "",
                        float(eps[-1]), "columns microstrain, voltage_V",
                        detail=f"at {volt[-1]:.3f} V, {cap[-1]:.1f} mAh/g", **tr("microstrain_top")))
    return out


def _sxdm(run: RunData, entry: dict[str, Any], make) -> list[Merit]:
    summary = entry.get("summary") or {}
    arrays = run.arrays.get("sxdm") or {}
    sim = simulation_of(run.start, run.configuration, arrays)
    truth = None
    if sim and sim.get("sxdm_particle"):
        truth = sxdm_truth(sim["sxdm_particle"], arrays.get("mask"))

    def tr(key):
        return {} if truth is None else {"simulated": truth["simulated"][key], "sampled": truth["sampled"][key]}

    pixels = f"{int(_num(summary.get('n_pixels')) or 0)} pixels"
    theta = np.asarray(run.start.get("theta_deg") or [], float)
    if theta.size >= 2:  # the rocking step bounds the θxy (rocking direction) resolution
        pixels += f", {theta.size} rocking angles {np.median(np.diff(np.sort(theta))):.2f}° apart"
    return [
        make("strain_std", "SXDM Δd/d standard deviation", "", _num(summary.get("strain_std")),
             "summary strain_std", detail=pixels, **tr("strain_std")),
        make("strain_tilt_correlation", "SXDM strain–rotation correlation (Δd/d, θxy)", "",
             _num(summary.get("strain_tilt_correlation")), "summary strain_tilt_correlation",
             detail=pixels, **tr("strain_tilt_correlation")),
        make("strain_tilt_xz_correlation", "SXDM strain–rotation correlation (Δd/d, θxz)", "",
             _num(summary.get("strain_tilt_xz_correlation")), "summary strain_tilt_xz_correlation",
             detail=pixels, **tr("strain_tilt_xz_correlation")),
    ]


def _txm(run: RunData, entry: dict[str, Any], make) -> list[Merit]:
    """White-line mean and spread as the analysis summarises them (every voxel it fitted), and
    over the particles only (isolated voxels outside them left out, as its figure does:
    :func:`strainstream.callbacks.plots.xanes.particle_mask`)."""
    from strainstream.callbacks.plots.xanes import particle_mask

    summary = entry.get("summary") or {}
    arrays = run.arrays.get("txm_xanes") or {}
    wl = arrays.get("whiteline_eV")
    wl = None if wl is None else np.asarray(wl, float)
    sim = simulation_of(run.start, run.configuration, arrays)
    scopes = [("", None, _num(summary.get("whiteline_mean_eV")), _num(summary.get("whiteline_std_eV")),
               int(_num(summary.get("n_voxels")) or 0), "summary whiteline_mean_eV", "summary whiteline_std_eV")]
    if wl is not None:
        keep = particle_mask(np.isfinite(wl))
        v = wl[keep]
        source = "array whiteline_eV, particle_mask"
        scopes.append((" (particles only)", keep, float(v.mean()) if v.size else math.nan,
                       float(v.std()) if v.size else math.nan, int(v.size), source, source))
    out: list[Merit] = []
    for scope, keep, mean, std, n, src_mean, src_std in scopes:
        truth = txm_truth(sim["txm_sample"], wl, keep) if sim and sim.get("txm_sample") else None
        detail = f"{n} voxels"
        if truth and truth.get("sampled"):
            detail += (f", {truth['sampled']['n_outside']} outside the simulated particles; per-voxel "
                       f"rms error {truth['sampled']['rms_error_eV']:.2f} eV")
        if summary.get("analysis_error"):
            detail = str(summary["analysis_error"])

        def tr(key, truth=truth):
            if truth is None:
                return {}
            return {"simulated": truth["simulated"][key], "sampled": (truth.get("sampled") or {}).get(key)}

        out += [make("whiteline_mean_eV" + ("_particles" if scope else ""), f"white-line energy, mean{scope}",
                     "eV", mean, src_mean, detail=detail, **tr("whiteline_mean_eV")),
                make("whiteline_std_eV" + ("_particles" if scope else ""),
                     f"white-line energy, standard deviation{scope}", "eV", std, src_std, detail=detail,
                     **tr("whiteline_std_eV"))]
    return out


_OF_ANALYSIS = {"operando_xrd": _xrd, "sxdm": _sxdm, "txm_xanes": _txm}


def merits_of_run(run: RunData) -> list[Merit]:
    """The figures of merit of every analysis of ``run`` that has them."""
    out: list[Merit] = []
    for name, entry in run.analyses.items():
        if name not in _OF_ANALYSIS:
            continue

        def make(key, label, unit, value, source, *, detail="", simulated=None, sampled=None,
                 _name=name, _entry=entry):
            return Merit(key=key, label=label, unit=unit, value=value, material=run.material,
                         experiment=run.experiment, uid=run.uid, analysis=_name,
                         version=None if _entry.get("version") is None else str(_entry["version"]),
                         source=source, detail=detail, simulated=simulated, sampled=sampled)

        out.extend(_OF_ANALYSIS[name](run, entry, make))
    return out


def figures_of_merit(runs: list[RunData]) -> list[Merit]:
    """:func:`merits_of_run` of every run, in the runs' order."""
    return [m for run in runs for m in merits_of_run(run)]
