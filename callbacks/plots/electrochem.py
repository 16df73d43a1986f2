"""Figures of the electrochemical protocols, laid out as the study's figures are.

- :func:`cycling_figure` (``cycling`` results of an ``operando_cycling`` run): charge and
  discharge capacity (mAh g⁻¹) with the coulombic efficiency (%) on a second axis, capacity
  retention vs cycle 1 (%), mean charge/discharge voltage (V), all against cycle number;
- :func:`gitt_figure` (``gitt`` results of an ``operando_gitt`` run): the voltage transient
  (V against cell time, h) with the fitted pulses marked, the Li diffusivity D (cm² s⁻¹,
  log scale) against the state of charge x after each pulse and, with the run's XRD
  results, a and c of the relaxed point after each pulse against the same x;
- :func:`rate_series_figure` (the ``operando_xrd`` results of the runs of one
  ``rate_series``): microstrain ε against charge capacity, one curve per rate, and ε against
  rate at fixed charge capacities (ε rises fastest at high rate and high state of charge).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._common import column, run_title

__all__ = ["cycling_figure", "gitt_figure", "gitt_lattice", "rate_series_figure", "series_entries",
           "strain_vs_rate"]

#: axis labels with units (the tests read them)
CYCLE_LABEL = "cycle number"
CAPACITY_LABEL = "specific capacity (mAh g$^{-1}$)"
CE_LABEL = "coulombic efficiency (%)"
RETENTION_LABEL = "capacity retention (%)"
VOLTAGE_LABEL = "mean voltage (V vs Li/Li$^+$)"
D_LABEL = "D$_{Li}$ (cm$^2$ s$^{-1}$)"
SOC_LABEL = "state of charge x (fraction of practical capacity)"
STRAIN_LABEL = "microstrain ε (10$^{-3}$)"
CHARGE_LABEL = "charge capacity (mAh g$^{-1}$)"
RATE_LABEL = "rate (mA g$^{-1}$)"


def _good(cols: dict[str, list]) -> np.ndarray:
    """Rows without a flag (all rows when the entry has no ``flag`` column)."""
    flags = cols.get("flag")
    n = max((len(v) for v in cols.values() if isinstance(v, list)), default=0)
    if not flags:
        return np.ones(n, dtype=bool)
    return np.array([not f for f in flags], dtype=bool)


def cycling_figure(entry: dict[str, Any], fig=None, *, start: dict[str, Any] | None = None):
    """Capacity, coulombic efficiency, retention and mean voltages against cycle number.

    Parameters
    ----------
    entry : dict
        Results entry of the ``cycling`` analysis (columns ``cycle``,
        ``charge_capacity_mAh_g``, ``discharge_capacity_mAh_g``, ``coulombic_efficiency`` and
        ``retention`` as fractions, ``mean_charge_voltage_V``, ``mean_discharge_voltage_V``).
    fig : matplotlib Figure, optional
        Drawn into (cleared) if given.
    start : dict, optional
        The run's start document (material/sample, ``rate_mA_g`` for the title).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    cols = entry.get("columns") or {}
    ok = _good(cols)
    cyc = column(cols, "cycle")[ok] if cols.get("cycle") else np.array([])
    chg = column(cols, "charge_capacity_mAh_g")[ok] if cyc.size else cyc
    dis = column(cols, "discharge_capacity_mAh_g")[ok] if cyc.size else cyc
    ce = 100.0 * column(cols, "coulombic_efficiency")[ok] if cyc.size else cyc
    ret = 100.0 * column(cols, "retention")[ok] if cyc.size else cyc
    vc = column(cols, "mean_charge_voltage_V")[ok] if cyc.size else cyc
    vd = column(cols, "mean_discharge_voltage_V")[ok] if cyc.size else cyc
    fig = fig or Figure(figsize=(14, 4.6), layout="constrained")
    fig.clear()
    ax_q, ax_r, ax_v = fig.subplots(1, 3)
    ms = 4 if cyc.size <= 60 else 2.5

    ax_q.plot(cyc, chg, "o", ms=ms, color="C0", mfc="none", label="charge")
    ax_q.plot(cyc, dis, "o", ms=ms, color="C0", label="discharge")
    ax_q.set(xlabel=CYCLE_LABEL, ylabel=CAPACITY_LABEL, title="capacity and coulombic efficiency")
    ax_ce = ax_q.twinx()
    ax_ce.plot(cyc, ce, "s-", ms=ms - 1, lw=0.8, color="C3", label="coulombic efficiency")
    ax_ce.set_ylabel(CE_LABEL, color="C3")
    ax_ce.tick_params(axis="y", colors="C3")
    if ce.size and np.isfinite(ce).any():
        lo = float(np.nanmin(ce))
        ax_ce.set_ylim(min(lo - 1.0, 95.0), 101.0)
    if dis.size and np.isfinite(dis).any():
        ax_q.set_ylim(0.0, 1.1 * float(np.nanmax(np.r_[chg, dis])))
    h1, l1 = ax_q.get_legend_handles_labels()
    h2, l2 = ax_ce.get_legend_handles_labels()
    ax_q.legend(h1 + h2, l1 + l2, loc="lower left", fontsize=8)
    ax_q.grid(alpha=0.3)

    label = "retention vs cycle 1"
    if ret.size and np.isfinite(ret[-1]):
        label += f" ({ret[-1]:.1f} % after cycle {int(cyc[-1])})"
    ax_r.plot(cyc, ret, "o-", ms=ms, lw=1.0, color="C2", label=label)
    ax_r.axhline(100.0, color="0.5", ls=":", lw=0.9)
    ax_r.set(xlabel=CYCLE_LABEL, ylabel=RETENTION_LABEL, title="capacity retention")
    ax_r.legend(loc="lower left", fontsize=8)
    ax_r.grid(alpha=0.3)

    ax_v.plot(cyc, vc, "^-", ms=ms, lw=1.0, color="C1", label="charge")
    ax_v.plot(cyc, vd, "v-", ms=ms, lw=1.0, color="C4", label="discharge")
    ax_v.set(xlabel=CYCLE_LABEL, ylabel=VOLTAGE_LABEL, title="mean voltage (hysteresis)")
    ax_v.legend(loc="best", fontsize=8)
    ax_v.grid(alpha=0.3)
    for ax in (ax_q, ax_r, ax_v):
        ax.xaxis.get_major_locator().set_params(integer=True)

    title = run_title("cycling", start, entry)
    rate = (start or {}).get("rate_mA_g")
    if isinstance(rate, int | float):
        title += f" — {rate:g} mA g$^{{-1}}$"
    fig.suptitle(title, x=0.02, ha="left", fontsize=12)
    return fig


def _pulses(entry: dict[str, Any], arrays: dict[str, Any] | None) -> tuple[np.ndarray, ...]:
    """(state of charge after each pulse, D cm²/s, cell time ending its rest s): the stored
    arrays when the run is done, else the pulses reported so far in the rows."""
    if arrays and "d_cm2_s" in arrays and "pulse_soc" in arrays:
        soc = np.asarray(arrays["pulse_soc"], dtype=float)
        end = np.asarray(arrays.get("rest_end_time_s", np.full(soc.size, np.nan)), dtype=float)
        return soc, np.asarray(arrays["d_cm2_s"], dtype=float), end
    cols = entry.get("columns") or {}
    pulse = column(cols, "pulse")
    if not pulse.size:
        return np.array([]), np.array([]), np.array([])
    sel = (pulse >= 0) & _good(cols)
    end = column(cols, "rest_end_time_s")
    return (column(cols, "pulse_soc")[sel], column(cols, "d_cm2_s")[sel],
            end[sel] if end.size == sel.size else np.full(int(sel.sum()), np.nan))


def gitt_lattice(entry: dict[str, Any], arrays: dict[str, Any] | None,
                 xrd: dict[str, Any] | None) -> dict[str, np.ndarray]:
    """D against x next to the lattice of the relaxed point after each pulse.

    Parameters
    ----------
    entry, arrays : dict
        The ``gitt`` results entry and its stored arrays (see :func:`gitt_figure`).
    xrd : dict or None
        The ``operando_xrd`` results entry of the same run (``cell_time_s``, ``a_A``,
        ``c_A``, ``a_err_A``, ``c_err_A``, ``flag``).

    Returns
    -------
    dict of ndarray, shape (pulses,)
        ``pulse_soc``, ``d_cm2_s``, ``a_A``, ``c_A``, ``a_err_A``, ``c_err_A`` (NaN where the
        relaxed point has no good frame), and ``frame`` (row of the XRD entry, −1 if none).
    """
    from strainstream.electrochem import frames_after_rests

    soc, d, end = _pulses(entry, arrays)
    out = {"pulse_soc": soc, "d_cm2_s": d}
    cols = (xrd or {}).get("columns") or {}
    t = column(cols, "cell_time_s")
    if t.size:
        t = np.where(_good(cols), t, np.nan)  # a flagged frame has no lattice
    idx = frames_after_rests(end, t) if t.size else np.full(soc.size, -1)
    out["frame"] = idx
    for key in ("a_A", "c_A", "a_err_A", "c_err_A"):
        v = column(cols, key)
        out[key] = np.where(idx >= 0, v[np.maximum(idx, 0)], np.nan) if v.size == t.size and t.size \
            else np.full(soc.size, np.nan)
    return out


def gitt_figure(entry: dict[str, Any], fig=None, *, start: dict[str, Any] | None = None,
                arrays: dict[str, Any] | None = None, xrd: dict[str, Any] | None = None):
    """The GITT voltage transient, D against state of charge and, with the run's XRD
    results, the lattice parameters a and c of the relaxed point after each pulse on the
    same x axis (D next to a and c, as the study shows them).

    Parameters
    ----------
    entry : dict
        Results entry of the ``gitt`` analysis (columns ``cell_time_s``, ``voltage_V``,
        ``current_mA``, ``pulse``, ``pulse_soc``, ``d_cm2_s``, ``flag``).
    fig : matplotlib Figure, optional
        Drawn into (cleared) if given.
    start : dict, optional
        The run's start document (material/sample, ``current_mA_g``, ``particle_radius_um``).
    arrays : dict, optional
        The stored ``gitt`` arrays (``pulse_soc``, ``d_cm2_s``, ``rest_end_time_s``): all
        pulses once the run ended.
    xrd : dict, optional
        The ``operando_xrd`` results entry of the same run (see :func:`gitt_lattice`).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    cols = entry.get("columns") or {}
    ok = _good(cols)
    t = column(cols, "cell_time_s")
    v = column(cols, "voltage_V")
    i = column(cols, "current_mA")
    if t.size == ok.size:
        t, v, i = t[ok], v[ok], i[ok]
    joined = gitt_lattice(entry, arrays, xrd)
    with_lattice = xrd is not None and bool(np.isfinite(joined["c_A"]).any())
    fig = fig or Figure(figsize=(18 if with_lattice else 13, 4.8), layout="constrained")
    fig.clear()
    if with_lattice:
        ax_v, ax_d, ax_c = fig.subplots(1, 3, width_ratios=[1.4, 1, 1])
    else:
        ax_v, ax_d = fig.subplots(1, 2, width_ratios=[1.4, 1])
    t_h = (t - t[0]) / 3600.0 if t.size else t
    ax_v.plot(t_h, v, "k-", lw=1.0, label="cell voltage")
    on = i != 0.0
    if on.any():
        ax_v.plot(t_h[on], v[on], "o", ms=2.5, color="C3", label="under current (pulse)")
    ax_v.set(xlabel="time (h)", ylabel="voltage (V vs Li/Li$^+$)", title="GITT transient")
    ax_v.legend(loc="lower right", fontsize=8)
    ax_v.grid(alpha=0.3)

    soc, d = joined["pulse_soc"], joined["d_cm2_s"]
    good = np.isfinite(d) & np.isfinite(soc) & (d > 0)
    st = start or {}
    r = st.get("particle_radius_um")
    lab = "D (study's equation, 10 < √t < 20 s$^{1/2}$"
    lab += f", r$_p$ = {r:g} µm)" if isinstance(r, int | float) else ")"
    ax_d.semilogy(soc[good], d[good], "o-", ms=6, color="C0", label=lab)
    if good.any():
        lo, hi = float(d[good].min()), float(d[good].max())
        ax_d.set_ylim(lo / 3.0, hi * 3.0)
    ax_d.set(xlabel=SOC_LABEL, ylabel=D_LABEL, title=f"Li diffusivity ({int(good.sum())} pulses)")
    ax_d.legend(loc="best", fontsize=8)
    ax_d.grid(alpha=0.3, which="both")
    if with_lattice:
        _lattice_panel(ax_c, joined)
        ax_c.set_xlim(ax_d.get_xlim())
    title = run_title("gitt", st, entry)
    cur = st.get("current_mA_g")
    if isinstance(cur, int | float):
        title += f" — pulses of {cur:g} mA g$^{{-1}}$"
    fig.suptitle(title, x=0.02, ha="left", fontsize=12)
    return fig


def _lattice_panel(ax_c, joined: dict[str, np.ndarray]) -> None:
    """c (left axis) and a (right axis) of the relaxed point after each pulse against x."""
    soc = joined["pulse_soc"]
    ok = np.isfinite(soc) & np.isfinite(joined["c_A"])
    err = np.nan_to_num(joined["c_err_A"][ok])
    ax_c.errorbar(soc[ok], joined["c_A"][ok], yerr=err, fmt="s-", ms=5, color="C2", capsize=2,
                  label="c (relaxed point after the pulse)")
    ax_c.set(xlabel=SOC_LABEL, ylabel="c (Å)", title=f"lattice at the relaxed points ({int(ok.sum())})")
    ax_a = ax_c.twinx()
    ok_a = np.isfinite(soc) & np.isfinite(joined["a_A"])
    ax_a.errorbar(soc[ok_a], joined["a_A"][ok_a], yerr=np.nan_to_num(joined["a_err_A"][ok_a]), fmt="^--",
                  ms=5, color="C1", capsize=2, label="a")
    ax_a.set_ylabel("a (Å)")
    lines = ax_c.get_legend_handles_labels()
    more = ax_a.get_legend_handles_labels()
    ax_c.legend(lines[0] + more[0], lines[1] + more[1], loc="best", fontsize=8)
    ax_c.grid(alpha=0.3)


def _charge_curve(entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(charge capacity since the run's first frame, mAh/g; microstrain, phase 1) of the good
    refined frames of an ``operando_xrd`` entry, in frame order."""
    cols = entry.get("columns") or {}
    q, eps = column(cols, "capacity_mAh_g"), column(cols, "microstrain")
    if not q.size or q.size != eps.size:
        return np.array([]), np.array([])
    keep = _good(cols) & np.isfinite(q) & np.isfinite(eps)
    q, eps = q[keep], eps[keep]
    return (q - q[0], eps) if q.size else (q, eps)


def strain_vs_rate(entries: Sequence[tuple[dict[str, Any], dict[str, Any]]],
                   capacities_mAh_g: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Microstrain of each run at given charge capacities (linear between frames).

    Parameters
    ----------
    entries : sequence of (start, entry)
        Start document (``rate_mA_g``) and ``operando_xrd`` results entry of each run.
    capacities_mAh_g : sequence of float
        Charge capacities since each run's first frame (mAh/g).

    Returns
    -------
    rates : ndarray, shape (n_runs,)
        mA/g, ascending.
    eps : ndarray, shape (n_runs, n_capacities)
        Microstrain ε (dimensionless); NaN where a run did not reach the capacity.
    """
    rows = []
    for start, entry in entries:
        q, eps = _charge_curve(entry)
        caps = np.asarray(capacities_mAh_g, dtype=float)
        vals = np.full(caps.size, np.nan)
        if q.size >= 2:
            inside = caps <= q.max()
            order = np.argsort(q, kind="stable")
            vals[inside] = np.interp(caps[inside], q[order], eps[order])
        rows.append((float(start.get("rate_mA_g", np.nan)), vals))
    rows.sort(key=lambda r: r[0])
    return np.array([r for r, _ in rows]), np.array([v for _, v in rows]).reshape(len(rows), -1)


def rate_series_figure(entries: Sequence[tuple[dict[str, Any], dict[str, Any]]], fig=None, *,
                       fractions: Sequence[float] = (0.25, 0.5, 0.9)):
    """Microstrain against charge capacity per rate, and against rate at fixed capacities.

    Parameters
    ----------
    entries : sequence of (start, entry)
        The runs of one ``rate_series``: start document (``rate_mA_g``, ``series``,
        material/sample) and ``operando_xrd`` results entry of each.
    fig : matplotlib Figure, optional
        Drawn into (cleared) if given.
    fractions : sequence of float
        Charge levels of the right panel, as fractions of the smallest capacity all runs
        reached.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib as mpl
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = fig or Figure(figsize=(13, 4.8), layout="constrained")
    fig.clear()
    ax_e, ax_r = fig.subplots(1, 2)
    entries = sorted(entries, key=lambda se: float(se[0].get("rate_mA_g", np.nan)))
    cmap = mpl.colormaps["plasma"]
    reached = []
    for k, (start, entry) in enumerate(entries):
        q, eps = _charge_curve(entry)
        rate = start.get("rate_mA_g")
        color = cmap(0.85 * k / max(len(entries) - 1, 1))
        label = f"{rate:g} mA g$^{{-1}}$" if isinstance(rate, int | float) else "rate ?"
        ax_e.plot(q, 1e3 * eps, "o-", ms=3.5, lw=1.0, color=color, label=label)
        if q.size:
            reached.append(float(q.max()))
    ax_e.set(xlabel=CHARGE_LABEL, ylabel=STRAIN_LABEL, title="microstrain during charge")
    ax_e.legend(title="charge rate", loc="upper left", fontsize=8, title_fontsize=8)
    ax_e.grid(alpha=0.3)

    if reached:
        caps = [f * min(reached) for f in fractions]
        rates, eps = strain_vs_rate(entries, caps)
        for j, (f, q) in enumerate(zip(fractions, caps, strict=True)):
            ax_r.plot(rates, 1e3 * eps[:, j], "s-", ms=6, color=f"C{j}",
                      label=f"at {q:.0f} mAh g$^{{-1}}$ ({100 * f:.0f} % of the charge)")
        ax_r.set_xscale("log")
        ax_r.set_xticks(rates, [f"{r:g}" for r in rates])
        ax_r.xaxis.set_minor_formatter(NullFormatter())
        ax_r.legend(loc="upper left", fontsize=8)
    ax_r.set(xlabel=RATE_LABEL, ylabel=STRAIN_LABEL, title="microstrain vs rate")
    ax_r.grid(alpha=0.3, which="both")
    first = entries[0][0] if entries else {}
    title = run_title("rate_series", {k: first[k] for k in ("material", "sample") if k in first})
    series = first.get("series")
    title += f" — series {str(series)[:8]}, {len(entries)} runs" if series else f" — {len(entries)} runs"
    fig.suptitle(title, x=0.02, ha="left", fontsize=12)
    return fig


def series_entries(root, start: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(start, ``operando_xrd`` entry) of every run of the ``series`` ``start`` belongs to
    (runs without operando_xrd results yet are left out), in the catalog ``root``."""
    from tiled.queries import Key

    from ..sinks import read_results

    series = start.get("series")
    if not series:
        return []
    out = []
    for uid, run in root.search(Key("start.series") == series).items():
        md = dict(run.metadata.get("start") or {})
        if md.get("series") != series:
            continue
        try:
            entry = read_results(root, md.get("uid", uid))["analyses"].get("operando_xrd")
        except KeyError:
            continue
        if entry and entry.get("n_rows"):
            out.append((md, entry))
    return sorted(out, key=lambda se: se[0].get("series_index", 0))
