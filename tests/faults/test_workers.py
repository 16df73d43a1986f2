"""Workers under fire: 20 SIGKILLs during one run; several workers sharing the runs (shards).

Real processes: a tiled server, ``strainstream worker`` subprocesses, RunEngines in this
process writing simulated detector frames (HDF5) through tiled.
"""

from __future__ import annotations

import random
import re
import signal
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
from strainstream.worker import parse_shard, shard_of
from strainstream.workerproc import WorkerProcess

pytestmark = [pytest.mark.system]


def truth_means(root, uid):
    stream = root[uid]["primary"]
    (key,) = [k for k in stream if k.endswith("_image")]
    node = stream[key]
    (source,) = node.data_sources()
    path = source.assets[0].data_uri.removeprefix("file://localhost")
    with h5py.File(path, "r", swmr=True, locking=False) as f:
        frames = f["/entry/data/data"][()]
    return [frame_statistics(fr)["mean"] for fr in frames]


def committed(root, uid) -> int:
    try:
        return len(root[DERIVED][uid]["frame_stats"].read())
    except Exception:  # no results table (or no partition) yet
        return 0


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_worker_killed_20_times_during_one_run_every_event_analysed_once(tiled_server, tmp_path, new_session):
    """20 SIGKILLs of the worker during one run (embedded profile: each kill costs a worker
    start-up, ≈ 10 s; the scale-out profile's kills are covered by
    tests/system/test_data_path.py::test_worker_killed_repeatedly_analyses_every_event_exactly_once)."""
    server = tiled_server
    kills_wanted = 20
    rng = random.Random(20)
    done = threading.Event()
    uids: list[str] = []
    at_kill: list[int] = []
    failures: list[Exception] = []
    root = server.client()

    def killer():
        try:
            while len(at_kill) < kills_wanted:
                w = WorkerProcess(server.uri, server.api_key, server.data_dir).start(wait=False)
                try:
                    w.wait_ready(180)
                except RuntimeError:
                    w.kill()
                    continue
                # a random while: before the first event, mid-batch, mid-commit, after a commit
                time.sleep(rng.uniform(0.05, 2.0))
                w.process.send_signal(signal.SIGKILL)
                w.process.wait()
                at_kill.append(committed(root, uids[0]) if uids else 0)
        except Exception as exc:
            failures.append(exc)
        finally:
            done.set()

    session = new_session(server.uri, server.api_key, progress=False, spool_dir=tmp_path / "spool")
    session.RE.subscribe(lambda name, doc: uids.append(doc["uid"]) if name == "start" else None)
    det = sim_frame_detector("det", detector_dir(server.data_dir), frame_shape=(128, 128))
    t = threading.Thread(target=killer)
    t.start()
    try:
        (uid,) = session.RE(frames_until(det, done, extra=5, delay_s=0.2))
    finally:
        done.set()
        t.join()
    assert not failures, failures
    assert len(at_kill) == kills_wanted
    n = root[uid].metadata["stop"]["num_events"]["primary"]
    mid_run = [k for k in at_kill if 0 < k < n]
    assert len(mid_run) >= kills_wanted // 2, f"committed rows at each kill: {at_kill}"
    with WorkerProcess(server.uri, server.api_key, server.data_dir).start(timeout_s=180) as final:
        results = wait_for_results(root, uid, n, timeout_s=240)
        final.kill()
    events = root[uid].base["primary"].base["internal"].read()
    assert sorted(set(events["seq_num"].tolist())) == list(range(1, n + 1)), "an event missing in tiled"
    raw = root[DERIVED][uid]["frame_stats"].read()
    seqs = raw["seq_num"].tolist()
    assert sorted(set(seqs)) == list(range(1, n + 1)), "an event never analysed"
    # a row stored twice (an append a worker sent just before its SIGKILL landed after its
    # successor read the table back: tiled has no conditional append) holds the same analysis
    # of the same event; readers keep one per seq_num
    doubled = raw[raw["seq_num"].duplicated(keep=False)]
    assert all(g.drop_duplicates().shape[0] == 1 for _, g in doubled.groupby("seq_num")), doubled
    entry = results["analyses"]["frame_stats"]
    assert entry["n_rows"] == n and entry["columns"]["seq_num"] == list(range(1, n + 1))
    assert entry["columns"]["mean"] == truth_means(root, uid)
    assert replay_run(root[uid]) == results
    repaired = session.writer.repaired.get(uid, 0)
    print(f"\n{kills_wanted} SIGKILLs during a run of {n} events; committed rows at each kill: {at_kill}; "
          f"result rows stored twice: {len(seqs) - n}; event rows re-appended by the writer: {repaired}; "
          f"event rows stored twice: {len(events) - n}")


def test_parse_shard():
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "x", "1/0", "-1/2"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    assert {shard_of(f"uid-{i}", 3) for i in range(30)} == {0, 1, 2}
    assert shard_of("abc", 4) == shard_of("abc", 4)


@pytest.mark.slow
@pytest.mark.profiles
@pytest.mark.timeout(1500)
def test_three_workers_share_runs_each_analysed_once(tiled_server, tmp_path, new_session):
    """3 sharded workers, runs from two RunEngines at once; shard 2's worker is dead while
    its runs are taken and finishes them when it is started again (catch-up)."""
    server = tiled_server
    root = server.client()
    logs = server.data_dir / "logs"
    workers = {i: WorkerProcess(server.uri, server.api_key, server.data_dir, shard=(i, 3)).start(timeout_s=180)
               for i in range(3)}
    try:
        workers[2].kill()  # a dead shard
        sessions = [new_session(server.uri, server.api_key, progress=False, spool_dir=tmp_path / f"spool{k}")
                    for k in range(2)]
        for s in sessions:
            s.RE.context_managers = []  # no SIGINT handler: one RunEngine runs in a thread
        dets = [sim_frame_detector(f"det{k}", detector_dir(server.data_dir), frame_shape=(32, 32), seed=k)
                for k in range(2)]
        uids: list[list[str]] = [[], []]
        errors: list[Exception] = []

        def take(k, num):
            try:
                uids[k].extend(sessions[k].RE(frame_series([dets[k]], num=num, delay_s=0.05)))
            except Exception as exc:
                errors.append(exc)

        # three rounds of two concurrent runs, more until every shard has a run (the uids are
        # random: 16 runs once missed shard 2, p = (2/3)^16 = 0.15 %; with up to 60 runs a miss
        # has p = 3e-11, and the loop stops as soon as every shard has one)
        for round_ in range(30):
            t = threading.Thread(target=take, args=(1, 4 + round_ % 3))
            t.start()
            take(0, 3 + round_ % 2)
            t.join()
            assert not errors, errors
            all_uids = uids[0] + uids[1]
            if round_ >= 2 and {shard_of(u, 3) for u in all_uids} == {0, 1, 2}:
                break
        all_uids = uids[0] + uids[1]
        assert len(all_uids) >= 6 and {shard_of(u, 3) for u in all_uids} == {0, 1, 2}
        live = [u for u in all_uids if shard_of(u, 3) != 2]
        dead = [u for u in all_uids if shard_of(u, 3) == 2]
        for uid in live:
            n = root[uid].metadata["stop"]["num_events"]["primary"]
            wait_for_results(root, uid, n, timeout_s=240)
        for uid in dead:  # nobody took them
            assert DERIVED not in root or uid not in root[DERIVED], "a run analysed outside its shard"
        workers[2] = WorkerProcess(server.uri, server.api_key, server.data_dir, shard=(2, 3)).start(timeout_s=180)
        for uid in all_uids:
            n = root[uid].metadata["stop"]["num_events"]["primary"]
            results = wait_for_results(root, uid, n, timeout_s=240)
            raw = root[DERIVED][uid]["frame_stats"].read()
            assert sorted(set(raw["seq_num"].tolist())) == list(range(1, n + 1))
            entry = results["analyses"]["frame_stats"]
            assert entry["columns"]["seq_num"] == list(range(1, n + 1))
            assert entry["columns"]["mean"] == truth_means(root, uid)
    finally:
        for w in workers.values():
            w.kill()
    followed = {i: set(re.findall(r"following run (\S+)", (logs / f"worker-{i}of3.log").read_text()))
                for i in range(3)}
    for uid in all_uids:
        owners = [i for i in range(3) if uid in followed[i]]
        assert owners == [shard_of(uid, 3)], f"run {uid} followed by workers {owners}"
    print(f"\n{len(all_uids)} runs over 3 shards: " + ", ".join(f"shard {i}: {len(followed[i])}" for i in range(3))
          + f"; {len(dead)} runs of the dead shard finished after its restart")
