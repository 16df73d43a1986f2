"""``strainstream serve --dashboard-port``: tiled and the dashboard from one command on one
machine; the page logs in with the server's key, the demo names the URL, Ctrl-C stops both."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import pytest
from _page import wait_for

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_with_dashboard_port_serves_the_page(browser, tmp_path):
    from strainstream.dashboard import running_dashboard
    from strainstream.demo import _dashboard_hint

    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "strainstream.cli", "serve", "--data-dir", str(data),
                             "--port", str(free_port()), "--dashboard-port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while running_dashboard(data) is None:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        url = running_dashboard(data)
        assert url == f"http://localhost:{port}/"
        said: list[str] = []
        _dashboard_hint(data, said.append)
        assert said == [f"dashboard: {url} (follows this run live)"]
        browser.get(url)
        wait_for(browser, "const m = window.__m('status'); return m && m.text.startsWith('following tiled');", 30,
                 "the page following tiled (logged in with the server's key)")
        out = (tmp_path / "serve.log").read_text()
        assert f"dashboard at {url} (from another machine: ssh -L {port}:localhost:{port} THIS-HOST)" in out
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
        log.close()
    assert code == 130, (tmp_path / "serve.log").read_text()
    assert running_dashboard(data) is None
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=5, trust_env=False)
