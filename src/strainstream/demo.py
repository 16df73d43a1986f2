"""``strainstream demo``: the whole data path on one machine.

Starts the embedded tiled server and a worker process, runs a simulated experiment with a
RunEngine that streams to tiled, waits until the worker has analysed every event, and prints
a summary. Data stays in the data directory afterwards (``strainstream results UID
--data-dir DIR`` and ``strainstream replay UID --data-dir DIR`` work without a server).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["WorkerProcess", "run_demo"]


class WorkerProcess:
    """``strainstream worker`` as a subprocess (the API key travels in the environment)."""

    def __init__(self, uri: str, api_key: str, data_dir: str | os.PathLike, catch_up_hours: float = 24.0):
        self.uri, self.api_key = uri, api_key
        self.data_dir = Path(data_dir).resolve()
        self.catch_up_hours = catch_up_hours
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60.0, wait: bool = True) -> WorkerProcess:
        """Start the worker; with ``wait`` block until it is subscribed and caught up."""
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        ready = logs / f"worker-{os.getpid()}-{time.monotonic_ns()}.ready"
        env = dict(os.environ, STRAINSTREAM_API_KEY=self.api_key)
        log = open(logs / "worker.log", "ab")  # noqa: SIM115 (owned by the child)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "strainstream.cli", "worker", "--uri", self.uri,
             "--data-dir", str(self.data_dir), "--catch-up-hours", str(self.catch_up_hours),
             "--ready-file", str(ready)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        self._ready = ready
        if wait:
            self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        logs, ready = self.data_dir / "logs", self._ready
        deadline = time.monotonic() + timeout_s
        while not ready.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with code {self.process.returncode}; see {logs / 'worker.log'}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"worker not ready after {timeout_s:.0f} s; see {logs / 'worker.log'}")
            time.sleep(0.05)
        ready.unlink()

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> WorkerProcess:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_for_results(root, uid: str, n_events: int, timeout_s: float = 60.0) -> dict[str, Any]:
    """Poll tiled until every analysis of ``uid`` is complete; return the results document."""
    from strainstream.callbacks.sinks import read_results

    deadline = time.monotonic() + timeout_s
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(KeyError):
            doc = read_results(root, uid)
            if doc["analyses"] and all(a["status"] == "complete" for a in doc["analyses"].values()):
                return doc
        time.sleep(0.2)
    raise TimeoutError(f"the worker did not finish run {uid} within {timeout_s:.0f} s "
                       f"(have: {({k: v['n_rows'] for k, v in doc.get('analyses', {}).items()})} of {n_events})")


def run_demo(data_dir: str | os.PathLike, frames: int = 20, delay_s: float = 0.2, quiet: bool = False) -> dict[str, Any]:
    """Run the demo; return the summary dict (also printed unless ``quiet``)."""
    from strainstream.devices.detectors import sim_frame_detector
    from strainstream.plans.frames import frame_series
    from strainstream.server import TiledServer, detector_dir
    from strainstream.session import make_session

    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    data_dir = Path(data_dir).resolve()
    say(f"strainstream demo: data directory {data_dir}")
    with TiledServer(data_dir) as server:
        say(f"tiled server at {server.uri}")
        with WorkerProcess(server.uri, server.api_key, data_dir):
            say("analysis worker running")
            session = make_session(server.uri, server.api_key, progress=not quiet)
            det = sim_frame_detector("det", detector_dir(data_dir), frame_shape=(512, 512))
            (uid,) = session.RE(frame_series([det], num=frames, delay_s=delay_s,
                                             md={"sample": "simulated powder rings"}))
            root = server.client()
            recorded = len(root[uid]["primary"]["seq_num"].read())
            say(f"run {uid} recorded {recorded} events; waiting for the worker ...")
            results = wait_for_results(root, uid, recorded)
    analysed = min(a["n_rows"] for a in results["analyses"].values())
    summary = {
        "uid": uid,
        "tiled_uri": server.uri,
        "data_dir": str(data_dir),
        "events_recorded": recorded,
        "events_analysed": analysed,
        "results": {k: v["summary"] for k, v in results["analyses"].items()},
    }
    say(f"run uid        : {uid}\n"
        f"tiled URI      : {server.uri} (server stopped; data kept in {data_dir})\n"
        f"events recorded: {recorded}\nevents analysed: {analysed}")
    for name, s in summary["results"].items():
        say(f"{name}: " + ", ".join(f"{k}={v}" for k, v in s.items()))
    say(f"next: strainstream results {uid[:8]} --data-dir {data_dir}")
    return summary
