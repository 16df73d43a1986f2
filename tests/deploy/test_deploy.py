"""``strainstream deploy up|status`` with real processes (PostgreSQL, Redis, tiled, workers)."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from strainstream.auth import api_key_for
from strainstream.client import connect
from strainstream.datadir import detector_dir
from strainstream.demo import wait_for_results
from strainstream.devices.detectors import sim_frame_detector
from strainstream.plans.frames import frame_series
from strainstream.session import make_session

pytestmark = [pytest.mark.system, pytest.mark.slow]

CLI = [sys.executable, "-m", "strainstream.cli", "deploy"]


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def _wait(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)


class Launcher:
    """``strainstream deploy up --json`` as a subprocess; stopped (SIGTERM) at the end."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [*CLI, "up", "--data-dir", str(data_dir), "--json", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )

    def info(self, timeout_s: float = 300) -> dict:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            raise AssertionError(f"deploy up printed nothing within {timeout_s:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"deploy up exited {self.proc.wait()}: {self.proc.stderr.read()}")
        return json.loads(line)

    def terminate(self, timeout_s: float = 120, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()


@pytest.fixture
def launch():
    started: list[Launcher] = []

    def start(data_dir: Path, *args: str) -> Launcher:
        started.append(Launcher(data_dir, *args))
        return started[-1]

    yield start
    for launcher in started:
        launcher.terminate()


def _pids(info: dict) -> list[int]:
    pids = [info["tiled_pid"], *(w["pid"] for w in info["workers"])]
    return pids + [info[k] for k in ("postgres_pid", "redis_pid") if info.get(k)]


def test_scaleout_up_runs_a_run_restarts_a_dead_worker_and_stops_everything(reachable_dir, launch):
    data = reachable_dir / "beamtime"
    launcher = launch(data, "--profile", "scaleout", "--workers", "2")
    info = launcher.info()
    assert info["profile"] == "scaleout"
    assert info["catalog"].startswith("postgresql://strainstream@127.0.0.1:")
    assert info["streaming_cache"] == f"redis://127.0.0.1:{info['redis_port']}"
    assert [w["shard"] for w in info["workers"]] == [[0, 2], [1, 2]]
    assert all(_alive(pid) for pid in _pids(info))

    st = _cli("status", "--data-dir", str(data), "--json")
    assert st.returncode == 0, st.stderr
    checks = json.loads(st.stdout)["checks"]
    assert checks == {"launcher": True, "tiled": True, "postgres": True, "redis": True,
                      "worker 0": True, "worker 1": True}

    # the tiled catalog really is in PostgreSQL and the cache in Redis
    cfg = json.loads((data / "tiled.yml").read_text())
    assert cfg["trees"][0]["args"]["uri"].startswith("postgresql+asyncpg://strainstream@127.0.0.1:")
    assert cfg["database"]["uri"].startswith("postgresql+asyncpg://strainstream@127.0.0.1:")
    assert cfg["streaming_cache"]["uri"] == info["streaming_cache"]

    # runs through the deployment: both shards' workers analyse them
    key = api_key_for(data, create=False)
    session = make_session(info["tiled_uri"], key, progress=False)
    det = sim_frame_detector("det", detector_dir(data), frame_shape=(64, 48))
    uids = [session.RE(frame_series([det], num=4, delay_s=0.02))[0] for _ in range(4)]
    root = connect(info["tiled_uri"], key)
    for uid in uids:
        entry = wait_for_results(root, uid, 4, timeout_s=180)["analyses"]["frame_stats"]
        assert entry["status"] == "complete" and entry["columns"]["seq_num"] == [1, 2, 3, 4]

    # a worker killed by the OS is restarted by the launcher
    dead = info["workers"][0]["pid"]
    os.kill(dead, signal.SIGKILL)

    def replaced():
        st = json.loads(_cli("status", "--data-dir", str(data), "--json").stdout)
        return st["workers"][0]["pid"] not in (None, dead) and st["ok"]

    _wait(replaced, 240, "the launcher to restart worker 0")
    (uid,) = session.RE(frame_series([det], num=3, delay_s=0.02))
    assert wait_for_results(root, uid, 3, timeout_s=180)["analyses"]["frame_stats"]["n_rows"] == 3

    # no secret in anything written or printed
    password = (data / "services" / "postgres" / ".pg_password").read_text().strip()
    final = json.loads(_cli("status", "--data-dir", str(data), "--json").stdout)
    t0 = time.monotonic()
    assert launcher.terminate() == 143  # 128 + SIGTERM, after stopping every service
    assert time.monotonic() - t0 < 15
    out = launcher.proc.stdout.read() + launcher.proc.stderr.read()
    texts = [out, (data / "tiled.yml").read_text(), json.dumps(info)]
    texts += [p.read_text(errors="replace") for p in data.rglob("*.log")]
    for text in texts:
        assert password not in text and key not in text

    # everything stopped, state forgotten
    for pid in _pids(final):
        _wait(lambda pid=pid: not _alive(pid), 30, f"pid {pid} to exit")
    assert not (data / "deploy.json").exists()
    st = _cli("status", "--data-dir", str(data))
    assert st.returncode == 2
    assert st.stderr.startswith("strainstream deploy: error: no deployment runs on")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_embedded_up_and_status_and_a_second_up_is_refused(reachable_dir, launch):
    import httpx

    from strainstream.dashboard import running_dashboard

    data = reachable_dir / "embedded"
    port = _free_port()
    launcher = launch(data, "--profile", "embedded", "--workers", "1", "--dashboard-port", str(port))
    info = launcher.info()
    assert info["profile"] == "embedded" and info["streaming_cache"] == "memory"
    assert info["catalog"] == f"sqlite:{data / 'catalog.db'}"
    assert "postgres_port" not in info and not (data / "services").exists()
    # the dashboard on the same machine, named where the demo looks for it
    assert info["dashboard_url"] == f"http://localhost:{port}/" == running_dashboard(data)
    page = httpx.get(info["dashboard_url"], timeout=30, trust_env=False)
    assert page.status_code == 200 and "static/js/bokeh" in page.text
    st = _cli("status", "--data-dir", str(data))
    assert st.returncode == 0, st.stderr
    assert "tiled        up" in st.stdout and "worker 0     up" in st.stdout
    assert f"dashboard    http://localhost:{port}/" in st.stdout and "\ndashboard    up" in st.stdout

    again = _cli("up", "--data-dir", str(data), "--profile", "embedded")
    assert again.returncode == 2
    assert again.stderr.strip() == (
        f"strainstream deploy: error: a deployment (pid {launcher.proc.pid}) already runs on "
        f"{data}; stop it first (kill -TERM {launcher.proc.pid})")
    t0 = time.monotonic()
    assert launcher.terminate(sig=signal.SIGINT) == 130  # Ctrl-C: 128 + SIGINT
    assert time.monotonic() - t0 < 15
    assert "strainstream deploy up: stopped (SIGINT)" in launcher.proc.stderr.read()
    assert not _alive(info["tiled_pid"]) and not _alive(info["workers"][0]["pid"])
    assert running_dashboard(data) is None and not (data / "dashboard.json").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(info["dashboard_url"], timeout=5, trust_env=False)
    assert _cli_runs(data).returncode == 0  # the data directory stays readable


def _cli_runs(data: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "strainstream.cli", "runs", "--data-dir", str(data)],
                          capture_output=True, text=True, timeout=120)


def test_usage_errors_are_one_line(tmp_path):
    r = _cli()
    assert r.returncode == 2 and "usage: strainstream deploy {up,status}" in r.stderr
    r = _cli("up", "--data-dir", str(tmp_path), "--profile", "cloud")
    assert r.returncode == 2 and "invalid choice: 'cloud'" in r.stderr
    r = _cli("status", "--data-dir", str(tmp_path / "nothing"))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "no deployment runs on" in r.stderr

