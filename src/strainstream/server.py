"""The embedded tiled server as a supervised subprocess: :class:`TiledServer`.

:class:`TiledServer` resolves the writer and admin keys (:mod:`strainstream.auth`), writes
``DIR/tiled.yml`` (:mod:`strainstream.tiledconfig`), prepares tiled's authentication
database, starts ``tiled serve config DIR/tiled.yml`` (through :mod:`strainstream.tiled_serve`)
under a :class:`strainstream.supervisor.Supervisor` and records where it listens in
``DIR/server.json`` (:mod:`strainstream.client`). The data-directory layout is in
:mod:`strainstream.datadir`.

Nothing here imports tiled at module level: the CLI imports this module cheaply.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from strainstream import auth
from strainstream.client import ServerInfo, connect, forget_server, record_server, running_server
from strainstream.config import process_environment
from strainstream.datadir import logs_dir
from strainstream.errors import ServerError
from strainstream.supervisor import Supervisor, find_free_port, http_ok, port_open
from strainstream.tiledconfig import write_config

__all__ = ["DEFAULT_PORT", "TiledServer"]

DEFAULT_PORT = 8000


class TiledServer:
    """A tiled server subprocess (``tiled serve config DIR/tiled.yml``) on 127.0.0.1.

    Use as a context manager, or call :meth:`start` / :meth:`stop`. Logs go to
    ``DIR/logs/tiled.log``. ``api_key`` is the writer key and ``admin_key`` the key-management
    key (resolved by :func:`strainstream.auth.api_key_for` / :func:`~strainstream.auth.admin_key_for`);
    ``auth_db_uri`` names tiled's authentication database (default SQLite ``DIR/authn.db``);
    ``catalog_uri`` and ``tables_uri`` move the catalog and the appendable tables out of the
    data directory (see :func:`strainstream.tiledconfig.write_config`).
    """

    #: the module run as ``python -m MODULE serve config DIR/tiled.yml``: tiled's own command
    #: line with one DuckDB connection per request thread (``benchmarks/bench_tables.py``
    #: compares it with plain ``tiled``)
    serve_module = "strainstream.tiled_serve"

    def __init__(
        self,
        data_dir: str | os.PathLike,
        *,
        port: int | None = None,
        api_key: str | None = None,
        cache_uri: str = "memory",
        readable_storage: list[str] | None = None,
        catalog_uri: str | None = None,
        admin_key: str | None = None,
        auth_db_uri: str | None = None,
        tables_uri: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or find_free_port()
        self.api_key = auth.check_key(auth.api_key_for(self.data_dir, api_key), "API key")
        self.admin_key = auth.check_key(auth.admin_key_for(self.data_dir, admin_key), "admin key")
        if self.admin_key.lower() == self.api_key.lower():
            raise ServerError("the admin key must differ from the writer API key")
        self.auth_db_uri = auth.auth_db_uri_for(self.data_dir, auth_db_uri)
        self.cache_uri = cache_uri
        self.readable_storage = readable_storage
        self.catalog_uri = catalog_uri
        self.tables_uri = tables_uri
        self.supervisor = Supervisor("tiled server", logs_dir(self.data_dir) / "tiled.log",
                                     stop_signal=signal.SIGINT, error=ServerError)

    @property
    def process(self):
        """The server's :class:`subprocess.Popen` (None before :meth:`start` and after :meth:`stop`)."""
        return self.supervisor.process

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def _healthy(self) -> bool:
        return http_ok(self.port, "/healthz", timeout_s=1.0)

    def start(self, timeout_s: float = 60.0) -> TiledServer:
        """Start the server and wait until it answers ``/healthz``.

        Refuses when another live server already serves this data directory (two servers on
        one SQLite catalog and one table store would corrupt them).
        """
        other = running_server(self.data_dir)
        if other is not None and other.pid != os.getpid() and other.port and port_open(other.port):
            raise ServerError(
                f"a tiled server already serves {self.data_dir} at {other.uri} (pid {other.pid}); "
                "use it (commands given --data-dir find it) or stop it first"
            )
        if port_open(self.port):
            raise ServerError(
                f"port {self.port} on 127.0.0.1 is already in use; choose another with --port"
            )
        # our own serve module prepares the databases in the server's process (one Python
        # start, not three); stock tiled (benchmarks compare with it) gets them prepared here
        ours = self.serve_module == TiledServer.serve_module
        config = write_config(
            self.data_dir,
            port=self.port,
            api_key=self.api_key,
            cache_uri=self.cache_uri,
            readable_storage=self.readable_storage,
            catalog_uri=self.catalog_uri,
            auth_db_uri=self.auth_db_uri,
            tables_uri=self.tables_uri,
            catalog_ready=ours,
        )
        keys = [(self.api_key, auth.WRITER_IDENTITY, auth.WRITER_KEY_NOTE),
                (self.admin_key, auth.ADMIN_IDENTITY, auth.ADMIN_KEY_NOTE)]
        # the server needs no key: keep them out of its environment
        env = process_environment(drop=(auth.API_KEY_ENV, auth.ADMIN_KEY_ENV, "TILED_SINGLE_USER_API_KEY"))
        cmd = [sys.executable, "-m", self.serve_module, "serve", "config", str(config)]
        if ours:
            cmd[3:3] = ["--bootstrap-stdin"]
            self.supervisor.start(cmd, env=env, stdin_data=auth.bootstrap_request(self.auth_db_uri, keys))
        else:
            auth.bootstrap_auth(self.auth_db_uri, keys)
            self.supervisor.start(cmd, env=env)
        try:
            self.supervisor.wait_ready(self._healthy, timeout_s=timeout_s, interval_s=0.1)
        except ServerError:
            # the databases could not be prepared: say why in one line, not "see the log"
            said = [ln[len("error: "):] for ln in self.supervisor.log_since_start().splitlines()
                    if ln.startswith("error: ")]
            if said:
                raise ServerError(said[-1]) from None
            raise
        record_server(ServerInfo(uri=self.uri, port=self.port, pid=self.process.pid,
                                 data_dir=str(self.data_dir)))
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (SIGINT to its process group, SIGKILL after ``timeout_s``)."""
        proc = self.process
        if proc is None:
            return
        self.supervisor.stop(timeout_s)
        forget_server(self.data_dir, proc.pid)

    def client(self):
        """A tiled client for this server (authenticated with its API key)."""
        return connect(self.uri, self.api_key)

    def __enter__(self) -> TiledServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
