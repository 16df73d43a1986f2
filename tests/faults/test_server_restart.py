"""tiled server restarted mid-run: the writer and the worker reconnect and nothing is lost.

Real processes: the tiled server (restarted on the same port and data directory, catalog
kept), a ``strainstream worker`` subprocess, and a RunEngine in this process whose writer
buffers documents while the server is away. Runs in both deployment profiles: ``embedded``
(memory streaming cache: sequence numbers restart and history is gone after a restart) and
``scaleout`` (Redis streaming cache: history survives).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import h5py
import pytest
from _faultplans import frames_until

from strainstream.callbacks.sinks import DERIVED
from strainstream.datadir import detector_dir
from strainstream.demo import wait_for_results
from strainstream.devices.detectors import sim_frame_detector
from strainstream.framestats import frame_statistics
from strainstream.plans.frames import frame_series
from strainstream.replay import replay_run
from strainstream.spool import flush_spool
from strainstream.workerproc import WorkerProcess


def restart(server, *, abrupt: bool, down_s: float = 1.0) -> float:
    """Stop the server (SIGINT, or SIGKILL when ``abrupt``), keep it down ``down_s``, start it
    again on the same port and data directory; return the outage in seconds."""
    t0 = time.monotonic()
    if abrupt:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
    server.stop()
    t1 = time.monotonic()
    time.sleep(down_s)
    server.start(timeout_s=120)
    print(f"restart ({'SIGKILL' if abrupt else 'SIGINT'}): stop {t1 - t0:.1f} s, "
          f"start {time.monotonic() - t1 - down_s:.1f} s")
    return time.monotonic() - t0


def truth_rows(root, uid):
    node = root[uid]["primary"]["det_image"]
    (source,) = node.data_sources()
    path = source.assets[0].data_uri.removeprefix("file://localhost")
    with h5py.File(path, "r", swmr=True, locking=False) as f:
        frames = f["/entry/data/data"][()]
    return [frame_statistics(fr) for fr in frames]


def check_run_complete(root, uid, n, results):
    """Every event once in tiled (by seq_num), every result row once with truth values."""
    run = root[uid]
    assert "stop" in run.metadata, "the run lost its stop document"
    assert run.metadata["stop"]["num_events"]["primary"] == n
    table = run.base["primary"].base["internal"].read()
    seqs = table["seq_num"].tolist()
    assert sorted(set(seqs)) == list(range(1, n + 1)), "events missing in tiled"
    # a row stored twice (an append retried after its answer was lost) is the same event
    dup = table[table["seq_num"].duplicated(keep=False)]
    for _, rows in dup.groupby("seq_num"):
        assert (rows.drop_duplicates().shape[0]) == 1, f"different rows share a seq_num: {rows}"
    raw = root[DERIVED][uid]["frame_stats"].read()
    assert sorted(set(raw["seq_num"].tolist())) == list(range(1, n + 1)), "result rows missing"
    # a result row stored twice (its commit's answer lost in the restart, re-sent) is the same
    # analysis of the same event; readers keep one per seq_num
    doubled = raw[raw["seq_num"].duplicated(keep=False)]
    assert all(g.drop_duplicates().shape[0] == 1 for _, g in doubled.groupby("seq_num")), doubled
    entry = results["analyses"]["frame_stats"]
    assert entry["status"] == "complete" and entry["n_rows"] == n
    assert entry["columns"]["seq_num"] == list(range(1, n + 1))
    truth = truth_rows(root, uid)
    assert entry["columns"]["mean"] == [t["mean"] for t in truth]
    assert entry["columns"]["centroid_row"] == [t["centroid_row"] for t in truth]
    assert replay_run(root[uid]) == results
    return len(seqs) - n, len(raw) - n


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.profiles
@pytest.mark.timeout(1500)
def test_server_restarted_twice_mid_run_nothing_lost(tiled_server, tmp_path, new_session):
    server = tiled_server
    said: list[str] = []
    emitted = []
    outages: list[float] = []
    done = threading.Event()
    worker = WorkerProcess(server.uri, server.api_key, server.data_dir).start(timeout_s=120)
    try:
        session = new_session(server.uri, server.api_key, progress=False, spool_dir=tmp_path / "spool",
                               drain_timeout_s=240)
        session.writer.say = said.append
        session.RE.subscribe(lambda name, doc: emitted.append(doc["seq_num"]) if name == "event" else None)
        det = sim_frame_detector("det", detector_dir(server.data_dir), frame_shape=(64, 64))
        failures = []

        def caught_up(at):  # the writer has sent ``at`` events (so the fault is mid-stream)
            while len(emitted) < at or session.writer.pending > 2:
                time.sleep(0.02)

        def restarter():
            try:
                caught_up(10)
                outages.append(restart(server, abrupt=False))
                caught_up(len(emitted) + 10)
                outages.append(restart(server, abrupt=True))
            except Exception as exc:  # reported by the test thread
                failures.append(exc)
            finally:
                done.set()

        t = threading.Thread(target=restarter)
        t.start()
        try:
            (uid,) = session.RE(frames_until(det, done, extra=8, delay_s=0.4))
        finally:
            done.set()
            t.join()
        assert not failures, failures
        assert len(outages) == 2
        n = len(emitted)
        assert emitted == list(range(1, n + 1))
        # the writer said it was cut off and that it recovered; it has nothing left
        assert any(m.startswith("tiled unreachable") for m in said), said
        assert any(m.startswith("tiled reachable again") for m in said), said
        assert session.writer.pending == 0 and session.writer.failed == []
        assert not list((tmp_path / "spool").glob("*.jsonl")), "spool not cleared after the run"
        root = server.client()
        results = wait_for_results(root, uid, n, timeout_s=280)
        duplicates, result_duplicates = check_run_complete(root, uid, n, results)
    finally:
        worker.kill()
    log = (server.data_dir / "logs" / "worker.log").read_text()
    reattach = [float(x) for x in re.findall(r"re-attached \d+ runs ([\d.]+) s after it answered", log)]
    assert reattach, "the worker never re-attached"
    print(f"\n[{server.profile}] {n} events, outages {[round(o, 1) for o in outages]} s; worker re-attached "
          f"{reattach} s after the server answered again; duplicate rows stored: events {duplicates}, "
          f"results {result_duplicates}; event rows re-appended by the writer's audit: "
          f"{session.writer.repaired.get(uid, 0)}")


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.profiles
@pytest.mark.timeout(900)
def test_documents_spooled_while_server_down_are_flushed_later(tiled_server, tmp_path, new_session):
    """Server down for a whole run: the writer gives up (bounded), the spool keeps every
    document, and flush_spool writes the run once the server is back; the worker analyses it."""
    server = tiled_server
    n = 6
    spool = tmp_path / "spool"
    session = new_session(server.uri, server.api_key, progress=False, spool_dir=spool,
                           drain_timeout_s=5, max_outage_s=2)
    said: list[str] = []
    session.writer.say = said.append
    det = sim_frame_detector("det", detector_dir(server.data_dir), frame_shape=(32, 32))
    server.stop()
    (uid,) = session.RE(frame_series([det], num=n, delay_s=0.05))
    assert session.writer.wait_drained(120)  # every document attempted (and refused)
    assert session.writer.failed, "documents refused while the server was down must be reported"
    # past max_outage_s each document is tried once (not max_outage_s each); one line per run
    refused = [m for m in said if m.startswith("tiled refused")]
    assert len(refused) == 1 and "unreachable" in refused[0], said
    (summary,) = [m for m in said if "documents are not in tiled" in m]
    assert f"{uid}.jsonl" in summary and "strainstream spool --flush" in summary, summary
    assert (spool / f"{uid}.jsonl").exists()
    server.start(timeout_s=120)
    root = server.client()
    assert uid not in root
    spooled = len((spool / f"{uid}.jsonl").read_text().splitlines())
    assert spooled >= 2 * n + 3  # start, descriptor, resource, n events and datums, stop
    report = flush_spool(spool, root, say=said.append)
    assert report == {uid: spooled}
    assert not (spool / f"{uid}.jsonl").exists() and not (spool / f"{uid}.sent").exists()
    with WorkerProcess(server.uri, server.api_key, server.data_dir).start(timeout_s=120) as worker:
        results = wait_for_results(root, uid, n, timeout_s=120)
        worker.kill()
    check_run_complete(root, uid, n, results)


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.profiles
@pytest.mark.timeout(600)
def test_run_cut_off_mid_way_is_completed_from_the_spool(tiled_server, tmp_path):
    """The RunEngine's process dies mid-run with documents still buffered: tiled holds the
    first events, the spool the rest (events, StreamDatums, stop). flush_spool (from a new
    client) completes the run: every frame registered and readable over HTTP, the worker's
    results and a replay through tiled equal the truth."""
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter

    from strainstream.session import BufferedWriter

    server = tiled_server
    n, cut = 10, 4
    spool = tmp_path / "spool"
    said: list[str] = []
    tiled_writer = TiledWriter(server.client(), batch_size=1)
    dead = threading.Event()

    def dying_writer(name, doc):  # after event ``cut`` nothing more reaches tiled
        if dead.is_set():
            raise RuntimeError("the RunEngine process died")
        tiled_writer(name, doc)
        if name == "event" and doc["seq_num"] == cut:
            dead.set()

    # one request per document: the writer dies exactly after event ``cut``
    writer = BufferedWriter(dying_writer, spool_dir=spool, drain_timeout_s=1, say=said.append, max_coalesce=1)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(writer)
    det = sim_frame_detector("det", detector_dir(server.data_dir), frame_shape=(32, 40))
    (uid,) = RE(frame_series([det], num=n, delay_s=0.05))
    assert writer.wait_drained(60) and writer.close(10)
    assert len(writer.failed) == 2 * (n - cut) + 1
    root = server.client()
    run = root[uid]
    assert "stop" not in run.metadata and len(run.base["primary"].base["internal"].read()) == cut
    assert run["primary"]["det_image"].shape[0] == cut
    # the scientist's way: list what waits, then flush (a new process, a new client).
    # start, descriptor, StreamResource, n StreamDatums, n events, stop
    cli = [sys.executable, "-m", "strainstream.cli", "spool", "--data-dir", str(server.data_dir),
           "--spool-dir", str(spool)]
    listed = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert f"{uid}: {2 * n + 4} documents spooled, {2 * cut + 3} sent (partly in tiled)" in listed.stdout
    flushed = subprocess.run([*cli, "--flush"], capture_output=True, text=True, timeout=300)
    assert flushed.returncode == 0, flushed.stderr
    # events + StreamDatums + stop after the cut
    assert f"spool: run {uid}: {2 * (n - cut) + 1} documents sent" in flushed.stdout, flushed.stdout
    assert flushed.stdout.rstrip().endswith("spool empty")
    assert not (spool / f"{uid}.jsonl").exists()
    run = root[uid]
    image = run["primary"]["det_image"]
    assert image.shape == (n, 32, 40)
    (source,) = image.data_sources()
    with h5py.File(source.assets[0].data_uri.removeprefix("file://localhost"), "r", locking=False) as f:
        on_disk = f["/entry/data/data"][()]
    assert (image.read() == on_disk).all()  # over HTTP: the frames after the cut too
    with WorkerProcess(server.uri, server.api_key, server.data_dir).start(timeout_s=120) as worker:
        results = wait_for_results(root, uid, n, timeout_s=120)
        worker.kill()
    check_run_complete(root, uid, n, results)
    assert results["analyses"]["frame_stats"]["columns"]["flag"] == [""] * n
    assert replay_run(root[uid]) == results


# -- unit tests of the buffering pieces (no server) ----------------------------------------------
def test_transport_waits_out_refused_connections_and_503():
    import httpx

    from strainstream.transport import OutageTolerantTransport

    calls = []

    def handler(request):
        calls.append(request.method)
        if len(calls) <= 3:
            raise httpx.ConnectError("refused", request=request)
        if len(calls) == 4:
            return httpx.Response(503)
        return httpx.Response(200, json={"ok": True})

    events = []
    transport = OutageTolerantTransport(httpx.MockTransport(handler), max_outage_s=30, max_backoff_s=0.05,
                                        on_down=lambda: events.append("down"),
                                        on_up=lambda s: events.append("up"))
    with httpx.Client(transport=transport) as client:
        assert client.post("http://x/append", json={"row": 1}).json() == {"ok": True}
    assert calls == ["POST"] * 5 and events == ["down", "up"] and len(transport.outages) == 1


def test_transport_gives_up_after_max_outage_and_passes_sent_errors_on():
    import httpx

    from strainstream.transport import OutageTolerantTransport, TiledUnreachable

    calls = []

    def refused(request):
        calls.append(time.monotonic())
        raise httpx.ConnectError("refused", request=request)

    transport = OutageTolerantTransport(httpx.MockTransport(refused), max_outage_s=0.3, max_backoff_s=0.05)
    with httpx.Client(transport=transport) as client:
        t0 = time.monotonic()
        with pytest.raises(TiledUnreachable, match=r"unreachable for 0\.\d s .*GET http://x/ not sent \(refused\)"):
            client.get("http://x/")
        assert 0.3 <= time.monotonic() - t0 < 5 and len(calls) > 2
        # the same outage goes on: the next request is tried once and fails at once
        calls.clear()
        with pytest.raises(TiledUnreachable):
            client.get("http://x/")
        assert len(calls) == 1
        assert not isinstance(TiledUnreachable("x"), httpx.HTTPError)  # tiled's client must not retry it
    n = []

    def lost_answer(request):  # sent: the server may have processed it; not retried here
        n.append(1)
        raise httpx.ReadError("reset", request=request)

    transport = OutageTolerantTransport(httpx.MockTransport(lost_answer), max_outage_s=30)
    with httpx.Client(transport=transport) as client, pytest.raises(httpx.ReadError):
        client.post("http://x/append")
    assert len(n) == 1


def test_buffered_writer_keeps_order_spools_and_reports_refusals(tmp_path):
    import json

    from strainstream.session import BufferedWriter

    gate = threading.Event()
    written = []

    def slow_writer(name, doc):
        gate.wait(10)
        if doc.get("bad"):
            raise ValueError("refused")
        written.append((name, doc.get("seq_num")))

    said = []
    # one request per document (pages: tests/glue/test_writer_coalesce.py)
    w = BufferedWriter(slow_writer, spool_dir=tmp_path, drain_timeout_s=0.2, max_lag=100, say=said.append,
                       max_coalesce=1)
    w("start", {"uid": "r1", "time": 0})
    w("descriptor", {"uid": "d1", "run_start": "r1", "name": "primary"})
    for i in range(1, 6):
        w("event", {"uid": f"e{i}", "descriptor": "d1", "seq_num": i, "bad": i == 3})
    assert w.pending == 7  # the RunEngine side never waited for the writer
    w("stop", {"uid": "s1", "run_start": "r1"})  # waits 0.2 s, then says it could not drain
    assert any("still buffered" in m and "r1.jsonl" in m for m in said), said
    lines = [json.loads(x) for x in (tmp_path / "r1.jsonl").read_text().splitlines()]
    assert [x["name"] for x in lines] == ["start", "descriptor"] + ["event"] * 5 + ["stop"]
    gate.set()
    assert w.wait_drained(10)
    assert written == [("start", None), ("descriptor", None), ("event", 1), ("event", 2), ("event", 4),
                       ("event", 5), ("stop", None)]
    assert [(f[0], f[1], f[2]) for f in w.failed] == [("r1", "event", 4)]
    # a run with a refused document keeps its spool (and what was sent) for flush_spool
    sent = {int(x) for x in (tmp_path / "r1.sent").read_text().split()}
    assert sent == {0, 1, 2, 3, 5, 6, 7}
    assert w.close(1) and not w._thread.is_alive()


def test_buffered_writer_back_pressure_while_the_server_is_reachable():
    from strainstream.session import BufferedWriter

    gate = threading.Event()
    w = BufferedWriter(lambda name, doc: gate.wait(10), max_lag=2, say=lambda m: None)
    for i in range(2):
        w("event", {"descriptor": "d", "seq_num": i})
    t = threading.Thread(target=w, args=("event", {"descriptor": "d", "seq_num": 3}))
    t.start()
    t.join(0.5)
    assert t.is_alive(), "the RunEngine side should wait while the writer lags by max_lag"
    gate.set()
    t.join(10)
    assert not t.is_alive() and w.close(10)


def test_spooled_runs_lists_documents_and_what_was_sent(tmp_path):
    from strainstream.spool import Spool, spooled_runs

    assert spooled_runs(tmp_path) == []
    spool = Spool(tmp_path)
    for name in ("start", "descriptor", "event", "event", "stop"):
        index = spool.add("run-b", name, {"uid": f"{name}-x", "seq_num": 1})
        if name in ("start", "descriptor"):
            spool.sent("run-b", index)
    spool.add("run-a", "start", {"uid": "a"})
    assert spooled_runs(tmp_path) == [{"uid": "run-a", "documents": 1, "sent": 0},
                                      {"uid": "run-b", "documents": 5, "sent": 2}]
    spool.done("run-b")
    assert [r["uid"] for r in spooled_runs(tmp_path)] == ["run-a"]
