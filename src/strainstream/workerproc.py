"""``strainstream worker`` as a supervised subprocess (:class:`WorkerProcess`).

The demo, the deployment launcher and the tests start workers through this class; the worker
itself is :mod:`strainstream.worker`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from strainstream.config import process_environment
from strainstream.datadir import logs_dir
from strainstream.errors import StrainstreamError
from strainstream.supervisor import Supervisor

__all__ = ["WorkerError", "WorkerProcess"]

#: variables of the worker's configuration that this class sets (or drops) for each worker
_API_KEY_ENV, _SHARD_ENV = "STRAINSTREAM_API_KEY", "STRAINSTREAM_WORKER_SHARD"


class WorkerError(StrainstreamError, RuntimeError):
    """A worker subprocess exited during start-up or did not become ready in time."""


class WorkerProcess:
    """``strainstream worker`` as a subprocess (the API key travels in the environment).

    Parameters
    ----------
    uri : str
        tiled API URI the worker follows.
    api_key : str
        Writer key (passed as ``$STRAINSTREAM_API_KEY``, never on the command line).
    data_dir : path
        Data directory (the worker reads detector files there; logs go to ``DIR/logs``).
    catch_up_hours : float
        How far back the worker back-fills runs it has not analysed.
    shard : (int, int), optional
        ``(i, n)``: follow only the runs of shard ``i`` of ``n`` (several workers sharing
        the runs; passed as ``$STRAINSTREAM_WORKER_SHARD``).
    figures : bool
        Draw each analysed run's figures into ``DIR/figures`` at low priority
        (:class:`strainstream.worker.FigureRenderer`). ``deploy`` does (its workers run for
        days); the demo does not (it stops its worker seconds after the run, before a figure
        would be drawn), nor do tests that only need results (default False).
    """

    def __init__(self, uri: str, api_key: str, data_dir: str | os.PathLike, catch_up_hours: float = 24.0,
                 shard: tuple[int, int] | None = None, figures: bool = False):
        self.figures = figures
        self.uri, self.api_key = uri, api_key
        self.data_dir = Path(data_dir).resolve()
        self.catch_up_hours = catch_up_hours
        self.shard = shard
        name = "worker.log" if shard is None else f"worker-{shard[0]}of{shard[1]}.log"
        self.supervisor = Supervisor("worker", logs_dir(self.data_dir) / name, error=WorkerError,
                                     signal_group=False)
        self._ready: Path | None = None

    @property
    def process(self):
        """The worker's :class:`subprocess.Popen` (None before :meth:`start` and after :meth:`stop`)."""
        return self.supervisor.process

    @property
    def log_path(self) -> Path:
        return self.supervisor.log_path

    def start(self, timeout_s: float = 60.0, wait: bool = True) -> WorkerProcess:
        """Start the worker; with ``wait`` block until it is subscribed and caught up."""
        logs = logs_dir(self.data_dir)
        logs.mkdir(parents=True, exist_ok=True)
        self._ready = logs / f"worker-{os.getpid()}-{time.monotonic_ns()}.ready"
        extra = {_API_KEY_ENV: self.api_key}
        if self.shard is not None:
            extra[_SHARD_ENV] = f"{self.shard[0]}/{self.shard[1]}"
        env = process_environment(extra, drop=(_SHARD_ENV,))
        self.supervisor.start(
            [sys.executable, "-m", "strainstream.cli", "worker", "--uri", self.uri,
             "--data-dir", str(self.data_dir), "--catch-up-hours", str(self.catch_up_hours),
             "--ready-file", str(self._ready), "--figures" if self.figures else "--no-figures"],
            env=env)
        if wait:
            self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until the worker is subscribed and caught up (it creates its ready file).

        Raises
        ------
        WorkerError
            The worker exited first, or was not ready within ``timeout_s`` (it is then killed).
        """
        self.supervisor.wait_ready(ready_file=self._ready, timeout_s=timeout_s, on_timeout="kill")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``."""
        self.supervisor.stop(timeout_s)

    def kill(self) -> None:
        """SIGKILL now (the :attr:`process` stays available for its exit code)."""
        self.supervisor.kill()

    def __enter__(self) -> WorkerProcess:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
