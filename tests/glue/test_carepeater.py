"""The CA repeater is started detached and quiet: it holds none of its caller's streams."""

from __future__ import annotations

import os
import subprocess
import sys

from strainstream.supervisor import find_free_port


def test_repeater_is_started_once_detached_with_its_streams_on_devnull(monkeypatch):
    from strainstream.carepeater import ensure_repeater, repeater_running

    port = find_free_port(udp=True)
    monkeypatch.setenv("EPICS_CA_REPEATER_PORT", str(port))
    assert not repeater_running(port)
    proc = ensure_repeater()
    try:
        assert proc is not None and proc.poll() is None and repeater_running(port)
        assert ensure_repeater() is None  # one per host (port)
        assert os.getsid(proc.pid) == proc.pid  # its own session: no terminal signals from ours
        for fd in (0, 1, 2):
            assert os.readlink(f"/proc/{proc.pid}/fd/{fd}") == "/dev/null"
    finally:
        proc.kill()
        proc.wait()


def test_a_process_using_the_repeater_ends_its_output_when_it_exits(monkeypatch, tmp_path):
    """A caller reading our stderr to EOF (``cmd 2>&1 | tee``) is not kept waiting by it."""
    port = find_free_port(udp=True)
    env = {**os.environ, "EPICS_CA_REPEATER_PORT": str(port)}
    code = ("from strainstream.carepeater import ensure_repeater; p = ensure_repeater(); "
            "print(p.pid, flush=True)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=60)  # would time out if the repeater held the pipes
    pid = int(r.stdout.split()[0])
    try:
        os.kill(pid, 0)  # still running after its parent exited
    finally:
        os.kill(pid, 9)
