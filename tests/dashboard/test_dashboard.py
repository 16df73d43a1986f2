"""``strainstream dashboard`` in a real headless chromium: login error, the run list, the
latency from a results row landing in tiled to its point in the browser, the page through a
tiled restart and a reload, SXDM pixel and TXM voxel clicks. Screenshots go to the test's tmp dir (printed)."""

from __future__ import annotations

import math
import time

import httpx
import numpy as np
import pytest
from _page import click_data_point, column, js, set_active_tab, text_of, wait_for

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]


def _shot(driver, tmp_path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")


def test_wrong_key_shows_login_error_and_page_is_local(tiled_server, dashboard_factory, browser, tmp_path):
    from strainstream.dashboard import running_dashboard

    dash = dashboard_factory("0123456789abcdef" * 4)  # well-formed, unknown to tiled
    assert running_dashboard(tiled_server.data_dir) == dash.url
    html = httpx.get(dash.url, timeout=10).text
    assert "static/js/bokeh" in html and "cdn.bokeh.org" not in html and "https://" not in html
    browser.get(dash.url)
    wait_for(browser, "const m = window.__m('login_error'); return m && m.visible && m.text;", 20,
             "the login error")
    assert "Login failed" in text_of(browser, "login_error")
    assert "401" in text_of(browser, "login_error")
    assert not js(browser, "return window.__m('tabs').visible;")
    _shot(browser, tmp_path, "login_error")
    # Ctrl-C: one line, exit 130, dashboard.json gone
    assert dash.stop() == 130
    log = (tmp_path / "dashboard0.log").read_text().strip().splitlines()
    assert log[-1] == "strainstream dashboard: stopped (SIGINT)"
    assert running_dashboard(tiled_server.data_dir) is None


def _xrd_columns() -> dict[str, str]:
    from strainstream.callbacks.xrd import OperandoXRDCallback

    return {"seq_num": "int64", "time": "float64", "flag": "string", "message": "string", **OperandoXRDCallback.columns}


def _rows(entry: dict, columns: dict[str, str]) -> list[dict]:
    cols = entry["columns"]
    n = len(cols["seq_num"])
    out = []
    for i in range(n):
        row = {}
        for c, kind in columns.items():
            v = cols[c][i] if c in cols else None
            if kind == "float64" and v is not None and not math.isfinite(v):
                v = None
            row[c] = v
        row["flag"] = row["flag"] or ""
        out.append(row)
    return out


@pytest.mark.timeout(300)
def test_run_appears_and_new_points_are_drawn_within_a_second(tiled_server, worker_factory, read_only_key,
                                                              dashboard_factory, browser, tmp_path):
    from _plot_synth import operando_xrd_entry

    from strainstream.callbacks.sinks import TiledSink
    from strainstream.datadir import detector_dir
    from strainstream.devices.detectors import sim_frame_detector
    from strainstream.plans.frames import frame_series
    from strainstream.session import make_session

    dash = dashboard_factory(read_only_key)
    browser.get(dash.url)
    wait_for(browser, "return (window.__m('status') || {}).text;", 30, "the status line")
    wait_for(browser, "return window.__m('status').text.startsWith('following tiled');", 30, "logged in")

    # a run through the RunEngine and the worker appears with its status and counts
    worker_factory()
    session = make_session(tiled_server.uri, tiled_server.api_key, progress=False,
                           spool_dir=tiled_server.data_dir / "spool")
    det = sim_frame_detector("det", detector_dir(tiled_server.data_dir), frame_shape=(32, 32))
    (uid,) = session.RE(frame_series([det], num=4, delay_s=0.0, md={"material": "SC-NM91"}))
    wait_for(browser, "return (window.__col('runs', 'uid') || []).includes(arguments[0]);", 20,
             "the run in the run list", uid)
    wait_for(browser, """const u = window.__col('runs', 'uid'), i = u.indexOf(arguments[0]);
             return window.__col('runs', 'status')[i] === 'complete'
                 && window.__col('runs', 'analysed')[i] === '4' && window.__col('runs', 'recorded')[i] === '4';""",
             30, "status complete, 4 events recorded and analysed", uid)
    row = wait_for(browser, """const u = window.__col('runs', 'uid'), i = u.indexOf(arguments[0]);
                   return [window.__col('runs', 'material')[i], window.__col('runs', 'experiment')[i]];""",
                   5, "", uid)
    assert row == ["SC-NM91", "frame_series"]
    _shot(browser, tmp_path, "runs")

    # operando XRD results of that run land row by row; the page draws each new point
    root = tiled_server.client()
    columns = _xrd_columns()
    rows = _rows(operando_xrd_entry(n=85), columns)  # 70 now, 15 after a tiled restart
    sink = TiledSink(root, uid, "operando_xrd")
    sink.begin({"version": "1", "raw_uid": uid, "analysis": "operando_xrd"}, columns)
    sink.append(rows[:30])
    set_active_tab(browser, 1)
    wait_for(browser, "return (window.__col('xrd_points', 'x') || []).length >= 30;", 20, "the first 30 points")
    # the page's fixes of BokehJS' paint costs are in place (strainstream.dashboard._app.PAINT_FIXES_JS)
    assert js(browser, 'return Bokeh.require("core/dom").InlineStyleSheet.prototype.__strainstream === true;')
    time.sleep(2.5)  # the tab's first paint and the whole-run panels ((003) contour, dQ/dV) done
    # record in the browser when the number of points changes and the plots have painted them
    # (Date.now(): the same clock as time.time()). BokehJS' own signals of the source say when rows
    # are streamed in or the data replaced; its plots paint in the next animation frame (their
    # requests come first: they connected first), so a frame callback then a task after it sees
    # the paint done. (A 4 ms polling timer cost the page's main thread ~1 s in 17 s.)
    js(browser, """window.__drawn = {}; window.__arrived = {};
        const src = window.__m('xrd_points');
        const seen = () => { const x = (src.data instanceof Map) ? src.data.get('x') : src.data.x;
                             const n = x == null ? 0 : x.length;
                             if (n in window.__arrived) return;
                             window.__arrived[n] = Date.now();
                             requestAnimationFrame(() => setTimeout(() => { window.__drawn[n] = Date.now(); }, 0)); };
        src.streaming.connect(seen);
        src.properties.data.change.connect(seen);""")
    landed = {}
    for k, r in enumerate(rows[30:70], start=31):
        sink.append([r])
        landed[k] = time.time()
        time.sleep(0.29 + 0.13 * (k % 3))  # not in step with the page's poll
    wait_for(browser, "return (window.__col('xrd_points', 'x') || []).length >= 70;", 10, "all 70 points")
    drawn = js(browser, "return window.__drawn;")
    latency = _after_landing(drawn, landed)  # row k: drawn when the page first shows ≥ k points
    print(f"{sum(1 for n in drawn if int(n) > 30)} updates drew {len(landed)} rows")
    p50, p95 = np.percentile(latency, [50, 95])
    print(f"row in tiled -> point in the browser: n={latency.size}, p50 {1000 * p50:.0f} ms, "
          f"p95 {1000 * p95:.0f} ms, max {1000 * latency.max():.0f} ms")
    to_source = _after_landing(js(browser, "return window.__arrived;"), landed)
    print(f"  of which row in tiled -> in the page's data: p50 {1000 * np.median(to_source):.0f} ms, "
          f"p95 {1000 * np.percentile(to_source, 95):.0f} ms")
    served = {int(k): t for k, t in zip(column(browser, "xrd_points", "seq_num"),
                                        column(browser, "xrd_points", "served_at"), strict=False)}
    to_page = np.array([served.get(k, np.nan) - t for k, t in landed.items()])
    print(f"  of which row in tiled -> sent by the page: p50 {1000 * np.nanmedian(to_page):.0f} ms, "
          f"p95 {1000 * np.nanpercentile(to_page, 95):.0f} ms")
    # the acceptance target (#17): a new point drawn within 1 s of its row landing in tiled, p95
    assert np.isfinite(latency).all(), latency
    assert p95 < 1.0, f"p95 {1000 * p95:.0f} ms (row in tiled -> point drawn in the browser): {latency}"
    # the drawn values are the stored ones
    c = column(browser, "xrd_points", "c")
    assert c[:70] == pytest.approx([r["c_A"] for r in rows[:70]], rel=1e-12)
    wait_for(browser, "return (window.__col('xrd_points', 'x') || []).length == 70;", 5)
    time.sleep(2.0)  # the (003) window and dQ/dV redrawn
    _shot(browser, tmp_path, "operando_xrd")

    _tiled_restarted_mid_run(tiled_server, browser, uid, rows, columns, tmp_path)
    # compare: overlay the run's c(capacity)
    js(browser, "window.__m('compare_runs').value = [arguments[0]];", uid)
    set_active_tab(browser, 4)
    time.sleep(3.0)
    _shot(browser, tmp_path, "compare")
    session.close() if hasattr(session, "close") else None


def _after_landing(marks: dict[str, float], landed: dict[int, float]) -> np.ndarray:
    """Seconds from each row's landing in tiled (``landed``: row k -> time.time()) to the first
    browser mark (``marks``: number of points -> Date.now() ms) showing k points or more (rows
    may arrive together)."""
    seen = sorted((int(n), t / 1000.0) for n, t in marks.items())
    return np.array([min(t for n, t in seen if n >= k) - t0 for k, t0 in landed.items()])


def _tiled_restarted_mid_run(tiled_server, browser, uid: str, rows: list[dict], columns: dict[str, str],
                             tmp_path) -> None:
    """tiled killed and started again mid-run (the memory streaming cache starts its sequence
    numbers afresh, tiled's own subscription reconnect dies on the refused key request): the
    page says tiled is unreachable, then follows again, the next rows are pushed again (drawn
    within 1 s) and a browser reload shows the same points. Rows 71.. of ``rows`` land after
    the restart through a new writer (the worker's restart)."""
    from strainstream.callbacks.sinks import TiledSink

    n_drawn = "return (window.__col('xrd_points', 'x') || []).length;"
    t_start = time.monotonic()

    def phase(what: str) -> None:
        print(f"{time.monotonic() - t_start:6.1f} s  {what}")

    tiled_server.stop(timeout_s=1.0)
    wait_for(browser, "return window.__m('status').text.startsWith('tiled unreachable');", 20,
             "'tiled unreachable' in the status line")
    phase("tiled stopped; the page says tiled is unreachable")
    _shot(browser, tmp_path, "tiled_down")
    assert len(column(browser, "xrd_points", "x")) == 70  # the points stay
    tiled_server.start()
    phase("tiled started again")
    sink = TiledSink(tiled_server.client(), uid, "operando_xrd")
    assert len(sink.begin({"version": "1", "raw_uid": uid, "analysis": "operando_xrd"}, columns)) == 70
    wait_for(browser, "return window.__m('status').text.startsWith('following');", 30, "following again")
    phase("the page follows again")

    js(browser, "window.__drawn = {}; window.__arrived = {};")  # the signals fill them again
    landed = {}
    for k, r in enumerate(rows[70:], start=71):
        sink.append([r])
        landed[k] = time.time()
        time.sleep(0.25 + 0.1 * (k % 3))
    wait_for(browser, n_drawn.replace(";", f" >= {len(rows)};"), 10, f"all {len(rows)} points")
    sink.finish({})
    latency = _after_landing(js(browser, "return window.__drawn;"), landed)
    served = dict(zip(column(browser, "xrd_points", "seq_num"), column(browser, "xrd_points", "served_at"),
                      strict=True))
    to_page = np.array([served[k] - t0 for k, t0 in landed.items()])
    print(f"after the restart: n={latency.size}, p50 {1000 * np.median(latency):.0f} ms, max "
          f"{1000 * latency.max():.0f} ms; last 8: max {1000 * latency[-8:].max():.0f} ms, sent by the page "
          f"(median) {1000 * np.median(to_page[-8:]):.0f} ms after landing")
    # within a few rows tiled pushes the rows again: sent at once (the 1 s safety-net read alone
    # would give a median near 0.5 s) and drawn within 1 s
    assert np.median(to_page[-8:]) < 0.2, to_page
    assert latency[-8:].max() < 1.0, latency
    stored = [r["c_A"] for r in rows]
    assert column(browser, "xrd_points", "c") == pytest.approx(stored, rel=1e-12)
    assert column(browser, "xrd_points", "seq_num") == list(range(1, len(rows) + 1))
    phase(f"{len(rows)} points drawn")

    browser.refresh()  # a new Bokeh session: the same state, read back from tiled
    wait_for(browser, "const t = window.__m('tabs'); if (!t) return false; t.active = 1; return true;", 30,
             "the page after the reload")
    wait_for(browser, n_drawn.replace(";", f" >= {len(rows)};"), 30, f"{len(rows)} points after the reload")
    phase("the same points after a reload")
    assert column(browser, "xrd_points", "c") == pytest.approx(stored, rel=1e-12)
    time.sleep(1.0)
    _shot(browser, tmp_path, "after_reload")


# -- SXDM and TXM: raw frames through the RunEngine, results tables written with the sink ----------

NY, NX, STEP_NM = 24, 28, 50.0
THETA = np.round(np.linspace(-0.6, 0.6, 7) + 8.6, 4)  # deg
PIXELS = ((12, 14), (6, 9))  # (iy, ix) raster points whose frames are recorded
ENERGIES = np.arange(8340.0, 8361.0, 2.0)  # eV
WL_EV = 8350.4


def _particle():
    yy, xx = np.mgrid[0:NY, 0:NX]
    r = np.hypot((yy - NY / 2) / (NY * 0.38), (xx - NX / 2) / (NX * 0.38))
    return yy, xx, r < 1.0


def _sxdm_maps() -> dict[str, np.ndarray]:
    yy, xx, mask = _particle()
    strain = 2e-3 * np.sin(xx / 3.0) * np.cos(yy / 4.0)
    out = {"intensity": np.where(mask, 1000.0 * (1.5 - np.hypot(yy - NY / 2, xx - NX / 2) / NX), 5.0),
           "mask": mask, "strain": np.where(mask, strain, np.nan),
           "tilt_xy_deg": np.where(mask, -25.0 * strain + 0.002 * np.cos(xx), np.nan),
           "tilt_xz_deg": np.where(mask, 0.03 * (yy - NY / 2) / NY, np.nan)}
    return out


def _rocking(p: int, k: int) -> float:
    """Frame value of raster point p at rocking angle k (a Gaussian rocking curve)."""
    return 10.0 + 500.0 * (1 + p) * math.exp(-0.5 * ((THETA[k] - 8.6 - 0.1 * p) / 0.25) ** 2)


def _mu(e: float, inside: bool) -> float:
    """Absorbance of a voxel: edge step at 8345 eV and a white line at WL_EV."""
    if not inside:
        return 0.05
    return 0.2 + 1.0 / (1 + math.exp(-(e - 8345.0) / 1.5)) + 0.6 * math.exp(-0.5 * ((e - WL_EV) / 2.0) ** 2)


def _txm_frames():
    """(role, energy) per frame and the frames: one dark, then sample and flat per energy."""
    _, _, mask = _particle()
    plan = [("dark", ENERGIES[0])] + [(role, e) for e in ENERGIES for role in ("sample", "flat")]
    flat = np.full((NY, NX), 1000.0)
    frames = []
    for role, e in plan:
        if role == "dark":
            frames.append(np.zeros((NY, NX)))
        elif role == "flat":
            frames.append(flat)
        else:
            mu = np.where(mask, _mu(e, True), _mu(e, False))
            frames.append(flat * np.exp(-mu))
    return plan, [f.astype(np.float32) for f in frames]


def test_sxdm_pixel_and_txm_voxel_clicks_give_their_curves(tiled_server, read_only_key, dashboard_factory,
                                                           browser, tmp_path):
    from strainstream.callbacks.sinks import TiledSink
    from strainstream.datadir import detector_dir
    from strainstream.devices.detectors import sim_frame_detector
    from strainstream.plans.frames import frame_series
    from strainstream.session import make_session

    session = make_session(tiled_server.uri, tiled_server.api_key, progress=False,
                           spool_dir=tiled_server.data_dir / "spool")
    root = tiled_server.client()
    # SXDM: frames of two raster points at 7 rocking angles (frame i: point i // 7, angle i % 7)
    n = len(PIXELS) * THETA.size
    det = sim_frame_detector("sxdm_det", detector_dir(tiled_server.data_dir) / "sxdm",
                             frame_source=lambda i: np.full((8, 8), _rocking(i // THETA.size, i % THETA.size),
                                                            np.float32), frame_shape=(8, 8))
    (sx_uid,) = session.RE(frame_series([det], num=n, md={"material": "SC-NM91", "sample": "particle 3"}))
    sx_cols = {"seq_num": "int64", "time": "float64", "flag": "string", "message": "string",
               "theta_deg": "float64", "itheta": "int64", "iy": "int64", "ix": "int64",
               "total_counts": "float64", "max_counts": "float64", "fluorescence": "float64"}
    sink = TiledSink(root, sx_uid, "sxdm")
    sink.begin({"version": "1"}, sx_cols)
    sink.append([{"seq_num": i + 1, "time": 1.7e9 + i, "flag": "", "message": "",
                  "theta_deg": float(THETA[i % THETA.size]), "itheta": i % THETA.size,
                  "iy": PIXELS[i // THETA.size][0], "ix": PIXELS[i // THETA.size][1],
                  "total_counts": 64 * _rocking(i // THETA.size, i % THETA.size), "max_counts": None,
                  "fluorescence": None} for i in range(n)])
    sink.put_arrays(_sxdm_maps(), {"angles_done": THETA.size, "n_angles": THETA.size, "step_nm": STEP_NM,
                                   "final": True})
    sink.finish({"strain_std": float(np.nanstd(_sxdm_maps()["strain"]))})

    # TXM: one dark, sample and flat per energy
    plan, frames = _txm_frames()
    det = sim_frame_detector("txm_det", detector_dir(tiled_server.data_dir) / "txm",
                             frame_source=lambda i: frames[i], frame_shape=(NY, NX))
    (tx_uid,) = session.RE(frame_series([det], num=len(frames), md={"material": "PC-NC91"}))
    tx_cols = {"seq_num": "int64", "time": "float64", "flag": "string", "message": "string",
               "energy_eV": "float64", "role": "string", "energy_index": "int64", "repeat": "int64",
               "image_mean": "float64"}
    sink = TiledSink(root, tx_uid, "txm_xanes")
    sink.begin({"version": "1"}, tx_cols)
    sink.append([{"seq_num": i + 1, "time": 1.7e9 + i, "flag": "", "message": "", "energy_eV": float(e),
                  "role": role, "energy_index": int(np.searchsorted(ENERGIES, e)), "repeat": 0,
                  "image_mean": float(frames[i].mean())} for i, (role, e) in enumerate(plan)])
    yy, xx, mask = _particle()
    wl = np.where(mask, WL_EV + 0.4 * np.sin(xx / 4.0) * np.cos(yy / 5.0), np.nan)
    sink.put_arrays({"whiteline_eV": wl, "mask": mask, "edge_jump": np.where(mask, 1.0, 0.0)},
                    {"stage": "final", "pixel_size_um": 0.04})
    sink.finish({"whiteline_mean_eV": float(np.nanmean(wl)), "whiteline_std_eV": float(np.nanstd(wl))})

    dash = dashboard_factory(read_only_key)
    browser.get(dash.url)
    wait_for(browser, "return (window.__m('status') || {}).text && window.__m('status').text.startsWith('following');",
             30, "logged in")

    # SXDM: maps drawn; a click on raster point PIXELS[1] gives its rocking curve
    set_active_tab(browser, 2)
    wait_for(browser, "return (window.__col('sxdm_strain_image', 'image') || []).length == 1;", 20, "the maps")
    step_um = STEP_NM / 1000
    iy, ix = PIXELS[1]
    click_data_point(browser, "sxdm_strain", (ix + 0.5) * step_um, (NY - 1 - iy + 0.5) * step_um)
    counts = wait_for(browser, "const c = window.__col('sxdm_rocking_curve', 'counts'); return c && c.length ? c : null;",
                      20, "the rocking curve")
    assert counts == pytest.approx([64 * _rocking(1, k) for k in range(THETA.size)], rel=1e-6)
    assert column(browser, "sxdm_rocking_curve", "theta_deg") == pytest.approx(THETA.tolist())
    time.sleep(0.5)
    _shot(browser, tmp_path, "sxdm")

    # TXM: a click on a voxel inside the particle gives its normalised spectrum and white line
    set_active_tab(browser, 3)
    wait_for(browser, "return (window.__col('txm_whiteline_image', 'image') || []).length == 1;", 20, "the WL map")
    iy, ix = NY // 2, NX // 2
    click_data_point(browser, "txm_whiteline", (ix + 0.5) * 0.04, (NY - 1 - iy + 0.5) * 0.04)
    mu = wait_for(browser, "const c = window.__col('txm_spectrum', 'mu'); return c && c.length ? c : null;",
                  20, "the voxel's spectrum")
    e = column(browser, "txm_spectrum", "energy_eV")
    assert e == pytest.approx(ENERGIES.tolist())
    assert len(mu) == ENERGIES.size
    assert e[int(np.argmax(mu))] == pytest.approx(8350.0)  # the white line, on the 2-eV grid
    assert mu[0] == pytest.approx(0.0, abs=0.05) and max(mu) > mu[-1] > 0  # edge-normalised, a white line
    wait_for(browser, "return window.__m('txm_info').text.includes('white line');", 10, "the WL statistics")
    time.sleep(0.5)
    _shot(browser, tmp_path, "txm")

