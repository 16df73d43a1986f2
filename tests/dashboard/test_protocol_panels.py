"""The protocol tabs of ``strainstream dashboard`` (#18 item 3) in a real headless chromium:
cycling (capacity, coulombic efficiency, retention vs cycle), GITT (voltage transient, D vs x
on a log axis) and rate series (microstrain vs charge per run, microstrain vs rate).

Runs are opened through a RunEngine and bluesky's TiledWriter (their start and stop go to the
test tiled server); their results are computed by the worker's own callbacks
(:class:`~strainstream.callbacks.electrochem.CyclingCallback`,
:class:`~strainstream.callbacks.electrochem.GITTCallback`) from known inputs, or are the
simulated cell's ``operando_xrd`` rows (the rate series), and stored with the worker's
:class:`~strainstream.callbacks.sinks.TiledSink` in two parts: the page draws the first part,
then the second part arrives while it is open and must be drawn as well. The drawn values are
checked against the known answers; screenshots go to the test's tmp dir (printed).
"""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest
from _cycles import N_CYCLES, R100, cycling_plan, known_cycles
from _page import column, js, set_active_tab, wait_for

pytestmark = [pytest.mark.system, pytest.mark.timeout(120), pytest.mark.filterwarnings("ignore::RuntimeWarning")]

FIRST_PART = 18
RATES = (20.0, 100.0, 200.0)
TAB_CYCLING, TAB_GITT, TAB_SERIES = 5, 6, 7


def _shot(driver, tmp_path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")


class Batched:
    """The worker's TiledSink, with the rows sent when :meth:`flush` is called (the worker
    appends per event, ≈90 ms a request: a GITT record of 280 readings would cost 25 s)."""

    def __init__(self, sink) -> None:
        self.sink, self.rows, self.sent = sink, [], set()

    def begin(self, metadata, columns):
        return self.sink.begin(metadata, columns)

    def append(self, rows):
        self.rows.extend(rows)

    def flush(self) -> None:
        if self.rows:
            self.sink.append(self.rows)
            self.sent.update(int(r["seq_num"]) for r in self.rows)
            self.rows = []

    def committed_seq_nums(self):
        return self.sent | {int(r["seq_num"]) for r in self.rows}

    def put_arrays(self, arrays, metadata=None):
        self.sink.put_arrays(arrays, metadata)

    def finish(self, summary):
        self.flush()
        self.sink.finish(summary)


def _run_engine(root):
    """A RunEngine whose runs' start and stop go to tiled; every document also to ``docs``."""
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter

    RE = RunEngine({})
    writer = TiledWriter(root, batch_size=1)
    RE.subscribe(lambda n, doc: writer(n, doc) if n in ("start", "stop") else None)
    docs: list = []
    RE.subscribe(lambda n, doc: docs.append((n, copy.deepcopy(doc))))
    return RE, docs


def _open_page(dashboard_factory, read_only_key, browser, tab: int) -> None:
    dash = dashboard_factory(read_only_key)
    browser.get(dash.url)
    wait_for(browser, "return (window.__m('status') || {}).text && window.__m('status').text.startsWith('following');",
             45, "logged in")  # the first poll reads every run: slow on a busy machine
    set_active_tab(browser, tab)


def _n(driver, source: str) -> int:
    return len(column(driver, source, "seq_num") or [])


def _wait_rows(driver, source: str, n: int, what: str) -> None:
    wait_for(driver, "return (window.__col(arguments[0], 'seq_num') || []).length == arguments[1];", 20,
             what, source, n)


_LABELS = """const f = window.__m(arguments[0]);
    const legends = f.center.filter(m => m.items !== undefined);
    const labels = legends.flatMap(l => l.items.map(i => { const v = i.label;
        return v == null ? null : (v.value !== undefined ? v.value : String(v)); }));"""


def _legend_labels(driver, name: str) -> list[str]:
    """The legend labels of the figure ``name``."""
    return js(driver, _LABELS + "return labels;", name)


def _wait_legend(driver, name: str, text: str) -> list[str]:
    """The legend labels of ``name`` once one of them contains ``text``."""
    return wait_for(driver, _LABELS + "return labels.some(s => s && s.includes(arguments[1])) && labels;", 10,
                    f"{text!r} in the legend of {name}", name, text)


def _clicked_in_run_list(driver, uid: str, tab: int) -> None:
    """Click the run ``uid`` in the run list: the page opens the protocol's tab ``tab``."""
    set_active_tab(driver, 0)
    js(driver, """const i = window.__col('runs', 'uid').indexOf(arguments[0]);
                  window.__m('runs').selected.indices = [i];""", uid)
    wait_for(driver, "return window.__m('tabs').active == arguments[0];", 10, f"tab {tab} opened", tab)


# -- cycling ------------------------------------------------------------------------------------

def test_cycling_tab_capacity_efficiency_and_retention(tiled_server, read_only_key, dashboard_factory, browser,
                                                       tmp_path):
    from strainstream.callbacks.electrochem import CyclingCallback
    from strainstream.callbacks.sinks import TiledSink
    from strainstream.plans.electrochem import CycleSummary

    root = tiled_server.client()
    RE, docs = _run_engine(root)
    summary = CycleSummary(name="cycle")
    (uid,) = RE(cycling_plan(summary))
    sink = Batched(TiledSink(root, uid, "cycling"))
    cb = CyclingCallback(sink)
    events = [i for i, (n, _) in enumerate(docs) if n == "event"]
    split = events[FIRST_PART - 1] + 1
    for name, doc in docs[:split]:  # start, descriptor, the first 18 cycles
        cb(name, doc)
    sink.flush()

    _open_page(dashboard_factory, read_only_key, browser, TAB_CYCLING)
    _wait_rows(browser, "cycling_points", FIRST_PART, f"the first {FIRST_PART} cycles")
    k, chg, dis, vc, vd = known_cycles()
    assert column(browser, "cycling_points", "cycle") == k[:FIRST_PART].tolist()
    assert column(browser, "cycling_points", "dis") == pytest.approx(dis[:FIRST_PART], rel=1e-12)

    for name, doc in docs[split:]:  # the other cycles arrive while the page is open
        cb(name, doc)
    _wait_rows(browser, "cycling_points", N_CYCLES, f"all {N_CYCLES} cycles")
    col = {key: column(browser, "cycling_points", key) for key in ("cycle", "chg", "dis", "ce", "ret", "vc", "vd")}
    assert col["cycle"] == k.tolist()
    assert col["chg"] == pytest.approx(chg, rel=1e-12)
    assert col["dis"] == pytest.approx(dis, rel=1e-12)
    assert col["ce"] == pytest.approx(100 * dis / chg, rel=1e-12)  # %: 88 then 99.8
    assert col["ce"][0] == pytest.approx(88.0) and col["ce"][1] == pytest.approx(99.8)
    assert col["ret"] == pytest.approx(100 * dis / dis[0], rel=1e-12)  # % of cycle 1's discharge
    assert col["ret"][-1] == pytest.approx(100 * R100 ** 0.29, rel=1e-12)
    assert col["vc"] == pytest.approx(vc) and col["vd"] == pytest.approx(vd)
    assert _legend_labels(browser, "cycling_retention") == ["retention vs cycle 1"]
    assert js(browser, "return window.__m('cycling_retention').title.text;") == \
        f"capacity retention: {100 * dis[-1] / dis[0]:.1f} % after cycle {N_CYCLES}"
    assert _legend_labels(browser, "cycling_capacity") == ["charge", "discharge", "coulombic efficiency"]
    # the coulombic-efficiency axis (right) reaches down to the first cycle's 88 %
    ce_range = js(browser, """const f = window.__m('cycling_capacity'); const r = f.extra_y_ranges;
        const ce = (r instanceof Map) ? r.get('ce') : r['ce']; return [ce.start, ce.end];""")
    assert ce_range == pytest.approx([87.0, 101.0])
    wait_for(browser, "return window.__m('cycling_info').text.includes(arguments[0]);", 10,
             "the summary in the info line", f"retention {100 * dis[-1] / dis[0]:.1f} % after {N_CYCLES} cycles")
    time.sleep(1.0)
    _shot(browser, tmp_path, "cycling")
    _clicked_in_run_list(browser, uid, TAB_CYCLING)


# -- GITT ---------------------------------------------------------------------------------------

def _gitt_record():
    """(t s, V, I mA, soc) of 3 pulses of 20 mA/g (600 s) and 1200 s rests, read every 20 s."""
    from strainstream.sim.cell import gitt_readings

    return gitt_readings("SC-NM91", soc=0.3, n_pulses=3, current_mA_g=20.0, pulse_s=600.0, rest_s=1200.0,
                         step_s=20.0)


def test_gitt_tab_transient_and_diffusivity_on_a_log_axis(tiled_server, read_only_key, dashboard_factory, browser,
                                                          tmp_path):
    import bluesky.plan_stubs as bps
    from ophyd import Component as Cpt
    from ophyd import Device, Signal

    from strainstream.callbacks.electrochem import GITTCallback
    from strainstream.callbacks.sinks import TiledSink
    from strainstream.rundesc import XRDKeys
    from strainstream.sim.cell import gitt_formula_diffusivity_cm2_s, preset

    class Cyc(Device):
        voltage_V = Cpt(Signal, value=0.0, kind="hinted")
        current_mA = Cpt(Signal, value=0.0)
        time_s = Cpt(Signal, value=0.0)
        soc = Cpt(Signal, value=0.0)

    cyc = Cyc(name="cycler")
    keys = XRDKeys(**{n: f"cycler_{s}" for n, s in XRDKeys.SUFFIXES.items() if hasattr(cyc, s)}).to_start()
    radius = preset("SC-NM91").particle_radius_um
    record = _gitt_record()

    def gitt():
        yield from bps.open_run(md={"experiment": "operando_gitt", "material": "SC-NM91",
                                    "particle_radius_um": radius, "current_mA_g": 20.0, "xrd_keys": keys})
        for k, (t, v, i, s) in enumerate(record):
            stamp = 1.7e9 + k  # one update, one timestamp (the cycler IOC's convention)
            for sig, value in ((cyc.time_s, t), (cyc.voltage_V, v), (cyc.current_mA, i), (cyc.soc, s)):
                sig.put(value, timestamp=stamp)
            yield from bps.trigger_and_read([cyc], name="cycler")
        yield from bps.close_run()

    root = tiled_server.client()
    RE, docs = _run_engine(root)
    (uid,) = RE(gitt())
    sink = Batched(TiledSink(root, uid, "gitt"))
    cb = GITTCallback(sink)
    # the first part ends after the third pulse started: pulses 0 and 1 are complete (their rest ended)
    first = 6 + 2 * 90 + 5
    split = [i for i, (n, _) in enumerate(docs) if n == "event"][first - 1] + 1
    for name, doc in docs[:split]:
        cb(name, doc)
    sink.flush()

    _open_page(dashboard_factory, read_only_key, browser, TAB_GITT)
    _wait_rows(browser, "gitt_transient", first, f"the first {first} readings")
    wait_for(browser, "return (window.__col('gitt_d', 'd') || []).length == 2;", 10, "the first two pulses' D")
    t0 = record[0][0]
    assert column(browser, "gitt_transient", "t_h") == pytest.approx([(r[0] - t0) / 3600 for r in record[:first]])
    assert column(browser, "gitt_transient", "volt") == pytest.approx([r[1] for r in record[:first]], rel=1e-12)
    on = [r for r in record[:first] if r[2] != 0.0]
    assert _n(browser, "gitt_pulse_points") == len(on) == 2 * 30 + 5
    d_known = gitt_formula_diffusivity_cm2_s("SC-NM91")
    soc_known = 0.3 + np.arange(1, 4) * 20 * 600 / 3600 / 228.0  # 20 mA/g × 600 s per pulse, Q 228 mAh/g
    assert column(browser, "gitt_d", "d") == pytest.approx([d_known] * 2, rel=0.05)
    assert column(browser, "gitt_d", "soc") == pytest.approx(soc_known[:2], abs=1e-9)

    # the run's XRD frames: one before the first pulse, one at the end of each rest (the first at
    # the rest's last reading, the second 5 s later, the third flagged): pulse k's relaxed point
    table = root["derived"][uid]["gitt"].read()
    ends = table["rest_end_time_s"][table["pulse"] >= 0].tolist()
    assert len(ends) == 2
    xrd_cols = {"seq_num": "int64", "time": "float64", "flag": "string", "message": "string",
                "cell_time_s": "float64", "a_A": "float64", "c_A": "float64", "a_err_A": "float64",
                "c_err_A": "float64"}
    a, c = [2.8700, 2.8650, 2.8600, 2.8550], [14.200, 14.230, 14.260, 14.290]

    def frame(k, t, flag=""):
        return {"seq_num": k + 1, "time": 1.7e9 + t, "flag": flag, "message": "", "cell_time_s": t, "a_A": a[k],
                "c_A": c[k], "a_err_A": 1e-4, "c_err_A": 1e-3}

    xrd = TiledSink(root, uid, "operando_xrd")
    xrd.begin({"version": "1"}, xrd_cols)
    xrd.append([frame(0, t0), frame(1, ends[0])])
    lattice = "return (window.__col('gitt_lattice', 'c') || []).length == arguments[0];"
    wait_for(browser, lattice, 15, "c of the first relaxed point", 1)
    assert column(browser, "gitt_lattice", "c") == [c[1]] and column(browser, "gitt_lattice", "a") == [a[1]]
    assert column(browser, "gitt_lattice", "soc") == pytest.approx(soc_known[:1], abs=1e-9)

    for name, doc in docs[split:]:  # the rest of the run, its stop: every pulse in gitt_arrays
        cb(name, doc)
    sink.flush()
    _wait_rows(browser, "gitt_transient", len(record), f"all {len(record)} readings")
    wait_for(browser, """const tau = window.__col('gitt_d', 'tau') || [];
             return tau.length == 3 && tau.every(t => t != null);""", 15, "the three pulses' D and τ")
    d = column(browser, "gitt_d", "d")
    summary = dict(root["derived"][uid]["gitt"].metadata)["summary"]
    assert d == summary["d_cm2_s"]  # the stored pulses, all drawn
    assert d == pytest.approx([d_known] * 3, rel=0.05)  # the simulated cell's known answer, 5 % (#18)
    assert column(browser, "gitt_d", "soc") == pytest.approx(soc_known, abs=1e-9)
    assert column(browser, "gitt_d", "tau") == pytest.approx([600.0] * 3, rel=0.05)
    arrays_end = root["derived"][uid]["gitt_arrays"]["rest_end_time_s"].read().tolist()
    xrd.append([frame(2, ends[1] + 5.0), frame(3, arrays_end[2], "fit_failed")])
    xrd.finish({})
    wait_for(browser, lattice, 15, "c of the second relaxed point", 2)
    assert column(browser, "gitt_lattice", "c") == [c[1], c[2]]  # pulse 3's frame is flagged: no point
    assert column(browser, "gitt_lattice", "a") == [a[1], a[2]]
    assert column(browser, "gitt_lattice", "soc") == pytest.approx(soc_known[:2], abs=1e-9)
    assert column(browser, "gitt_lattice", "frame") == [1, 2]
    wait_for(browser, "return window.__m('gitt_relaxed_points').title.text == 'lattice at the relaxed points (2)';", 5,
             "the relaxed-point count in the title")
    assert js(browser, "return window.__m('gitt_diffusivity').y_scale.type;") == "LogScale"
    wait_for(browser, "return window.__m('gitt_diffusivity').title.text == 'Li diffusivity (3 pulses)';", 5,
             "the pulse count in the title")
    info = wait_for(browser, "const t = window.__m('gitt_info').text; return t.includes('pulses fitted') && t;", 10,
                    "the GITT summary in the info line")
    assert f"3 pulses fitted, median D {summary['d_median_cm2_s']:.2e} cm²/s" in info
    (label,) = _wait_legend(browser, "gitt_diffusivity", f"r_p = {radius:g} µm")
    assert label == f"D (10 < √t < 20 s½, r_p = {radius:g} µm)"  # the study's equation's fit window
    time.sleep(1.0)
    _shot(browser, tmp_path, "gitt")


# -- rate series --------------------------------------------------------------------------------

def test_rate_series_tab_microstrain_against_charge_and_rate(tiled_server, read_only_key, dashboard_factory,
                                                             browser, tmp_path):
    import bluesky.plan_stubs as bps
    from _plot_synth import operando_xrd_entry

    from strainstream.callbacks.plots.electrochem import strain_vs_rate
    from strainstream.callbacks.sinks import TiledSink

    root = tiled_server.client()
    RE, _ = _run_engine(root)

    def run(md):
        def plan():
            yield from bps.open_run(md={"experiment": "operando_xrd", "material": "SC-NM91", **md})
            yield from bps.close_run()
        (uid,) = RE(plan())
        return uid

    def store(uid, entry, rows):
        cols = entry["columns"]
        kinds = {k: "string" if isinstance(v[0], str) else "int64" if k == "seq_num" else "float64"
                 for k, v in cols.items()}
        sink = TiledSink(root, uid, "operando_xrd")
        sink.begin({"version": "1"}, kinds)
        sink.append([{k: cols[k][i] for k in cols} for i in rows])
        return sink

    # an older series (one run), the series (three rates), then a run of no series (the newest)
    old = run({"rate_mA_g": 50.0, "series": "s-old", "series_index": 0, "series_rates_mA_g": [50.0]})
    store(old, operando_xrd_entry(n=10, rate_mA_g=50.0), range(10))
    entries, uids = [], []
    for k, rate in enumerate(RATES):
        uid = run({"rate_mA_g": rate, "series": "s-dash", "series_index": k, "series_rates_mA_g": list(RATES)})
        entries.append(({"rate_mA_g": rate}, operando_xrd_entry(n=30, rate_mA_g=rate)))
        uids.append(uid)
    sinks = [store(uid, entry, range(30 if k < 2 else 12)) for k, (uid, (_, entry)) in enumerate(zip(uids, entries,
                                                                                                       strict=True))]
    lone = run({"rate_mA_g": 200.0})
    store(lone, operando_xrd_entry(n=10), range(10))

    _open_page(dashboard_factory, read_only_key, browser, TAB_SERIES)
    for uid, n in zip(uids, (30, 30, 12), strict=True):
        _wait_rows(browser, f"series_strain_{uid}", n, f"{n} points of run {uid[:8]}")
    for u in (old, lone):  # not of the followed series
        assert column(browser, f"series_strain_{u}", "q") is None

    def check(n_last: int) -> None:
        for uid, (_, entry), n in zip(uids, entries, (30, 30, n_last), strict=True):
            cols = entry["columns"]
            q = np.asarray(cols["capacity_mAh_g"][:n])
            assert column(browser, f"series_strain_{uid}", "q") == pytest.approx(q - q[0], rel=1e-12, abs=1e-12)
            assert column(browser, f"series_strain_{uid}", "eps") == pytest.approx(
                1e3 * np.asarray(cols["microstrain"][:n]), rel=1e-12)
        # ε vs rate at 25/50/90 % of the smallest charge all runs reached: the figure's numbers
        partial = [(s, {"columns": {k: v[:n] for k, v in e["columns"].items()}})
                   for (s, e), n in zip(entries, (30, 30, n_last), strict=True)]
        reached = min(float(np.ptp(e["columns"]["capacity_mAh_g"])) for _, e in partial)
        caps = [f * reached for f in (0.25, 0.5, 0.9)]
        rates, expected = strain_vs_rate(partial, caps)
        for j, pct in enumerate((25, 50, 90)):
            src = f"series_vs_rate_{pct}"
            assert column(browser, src, "rate") == list(RATES)
            assert column(browser, src, "eps") == pytest.approx(1e3 * expected[:, j], rel=1e-9)
            assert column(browser, src, "q") == pytest.approx([caps[j]] * 3, rel=1e-9)
        return expected

    wait_for(browser, "return (window.__col('series_vs_rate_90', 'eps') || []).length == 3;", 10, "ε vs rate")
    check(12)
    # the rest of the 200 mA/g charge arrives while the page is open
    cols = entries[2][1]["columns"]
    sinks[2].append([{k: cols[k][i] for k in cols} for i in range(12, 30)])
    _wait_rows(browser, f"series_strain_{uids[2]}", 30, "the whole 200 mA/g charge")
    time.sleep(0.5)
    eps = check(30)
    # the simulated NM91 cell: ε rises with rate at every charge level, most at the highest
    assert np.all(np.diff(eps, axis=0) > 0)
    rise = eps[-1] - eps[0]
    assert rise[2] > 2 * rise[0], rise
    assert _legend_labels(browser, "series_strain") == [f"{r:g} mA g⁻¹" for r in RATES]
    labels = _legend_labels(browser, "series_vs_rate")
    assert len(labels) == 3 and all("mAh g⁻¹" in s and "% of the charge" in s for s in labels), labels
    assert js(browser, "return window.__m('series_vs_rate').x_scale.type;") == "LogScale"
    info = js(browser, "return window.__m('rate_series_info').text;")
    assert "s-dash" in info and "3 runs at 20, 100, 200 mA/g" in info, info
    time.sleep(1.0)
    _shot(browser, tmp_path, "rate_series")

    # another series chosen: its one run alone is drawn, the ε-vs-rate panel follows it
    js(browser, "window.__m('run_rate_series').value = 's-old';")
    _wait_rows(browser, f"series_strain_{old}", 10, "the older series' run")
    assert _legend_labels(browser, "series_strain") == ["50 mA g⁻¹"]
    wait_for(browser, "return (window.__col('series_vs_rate_25', 'rate') || []).join() == '50';", 10,
             "ε vs rate of the older series")
    # a run of the series clicked in the run list opens this tab on its series
    js(browser, "window.__m('run_rate_series').value = 'newest';")
    _clicked_in_run_list(browser, uids[0], TAB_SERIES)
    assert js(browser, "return window.__m('run_rate_series').value;") == "s-dash"
    _wait_rows(browser, f"series_strain_{uids[0]}", 30, "the series again")
