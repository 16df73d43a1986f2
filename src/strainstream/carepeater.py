"""The Channel Access repeater this host needs, started detached and quiet.

Every Channel Access client expects one repeater per host (UDP port
``EPICS_CA_REPEATER_PORT``, 5065) that forwards IOC beacons, which is how a client notices an
IOC that came back. When none runs, pyepics' libca tries to start ``caRepeater`` from the
``PATH``; pip's pyepics ships none for Linux, so every process prints "**** The executable
"caRepeater" couldn't be located ..." to its stderr. caproto's clients start their own
repeater instead, but it inherits the caller's stdout/stderr and outlives it: a
``strainstream demo 2>&1 | tee log`` then never ends.

:func:`ensure_repeater` starts caproto's repeater in a session of its own with its standard
streams on ``/dev/null`` (unless one already listens), before the first CA client context
exists. Like any CA repeater it keeps running after the process that started it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from strainstream.config import environment_value

__all__ = ["ensure_repeater", "repeater_port", "repeater_running"]


def repeater_port() -> int:
    """``EPICS_CA_REPEATER_PORT`` (default 5065)."""
    return int(environment_value("EPICS_CA_REPEATER_PORT") or 5065)


def repeater_running(port: int | None = None) -> bool:
    """Whether something holds the repeater's UDP port on this host."""
    port = repeater_port() if port is None else port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def ensure_repeater(timeout_s: float = 3.0) -> subprocess.Popen | None:
    """Start a detached, quiet CA repeater unless one runs (then ``None``); waits up to
    ``timeout_s`` for it to listen and returns its process (left running)."""
    port = repeater_port()
    if repeater_running(port):
        return None
    proc = subprocess.Popen([sys.executable, "-m", "caproto.commandline.repeater", "--quiet"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True,
                            cwd="/")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None and not repeater_running(port):
        time.sleep(0.05)
    return proc
