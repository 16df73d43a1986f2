"""Event -> derived result visible in tiled: latency p50/p95 on the embedded default.

Starts a real tiled server (SQLite + memory streaming cache) and a worker process, runs
``frame_series`` with a simulated HDF5 detector at a target rate, and records when each
result row becomes visible to a tiled websocket subscriber of the results table. Latency is
measured from the event document's ``time`` (the moment bluesky composed the event).

    python benchmarks/bench_latency.py [--quick]

Cases (issue 3): 512x512 frames at 5 Hz and 2048x2048 frames at 1 Hz. The rate achieved is
reported as well: the RunEngine side is limited by one HTTP request per event and per
StreamDatum (see shared/STACK.md).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time

import numpy as np

from strainstream.callbacks.sinks import DERIVED
from strainstream.datadir import detector_dir
from strainstream.demo import wait_for_results
from strainstream.devices.detectors import sim_frame_detector
from strainstream.plans.frames import frame_series
from strainstream.server import TiledServer
from strainstream.session import make_session
from strainstream.worker import websockets_use_api_key
from strainstream.workerproc import WorkerProcess


class VisibleTimes:
    """Subscribe to derived/<uid>/frame_stats and note when each seq_num arrives."""

    def __init__(self, root):
        self.root = root
        self.times: dict[int, float] = {}
        self.subs = []
        self.lock = threading.Lock()

    def _table(self, update):
        now = time.time()
        df = update.data()
        with self.lock:
            for s in df["seq_num"].tolist():
                self.times.setdefault(int(s), now)

    def _run_child(self, update):
        node = update.child()
        sub = node.subscribe()
        sub.new_data.add_callback(self._table)
        self.subs.append(sub)
        sub.start_in_thread(0)

    def _derived_child(self, update):
        node = update.child()
        sub = node.subscribe()
        sub.child_created.add_callback(self._run_child)
        self.subs.append(sub)
        sub.start_in_thread(0)

    def start(self):
        if DERIVED not in self.root:
            self.root.create_container(DERIVED)
        sub = self.root[DERIVED].subscribe()
        sub.child_created.add_callback(self._derived_child)
        self.subs.append(sub)
        sub.start_in_thread()
        return self

    def close(self):
        for s in self.subs:
            s.disconnect(wait=False)


def run_case(shape, rate_hz, n, data_dir):
    rng = np.random.default_rng(0)
    frames = [rng.poisson(100, size=shape).astype(np.float32) for _ in range(4)]
    with TiledServer(data_dir) as server, WorkerProcess(server.uri, server.api_key, data_dir):
        root = server.client()
        websockets_use_api_key(root)
        visible = VisibleTimes(root).start()
        session = make_session(server.uri, server.api_key, progress=False, spool_dir=f"{data_dir}/spool")
        event_times: dict[int, float] = {}
        session.RE.subscribe(lambda name, doc: event_times.setdefault(doc["seq_num"], doc["time"])
                             if name == "event" else None)
        det = sim_frame_detector("det", detector_dir(data_dir), frame_source=lambda i: frames[i % 4],
                                 frame_shape=shape)
        t0 = time.time()
        (uid,) = session.RE(frame_series([det], num=n, delay_s=1.0 / rate_hz))
        elapsed = time.time() - t0
        wait_for_results(root, uid, n, timeout_s=120)
        time.sleep(0.5)
        visible.close()
    lat = np.array([visible.times[s] - event_times[s] for s in sorted(event_times) if s in visible.times]) * 1e3
    steady = lat[5:]  # after the run's first events (follower start-up: subscriptions, tables)
    return {
        "p95_steady_ms": float(np.percentile(steady, 95)) if steady.size else float("nan"),
        "first5_ms": " ".join(f"{v:.0f}" for v in lat[:5]),
        "frames": f"{shape[0]}x{shape[1]}",
        "target_hz": rate_hz,
        "achieved_hz": n / elapsed,
        "n": len(lat),
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "max_ms": float(lat.max()),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer events")
    args = parser.parse_args()
    n_small, n_big = (20, 8) if args.quick else (100, 30)
    rows = []
    with tempfile.TemporaryDirectory() as d1:
        rows.append(run_case((512, 512), 5.0, n_small, d1))
    with tempfile.TemporaryDirectory() as d2:
        rows.append(run_case((2048, 2048), 1.0, n_big, d2))
    print(f"{'frames':>10} {'target Hz':>9} {'achieved':>9} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'p95 after 5':>11} {'max ms':>8}  first 5 events (ms)")
    for r in rows:
        print(f"{r['frames']:>10} {r['target_hz']:>9.1f} {r['achieved_hz']:>9.2f} {r['n']:>4} "
              f"{r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['p95_steady_ms']:>11.1f} {r['max_ms']:>8.1f}  "
              f"{r['first5_ms']}")


if __name__ == "__main__":
    main()
