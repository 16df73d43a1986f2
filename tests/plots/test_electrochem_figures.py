"""The electrochemistry figures of ``strainstream plot`` (#18 item 3) from stored results.

An offline catalog holds three kinds of run written by bluesky's TiledWriter: an
``operando_cycling`` run whose ``cycle_summary`` stream (the plan's own
:class:`~strainstream.plans.electrochem.CycleSummary` signals, known capacities) went through
the real :class:`~strainstream.callbacks.electrochem.CyclingCallback`; an ``operando_gitt``
run whose ``cycler`` stream is the simulated SC-NM91 cell's GITT record, through the real
:class:`~strainstream.callbacks.electrochem.GITTCallback`; and the three runs of a
``rate_series`` (synthetic ``operando_xrd`` results of the simulated cell charged at 20, 100,
200 mA/g). Results are stored with the worker's :class:`~strainstream.callbacks.sinks.TiledSink`,
read back with :func:`~strainstream.callbacks.sinks.read_results` and drawn by the figure
code ``strainstream plot`` uses; the tests read the plotted data back from the figures.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from _cycles import N_CYCLES, cycling_plan, known_cycles
from _plot_synth import operando_xrd_entry, png_size, run_cli

pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning")]

RATES = (20.0, 100.0, 200.0)


def _store(root, uid: str, name: str, entry: dict) -> None:
    """``entry`` stored as the worker stores results (TiledSink)."""
    from strainstream.callbacks.sinks import TiledSink

    cols = entry["columns"]
    kinds = {k: "string" if isinstance(v[0], str) else "float64" for k, v in cols.items()}
    sink = TiledSink(root, uid, name)
    sink.begin({"version": "1"}, kinds)
    sink.append([{k: cols[k][i] for k in cols} for i in range(len(next(iter(cols.values()))))])
    sink.finish(entry["summary"])


class OneAppend:
    """The worker's TiledSink, with the rows of a whole run sent in one append at the end (the
    worker appends per event, ≈90 ms a request: 300 rows would cost half a minute here)."""

    def __init__(self, sink) -> None:
        self.sink, self.rows = sink, []

    def begin(self, metadata, columns):
        return self.sink.begin(metadata, columns)

    def append(self, rows):
        self.rows.extend(rows)

    def committed_seq_nums(self):
        return {int(r["seq_num"]) for r in self.rows}

    def put_arrays(self, arrays, metadata=None):
        self.sink.put_arrays(arrays, metadata)

    def finish(self, summary):
        self.sink.append(self.rows)
        self.sink.finish(summary)


def _gitt_record():
    """(t s, V, I mA, soc) of 3 pulses of 20 mA/g (600 s) and 1200 s rests, read every 20 s."""
    from strainstream.sim.cell import gitt_readings

    return gitt_readings("SC-NM91", soc=0.3, n_pulses=3, current_mA_g=20.0, pulse_s=600.0, rest_s=1200.0,
                         step_s=20.0)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    import bluesky.plan_stubs as bps
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter
    from ophyd import Component as Cpt
    from ophyd import Device, Signal

    from strainstream.callbacks.electrochem import CyclingCallback, GITTCallback
    from strainstream.callbacks.sinks import TiledSink
    from strainstream.client import open_offline
    from strainstream.plans.electrochem import CycleSummary
    from strainstream.rundesc import XRDKeys
    from strainstream.sim.cell import preset
    from strainstream.supervisor import find_free_port
    from strainstream.tiledconfig import write_config

    d = tmp_path_factory.mktemp("echem_plot") / "data"
    write_config(d, port=find_free_port(), api_key="k" * 32)
    root = open_offline(d)
    RE = RunEngine({})
    writer = RE.subscribe(TiledWriter(root, batch_size=1))
    run_writer = TiledWriter(root, batch_size=1)
    docs = []
    RE.subscribe(lambda n, doc: docs.append((n, copy.deepcopy(doc))))

    summary = CycleSummary(name="cycle")
    (cyc_uid,) = RE(cycling_plan(summary))
    cb = CyclingCallback(OneAppend(TiledSink(root, cyc_uid, "cycling")))
    for name, doc in docs:
        cb(name, doc)

    class Cyc(Device):
        voltage_V = Cpt(Signal, value=0.0, kind="hinted")
        current_mA = Cpt(Signal, value=0.0)
        time_s = Cpt(Signal, value=0.0)
        soc = Cpt(Signal, value=0.0)

    cyc = Cyc(name="cycler")
    keys = XRDKeys(**{n: f"cycler_{s}" for n, s in XRDKeys.SUFFIXES.items() if hasattr(cyc, s)}).to_start()
    radius = preset("SC-NM91").particle_radius_um

    def gitt():
        yield from bps.open_run(md={"experiment": "operando_gitt", "material": "SC-NM91",
                                    "particle_radius_um": radius, "current_mA_g": 20.0, "xrd_keys": keys})
        for k, (t, v, i, s) in enumerate(_gitt_record()):
            stamp = 1.7e9 + k  # one update, one timestamp (the cycler IOC's convention)
            for sig, value in ((cyc.time_s, t), (cyc.voltage_V, v), (cyc.current_mA, i), (cyc.soc, s)):
                sig.put(value, timestamp=stamp)
            yield from bps.trigger_and_read([cyc], name="cycler")
        yield from bps.close_run()

    # the cycler record goes to the callback only (a few hundred events through TiledWriter
    # would cost a minute); tiled gets the run's start and stop
    RE.unsubscribe(writer)
    RE.subscribe(lambda n, doc: run_writer(n, doc) if n in ("start", "stop") else None)
    docs.clear()
    (gitt_uid,) = RE(gitt())
    cb = GITTCallback(OneAppend(TiledSink(root, gitt_uid, "gitt")))
    for name, doc in docs:
        cb(name, doc)

    series = []
    for k, rate in enumerate(RATES):
        def charge(rate=rate, k=k):
            yield from bps.open_run(md={"experiment": "operando_xrd", "material": "SC-NM91", "rate_mA_g": rate,
                                        "series": "s-figure", "series_index": k, "series_rates_mA_g": list(RATES)})
            yield from bps.close_run()

        (uid,) = RE(charge())
        _store(root, uid, "operando_xrd", operando_xrd_entry(n=30, rate_mA_g=rate))
        series.append(uid)
    return {"dir": d, "root": root, "cycling": cyc_uid, "gitt": gitt_uid, "series": series}


def _panel(fig, title_start):
    (ax,) = [ax for ax in fig.axes if ax.get_title().startswith(title_start)]
    return ax


def _stored(catalog, uid, name):
    from strainstream.callbacks.plots import figure_for
    from strainstream.callbacks.sinks import read_arrays, read_results

    run = catalog["root"][uid]
    start = dict(run.metadata["start"])
    entry = read_results(catalog["root"], uid)["analyses"][name]
    arrays, _ = read_arrays(catalog["root"], uid, name)
    return entry, figure_for(name, entry, arrays=arrays, start=start)


def test_cycling_figure_capacity_retention_and_efficiency(catalog, tmp_path):
    from strainstream.callbacks.plots import save_figure
    from strainstream.callbacks.plots.electrochem import (
        CAPACITY_LABEL,
        CE_LABEL,
        CYCLE_LABEL,
        RETENTION_LABEL,
    )

    entry, fig = _stored(catalog, catalog["cycling"], "cycling")
    assert entry["status"] == "complete" and entry["n_rows"] == N_CYCLES
    k, chg, dis, vc, vd = known_cycles()
    ax_q = _panel(fig, "capacity and coulombic efficiency")
    assert ax_q.get_xlabel() == CYCLE_LABEL and ax_q.get_ylabel() == CAPACITY_LABEL
    lines = {ln.get_label(): ln for ax in fig.axes for ln in ax.get_lines()
             if ax is ax_q or ax.get_ylabel() in (CE_LABEL, RETENTION_LABEL)}
    np.testing.assert_allclose(lines["discharge"].get_ydata(), dis, rtol=1e-12)
    np.testing.assert_allclose(lines["charge"].get_ydata(), chg, rtol=1e-12)
    np.testing.assert_array_equal(lines["discharge"].get_xdata(), k)
    ce = lines["coulombic efficiency"]
    np.testing.assert_allclose(ce.get_ydata(), 100 * dis / chg, rtol=1e-12)
    assert ce.axes.get_ylabel() == CE_LABEL and ce.axes is not ax_q  # its own (twin) axis
    (ret,) = [ln for name, ln in lines.items() if name.startswith("retention vs cycle 1")]
    np.testing.assert_allclose(ret.get_ydata(), 100 * dis / dis[0], rtol=1e-12)
    assert f"{100 * dis[-1] / dis[0]:.1f} % after cycle {N_CYCLES}" in ret.get_label()
    assert ret.axes.get_ylabel() == RETENTION_LABEL and ret.axes.get_legend() is not None
    assert ax_q.get_legend() is not None  # charge, discharge and CE in one legend
    np.testing.assert_allclose(_panel(fig, "mean voltage").get_lines()[0].get_ydata(), vc, rtol=1e-12)
    assert "SC-NM91" in fig.get_suptitle() and "operando cycling" in fig.get_suptitle()
    save_figure(fig, tmp_path / "cycling.png", dpi=60)


def test_gitt_figure_d_against_state_of_charge(catalog, tmp_path):
    from strainstream.callbacks.plots import save_figure
    from strainstream.callbacks.plots.electrochem import D_LABEL, SOC_LABEL
    from strainstream.sim.cell import gitt_formula_diffusivity_cm2_s

    entry, fig = _stored(catalog, catalog["gitt"], "gitt")
    ax_d = _panel(fig, "Li diffusivity")
    assert ax_d.get_xlabel() == SOC_LABEL and ax_d.get_ylabel() == D_LABEL and ax_d.get_yscale() == "log"
    (line,) = ax_d.get_lines()
    d, soc = np.asarray(line.get_ydata()), np.asarray(line.get_xdata())
    assert d.size == 3 and np.all(np.diff(soc) > 0)
    np.testing.assert_array_equal(d, entry["summary"]["d_cm2_s"])  # the stored pulses, all drawn
    # the simulated cell's known answer, 5 % (#18); soc 0.3 + k × 20 mA/g × 600 s / Q_practical
    np.testing.assert_allclose(d, gitt_formula_diffusivity_cm2_s("SC-NM91"), rtol=0.05)
    np.testing.assert_allclose(soc, 0.3 + np.arange(1, 4) * 20 * 600 / 3600 / 228.0, atol=1e-9)
    assert "r$_p$ = 1.5 µm" in line.get_label() and ax_d.get_legend() is not None
    ax_v = _panel(fig, "GITT transient")
    assert ax_v.get_xlabel() == "time (h)" and "V" in ax_v.get_ylabel()
    v = entry["columns"]["voltage_V"]
    np.testing.assert_array_equal(ax_v.get_lines()[0].get_ydata(), v)
    save_figure(fig, tmp_path / "gitt.png", dpi=60)


def test_rate_series_figure_microstrain_against_rate(catalog):
    from strainstream.callbacks.plots.electrochem import (
        RATE_LABEL,
        STRAIN_LABEL,
        rate_series_figure,
        series_entries,
        strain_vs_rate,
    )

    start = dict(catalog["root"][catalog["series"][1]].metadata["start"])
    entries = series_entries(catalog["root"], start)
    assert [s["rate_mA_g"] for s, _ in entries] == list(RATES)  # all three runs, none other
    fig = rate_series_figure(entries)
    ax_e, ax_r = _panel(fig, "microstrain during charge"), _panel(fig, "microstrain vs rate")
    assert ax_e.get_ylabel() == STRAIN_LABEL and ax_r.get_xlabel() == RATE_LABEL
    assert [t.get_text() for t in ax_e.get_legend().get_texts()] == [f"{r:g} mA g$^{{-1}}$" for r in RATES]
    for (_, entry), line in zip(entries, ax_e.get_lines(), strict=True):
        cols = entry["columns"]
        q = np.asarray(cols["capacity_mAh_g"])
        np.testing.assert_allclose(line.get_xdata(), q - q[0], rtol=1e-12)
        np.testing.assert_allclose(line.get_ydata(), 1e3 * np.asarray(cols["microstrain"]), rtol=1e-12)
    lines = ax_r.get_lines()
    assert len(lines) == 3 and all("mAh g" in ln.get_label() for ln in lines)
    eps = np.array([ln.get_ydata() for ln in lines]) / 1e3  # (charge level, rate)
    np.testing.assert_array_equal(lines[0].get_xdata(), RATES)
    caps = [float(ln.get_label().split()[1]) for ln in lines]
    _, expected = strain_vs_rate(entries, caps)
    np.testing.assert_allclose(eps, expected.T, rtol=0.01)  # labels round the capacity to 1 mAh/g
    # the simulated NM91 cell: ε rises with rate at every charge level, most at the highest
    assert np.all(np.diff(eps, axis=1) > 0)
    rise = eps[:, -1] - eps[:, 0]
    assert rise[2] > 2 * rise[0], rise


def test_plot_command_writes_the_protocol_figures(catalog, tmp_path):
    d = catalog["dir"]
    out = tmp_path / "figs"
    out.mkdir()
    written = []
    for uid, names in ((catalog["cycling"], ["cycling"]), (catalog["gitt"], ["gitt"]),
                       (catalog["series"][0], ["operando_xrd", "rate_series"])):
        code, stdout, err = run_cli(["plot", uid, "--data-dir", str(d), "--out", str(out), "--dpi", "50"])
        assert code == 0, err
        expected = [str(out / f"{uid[:8]}_{n}.png") for n in names]
        assert sorted(stdout.split()) == sorted(expected)
        written += expected
    assert png_size(written[0]) == (14 * 50, round(4.6 * 50))
    assert all(Path(p).stat().st_size > 10_000 for p in written)
    # only the series figure of a series run
    code, stdout, err = run_cli(["plot", catalog["series"][2], "--data-dir", str(d), "--analysis", "rate_series",
                                 "--out", str(out / "series.png"), "--dpi", "40"])
    assert code == 0 and stdout.split() == [str(out / "series.png")], err
    assert png_size(out / "series.png") == (13 * 40, round(4.8 * 40))


def test_gitt_d_next_to_the_lattice_of_each_relaxed_point(catalog, tmp_path):
    """D of pulse k beside a and c of the frame taken at the end of its rest (#18 item 1).

    Known answer: an operando_xrd entry with a frame before the first pulse, one at the
    end of each rest (the first at the rest's last reading, the second 5 s later) and the
    third flagged: pulses 1 and 2 get those frames' a and c exactly, pulse 3 none."""
    from strainstream.callbacks.plots import figure_for, save_figure
    from strainstream.callbacks.plots.electrochem import gitt_lattice
    from strainstream.callbacks.sinks import read_arrays, read_results

    uid = catalog["gitt"]
    entry = read_results(catalog["root"], uid)["analyses"]["gitt"]
    arrays, _ = read_arrays(catalog["root"], uid, "gitt")
    ends = np.asarray(arrays["rest_end_time_s"])
    t_all = np.asarray(entry["columns"]["cell_time_s"])
    assert ends.size == 3 and np.all(np.isin(ends, t_all))  # a reading's cell time each
    # the rows of the pulses carry the same times (the live view joins before the stop)
    rows = np.asarray(entry["columns"]["pulse"]) >= 0
    np.testing.assert_array_equal(np.asarray(entry["columns"]["rest_end_time_s"])[rows], ends[:rows.sum()])
    a = [2.8700, 2.8650, 2.8600, 2.8550]
    c = [14.200, 14.230, 14.260, 14.290]
    xrd = {"columns": {"cell_time_s": [t_all[0], ends[0], ends[1] + 5.0, ends[2]],
                       "a_A": a, "c_A": c, "a_err_A": [1e-4] * 4, "c_err_A": [1e-3] * 4,
                       "flag": ["", "", "", "fit_failed"]}}
    joined = gitt_lattice(entry, arrays, xrd)
    np.testing.assert_array_equal(joined["frame"], [1, 2, -1])
    np.testing.assert_array_equal(joined["c_A"][:2], c[1:3])
    np.testing.assert_array_equal(joined["a_A"][:2], a[1:3])
    assert np.isnan(joined["c_A"][2]) and np.isnan(joined["a_A"][2])
    np.testing.assert_array_equal(joined["d_cm2_s"], arrays["d_cm2_s"])
    fig = figure_for("gitt", entry, arrays=arrays, start=dict(catalog["root"][uid].metadata["start"]))
    assert not [ax for ax in fig.axes if ax.get_title().startswith("lattice")]  # no XRD: two panels
    fig = figure_for("gitt", entry, arrays=arrays, analyses={"gitt": entry, "operando_xrd": xrd})
    ax_c = _panel(fig, "lattice at the relaxed points (2)")
    assert ax_c.get_ylabel() == "c (Å)"
    (bars,) = [b for b in ax_c.containers if b.get_label().startswith("c (")]
    line = bars.lines[0]
    np.testing.assert_array_equal(line.get_ydata(), c[1:3])
    np.testing.assert_array_equal(line.get_xdata(), np.asarray(arrays["pulse_soc"])[:2])
    (ax_a,) = [ax for ax in fig.axes if ax.get_ylabel() == "a (Å)"]
    assert ax_a.get_xlim() == ax_c.get_xlim() == _panel(fig, "Li diffusivity").get_xlim()
    save_figure(fig, tmp_path / "gitt_lattice.png", dpi=60)
