"""The report's own figures — what no analysis figure draws: the refined phase fractions
against capacity beside the voltage curve, and the study's side-by-side comparison of the
materials (SC vs PC, NC91 vs NM91). Every per-analysis figure is the analysis' own
(:func:`strainstream.callbacks.plots.figure_for`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._collect import RunData
from ._merit import Merit

__all__ = ["comparison_figure", "phase_fraction_figure"]

#: colour per composition, line style per morphology (the study's SC vs PC, NC91 vs NM91)
_COLOR = {"NC91": "C0", "NM91": "C3"}
_STYLE = {"SC": "-", "PC": "--"}


def _style(material: str) -> dict[str, Any]:
    morph, _, comp = material.partition("-")
    return {"color": _COLOR.get(comp, "0.3"), "ls": _STYLE.get(morph, ":")}


def phase_fraction_figure(run: RunData, merits: list[Merit]):
    """Phase fractions as refined (phase 1: larger c; phase 2: smaller c, H3 beside H2) and
    the voltage against capacity (mAh/g); the two-phase window shaded (measured, and the
    simulator's when the run is simulated)."""
    from matplotlib.figure import Figure

    from strainstream.callbacks.plots._common import column, run_title

    entry = run.analyses["operando_xrd"]
    cols = entry.get("columns") or {}
    cap, volt = column(cols, "capacity_mAh_g"), column(cols, "voltage_V")
    f1, f2 = column(cols, "fraction"), column(cols, "fraction_2")
    nph = column(cols, "n_phases")
    n = cap.size
    f1 = f1 if f1.size == n else np.ones(n)
    f2 = f2 if f2.size == n else np.full(n, np.nan)
    single = nph == 1 if nph.size == n else np.ones(n, bool)
    f1 = np.where(single, 1.0, f1)
    f2 = np.where(single, 0.0, f2)
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(cap, f1, "o-", color="C0", ms=4, label="phase 1 (larger c)")
    ax.plot(cap, f2, "o-", color="C3", mfc="none", ms=4, label="phase 2 (smaller c: H3 beside H2)")
    window = next((m for m in merits if m.key == "two_phase_window_mAh_g" and m.uid == run.uid), None)
    if window is not None and isinstance(window.value, tuple):
        lo, hi = window.value
        ax.axvspan(lo - 0.5, hi + 0.5, color="C3", alpha=0.15, label="two-phase frames")
    if window is not None and isinstance(window.simulated, tuple):
        ax.axvspan(*window.simulated, color="0.5", alpha=0.12, hatch="//", fill=False,
                   label="simulator's two-phase window")
    ax.set(xlabel="capacity (mAh g$^{-1}$)", ylabel="phase fraction", ylim=(-0.05, 1.1),
           title="refined phase fractions and voltage")
    ax.grid(alpha=0.3)
    ax_v = ax.twinx()
    ax_v.plot(cap, volt, "k-", lw=1.2, label="voltage")
    ax_v.set_ylabel("voltage (V vs Li/Li$^+$)")
    handles = ax.get_legend_handles_labels()
    hv = ax_v.get_legend_handles_labels()
    ax.legend(handles[0] + hv[0], handles[1] + hv[1], loc="center left", fontsize=8)
    fig.suptitle(run_title("operando_xrd", run.start, entry), x=0.02, ha="left", fontsize=11)
    return fig


def _bar_panel(ax, rows: list[tuple[str, float, float | None, float | None]], ylabel: str,
               title: str) -> None:
    """Bars of measured values per material (PC hatched); ◆ the simulator's truth, ✕ the study's."""
    seen: set[str] = set()

    def once(label: str) -> str:
        if label in seen:
            return "_"
        seen.add(label)
        return label

    for k, (material, value, truth, ref) in enumerate(rows):
        pc = material.startswith("PC")
        ax.bar(k, value, color=_style(material)["color"], alpha=0.55 if pc else 0.9,
               hatch="//" if pc else None, edgecolor="k")
        if truth is not None and np.isfinite(truth):
            ax.plot(k, truth, "D", color="k", ms=6, label=once("simulator truth"))
        if ref is not None and np.isfinite(ref):
            ax.plot(k, ref, "x", color="C2", ms=9, mew=2, label=once("study"))
    ax.set_xticks(np.arange(len(rows)), [r[0] for r in rows])
    ax.set(ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis="y")
    if seen:
        ax.legend(fontsize=8, loc="lower right")


def comparison_figure(runs: list[RunData], merits: list[Merit]):
    """The study's comparison: c against capacity of each charge (SC solid, PC dashed; NC91
    blue, NM91 red), c and volume contraction per material with the study's values and the
    simulator's truth, SXDM Δd/d spread per particle. None when fewer than two materials."""
    from matplotlib.figure import Figure

    from strainstream.callbacks.plots._common import column
    from strainstream.study import XRD_REFERENCE

    xrd = [r for r in runs if "operando_xrd" in r.analyses]
    sxdm = [m for m in merits if m.key == "strain_std"]
    if len({r.material for r in xrd}) < 2 and len({m.material for m in sxdm}) < 2:
        return None
    by = {(m.uid, m.key): m for m in merits}
    fig = Figure(figsize=(17, 5.2), layout="constrained")
    ax_c, ax_b, ax_v, ax_s = fig.subplots(1, 4, width_ratios=[1.4, 1, 1, 0.8])
    for r in xrd:
        cols = r.analyses["operando_xrd"].get("columns") or {}
        ax_c.plot(column(cols, "capacity_mAh_g"), column(cols, "c_A"), marker="o", ms=3,
                  label=f"{r.material} ({r.uid[:8]})", **_style(r.material))
    ax_c.set(xlabel="capacity (mAh g$^{-1}$)", ylabel="c (Å)", title="c on charge: SC vs PC, NC91 vs NM91")
    ax_c.grid(alpha=0.3)
    if xrd:
        ax_c.legend(fontsize=8)
    rows_c, rows_v = [], []
    for r in xrd:
        mc, mv = by.get((r.uid, "c_contraction_pct")), by.get((r.uid, "volume_change_pct"))
        ref = XRD_REFERENCE.get(r.material)
        if mc is not None:
            rows_c.append((r.material, mc.value, mc.simulated, ref[0] if ref and ref[2] == "study" else None))
        if mv is not None:
            truth = -mv.simulated if isinstance(mv.simulated, float) else None
            rows_v.append((r.material, -mv.value, truth, ref[1] if ref and ref[2] == "study" else None))
    _bar_panel(ax_b, rows_c, "c contraction (%)", "c contraction on charge")
    _bar_panel(ax_v, rows_v, "volume contraction (%)", "volume contraction on charge")
    _bar_panel(ax_s, [(m.material, 1e3 * m.value,
                       1e3 * m.simulated if isinstance(m.simulated, float) else None, None) for m in sxdm],
               "Δd/d std (10$^{-3}$)", "SXDM strain heterogeneity")
    fig.suptitle("comparison of the materials — bars: measured (live analysis); ◆ simulator truth; "
                 "✕ the study's value", x=0.02, ha="left", fontsize=11)
    return fig
