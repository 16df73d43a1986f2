"""The embedded tiled server: configuration, start/stop, access control, and how clients find it.

Layout of a data directory (everything strainstream keeps lives here)::

    DIR/tiled.yml          the tiled server configuration written by :func:`write_config` (no secrets)
    DIR/catalog.db         SQLite catalog (metadata, structure, data sources)
    DIR/authn.db           tiled's authentication database: principals and *hashed* API keys
    DIR/data/              tiled-managed array storage (zarr)
    DIR/tables.duckdb      appendable tables (event rows, derived results); the scale-out
                           profile keeps them in PostgreSQL instead (``tables_uri``)
    DIR/detectors/         HDF5 files written by the detectors (readable storage)
    DIR/.api_key           the writer API key (mode 0600) unless one is given
    DIR/.admin_key         the key-management API key (mode 0600) unless one is given
    DIR/server.json        URI and pid of the running server (removed on stop)
    DIR/logs/              server, worker and IOC logs

Access control
--------------
tiled runs in its multi-user mode: an authentication provider is configured (so tiled keeps
principals and scoped API keys in ``authn.db``), but it is a
``DictionaryAuthenticator`` with no users, so nobody can log in with a password: API keys are
the only credential, and anonymous requests get no scope at all (HTTP 401).

Before the server starts, :class:`TiledServer` initialises ``authn.db`` with tiled's own
schema and ORM (``initialize_database``, alembic stamp, ``Role``/``Principal``/``APIKey``) and
sets up three service principals (identity provider ``strainstream``), each with a role of
its own, so that no key, nor any key minted from it, can exceed what its holder is for:

- ``writer`` (role ``strainstream-writer``: read, write, create, register, delete, metrics,
  webhooks — what single-user tiled granted): the **writer key**, resolved as before
  (explicit ``api_key``, ``$STRAINSTREAM_API_KEY``, ``DIR/.api_key`` created 0600), is
  registered for it. Writers (RunEngine, workers) use it. tiled cannot take an arbitrary
  string as a key in multi-user mode (it stores the SHA-256 of the key's *bytes*): a
  user-chosen key must be hexadecimal, at least 32 digits. When the writer key changes,
  the previous one is revoked at the next start.
- ``viewer`` (role ``strainstream-viewer``: ``read:metadata``, ``read:data``): holds the
  **read-only keys** that ``strainstream keys create --read-only`` (:mod:`strainstream.keys`)
  mints through tiled's admin API.
- ``admin`` (role ``strainstream-admin``: manage principals and keys, nothing with data):
  the **admin key** (``admin_key``, ``$STRAINSTREAM_ADMIN_KEY``, ``DIR/.admin_key`` 0600)
  is registered for it; ``strainstream keys`` uses it.

Writer and viewer roles also carry ``create:apikeys``/``revoke:apikeys``: tiled's websocket
client mints a short-lived key of its own principal for every subscription (and revokes it
once connected). A viewer can therefore follow live data, and mint only read-only keys.

Anonymous requests get no scope (HTTP 401), reads included; writes with a read-only key
get HTTP 401. Keys never appear in ``tiled.yml``, on a command line or in a log: the key
bootstrap reads them on stdin, and the server's environment does not carry them. Every
request costs tiled an API-key lookup (and a ``latest_activity`` update) in ``authn.db``
(see benchmarks/bench_latency.py for the event → result latency).

:func:`open_offline` reads the catalog in-process without any key: whoever can read the data
directory's files can read the data anyway.

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
    "ADMIN_SCOPES",
    "READ_ONLY_SCOPES",
    "WRITER_SCOPES",
    "admin_key_for",
    "auth_db_uri_for",
    "bootstrap_auth",
    "check_key",
    "write_key_file",
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
ADMIN_KEY_ENV = "STRAINSTREAM_ADMIN_KEY"
#: tiled authentication provider (and identity provider name of strainstream's principals)
AUTH_PROVIDER = "strainstream"
#: identities (provider ``strainstream``) of the three principals the server start sets up
WRITER_IDENTITY, VIEWER_IDENTITY, ADMIN_IDENTITY = "writer", "viewer", "admin"
#: tiled's websocket client mints (and revokes) a short-lived key of its own principal for
#: every subscription, so every key that may follow live data needs these two scopes
_WS_SCOPES = ("create:apikeys", "revoke:apikeys")
#: what a writer key may do: everything single-user tiled allowed, plus subscribing
WRITER_SCOPES = (
    "read:metadata", "read:data", "write:metadata", "write:data", "create:node", "register",
    "delete:revision", "delete:node", "metrics", "read:webhooks", "write:webhooks", *_WS_SCOPES,
)
#: what a viewer's key may do: read and subscribe (the keys it can mint are read-only too)
READ_ONLY_SCOPES = ("read:metadata", "read:data", *_WS_SCOPES)
#: what the admin key may do: manage principals and keys, read metadata, nothing else
ADMIN_SCOPES = ("read:metadata", "admin:apikeys", "read:principals", "write:principals")
#: role of each principal (name, scopes). A key never has more than its principal's role,
#: and a key minted by a key holder ("inherit") gets the role's scopes: hence one role each.
_ROLES = {
    WRITER_IDENTITY: ("strainstream-writer", WRITER_SCOPES),
    VIEWER_IDENTITY: ("strainstream-viewer", READ_ONLY_SCOPES),
    ADMIN_IDENTITY: ("strainstream-admin", ADMIN_SCOPES),
}
#: notes of the two keys the server start registers (a new key under the same note replaces it)
WRITER_KEY_NOTE = "strainstream writer key (server start)"
ADMIN_KEY_NOTE = "strainstream admin key (server start)"
_MIN_KEY_HEX_DIGITS = 32


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


def check_key(key: str, what: str = "API key") -> str:
    """Return ``key`` stripped if tiled can use it in multi-user mode, else raise :class:`ServerError`.

    tiled stores the SHA-256 of the key's bytes, so a key must be hexadecimal; at least
    32 digits (128 bits).
    """
    key = key.strip()
    try:
        bytes.fromhex(key)
    except ValueError:
        ok = False
    else:
        ok = len(key) >= _MIN_KEY_HEX_DIGITS
    if not ok:
        raise ServerError(
            f"the {what} must be at least {_MIN_KEY_HEX_DIGITS} hexadecimal digits "
            "(make one with `openssl rand -hex 32`)"
        )
    return key


def _key_from(
    data_dir: str | os.PathLike, key: str | None, env: str, filename: str, create: bool, what: str,
    option: str,
) -> str:
    if key:
        return key
    value = os.environ.get(env)
    if value:
        return value
    path = Path(data_dir) / filename
    if path.exists():
        return path.read_text().strip()
    if not create:
        raise ServerError(
            f"no {what}: pass {option}, set ${env}, or use the data directory "
            f"the server was started with (no {path})"
        )
    key = secrets.token_hex(24)
    write_key_file(path, key)
    return key


def write_key_file(path: str | os.PathLike, key: str) -> Path:
    """Write ``key`` to a new file readable by its owner only (mode 0600; refuses to overwrite)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ServerError(f"{path} exists; not overwriting a key file") from None
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return path


def api_key_for(data_dir: str | os.PathLike, api_key: str | None = None, create: bool = True) -> str:
    """Resolve the API key: explicit argument, then ``$STRAINSTREAM_API_KEY``, then ``DIR/.api_key``.

    With ``create=True`` a new random key is written to ``DIR/.api_key`` (mode 0600) when
    none exists. Keys are never printed or logged.
    """
    return _key_from(data_dir, api_key, API_KEY_ENV, ".api_key", create, "API key", "--api-key")


def admin_key_for(data_dir: str | os.PathLike, admin_key: str | None = None, create: bool = True) -> str:
    """Resolve the admin (key-management) key: argument, ``$STRAINSTREAM_ADMIN_KEY``, ``DIR/.admin_key``.

    With ``create=True`` a new random key is written to ``DIR/.admin_key`` (mode 0600).
    """
    return _key_from(data_dir, admin_key, ADMIN_KEY_ENV, ".admin_key", create, "admin key", "--admin-key")


def auth_db_uri_for(data_dir: str | os.PathLike, auth_db_uri: str | None = None) -> str:
    """The authentication database: ``auth_db_uri`` if given, else SQLite ``DIR/authn.db``."""
    return auth_db_uri or f"sqlite:///{Path(data_dir).resolve() / 'authn.db'}"


def write_config(
    data_dir: str | os.PathLike,
    *,
    port: int,
    api_key: str,
    cache_uri: str = "memory",
    readable_storage: list[str] | None = None,
    catalog_uri: str | None = None,
    auth_db_uri: str | None = None,
    tables_uri: str | None = None,
) -> Path:
    """Write ``DIR/tiled.yml`` for an embedded server and create the directory layout.

    No key is written into the file: tiled looks API keys up (hashed) in the authentication
    database, which :class:`TiledServer` initialises before it starts the server.

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
    auth_db_uri : str, optional
        SQLAlchemy URI of tiled's authentication database (principals, hashed API keys).
        None (default): SQLite ``DIR/authn.db``. Name passwords as ``${ENV_VAR}``: tiled and
        :class:`TiledServer` expand them, so the file holds no secret.
    tables_uri : str, optional
        Where appendable tables (event rows, derived results) are stored: an ADBC URI,
        ``postgresql://USER@HOST:PORT/DB?passfile=FILE`` in the scale-out profile. None
        (default) keeps the embedded DuckDB file ``DIR/tables.duckdb``. tiled shares one
        DuckDB connection between all its threads; under concurrent appends from several
        writers and workers that connection fails ("No active transaction") or stalls, so
        several writers should use PostgreSQL.
    """
    if not api_key:
        raise ServerError("an API key is required: writes to the server must be authenticated")
    root = Path(data_dir).resolve()
    for sub in ("data", "detectors", "logs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    readable = [str(detector_dir(root))] + [str(Path(p).resolve()) for p in readable_storage or []]
    config = {
        "authentication": {
            # multi-user mode: API keys with scopes, kept hashed in the database below.
            # The provider has no users, so nobody can log in with a password.
            "providers": [
                {
                    "provider": AUTH_PROVIDER,
                    "authenticator": "tiled.authenticators:DictionaryAuthenticator",
                    "args": {"users_to_passwords": {}},
                }
            ],
            "allow_anonymous_access": False,
        },
        "database": {"uri": auth_db_uri_for(root, auth_db_uri), "init_if_not_exists": False},
        "trees": [
            {
                "path": "/",
                "tree": "catalog",
                "args": {
                    "uri": catalog_uri or f"sqlite:///{root / 'catalog.db'}",
                    "init_if_not_exists": True,
                    "writable_storage": [str(root / "data"),
                                         tables_uri or f"duckdb:///{root / 'tables.duckdb'}"],
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


def _redacted(uri: str) -> str:
    """``uri`` without its password (for messages)."""
    from sqlalchemy.engine import make_url

    try:
        return str(make_url(uri)._replace(password="[redacted]" if make_url(uri).password else None))
    except Exception:
        return "the authentication database"


async def _ensure_principal(db, identity: str):
    """The service principal with ``identity`` holding exactly its role of :data:`_ROLES`."""
    from sqlalchemy.future import select
    from sqlalchemy.orm import selectinload
    from tiled.authn_database import orm

    role_name, scopes = _ROLES[identity]
    role = (await db.execute(select(orm.Role).filter(orm.Role.name == role_name))).scalar()
    if role is None:
        role = orm.Role(name=role_name, description=f"strainstream {identity}", scopes=list(scopes))
        db.add(role)
    elif list(role.scopes) != list(scopes):
        role.scopes = list(scopes)
    found = (
        await db.execute(
            select(orm.Identity)
            .options(selectinload(orm.Identity.principal).selectinload(orm.Principal.roles))
            .filter(orm.Identity.provider == AUTH_PROVIDER)
            .filter(orm.Identity.id == identity)
        )
    ).scalar()
    if found is None:
        principal = orm.Principal(type="service", roles=[role])
        db.add(principal)
        await db.flush()
        db.add(orm.Identity(provider=AUTH_PROVIDER, id=identity, principal_id=principal.id))
    else:
        principal = found.principal
        if [r.name for r in principal.roles] != [role_name]:
            principal.roles = [role]
    await db.commit()
    return principal


async def _init_auth_db(uri: str, keys: list[tuple[str, str, str]]) -> bool:
    """Create (or check) tiled's authentication database, its principals, and ``keys``.

    Runs in a child process (see :func:`bootstrap_auth`). Each ``(key, identity, note)`` is
    stored for the principal with that identity with its role's scopes; an older key with the
    same note is revoked. Returns True when the database was new (to be stamped).
    """
    import hashlib

    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.future import select
    from tiled.alembic_utils import DatabaseUpgradeNeeded, UninitializedDatabase, check_database
    from tiled.authn_database import orm
    from tiled.authn_database.core import (
        ALL_REVISIONS,
        REQUIRED_REVISION,
        initialize_database,
        purge_expired,
    )
    from tiled.utils import ensure_specified_sql_driver

    engine = create_async_engine(ensure_specified_sql_driver(uri))
    fresh = False
    try:
        try:
            await check_database(engine, REQUIRED_REVISION, ALL_REVISIONS)
        except UninitializedDatabase:
            await initialize_database(engine)
            fresh = True
        except DatabaseUpgradeNeeded:
            raise ServerError(
                f"the authentication database {_redacted(uri)} was made by an older tiled: back it "
                "up, then run `tiled admin upgrade-database URI`"
            ) from None
        async with AsyncSession(engine, autoflush=False, expire_on_commit=False) as db:
            # expired keys (e.g. the websocket client's short-lived ones left by killed
            # processes) count against tiled's limit of 100 keys per principal
            await purge_expired(db, orm.APIKey)
            principals = {identity: await _ensure_principal(db, identity) for identity in _ROLES}
            for key, identity, note in keys:
                principal, scopes = principals[identity], list(_ROLES[identity][1])
                secret = bytes.fromhex(key)
                hashed, first_eight = hashlib.sha256(secret).digest(), secret.hex()[:8]
                rows = (
                    await db.execute(select(orm.APIKey).filter(orm.APIKey.note == note))
                ).unique().scalars().all()
                current = False
                for row in rows:
                    if (row.hashed_secret == hashed and row.principal_id == principal.id
                            and list(row.scopes) == scopes):
                        current = True
                    else:
                        await db.delete(row)  # a replaced key: revoke it
                if not current:
                    db.add(orm.APIKey(principal_id=principal.id, note=note, scopes=scopes,
                                      first_eight=first_eight, hashed_secret=hashed))
                try:
                    await db.commit()
                except IntegrityError:
                    raise ServerError(
                        f"a key given for '{note}' is already registered for another use; "
                        "choose different keys for writers, viewers and key management"
                    ) from None
    finally:
        await engine.dispose()
    return fresh


def _auth_bootstrap_main() -> int:
    """Child-process entry of :func:`bootstrap_auth`: a JSON request on stdin, errors on stderr."""
    import asyncio

    request = json.loads(sys.stdin.read())
    uri = request["uri"]
    try:
        fresh = asyncio.run(_init_auth_db(uri, [tuple(k) for k in request["keys"]]))
        if fresh:
            from tiled.alembic_utils import stamp_head
            from tiled.authn_database.alembic_constants import (
                ALEMBIC_DIR,
                ALEMBIC_INI_TEMPLATE_PATH,
            )
            from tiled.utils import ensure_specified_sql_driver

            stamp_head(ALEMBIC_INI_TEMPLATE_PATH, ALEMBIC_DIR, ensure_specified_sql_driver(uri))
    except ServerError as exc:
        print(exc, file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - reported as one line to the parent
        print(f"cannot prepare the authentication database {_redacted(uri)}: "
              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
        return 2
    return 0


def bootstrap_auth(auth_db_uri: str, keys: list[tuple[str, str, str]], timeout_s: float = 120.0) -> None:
    """Initialise tiled's authentication database and register ``(key, identity, note)`` keys.

    ``identity`` is ``"writer"``, ``"viewer"`` or ``"admin"``: the key gets that principal's
    scopes (:data:`WRITER_SCOPES`, :data:`READ_ONLY_SCOPES`, :data:`ADMIN_SCOPES`).

    Done in a child Python process (tiled's alembic stamping wants its own event loop and
    thread; SQLite dislikes sharing): the keys travel on its stdin, never on a command line.
    ``${VAR}`` in the URI is expanded from the environment.
    """
    uri = os.path.expandvars(auth_db_uri)
    request = {"uri": uri, "keys": [list(k) for k in keys]}
    code = "import sys; from strainstream.server import _auth_bootstrap_main as m; sys.exit(m())"
    try:
        result = subprocess.run([sys.executable, "-c", code], input=json.dumps(request),
                                capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ServerError(f"preparing the authentication database took over {timeout_s:.0f} s") from None
    if result.returncode != 0:
        lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
        raise ServerError(lines[-1] if lines else
                          f"preparing the authentication database failed (exit {result.returncode})")
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if path.exists():
            path.chmod(0o600)


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
    ``DIR/logs/tiled.log``. ``api_key`` is the writer key and ``admin_key`` the key-management
    key (both resolved as described in the module docstring); ``auth_db_uri`` names tiled's
    authentication database (default SQLite ``DIR/authn.db``); ``catalog_uri`` and
    ``tables_uri`` move the catalog and the appendable tables out of the data directory (see
    :func:`write_config`).
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
        self.api_key = check_key(api_key_for(self.data_dir, api_key), "API key")
        self.admin_key = check_key(admin_key_for(self.data_dir, admin_key), "admin key")
        if self.admin_key.lower() == self.api_key.lower():
            raise ServerError("the admin key must differ from the writer API key")
        self.auth_db_uri = auth_db_uri_for(self.data_dir, auth_db_uri)
        self.cache_uri = cache_uri
        self.readable_storage = readable_storage
        self.catalog_uri = catalog_uri
        self.tables_uri = tables_uri
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
            auth_db_uri=self.auth_db_uri,
            tables_uri=self.tables_uri,
        )
        bootstrap_auth(self.auth_db_uri, [(self.api_key, WRITER_IDENTITY, WRITER_KEY_NOTE),
                                          (self.admin_key, ADMIN_IDENTITY, ADMIN_KEY_NOTE)])
        # the server needs no key: keep them out of its environment
        env = {k: v for k, v in os.environ.items()
               if k not in (API_KEY_ENV, ADMIN_KEY_ENV, "TILED_SINGLE_USER_API_KEY")}
        log = open(self.data_dir / "logs" / "tiled.log", "ab")  # noqa: SIM115 (owned by the child)
        cmd = [sys.executable, "-m", self.serve_module, "serve", "config", str(config)]
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

    if not api_key:
        raise ServerError(
            f"no API key for the tiled server at {uri}: pass --api-key or set ${API_KEY_ENV} "
            "(a read-only key from `strainstream keys create --read-only` is enough to read)"
        )
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

    Uses the ``DIR/tiled.yml`` the server was started with, minus its authentication: no key
    is needed, as whoever reads the directory's files can read the data anyway (and the
    authentication database, possibly on another host, is neither needed nor touched).
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
    from tiled.config import Authentication, parse_configs
    from tiled.server.app import build_app_from_config

    api_key = secrets.token_hex(32)  # in-process only, dies with this client
    logging.getLogger("tiled.server.app").setLevel(logging.WARNING)  # it sets INFO on import
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), \
            contextlib.redirect_stdout(io.StringIO()):
        # tiled announces itself and starlette warns about its test client: not for users
        warnings.simplefilter("ignore")
        try:
            config = parse_configs(config_path)
            config.authentication = Authentication(single_user_api_key=api_key,
                                                   allow_anonymous_access=False)
            config.database = None
            app = build_app_from_config(config)
            context = Context.from_app(app, api_key=api_key)
            return from_context(context)
        except Exception as exc:  # a damaged data directory: say which, in one line
            detail = " ".join(str(exc).split())[:300]
            raise ServerError(
                f"cannot open the catalog in {root}: {type(exc).__name__}: {detail}"
            ) from exc
