"""One way to run a service as a child process: the tiled server, workers, Redis, PostgreSQL.

A :class:`Supervisor` owns one child at a time (started again by :meth:`Supervisor.restart`):

- the child runs in a process group of its own (``start_new_session``), with stdout and
  stderr appended to one log file, stdin from ``/dev/null``;
- optionally it is asked to exit when the thread that started it dies
  (``die_with_parent``: Linux ``PR_SET_PDEATHSIG``, delivering :attr:`Supervisor.stop_signal`),
  and stopped at interpreter exit (``stop_at_exit``), so a crashed launcher or test leaves no
  server behind;
- :meth:`Supervisor.wait_ready` waits for a condition (a callable, a file the child creates,
  a line in its log), raising an error that names the log file when the child exits first
  or the condition does not hold in time;
- :meth:`Supervisor.stop` sends the clean-shutdown signal (to the child or its whole group),
  waits, then SIGKILLs whatever is left of the group; :meth:`Supervisor.kill` SIGKILLs the
  group at once.

Errors are raised as the class given to the supervisor (``error=``, default
:class:`ProcessError`), so each service keeps raising its own exception class.

:func:`find_free_port` and :func:`port_open` are the project's one pair of port helpers.

This module imports only the standard library and :mod:`strainstream.errors`.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from strainstream.errors import StrainstreamError

__all__ = ["ProcessError", "Supervisor", "find_free_port", "port_open"]

_PR_SET_PDEATHSIG = 1


class ProcessError(StrainstreamError, RuntimeError):
    """A supervised child process could not be started or did not become ready."""


def find_free_port(host: str = "127.0.0.1", *, udp: bool = False) -> int:
    """A free TCP port on ``host`` (the OS picks it; free now, not reserved).

    Parameters
    ----------
    host : str
        Interface address.
    udp : bool
        Also require the same UDP port to be free (Channel Access servers use both).

    Returns
    -------
    int
        The port number.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
            if not udp:
                return port
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind((host, port))
            except OSError:
                continue
            return port
    raise ProcessError(f"no free TCP+UDP port found on {host}")


def port_open(port: int, host: str = "127.0.0.1", timeout_s: float = 0.2) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        return s.connect_ex((host, int(port))) == 0


def http_ok(port: int, path: str = "/healthz", host: str = "127.0.0.1", timeout_s: float = 1.0) -> bool:
    """True when ``http://host:port/path`` answers 200 (plain HTTP, standard library).

    For start-up polling: ``httpx.get`` builds a client and an SSL context per call
    (≈ 20–50 ms of CPU), which, every 0.1 s, took CPU from the very server being waited for.
    """
    import http.client

    conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _die_with_parent(sig: int) -> None:
    """preexec_fn body: deliver ``sig`` to the child when the thread that started it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


# supervisors whose child is to be stopped at interpreter exit (weakly held)
_AT_EXIT: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for sup in list(_AT_EXIT):
        with contextlib.suppress(Exception):
            sup.stop()


class Supervisor:
    """A child process in its own process group, with a log file, a ready-wait and a stop.

    Parameters
    ----------
    name : str
        What the child is, for messages (``"tiled server"``, ``"redis"``, ``"worker"``).
    log_path : path
        File the child's stdout and stderr are appended to (its directory is created).
    command : sequence of str, optional
        Default command of :meth:`start` (and the one :meth:`restart` reuses).
    env : mapping, optional
        Complete environment of the child (build it with
        :func:`strainstream.config.process_environment`); default: this process's.
    cwd : path, optional
        Working directory of the child.
    stop_signal : int
        Signal asking for a clean shutdown (``SIGTERM``; ``SIGINT`` for tiled and PostgreSQL).
    signal_group : bool
        Send ``stop_signal`` to the whole process group (default) or to the child only
        (when the child shuts its own children down, e.g. PostgreSQL).
    die_with_parent : bool
        Ask the kernel to send ``stop_signal`` to the child when the *thread* that started
        it exits (``PR_SET_PDEATHSIG``; Linux only, ignored elsewhere).
    stop_at_exit : bool
        Stop the child when this interpreter exits normally.
    stop_timeout_s : float
        Default time :meth:`stop` waits after ``stop_signal`` before SIGKILL.
    error : type
        Exception class raised by :meth:`start` and :meth:`wait_ready` (called with one
        message argument).
    **popen_kwargs
        Further :class:`subprocess.Popen` arguments for every start (``user``, ``group``,
        ``extra_groups`` ...).

    Attributes
    ----------
    process : subprocess.Popen or None
        The current child (kept after it exits or is killed; ``None`` after :meth:`stop`).
    """

    def __init__(
        self,
        name: str,
        log_path: str | os.PathLike,
        *,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        stop_signal: int = signal.SIGTERM,
        signal_group: bool = True,
        die_with_parent: bool = False,
        stop_at_exit: bool = False,
        stop_timeout_s: float = 10.0,
        error: type[Exception] = ProcessError,
        **popen_kwargs: Any,
    ) -> None:
        self.name = name
        self.log_path = Path(log_path)
        self.command = list(command) if command is not None else None
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.stop_signal = stop_signal
        self.signal_group = signal_group
        self.die_with_parent = die_with_parent
        self.stop_at_exit = stop_at_exit
        self.stop_timeout_s = stop_timeout_s
        self.error = error
        self.popen_kwargs = popen_kwargs
        self.process: subprocess.Popen | None = None
        self._log_offset = 0
        self._stdin_data: bytes | None = None

    # ------------------------------------------------------------------ state
    @property
    def pid(self) -> int | None:
        """Process id of the current child (also its process-group id), or None."""
        return None if self.process is None else self.process.pid

    @property
    def returncode(self) -> int | None:
        """Exit code of the child once it has exited (negative: killed by that signal)."""
        return None if self.process is None else self.process.poll()

    def poll(self) -> int | None:
        """``None`` while the child runs, else its exit code (also when there is no child)."""
        return None if self.process is None else self.process.poll()

    @property
    def running(self) -> bool:
        """True while the current child runs."""
        return self.process is not None and self.process.poll() is None

    # ------------------------------------------------------------------ lifecycle
    def start(self, command: Sequence[str] | None = None, *, env: Mapping[str, str] | None = None,
              cwd: str | os.PathLike | None = None, stdin_data: bytes | None = None,
              **popen_kwargs: Any) -> Supervisor:
        """Spawn the child; arguments given here replace those given to the constructor.

        ``stdin_data`` is written to the child's stdin, which is then closed (default: no
        stdin); it is kept for :meth:`restart`. Secrets travel this way, never on a command
        line or in the environment. Returns immediately (use :meth:`wait_ready`). Raises
        ``error`` when a child still runs.
        """
        if self.running:
            raise self.error(f"{self.name} already runs (pid {self.process.pid})")
        if command is not None:
            self.command = list(command)
        if env is not None:
            self.env = dict(env)
        if cwd is not None:
            self.cwd = cwd
        if stdin_data is not None:
            self._stdin_data = stdin_data
        if not self.command:
            raise self.error(f"{self.name}: no command to start")
        kwargs = {**self.popen_kwargs, **popen_kwargs}
        if self.die_with_parent:
            kwargs["preexec_fn"] = functools.partial(_die_with_parent, self.stop_signal)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child owns it)
        try:
            self._log_offset = log.tell()
            data = self._stdin_data
            self.process = subprocess.Popen(
                self.command, env=self.env, cwd=self.cwd,
                stdin=subprocess.DEVNULL if data is None else subprocess.PIPE, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, **kwargs,
            )
        finally:
            log.close()
        if data is not None:
            with contextlib.suppress(BrokenPipeError):  # a child that died at once: its exit code tells
                self.process.stdin.write(data)
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()
        if self.stop_at_exit:
            _AT_EXIT.add(self)
        return self

    def wait_ready(
        self,
        ready: Callable[[], bool] | None = None,
        *,
        ready_file: str | os.PathLike | None = None,
        ready_line: str | None = None,
        timeout_s: float = 60.0,
        interval_s: float = 0.05,
        waiting_for: str = "become ready",
        on_timeout: str = "stop",
    ) -> str | None:
        """Block until every given condition holds.

        Parameters
        ----------
        ready : callable, optional
            Polled every ``interval_s``; ready when it returns True (e.g. a health check).
        ready_file : path, optional
            Ready when this file exists (the child creates it); it is then removed.
        ready_line : str, optional
            Ready when the child has written a line containing this text to its log
            (since the last :meth:`start`).
        timeout_s, interval_s : float
            Overall limit and polling period, seconds.
        waiting_for : str
            What readiness means, for the timeout message
            (``"{name} did not {waiting_for} within {timeout_s} s; see {log_path}"``).
        on_timeout : {"stop", "kill"}
            What to do with the child on timeout before raising.

        Returns
        -------
        str or None
            With ``ready_line``: the first log line containing it (without the line end),
            e.g. to parse what the child announced; else None.

        Raises
        ------
        error
            The child exited first (message with its exit code and the log file), or the
            conditions did not hold within ``timeout_s`` (the child is then stopped or killed).
        """
        deadline = time.monotonic() + timeout_s
        ready_file = Path(ready_file) if ready_file is not None else None
        line: str | None = None
        scan_pos, carry = self._log_offset, b""
        while True:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise self.error(f"{self.name} exited with code {code} during start-up; see {self.log_path}")
            if ready_line is not None and line is None:
                scan_pos, carry, line = self._scan_log(ready_line, scan_pos, carry)
            if ((ready_line is None or line is not None)
                    and (ready_file is None or ready_file.exists())
                    and (ready is None or ready())):
                if ready_file is not None:
                    ready_file.unlink(missing_ok=True)
                return line
            if time.monotonic() > deadline:
                if on_timeout == "kill":
                    self.kill()
                else:
                    self.stop()
                raise self.error(
                    f"{self.name} did not {waiting_for} within {timeout_s:g} s; see {self.log_path}")
            time.sleep(interval_s)

    def _scan_log(self, needle: str, pos: int, carry: bytes) -> tuple[int, bytes, str | None]:
        """Read the log from ``pos``; return the new position, the unfinished last line, and
        the first complete line containing ``needle`` (or None)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(pos)
                chunk = f.read()
        except FileNotFoundError:
            return pos, carry, None
        *lines, rest = (carry + chunk).split(b"\n")
        for raw in lines:
            if needle.encode() in raw:
                return pos + len(chunk), rest, raw.rstrip(b"\r").decode(errors="replace")
        return pos + len(chunk), rest, None

    def send_signal(self, sig: int, group: bool | None = None) -> None:
        """Send ``sig`` to the running child, or its whole group (default: ``signal_group``)."""
        if not self.running:
            return
        group = self.signal_group if group is None else group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(self.process.pid, sig)
            else:
                os.kill(self.process.pid, sig)

    def stop(self, timeout_s: float | None = None) -> int | None:
        """Stop the child: ``stop_signal``, wait up to ``timeout_s``, SIGKILL what is left of
        its process group. Idempotent; :attr:`process` is ``None`` afterwards.

        Returns
        -------
        int or None
            The child's exit code (None when there was no child).
        """
        timeout_s = self.stop_timeout_s if timeout_s is None else timeout_s
        proc, self.process = self.process, None
        _AT_EXIT.discard(self)
        if proc is None:
            return None
        if proc.poll() is not None:
            return proc.returncode  # never signal a reaped pid: it may be someone else's now
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.signal_group:
                os.killpg(proc.pid, self.stop_signal)
            else:
                os.kill(proc.pid, self.stop_signal)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout_s)
        # whatever is left in its process group (a save child, a hung server) goes too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        return proc.poll()

    def kill(self) -> None:
        """SIGKILL the child's whole process group now and reap it (:attr:`process` is kept)."""
        proc = self.process
        _AT_EXIT.discard(self)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def restart(self, timeout_s: float | None = None) -> Supervisor:
        """:meth:`stop`, then :meth:`start` with the same command, environment and directory."""
        self.stop(timeout_s)
        return self.start()

    def log_since_start(self, max_chars: int = 20000) -> str:
        """What the child wrote to the log since the last :meth:`start` (its last ``max_chars``)."""
        try:
            with open(self.log_path, "rb") as f:
                end = f.seek(0, os.SEEK_END)
                f.seek(max(self._log_offset, end - max_chars))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n_chars: int = 1500) -> str:
        """The last ``n_chars`` characters of the log file ("" when there is none)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - n_chars))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> Supervisor:
        return self if self.running else self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<Supervisor {self.name!r} {state}, log {self.log_path}>"
