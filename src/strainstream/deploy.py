"""``strainstream deploy``: start every service of a deployment profile, or report on them.

Profiles
--------
``embedded``
    tiled with the SQLite catalog and the in-memory streaming cache in ``DIR`` (what
    ``strainstream serve`` runs), plus the analysis workers.
``scaleout``
    the facility set-up on one host: a private PostgreSQL cluster (the tiled catalog, database
    ``strainstream``, and tiled's principals and hashed API keys, ``strainstream_auth``), a
    ``redis-server`` (tiled's streaming cache), tiled, and ``--workers N`` analysis workers
    sharing the runs (worker ``i`` follows shard ``i`` of ``N``).

Everything listens on 127.0.0.1 and lives under ``DIR``::

    DIR/services/postgres/   PostgreSQL cluster, its socket dir, password file (0600), log
    DIR/services/redis/      Redis append-only file and log
    DIR/deploy.json          what runs where (pids, ports, URIs without secrets) while up
    DIR/dashboard.json       the dashboard's URL, with ``dashboard_port`` (``--dashboard-port``)
    DIR/logs/                tiled and worker logs

With ``dashboard_port`` the launcher also serves the live dashboard page
(:mod:`strainstream.dashboard`) at ``http://localhost:PORT/``, in its own process; the page
follows tiled through its restarts.

``up`` runs until Ctrl-C or SIGTERM, restarts a worker or service that dies (at most
:data:`MAX_RESTARTS` times each), then stops everything. The catalog URI in ``DIR/tiled.yml``
carries no password: it names the 0600 file ``DIR/services/postgres/.pgpass`` that asyncpg
reads (``?passfile=``). Keys and passwords are never printed.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strainstream.errors import StrainstreamError
from strainstream.supervisor import http_ok

__all__ = ["Deployment", "DeployError", "PROFILES", "status"]

PROG = "strainstream deploy"
PROFILES = ("embedded", "scaleout")
#: database of the tiled catalog in the scale-out cluster
CATALOG_DB = "strainstream"
#: database of tiled's principals and (hashed) API keys in the scale-out cluster
AUTH_DB = "strainstream_auth"
#: database of the appendable tables (event rows, derived results) in the scale-out cluster
TABLES_DB = "strainstream_tables"
#: a component that dies more often than this is left down and ``up`` exits with an error
MAX_RESTARTS = 5


class DeployError(StrainstreamError, RuntimeError):
    """A deployment cannot be started or inspected. The message says what to do."""


def _state_file(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir).resolve() / "deploy.json"


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    return True


@dataclass
class Deployment:
    """The services of one profile, started in order and stopped in reverse.

    Parameters
    ----------
    data_dir : path
        Where everything lives (created if missing).
    profile : {"embedded", "scaleout"}
    workers : int
        Number of analysis workers (``scaleout`` shards the runs between them).
    port : int, optional
        tiled's port on 127.0.0.1 (free one when omitted).
    api_key : str, optional
        The writer key (else ``$STRAINSTREAM_API_KEY`` or ``DIR/.api_key``).
    dashboard_port : int, optional
        Also serve the dashboard on 127.0.0.1 at this port (none when omitted).
    """

    data_dir: Path
    profile: str = "embedded"
    workers: int = 1
    port: int | None = None
    api_key: str | None = None
    dashboard_port: int | None = None
    dashboard: Any = None
    redis: Any = None
    postgres: Any = None
    server: Any = None
    worker_procs: list = field(default_factory=list)
    restarts: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        if self.profile not in PROFILES:
            raise DeployError(f"unknown profile {self.profile!r}: choose {' or '.join(PROFILES)}")
        if self.workers < 0:
            raise DeployError(f"--workers must be ≥ 0, not {self.workers}")

    # -- start ------------------------------------------------------------------------------
    def start(self) -> Deployment:
        """Start the services of the profile (a failure stops what was already started)."""
        from strainstream.client import running_server
        from strainstream.server import TiledServer

        self.data_dir.mkdir(parents=True, exist_ok=True)
        previous = read_state(self.data_dir)
        if previous is not None and _pid_alive(previous.get("pid")):
            raise DeployError(
                f"a deployment (pid {previous['pid']}) already runs on {self.data_dir}; "
                f"stop it first (kill -TERM {previous['pid']})"
            )
        if running_server(self.data_dir) is not None:
            raise DeployError(f"a tiled server already runs on {self.data_dir}; stop it first")
        try:
            kwargs: dict[str, Any] = {}
            if self.profile == "scaleout":
                kwargs = self._start_scaleout_services()
            self.server = TiledServer(self.data_dir, port=self.port, api_key=self.api_key, **kwargs)
            self.server.start(timeout_s=120)
            for i in range(self.workers):
                self.worker_procs.append(self._start_worker(i))
            if self.dashboard_port:
                self._start_dashboard()
        except BaseException:
            self.stop()
            raise
        self.write_state()
        return self

    def _start_dashboard(self) -> None:
        from strainstream.dashboard._server import serve_dashboard

        self.dashboard = serve_dashboard(self.server.uri, self.server.api_key, port=self.dashboard_port,
                                         data_dir=self.data_dir, port_option="--dashboard-port")

    def _start_scaleout_services(self) -> dict[str, Any]:
        from strainstream.services import Postgres, Redis

        services = self.data_dir / "services"
        services.mkdir(exist_ok=True)
        previous = read_state(self.data_dir) or {}
        self.postgres = Postgres(services / "postgres", port=previous.get("postgres_port"))
        self.postgres.start(timeout_s=120)
        for db in (CATALOG_DB, AUTH_DB, TABLES_DB):
            self.postgres.create_database(db)
        self.redis = Redis(services / "redis", port=previous.get("redis_port"))
        self.redis.start()
        return {
            # no password in the URI (tiled logs it): asyncpg reads the 0600 passfile
            "catalog_uri": self.postgres.passfile_uri(CATALOG_DB),
            "auth_db_uri": self.postgres.passfile_uri(AUTH_DB),
            # tables through ADBC/libpq (plain postgresql:// scheme), which reads the same passfile
            "tables_uri": self.postgres.tables_uri(TABLES_DB),
            "cache_uri": self.redis.url,
        }

    def _start_worker(self, i: int):
        from strainstream.workerproc import WorkerProcess

        kwargs: dict[str, Any] = {}
        if self.workers > 1 and "shard" in inspect.signature(WorkerProcess).parameters:
            kwargs["shard"] = (i, self.workers)
        proc = WorkerProcess(self.server.uri, self.server.api_key, self.data_dir, figures=True, **kwargs)
        return proc.start(timeout_s=180)

    # -- supervise --------------------------------------------------------------------------
    def components(self) -> list[tuple[str, Any]]:
        """``(name, object)`` of every component, in start order."""
        out: list[tuple[str, Any]] = []
        if self.postgres is not None:
            out.append(("postgres", self.postgres))
        if self.redis is not None:
            out.append(("redis", self.redis))
        if self.server is not None:
            out.append(("tiled", self.server))
        out += [(f"worker {i}", w) for i, w in enumerate(self.worker_procs)]
        return out

    @staticmethod
    def _alive(obj: Any) -> bool:
        proc = getattr(obj, "process", None)
        return proc is not None and proc.poll() is None

    def supervise_once(self, log=print) -> None:
        """Restart every component that died (services first); raise after too many restarts."""
        for name, obj in self.components():
            if self._alive(obj):
                continue
            n = self.restarts.get(name, 0) + 1
            if n > MAX_RESTARTS:
                raise DeployError(f"{name} died {n} times; giving up (see {self.data_dir / 'logs'})")
            self.restarts[name] = n
            code = obj.process.returncode if getattr(obj, "process", None) is not None else None
            log(f"{PROG}: {name} exited (code {code}); restarting ({n}/{MAX_RESTARTS})")
            if name.startswith("worker"):
                i = int(name.split()[1])
                self.worker_procs[i] = self._start_worker(i)
            else:
                obj.stop()
                obj.start(timeout_s=120)
            self.write_state()

    # -- stop -------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop the dashboard, workers, tiled, Redis and PostgreSQL (in that order); forget the state file."""
        if self.dashboard is not None:
            with contextlib.suppress(Exception):
                self.dashboard.stop()
        for w in self.worker_procs:
            with contextlib.suppress(Exception):
                w.stop()
        for obj in (self.server, self.redis, self.postgres):
            if obj is not None:
                with contextlib.suppress(Exception):
                    obj.stop()
        state = read_state(self.data_dir)
        if state is not None and state.get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                _state_file(self.data_dir).unlink()

    def __enter__(self) -> Deployment:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- report -----------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """What runs where (no key, no password)."""
        info: dict[str, Any] = {
            "profile": self.profile,
            "pid": os.getpid(),
            "data_dir": str(self.data_dir),
            "tiled_uri": self.server.uri if self.server else None,
            "tiled_port": self.server.port if self.server else None,
            "tiled_pid": self.server.process.pid if self._alive(self.server) else None,
            "catalog": "sqlite:" + str(self.data_dir / "catalog.db"),
            "streaming_cache": "memory",
            "workers": [
                {"pid": w.process.pid if self._alive(w) else None,
                 "shard": list(w.shard) if getattr(w, "shard", None) else None}
                for w in self.worker_procs
            ],
            "dashboard_url": self.dashboard.url if self.dashboard is not None else None,
            "restarts": dict(self.restarts),
            "logs": str(self.data_dir / "logs"),
        }
        if self.postgres is not None:
            info.update(
                catalog=f"postgresql://{self.postgres.user}@127.0.0.1:{self.postgres.port}/{CATALOG_DB}",
                auth_db=f"postgresql://{self.postgres.user}@127.0.0.1:{self.postgres.port}/{AUTH_DB}",
                tables=f"postgresql://{self.postgres.user}@127.0.0.1:{self.postgres.port}/{TABLES_DB}",
                postgres_port=self.postgres.port,
                postgres_pid=self.postgres.process.pid if self._alive(self.postgres) else None,
                postgres_dir=str(self.postgres.data_dir),
            )
        if self.redis is not None:
            info.update(
                streaming_cache=self.redis.url,
                redis_port=self.redis.port,
                redis_pid=self.redis.process.pid if self._alive(self.redis) else None,
            )
        return info

    def write_state(self) -> None:
        path = _state_file(self.data_dir)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.info(), indent=2) + "\n")
        tmp.replace(path)


def read_state(data_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The ``DIR/deploy.json`` of a deployment (possibly stale), or None."""
    try:
        return json.loads(_state_file(data_dir).read_text())
    except (FileNotFoundError, ValueError):
        return None


def _tiled_healthy(port: int | None) -> bool:
    return bool(port) and http_ok(port, "/healthz", timeout_s=2.0)


def _dashboard_healthy(url: str) -> bool:
    import httpx

    try:
        # the page itself would open a Bokeh session: ask for its (static) BokehJS instead
        return httpx.head(url.rstrip("/") + "/static/js/bokeh.min.js", timeout=5.0, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def _redis_healthy(port: int | None) -> bool:
    from strainstream.services import redis_ping

    return bool(port) and redis_ping(port)


def _postgres_healthy(port: int | None) -> bool:
    import subprocess

    from strainstream.services import ServiceError, find_postgres_bin

    if not port:
        return False
    try:
        exe = find_postgres_bin() / "pg_isready"
    except ServiceError:
        return False
    r = subprocess.run([str(exe), "-q", "-h", "127.0.0.1", "-p", str(port), "-t", "2"],
                       capture_output=True)
    return r.returncode == 0


def status(data_dir: str | os.PathLike) -> dict[str, Any]:
    """Check every component recorded in ``DIR/deploy.json``; ``ok`` is True when all answer."""
    state = read_state(data_dir)
    if state is None:
        raise DeployError(f"no deployment runs on {Path(data_dir).resolve()} (no deploy.json); "
                          f"start one with `{PROG} up --data-dir {data_dir}`")
    checks: dict[str, bool] = {"launcher": _pid_alive(state.get("pid")),
                               "tiled": _tiled_healthy(state.get("tiled_port"))}
    if state.get("profile") == "scaleout":
        checks["postgres"] = _postgres_healthy(state.get("postgres_port"))
        checks["redis"] = _redis_healthy(state.get("redis_port"))
    for i, w in enumerate(state.get("workers", [])):
        checks[f"worker {i}"] = _pid_alive(w.get("pid"))
    if state.get("dashboard_url"):
        checks["dashboard"] = _dashboard_healthy(state["dashboard_url"])
    return {**state, "checks": checks, "ok": all(checks.values())}
