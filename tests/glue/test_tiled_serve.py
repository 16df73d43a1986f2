"""strainstream.tiled_serve initialises the catalog in the server's own process.

tiled's ``init_if_not_exists: true`` starts ``python -m tiled catalog init`` (a second tiled
import: 2–3 s of every server start). The server's configuration leaves it off and
:func:`init_catalogs` does the same work before the server starts: a new catalog gets
tiled's tables and its alembic stamp, an existing one is left alone.
"""

from __future__ import annotations

import sqlite3

from strainstream.supervisor import find_free_port
from strainstream.tiled_serve import init_catalogs
from strainstream.tiledconfig import write_config


def _tables(path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_init_catalogs_makes_a_new_catalog_once(tmp_path):
    import yaml

    config = write_config(tmp_path, port=find_free_port(), api_key="k" * 32, catalog_ready=True)
    args = yaml.safe_load(config.read_text())["trees"][0]["args"]
    assert args["init_if_not_exists"] is False
    db = tmp_path / "catalog.db"
    assert not db.exists()
    made = init_catalogs(str(config))
    assert made == [f"sqlite+aiosqlite:///{db}"]
    tables = _tables(db)
    assert {"nodes", "data_sources", "assets", "alembic_version"} <= tables, tables
    with sqlite3.connect(db) as con:
        (stamp,) = con.execute("SELECT version_num FROM alembic_version").fetchone()
    assert stamp
    assert init_catalogs(str(config)) == []  # already there: left alone
    # the default (a config for stock `tiled serve`) still asks tiled to initialise
    plain = write_config(tmp_path / "plain", port=find_free_port(), api_key="k" * 32)
    assert yaml.safe_load(plain.read_text())["trees"][0]["args"]["init_if_not_exists"] is True


def test_the_server_prepares_its_databases_and_names_what_is_wrong(tmp_path):
    """One process prepares the authentication database (keys on its stdin), the catalog and
    serves; a damaged authentication database is refused in one line that names it, and a
    server of stock tiled (``serve_module = "tiled"``) still gets both databases prepared."""
    import pytest

    from strainstream.errors import ServerError
    from strainstream.server import TiledServer

    d = tmp_path / "data"
    with TiledServer(d, api_key="a" * 64, admin_key="b" * 64) as server:
        cmd = server.process.args
        assert "--bootstrap-stdin" in cmd and not any("a" * 64 in str(c) for c in cmd)
        assert list(server.client()) == []
    assert (d / "authn.db").stat().st_mode & 0o777 == 0o600
    assert {"nodes", "alembic_version"} <= _tables(d / "catalog.db")

    class Stock(TiledServer):
        serve_module = "tiled"

    with Stock(tmp_path / "stock", api_key="a" * 64, admin_key="b" * 64) as server:
        assert "--bootstrap-stdin" not in server.process.args
        assert list(server.client()) == []

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "authn.db").write_bytes(b"not a database" * 100)
    with pytest.raises(ServerError, match=r"cannot prepare the authentication database .*authn\.db"):
        TiledServer(bad, api_key="a" * 64, admin_key="b" * 64).start(timeout_s=60)


def test_fastapi_dependency_graphs_are_built_once_per_argument_set():
    """The memoized ``get_dependant`` returns the very Dependant FastAPI built for the same
    arguments, a new one for other arguments, and the same parameters FastAPI finds."""
    import fastapi.dependencies.utils as fdu

    from strainstream.tiled_serve import memoize_fastapi_dependants

    def endpoint(x: int, y: str = "a"):
        return x

    before = fdu.get_dependant
    try:
        fresh = before(path="/p/{x}", call=endpoint)
        assert memoize_fastapi_dependants() and memoize_fastapi_dependants()  # idempotent
        first = fdu.get_dependant(path="/p/{x}", call=endpoint)
        assert fdu.get_dependant(path="/p/{x}", call=endpoint) is first
        assert [p.name for p in first.path_params] == [p.name for p in fresh.path_params] == ["x"]
        assert [p.name for p in first.query_params] == [p.name for p in fresh.query_params] == ["y"]
        other = fdu.get_dependant(path="/q", call=endpoint, parent_oauth_scopes=["read:metadata"])
        assert other is not first and [p.name for p in other.query_params] == ["x", "y"]
    finally:
        fdu.get_dependant = before


def test_a_catalog_database_that_does_not_answer_is_named_in_one_line(tmp_path):
    """PostgreSQL not answering (nothing listens on the port): one ServerError line naming
    the catalog database, its password redacted, not a traceback."""
    import pytest

    from strainstream.errors import ServerError

    config = write_config(tmp_path, port=find_free_port(), api_key="k" * 32, catalog_ready=True,
                          catalog_uri=f"postgresql://user:s3cret@127.0.0.1:{find_free_port()}/cat")
    with pytest.raises(ServerError) as info:
        init_catalogs(str(config))
    msg = str(info.value)
    assert msg.startswith("cannot prepare the catalog database postgresql+asyncpg://user:***@127.0.0.1:")
    assert "s3cret" not in msg and "\n" not in msg


def test_api_key_lookups_are_kept_for_the_ttl_never_past_expiry_nor_for_unknown_keys(monkeypatch):
    """cache_api_key_lookups: one database lookup per key per TTL; an unknown key is asked
    again every time (a new key works at once); a key expiring sooner is kept only until its
    expiry; deleting any API key (the ORM event a revocation fires) empties the cache."""
    import asyncio
    import datetime
    import time
    from types import SimpleNamespace

    import tiled.server.authentication as ta
    from sqlalchemy import event
    from tiled.authn_database.orm import APIKey

    from strainstream.tiled_serve import cache_api_key_lookups

    now = datetime.datetime.now(datetime.UTC)
    keys = {b"good": SimpleNamespace(expiration_time=None),
            b"brief": SimpleNamespace(expiration_time=now + datetime.timedelta(seconds=0.3))}
    calls: list[bytes] = []

    async def lookup(db, secret):
        calls.append(secret)
        return keys.get(secret)

    monkeypatch.setattr(ta, "lookup_valid_api_key", lookup)
    assert cache_api_key_lookups(ttl_s=0.6) and cache_api_key_lookups()  # idempotent
    cached = ta.lookup_valid_api_key
    try:
        def ask(secret):
            return asyncio.run(cached(None, secret))

        assert ask(b"good") is keys[b"good"] and ask(b"good") is keys[b"good"]
        assert calls == [b"good"]
        assert ask(b"nope") is None and ask(b"nope") is None
        assert calls == [b"good", b"nope", b"nope"]
        assert ask(b"brief") is keys[b"brief"] and ask(b"brief") is keys[b"brief"]
        assert calls.count(b"brief") == 1
        time.sleep(0.35)  # past the brief key's expiry, inside the TTL
        ask(b"brief"), ask(b"good")
        assert calls.count(b"brief") == 2 and calls.count(b"good") == 1
        time.sleep(0.3)  # past the TTL
        ask(b"good")
        assert calls.count(b"good") == 2
        # a deleted key (revocation): every key is looked up again
        assert event.contains(APIKey, "after_delete", cached.forget)
        cached.forget(APIKey.__mapper__, None, None)
        ask(b"good")
        assert calls.count(b"good") == 3
    finally:
        monkeypatch.undo()


def test_node_path_lookups_reuse_aliases_and_make_the_same_sql():
    """reuse_node_aliases: the path look-up compiles to exactly the SQL tiled's own
    node_from_segments makes (SQLite and PostgreSQL, paths of 0-4 segments, quoting included),
    and the second look-up of a depth reuses the first one's aliases."""
    import tiled.catalog.adapter as ca
    from sqlalchemy.dialects import postgresql, sqlite

    from strainstream.tiled_serve import reuse_node_aliases

    original = ca.node_from_segments
    try:
        assert reuse_node_aliases() and reuse_node_aliases()  # idempotent
        patched = ca.node_from_segments
        assert patched is not original
        for segments in ([], ["a"], ["derived", "5f0e-uid"], ["r", "primary", "internal"],
                         ["x", "y's", "z", "w"]):
            for root_id in (0, 7):
                for dialect in (sqlite.dialect(), postgresql.dialect()):
                    made = [str(fn(segments, root_id=root_id).compile(
                        dialect=dialect, compile_kwargs={"literal_binds": True})) for fn in (patched, original)]
                    assert made[0] == made[1], (segments, root_id, dialect.name)
        first, again = patched(["a", "b"]).froms[0], patched(["c", "d"]).froms[0]
        assert first.left.left is again.left.left and first.left.right is again.left.right
        assert first.left.left is not first.left.right  # one statement: two aliases
    finally:
        ca.node_from_segments = original


@__import__("pytest").mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_joined_node_loads_find_the_same_nodes_data_sources_and_structures(tmp_path):
    """join_node_loads and join_asset_loads: every node of a catalog (containers, an array, a table, nested paths)
    comes back with the same metadata, structure and data sources (assets included) as with
    tiled's own look-up; a missing path is missing both ways."""
    import numpy as np
    import pandas as pd
    import pytest
    import tiled.catalog.adapter as ca
    from tiled.catalog import in_memory
    from tiled.client import Context, from_context
    from tiled.server.app import build_app
    from tiled.structures.array import ArrayStructure
    from tiled.structures.core import StructureFamily
    from tiled.structures.data_source import Asset, DataSource, Management

    from strainstream.tiled_serve import join_asset_loads, join_node_loads

    cls = ca.CatalogNodeAdapter
    original, original_sources = cls.__dict__["lookup_adapter"], cls.__dict__["data_sources"]
    try:
        assert join_node_loads() and join_node_loads()  # idempotent
        assert join_asset_loads() and join_asset_loads()
        joined, joined_sources = cls.__dict__["lookup_adapter"], cls.__dict__["data_sources"]
        assert joined is not original and joined_sources is not original_sources
        catalog = in_memory(writable_storage=[str(tmp_path / "data"), f"duckdb:///{tmp_path / 't.db'}"],
                            readable_storage=[str(tmp_path / "det")])
        with Context.from_app(build_app(catalog)) as context:
            client = from_context(context)
            a = client.create_container("a", metadata={"k": 1})
            a.write_array(np.arange(6.0).reshape(2, 3), key="x", metadata={"units": "mm"})
            a.write_dataframe(pd.DataFrame({"q": [1.0, 2.0]}), key="t")
            a.create_container("b").create_container("c").write_array(np.ones(4), key="y")
            # an external series of three files, registered out of order
            files = [f"file://localhost{tmp_path}/det/f{i}.tif" for i in range(3)]
            a.new(StructureFamily.array, [DataSource(
                mimetype="multipart/related;type=image/tiff", structure_family=StructureFamily.array,
                structure=ArrayStructure.from_array(np.zeros((3, 4, 5), "u2")), parameters={},
                management=Management.external,
                assets=[Asset(data_uri=files[i], is_directory=False, parameter="data_uris", num=i)
                        for i in (2, 0, 1)])], key="series")
            paths = ["a", "a/x", "a/t", "a/b", "a/b/c", "a/b/c/y", "a/series"]

            def seen(lookup, sources):
                cls.lookup_adapter, cls.data_sources = lookup, sources
                found = {}
                with_sources = client.new_variation(include_data_sources=True)
                for path in paths:
                    item = with_sources[path].item
                    found[path] = (item["attributes"]["metadata"], item["attributes"]["structure"],
                                   item["attributes"]["data_sources"])
                with pytest.raises(KeyError):
                    client["a/b/nothing"]
                return found

            mine, theirs = seen(joined, joined_sources), seen(original, original_sources)
            assert mine == theirs
            assert mine["a/x"][2][0]["assets"] and mine["a/x"][1]["shape"] == [2, 3]
            assert [x["data_uri"] for x in mine["a/series"][2][0]["assets"]] == files  # by num
    finally:
        cls.lookup_adapter, cls.data_sources = original, original_sources


def _http_app(merge: bool):
    """A FastAPI app with four ``@app.middleware("http")`` layers around two routes, the
    layers logging their order, changing headers/cookies, answering early or seeing errors."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, PlainTextResponse

    from strainstream.tiled_serve import merged_middleware

    app, log = FastAPI(), []

    async def ok(request):
        return PlainTextResponse(f"state={getattr(request.state, 'mark', None)}")

    app.add_route("/ok", ok)  # a plain Starlette route: the request itself, no FastAPI typing

    @app.get("/boom")
    async def boom():
        raise RuntimeError("boom")

    @app.middleware("http")
    async def innermost(request, call_next):
        log.append("in:innermost")
        if request.headers.get("x-refuse"):
            return JSONResponse({"detail": "refused"}, status_code=403)
        response = await call_next(request)
        response.headers["x-inner"] = "1"
        return response

    @app.middleware("http")
    async def marks_state(request, call_next):
        log.append("in:marks_state")
        request.state.mark = "set by an outer layer"
        response = await call_next(request)
        response.set_cookie("c", "v")
        return response

    @app.middleware("http")
    async def sees_errors(request, call_next):
        log.append("in:sees_errors")
        try:
            response = await call_next(request)
        except RuntimeError as exc:
            log.append(f"error:{exc}")
            raise
        log.append(f"out:sees_errors:{response.headers.get('x-inner')}")
        return response

    @app.middleware("http")
    async def outermost(request, call_next):
        log.append("in:outermost")
        response = await call_next(request)
        response.headers["x-outer"] = response.headers.get("x-inner", "none")
        return response

    if merge:
        app.user_middleware[:] = merged_middleware(app.user_middleware)
    return app, log


def test_merged_http_middlewares_behave_as_the_stacked_layers():
    """Same order, answers, headers, cookies, request state and error path, in one layer."""
    import asyncio

    import httpx
    from starlette.middleware.base import BaseHTTPMiddleware

    async def requests(app, log):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        out = []
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for path, headers in (("/ok", {}), ("/ok", {"x-refuse": "1"}), ("/boom", {})):
                log.clear()
                r = await client.get(path, headers=headers)
                out.append((r.status_code, r.text, r.headers.get("x-inner"), r.headers.get("x-outer"),
                            r.headers.get("set-cookie"), list(log)))
        return out

    seen = {}
    for merge in (False, True):
        app, log = _http_app(merge)
        layers = [m for m in app.user_middleware if m.cls is BaseHTTPMiddleware]
        assert len(layers) == (1 if merge else 4)
        seen[merge] = asyncio.run(requests(app, log))
    assert seen[True] == seen[False]
    ok, refused, boom = seen[True]
    assert ok[:5] == (200, "state=set by an outer layer", "1", "1", "c=v; Path=/; SameSite=lax")
    assert ok[5] == ["in:outermost", "in:sees_errors", "in:marks_state", "in:innermost", "out:sees_errors:1"]
    assert refused[0] == 403 and refused[3] == "none"
    assert boom[0] == 500 and "error:boom" in boom[5]


def test_tiled_app_runs_its_six_http_middlewares_in_one_layer_in_their_order():
    import tiled.server.app as tapp
    from starlette.middleware.base import BaseHTTPMiddleware

    from strainstream.tiled_serve import merge_http_middlewares

    cfg = {"trees": [{"path": "/", "tree": "tiled.examples.generated_minimal:tree"}]}
    before = tapp.build_app
    stock = tapp.build_app_from_config(dict(cfg))
    try:
        assert merge_http_middlewares()
        merged = tapp.build_app_from_config(dict(cfg))
    finally:
        tapp.build_app = before
    stock_fns = [m.kwargs["dispatch"] for m in stock.user_middleware if m.cls is BaseHTTPMiddleware]
    layers = [m for m in merged.user_middleware if m.cls is BaseHTTPMiddleware]
    assert len(stock_fns) == 6 and len(layers) == 1
    assert [f.__name__ for f in layers[0].kwargs["dispatch"]._strainstream_chain] == [f.__name__ for f in stock_fns]
    # every other layer (correlation id, compression, CORS) kept, in its place
    assert [m.cls for m in merged.user_middleware if m.cls is not BaseHTTPMiddleware] == \
        [m.cls for m in stock.user_middleware if m.cls is not BaseHTTPMiddleware]
