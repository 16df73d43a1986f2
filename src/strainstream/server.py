"""The embedded tiled server: configuration, start/stop, and how clients find it.

Layout of a data directory (everything strainstream keeps lives here)::

    DIR/tiled.yml          the tiled server configuration written by :func:`write_config`
    DIR/catalog.db         SQLite catalog (metadata, structure, data sources)
    DIR/data/              tiled-managed array storage (zarr)
    DIR/tables.duckdb      appendable tables (event rows, derived results)
    DIR/detectors/         HDF5 files written by the detectors (readable storage)
    DIR/.api_key           the single-user API key (mode 0600) unless one is given
    DIR/server.json        URI and pid of the running server (removed on stop)
    DIR/logs/              server, worker and IOC logs

Nothing here imports tiled at module level: the CLI imports this module cheaply.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_PORT",
    "ServerError",
    "ServerInfo",
    "TiledServer",
    "api_key_for",
    "connect",
    "detector_dir",
    "find_free_port",
    "open_offline",
    "running_server",
    "write_config",
]

DEFAULT_PORT = 8000
API_KEY_ENV = "STRAINSTREAM_API_KEY"


class ServerError(RuntimeError):
    """The tiled server cannot be started, reached or used. The message says what to do."""


@dataclass(frozen=True)
class ServerInfo:
    """Where a running server listens."""

    uri: str
    port: int
    pid: int | None
    data_dir: str


def find_free_port() -> int:
    """Return a free TCP port on 127.0.0.1 (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def detector_dir(data_dir: str | os.PathLike) -> Path:
    """Directory where detectors write HDF5 files (tiled reads it as external storage)."""
    return Path(data_dir).resolve() / "detectors"


def api_key_for(data_dir: str | os.PathLike, api_key: str | None = None, create: bool = True) -> str:
    """Resolve the API key: explicit argument, then ``$STRAINSTREAM_API_KEY``, then ``DIR/.api_key``.

    With ``create=True`` a new random key is written to ``DIR/.api_key`` (mode 0600) when
    none exists. Keys are never printed or logged.
    """
    if api_key:
        return api_key
    env = os.environ.get(API_KEY_ENV)
    if env:
        return env
    path = Path(data_dir) / ".api_key"
    if path.exists():
        return path.read_text().strip()
    if not create:
        raise ServerError(
            f"no API key: pass --api-key, set ${API_KEY_ENV}, or use the data directory "
            f"the server was started with (no {path})"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def write_config(
    data_dir: str | os.PathLike,
    *,
    port: int,
    api_key: str,
    cache_uri: str = "memory",
    readable_storage: list[str] | None = None,
    catalog_uri: str | None = None,
) -> Path:
    """Write ``DIR/tiled.yml`` for an embedded server and create the directory layout.

    The API key is not written into the file: tiled reads it from ``TILED_SINGLE_USER_API_KEY``
    in the server's environment (see :class:`TiledServer`).

    Parameters
    ----------
    data_dir : path
        The data directory (created if missing).
    port : int
        TCP port on 127.0.0.1.
    api_key : str
        Only used to check that one is set.
    cache_uri : str
        Streaming cache: ``"memory"`` (embedded default) or ``"redis://127.0.0.1:PORT"``.
    readable_storage : list of str, optional
        Extra directories the server may read detector files from.
    catalog_uri : str, optional
        SQLAlchemy URI of the catalog database, e.g. ``postgresql+asyncpg://USER@HOST:PORT/DB``.
        None (default) keeps the embedded SQLite file ``DIR/catalog.db``.
    """
    if not api_key:
        raise ServerError("an API key is required: writes to the server must be authenticated")
    root = Path(data_dir).resolve()
    for sub in ("data", "detectors", "logs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    readable = [str(detector_dir(root))] + [str(Path(p).resolve()) for p in readable_storage or []]
    config = {
        "authentication": {
            "single_user_api_key": "${TILED_SINGLE_USER_API_KEY}",
            "allow_anonymous_access": False,
        },
        "trees": [
            {
                "path": "/",
                "tree": "catalog",
                "args": {
                    "uri": catalog_uri or f"sqlite:///{root / 'catalog.db'}",
                    "init_if_not_exists": True,
                    "writable_storage": [str(root / "data"), f"duckdb:///{root / 'tables.duckdb'}"],
                    "readable_storage": readable,
                },
            }
        ],
        "streaming_cache": {"uri": cache_uri, "data_ttl": 3600, "seq_ttl": 3600},
        "media_types": {
            "BlueskyRun": {
                "application/json-seq": "bluesky_tiled_plugins.exporters:json_seq_exporter"
            }
        },
        "uvicorn": {"host": "127.0.0.1", "port": int(port)},
    }
    path = root / "tiled.yml"
    # JSON is valid YAML; this keeps the writer dependency-free.
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def _server_json(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir).resolve() / "server.json"


def running_server(data_dir: str | os.PathLike) -> ServerInfo | None:
    """Return the server recorded in ``DIR/server.json`` if its process is alive, else None."""
    path = _server_json(data_dir)
    if not path.exists():
        return None
    try:
        info = ServerInfo(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None
    if info.pid is not None:
        try:
            os.kill(info.pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
    return info


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class TiledServer:
    """A tiled server subprocess (``tiled serve config DIR/tiled.yml``) on 127.0.0.1.

    Use as a context manager, or call :meth:`start` / :meth:`stop`. Logs go to
    ``DIR/logs/tiled.log``.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        *,
        port: int | None = None,
        api_key: str | None = None,
        cache_uri: str = "memory",
        readable_storage: list[str] | None = None,
        catalog_uri: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or find_free_port()
        self.api_key = api_key_for(self.data_dir, api_key)
        self.cache_uri = cache_uri
        self.readable_storage = readable_storage
        self.catalog_uri = catalog_uri
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def start(self, timeout_s: float = 60.0) -> TiledServer:
        """Start the server and wait until it answers ``/healthz``."""
        import httpx

        if _port_open(self.port):
            raise ServerError(
                f"port {self.port} on 127.0.0.1 is already in use; choose another with --port"
            )
        config = write_config(
            self.data_dir,
            port=self.port,
            api_key=self.api_key,
            cache_uri=self.cache_uri,
            readable_storage=self.readable_storage,
            catalog_uri=self.catalog_uri,
        )
        env = dict(os.environ, TILED_SINGLE_USER_API_KEY=self.api_key)
        log = open(self.data_dir / "logs" / "tiled.log", "ab")  # noqa: SIM115 (owned by the child)
        tiled_exe = Path(sys.executable).with_name("tiled")
        cmd = [str(tiled_exe) if tiled_exe.exists() else "tiled", "serve", "config", str(config)]
        self.process = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        base = f"http://127.0.0.1:{self.port}"
        while True:
            if self.process.poll() is not None:
                raise ServerError(
                    f"tiled server exited with code {self.process.returncode} during start-up; "
                    f"see {self.data_dir / 'logs' / 'tiled.log'}"
                )
            try:
                if httpx.get(f"{base}/healthz", timeout=1.0, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"tiled server did not become ready within {timeout_s:.0f} s")
            time.sleep(0.1)
        _server_json(self.data_dir).write_text(
            json.dumps(
                {"uri": self.uri, "port": self.port, "pid": self.process.pid, "data_dir": str(self.data_dir)}
            )
        )
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (SIGINT, then SIGKILL after ``timeout_s``)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        info = running_server(self.data_dir)
        if info is None or info.pid == self.process.pid:
            with contextlib.suppress(FileNotFoundError):
                _server_json(self.data_dir).unlink()
        self.process = None

    def client(self):
        """A tiled client for this server (authenticated with its API key)."""
        return connect(self.uri, self.api_key)

    def __enter__(self) -> TiledServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def connect(uri: str, api_key: str | None):
    """Connect a tiled client; turn connection and auth failures into a :class:`ServerError`."""
    import httpx
    from tiled.client import from_uri

    try:
        return from_uri(uri, api_key=api_key)
    except httpx.ConnectError:
        raise ServerError(
            f"cannot reach the tiled server at {uri}: is it running? "
            "Start one with `strainstream serve --data-dir DIR`"
        ) from None
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code in (401, 403):
            raise ServerError(
                f"the tiled server at {uri} refused the API key (HTTP {exc.response.status_code}); "
                f"pass the right --api-key or set ${API_KEY_ENV}"
            ) from None
        raise ServerError(f"the tiled server at {uri} answered HTTP {exc.response.status_code}") from None


def open_offline(data_dir: str | os.PathLike):
    """Open the catalog in ``DIR`` in-process, without a running server (read-only use).

    Uses the ``DIR/tiled.yml`` the server was started with.
    """
    root = Path(data_dir).resolve()
    config_path = root / "tiled.yml"
    if not config_path.exists():
        raise ServerError(
            f"{root} holds no strainstream data (no tiled.yml); "
            "pass the --data-dir used by `strainstream demo` or `strainstream serve`"
        )
    import io
    import logging
    import warnings

    from tiled.client import Context, from_context
    from tiled.config import parse_configs
    from tiled.server.app import build_app_from_config

    api_key = api_key_for(root, create=False)
    os.environ.setdefault("TILED_SINGLE_USER_API_KEY", api_key)
    logging.getLogger("tiled.server.app").setLevel(logging.WARNING)  # it sets INFO on import
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), \
            contextlib.redirect_stdout(io.StringIO()):
        # tiled announces itself and starlette warns about its test client: not for users
        warnings.simplefilter("ignore")
        config = parse_configs(config_path)
        app = build_app_from_config(config)
        context = Context.from_app(app, api_key=api_key)
        return from_context(context)
