"""The dashboard page: one Bokeh document per browser session.

Tabs: **runs** (the catalog's runs with filters), **operando XRD**, **SXDM**, **TXM-XANES**,
**compare**, and the electrochemistry protocols' **cycling**, **GITT** and **rate series**
(:mod:`._protocols`). A periodic callback (:data:`POLL_S`) reads tiled in a worker thread
(:mod:`._data`) and applies what changed on the server loop: new results rows are
``stream``-ed into the sources (only the new rows travel to the browser), maps are replaced
when the worker rewrote them. Any error of a poll is shown in the status line ("tiled
unreachable, retrying") and the next poll tries again; the page never dies with tiled.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
from bokeh.document import without_document_lock

from . import _data
from ._common import TOOLS
from ._common import col as _col
from ._common import fig as _fig
from ._common import nan as _nan
from ._protocols import PROTOCOL_VIEWS, ProtocolViews

__all__ = ["POLL_S", "make_document"]

logger = logging.getLogger(__name__)

#: seconds between two polls of the followed results tables
POLL_S = 0.3
#: seconds between two reads of the run list (it costs a few requests per run)
RUNS_EVERY_S = 3.0
#: seconds between two full reads of a subscribed results table (the safety net)
BACKSTOP_S = 1.0
#: seconds a read of tiled may take before the status line says tiled does not answer
STALLED_S = 3.0
#: seconds between two redraws of the whole-run panels ((003) contour, dQ/dV): each redraw sends
#: and paints the whole image, which delays the next points' paint in a busy browser
HEAVY_S = 2.0
#: the views that follow one run's results table (named as the analysis)
VIEWS = ("operando_xrd", "sxdm", "txm_xanes", *PROTOCOL_VIEWS)
#: the views with stored arrays beside their table (maps; GITT: every pulse at the stop)
ARRAY_VIEWS = ("sxdm", "txm_xanes", "gitt")
#: tab of each view (and of the rate series, which follows several runs)
TAB = {"operando_xrd": 1, "sxdm": 2, "txm_xanes": 3, "cycling": 5, "gitt": 6, "rate_series": 7}
#: the protocol tab a run of each experiment opens first (its other views show it too)
EXPERIMENT_VIEW = {"operando_cycling": "cycling", "operando_gitt": "gitt"}
PHASE_NOTE = "filled: phase 1 (larger c); hollow: phase 2 (smaller c, H3 beside H2)"


#: threads for the clicks' reads (frames of one pixel / voxel)
_EXECUTOR = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dashboard-click")


def _key_error(exc: BaseException) -> bool:
    """tiled refused the key (HTTP 401/403)."""
    if type(exc).__name__ == "CannotPrompt":  # tiled wanted to ask for credentials: no valid key
        return True
    resp = getattr(exc, "response", None)
    return getattr(resp, "status_code", None) in (401, 403)


class Page(ProtocolViews):
    """The widgets, sources and follow-state of one browser session."""

    def __init__(self, doc, uri: str, api_key: str | None) -> None:
        self.doc, self.uri, self.api_key = doc, uri, api_key
        self.root = None
        self.login_failed = False
        self.busy, self.busy_since = False, 0.0
        self.runs: list[dict[str, Any]] = []
        self.runs_at = 0.0
        self.chosen: dict[str, str | None] = {v: None for v in VIEWS}  # None: follow the newest
        self.followed: dict[str, str | None] = {v: None for v in VIEWS}
        #: the table whose rows the view's sources hold (its reset was applied)
        self.shown: dict[str, _data.TableFollower | None] = {v: None for v in VIEWS}
        self.tables: dict[str, _data.TableFollower | None] = {v: None for v in VIEWS}
        self.arrays: dict[str, _data.ArraysFollower | None] = {v: None for v in VIEWS}
        self.rows: dict[str, dict[str, list]] = {v: {} for v in VIEWS}
        self.maps: dict[str, dict[str, np.ndarray]] = {v: {} for v in VIEWS}
        self.map_md: dict[str, dict[str, Any]] = {v: {} for v in VIEWS}
        self.compare: dict[str, _data.TableFollower] = {}
        # the rate series: one series id followed, one table per run of it
        self.series_chosen: str | None = None  # None: follow the newest
        self.series_followed: str | None = None
        self.series_tables: dict[str, _data.TableFollower] = {}
        self.series_shown: dict[str, _data.TableFollower] = {}
        self.gitt_xrd: _data.TableFollower | None = None  # the XRD frames of the followed GITT run
        self.compare_rows: dict[str, dict[str, list]] = {}
        self.compare_at = 0.0
        self.xrd_ref: dict[str, float] = {}
        self.meta_at: dict[str, float] = {}
        self.read_at: dict[str, float] = {}
        self.runs_busy = False
        self.runs_cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self.executor = _EXECUTOR
        self.heavy_at, self.heavy_pending = 0.0, False
        self._build()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        from bokeh.layouts import column, row
        from bokeh.models import Button, Div, PasswordInput, TabPanel, Tabs

        self.status = Div(text="connecting to tiled ...", name="status",
                          styles={"font-family": "monospace", "color": "#555"})
        self.login = Div(text="", name="login_error", visible=False,
                         styles={"color": "#b00020", "font-weight": "bold", "font-size": "15px"})
        self.key_input = PasswordInput(title="API key (read-only is enough)", visible=False, width=360)
        self.key_button = Button(label="log in", visible=False, width=100, name="login_button")
        self.key_button.on_click(self._relogin)
        self.tabs = Tabs(tabs=[TabPanel(child=self._runs_view(), title="runs"),
                               TabPanel(child=self._xrd_view(), title="operando XRD"),
                               TabPanel(child=self._sxdm_view(), title="SXDM"),
                               TabPanel(child=self._txm_view(), title="TXM-XANES"),
                               TabPanel(child=self._compare_view(), title="compare"),
                               TabPanel(child=self._cycling_view(), title="cycling"),
                               TabPanel(child=self._gitt_view(), title="GITT"),
                               TabPanel(child=self._series_view(), title="rate series")],
                         name="tabs")
        header = Div(text=f"<h2 style='margin:4px 0'>strainstream live dashboard</h2>"
                          f"<span style='color:#555'>tiled: {self.uri}</span>")
        self.doc.add_root(column(header, self.status, self.login, row(self.key_input, self.key_button),
                                 self.tabs, name="page"))
        self.doc.title = "strainstream dashboard"

    def _runs_view(self):
        from bokeh.layouts import column, row
        from bokeh.models import ColumnDataSource, DataTable, Select, TableColumn, TextInput

        self.runs_src = ColumnDataSource(data={k: [] for k in (
            "uid", "uid8", "time", "experiment", "material", "status", "recorded", "analysed", "analyses")},
            name="runs")
        cols = [TableColumn(field="uid8", title="run", width=80),
                TableColumn(field="time", title="start time", width=150),
                TableColumn(field="experiment", title="experiment", width=110),
                TableColumn(field="material", title="material", width=110),
                TableColumn(field="status", title="status", width=80),
                TableColumn(field="recorded", title="events recorded", width=110),
                TableColumn(field="analysed", title="events analysed", width=110),
                TableColumn(field="analyses", title="analyses", width=200)]
        self.runs_table = DataTable(source=self.runs_src, columns=cols, width=1100, height=360,
                                    index_position=None, name="runs_table")
        self.f_exp = Select(title="experiment", value="all", options=["all"], width=160)
        self.f_mat = Select(title="material", value="all", options=["all"], width=160)
        self.f_date = TextInput(title="started on or after (YYYY-MM-DD)", value="", width=220)
        for w in (self.f_exp, self.f_mat, self.f_date):
            w.on_change("value", lambda attr, old, new: self._show_runs())
        self.runs_src.selected.on_change("indices", self._run_clicked)
        return column(row(self.f_exp, self.f_mat, self.f_date), self.runs_table)

    def _run_select(self, view: str):
        from bokeh.models import Select

        sel = Select(title="run", value="newest", options=["newest"], width=420, name=f"run_{view}")
        sel.on_change("value", lambda attr, old, new: self._choose(view, None if new == "newest" else new))
        return sel

    def _xrd_view(self):
        from bokeh.layouts import column, gridplot, row
        from bokeh.models import ColorBar, ColumnDataSource, Div, LinearColorMapper, Whisker

        self.xrd_sel = self._run_select("operando_xrd")
        self.xrd_info = Div(text="", width=900)
        keys = ["x", "t_h", "volt", *(f"{k}{p}{s}" for k in ("a", "c", "v", "eps") for p in ("", "2")
                                      for s in ("", "_lo", "_hi", "_err")),
                "ra", "rc", "ra2", "rc2", "seq_num", "served_at"]
        self.xrd_src = ColumnDataSource(data={k: [] for k in keys}, name="xrd_points")
        s = self.xrd_src
        self.xrd_img = ColumnDataSource(data={"image": [], "x": [], "y": [], "dw": [], "dh": []})
        self.xrd_dq = ColumnDataSource(data={"dq": [], "v": []})
        cm = LinearColorMapper(palette="Viridis256")
        p_q = _fig("(003) intensity", "Q (Å⁻¹)", "time (h)", width=360, height=620,
                   tooltips=[("Q", "$x{0.000} Å⁻¹"), ("t", "$y{0.00} h")])
        p_q.image(image="image", x="x", y="y", dw="dw", dh="dh", source=self.xrd_img, color_mapper=cm)
        p_q.add_layout(ColorBar(color_mapper=cm, title="(003) intensity (a.u.)", orientation="horizontal",
                                height=10), "below")
        p_vt = _fig("voltage", "voltage (V vs Li/Li⁺)", "time (h)", width=170, height=620,
                    y_range=p_q.y_range)
        p_vt.line("volt", "t_h", source=s, color="black", line_width=1.5)
        x_label = "capacity (mAh g⁻¹)"
        self.xrd_xlabel = x_label
        figs = {}
        for name, title, ylab, key, color, marker, sym, unit in (
                ("a", "lattice parameter a", "a (Å)", "a", "#1f77b4", "circle", "a", "Å"),
                ("c", "lattice parameter c", "c (Å)", "c", "#d62728", "square", "c", "Å"),
                ("v", "unit-cell volume", "cell volume (Å³)", "v", "#2ca02c", "diamond", "V", "Å³"),
                ("eps", "microstrain (Williamson–Hall)", "microstrain ε (10⁻³)", "eps", "#9467bd", "triangle",
                 "ε", "×10⁻³")):
            p = _fig(title, x_label, ylab, **({"x_range": figs["a"].x_range} if figs else {}),
                     tooltips=[("capacity", "@x{0.0} mAh/g"), ("voltage", "@volt{0.000} V"),
                               (sym, f"@{key}{{0.0000}} ± @{key}_err{{0.0000}} {unit}"),
                               (f"{sym} phase 2", f"@{key}2{{0.0000}} ± @{key}2_err{{0.0000}} {unit}"),
                               ("event", "@seq_num")])
            p.scatter("x", key, source=s, color=color, marker=marker, size=6)
            p.scatter("x", f"{key}2", source=s, line_color=color, fill_alpha=0, marker=marker, size=6)
            for k in (key, f"{key}2"):
                p.add_layout(Whisker(source=s, base="x", lower=f"{k}_lo", upper=f"{k}_hi",
                                     line_color=color, line_alpha=0.6))
            figs[name] = p
        self.xrd_axes = list(figs.values())
        p_p = _fig("voltage profile", x_label, "voltage (V vs Li/Li⁺)", x_range=figs["a"].x_range,
                   tooltips=[("capacity", "@x{0.0} mAh/g"), ("voltage", "@volt{0.000} V")])
        p_p.line("x", "volt", source=s, color="black", line_width=1.5)
        p_dq = _fig("dQ/dV", "dQ/dV (mAh g⁻¹ V⁻¹)", "voltage (V vs Li/Li⁺)", width=220,
                    y_range=p_p.y_range, tooltips=[("voltage", "@v{0.000} V"), ("dQ/dV", "@dq{0.0} mAh g⁻¹ V⁻¹")])
        p_dq.line("dq", "v", source=self.xrd_dq, color="black", line_width=1.5)
        self.xrd_cmap = LinearColorMapper(palette="Viridis256")
        p_r = _fig("c/c₀ vs (a/a₀)² (a₀, c₀: pristine)", "(a/a₀)²", "c/c₀",
                   tooltips=[("(a/a₀)²", "@ra{0.00000}"), ("c/c₀", "@rc{0.00000}"), ("capacity", "@x{0.0} mAh/g")])
        p_r.scatter("ra", "rc", source=s, size=6, fill_color={"field": "x", "transform": self.xrd_cmap},
                    line_color=None)
        p_r.scatter("ra2", "rc2", source=s, size=6, fill_alpha=0,
                    line_color={"field": "x", "transform": self.xrd_cmap})
        p_r.add_layout(ColorBar(color_mapper=self.xrd_cmap, title=x_label, width=10), "right")
        grid = gridplot([[figs["a"], figs["v"], p_p, p_dq], [figs["c"], figs["eps"], p_r, None]],
                        toolbar_location="right")
        return column(row(self.xrd_sel, self.xrd_info), Div(text=PHASE_NOTE), row(p_q, p_vt, grid))

    def _map_fig(self, title: str, label: str, palette: str, name: str):
        from bokeh.models import ColorBar, ColumnDataSource, HoverTool, LinearColorMapper

        src = ColumnDataSource(data={"image": [], "x": [], "y": [], "dw": [], "dh": []}, name=f"{name}_image")
        cm = LinearColorMapper(palette=palette, nan_color="#d9d9d9")
        p = _fig(title, "x (µm)", "y (µm)", width=330, height=300, match_aspect=True, name=name,
                 tools=TOOLS + ",tap",
                 tooltips=[("x", "$x{0.000} µm"), ("y", "$y{0.000} µm"), (label, "@image{0.0000}")])
        img = p.image(image="image", x="x", y="y", dw="dw", dh="dh", source=src, color_mapper=cm)
        p.select_one(HoverTool).renderers = [img]  # not the click marker (no image value there)
        p.add_layout(ColorBar(color_mapper=cm, title=label, width=10), "right")
        return p, src, cm

    def _sxdm_view(self):
        from bokeh.events import Tap
        from bokeh.layouts import column, row
        from bokeh.models import ColumnDataSource, Div
        from bokeh.palettes import Magma256, PiYG11, PuOr11, RdBu11

        self.sxdm_sel = self._run_select("sxdm")
        self.sxdm_info = Div(text="", width=900, name="sxdm_info")
        self.sxdm_maps = {}
        self.sxdm_mark = ColumnDataSource(data={"x": [], "y": []})
        panels = (("intensity", "intensity", "integrated (003) counts", Magma256, 1.0),
                  ("strain", "strain Δd/d", "Δd/d (10⁻³)", tuple(reversed(RdBu11)), 1e3),
                  ("tilt_xy_deg", "rotation θxy", "θxy (deg)", tuple(reversed(PuOr11)), 1.0),
                  ("tilt_xz_deg", "rotation θxz", "θxz (deg)", PiYG11, 1.0))
        figs = []
        for key, title, label, palette, scale in panels:
            p, src, cm = self._map_fig(title, label, palette, f"sxdm_{key}")
            p.scatter("x", "y", source=self.sxdm_mark, marker="x", size=14, line_color="black", line_width=2)
            p.on_event(Tap, self._sxdm_tap)
            self.sxdm_maps[key] = (src, cm, scale)
            figs.append(p)
        self.sxdm_hist = ColumnDataSource(data={"left": [], "right": [], "top": []})
        p_h = _fig("strain histogram", "strain Δd/d (10⁻³)", "pixels", width=330, height=300,
                   tooltips=[("Δd/d", "@left{0.00}…@right{0.00} ×10⁻³"), ("pixels", "@top")])
        p_h.quad(left="left", right="right", top="top", bottom=0, source=self.sxdm_hist, color="#d62728",
                 alpha=0.8)
        self.sxdm_thist = {k: ColumnDataSource(data={"left": [], "right": [], "top": []})
                           for k in ("tilt_xy_deg", "tilt_xz_deg")}
        p_t = _fig("rotation histograms", "rotation (deg)", "pixels", width=330, height=300,
                   tooltips=[("rotation", "@left{0.0000}°…@right{0.0000}°"), ("pixels", "@top")])
        for src, color, name in zip(self.sxdm_thist.values(), ("#ff7f0e", "#2ca02c"), ("θxy", "θxz"),
                                         strict=True):
            p_t.quad(left="left", right="right", top="top", bottom=0, source=src, fill_alpha=0,
                     line_color=color, line_width=2, legend_label=name)
        self.sxdm_corr = ColumnDataSource(data={"strain": [], "txy": []})
        self.p_corr = _fig("strain vs rotation", "strain Δd/d (10⁻³)", "θxy (deg)", width=330, height=300,
                           tooltips=[("Δd/d", "@strain{0.000} ×10⁻³"), ("θxy", "@txy{0.0000}°")])
        self.p_corr.scatter("strain", "txy", source=self.sxdm_corr, size=4, color="#555", alpha=0.6)
        self.sxdm_rc = ColumnDataSource(data={"theta_deg": [], "counts": []}, name="sxdm_rocking_curve")
        self.p_rc = _fig("rocking curve: click a pixel", "θ (deg)", "detector counts", width=330, height=300,
                         tooltips=[("θ", "@theta_deg{0.000}°"), ("counts", "@counts{0,0}")])
        self.p_rc.line("theta_deg", "counts", source=self.sxdm_rc, color="#1f77b4")
        self.p_rc.scatter("theta_deg", "counts", source=self.sxdm_rc, color="#1f77b4", size=5)
        return column(row(self.sxdm_sel, self.sxdm_info),
                      row(figs[0], figs[1], p_h, self.p_rc), row(figs[2], figs[3], p_t, self.p_corr))

    def _txm_view(self):
        from bokeh.events import Tap
        from bokeh.layouts import column, row
        from bokeh.models import ColumnDataSource, Div, Span
        from bokeh.palettes import Greys256, Viridis256

        self.txm_sel = self._run_select("txm_xanes")
        self.txm_info = Div(text="", width=900, name="txm_info")
        self.txm_mark = ColumnDataSource(data={"x": [], "y": []})
        p_wl, self.txm_wl, self.txm_cm = self._map_fig("white-line energy", "white line (eV)", Viridis256,
                                                             "txm_whiteline")
        p_j, self.txm_jump, self.txm_jcm = self._map_fig("edge jump", "edge jump (absorbance)", Greys256,
                                                            "txm_edge_jump")
        for p in (p_wl, p_j):
            p.width, p.height = 400, 360
            p.scatter("x", "y", source=self.txm_mark, marker="x", size=14, line_color="red", line_width=2)
            p.on_event(Tap, self._txm_tap)
        self.txm_hist = ColumnDataSource(data={"left": [], "right": [], "top": []})
        self.p_txm_h = _fig("white-line histogram", "white-line energy (eV)", "voxels", width=380, height=360,
                            tooltips=[("E", "@left{0.00}…@right{0.00} eV"), ("voxels", "@top")])
        self.p_txm_h.quad(left="left", right="right", top="top", bottom=0, source=self.txm_hist,
                          color="#440154", alpha=0.7)
        self.txm_spec = ColumnDataSource(data={"energy_eV": [], "mu": []}, name="txm_spectrum")
        self.txm_wlpt = ColumnDataSource(data={"energy_eV": [], "mu": []})
        self.p_spec = _fig("spectrum: click a voxel", "energy (eV)", "normalised absorbance", width=380,
                           height=360, tooltips=[("E", "@energy_eV{0.0} eV"), ("μ", "@mu{0.000} (edge-normalised)")])
        self.p_spec.line("energy_eV", "mu", source=self.txm_spec, color="black")
        self.p_spec.scatter("energy_eV", "mu", source=self.txm_spec, color="black", size=4)
        self.p_spec.scatter("energy_eV", "mu", source=self.txm_wlpt, color="red", size=12, marker="inverted_triangle",
                            legend_label="fitted white line")
        self.txm_span = Span(location=float("nan"), dimension="height", line_color="red", line_dash="dashed")
        self.p_spec.add_layout(self.txm_span)
        self.p_spec.legend.location = "bottom_right"
        return column(row(self.txm_sel, self.txm_info), row(p_wl, self.p_txm_h, p_j, self.p_spec))

    def _compare_view(self):
        from bokeh.layouts import column
        from bokeh.models import MultiChoice

        self.cmp_choice = MultiChoice(title="operando XRD runs to overlay (c vs capacity)", options=[],
                                      width=900, name="compare_runs")
        self.cmp_choice.on_change("value", lambda attr, old, new: self._compare_changed())
        self.p_cmp = _fig("lattice parameter c of several runs", "capacity (mAh g⁻¹)", "c (Å)",
                          width=900, height=450, tooltips=[("run", "@run"), ("capacity", "@x{0.0} mAh/g"),
                                                           ("c", "@c{0.0000} Å")])
        self.cmp_renderers: dict[str, Any] = {}
        return column(self.cmp_choice, self.p_cmp)

    # ------------------------------------------------------------------ session
    def start(self) -> None:
        self.doc.add_periodic_callback(self.poll, int(POLL_S * 1000))
        self.doc.add_periodic_callback(self.poll_runs, int(RUNS_EVERY_S * 1000))
        self.doc.add_periodic_callback(self._watch, int(STALLED_S * 1000))
        self.doc.add_next_tick_callback(self.poll)

    def _relogin(self) -> None:
        self.api_key = self.key_input.value.strip() or self.api_key
        self.login_failed = False
        self.root = None
        self.login.text = "logging in ..."

    def _connect(self):
        from tiled.client import from_uri

        return from_uri(self.uri, api_key=self.api_key)

    def _locked(self, func, *args) -> None:
        """Run ``func(*args)`` on the server loop with the document lock (a next-tick callback)."""
        self.doc.add_next_tick_callback(partial(func, *args))

    @without_document_lock
    async def poll(self) -> None:
        """One poll: read tiled in a thread, then update the page; errors go to the status line.

        Runs without the document lock: Bokeh holds a locked callback's lock across its
        ``await``, so a locked poll kept the rows pushed by tiled's websocket waiting for the
        whole read (hundreds of ms). The page is changed in next-tick callbacks only."""
        if self.busy or self.login_failed:
            return
        self.busy, self.busy_since = True, time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            if self.root is None:
                try:
                    root = await loop.run_in_executor(None, self._connect)
                except Exception as exc:
                    if _key_error(exc):
                        self.login_failed = True
                        self._locked(self._show_login_error, exc)
                        return
                    raise
                self.root = root
                self._locked(self._logged_in)
            t0 = time.perf_counter()
            update = await loop.run_in_executor(None, self._fetch)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("poll: read %.0f ms", 1e3 * (time.perf_counter() - t0))
            self._locked(self._apply_poll, update)
        except Exception as exc:  # tiled restarting, network, a node deleted meanwhile
            if _key_error(exc):
                self.login_failed = True
                self._locked(self._show_login_error, exc)
                return
            logger.info("dashboard poll failed: %s", exc)
            self._locked(self._show_unreachable, exc)
        finally:
            self.busy = False

    def _watch(self) -> None:
        """tiled's client retries a refused connection for up to ~45 s inside one read (and
        Bokeh runs the next poll only when one is done): say so in the status line meanwhile."""
        waited = time.monotonic() - self.busy_since
        if self.busy and waited >= STALLED_S:
            self.status.text = f"tiled unreachable or slow: no answer for {waited:.0f} s, retrying"
            self.status.styles = {"font-family": "monospace", "color": "#b00020"}

    def _apply_poll(self, update: dict[str, Any]) -> None:
        self._apply(update)
        # changed only when its words change (minutes): every DOM change makes the browser
        # recompute the page's styles at the next paint of every plot (BokehJS reads its
        # visuals through getComputedStyle), which cost ~0.1 s per update while rows streamed
        text = f"following tiled — {len(self.runs)} runs; checked {datetime.datetime.now():%H:%M}"
        if self.status.text != text:
            self.status.text = text
            self.status.styles = {"font-family": "monospace", "color": "#2a7d2a"}

    def _show_unreachable(self, exc: BaseException) -> None:
        self.status.text = f"tiled unreachable, retrying ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})"
        self.status.styles = {"font-family": "monospace", "color": "#b00020"}

    @without_document_lock
    async def poll_runs(self) -> None:
        """Read the run list (a few requests per run) apart from the fast table poll."""
        if self.runs_busy or self.root is None or self.login_failed:
            return
        self.runs_busy = True
        try:
            runs = await asyncio.get_running_loop().run_in_executor(None, _data.list_runs, self.root,
                                                                     self.runs_cache)
            self.runs_at = time.monotonic()
            self._locked(self._apply, {"runs": runs})
        except Exception as exc:  # the table poll reports tiled's state in the status line
            logger.info("dashboard run list failed: %s", exc)
        finally:
            self.runs_busy = False

    def _pushed(self, key: str | tuple[str, str], table: _data.TableFollower, rows: dict[str, list]) -> None:
        """New rows from tiled's websocket (tiled's thread): drawn on the server loop at once.
        ``key``: the view, or ``("rate_series", uid)`` for a run of the followed series."""
        self.doc.add_next_tick_callback(partial(self._draw_pushed, key, table, rows))

    def _draw_pushed(self, key: str | tuple[str, str], table: _data.TableFollower, rows: dict[str, list]) -> None:
        # not a run the page no longer follows
        if isinstance(key, tuple):
            if self.series_shown.get(key[1]) is table:
                self._apply({"series_rows": {key[1]: rows}})
        elif self.shown[key] is table:
            self._apply({"rows": {key: rows}})

    def close(self) -> None:
        """The browser session ended: drop the subscriptions."""
        for table in [*self.tables.values(), *self.compare.values(), *self.series_tables.values()]:
            if table is not None:
                table.close()

    def _show_login_error(self, exc: BaseException) -> None:
        self.login_failed = True
        self.root = None
        code = getattr(getattr(exc, "response", None), "status_code", None)
        why = f"HTTP {code}" if code else "authentication required"
        self.login.text = (f"Login failed: the tiled server at {self.uri} refused the API key ({why}). "
                           "Enter a valid key (`strainstream keys create --read-only` makes one) or restart "
                           "the dashboard with --api-key / $STRAINSTREAM_API_KEY.")
        for w in (self.login, self.key_input, self.key_button):
            w.visible = True
        self.tabs.visible = False
        self.status.text = "not logged in"

    def _logged_in(self) -> None:
        for w in (self.login, self.key_input, self.key_button):
            w.visible = False
        self.tabs.visible = True

    # ------------------------------------------------------------------ reading (worker thread)
    def _fetch(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        now = time.monotonic()
        if not self.runs_at:  # the first poll: the run list at once (later: poll_runs)
            out["runs"] = _data.list_runs(self.root, self.runs_cache)
            self.runs_at = now
        runs = out.get("runs", self.runs)
        for view in VIEWS:
            uid = self.chosen[view] or next((r["uid"] for r in runs if view in (r.get("analyses") or {})), None)
            if uid is None:
                continue
            if uid != self.followed[view]:
                if self.tables[view] is not None:
                    self.tables[view].close()
                self.tables[view] = _data.TableFollower(self.root, uid, view)
                self.arrays[view] = _data.ArraysFollower(self.root, uid, view) if view in ARRAY_VIEWS else None
                out.setdefault("reset", {})[view] = self.tables[view]
                self.followed[view] = uid
            table = self.tables[view]
            rows = self._read_table(view, table, self.shown[view] is table, now)
            if rows:
                out.setdefault("rows", {})[view] = rows
            if self.arrays[view] is not None:
                got = self.arrays[view].poll()
                if got is not None:
                    out.setdefault("arrays", {})[view] = got
            if "reset" in out or now - self.meta_at.get(view, 0.0) >= RUNS_EVERY_S:
                self.meta_at[view] = now
                out.setdefault("meta", {})[view] = self.tables[view].refresh_metadata()
        if self.cmp_choice.value and now - self.compare_at >= RUNS_EVERY_S:
            self.compare_at = now
            for uid in list(self.cmp_choice.value):
                f = self.compare.setdefault(uid, _data.TableFollower(self.root, uid, "operando_xrd"))
                rows = f.new_rows()
                if rows:
                    out.setdefault("compare", {})[uid] = rows
        self._fetch_series(runs, out, now)
        self._fetch_gitt_xrd(runs, out, now)
        return out

    def _fetch_gitt_xrd(self, runs: list[dict[str, Any]], out: dict[str, Any], now: float) -> None:
        """The new ``operando_xrd`` rows of the followed GITT run (a frame at the end of each rest:
        read every :data:`BACKSTOP_S`, no subscription)."""
        uid = self.followed["gitt"]
        line = next((r for r in runs if r["uid"] == uid), None)
        if uid is None or line is None or "operando_xrd" not in (line.get("analyses") or {}):
            return
        if self.gitt_xrd is None or self.gitt_xrd.uid != uid:
            self.gitt_xrd = _data.TableFollower(self.root, uid, "operando_xrd")
        if now - self.read_at.get("gitt_xrd", 0.0) >= BACKSTOP_S:
            self.read_at["gitt_xrd"] = now
            rows = self.gitt_xrd.new_rows()
            if rows:
                out["gitt_xrd"] = (uid, rows)

    def _read_table(self, key: str | tuple[str, str], table: _data.TableFollower, shown: bool,
                    now: float) -> dict[str, list]:
        """The new rows of ``table``: read at first, then pushed by tiled's subscription (made once
        ``shown``: the view's reset is drawn) with a read every :data:`BACKSTOP_S` as a safety net."""
        rows: dict[str, list] = {}
        if not table.subscribed or now - self.read_at.get(key, 0.0) >= BACKSTOP_S:
            # the first fill, then a safety net under the subscription
            self.read_at[key] = now
            rows = table.new_rows()
            if table.stale:
                logger.info("the subscription of %s/%s missed rows (tiled restarted?): subscribing again",
                            table.uid, table.analysis)
                table.close()
        if not table.subscribed and shown:
            # subscribe once the first fill is drawn (a pushed row never lands before the
            # view's reset); the subscription replays the cache, the seen rows are dropped
            table.subscribe(partial(self._pushed, key, table))
        return rows

    def _fetch_series(self, runs: list[dict[str, Any]], out: dict[str, Any], now: float) -> None:
        """The rate series (chosen, else the newest): the new ``operando_xrd`` rows of each of its runs."""
        series = self.series_chosen or next((r["start"]["series"] for r in runs if _series_run(r)), None)
        if series is None:
            return
        if series != self.series_followed:
            for table in self.series_tables.values():
                table.close()
            self.series_tables = {}
            self.series_followed = series
            out["series_reset"] = series
        for line in runs:
            if not _series_run(line) or line["start"]["series"] != series:
                continue
            uid = line["uid"]
            if uid not in self.series_tables:
                self.series_tables[uid] = _data.TableFollower(self.root, uid, "operando_xrd")
                out.setdefault("series_new", {})[uid] = (self.series_tables[uid], line)
            table = self.series_tables[uid]
            rows = self._read_table(("rate_series", uid), table, self.series_shown.get(uid) is table, now)
            if rows:
                out.setdefault("series_rows", {})[uid] = rows

    # ------------------------------------------------------------------ drawing (server loop)
    def _apply(self, up: dict[str, Any]) -> None:
        if "runs" in up:
            self.runs = up["runs"]
            self._show_runs()
        for view, table in up.get("reset", {}).items():
            self._reset(view)
            self.shown[view] = table
        for view, rows in up.get("rows", {}).items():
            acc = self.rows[view]
            for k, v in rows.items():
                acc.setdefault(k, []).extend(v)
            {"operando_xrd": self._xrd_rows, "cycling": self._cycling_rows,
             "gitt": self._gitt_rows}.get(view, lambda rows: None)(rows)
        for view, (arrays, md) in up.get("arrays", {}).items():
            self.maps[view], self.map_md[view] = arrays, md
            {"sxdm": self._sxdm_maps, "txm_xanes": self._txm_maps, "gitt": self._gitt_arrays}[view]()
        if "series_reset" in up:
            self._series_reset()
            self.series_shown = {}
        for uid, (table, line) in up.get("series_new", {}).items():
            self._series_add_run(uid, line)
            self.series_shown[uid] = table
        for uid, rows in up.get("series_rows", {}).items():
            self._series_rows(uid, rows)
        if "gitt_xrd" in up and up["gitt_xrd"][0] == self.followed["gitt"]:
            self._gitt_xrd(up["gitt_xrd"][1])
        if {"series_reset", "series_new", "series_rows", "runs"} & set(up):
            self._series_info()
        for view, md in up.get("meta", {}).items():
            self._info(view, md)
        for uid, rows in up.get("compare", {}).items():
            self._compare_rows(uid, rows)

    def _show_runs(self) -> None:
        runs = self.runs
        self.f_exp.options = ["all", *sorted({str(r["experiment"]) for r in runs if r.get("experiment")})]
        self.f_mat.options = ["all", *sorted({str(r["material"]) for r in runs if r.get("material")})]
        since = self.f_date.value.strip()
        shown = [r for r in runs
                 if (self.f_exp.value == "all" or str(r.get("experiment")) == self.f_exp.value)
                 and (self.f_mat.value == "all" or str(r.get("material")) == self.f_mat.value)
                 and (not since or (r.get("time") or "") >= since)]
        data = {"uid": [r["uid"] for r in shown], "uid8": [r["uid"][:8] for r in shown],
                "time": [(r.get("time") or "-").replace("T", " ") for r in shown],
                "experiment": [str(r.get("experiment") or "-") for r in shown],
                "material": [str(r.get("material") or "-") for r in shown],
                "status": [str(r.get("status") or "-") for r in shown],
                "recorded": ["-" if r.get("events_recorded") is None else str(r["events_recorded"]) for r in shown],
                "analysed": ["-" if r.get("events_analysed") is None else str(r["events_analysed"]) for r in shown],
                "analyses": [", ".join(f"{k} ({v.get('status')})" for k, v in (r.get("analyses") or {}).items())
                             for r in shown]}
        current = dict(self.runs_src.data)
        if list(current.get("uid", [])) == data["uid"]:  # same runs: patch the changed cells only
            patches = {k: [(i, v) for i, (old, v) in enumerate(zip(current[k], vals, strict=True)) if old != v]
                       for k, vals in data.items()}
            patches = {k: v for k, v in patches.items() if v}
            if patches:
                self.runs_src.patch(patches)
        else:
            self.runs_src.data = data
        for view, sel in self._selects().items():
            opts = ["newest"] + [(r["uid"], self._label(r)) for r in runs if view in (r.get("analyses") or {})]
            if opts != sel.options:
                sel.options = opts
        series: dict[str, list[dict[str, Any]]] = {}
        for r in runs:
            if _series_run(r):
                series.setdefault(r["start"]["series"], []).append(r)
        opts = ["newest"] + [(sid, _series_label(sid, members)) for sid, members in series.items()]
        if opts != self.series_sel.options:
            self.series_sel.options = opts
        xrd = [(r["uid"], self._label(r)) for r in runs if "operando_xrd" in (r.get("analyses") or {})]
        if xrd != self.cmp_choice.options:
            self.cmp_choice.options = xrd

    @staticmethod
    def _label(r: dict[str, Any]) -> str:
        return f"{r['uid'][:8]} {r.get('material') or ''} {(r.get('time') or '').replace('T', ' ')}"

    def _run_clicked(self, attr, old, new) -> None:
        if not new:
            return
        uid = self.runs_src.data["uid"][new[0]]
        run = next((r for r in self.runs if r["uid"] == uid), None)
        if run is None:
            return
        views = [v for v in VIEWS if v in (run.get("analyses") or {})]
        for view in views:  # every tab that can show the run shows it
            self._selects()[view].value = uid
        if _series_run(run):
            self.series_sel.value = run["start"]["series"]
        # the protocol's own tab first (a cycling run's XRD is in the operando XRD tab too)
        first = EXPERIMENT_VIEW.get(run.get("experiment") or "")
        first = first if first in views else "rate_series" if _series_run(run) else views[0] if views else None
        if first is not None:
            self.tabs.active = TAB[first]

    def _selects(self) -> dict[str, Any]:
        """The run choice of each view."""
        return {"operando_xrd": self.xrd_sel, "sxdm": self.sxdm_sel, "txm_xanes": self.txm_sel,
                "cycling": self.cyc_sel, "gitt": self.gitt_sel}

    def _choose_series(self, series: str | None) -> None:
        self.series_chosen = series

    def _series_info(self) -> None:
        sid = self.series_followed
        if sid is None:
            return
        members = [r for r in self.runs if _series_run(r) and r["start"]["series"] == sid]
        n = sum(len(rows.get("seq_num", [])) for rows in self.series_rows.values())
        text = f"series <b>{sid[:8]}</b> {_series_label(sid, members).split(' ', 1)[1]}; {n} results rows"
        if self.series_info.text != text:
            self.series_info.text = text

    def _choose(self, view: str, uid: str | None) -> None:
        self.chosen[view] = uid

    def _reset(self, view: str) -> None:
        self.rows[view], self.maps[view], self.map_md[view] = {}, {}, {}
        if view == "operando_xrd":
            self.xrd_ref = {}
            self.xrd_src.data = {k: [] for k in self.xrd_src.data}
            self.xrd_img.data = {k: [] for k in self.xrd_img.data}
            self.xrd_dq.data = {"dq": [], "v": []}
        elif view in PROTOCOL_VIEWS:
            self._protocol_reset(view)
        elif view == "sxdm":
            for src, _, _ in self.sxdm_maps.values():
                src.data = {k: [] for k in src.data}
            self.sxdm_rc.data = {"theta_deg": [], "counts": []}
            self.sxdm_mark.data = {"x": [], "y": []}
        else:
            for src in (self.txm_wl, self.txm_jump):
                src.data = {k: [] for k in src.data}
            self.txm_spec.data = {"energy_eV": [], "mu": []}
            self.txm_wlpt.data = {"energy_eV": [], "mu": []}
            self.txm_mark.data = {"x": [], "y": []}

    def _info(self, view: str, md: dict[str, Any]) -> None:
        uid = self.followed[view] or ""
        run = next((r for r in self.runs if r["uid"] == uid), {})
        n = len(self.rows[view].get("seq_num", []))
        text = (f"run <b>{uid[:8]}</b> {run.get('material') or ''} — analysis {md.get('status', '?')}, "
                f"{n} results rows")
        summ = md.get("summary") or {}
        if view == "sxdm" and self.map_md[view]:
            m = self.map_md[view]
            text += f"; maps after {m.get('angles_done', '?')}/{m.get('n_angles', '?')} rocking angles"
            if isinstance(summ.get("strain_std"), float):
                text += f"; strain σ {summ['strain_std']:.2e}"
        if view == "txm_xanes" and isinstance(summ.get("whiteline_std_eV"), float):
            text += f"; white line {summ.get('whiteline_mean_eV', float('nan')):.2f} ± {summ['whiteline_std_eV']:.2f} eV"
        if view == "cycling" and isinstance(summ.get("retention_last"), float):
            text += (f"; discharge {summ.get('first_discharge_mAh_g', math.nan):.1f} → "
                     f"{summ.get('last_discharge_mAh_g', math.nan):.1f} mAh/g, retention "
                     f"{100 * summ['retention_last']:.1f} % after {summ.get('cycles')} cycles")
        if view == "gitt":
            self._gitt_legend(run.get("start") or {})
            if isinstance(summ.get("d_median_cm2_s"), float):
                text += f"; {summ.get('pulses_fitted')} pulses fitted, median D {summ['d_median_cm2_s']:.2e} cm²/s"
        getattr(self, {"operando_xrd": "xrd_info", "sxdm": "sxdm_info", "txm_xanes": "txm_info",
                       "cycling": "cyc_info", "gitt": "gitt_info"}[view]).text = text

    # -- operando XRD
    def _xrd_rows(self, rows: dict[str, list]) -> None:

        n = len(rows.get("seq_num", []))
        t = _col(rows, "cell_time_s", n)
        if not np.isfinite(t).all():
            t = _col(rows, "time", n)
        ref = self.xrd_ref
        if "t0" not in ref and np.isfinite(t).any():
            ref["t0"] = float(np.nanmin(t))
        t_h = (t - ref.get("t0", np.nan)) / 3600.0
        cap = _col(rows, "capacity_mAh_g", n)
        x = cap if np.isfinite(cap).any() else t_h
        new: dict[str, Any] = {"x": x, "t_h": t_h, "volt": _col(rows, "voltage_V", n),
                               "seq_num": [int(s) for s in rows["seq_num"]],
                               "served_at": np.full(n, time.time())}  # when the page sent the row (s)
        for key, col, err, scale in (("a", "a_A", "a_err_A", 1.0), ("c", "c_A", "c_err_A", 1.0),
                                     ("v", "volume_A3", "volume_err_A3", 1.0),
                                     ("eps", "microstrain", "microstrain_err", 1e3)):
            for sfx, name in (("", key), ("_2", f"{key}2")):
                val = _col(rows, col + sfx, n) * scale
                e = _col(rows, err + sfx, n) * scale
                e = np.where(np.isfinite(e), e, 0.0)
                new[name], new[f"{name}_lo"], new[f"{name}_hi"], new[f"{name}_err"] = val, val - e, val + e, e
        if "a0" not in ref:
            good = np.isfinite(new["a"]) & np.isfinite(new["c"])
            if good.any():
                ref["a0"], ref["c0"] = float(new["a"][good][0]), float(new["c"][good][0])
        a0, c0 = ref.get("a0", np.nan), ref.get("c0", np.nan)
        new["ra"], new["rc"] = (new["a"] / a0) ** 2, new["c"] / c0
        new["ra2"], new["rc2"] = (new["a2"] / a0) ** 2, new["c2"] / c0
        self.xrd_src.stream({k: np.asarray(v) for k, v in new.items()})
        seq = np.asarray(self.xrd_src.data["seq_num"])
        if seq.size > n and np.any(np.diff(seq[-n - 1:]) < 0):
            # a row came after a later one (the safety-net read and a re-made subscription after
            # a tiled restart): the points back in seq_num order, or lines zigzag
            order = np.argsort(seq, kind="stable")
            self.xrd_src.data = {k: np.asarray(v)[order] for k, v in self.xrd_src.data.items()}
        xs = np.asarray(self.xrd_src.data["x"], dtype=float)
        if np.isfinite(xs).any():
            # the colour scale grows in steps of a tenth of its span (not at every row: see _apply_poll)
            low, high = float(np.nanmin(xs)), float(np.nanmax(xs))
            if not (self.xrd_cmap.low == low and high <= (self.xrd_cmap.high or -math.inf)):
                step = max(0.1 * (high - low), 1e-9)
                self.xrd_cmap.low, self.xrd_cmap.high = low, low + step * math.ceil((high - low) / step + 1)
        # the (003) window and dQ/dV are redrawn whole: at most every HEAVY_S (the points stream at once)
        now = time.monotonic()
        if now - self.heavy_at < HEAVY_S:
            if not self.heavy_pending:
                self.heavy_pending = True
                self.doc.add_timeout_callback(self._xrd_heavy, int(1000 * (HEAVY_S - (now - self.heavy_at))))
            return
        self._xrd_heavy()

    def _xrd_heavy(self) -> None:
        """Redraw the (003) contour and dQ/dV from every row so far."""
        from strainstream.callbacks.xrd import Q003_GRID_A_INV, i003_matrix

        self.heavy_pending, self.heavy_at = False, time.monotonic()
        acc = self.rows["operando_xrd"]
        na = len(acc.get("seq_num", []))
        t_all = np.asarray(self.xrd_src.data["t_h"], dtype=float)
        img = i003_matrix(acc)
        if len(img) >= 2 and np.isfinite(t_all).all() and t_all.size == len(img):
            q = Q003_GRID_A_INV
            order = np.argsort(t_all)
            dt = float(t_all.max() - t_all.min()) or 1.0
            self.xrd_img.data = {"image": [img[order]], "x": [float(q[0])], "y": [float(t_all.min())],
                                 "dw": [float(q[-1] - q[0])], "dh": [dt]}
        volt, capa = _col(acc, "voltage_V", na), _col(acc, "capacity_mAh_g", na)
        ok = np.isfinite(volt) & np.isfinite(capa)
        if ok.sum() >= 5:
            from strainstream.electrochem import dqdv

            try:
                v_bins, dq = dqdv(volt[ok], capa[ok], bin_width_V=0.01, smooth_V=0.02)
                self.xrd_dq.data = {"dq": np.asarray(dq).tolist(), "v": np.asarray(v_bins).tolist()}
            except ValueError:
                pass

    # -- maps
    def _image(self, src, cm, v: np.ndarray, step_um: float, diverging: bool) -> None:
        ny, nx = v.shape
        finite = v[np.isfinite(v)]
        if finite.size:
            if diverging:
                lim = float(np.percentile(np.abs(finite), 99)) or 1.0
                cm.low, cm.high = -lim, lim
            else:
                lo, hi = np.percentile(finite, [1, 99])
                cm.low, cm.high = float(lo), float(hi if hi > lo else lo + 1)
        # row 0 of the raster drawn at the top, like the paper figures (origin upper)
        src.data = {"image": [np.ascontiguousarray(v[::-1])], "x": [0.0], "y": [0.0],
                    "dw": [nx * step_um], "dh": [ny * step_um]}

    def _sxdm_maps(self) -> None:
        maps, md = self.maps["sxdm"], self.map_md["sxdm"]
        step_um = float(md.get("step_nm") or 50.0) / 1000.0
        for key, (src, cm, scale) in self.sxdm_maps.items():
            if key in maps:
                self._image(src, cm, np.asarray(maps[key], dtype=float) * scale, step_um, key != "intensity")
        if "strain" not in maps:
            return
        s = np.asarray(maps["strain"], dtype=float) * 1e3
        inside = np.isfinite(s)
        if inside.any():
            top, edges = np.histogram(s[inside], bins=max(10, min(60, int(inside.sum()) // 10)))
            self.sxdm_hist.data = {"left": edges[:-1].tolist(), "right": edges[1:].tolist(), "top": top.tolist()}
        for k, src in self.sxdm_thist.items():
            t = np.asarray(maps.get(k, np.full(s.shape, np.nan)), dtype=float)
            t = t[np.isfinite(t)]
            if t.size:
                top, edges = np.histogram(t, bins=max(10, min(60, t.size // 10)))
                src.data = {"left": edges[:-1].tolist(), "right": edges[1:].tolist(), "top": top.tolist()}
        txy = np.asarray(maps.get("tilt_xy_deg", np.full(s.shape, np.nan)), dtype=float)
        both = inside & np.isfinite(txy)
        self.sxdm_corr.data = {"strain": s[both].tolist(), "txy": txy[both].tolist()}
        if both.sum() >= 3:
            r = float(np.corrcoef(s[both], txy[both])[0, 1])
            self.p_corr.title.text = f"strain vs rotation (r = {r:+.2f})"

    def _txm_maps(self) -> None:
        maps, md = self.maps["txm_xanes"], self.map_md["txm_xanes"]
        summ = (self.tables["txm_xanes"].metadata.get("summary") if self.tables["txm_xanes"] else None) or {}
        run = next((r for r in self.runs if r["uid"] == self.followed["txm_xanes"]), {})
        step_um = _nan(md.get("pixel_size_um") or summ.get("pixel_size_um") or run.get("pixel_size_um"))
        self.txm_step_um = step_um if math.isfinite(step_um) and step_um > 0 else 1.0
        if "whiteline_eV" in maps:
            wl = np.asarray(maps["whiteline_eV"], dtype=float)
            self._image(self.txm_wl, self.txm_cm, wl, self.txm_step_um, False)
            v = wl[np.isfinite(wl)]
            if v.size:
                top, edges = np.histogram(v, bins=50)
                self.txm_hist.data = {"left": edges[:-1].tolist(), "right": edges[1:].tolist(), "top": top.tolist()}
                self.p_txm_h.title.text = (f"white-line histogram: mean {v.mean():.2f} eV, "
                                           f"std {v.std():.2f} eV, {v.size} voxels")
        if "edge_jump" in maps:
            self._image(self.txm_jump, self.txm_jcm, np.asarray(maps["edge_jump"], dtype=float),
                        self.txm_step_um, False)

    # -- clicks
    def _pixel(self, event, shape: tuple[int, int], step_um: float) -> tuple[int, int] | None:
        ny, nx = shape
        ix, iy = int(math.floor(event.x / step_um)), ny - 1 - int(math.floor(event.y / step_um))
        if 0 <= ix < nx and 0 <= iy < ny:
            return iy, ix
        return None

    def _read_then(self, read, draw, fail) -> None:
        """Run the blocking ``read()`` in a worker thread, then ``draw(result)`` (or
        ``fail(exc)``) on the server loop: the documented way to update a Bokeh document from a
        thread (``add_next_tick_callback``)."""
        def work() -> None:
            try:
                result = read()
            except Exception as exc:
                self.doc.add_next_tick_callback(partial(fail, exc))
                return
            self.doc.add_next_tick_callback(partial(draw, result))

        self.executor.submit(work)

    def _sxdm_tap(self, event) -> None:
        maps, md = self.maps["sxdm"], self.map_md["sxdm"]
        if "strain" not in maps or self.root is None:
            return
        step_um = float(md.get("step_nm") or 50.0) / 1000.0
        hit = self._pixel(event, np.shape(maps["strain"]), step_um)
        if hit is None:
            return
        iy, ix = hit
        ny = np.shape(maps["strain"])[0]
        self.sxdm_mark.data = {"x": [(ix + 0.5) * step_um], "y": [(ny - 1 - iy + 0.5) * step_um]}
        self.p_rc.title.text = f"rocking curve of pixel y={iy}, x={ix}: reading the frames ..."
        uid, rows = self.followed["sxdm"], dict(self.rows["sxdm"])

        def draw(rc) -> None:
            self.sxdm_rc.data = rc
            self.p_rc.title.text = f"rocking curve of pixel y={iy}, x={ix} ({len(rc['counts'])} angles)"

        def fail(exc) -> None:
            logger.warning("rocking curve of pixel (%d, %d) of %s: %s", iy, ix, uid, exc)
            self.p_rc.title.text = f"rocking curve of pixel ({iy}, {ix}): {type(exc).__name__}: {exc}"[:120]

        self._read_then(partial(_data.pixel_rocking_curve, self.root, uid, iy, ix, rows), draw, fail)

    def _txm_tap(self, event) -> None:
        maps = self.maps["txm_xanes"]
        if "whiteline_eV" not in maps or self.root is None:
            return
        wl = np.asarray(maps["whiteline_eV"], dtype=float)
        hit = self._pixel(event, wl.shape, self.txm_step_um)
        if hit is None:
            return
        iy, ix = hit
        s = self.txm_step_um
        self.txm_mark.data = {"x": [(ix + 0.5) * s], "y": [(wl.shape[0] - 1 - iy + 0.5) * s]}
        self.p_spec.title.text = f"voxel y={iy}, x={ix}: reading the frames ..."
        uid, rows = self.followed["txm_xanes"], dict(self.rows["txm_xanes"])

        def draw(spec) -> None:
            self.txm_spec.data = {"energy_eV": spec["energy_eV"], "mu": spec["mu"]}
            wl_e = spec["whiteline_eV"]
            if spec["mu_wl"] is not None:
                self.txm_wlpt.data = {"energy_eV": [wl_e], "mu": [spec["mu_wl"]]}
                self.txm_span.location = wl_e
                self.p_spec.title.text = f"voxel y={iy}, x={ix}: white line {wl_e:.2f} eV"
            else:
                self.txm_wlpt.data = {"energy_eV": [], "mu": []}
                self.p_spec.title.text = f"voxel y={iy}, x={ix}: outside the particle (no white line)"

        def fail(exc) -> None:
            logger.warning("spectrum of voxel (%d, %d) of %s: %s", iy, ix, uid, exc)
            self.p_spec.title.text = f"spectrum of voxel ({iy}, {ix}): {type(exc).__name__}: {exc}"[:120]

        self._read_then(partial(_data.voxel_spectrum, self.root, uid, iy, ix, rows, _nan(wl[iy, ix])), draw, fail)

    # -- compare
    def _compare_changed(self) -> None:
        from bokeh.palettes import Category10_10

        chosen = list(self.cmp_choice.value)
        for uid in list(self.cmp_renderers):
            if uid not in chosen:
                for r in self.cmp_renderers.pop(uid)[1]:
                    r.visible = False
                self.compare.pop(uid, None)
                self.compare_rows.pop(uid, None)
        self.compare_at = 0.0
        for uid in chosen:
            if uid in self.cmp_renderers:
                continue
            from bokeh.models import ColumnDataSource

            src = ColumnDataSource(data={"x": [], "c": [], "c2": [], "run": []})
            color = Category10_10[len(self.cmp_renderers) % 10]
            label = next((lab for u, lab in self.cmp_choice.options if u == uid), uid[:8])
            r1 = self.p_cmp.scatter("x", "c", source=src, color=color, size=5, legend_label=label)
            r2 = self.p_cmp.scatter("x", "c2", source=src, line_color=color, fill_alpha=0, size=5)
            self.cmp_renderers[uid] = (src, [r1, r2])
        if self.p_cmp.legend:
            self.p_cmp.legend.location = "bottom_left"

    def _compare_rows(self, uid: str, rows: dict[str, list]) -> None:
        if uid not in self.cmp_renderers:
            return
        n = len(rows.get("seq_num", []))
        cap = _col(rows, "capacity_mAh_g", n)
        src = self.cmp_renderers[uid][0]
        src.stream({"x": cap.tolist(), "c": _col(rows, "c_A", n).tolist(), "c2": _col(rows, "c_A_2", n).tolist(),
                    "run": [uid[:8]] * n})


def _series_run(line: dict[str, Any]) -> bool:
    """A run of a rate series with operando XRD results."""
    return bool((line.get("start") or {}).get("series")) and "operando_xrd" in (line.get("analyses") or {})


def _series_label(series: str, members: list[dict[str, Any]]) -> str:
    """``series8 material — n runs at r1, r2 mA/g``."""
    rates = sorted({float(r["start"]["rate_mA_g"]) for r in members
                    if isinstance(r["start"].get("rate_mA_g"), int | float)})
    material = next((r.get("material") for r in members if r.get("material")), "") or ""
    return (f"{series[:8]} {material} — {len(members)} runs at "
            f"{', '.join(f'{x:g}' for x in rates) or '?'} mA/g")


#: Three costs of BokehJS 3.9's paint, taken off the page (bokeh/bokeh#15286, open). Measured in
#: headless chromium over 40 streamed rows of the operando XRD tab (seven plots on one source):
#: - every read of a visual (a colour, a font, a width) asks the CSS cascade for a ``--bk-*``
#:   variable first (``getComputedStyle``). No ``--bk-*`` variable is defined anywhere on this
#:   page (BokehJS' own style sheets define none, the dashboard sets none: see
#:   ``tests/dashboard/test_page_js.py``), so every read answers "" and the model's value is used:
#:   answer "" at once.
#: - each renderer rewrites its position style sheet at every paint, with the same text or with
#:   positions that differ by 1e-12 px, and every rewrite makes the browser recompute styles at
#:   the next CSS read (~80 per row, 3,264 over the 40 rows): a style sheet whose text does not
#:   change (numbers to 0.001) is left alone.
#: - each plot reads its element's font size (``getComputedStyle``) at every paint, which then pays
#:   for the style recalculations the other changes of the page made: read once per plot (its
#:   font size is fixed by the page's style sheets in px).
PAINT_FIXES_JS = """
try {
const proto = Bokeh.require("core/dom").InlineStyleSheet.prototype;
if (!proto.__strainstream) {
  proto.__strainstream = true;
  const update = proto._update;
  // the same text up to rounding (positions are recomputed with 1e-12 px of jitter at each paint)
  const same = (css) => css.replace(/(\\.\\d{3})\\d+/g, "$1");
  proto._update = function(css) {
    const key = same(css);
    if (this.__css_key !== key) { this.__css_key = key; update.call(this, css); }
  };
  Bokeh.require("core/visuals/visual").VisualProperties.prototype._get_css_value = function(name) { return ""; };
  const plot = Bokeh.require("models/plots/plot_canvas").PlotView.prototype;
  const font = Object.getOwnPropertyDescriptor(plot, "base_font_size").get;
  Object.defineProperty(plot, "base_font_size", {configurable: true, get() {
    if (this.__base_font_size == null) this.__base_font_size = font.call(this);
    return this.__base_font_size;
  }});
}
} catch (err) {  // another BokehJS: the page works without these, only slower
  console.warn("strainstream: BokehJS paint fixes not applied:", err);
}
"""


def make_document(doc, uri: str, api_key: str | None) -> None:
    """Fill the Bokeh document ``doc`` of one browser session (the application's handler)."""
    from bokeh.events import DocumentReady
    from bokeh.models import CustomJS

    doc.js_on_event(DocumentReady, CustomJS(code=PAINT_FIXES_JS))
    page = Page(doc, uri, api_key)
    doc.on_session_destroyed(lambda context: page.close())
    page.start()
