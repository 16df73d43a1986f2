"""strainstream.supervisor with real child processes: ready-waits, group stop, no orphans."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from strainstream.errors import StrainstreamError
from strainstream.supervisor import ProcessError, Supervisor, find_free_port, port_open


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill 0
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_dead(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


#: a child that starts a grandchild (same process group), prints both pids, says "ready"
#: and then sleeps; it ignores SIGTERM when asked to (argv[1] == "stubborn")
PARENT_WITH_GRANDCHILD = _py("""
    import signal, subprocess, sys, time
    if len(sys.argv) > 1 and sys.argv[1] == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    g = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                          "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    print("grandchild", g.pid, flush=True)
    print("ready", flush=True)
    time.sleep(600)
""")


def _grandchild(log) -> int:
    for line in log.read_text().splitlines():
        if line.startswith("grandchild "):
            return int(line.split()[1])
    raise AssertionError(log.read_text())


def test_errors_derive_from_the_project_base():
    assert issubclass(ProcessError, StrainstreamError) and issubclass(ProcessError, RuntimeError)


def test_free_port_is_free():
    port = find_free_port()
    assert 0 < port < 65536 and not port_open(port)
    port = find_free_port(udp=True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", port))  # the UDP port with the same number is free too


def test_ready_line_then_stop_takes_the_whole_group(tmp_path):
    log = tmp_path / "logs" / "child.log"
    sup = Supervisor("child", log, command=PARENT_WITH_GRANDCHILD)
    with sup:
        assert sup.wait_ready(ready_line="ready", timeout_s=30) == "ready"
        pid, grandchild = sup.pid, _grandchild(log)
        assert sup.running and os.getpgid(grandchild) == pid  # one process group
    # the grandchild ignores SIGTERM: the group SIGKILL after the leader exits takes it
    assert sup.process is None and not sup.running
    assert _wait_dead(pid) and _wait_dead(grandchild)
    sup.stop()  # idempotent


def test_stop_escalates_to_sigkill_after_the_timeout(tmp_path):
    sup = Supervisor("stubborn", tmp_path / "s.log", command=[*PARENT_WITH_GRANDCHILD, "stubborn"])
    sup.start()
    sup.wait_ready(ready_line="ready", timeout_s=30)
    pid = sup.pid
    t0 = time.monotonic()
    code = sup.stop(timeout_s=0.5)
    assert code == -signal.SIGKILL and time.monotonic() - t0 < 10 and _wait_dead(pid)


def test_ready_callable_and_ready_file(tmp_path):
    flag = tmp_path / "ready.flag"
    sup = Supervisor("filer", tmp_path / "f.log", command=_py(f"""
        import pathlib, time
        time.sleep(0.3)
        pathlib.Path({str(flag)!r}).write_text("x")
        time.sleep(600)
    """))
    calls = []
    with sup:
        sup.wait_ready(lambda: calls.append(1) or True, ready_file=flag, timeout_s=30)
        assert calls and not flag.exists()  # the ready file is consumed


def test_exit_during_start_up_names_code_and_log(tmp_path):
    log = tmp_path / "dies.log"

    class MyError(StrainstreamError, RuntimeError):
        pass

    sup = Supervisor("dies", log, command=_py("import sys; print('boom'); sys.exit(3)"), error=MyError)
    sup.start()
    with pytest.raises(MyError, match=rf"dies exited with code 3 during start-up; see {log}"):
        sup.wait_ready(ready_line="never", timeout_s=30)
    assert "boom" in sup.log_tail() and sup.returncode == 3


def test_timeout_names_the_log_and_stops_the_child(tmp_path):
    log = tmp_path / "slow.log"
    sup = Supervisor("slow", log, command=_py("import time; time.sleep(600)"))
    sup.start()
    pid = sup.pid
    with pytest.raises(ProcessError, match=rf"slow did not answer on port 1 within 0.5 s; see {log}"):
        sup.wait_ready(lambda: False, timeout_s=0.5, waiting_for="answer on port 1")
    assert sup.process is None and _wait_dead(pid)


def test_kill_and_restart_keep_the_command(tmp_path):
    sup = Supervisor("sleeper", tmp_path / "k.log", command=_py("import time; time.sleep(600)"))
    sup.start()
    first = sup.pid
    sup.kill()
    assert sup.process is not None and sup.returncode == -signal.SIGKILL  # exit code kept
    sup.restart()
    try:
        assert sup.running and sup.pid != first
    finally:
        sup.stop()


def test_environment_and_working_directory(tmp_path):
    log = tmp_path / "env.log"
    sup = Supervisor("env", log, command=_py("import os; print(os.environ['X_SUP'], os.getcwd(), flush=True); "
                                               "import time; time.sleep(600)"),
                     env={"X_SUP": "given", "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    with sup:
        line = sup.wait_ready(ready_line="given", timeout_s=30)
    assert line == f"given {tmp_path}"


def test_no_orphan_when_the_parent_dies(tmp_path):
    """A supervisor in a parent that is SIGKILLed (no atexit, no cleanup): the child still goes."""
    pidfile = tmp_path / "child.pid"
    parent = subprocess.Popen(_py(f"""
        import pathlib, sys, time
        from strainstream.supervisor import Supervisor
        sup = Supervisor("orphan", {str(tmp_path / 'o.log')!r}, die_with_parent=True,
                         command=[sys.executable, "-c", "import time; time.sleep(600)"])
        sup.start()
        pathlib.Path({str(pidfile)!r}).write_text(str(sup.pid))
        time.sleep(600)
    """))
    try:
        deadline = time.monotonic() + 60
        while not pidfile.exists() or not pidfile.read_text():
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.05)
        child = int(pidfile.read_text())
        assert _alive(child)
    finally:
        parent.kill()
        parent.wait()
    assert _wait_dead(child), "the child outlived its parent"


def test_stop_at_interpreter_exit(tmp_path):
    pidfile = tmp_path / "child.pid"
    subprocess.run(_py(f"""
        import pathlib, sys
        from strainstream.supervisor import Supervisor
        sup = Supervisor("atexit", {str(tmp_path / 'a.log')!r}, stop_at_exit=True,
                         command=[sys.executable, "-c", "import time; time.sleep(600)"])
        sup.start()
        pathlib.Path({str(pidfile)!r}).write_text(str(sup.pid))
    """), check=True, timeout=60)
    assert _wait_dead(int(pidfile.read_text()))
