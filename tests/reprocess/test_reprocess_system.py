"""``strainstream reprocess`` against a real tiled server with a real Dask LocalCluster.

An archive of frame_series runs: two analysed live by a worker, three never analysed, one
whose detector file has gone, one of another sample. The batch reprocesses them on two Dask
worker processes; results must equal the replay (and the live results) bit for bit, reruns
must change nothing, an old-version result is replaced, a broken run fails alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from strainstream.callbacks.sinks import DERIVED, read_results
from strainstream.datadir import detector_dir
from strainstream.demo import wait_for_results
from strainstream.devices.detectors import sim_frame_detector
from strainstream.framestats import frame_statistics
from strainstream.plans.frames import frame_series
from strainstream.replay import replay_run
from strainstream.session import make_session

pytestmark = [pytest.mark.system, pytest.mark.slow]

CLI = [sys.executable, "-m", "strainstream.cli"]
N_EVENTS = 4


def _cli(server, *args, timeout=240):
    env = {k: v for k, v in os.environ.items() if k not in ("STRAINSTREAM_API_KEY", "STRAINSTREAM_URI")}
    env["STRAINSTREAM_API_KEY"] = server.api_key  # the documented way: not on the command line
    return subprocess.run([*CLI, *args, "--uri", server.uri], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _reprocess(server, *args):
    r = _cli(server, "reprocess", *args, "--json")
    assert server.api_key not in r.stdout + r.stderr  # the key is never printed or logged
    assert "Traceback" not in r.stderr, r.stderr
    assert "distributed." not in r.stderr, r.stderr  # no Dask INFO chatter (nor its shutdown traces)
    return r, {(o["uid"], o["analysis"]): o for o in json.loads(r.stdout or "[]")}


def _detector_file(root, uid) -> Path:
    (source,) = root[uid]["primary"]["det_image"].data_sources()
    return Path(source.assets[0].data_uri.removeprefix("file://localhost"))


def _truth(root, uid):
    with h5py.File(_detector_file(root, uid), "r", swmr=True) as f:
        return [frame_statistics(fr)["mean"] for fr in f["/entry/data/data"][()]]


def _table(root, uid, name="frame_stats"):
    """The raw stored rows (duplicates included) and the table's metadata."""
    node = root[DERIVED][uid][name]
    return node.read().to_dict(orient="list"), dict(node.metadata)


@pytest.fixture
def archive(tiled_server):
    """uids of the archive of six finished runs, none analysed yet (E: another sample)."""
    session = make_session(tiled_server.uri, tiled_server.api_key, progress=False)
    uids = {}

    def record(label, material, seed):
        det = sim_frame_detector("det", detector_dir(tiled_server.data_dir), frame_shape=(40, 48), seed=seed)
        (uids[label],) = session.RE(frame_series([det], num=N_EVENTS, md={"sample": {"material": material},
                                                                        "label": label}))

    record("A", "SC-NM91", 1)
    record("B", "SC-NM91", 2)
    record("C", "SC-NM91", 3)
    record("D", "SC-NM91", 4)
    record("E", "PC-NM91", 5)
    record("F", "SC-NM91", 6)
    return uids


@pytest.mark.timeout(1200)  # a loaded 2-core CI machine: five CLI passes, two Dask clusters
def test_reprocess_archive_on_dask(tiled_server, archive):
    root = tiled_server.client()
    A, B, C, D, E, F = (archive[k] for k in "ABCDEF")
    replayed = {u: replay_run(root[u]) for u in (A, B, C, D)}
    # A and B analysed first, one after the other in the CLI's process (no Dask)
    r, out = _reprocess(tiled_server, "--uid", A, B, "--workers", "0")
    assert r.returncode == 0 and [o["detail"] for o in out.values()] == ["new", "new"], r.stderr
    assert read_results(root, A) == replayed[A] and read_results(root, B) == replayed[B]
    assert DERIVED in root and C not in root[DERIVED]

    # A's results claim to be from an older analysis version; F's detector file is gone
    root[DERIVED][A]["frame_stats"].update_metadata({"version": "0"})
    b_before = _table(root, B)
    det_f = _detector_file(root, F)
    det_f.rename(det_f.with_suffix(".gone"))

    r, out = _reprocess(tiled_server, "sample.material=SC-NM91", "--workers", "2")
    assert r.returncode == 1, r.stderr  # one run failed
    assert set(out) == {(u, "frame_stats") for u in (A, B, C, D, F)}  # not E (other sample)
    assert out[(A, "frame_stats")]["status"] == "done" and out[(A, "frame_stats")]["detail"] == "replaced v0"
    assert out[(B, "frame_stats")]["status"] == "skipped" and out[(B, "frame_stats")]["detail"] == "up to date"
    for u in (C, D):
        assert out[(u, "frame_stats")]["status"] == "done" and out[(u, "frame_stats")]["n_rows"] == N_EVENTS
    assert out[(F, "frame_stats")]["status"] == "failed"
    assert "500" in out[(F, "frame_stats")]["detail"] and "\n" not in out[(F, "frame_stats")]["detail"]
    assert "reprocess: 5/5 runs" in r.stderr  # progress, runs done / total
    assert "5 run(s) match sample.material=SC-NM91" in r.stderr and "1 failed" in r.stderr

    # bit for bit: the stored results equal the replay (and the live pass), through the CLI too
    for u in (A, B, C, D):
        assert read_results(root, u) == replayed[u], u
        assert read_results(root, u)["analyses"]["frame_stats"]["columns"]["mean"] == _truth(root, u)
    res = _cli(tiled_server, "results", C, "--json")
    rep = _cli(tiled_server, "replay", C, "--json")
    assert res.returncode == 0 and res.stdout == rep.stdout
    rows_a, md_a = _table(root, A)
    assert md_a["version"] == "1" and md_a["status"] == "complete"
    assert md_a["replaced"]["version"] == "0" and md_a["replaced"]["status"] == "complete"
    assert sorted(rows_a["seq_num"]) == list(range(1, N_EVENTS + 1))
    assert _table(root, B) == b_before  # skipped: not a byte rewritten, not even metadata
    f_md = _table(root, F)[1]
    assert f_md["status"] == "failed" and "500" in f_md["error"]
    assert DERIVED not in root or E not in root[DERIVED]

    # the detector file is back: the rerun resumes F and skips everything else, changing nothing
    det_f.with_suffix(".gone").rename(det_f)
    tables = {u: _table(root, u) for u in (A, B, C, D)}
    r, out = _reprocess(tiled_server, "sample.material=SC-NM91", "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert out[(F, "frame_stats")]["status"] == "done" and out[(F, "frame_stats")]["detail"] == "resumed (failed v1)"
    assert read_results(root, F) == replay_run(root[F])
    for u in (A, B, C, D):
        assert out[(u, "frame_stats")]["status"] == "skipped", out[(u, "frame_stats")]
        assert _table(root, u) == tables[u]  # same rows (count and values), same metadata

    # a third pass: everything is up to date (no task, no cluster); the human table
    r = _cli(tiled_server, "reprocess", "sample.material=SC-NM91", "--workers", "2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].split()[:5] == ["UID", "ANALYSIS", "VERSION", "ROWS", "STATUS"]
    assert len(lines) == 6 and all("skipped: up to date" in line for line in lines[1:])
    assert {line.split()[0] for line in lines[1:]} == {A, B, C, D, F}

    # --force rewrites (new table, same numbers)
    created = _table(root, D)[1]["created"]
    r, out = _reprocess(tiled_server, "--uid", D[:8], "--force", "--workers", "0")
    assert r.returncode == 0, r.stderr
    assert out[(D, "frame_stats")]["detail"] == "replaced v1 (--force)"
    rows_d, md_d = _table(root, D)
    assert md_d["created"] > created and len(rows_d["seq_num"]) == N_EVENTS
    assert read_results(root, D) == replayed[D]


@pytest.mark.profiles  # the queries are the catalog backend's (SQLite, PostgreSQL)
@pytest.mark.timeout(900)
def test_queries_against_the_catalog(tiled_server, archive):
    A, E = archive["A"], archive["E"]
    # nothing matches: a clear message, exit 0, nothing written
    for q in (["sample.material=NOPE"], ["no.such.key=1"], ["--since", "2999-01-01"]):
        r, out = _reprocess(tiled_server, *q)
        assert r.returncode == 0 and out == {}, r.stderr
        assert "strainstream reprocess: no runs match" in r.stderr
    # dry runs list the matches, oldest first, without reprocessing
    r = _cli(tiled_server, "reprocess", "--all", "--dry-run")
    assert r.returncode == 0 and r.stdout.split() == [archive[k] for k in "ABCDEF"]
    r = _cli(tiled_server, "reprocess", "sample.material!=SC-NM91", "--dry-run")
    assert r.stdout.split() == [E]
    r = _cli(tiled_server, "reprocess", "label>=C", "sample.material=SC-NM91", "--limit", "2", "--dry-run")
    assert r.stdout.split() == [archive["C"], archive["D"]]
    r = _cli(tiled_server, "reprocess", "--until", "2000-01-01", "--uid", A, "--dry-run")
    assert r.stdout == "" and "no runs match" in r.stderr
    r = _cli(tiled_server, "reprocess", "--uid", A[:6], "deadbeef-0", "--dry-run")
    assert r.stdout.split() == [A] and "--uid deadbeef-0 matches no run" in r.stderr
    # a malformed term is a one-line error
    r = _cli(tiled_server, "reprocess", "sample.material~SC")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "malformed query term" in r.stderr
    # the sequential path (no Dask) gives the same results as the replay
    r, out = _reprocess(tiled_server, "--uid", E, "--workers", "0")
    assert r.returncode == 0 and out[(E, "frame_stats")]["status"] == "done"
    root = tiled_server.client()
    assert read_results(root, E) == replay_run(root[E])


@pytest.mark.timeout(900)
def test_live_results_are_kept_or_replaced_by_the_same_numbers(tiled_server, worker_factory):
    """A run analysed by the live worker: reprocess skips it; from an 'older version' it is
    recomputed on Dask into exactly the live results (``strainstream results --json``)."""
    worker_factory()
    session = make_session(tiled_server.uri, tiled_server.api_key, progress=False)
    det = sim_frame_detector("det", detector_dir(tiled_server.data_dir), frame_shape=(40, 48), seed=7)
    (uid,) = session.RE(frame_series([det], num=6, md={"sample": {"material": "SC-NC91"}}))
    root = tiled_server.client()
    wait_for_results(root, uid, 6, timeout_s=180)
    live = _cli(tiled_server, "results", uid, "--json")
    assert live.returncode == 0, live.stderr
    rows_live, md_live = _table(root, uid)

    r, out = _reprocess(tiled_server, "sample.material=SC-NC91", "--workers", "2")
    assert r.returncode == 0 and out[(uid, "frame_stats")]["detail"] == "up to date", r.stderr
    assert _table(root, uid) == (rows_live, md_live)

    root[DERIVED][uid]["frame_stats"].update_metadata({"version": "0"})
    r, out = _reprocess(tiled_server, "sample.material=SC-NC91", "--workers", "2")
    assert r.returncode == 0 and out[(uid, "frame_stats")]["detail"] == "replaced v0", r.stderr
    rows_new, md_new = _table(root, uid)
    assert md_new["version"] == "1" and md_new["created"] > md_live["created"]
    assert rows_new == rows_live  # same rows, same bits
    again = _cli(tiled_server, "results", uid, "--json")
    assert again.returncode == 0 and again.stdout == live.stdout
