"""Event -> derived result visible in tiled: latency p50/p95 on the embedded default.

Starts a real tiled server (SQLite + memory streaming cache) and a worker process, runs
``frame_series`` with a simulated HDF5 detector at a target rate, and records when each
result row becomes visible to a tiled websocket subscriber of the results table. Latency is
measured from the event document's ``time`` (the moment bluesky composed the event).

    python benchmarks/bench_latency.py [--quick] [--json] [--beside-demo]

Cases: 512x512 frames at 5 Hz and 2048x2048 frames at 1 Hz (whole runs, first events
included), and a 5-event run at 5 Hz (a calibration or alignment count: all of it is "first
events"). The rate achieved is reported as well: the RunEngine side is limited by one HTTP
request per event and per StreamDatum (see shared/STACK.md). ``--beside-demo`` runs a
second ``strainstream demo`` (an operando XRD charge on its own server, IOCs and worker)
beside the cases: latency under load.

``--json`` prints one JSON object ``{"cases": [...]}``; each case has ``frames`` (e.g.
"512x512"), ``target_hz``, ``achieved_hz``, ``n``, ``p50_ms``, ``p95_ms``, ``first_ms``
(the first event's latency), and ``p95_after5_ms``, ``max_ms``, ``first5_ms``,
``beside_demo``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
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
    """Subscribe to derived/<uid>/<analysis> result tables and note when each seq_num
    arrives (``analysis`` None: every table, as frame_stats is the only one here)."""

    def __init__(self, root, analysis: str | None = None):
        self.root = root
        self.analysis = analysis
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
        if self.analysis is not None and update.key != self.analysis:
            return
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
        "frames": f"{shape[0]}x{shape[1]}",
        "target_hz": rate_hz,
        "achieved_hz": n / elapsed,
        "n": len(lat),
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "first_ms": float(lat[0]),
        "p95_after5_ms": float(np.percentile(steady, 95)) if steady.size else None,
        "max_ms": float(lat.max()),
        "first5_ms": [round(float(v), 1) for v in lat[:5]],
    }


@contextlib.contextmanager
def demo_beside(enabled: bool):
    """A second ``strainstream demo`` (operando XRD charge) running while the cases run."""
    if not enabled:
        yield None
        return
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.Popen(
            [sys.executable, "-m", "strainstream.cli", "demo", "--experiment", "operando_xrd",
             "--data-dir", os.path.join(d, "data"), "--duration", "3600", "--interval", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            time.sleep(30)  # its server, IOCs and worker up, the charge under way
            if proc.poll() is not None:
                raise RuntimeError(f"the demo beside the benchmark exited early (code {proc.returncode})")
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 2)  # Ctrl-C: the demo stops its children
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer events")
    parser.add_argument("--json", action="store_true", help='one JSON object {"cases": [...]}')
    parser.add_argument("--beside-demo", action="store_true",
                        help="run a second demo (operando XRD) beside the cases: latency under load")
    args = parser.parse_args()
    n_small, n_big = (20, 8) if args.quick else (100, 30)
    rows = []
    with demo_beside(args.beside_demo):
        for shape, hz, n in (((512, 512), 5.0, n_small), ((2048, 2048), 1.0, n_big), ((512, 512), 5.0, 5)):
            with tempfile.TemporaryDirectory() as d:
                row = run_case(shape, hz, n, d)
                row["beside_demo"] = args.beside_demo
                rows.append(row)
    if args.json:
        print(json.dumps({"cases": rows}))
        return
    print(f"{'frames':>10} {'target Hz':>9} {'achieved':>9} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'first ms':>8} {'p95 after 5':>11} {'max ms':>8}  first 5 events (ms)")
    for r in rows:
        after5 = r["p95_after5_ms"]
        print(f"{r['frames']:>10} {r['target_hz']:>9.1f} {r['achieved_hz']:>9.2f} {r['n']:>4} "
              f"{r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['first_ms']:>8.1f} "
              f"{after5 if after5 is not None else float('nan'):>11.1f} {r['max_ms']:>8.1f}  "
              f"{' '.join(f'{v:.0f}' for v in r['first5_ms'])}")


if __name__ == "__main__":
    main()
