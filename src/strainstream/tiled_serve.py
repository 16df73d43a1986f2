"""Run tiled's server (``tiled serve ...``) with one connection per thread to DuckDB tables.

tiled 0.2.20 keeps appendable tables in a DuckDB file through a SQLAlchemy ``StaticPool``:
every request thread of the server shares one DuckDB connection, and DuckDB transactions
are per connection. Two appends or an append and a read in flight together then break each
other's transactions (``No active transaction, cannot rollback``, ``cannot commit - no
transaction is active``), an acknowledged append can be lost, and the server can stall for
good. Measured here (6 writers, 60 one-row appends each, a read every 5th append): the stock
pool hung within seconds; with a pool of separate connections, 8 writers × 150 appends:
0 errors, 0 rows lost or doubled, 14 appends/s.

DuckDB itself supports many connections to one database inside a process (MVCC; appends
never conflict), so :func:`pool_duckdb_connections` gives DuckDB storage the same
``QueuePool`` of cloned connections that tiled uses for SQLite and PostgreSQL.
:class:`strainstream.server.TiledServer` starts tiled through this module::

    python -m strainstream.tiled_serve serve config DIR/tiled.yml

PostgreSQL tables (the scale-out profile) do not need it; several tiled *processes* cannot
share a DuckDB file at all.
"""

from __future__ import annotations

import functools
import itertools
import logging
import sys
from typing import Any

__all__ = ["API_KEY_CACHE_S", "TESTED_TILED", "cache_api_key_lookups", "chain_dispatches", "init_catalogs",
           "join_asset_loads", "join_node_loads", "main", "memoize_fastapi_dependants",
           "merge_http_middlewares", "merged_middleware", "pool_duckdb_connections", "reuse_node_aliases"]

logger = logging.getLogger(__name__)

#: the tiled release whose ``tiled.storage.SQLStorage`` this module was written against
TESTED_TILED = "0.2.20"

#: how long a server process trusts a validated API key without asking the database again (s)
API_KEY_CACHE_S = 5.0

#: connections kept per DuckDB file, and how many more under a burst
POOL_SIZE = 5
MAX_OVERFLOW = 10


def pool_duckdb_connections() -> bool:
    """Give tiled's DuckDB storage a pool of separate connections (one per concurrent request).

    Returns True when applied. Refuses (returns False, with a warning) on a tiled whose
    ``SQLStorage`` does not look like the one it was written for, rather than guess.
    """
    import sqlalchemy.pool
    import tiled
    import tiled.storage as storage

    cls = storage.SQLStorage
    current = cls.__dict__.get("_connection_pool")
    if getattr(current, "func", None) is not None and getattr(current.func, "_strainstream", False):
        return True
    if tiled.__version__ != TESTED_TILED or not isinstance(current, functools.cached_property):
        logger.warning("tiled %s: DuckDB connection pooling not applied (written for tiled %s); "
                       "concurrent appends to DuckDB tables may fail", tiled.__version__, TESTED_TILED)
        return False

    def _connection_pool(self):
        creator = self._adbc_connection.adbc_clone
        if ":memory:" in self.uri:  # an in-memory database lives in its one connection
            return sqlalchemy.pool.StaticPool(creator)
        if self.dialect == "duckdb":
            return sqlalchemy.pool.QueuePool(creator, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW)
        return current.func(self)  # SQLite, PostgreSQL: tiled's own pool (and its metrics)

    _connection_pool._strainstream = True
    prop = functools.cached_property(_connection_pool)
    prop.__set_name__(cls, "_connection_pool")
    cls._connection_pool = prop
    return True


def memoize_fastapi_dependants() -> bool:
    """Build each FastAPI dependency graph once, not on every request.

    tiled's app sets ``dependency_overrides`` (settings, root tree, ...). With any override
    present, FastAPI 0.165's ``solve_dependencies`` calls ``get_dependant`` for every
    sub-dependency of every request, which inspects signatures and type hints afresh: about
    a fifth of the server's CPU per request (profiled: 190 ``get_dependant`` calls per
    ``GET /metadata/x``). A dependant depends only on its arguments and the signature of its
    callable, so it is built once per distinct argument set and reused. Returns True when
    applied; refuses (False, with a warning) on a FastAPI whose ``get_dependant`` does not
    take the arguments this was written for.
    """
    import inspect

    import fastapi.dependencies.utils as fdu

    current = fdu.get_dependant
    if getattr(current, "_strainstream", False):
        return True
    expected = {"path", "call", "name", "own_oauth_scopes", "parent_oauth_scopes", "use_cache", "scope",
                "concurrency"}
    if set(inspect.signature(current).parameters) != expected:
        logger.warning("FastAPI's get_dependant has another signature: dependency graphs are built "
                       "per request (slower)")
        return False
    cache: dict[tuple, Any] = {}

    @functools.wraps(current)
    def get_dependant(*, path, call, name=None, own_oauth_scopes=None, parent_oauth_scopes=None,
                      use_cache=True, scope=None, concurrency=None):
        kwargs = dict(path=path, call=call, name=name, own_oauth_scopes=own_oauth_scopes,
                      parent_oauth_scopes=parent_oauth_scopes, use_cache=use_cache, scope=scope,
                      concurrency=concurrency)
        try:
            key = (path, call, name, tuple(own_oauth_scopes or ()), tuple(parent_oauth_scopes or ()),
                   use_cache, scope, concurrency)
            hash(key)
        except TypeError:  # an unhashable callable: build it as FastAPI would
            return current(**kwargs)
        found = cache.get(key)
        if found is None:
            found = cache[key] = current(**kwargs)
        return found

    get_dependant._strainstream = True
    fdu.get_dependant = get_dependant
    return True


def reuse_node_aliases() -> bool:
    """Build the catalog's path look-up from the same ``Node`` aliases on every request.

    Every request naming a node resolves its path with tiled's
    ``catalog.adapter.node_from_segments``, which makes a fresh ``aliased(orm.Node)`` per path
    segment. SQLAlchemy then builds each alias's column proxies (and their foreign keys' event
    listeners) on first use: about a fifth of the server's CPU per request (profiled: 4–6 ms of
    a 27 ms table append). An alias is an immutable description of "the node table under
    another name"; one statement may not use the same alias twice, but separate statements
    may share it. So the aliases are made once per path depth and reused; the statement (the
    same SQL, the same joins and conditions) is built as before. Returns True when applied;
    False (with a warning) on a tiled whose function does not look like the one it was written
    for.
    """
    import inspect

    import tiled
    import tiled.catalog.adapter as ca
    from sqlalchemy import select
    from sqlalchemy.orm import aliased

    current = getattr(ca, "node_from_segments", None)
    if getattr(current, "_strainstream", False):
        return True
    if (tiled.__version__ != TESTED_TILED or current is None
            or list(inspect.signature(current).parameters) != ["segments", "root_id"]):
        logger.warning("tiled %s: node path look-ups build fresh aliases per request (written for "
                       "tiled %s)", tiled.__version__, TESTED_TILED)
        return False
    orm = ca.orm
    aliases: dict[int, tuple] = {}

    @functools.wraps(current)
    def node_from_segments(segments, root_id=0):
        n = len(segments)
        found = aliases.get(n)
        if found is None:
            found = aliases[n] = (*(aliased(orm.Node) for _ in range(n)), orm.Node)
        statement = select(found[-1]).select_from(found[0]).where(found[0].id == root_id)
        for i, segment in enumerate(segments):
            parent, child = found[i], found[i + 1]
            statement = statement.join(child, child.parent == parent.id).where(child.key == segment)
        return statement

    node_from_segments._strainstream = True
    ca.node_from_segments = node_from_segments
    return True


def _patch_method(name: str, sha256: str, what: str, make) -> bool:
    """Replace tiled's ``CatalogNodeAdapter.<name>`` by ``make(current)`` (a function given
    tiled's own method), only when it is the one the patch was written against (tiled 0.2.20,
    its source's ``sha256``). Returns True when applied (now or before); False, with a warning
    saying ``what`` then happens, when tiled's method is another."""
    import hashlib
    import inspect

    import tiled
    import tiled.catalog.adapter as ca

    cls = ca.CatalogNodeAdapter
    current = cls.__dict__.get(name)
    if getattr(current, "_strainstream", False):
        return True
    digest = hashlib.sha256(inspect.getsource(current).encode()).hexdigest() if current else None
    if tiled.__version__ != TESTED_TILED or digest != sha256:
        logger.warning("tiled %s: %s (written for tiled %s)", tiled.__version__, what, TESTED_TILED)
        return False
    patched = functools.wraps(current)(make(current))
    patched._strainstream = True
    setattr(cls, name, patched)
    return True


#: sha256 of the source of tiled 0.2.20's ``CatalogNodeAdapter.lookup_adapter``, which
#: :func:`join_node_loads` repeats with joined loads
_LOOKUP_ADAPTER_SHA256 = "49f72db48ef45fd5ebbb7c9c71368aee7c5f9dc7f7681472517404292ab093bf"


def join_node_loads() -> bool:
    """Load a looked-up node with its data sources, their structures and its access tags in
    one SQL statement instead of four.

    tiled 0.2.20's ``CatalogNodeAdapter.lookup_adapter`` selects the node, then loads its
    data sources, their structures and the node's access tags with one more ``SELECT ... IN``
    each (SQLAlchemy ``selectin`` loading); with access control on, a path is looked up in two
    steps (the first segment, then the rest), so a request on ``/uid/primary/internal`` issues
    seven statements before its own work. Each costs SQLAlchemy ~0.7 ms of Python. This looks
    the node up with the same statement and conditions but ``joinedload`` options (LEFT OUTER
    JOINs: the same rows, de-duplicated by ``unique()``); a path not found (possibly inside a
    file) goes to tiled's own method, unchanged. Returns True when applied; False (with a
    warning) when tiled's method is not the one this was written against.
    """
    import tiled.catalog.adapter as ca
    from sqlalchemy.orm import joinedload

    orm = ca.orm

    def make(current):
        async def lookup_adapter(self, segments):
            if not segments:
                return self
            if (self.conditions or self.access_filters) and len(segments) > 1:
                first_level = await self.lookup_adapter(segments[:1])
                assert not first_level.conditions  # (as tiled's)
                return await first_level.lookup_adapter(segments[1:])
            statement = ca.node_from_segments(segments, root_id=self.node.id)
            statement = self.apply_conditions(statement)
            statement = statement.options(
                joinedload(orm.Node.data_sources).joinedload(orm.DataSource.structure),
                joinedload(orm.Node.access_tags))
            async with self.context.session() as db:
                node = (await db.execute(statement)).unique().scalar()
            if node is None:  # not in the catalog; maybe inside a file: tiled's own way
                return await current(self, segments)
            return ca.STRUCTURES[node.structure_family](self.context, node)

        return lookup_adapter

    return _patch_method("lookup_adapter", _LOOKUP_ADAPTER_SHA256,
                         "node look-ups load data sources and access tags with separate statements", make)


#: sha256 of the source of tiled 0.2.20's ``CatalogNodeAdapter.data_sources``
_DATA_SOURCES_SHA256 = "9ea9e208baffb51c0197430dca107a0346b1bf6035fcff3871eead940a51fad0"


def join_asset_loads() -> bool:
    """Load a node's data sources with their assets in two SQL statements instead of four.

    tiled 0.2.20's ``CatalogNodeAdapter.data_sources(include_assets=True)`` (every table
    append, data-source update, node creation and ``include_data_sources`` read goes through
    it) selects the data sources, then their structures, their asset associations and the
    assets with one more ``SELECT ... IN`` each. This selects the data sources joined to their
    asset associations and assets (LEFT OUTER JOINs, in the relationship's order: parameter,
    num) and the structures as before (once per data source, not once per asset: a file
    series of many assets does not repeat its structure). ``include_assets=False`` is
    tiled's own code. Returns True when applied; False (with a warning) when tiled's method
    is not the one this was written against.
    """
    import tiled.catalog.adapter as ca
    from sqlalchemy import select
    from sqlalchemy.orm import joinedload, selectinload
    from tiled.server.schemas import DataSource

    orm = ca.orm

    def make(current):
        async def data_sources(self, include_assets: bool = False):
            if not include_assets:
                return await current(self, include_assets=False)
            statement = (
                select(orm.DataSource)
                .where(orm.DataSource.node_id == self.node.id)
                .order_by(orm.DataSource.id)
                .options(
                    selectinload(orm.DataSource.structure),
                    joinedload(orm.DataSource.asset_associations).joinedload(orm.DataSourceAssetAssociation.asset),
                )
            )
            async with self.context.session() as db:
                ds_orms = (await db.execute(statement)).unique().scalars().all()
            return [DataSource.from_orm(ds, include_assets=True) for ds in ds_orms]

        return data_sources

    return _patch_method("data_sources", _DATA_SOURCES_SHA256,
                         "data sources and their assets are loaded with separate statements", make)


def chain_dispatches(dispatches: list) -> Any:
    """One ``dispatch(request, call_next)`` that runs ``dispatches`` (outermost first) as
    their stacked ``BaseHTTPMiddleware`` layers would: each gets the request and a
    ``call_next`` leading to the next one (the last one's leads to the app); each can answer
    early, change the response the inner ones returned, or see their exception. The request
    object is shared (each layer would make its own on the same ASGI scope: ``state``,
    headers and cookies are the scope's either way)."""
    dispatches = list(dispatches)

    async def dispatch(request, call_next):
        async def step(i, req):
            if i == len(dispatches):
                return await call_next(req)
            return await dispatches[i](req, functools.partial(step, i + 1))
        return await step(0, request)

    dispatch.__name__ = "+".join(getattr(d, "__name__", "dispatch") for d in dispatches)
    dispatch._strainstream_chain = tuple(dispatches)
    return dispatch


def merged_middleware(stack: list) -> list:
    """``stack`` (a Starlette ``user_middleware`` list, outermost first) with each run of
    consecutive ``BaseHTTPMiddleware(dispatch=...)`` entries merged into one
    (:func:`chain_dispatches`); every other entry, and the order, kept."""
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware

    def plain(m) -> bool:
        return m.cls is BaseHTTPMiddleware and not m.args and set(m.kwargs) == {"dispatch"}

    out = []
    for mergeable, group in itertools.groupby(stack, key=plain):
        group = list(group)
        if mergeable and len(group) > 1:
            out.append(Middleware(BaseHTTPMiddleware,
                                  dispatch=chain_dispatches([m.kwargs["dispatch"] for m in group])))
        else:
            out.extend(group)
    return out


def merge_http_middlewares() -> bool:
    """Run the ``@app.middleware("http")`` functions of tiled's app in one
    ``BaseHTTPMiddleware`` layer instead of one layer each.

    tiled 0.2.20 registers six (CSRF check, client version check, cookies, Server-Timing,
    Prometheus metrics, principal logging), one after the other. Each Starlette
    ``BaseHTTPMiddleware`` layer runs the rest of the request in a new task and passes the
    response through its own memory stream. Merged (:func:`merged_middleware`), the same
    functions run in the same order on every request, with one task and one stream:
    measured in-process on ``GET /healthz``, 1.18 -> 0.57 ms per request (of the 15-20 ms a
    table append costs the server). Returns
    True when applied; False (with a warning) on another tiled.
    """
    import tiled
    import tiled.server.app as tapp

    current = tapp.build_app
    if getattr(current, "_strainstream", False):
        return True
    if tiled.__version__ != TESTED_TILED:
        logger.warning("tiled %s: its HTTP middleware layers are kept one per function (written for "
                       "tiled %s)", tiled.__version__, TESTED_TILED)
        return False

    @functools.wraps(current)
    def build_app(*args: Any, **kwargs: Any) -> Any:
        app = current(*args, **kwargs)
        app.user_middleware[:] = merged_middleware(app.user_middleware)
        return app

    build_app._strainstream = True
    tapp.build_app = build_app
    return True


def init_catalogs(config_path: str) -> list[str]:
    """Initialise the catalog database of every ``catalog`` tree of a strainstream ``tiled.yml``.

    What ``init_if_not_exists: true`` makes tiled do, but in this process before the server
    starts: tiled runs ``python -m tiled catalog init`` in a child process, which imports tiled
    again (2–3 s of every server start). :func:`strainstream.tiledconfig.write_config` with
    ``catalog_ready=True`` leaves that flag off for this. Returns the URIs made new.
    """
    import asyncio
    import os

    import yaml
    from sqlalchemy.ext.asyncio import create_async_engine
    from tiled.catalog import alembic_constants, core
    from tiled.utils import ensure_specified_sql_driver

    from strainstream.auth import _ensure_schema, _prepare_failed, _stamp_head
    from strainstream.errors import ServerError

    async def ensure(uri: str) -> bool:
        engine = create_async_engine(uri)
        try:
            return await _ensure_schema(engine, uri, core, "catalog database",
                                        "tiled catalog upgrade-database URI")
        finally:
            await engine.dispose()

    with open(config_path) as f:
        config = yaml.safe_load(f) or {}
    made = []
    for tree in config.get("trees", []):
        args = tree.get("args") or {}
        if tree.get("tree") != "catalog" or not args.get("uri"):
            continue
        uri = ensure_specified_sql_driver(os.path.expandvars(args["uri"]))
        try:
            if asyncio.run(ensure(uri)):
                _stamp_head(alembic_constants, uri)
                made.append(uri)
        except ServerError:
            raise
        except Exception as exc:  # e.g. PostgreSQL not answering: one line naming the database
            raise _prepare_failed("catalog database", uri, exc) from None
    return made


def cache_api_key_lookups(ttl_s: float = API_KEY_CACHE_S) -> bool:
    """Validate an API key against the authentication database once per ``ttl_s``, not three
    times per request.

    With authentication on, tiled 0.2.20 looks the request's key up once for the principal,
    once for the scopes and once for the access tags (each an ``APIKey`` query with four
    eager loads) and commits the key's ``latest_activity``: about 15 SQL statements of every
    request, which the RunEngine (two requests per event) and the worker pay on every event.
    This keeps each valid key's row for ``ttl_s`` seconds (never past its expiration time);
    unknown keys are not kept, so a new key works at once. A key deleted through this server
    process (``keys revoke``, tiled's ``DELETE /auth/apikey``, an expired key removed) empties
    the cache at once (an ORM ``after_delete`` event); a key revoked through *another* server
    process, or a role taken from a principal, stops working within ``ttl_s``.
    ``latest_activity`` is then updated once per ``ttl_s`` per key, not per request.
    Returns True when applied; False (with a warning) on a tiled without the hook.
    """
    import datetime
    import time

    try:
        import tiled.server.authentication as ta
        from sqlalchemy import event
        from tiled.authn_database.orm import APIKey
    except ImportError:  # pragma: no cover - tiled without the server extras
        return False
    current = getattr(ta, "lookup_valid_api_key", None)
    if current is None:
        logger.warning("tiled has no lookup_valid_api_key: API keys are looked up per request")
        return False
    if getattr(current, "_strainstream", False):
        return True
    cache: dict[bytes, tuple[float, Any]] = {}

    @functools.wraps(current)
    async def lookup_valid_api_key(db, secret: bytes):
        now = time.monotonic()
        hit = cache.get(secret)
        if hit is not None and hit[0] > now:
            return hit[1]
        found = await current(db, secret)
        if found is None:
            cache.pop(secret, None)
            return None
        until = now + ttl_s
        if found.expiration_time is not None:
            left = (found.expiration_time.replace(tzinfo=datetime.UTC)
                    - datetime.datetime.now(datetime.UTC)).total_seconds()
            until = min(until, now + left)
        cache[secret] = (until, found)
        return found

    @event.listens_for(APIKey, "after_delete")
    def _forget(*_args) -> None:
        cache.clear()

    lookup_valid_api_key._strainstream = True
    lookup_valid_api_key.forget = _forget
    ta.lookup_valid_api_key = lookup_valid_api_key
    return True


def main(argv: list[str] | None = None) -> int:
    """``tiled`` command line (``serve config FILE`` ...) with :func:`pool_duckdb_connections`.

    ``serve config FILE`` first initialises the file's catalog databases (:func:`init_catalogs`).
    A first argument ``--bootstrap-stdin`` first prepares the authentication database as the
    request on stdin asks (:func:`strainstream.auth.run_bootstrap`; the keys never appear on
    the command line or in the environment): one process start instead of two.
    """
    from strainstream.errors import ServerError

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["--bootstrap-stdin"]:
            from strainstream.auth import run_bootstrap

            args.pop(0)
            run_bootstrap(sys.stdin.buffer.read())
        if len(args) >= 3 and args[:2] == ["serve", "config"] and args[2].endswith((".yml", ".yaml", ".json")):
            init_catalogs(args[2])
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    pool_duckdb_connections()
    memoize_fastapi_dependants()
    cache_api_key_lookups()
    reuse_node_aliases()
    join_node_loads()
    join_asset_loads()
    merge_http_middlewares()
    from tiled.commandline.main import main as tiled_main

    sys.argv = ["tiled", *args]
    result = tiled_main()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
