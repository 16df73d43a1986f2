"""The electrochemistry protocol tabs of the dashboard, laid out as ``strainstream plot`` draws
them (:mod:`strainstream.callbacks.plots.electrochem`):

- **cycling** (the ``cycling`` results of an ``operando_cycling`` run): charge and discharge
  capacity (mAh g⁻¹) with the coulombic efficiency (%) on a second axis, capacity retention
  vs cycle 1 (%), mean charge/discharge voltage (V), all against cycle number;
- **GITT** (the ``gitt`` results of an ``operando_gitt`` run): the voltage transient against
  time (h), the points under current marked, and D (cm² s⁻¹, log axis) against the state of
  charge x after each pulse — the pulses of the rows while the run goes, all the pulses of
  ``gitt_arrays`` once the worker stored them (the last pulse completes at the stop);
- **rate series** (the ``operando_xrd`` results of the runs sharing a ``series`` id in their
  start documents, :func:`strainstream.plans.electrochem.rate_series`): microstrain ε against
  the charge capacity since each run's first frame, one curve per rate, and ε against rate at
  25, 50 and 90 % of the smallest charge all runs reached
  (:func:`strainstream.callbacks.plots.electrochem.strain_vs_rate`, the figure's numbers).

:class:`ProtocolViews` is a part of the page (:class:`strainstream.dashboard._app.Page`): it
builds the tabs and draws the rows the page's poll and tiled's subscription bring, as the
operando XRD tab does (only the new rows are streamed to the browser).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._common import col, fig

__all__ = ["FRACTIONS", "PROTOCOL_VIEWS", "ProtocolViews"]

#: the dashboard views (results tables) of the single-run protocol tabs
PROTOCOL_VIEWS = ("cycling", "gitt")
#: the arrays the GITT callback stores at the stop (every pulse), in the order drawn
GITT_ARRAYS = ("pulse_soc", "d_cm2_s", "tau_s", "delta_es_V")
#: the columns of a rate-series run's curve: charge since its first frame (mAh/g), ε (10⁻³), mA/g
SERIES_COLUMNS = ("q", "eps", "rate", "run", "seq_num")
#: charge levels of the microstrain-vs-rate panel, fractions of the smallest charge all runs reached
FRACTIONS = (0.25, 0.5, 0.9)

RETENTION_TITLE = "capacity retention"
CYCLE_LABEL = "cycle number"
CAPACITY_LABEL = "specific capacity (mAh g⁻¹)"
CE_LABEL = "coulombic efficiency (%)"
RETENTION_LABEL = "capacity retention (%)"
MEAN_V_LABEL = "mean voltage (V vs Li/Li⁺)"
D_LABEL = "Li diffusivity D (cm² s⁻¹)"
SOC_LABEL = "state of charge x (fraction of practical capacity)"
STRAIN_LABEL = "microstrain ε (10⁻³)"
CHARGE_LABEL = "charge capacity (mAh g⁻¹)"
RATE_LABEL = "rate (mA g⁻¹)"
#: matplotlib's default colours, as the ``plot`` figures use them
C = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")


def _good(rows: dict[str, list], n: int) -> np.ndarray:
    """Rows without a flag."""
    flags = rows.get("flag")
    if not flags or len(flags) != n:
        return np.ones(n, dtype=bool)
    return np.array([not f for f in flags], dtype=bool)


def _rate_color(rate: float, rates: list[float]) -> str:
    """The plasma colour of ``rate`` among the series' ``rates`` (as the figure colours them)."""
    from bokeh.palettes import Plasma256

    ladder = sorted({float(r) for r in rates if isinstance(r, int | float)} | {float(rate)})
    k = ladder.index(float(rate))
    return Plasma256[int(round(255 * 0.85 * k / max(len(ladder) - 1, 1)))]


class ProtocolViews:
    """The cycling, GITT and rate-series tabs of :class:`~strainstream.dashboard._app.Page`
    (a mixin: the page holds the rows, the followed runs and the run list)."""

    # ------------------------------------------------------------------ layout
    def _cycling_view(self):
        from bokeh.layouts import column, row
        from bokeh.models import ColumnDataSource, DataRange1d, Div, LinearAxis, Range1d, Span

        self.cyc_sel = self._run_select("cycling")
        self.cyc_info = Div(text="", width=900, name="cycling_info")
        self.cyc_src = ColumnDataSource(data={k: [] for k in ("cycle", "chg", "dis", "ce", "ret", "vc", "vd",
                                                              "seq_num")}, name="cycling_points")
        s = self.cyc_src
        p_q = fig("capacity and coulombic efficiency", CYCLE_LABEL, CAPACITY_LABEL, width=480, height=340,
                  y_range=DataRange1d(start=0.0), name="cycling_capacity",
                  tooltips=[("cycle", "@cycle"), ("charge", "@chg{0.0} mAh/g"), ("discharge", "@dis{0.0} mAh/g"),
                            ("coulombic efficiency", "@ce{0.00} %")])
        p_q.scatter("cycle", "chg", source=s, color=C[0], fill_alpha=0, size=6, legend_label="charge")
        p_q.scatter("cycle", "dis", source=s, color=C[0], size=6, legend_label="discharge")
        self.cyc_ce_range = Range1d(start=95.0, end=101.0)
        p_q.extra_y_ranges = {"ce": self.cyc_ce_range}
        p_q.add_layout(LinearAxis(y_range_name="ce", axis_label=CE_LABEL, axis_label_text_color=C[3],
                                  major_label_text_color=C[3], axis_line_color=C[3],
                                  major_tick_line_color=C[3], minor_tick_line_color=C[3]), "right")
        p_q.line("cycle", "ce", source=s, color=C[3], y_range_name="ce", line_width=1)
        p_q.scatter("cycle", "ce", source=s, color=C[3], marker="square", size=5, y_range_name="ce",
                    legend_label="coulombic efficiency")
        p_q.legend.location = "center_right"  # the capacities run along the top, CE at its top
        self.p_ret = fig(RETENTION_TITLE, CYCLE_LABEL, RETENTION_LABEL, width=420, height=340,
                         name="cycling_retention",
                         tooltips=[("cycle", "@cycle"), ("retention", "@ret{0.0} %"), ("discharge", "@dis{0.0} mAh/g")])
        self.p_ret.add_layout(Span(location=100.0, dimension="width", line_color="#808080", line_dash="dotted"))
        self.p_ret.line("cycle", "ret", source=s, color=C[2])
        self.p_ret.scatter("cycle", "ret", source=s, color=C[2], size=6, legend_label="retention vs cycle 1")
        self.p_ret.legend.location = "bottom_left"  # the retention falls from top left
        p_v = fig("mean voltage (hysteresis)", CYCLE_LABEL, MEAN_V_LABEL, width=420, height=340,
                  name="cycling_voltage",
                  tooltips=[("cycle", "@cycle"), ("mean charge voltage", "@vc{0.000} V"),
                            ("mean discharge voltage", "@vd{0.000} V")])
        p_v.line("cycle", "vc", source=s, color=C[1])
        p_v.scatter("cycle", "vc", source=s, color=C[1], marker="triangle", size=7, legend_label="charge")
        p_v.line("cycle", "vd", source=s, color=C[4])
        p_v.scatter("cycle", "vd", source=s, color=C[4], marker="inverted_triangle", size=7,
                    legend_label="discharge")
        p_v.legend.location = "center_right"
        for p in (p_q, self.p_ret, p_v):
            p.xaxis.ticker.min_interval = 1  # whole cycles (the grid follows the axis' ticker)
        return column(row(self.cyc_sel, self.cyc_info), row(p_q, self.p_ret, p_v))

    def _gitt_view(self):
        from bokeh.layouts import column, row
        from bokeh.models import (
            ColumnDataSource,
            Div,
            HoverTool,
            LogTicker,
            PrintfTickFormatter,
            Range1d,
        )

        self.gitt_sel = self._run_select("gitt")
        self.gitt_info = Div(text="", width=900, name="gitt_info")
        keys = ("t_h", "volt", "cur", "seq_num")
        self.gitt_v = ColumnDataSource(data={k: [] for k in keys}, name="gitt_transient")
        self.gitt_on = ColumnDataSource(data={k: [] for k in keys}, name="gitt_pulse_points")
        self.gitt_t0: float | None = None
        p_v = fig("GITT transient", "time (h)", "voltage (V vs Li/Li⁺)", width=560, height=390, name="gitt_voltage",
                  tooltips=[("time", "@t_h{0.000} h"), ("voltage", "@volt{0.0000} V"), ("current", "@cur{0.000} mA")])
        p_v.line("t_h", "volt", source=self.gitt_v, color="black", line_width=1.2, legend_label="cell voltage")
        p_v.scatter("t_h", "volt", source=self.gitt_on, color=C[3], size=3.5, legend_label="under current (pulse)")
        p_v.legend.location = "bottom_right"
        self.gitt_d = ColumnDataSource(data={k: [] for k in ("soc", "d", "tau", "des", "pulse")}, name="gitt_d")
        self.gitt_d_range = Range1d(start=1e-13, end=1e-10)  # set to lo/3 … 3·hi of the pulses (the figure's)
        self.p_gd = fig("Li diffusivity", SOC_LABEL, D_LABEL, width=470, height=390, y_axis_type="log",
                        y_range=self.gitt_d_range,
                        name="gitt_diffusivity",
                        tooltips=[("pulse", "@pulse"), ("x", "@soc{0.0000}"), ("D", "@d{%.3e} cm²/s"),
                                  ("τ", "@tau{0.0} s"), ("ΔE_s", "@des{0.00000} V")])
        self.p_gd.select_one(HoverTool).formatters = {"@d": "printf"}
        # 1, 2, 5 × 10ⁿ labelled 2e-12 (the default labels every minor tick of a one-decade range)
        self.p_gd.yaxis.ticker = LogTicker(mantissas=[1, 2, 5])
        self.p_gd.yaxis.formatter = PrintfTickFormatter(format="%.0e")
        self.p_gd.line("soc", "d", source=self.gitt_d, color=C[0])
        self.gitt_d_points = self.p_gd.scatter("soc", "d", source=self.gitt_d, color=C[0], size=8,
                                               legend_label="D (10 < √t < 20 s½)")
        self.p_gd.legend.location = "bottom_left"
        return column(row(self.gitt_sel, self.gitt_info), row(p_v, self.p_gd, self._gitt_lattice_fig()))

    def _gitt_lattice_fig(self):
        """c (left axis) and a (right axis) of the relaxed point after each pulse, on D's x axis."""
        from bokeh.models import ColumnDataSource, Legend, LegendItem, LinearAxis, Range1d, Whisker

        keys = ("soc", "pulse", "frame", *(f"{k}{s}" for k in ("a", "c") for s in ("", "_lo", "_hi", "_err")))
        self.gitt_lat = ColumnDataSource(data={k: [] for k in keys}, name="gitt_lattice")
        self.gitt_xrd_rows: dict[str, list] = {}
        self.p_gl = fig("lattice at the relaxed points", SOC_LABEL, "c (Å)", width=470, height=390,
                        x_range=self.p_gd.x_range, name="gitt_relaxed_points",
                        tooltips=[("pulse", "@pulse"), ("x", "@soc{0.0000}"), ("c", "@c{0.0000} ± @c_err{0.0000} Å"),
                                  ("a", "@a{0.0000} ± @a_err{0.0000} Å"), ("XRD frame", "@frame")])
        c_line = self.p_gl.line("soc", "c", source=self.gitt_lat, color=C[2])
        c_pts = self.p_gl.scatter("soc", "c", source=self.gitt_lat, color=C[2], marker="square", size=7)
        self.p_gl.y_range.renderers = [c_line, c_pts]  # the left axis spans c only
        self.p_gl.add_layout(Whisker(source=self.gitt_lat, base="soc", lower="c_lo", upper="c_hi", line_color=C[2]))
        self.gitt_a_range = Range1d(start=2.80, end=2.90)
        self.p_gl.extra_y_ranges = {"a": self.gitt_a_range}
        self.p_gl.add_layout(LinearAxis(y_range_name="a", axis_label="a (Å)", axis_label_text_color=C[1],
                                        major_label_text_color=C[1]), "right")
        a_line = self.p_gl.line("soc", "a", source=self.gitt_lat, color=C[1], line_dash="dashed", y_range_name="a")
        a_pts = self.p_gl.scatter("soc", "a", source=self.gitt_lat, color=C[1], marker="triangle", size=7,
                                  y_range_name="a")
        self.p_gl.add_layout(Whisker(source=self.gitt_lat, base="soc", lower="a_lo", upper="a_hi", line_color=C[1],
                                     y_range_name="a"))
        # below the plot: c and a cross while the cell charges, no corner stays free
        self.p_gl.add_layout(Legend(items=[LegendItem(label="c (relaxed point after the pulse)",
                                                      renderers=[c_line, c_pts]),
                                           LegendItem(label="a", renderers=[a_line, a_pts])],
                                    orientation="horizontal", location="center"), "below")
        return self.p_gl

    def _series_view(self):
        from bokeh.layouts import column, row
        from bokeh.models import ColumnDataSource, Div, FixedTicker, Legend, Select

        self.series_sel = Select(title="rate series", value="newest", options=["newest"], width=420,
                                 name="run_rate_series")
        self.series_sel.on_change("value", lambda attr, old, new: self._choose_series(None if new == "newest" else new))
        self.series_info = Div(text="", width=900, name="rate_series_info")
        self.p_se = fig("microstrain during charge", CHARGE_LABEL, STRAIN_LABEL, width=640, height=400,
                        name="series_strain",
                        tooltips=[("run", "@run"), ("rate", "@rate{0.0} mA/g"), ("charge", "@q{0.0} mAh/g"),
                                  ("ε", "@eps{0.000} ×10⁻³")])
        self.series_legend = Legend(title="charge rate", location="top_left")
        self.p_se.add_layout(self.series_legend)
        # the runs' curves come with the runs; an empty one spares Bokeh's "no renderers" warning
        self.p_se.line("q", "eps", source=ColumnDataSource(data={k: [] for k in SERIES_COLUMNS}))
        self.series_ticker = FixedTicker(ticks=[])
        self.p_sr = fig("microstrain vs rate", RATE_LABEL, STRAIN_LABEL, width=560, height=400, x_axis_type="log",
                        name="series_vs_rate",
                        tooltips=[("rate", "@rate{0.0} mA/g"), ("ε", "@eps{0.000} ×10⁻³"),
                                  ("at charge", "@q{0.0} mAh/g (@pct{0} % of the charge)")])
        self.p_sr.xaxis.ticker = self.series_ticker
        self.series_levels = []
        legend = Legend(location="center_right")  # between the low and the high charge levels
        self.p_sr.add_layout(legend)
        from bokeh.models import LegendItem

        for j, f in enumerate(FRACTIONS):
            src = ColumnDataSource(data={"rate": [], "eps": [], "q": [], "pct": []},
                                   name=f"series_vs_rate_{round(100 * f)}")
            r1 = self.p_sr.line("rate", "eps", source=src, color=C[j])
            r2 = self.p_sr.scatter("rate", "eps", source=src, color=C[j], marker="square", size=8)
            item = LegendItem(label=f"at {100 * f:.0f} % of the charge", renderers=[r1, r2])
            legend.items.append(item)
            self.series_levels.append((f, src, item))
        #: uid -> (source, renderers, legend item) of the runs drawn in the ε vs charge panel
        self.series_drawn: dict[str, tuple[Any, list, Any]] = {}
        self.series_q0: dict[str, float] = {}  # mAh/g, capacity at each run's first good frame
        self.series_rate: dict[str, float] = {}  # mA/g
        self.series_rows: dict[str, dict[str, list]] = {}
        return column(row(self.series_sel, self.series_info), row(self.p_se, self.p_sr))

    # ------------------------------------------------------------------ resets
    def _protocol_reset(self, view: str) -> None:
        if view == "cycling":
            self.cyc_src.data = {k: [] for k in self.cyc_src.data}
            self.cyc_ce_range.start, self.cyc_ce_range.end = 95.0, 101.0
            self.p_ret.title.text = RETENTION_TITLE
        elif view == "gitt":
            self.gitt_t0 = None
            for src in (self.gitt_v, self.gitt_on, self.gitt_d, self.gitt_lat):
                src.data = {k: [] for k in src.data}
            self.gitt_xrd_rows = {}
            self.p_gd.title.text = "Li diffusivity"
            self.p_gl.title.text = "lattice at the relaxed points"

    def _series_reset(self) -> None:
        """Another series: drop the curves of the previous one."""
        gone = {id(r) for _, rs, _ in self.series_drawn.values() for r in rs}
        self.p_se.renderers = [r for r in self.p_se.renderers if id(r) not in gone]
        self.series_legend.items = []
        self.series_drawn, self.series_q0, self.series_rows = {}, {}, {}
        for f, src, item in self.series_levels:
            src.data = {k: [] for k in src.data}
            item.label = {"value": f"at {100 * f:.0f} % of the charge"}
        self.series_ticker.ticks = []

    # ------------------------------------------------------------------ drawing
    def _cycling_rows(self, rows: dict[str, list]) -> None:
        n = len(rows.get("seq_num", []))
        ok = _good(rows, n) & np.isfinite(col(rows, "cycle", n))
        if not ok.any():
            return
        self.cyc_src.stream({
            "cycle": col(rows, "cycle", n)[ok], "chg": col(rows, "charge_capacity_mAh_g", n)[ok],
            "dis": col(rows, "discharge_capacity_mAh_g", n)[ok],
            "ce": 100.0 * col(rows, "coulombic_efficiency", n)[ok], "ret": 100.0 * col(rows, "retention", n)[ok],
            "vc": col(rows, "mean_charge_voltage_V", n)[ok], "vd": col(rows, "mean_discharge_voltage_V", n)[ok],
            "seq_num": np.asarray(rows["seq_num"], dtype=np.int64)[ok]})
        ce = np.asarray(self.cyc_src.data["ce"], dtype=float)
        if np.isfinite(ce).any():  # as the figure: down to 95 % at least, up to 101 %
            self.cyc_ce_range.start = min(float(np.nanmin(ce)) - 1.0, 95.0)
        ret = np.asarray(self.cyc_src.data["ret"], dtype=float)
        title = RETENTION_TITLE
        if ret.size and math.isfinite(ret[-1]):
            title += f": {ret[-1]:.1f} % after cycle {int(self.cyc_src.data['cycle'][-1])}"
        self.p_ret.title.text = title

    def _gitt_rows(self, rows: dict[str, list]) -> None:
        n = len(rows.get("seq_num", []))
        ok = _good(rows, n)
        t = col(rows, "cell_time_s", n)
        ok &= np.isfinite(t)
        if ok.any():
            if self.gitt_t0 is None:
                self.gitt_t0 = float(t[ok][0])
            cur = col(rows, "current_mA", n)[ok]
            new = {"t_h": (t[ok] - self.gitt_t0) / 3600.0, "volt": col(rows, "voltage_V", n)[ok], "cur": cur,
                   "seq_num": np.asarray(rows["seq_num"], dtype=np.int64)[ok]}
            self.gitt_v.stream(new)
            on = cur != 0.0
            if on.any():
                self.gitt_on.stream({k: v[on] for k, v in new.items()})
        if self.maps["gitt"]:  # all the pulses are drawn from the stored arrays
            return
        pulse = col(rows, "pulse", n)
        sel = ok & (pulse >= 0)
        if sel.any():
            self._gitt_pulses(col(rows, "pulse_soc", n)[sel], col(rows, "d_cm2_s", n)[sel],
                              col(rows, "tau_s", n)[sel], col(rows, "delta_es_V", n)[sel], pulse[sel], stream=True)

    def _gitt_pulses(self, soc, d, tau, des, pulse, *, stream: bool) -> None:
        """Draw pulses (D > 0 only: a log axis); ``stream`` adds them, else they replace the drawn ones."""
        keep = np.isfinite(soc) & np.isfinite(d) & (d > 0)
        new = {"soc": soc[keep], "d": d[keep], "tau": tau[keep], "des": des[keep],
               "pulse": np.asarray(pulse, dtype=np.int64)[keep]}
        if stream:
            self.gitt_d.stream(new)
        else:
            self.gitt_d.data = {k: v.tolist() for k, v in new.items()}
        self.p_gd.title.text = f"Li diffusivity ({len(self.gitt_d.data['d'])} pulses)"
        d_all = np.asarray(self.gitt_d.data["d"], dtype=float)
        if d_all.size:
            self.gitt_d_range.start, self.gitt_d_range.end = float(d_all.min()) / 3.0, float(d_all.max()) * 3.0
        self._gitt_lattice()

    def _gitt_xrd(self, rows: dict[str, list]) -> None:
        """New ``operando_xrd`` rows of the followed GITT run (its frames at the relaxed points)."""
        for k, v in rows.items():
            self.gitt_xrd_rows.setdefault(k, []).extend(v)
        self._gitt_lattice()

    def _gitt_lattice(self) -> None:
        """a and c of the frame ending each pulse's rest (the figure's
        :func:`~strainstream.callbacks.plots.electrochem.gitt_lattice` join), redrawn whole."""
        from strainstream.callbacks.plots.electrochem import gitt_lattice

        if not self.gitt_xrd_rows.get("seq_num"):
            return
        arrays = self.maps["gitt"] or None
        j = gitt_lattice({"columns": self.rows["gitt"]}, arrays, {"columns": self.gitt_xrd_rows})
        keep = np.isfinite(j["pulse_soc"]) & (np.isfinite(j["c_A"]) | np.isfinite(j["a_A"]))
        data: dict[str, Any] = {"soc": j["pulse_soc"][keep].tolist(),
                                "pulse": np.flatnonzero(keep).tolist(), "frame": j["frame"][keep].tolist()}
        for k in ("a", "c"):
            v, e = j[f"{k}_A"][keep], np.nan_to_num(j[f"{k}_err_A"][keep])
            data.update({k: v.tolist(), f"{k}_err": e.tolist(), f"{k}_lo": (v - e).tolist(), f"{k}_hi": (v + e).tolist()})
        self.gitt_lat.data = data
        self.p_gl.title.text = f"lattice at the relaxed points ({int(np.isfinite(j['c_A']).sum())})"
        a = np.asarray(data["a"], dtype=float)
        if np.isfinite(a).any():
            lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
            pad = max(0.1 * (hi - lo), 2e-3)
            self.gitt_a_range.start, self.gitt_a_range.end = lo - pad, hi + pad

    def _gitt_arrays(self) -> None:
        """The worker's ``gitt_arrays`` (every pulse, written at the stop) replace the rows' pulses."""
        arrays = self.maps["gitt"]
        got = [np.asarray(arrays[k], dtype=float).ravel() for k in GITT_ARRAYS if k in arrays]
        if len(got) < len(GITT_ARRAYS) or len({a.size for a in got}) > 1:
            # read while the worker was writing them: the metadata it writes last brings a new read
            self.maps["gitt"] = {}
            return
        soc, d, tau, des = got
        self._gitt_pulses(soc, d, tau, des, np.arange(d.size), stream=False)

    def _gitt_legend(self, start: dict[str, Any]) -> None:
        r = start.get("particle_radius_um")
        label = "D (10 < √t < 20 s½"
        label += f", r_p = {r:g} µm)" if isinstance(r, int | float) else ")"
        self.p_gd.legend.items[0].label = {"value": label}

    def _series_add_run(self, uid: str, line: dict[str, Any]) -> None:
        """A run of the followed series gets its curve (colour and legend by its rate)."""
        from bokeh.models import ColumnDataSource, LegendItem

        start = line.get("start") or {}
        rate = start.get("rate_mA_g")
        rate = float(rate) if isinstance(rate, int | float) else math.nan
        color = _rate_color(rate, list(start.get("series_rates_mA_g") or [])) if math.isfinite(rate) else "#808080"
        src = ColumnDataSource(data={k: [] for k in SERIES_COLUMNS}, name=f"series_strain_{uid}")
        r1 = self.p_se.line("q", "eps", source=src, color=color, line_width=1.2)
        r2 = self.p_se.scatter("q", "eps", source=src, color=color, size=5)
        item = LegendItem(label=f"{rate:g} mA g⁻¹" if math.isfinite(rate) else "rate ?", renderers=[r1, r2])
        self.series_drawn[uid] = (src, [r1, r2], item)
        self.series_rate[uid] = rate
        order = sorted(self.series_drawn, key=lambda u: (self.series_rate[u], u))
        self.series_legend.items = [self.series_drawn[u][2] for u in order]

    def _series_rows(self, uid: str, rows: dict[str, list]) -> None:
        if uid not in self.series_drawn:
            return
        acc = self.series_rows.setdefault(uid, {})
        for k, v in rows.items():
            acc.setdefault(k, []).extend(v)
        n = len(rows.get("seq_num", []))
        q, eps = col(rows, "capacity_mAh_g", n), col(rows, "microstrain", n)
        ok = _good(rows, n) & np.isfinite(q) & np.isfinite(eps)
        if ok.any():
            q0 = self.series_q0.setdefault(uid, float(q[ok][0]))  # the charge since the run's first frame
            rate = self.series_rate[uid]
            self.series_drawn[uid][0].stream({
                "q": q[ok] - q0, "eps": 1e3 * eps[ok], "rate": np.full(int(ok.sum()), rate),
                "run": [uid[:8]] * int(ok.sum()), "seq_num": np.asarray(rows["seq_num"], dtype=np.int64)[ok]})
        self._series_vs_rate()

    def _series_vs_rate(self) -> None:
        """ε against rate at :data:`FRACTIONS` of the smallest charge all runs reached (the figure's
        :func:`~strainstream.callbacks.plots.electrochem.strain_vs_rate`)."""
        from strainstream.callbacks.plots.electrochem import strain_vs_rate

        reached = [float(np.nanmax(src.data["q"])) for src, _, _ in self.series_drawn.values() if len(src.data["q"])]
        if not reached:
            return
        caps = [f * min(reached) for f in FRACTIONS]
        entries = [({"rate_mA_g": self.series_rate[u]}, {"columns": self.series_rows.get(u, {})})
                   for u in self.series_drawn]
        rates, eps = strain_vs_rate(entries, caps)
        for j, (f, src, item) in enumerate(self.series_levels):
            src.data = {"rate": rates.tolist(), "eps": (1e3 * eps[:, j]).tolist(), "q": [caps[j]] * rates.size,
                        "pct": [100.0 * f] * rates.size}
            item.label = {"value": f"at {caps[j]:.0f} mAh g⁻¹ ({100 * f:.0f} % of the charge)"}
        ticks = [float(r) for r in rates if math.isfinite(r) and r > 0]
        if ticks != list(self.series_ticker.ticks):
            self.series_ticker.ticks = ticks
