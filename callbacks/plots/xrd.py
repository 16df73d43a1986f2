"""The operando XRD figure, laid out as the study's figures are.

Panels (all lattice panels against the same capacity axis, mAh g⁻¹):

- **(003) intensity** contour (Q in Å⁻¹ against time in h) with its colour bar, beside the
  **voltage** against the same time axis;
- **a** and **c** in separate panels (the H3 collapse of c is never drawn on the a scale), the
  **cell volume** (Å³) and the **microstrain** ε;
- the **voltage profile** (V against capacity) with **dQ/dV** beside it on the same voltage axis;
- **c/c₀ against (a/a₀)²** (anisotropy of the lattice change; c₀, a₀ the first refined frame,
  the pristine cell).

Phase 1 (larger c) is drawn with filled markers, phase 2 (smaller c: H3 while H2 and H3
coexist) with hollow markers of the same colour; the figure legend says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..xrd import Q003_GRID_A_INV, i003_matrix
from ._common import column, run_title

__all__ = ["operando_xrd_figure"]

#: axis labels, with units (the tests read them)
CAPACITY_LABEL = "capacity (mAh g$^{-1}$)"
VOLTAGE_LABEL = "voltage (V vs Li/Li$^+$)"
VOLUME_LABEL = "cell volume (Å$^3$)"

_MS = 3.5


def _capacity_axis(cols: dict[str, list], t_h: np.ndarray) -> tuple[np.ndarray, str]:
    """Capacity (mAh/g) as the common x; time (h) when the run recorded no cycler capacity."""
    cap = column(cols, "capacity_mAh_g")
    if cap.size and np.isfinite(cap).any():
        return cap, CAPACITY_LABEL
    return t_h, "time (h) — no capacity recorded"


def _two_phase(ax, x, y1, y2, color, marker="o", scale=1.0) -> None:
    """Phase 1 filled, phase 2 hollow (same colour)."""
    ax.plot(x, y1 * scale, marker, ms=_MS, color=color, ls="none")
    if np.isfinite(y2).any():
        ax.plot(x, y2 * scale, marker, ms=_MS, color=color, mfc="none", ls="none")


def _contraction(ax, summary: dict[str, Any], c: np.ndarray, c2: np.ndarray) -> None:
    """Mark c_max and the pristine c₀ and say how far c contracted from each (legend title)."""
    ok = np.isfinite(c)
    c_max, c_last, c0 = summary.get("c_max_A"), summary.get("c_last_A"), summary.get("c_first_A")
    if not all(isinstance(v, float) and np.isfinite(v) for v in (c_max, c_last, c0)):
        if not ok.any():
            return
        c_max = float(np.nanmax(np.fmax(c, np.where(np.isfinite(c2), c2, -np.inf))))
        c_last, c0 = float(c[ok][-1]), float(c[ok][0])
    ax.axhline(c_max, color="0.45", ls="--", lw=0.9, gid="reference", label=f"c$_{{max}}$ {c_max:.3f} Å")
    ax.axhline(c0, color="k", ls=":", lw=0.9, gid="reference", label=f"pristine c$_0$ {c0:.3f} Å")
    title = (f"contraction to c$_{{end}}$ {c_last:.3f} Å:\n"
             f"{100 * (c_max - c_last) / c_max:.2f} % from c$_{{max}}$, "
             f"{100 * (c0 - c_last) / c0:.2f} % from pristine c$_0$")
    dc = summary.get("max_delta_c_A")
    if isinstance(dc, float) and dc > 0:
        title += f"\nmax Δc (phase 1 − phase 2) {dc:.2f} Å"
    ax.legend(loc="best", fontsize=7.5, title=title, title_fontsize=7.5, framealpha=0.9)


def operando_xrd_figure(entry: dict[str, Any], fig=None, *, start: dict[str, Any] | None = None):
    """Build the operando XRD figure from a results entry of ``operando_xrd``.

    Parameters
    ----------
    entry : dict
        Results entry (``columns`` as lists, ``summary``, ``n_rows``, ``status``), see
        :func:`strainstream.callbacks.sinks.read_results`. Columns used: ``cell_time_s``
        (else ``time``, s), ``voltage_V``, ``capacity_mAh_g``, ``a_A``, ``c_A``, ``volume_A3``,
        ``microstrain`` and their ``_2`` (second phase) twins, ``i003_NN`` (the (003) window).
    fig : matplotlib Figure, optional
        Drawn into (cleared) if given.
    start : dict, optional
        The run's start document: ``material``/``sample`` and ``rate_mA_g`` go into the title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    cols = entry.get("columns") or {}
    summary = entry.get("summary") or {}
    fig = fig or Figure(figsize=(17, 9), layout="constrained")
    fig.clear()
    gs = fig.add_gridspec(2, 6, width_ratios=[1.25, 0.5, 1, 1, 1, 0.5])

    # the cell's own clock (cycler time) when recorded, else the frames' wall-clock time
    t = column(cols, "cell_time_s")
    if not (t.size and np.isfinite(t).all()):
        t = column(cols, "time")
    t_h = (t - np.nanmin(t)) / 3600.0 if t.size and np.isfinite(t).any() else t
    n = max((len(v) for v in cols.values() if isinstance(v, list)), default=0)

    def col(key: str) -> np.ndarray:  # a missing column (e.g. no second phase): all NaN
        arr = column(cols, key)
        return arr if arr.size == n else np.full(n, np.nan)

    t_h = t_h if t_h.size == n else np.full(n, np.nan)
    volt = col("voltage_V")
    x, x_label = _capacity_axis(cols, t_h)
    if x.size != n:
        x = np.full(n, np.nan)
    a, a2 = col("a_A"), col("a_A_2")
    c, c2 = col("c_A"), col("c_A_2")
    v, v2 = col("volume_A3"), col("volume_A3_2")
    eps, eps2 = col("microstrain"), col("microstrain_2")

    # (003) contour against time, the voltage beside it on the same time axis
    ax_q = fig.add_subplot(gs[:, 0])
    img = i003_matrix(cols)
    if len(img) >= 2 and np.isfinite(img).any() and np.isfinite(t_h).all():
        mesh = ax_q.pcolormesh(Q003_GRID_A_INV, t_h, img, shading="nearest", cmap="viridis",
                               rasterized=True)
        fig.colorbar(mesh, ax=ax_q, location="bottom", shrink=0.9, pad=0.01,
                     label="(003) intensity (a.u.)")
    else:
        ax_q.text(0.5, 0.5, "(003) window needs ≥ 2 frames", transform=ax_q.transAxes,
                  ha="center", va="center")
    ax_q.set(xlabel="Q (Å$^{-1}$)", ylabel="time (h)", title="(003) intensity")
    ax_t = fig.add_subplot(gs[:, 1], sharey=ax_q)
    ax_t.plot(volt, t_h, "k-", lw=1.2)
    ax_t.set(xlabel=VOLTAGE_LABEL, title="voltage")
    ax_t.tick_params(labelleft=False)
    ax_t.grid(alpha=0.3)

    # lattice against capacity: a, c, cell volume, microstrain (one shared x axis)
    ax_a = fig.add_subplot(gs[0, 2])
    _two_phase(ax_a, x, a, a2, "C0", "o")
    ax_a.set(ylabel="a (Å)", title="lattice parameter a")
    ax_c = fig.add_subplot(gs[1, 2], sharex=ax_a)
    _two_phase(ax_c, x, c, c2, "C3", "s")
    ax_c.set(xlabel=x_label, ylabel="c (Å)", title="lattice parameter c")
    _contraction(ax_c, summary, c, c2)
    ax_v = fig.add_subplot(gs[0, 3], sharex=ax_a)
    _two_phase(ax_v, x, v, v2, "C2", "D")
    ax_v.set(ylabel=VOLUME_LABEL, title="unit-cell volume")
    ax_e = fig.add_subplot(gs[1, 3], sharex=ax_a)
    _two_phase(ax_e, x, eps, eps2, "C4", "^", scale=1e3)
    ax_e.set(xlabel=x_label, ylabel="microstrain ε (10$^{-3}$)", title="microstrain (Williamson–Hall)")
    for ax in (ax_a, ax_v):
        ax.tick_params(labelbottom=False)
    for ax in (ax_a, ax_c, ax_v, ax_e):
        ax.grid(alpha=0.3)

    # voltage profile and dQ/dV on one voltage axis
    ax_p = fig.add_subplot(gs[0, 4], sharex=ax_a)
    ax_p.plot(x, volt, "k-", lw=1.2)
    ax_p.set(xlabel=x_label, ylabel=VOLTAGE_LABEL, title="voltage profile")
    ax_p.grid(alpha=0.3)
    ax_dq = fig.add_subplot(gs[0, 5], sharey=ax_p)
    ok = np.isfinite(volt) & np.isfinite(x) & (x_label == CAPACITY_LABEL)
    if ok.sum() >= 5:
        from strainstream.electrochem import dqdv

        try:
            v_bins, dq = dqdv(volt[ok], x[ok], bin_width_V=0.01, smooth_V=0.02)
            ax_dq.plot(dq, v_bins, "k-", lw=1.2)
        except ValueError as exc:  # e.g. a segment without charge passed
            ax_dq.text(0.5, 0.5, str(exc), transform=ax_dq.transAxes, ha="center", wrap=True,
                       fontsize=7)
    ax_dq.set(xlabel="dQ/dV (mAh g$^{-1}$ V$^{-1}$)", title="dQ/dV")
    ax_dq.tick_params(labelleft=False)
    ax_dq.grid(alpha=0.3)

    # c/c0 against (a/a0)^2, coloured by capacity
    ax_r = fig.add_subplot(gs[1, 4:])
    good = np.isfinite(a) & np.isfinite(c)
    if good.any():
        a0, c0 = a[good][0], c[good][0]
        finite_x = np.isfinite(x)
        lo, hi = (float(np.nanmin(x)), float(np.nanmax(x))) if finite_x.any() else (0.0, 1.0)
        sc = ax_r.scatter((a / a0) ** 2, c / c0, c=x, s=16, cmap="viridis", vmin=lo, vmax=hi,
                          marker="o")
        if np.isfinite(c2).any():
            ax_r.scatter((a2 / a0) ** 2, c2 / c0, s=16, facecolors="none",
                         edgecolors=sc.cmap(sc.norm(x)), marker="o")
        fig.colorbar(sc, ax=ax_r, label=x_label, shrink=0.9)
    ax_r.set(xlabel="(a/a$_0$)$^2$", ylabel="c/c$_0$", title="c/c$_0$ vs (a/a$_0$)$^2$ (a$_0$, c$_0$: pristine)")
    ax_r.grid(alpha=0.3)

    handles = [Line2D([], [], marker="o", color="0.25", ls="none", ms=6, label="phase 1 (larger c)"),
               Line2D([], [], marker="o", color="0.25", mfc="none", ls="none", ms=6,
                      label="phase 2 (smaller c: H3 beside H2), hollow")]
    fig.legend(handles=handles, loc="outside upper right", ncols=2, frameon=False)
    fig.suptitle(run_title("operando_xrd", start, entry), x=0.02, ha="left", fontsize=13)
    return fig
