"""Dashboard test set-up: a real headless chromium (Selenium + Debian's chromium-driver), a
read-only key, ``strainstream dashboard`` as a subprocess, and the figure tests' synthetic
results (``tests/plots/_plot_synth.py``) importable.

Without chromium/chromedriver the browser tests are skipped with the reason, except under
``CI=true`` where they fail (``.ci/run`` installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

for _dir in (Path(__file__).resolve().parent, Path(__file__).resolve().parent.parent / "plots"):
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def browser_missing() -> list[str]:
    """What a browser test needs and this machine lacks (empty: chromium can be driven)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.exists(p) or shutil.which(Path(p).name))]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    return missing


def _require_browser() -> None:
    missing = browser_missing()
    if missing:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"browser test needs {', '.join(missing)} (CI installs them)", pytrace=False)
        pytest.skip(f"not installed: {', '.join(missing)}")


@pytest.fixture
def browser(tmp_path):
    """A headless chromium driven by Selenium (window 1700×1100)."""
    _require_browser()
    driver = make_browser(tmp_path)
    yield driver
    driver.quit()


def make_browser(tmp_path: Path):
    """A headless chromium driven by Selenium (window 1700×1100); the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1700,1100", f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER if os.path.exists(CHROMEDRIVER)
                                              else shutil.which("chromedriver")), options=opts)
    driver.set_page_load_timeout(30)
    return driver


@pytest.fixture
def read_only_key(tiled_server) -> str:
    """A read-only key minted with the admin key (what a viewer gets)."""
    from strainstream.keys import KeyAdmin

    return KeyAdmin(tiled_server.uri, tiled_server.admin_key).create(read_only=True, note="dashboard test")["secret"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DashboardProcess:
    """``strainstream dashboard`` in a subprocess; ``url`` once it serves."""

    def __init__(self, uri: str, api_key: str, data_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        env = dict(os.environ, STRAINSTREAM_API_KEY=api_key)
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "strainstream.cli", "dashboard", "--uri", uri, "--port", str(self.port),
             "--data-dir", str(data_dir)], env=env, stdout=self.log, stderr=subprocess.STDOUT, text=True)
        from strainstream.dashboard import dashboard_json_path

        deadline = time.monotonic() + 60
        path = dashboard_json_path(data_dir)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dashboard exited {self.proc.returncode}: {log.read_text()}")
            if path.exists():
                self.url = json.loads(path.read_text())["url"]
                return
            time.sleep(0.1)
        raise RuntimeError(f"dashboard did not start: {log.read_text()}")

    def stop(self) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def dashboard_factory(tiled_server, tmp_path):
    """Start dashboards against ``tiled_server`` with a given key; all stopped at the end."""
    started = []

    def start(api_key: str, data_dir: Path | None = None):
        d = data_dir or tiled_server.data_dir
        proc = DashboardProcess(tiled_server.uri, api_key, Path(d), tmp_path / f"dashboard{len(started)}.log")
        started.append(proc)
        return proc

    yield start
    for p in started:
        p.stop()
