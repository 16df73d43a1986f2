"""API keys and tiled's authentication database: key files, roles and scopes, the bootstrap.

Access control
--------------
tiled runs in its multi-user mode: an authentication provider is configured (so tiled keeps
principals and scoped API keys in ``authn.db``), but it is a
``DictionaryAuthenticator`` with no users, so nobody can log in with a password: API keys are
the only credential, and anonymous requests get no scope at all (HTTP 401).

Before the server starts, :class:`strainstream.server.TiledServer` initialises ``authn.db``
(:func:`bootstrap_auth`) with tiled's own schema and ORM (``initialize_database``, alembic stamp, ``Role``/``Principal``/``APIKey``) and
sets up three service principals (identity provider ``strainstream``), each with a role of
its own, so that no key, nor any key minted from it, can exceed what its holder is for:

- ``writer`` (role ``strainstream-writer``: read, write, create, register, delete, metrics,
  webhooks — what single-user tiled granted): the **writer key** (:func:`api_key_for`:
  explicit ``api_key``, ``$STRAINSTREAM_API_KEY``, ``DIR/.api_key`` created 0600), is
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

:func:`strainstream.client.open_offline` reads the catalog in-process without any key: whoever can read the data
directory's files can read the data anyway.

Nothing here imports tiled at module level.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from strainstream.config import Config, load_config
from strainstream.datadir import admin_key_path, api_key_path, auth_db_path
from strainstream.errors import ServerError

__all__ = [
    "ADMIN_IDENTITY",
    "ADMIN_KEY_ENV",
    "ADMIN_KEY_NOTE",
    "ADMIN_SCOPES",
    "API_KEY_ENV",
    "AUTH_PROVIDER",
    "READ_ONLY_SCOPES",
    "VIEWER_IDENTITY",
    "WRITER_IDENTITY",
    "WRITER_KEY_NOTE",
    "WRITER_SCOPES",
    "admin_key_for",
    "api_key_for",
    "auth_db_uri_for",
    "bootstrap_auth",
    "bootstrap_request",
    "check_key",
    "run_bootstrap",
    "write_key_file",
]

#: the variables (fields ``api_key``/``admin_key`` of :class:`strainstream.config.Config`)
#: that name the keys; named in messages, never read here
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


def _key_from(configured: str | None, path: Path, env: str, create: bool, what: str,
              option: str) -> str:
    if configured:
        return configured
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


def api_key_for(data_dir: str | os.PathLike, api_key: str | None = None, create: bool = True,
                config: Config | None = None) -> str:
    """Resolve the writer API key.

    Parameters
    ----------
    data_dir : path
        The data directory (its ``.api_key`` file).
    api_key : str, optional
        An explicit key; wins over everything.
    create : bool
        Write a new random key to ``DIR/.api_key`` (mode 0600) when none is found.
    config : Config, optional
        Where ``api_key`` (``$STRAINSTREAM_API_KEY``, the configuration file) comes from;
        default :func:`strainstream.config.load_config`, read only when ``api_key`` is not given.

    Returns
    -------
    str
        The key: ``api_key``, else ``config.api_key``, else ``DIR/.api_key``. Keys are never
        printed or logged.
    """
    if api_key:
        return api_key
    config = config or load_config()
    return _key_from(config.api_key, api_key_path(data_dir), API_KEY_ENV, create,
                     "API key", "--api-key")


def admin_key_for(data_dir: str | os.PathLike, admin_key: str | None = None, create: bool = True,
                  config: Config | None = None) -> str:
    """Resolve the admin (key-management) key: ``admin_key``, ``config.admin_key``
    (``$STRAINSTREAM_ADMIN_KEY``), ``DIR/.admin_key``.

    With ``create=True`` a new random key is written to ``DIR/.admin_key`` (mode 0600).
    ``config`` is as for :func:`api_key_for`.
    """
    if admin_key:
        return admin_key
    config = config or load_config()
    return _key_from(config.admin_key, admin_key_path(data_dir), ADMIN_KEY_ENV, create,
                     "admin key", "--admin-key")


def auth_db_uri_for(data_dir: str | os.PathLike, auth_db_uri: str | None = None) -> str:
    """The authentication database: ``auth_db_uri`` if given, else SQLite ``DIR/authn.db``."""
    return auth_db_uri or f"sqlite:///{auth_db_path(data_dir)}"


def _redacted(uri: str) -> str:
    """``uri`` without its password (for messages)."""
    from sqlalchemy.engine import make_url

    try:
        return str(make_url(uri)._replace(password="[redacted]" if make_url(uri).password else None))
    except Exception:
        return "the authentication database"


async def _ensure_schema(engine, uri: str, core, what: str, upgrade_command: str) -> bool:
    """Create tiled's tables in the database of ``engine`` when it is new (True), else check
    its schema revision (False); ``core`` is ``tiled.authn_database.core`` or
    ``tiled.catalog.core``, ``what`` names the database in messages.

    Raises
    ------
    ServerError
        The database was made by an older tiled (``upgrade_command`` says what to run).
    """
    from tiled.alembic_utils import DatabaseUpgradeNeeded, UninitializedDatabase, check_database

    try:
        await check_database(engine, core.REQUIRED_REVISION, core.ALL_REVISIONS)
    except UninitializedDatabase:
        await core.initialize_database(engine)
        return True
    except DatabaseUpgradeNeeded:
        raise ServerError(f"the {what} {_redacted(uri)} was made by an older tiled: back it up, "
                          f"then run `{upgrade_command}`") from None
    return False


def _stamp_head(alembic_constants, uri: str) -> None:
    """Stamp a database made new by :func:`_ensure_schema` with tiled's current revision."""
    from tiled.alembic_utils import stamp_head
    from tiled.utils import ensure_specified_sql_driver

    stamp_head(alembic_constants.ALEMBIC_INI_TEMPLATE_PATH, alembic_constants.ALEMBIC_DIR,
               ensure_specified_sql_driver(uri))


def _prepare_failed(what: str, uri: str, exc: Exception) -> ServerError:
    """One line for a database that could not be prepared (password redacted)."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return ServerError(f"cannot prepare the {what} {_redacted(uri)}: {type(exc).__name__}: {first}")


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
    from tiled.authn_database import core, orm
    from tiled.utils import ensure_specified_sql_driver

    engine = create_async_engine(ensure_specified_sql_driver(uri))
    try:
        fresh = await _ensure_schema(engine, uri, core, "authentication database",
                                     "tiled admin upgrade-database URI")
        async with AsyncSession(engine, autoflush=False, expire_on_commit=False) as db:
            # expired keys (e.g. the websocket client's short-lived ones left by killed
            # processes) count against tiled's limit of 100 keys per principal
            await core.purge_expired(db, orm.APIKey)
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


def bootstrap_request(auth_db_uri: str, keys: list[tuple[str, str, str]]) -> bytes:
    """The request :func:`run_bootstrap` takes (JSON bytes: it travels on a child's stdin)."""
    return json.dumps({"uri": os.path.expandvars(auth_db_uri), "keys": [list(k) for k in keys]}).encode()


def run_bootstrap(request: bytes | str) -> None:
    """Prepare the authentication database as :func:`bootstrap_request` asks, in this process.

    Call it from a process of its own with no event loop running (tiled's alembic stamping
    wants its own loop and thread): the child of :func:`bootstrap_auth`, or the server's own
    process before it starts (:mod:`strainstream.tiled_serve` ``--bootstrap-stdin``).

    Raises
    ------
    ServerError
        One line that names the database (password redacted) and the problem.
    """
    import asyncio

    req = json.loads(request)
    uri = req["uri"]
    try:
        if asyncio.run(_init_auth_db(uri, [tuple(k) for k in req["keys"]])):
            from tiled.authn_database import alembic_constants

            _stamp_head(alembic_constants, uri)
    except ServerError:
        raise
    except Exception as exc:
        raise _prepare_failed("authentication database", uri, exc) from None
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if path.exists():
            path.chmod(0o600)


def _auth_bootstrap_main() -> int:
    """Child-process entry of :func:`bootstrap_auth`: a JSON request on stdin, errors on stderr."""
    try:
        run_bootstrap(sys.stdin.read())
    except ServerError as exc:
        print(exc, file=sys.stderr)
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
    code = "import sys; from strainstream.auth import _auth_bootstrap_main as m; sys.exit(m())"
    try:
        result = subprocess.run([sys.executable, "-c", code], input=bootstrap_request(auth_db_uri, keys),
                                capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ServerError(f"preparing the authentication database took over {timeout_s:.0f} s") from None
    if result.returncode != 0:
        lines = [ln for ln in result.stderr.decode(errors="replace").strip().splitlines() if ln.strip()]
        raise ServerError(lines[-1] if lines else
                          f"preparing the authentication database failed (exit {result.returncode})")

