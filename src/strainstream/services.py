"""Real PostgreSQL and Redis servers as subprocesses on 127.0.0.1 (the scale-out profile).

:class:`Redis` runs Debian's ``redis-server`` with an append-only file, so a restart keeps the
data; :class:`Postgres` runs a private PostgreSQL cluster (``initdb`` on first use) with
password authentication for one role. Both keep everything in the data directory they are
given, and run under a :class:`strainstream.supervisor.Supervisor`: in their own process
group, asked to die with the thread that started them (``PR_SET_PDEATHSIG``) and stopped at
interpreter exit, so a test or a launcher that crashes leaves no server behind.

Layout of a Redis data directory::

    DIR/appendonlydir/     the append-only file (Redis persistence)
    DIR/redis.log          server log

Layout of a PostgreSQL data directory::

    DIR/pgdata/            the cluster (owned by the ``postgres`` user when we run as root)
    DIR/run/               the unix-socket directory (nothing listens outside 127.0.0.1)
    DIR/.pg_password       the generated password of the ``strainstream`` role (mode 0600)
    DIR/.pgpass            the same in libpq's password-file format (mode 0600), for
                           :meth:`Postgres.passfile_uri` URIs that carry no password
    DIR/postgres.log       server log

PostgreSQL refuses to run as root. When this process is root, ``initdb`` and ``postgres`` run
as the ``postgres`` system user, which must be able to reach ``DIR`` (every parent directory
searchable by others); otherwise :class:`ServiceError` says so.

Nothing here imports tiled, redis-py or asyncpg at module level.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import threading
from pathlib import Path

from strainstream.config import process_environment
from strainstream.errors import StrainstreamError
from strainstream.supervisor import Supervisor, find_free_port, port_open

__all__ = [
    "Postgres", "Redis", "ServiceError", "find_postgres_bin", "find_redis_server", "redis_ping",
]

REDIS_SERVER = "/usr/bin/redis-server"
POSTGRES_GLOB = "/usr/lib/postgresql/*/bin"
#: role created in every cluster (the password is generated per cluster)
PG_ROLE = "strainstream"
#: system user that runs PostgreSQL when we are root
PG_SYSTEM_USER = "postgres"


class ServiceError(StrainstreamError, RuntimeError):
    """A service cannot be found, started or used. The message says what to do."""


def find_redis_server() -> str:
    """Path of ``redis-server`` (Debian's ``/usr/bin/redis-server`` first, then ``$PATH``)."""
    for candidate in (REDIS_SERVER, shutil.which("redis-server")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ServiceError(
        "redis-server not found: install Debian's redis-server (apt-get install redis-server)"
    )


def find_postgres_bin() -> Path:
    """Directory holding ``initdb`` and ``postgres`` (the newest ``/usr/lib/postgresql/*/bin``)."""

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", Path(path).parent.name))

    for d in sorted(glob.glob(POSTGRES_GLOB), key=version, reverse=True):
        if all(os.access(Path(d) / exe, os.X_OK) for exe in ("initdb", "postgres", "pg_isready")):
            return Path(d)
    on_path = shutil.which("initdb")
    if on_path and shutil.which("postgres"):
        return Path(on_path).parent
    raise ServiceError(
        "PostgreSQL server binaries (initdb, postgres) not found in /usr/lib/postgresql/*/bin: "
        "install Debian's postgresql (apt-get install postgresql)"
    )


def redis_ping(port: int, host: str = "127.0.0.1", timeout_s: float = 1.0) -> bool:
    """True when a Redis server on ``host:port`` answers ``PING`` (raw RESP, no client library)."""
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class _Service:
    """A server subprocess under a :class:`~strainstream.supervisor.Supervisor`."""

    name = "service"
    #: signal asking for a clean shutdown (sent to the server, which stops its children)
    stop_signal = signal.SIGTERM

    def __init__(self, data_dir: str | os.PathLike, port: int | None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = int(port) if port else find_free_port()
        self.supervisor = Supervisor(
            self.name, self.log_path, stop_signal=self.stop_signal, signal_group=False,
            die_with_parent=True, stop_at_exit=True, stop_timeout_s=20.0, error=ServiceError)

    @property
    def process(self) -> subprocess.Popen | None:
        """The server's :class:`subprocess.Popen` (None before :meth:`start` and after :meth:`stop`)."""
        return self.supervisor.process

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    def _spawn(self, cmd: list[str], **kwargs) -> None:
        if port_open(self.port):
            raise ServiceError(f"{self.name}: port {self.port} on 127.0.0.1 is already in use")
        self.supervisor.start(cmd, **kwargs)

    def _wait_ready(self, ready, timeout_s: float) -> None:
        self.supervisor.wait_ready(ready, timeout_s=timeout_s,
                                   waiting_for=f"answer on 127.0.0.1:{self.port}")

    @property
    def running(self) -> bool:
        return self.supervisor.running

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the server (clean shutdown, SIGKILL of its process group after ``timeout_s``)."""
        self.supervisor.stop(timeout_s)

    def __enter__(self):
        return self.start() if not self.running else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout_s: float = 30.0):  # pragma: no cover - overridden
        raise NotImplementedError


class Redis(_Service):
    """``redis-server`` on 127.0.0.1 with append-only persistence in ``data_dir``.

    Parameters
    ----------
    data_dir : path
        Where the append-only file and ``redis.log`` live (created if missing).
    port : int, optional
        TCP port on 127.0.0.1; a free one when omitted. :meth:`restart` keeps it.
    """

    name = "redis"

    def __init__(self, data_dir: str | os.PathLike, port: int | None = None) -> None:
        super().__init__(data_dir, port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def ping(self) -> bool:
        """True when the server answers ``PING``."""
        return redis_ping(self.port)

    def start(self, timeout_s: float = 30.0) -> Redis:
        """Start the server and wait until it answers ``PING``; a running server is kept."""
        if self.running:
            return self
        exe = find_redis_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            exe,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--logfile", "",
        ]
        self._spawn(cmd, cwd=self.data_dir)
        self._wait_ready(self.ping, timeout_s)
        return self

    def restart(self, timeout_s: float = 30.0) -> None:
        """Stop (data flushed to the append-only file) and start again on the same port."""
        self.stop()
        self.start(timeout_s)


def _as_postgres_user() -> dict:
    """Popen arguments that run a child as the ``postgres`` system user when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        raise ServiceError(
            f"PostgreSQL refuses to run as root and there is no '{PG_SYSTEM_USER}' system user: "
            "install Debian's postgresql (it creates the user) or run as an ordinary user"
        ) from None
    env = process_environment({"HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name})
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [], "env": env}


def _check_reachable(path: Path, uid: int, gid: int) -> None:
    """Raise unless user ``uid`` can search every parent of ``path``."""
    for parent in reversed(path.parents):
        st = parent.stat()
        if st.st_uid == uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid == gid:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            raise ServiceError(
                f"PostgreSQL runs as the '{PG_SYSTEM_USER}' user (we are root), which cannot enter "
                f"{parent} (mode {stat.S_IMODE(st.st_mode):o}); put the data directory under a "
                "path every user may search, e.g. /srv or /var/lib"
            )


def _run_sync(coro_factory):
    """Run an asyncio coroutine to completion from sync code, even inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_factory())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(coro_factory())).result()


class Postgres(_Service):
    """A private PostgreSQL cluster on 127.0.0.1 with password authentication.

    The first :meth:`start` runs ``initdb`` in ``DIR/pgdata`` with one superuser role,
    ``strainstream``, whose generated password is kept in ``DIR/.pg_password`` (mode 0600,
    never printed). Connections need that password (``scram-sha-256``), over TCP on
    127.0.0.1 or over the unix socket in ``DIR/run``.

    Parameters
    ----------
    data_dir : path
        Where the cluster, socket, password file and log live (created if missing).
    port : int, optional
        TCP port on 127.0.0.1; a free one when omitted.
    settings : dict, optional
        Extra server settings (``postgres -c NAME=VALUE``), e.g. ``{"fsync": "off"}`` for
        throw-away test clusters.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back open transactions, then exit

    def __init__(
        self,
        data_dir: str | os.PathLike,
        port: int | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        super().__init__(data_dir, port)
        self.settings = dict(settings or {})
        self.user = PG_ROLE
        self._lock = threading.Lock()

    @property
    def cluster_dir(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def password_file(self) -> Path:
        return self.data_dir / ".pg_password"

    @property
    def password(self) -> str:
        try:
            return self.password_file.read_text().strip()
        except FileNotFoundError:
            raise ServiceError(
                f"no PostgreSQL password in {self.password_file}: start the cluster first"
            ) from None

    @property
    def passfile(self) -> Path:
        """``DIR/.pgpass`` (mode 0600): the password in libpq's format for 127.0.0.1:PORT."""
        return self.data_dir / ".pgpass"

    def uri(self, database: str, password: str | None = None, driver: str = "postgresql+asyncpg") -> str:
        """SQLAlchemy URI of ``database``.

        It contains the password: never log it. Pass ``password="${VAR}"`` for a URI to put
        in a tiled config file, which tiled expands from the server's environment. For
        configuration files prefer :meth:`passfile_uri` (tiled logs its catalog URI).
        """
        pw = self.password if password is None else password
        return f"{driver}://{self.user}:{pw}@127.0.0.1:{self.port}/{database}"

    def passfile_uri(self, database: str, driver: str = "postgresql+asyncpg") -> str:
        """SQLAlchemy URI of ``database`` without the password: asyncpg reads it from
        :attr:`passfile` (``?passfile=``), so the URI may be logged and stored."""
        return f"{driver}://{self.user}@127.0.0.1:{self.port}/{database}?passfile={self.passfile}"

    def tables_uri(self, database: str) -> str:
        """ADBC/libpq URI of ``database`` for tiled's appendable tables (``writable_storage``).

        The role is a query parameter, not ``user@host``: tiled 0.2.20 splits ``user@`` off the
        URI and puts it back as ``user:None@`` when there is no password. libpq reads the
        password from :attr:`passfile`.
        """
        return f"postgresql://127.0.0.1:{self.port}/{database}?user={self.user}&passfile={self.passfile}"

    def _write_passfile(self) -> None:
        tmp = self.passfile.with_name(".pgpass.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"127.0.0.1:{self.port}:*:{self.user}:{self.password}\n")
        tmp.replace(self.passfile)

    def _prepare_dirs(self, as_user: dict) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for d, mode in ((self.cluster_dir, 0o700), (self.socket_dir, 0o700)):
            d.mkdir(exist_ok=True)
            os.chmod(d, mode)
            if as_user:
                os.chown(d, as_user["user"], as_user["group"])
        if as_user:
            _check_reachable(self.cluster_dir, as_user["user"], as_user["group"])

    def _initdb(self, bindir: Path, as_user: dict) -> None:
        if not self.password_file.exists():
            fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24) + "\n")
        # initdb reads the password from a file: a short-lived 0600 copy in the socket
        # directory (only the server's user may enter it), never on the command line
        pwfile = self.socket_dir / ".initdb_pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        if as_user:
            os.chown(pwfile, as_user["user"], as_user["group"])
        cmd = [
            str(bindir / "initdb"),
            "--pgdata", str(self.cluster_dir),
            "--username", self.user,
            "--pwfile", str(pwfile),
            "--auth", "scram-sha-256",
            "--encoding", "UTF8",
            "--locale", "C",
            "--no-instructions",
        ]
        try:
            result = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                cwd=self.cluster_dir, **as_user,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["?"]
            # leave no half-made cluster behind: the next start must run initdb again
            for child in self.cluster_dir.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
            raise ServiceError(f"initdb failed in {self.cluster_dir}: {tail[0]}")

    def _ready(self, bindir: Path) -> bool:
        r = subprocess.run(
            [str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"],
            capture_output=True,
        )
        return r.returncode == 0

    def start(self, timeout_s: float = 60.0) -> Postgres:
        """``initdb`` on first use, then start the server and wait until it accepts connections."""
        if self.running:
            return self
        bindir = find_postgres_bin()
        as_user = _as_postgres_user()
        self._prepare_dirs(as_user)
        if not (self.cluster_dir / "PG_VERSION").exists():
            self._initdb(bindir, as_user)
        # a server killed without a clean shutdown leaves its pid file: it is ours, reuse is safe
        stale = self.cluster_dir / "postmaster.pid"
        if stale.exists():
            with contextlib.suppress(ValueError, OSError):
                pid = int(stale.read_text().split()[0])
                os.kill(pid, 0)
                raise ServiceError(
                    f"a PostgreSQL server (pid {pid}) already runs on {self.cluster_dir}; stop it first"
                )
        cmd = [
            str(bindir / "postgres"),
            "-D", str(self.cluster_dir),
            "-p", str(self.port),
            "-h", "127.0.0.1",
            "-k", str(self.socket_dir),
            "-c", "logging_collector=off",
            "-c", "log_statement=none",  # never log statements: a CREATE ROLE could hold a password
        ]
        for key, value in self.settings.items():
            cmd += ["-c", f"{key}={value}"]
        self._write_passfile()
        self._spawn(cmd, cwd=self.cluster_dir, **as_user)
        self._wait_ready(lambda: self._ready(bindir), timeout_s)
        return self

    async def _execute(self, database: str, sql: str, *args):
        import asyncpg

        conn = await asyncpg.connect(
            host="127.0.0.1", port=self.port, user=self.user, password=self.password,
            database=database, timeout=30,
        )
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    def query(self, sql: str, *args, database: str = "postgres") -> list:
        """Run one SQL statement and return its rows (``asyncpg.Record`` objects)."""
        if not self.running:
            raise ServiceError("PostgreSQL is not running: call start() first")
        return _run_sync(lambda: self._execute(database, sql, *args))

    def create_database(self, name: str) -> str:
        """Create database ``name`` unless it exists; return its SQLAlchemy (asyncpg) URI."""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name):
            raise ServiceError(
                f"database name {name!r} is not a plain identifier (letters, digits, '_', ≤ 63)"
            )
        with self._lock:
            exists = self.query("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                self.query(f'CREATE DATABASE "{name}" OWNER "{self.user}"')
        return self.uri(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists (open connections are terminated)."""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name):
            raise ServiceError(f"database name {name!r} is not a plain identifier")
        self.query(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
