"""The operando XRD figure: (003) contour beside the voltage profile, lattice vs capacity,
microstrain vs state of charge and c/c0 vs (a/a0)² — the panels of the study's figures."""

from __future__ import annotations

import numpy as np

from ..xrd import Q003_GRID_A_INV, i003_matrix

#: theoretical capacity of LiNiO2-type cathodes used to express state of charge x in Li(1-x)
THEORETICAL_CAPACITY_MAH_G = 275.0


def _arr(cols, key):
    return np.asarray([np.nan if v is None else v for v in cols.get(key, [])], dtype=float)


def operando_xrd_figure(entry, fig=None):
    """Build the figure from a results entry of ``operando_xrd`` (columns as lists)."""
    from matplotlib.figure import Figure

    cols = entry["columns"]
    fig = fig or Figure(figsize=(15, 7), layout="constrained")
    fig.clear()
    gs = fig.add_gridspec(2, 5, width_ratios=[1.3, 0.6, 1, 1, 1])
    # the cell's own clock (cycler time) when recorded, else the frames' wall-clock time
    t = _arr(cols, "cell_time_s")
    if not (t.size and np.isfinite(t).all()):
        t = _arr(cols, "time")
    t_h = (t - t[0]) / 3600.0 if t.size else t
    volt, cap = _arr(cols, "voltage_V"), _arr(cols, "capacity_mAh_g")
    a, c, v = _arr(cols, "a_A"), _arr(cols, "c_A"), _arr(cols, "volume_A3")
    c2, eps = _arr(cols, "c_A_2"), _arr(cols, "microstrain")

    ax_c = fig.add_subplot(gs[:, 0])
    img = i003_matrix(cols)
    if len(img) >= 2:
        ax_c.pcolormesh(Q003_GRID_A_INV, t_h, img, shading="nearest", cmap="viridis")
    ax_c.set(xlabel="Q (Å$^{-1}$)", ylabel="time (h)", title="(003) intensity")
    ax_v = fig.add_subplot(gs[:, 1], sharey=ax_c)
    ax_v.plot(volt, t_h, "k-")
    ax_v.set(xlabel="voltage (V vs Li/Li$^+$)", title="voltage")
    ax_v.tick_params(labelleft=False)

    ax_ac = fig.add_subplot(gs[0, 2])
    ax_ac.plot(cap, a, "o", ms=3, color="C0", label="a")
    ax_ac.set(ylabel="a (Å)", title="lattice vs capacity")
    ax_c2 = ax_ac.twinx()
    ax_c2.plot(cap, c, "s", ms=3, color="C3", label="c")
    ax_c2.plot(cap, c2, "s", ms=3, mfc="none", color="C3", label="c (2nd phase)")
    ax_c2.set_ylabel("c (Å)", color="C3")
    ax_vol = fig.add_subplot(gs[1, 2], sharex=ax_ac)
    ax_vol.plot(cap, v, "o", ms=3, color="C2")
    ax_vol.plot(cap, _arr(cols, "volume_A3_2"), "o", ms=3, mfc="none", color="C2")
    ax_vol.set(xlabel="capacity (mAh g$^{-1}$)", ylabel="V (Å$^3$)")

    ax_eps = fig.add_subplot(gs[0, 3])
    soc = cap / THEORETICAL_CAPACITY_MAH_G
    ax_eps.plot(soc, eps * 1e3, "o", ms=3, color="C4")
    ax_eps.set(xlabel="x in Li$_{1-x}$MO$_2$", ylabel="microstrain ε (10$^{-3}$)", title="microstrain")
    ax_r = fig.add_subplot(gs[1, 3])
    ok = np.isfinite(a) & np.isfinite(c)
    if ok.any():
        a0, c0 = a[ok][0], c[ok][0]
        ax_r.plot((a / a0) ** 2, c / c0, "o", ms=3, color="C5")
    ax_r.set(xlabel="(a/a$_0$)$^2$", ylabel="c/c$_0$")

    # differential capacity of the same charge, from the cycler readings of the frames
    ax_dq = fig.add_subplot(gs[:, 4])
    ok = np.isfinite(volt) & np.isfinite(cap)
    if ok.sum() >= 5:
        from strainstream.electrochem import dqdv

        try:
            v_bins, dq = dqdv(volt[ok], cap[ok], bin_width_V=0.01, smooth_V=0.02)
            ax_dq.plot(dq, v_bins, "k-")
        except ValueError as exc:  # e.g. a segment without charge passed
            ax_dq.text(0.5, 0.5, str(exc), transform=ax_dq.transAxes, ha="center", wrap=True)
    ax_dq.set(xlabel="dQ/dV (mAh g$^{-1}$ V$^{-1}$)", ylabel="voltage (V)", title="dQ/dV")
    return fig
