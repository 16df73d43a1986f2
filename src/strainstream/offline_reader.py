"""Read a finished run's catalog without tiled's client or server stack: from the embedded data
directory's files, or over HTTP from a running server.

``strainstream runs | results | plot`` on a data directory with no server running used to
open the catalog in-process through tiled's server stack (:func:`strainstream.client.open_offline`):
seconds of imports (tiled's app, dask, pandas) before the first byte is read. For the embedded
layout written by :func:`strainstream.tiledconfig.write_config` — tiled's catalog in SQLite
``DIR/catalog.db``, appendable tables in DuckDB ``DIR/tables.duckdb``, arrays as zarr under
``DIR/data/`` — this module reads the same nodes directly:

- :func:`open_catalog` returns a :class:`Container` that answers the part of the tiled client
  API the commands use (``key in node``, iteration in the catalog's order, ``node[key]``,
  ``.metadata``, ``.items()``, ``.search(Key(...) == value)``; tables: ``.columns`` and
  ``.read(columns=None)`` with the rows as pandas would give them; arrays: ``.read()``), so
  :func:`strainstream.results_doc.read_results` (and the sinks' readers) run unchanged on it.
- Everything is read-only: SQLite is opened with ``mode=ro``; DuckDB ``read_only`` and only
  inside :meth:`Container.reading` (or for one read), so a server starting meanwhile is not
  locked out for longer than the read.
- Whatever this reader does not recognise — another catalog schema revision, a PostgreSQL
  catalog or tables, a locked DuckDB file (a server is writing), a column type or zarr codec
  it does not know, any database error — raises :class:`Unsupported` (or sets
  :attr:`Container.failed` where the caller swallows exceptions) and the caller falls back to
  :func:`strainstream.client.open_offline`.

A running server (``--uri``, or the server of ``--data-dir``) is read the same way by
:func:`open_server`: the same node API over tiled's HTTP API (``/metadata``, ``/search``,
``/table/partition`` as an Arrow file, ``/array/full`` as bytes) through one keep-alive
:mod:`http.client` connection, instead of ``tiled.client`` (httpx, pandas, dask, and for a
run the spec classes of bluesky-tiled-plugins: xarray, dask, sparse, numba — seconds of
imports). Anything it does not know — an HTTP error, a refused key, a table of several
partitions, a column type, a compressed answer — is :class:`Unsupported` as above, and the
caller reads through ``tiled.client`` instead (which then words connection and key errors).

Imports: the standard library; ``duckdb`` when a table is read; ``numpy`` (and ``zstandard``,
else ``zarr``) when an array is read; over HTTP ``msgpack`` (tables come as Arrow files,
decoded here: flat numbers, strings and booleans). Nothing from tiled, pyarrow or pandas.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, unquote

from strainstream.errors import StrainstreamError

__all__ = ["KNOWN_CATALOG_REVISIONS", "Array", "Container", "Frame", "Table",
           "Unsupported", "open_catalog", "open_server"]

#: tiled catalog schema revisions (alembic) whose tables this reader knows; another
#: revision (a tiled upgrade) falls back to tiled itself — a test checks tiled's current one
KNOWN_CATALOG_REVISIONS = frozenset({"917dbbcfc4b1"})

_SQL_TABLE = "application/x-tiled-sql-table"
_ZARR = "application/x-zarr"
_INT_TYPES = frozenset({"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER",
                        "UBIGINT"})
_FLOAT_TYPES = frozenset({"FLOAT", "DOUBLE"})
_PLAIN_TYPES = _INT_TYPES | _FLOAT_TYPES | {"VARCHAR", "BOOLEAN"}


class Unsupported(StrainstreamError, RuntimeError):
    """The data directory is not one this reader reads (or not now): use tiled instead.

    Callers catch it and open the catalog through tiled; the message says what was not
    recognised."""


def _file_path(uri: str, scheme: str) -> str | None:
    """``PATH`` of ``scheme:///PATH`` or ``scheme://localhost/PATH``; None for anything else."""
    for prefix in (f"{scheme}:///", f"{scheme}://localhost/"):
        if uri.startswith(prefix):
            rest = unquote(uri[len(prefix):])
            return rest if rest.startswith("/") else "/" + rest
    return None


def open_catalog(data_dir: str | os.PathLike) -> Container:
    """The root of the catalog in ``data_dir`` read directly; :class:`Unsupported` if the
    directory is not the embedded SQLite + DuckDB layout this module knows.

    Use it as a context manager (``with open_catalog(d) as root:``) to close the files.
    """
    root_dir = Path(data_dir).resolve()
    try:
        config = json.loads((root_dir / "tiled.yml").read_text())  # written as JSON (valid YAML)
    except (OSError, ValueError) as exc:
        raise Unsupported(f"no tiled.yml in JSON form in {root_dir}: {exc}") from None
    trees = config.get("trees") if isinstance(config, dict) else None
    if not (isinstance(trees, list) and len(trees) == 1 and isinstance(trees[0], dict)
            and trees[0].get("path") == "/" and trees[0].get("tree") == "catalog"):
        raise Unsupported("not one catalog tree at /")
    tree_args = trees[0].get("args") or {}
    catalog_uri, storage = tree_args.get("uri"), tree_args.get("writable_storage") or []
    catalog_file = _file_path(catalog_uri, "sqlite") if isinstance(catalog_uri, str) else None
    tables = [p for p in (_file_path(s, "duckdb") for s in storage if isinstance(s, str)) if p]
    if catalog_file is None or len(tables) != 1:
        raise Unsupported("the catalog is not SQLite with DuckDB tables")
    if not Path(catalog_file).is_file():
        raise Unsupported(f"no catalog file {catalog_file}")
    catalog = _Catalog(catalog_file, tables[0])
    try:
        revisions = {r[0] for r in catalog.query("SELECT version_num FROM alembic_version")}
        if not revisions or not revisions <= KNOWN_CATALOG_REVISIONS:
            raise Unsupported(f"catalog schema revision {sorted(revisions)} is not one this reader knows")
        rows = catalog.query("SELECT id, key, structure_family, metadata, specs FROM nodes WHERE parent IS NULL")
        if len(rows) != 1 or rows[0][2] != "container":
            raise Unsupported("no single root container in the catalog")
    except Unsupported:
        catalog.close()
        raise
    return Container(catalog, *rows[0])


class _Catalog:
    """The two databases: SQLite (read-only, open while the catalog object lives) and DuckDB
    (read-only, open only while reading)."""

    def __init__(self, catalog_file: str, tables_file: str) -> None:
        self.tables_file = tables_file
        self.failed: BaseException | None = None
        self._duck = None
        self._reading = 0
        try:
            self.db = sqlite3.connect(f"file:{quote(catalog_file)}?mode=ro", uri=True, timeout=10,
                                      check_same_thread=False)
        except sqlite3.Error as exc:
            raise Unsupported(f"cannot open {catalog_file} read-only: {exc}") from None

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            return self.db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self.fail(Unsupported(f"catalog query failed: {exc}")) from None

    def fail(self, exc: Unsupported) -> Unsupported:
        """Remember ``exc`` (callers may swallow it) and return it to raise."""
        if self.failed is None:
            self.failed = exc
        return exc

    def close(self) -> None:
        self._close_duck()
        self.db.close()

    # -- DuckDB: open read-only only while reading -----------------------------------------
    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        self._reading += 1
        try:
            yield
        finally:
            self._reading -= 1
            if not self._reading:
                self._close_duck()

    def _close_duck(self) -> None:
        if self._duck is not None:
            with contextlib.suppress(Exception):
                self._duck.close()
            self._duck = None

    def tables(self):
        """The DuckDB connection (opened on first use; closed when :meth:`reading` ends)."""
        if self._duck is None:
            try:
                import duckdb
            except ImportError as exc:
                raise self.fail(Unsupported(f"no duckdb: {exc}")) from None
            try:
                self._duck = duckdb.connect(self.tables_file, read_only=True)
            except Exception as exc:  # duckdb.IOException: locked by a writer (a server is running)
                raise self.fail(Unsupported(f"cannot open {self.tables_file} read-only: {exc}")) from None
        return self._duck

    def read_table(self, table_name: str, dataset_id: int, columns: list[str]) -> list[tuple[str, list]]:
        """``[(column, values)]`` of one tiled SQL table dataset, in tiled's row order."""
        if not columns:
            return []
        select = ", ".join('"' + c.lower().replace('"', '""') + '"' for c in columns)
        # the id inlined (an int): duckdb imports pandas to inspect query parameters
        sql = (f'SELECT {select} FROM "{table_name.replace(chr(34), "")}" WHERE _dataset_id = {int(dataset_id)} '
               "ORDER BY _partition_id ASC, rowid")
        with self.reading():
            con = self.tables()
            try:
                cursor = con.execute(sql)
                types = [str(d[1]) for d in cursor.description]
                rows = cursor.fetchall()
            except Exception as exc:  # duckdb.Error
                raise self.fail(Unsupported(f"reading {table_name} failed: {exc}")) from None
        out = []
        for i, (name, kind) in enumerate(zip(columns, types, strict=True)):
            values = [r[i] for r in rows]
            out.append((name, self._as_pandas(values, kind, name)))
        return out

    def _as_pandas(self, values: list, kind: str, name: str) -> list:
        """The values of a column as ``DataFrame.to_dict(orient="records")`` gives them after
        tiled's arrow -> pandas conversion: integers with a missing value become floats (NaN).
        Booleans with a missing value come through tiled as the strings "True"/"False" and
        other types not at all here: those go through tiled (:class:`Unsupported`)."""
        if kind not in _PLAIN_TYPES or (kind == "BOOLEAN" and any(v is None for v in values)):
            raise self.fail(Unsupported(f"column {name!r} of type {kind}"
                                        + (" with missing values" if kind in _PLAIN_TYPES else "")))
        if kind in _INT_TYPES and any(v is None for v in values):
            return [math.nan if v is None else float(v) for v in values]
        if kind in _FLOAT_TYPES:
            return [math.nan if v is None else v for v in values]
        return values


class Frame:
    """The rows of a table as the commands use a pandas DataFrame: ``to_dict(orient="records")``
    and ``frame[column].tolist()``."""

    def __init__(self, columns: list[tuple[str, list]]) -> None:
        self._columns = dict(columns)

    @property
    def columns(self) -> list[str]:
        return list(self._columns)

    def __len__(self) -> int:
        return len(next(iter(self._columns.values()), []))

    def __getitem__(self, column: str) -> _Column:
        return _Column(self._columns[column])

    def to_dict(self, orient: str = "records") -> list[dict[str, Any]]:
        if orient != "records":
            raise ValueError(f"only orient='records', not {orient!r}")
        names = list(self._columns)
        return [dict(zip(names, row, strict=True)) for row in zip(*self._columns.values(), strict=True)]


class _Column:
    def __init__(self, values: list) -> None:
        self._values = values

    def tolist(self) -> list:
        return list(self._values)


class _Node:
    """One node of the catalog (``nodes`` row)."""

    def __init__(self, catalog: _Catalog, node_id: int, key: str, family: str, metadata: str,
                 specs: str, path: tuple[str, ...] = ()) -> None:
        self._catalog, self._id, self.key, self.structure_family = catalog, node_id, key, family
        self._metadata_json, self._specs_json, self.path = metadata, specs, path
        self._metadata: MappingProxyType | None = None

    @property
    def metadata(self) -> MappingProxyType:
        if self._metadata is None:
            self._metadata = MappingProxyType(json.loads(self._metadata_json or "{}"))
        return self._metadata

    @property
    def specs(self) -> list[dict[str, Any]]:
        return json.loads(self._specs_json or "[]")

    @property
    def uri(self) -> str:
        return "offline:///" + "/".join(self.path)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {'/'.join(self.path) or '/'}>"

    def _data_source(self, mimetype: str) -> tuple[dict, dict]:
        """(parameters, structure) of the node's one data source of ``mimetype``, plus its asset."""
        rows = self._catalog.query(
            "SELECT d.id, d.mimetype, d.parameters, s.structure FROM data_sources d "
            "LEFT JOIN structures s ON s.id = d.structure_id WHERE d.node_id = ?", (self._id,))
        if len(rows) != 1 or rows[0][1] != mimetype:
            raise self._catalog.fail(Unsupported(f"{self!r}: data sources {[r[1] for r in rows]}"))
        ds_id, _, parameters, structure = rows[0]
        assets = self._catalog.query(
            "SELECT a.data_uri FROM assets a JOIN data_source_asset_association x ON x.asset_id = a.id "
            "WHERE x.data_source_id = ?", (ds_id,))
        params = json.loads(parameters or "{}") or {}
        params["_assets"] = [a[0] for a in assets]
        return params, json.loads(structure or "{}")


class Container(_Node):
    """A container node: ``key in c``, ``iter(c)`` (the catalog's order), ``c[key]``, ``c.items()``."""

    def _child_row(self, key: str):
        rows = self._catalog.query(
            "SELECT id, key, structure_family, metadata, specs FROM nodes WHERE parent = ? AND key = ?",
            (self._id, key))
        return rows[0] if rows else None

    def _make(self, row) -> _Node:
        cls = {"container": Container, "table": Table, "array": Array}.get(row[2])
        if cls is None:
            raise self._catalog.fail(Unsupported(f"node family {row[2]!r}"))
        return cls(self._catalog, *row, path=(*self.path, row[1]))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._child_row(key) is not None

    def __getitem__(self, key: str) -> _Node:
        row = self._child_row(key) if isinstance(key, str) else None
        if row is None:
            raise KeyError(key)
        return self._make(row)

    def __iter__(self) -> Iterator[str]:
        return iter([r[0] for r in self._catalog.query(
            "SELECT key FROM nodes WHERE parent = ? ORDER BY id", (self._id,))])

    def __len__(self) -> int:
        return self._catalog.query("SELECT count(*) FROM nodes WHERE parent = ?", (self._id,))[0][0]

    def keys(self) -> list[str]:
        return list(self)

    def items(self) -> Iterator[tuple[str, _Node]]:
        rows = self._catalog.query(
            "SELECT id, key, structure_family, metadata, specs FROM nodes WHERE parent = ? ORDER BY id",
            (self._id,))
        return iter([(r[1], self._make(r)) for r in rows])

    def search(self, query) -> _SearchResults:
        """Children whose metadata matches ``tiled.queries.Key(...) == value`` (only Eq)."""
        return _search(self.items(), query, self._catalog.fail)

    # -- context management: close the databases -------------------------------------------
    def reading(self):
        """Keep DuckDB open for the reads inside the block (one open for many tables)."""
        return self._catalog.reading()

    @property
    def failed(self) -> BaseException | None:
        """The first :class:`Unsupported` met, even if a caller swallowed it."""
        return self._catalog.failed

    def close(self) -> None:
        self._catalog.close()

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _search(items, query, fail) -> _SearchResults:
    """The ``(key, node)`` of ``items`` whose metadata matches ``tiled.queries.Key(...) ==
    value`` (only Eq; another query raises ``fail(Unsupported(...))``)."""
    key, value = getattr(query, "key", None), getattr(query, "value", None)
    if type(query).__name__ != "Eq" or not isinstance(key, str):
        raise fail(Unsupported(f"query {query!r}"))
    out = []
    for k, node in items:
        found: Any = dict(node.metadata)
        for part in key.split("."):
            found = found.get(part) if isinstance(found, dict) else None
        if found is not None and found == value:
            out.append((k, node))
    return _SearchResults(out)


class _SearchResults:
    def __init__(self, items: list[tuple[str, _Node]]) -> None:
        self._items = items

    def items(self) -> Iterator[tuple[str, _Node]]:
        return iter(list(self._items))

    def __iter__(self) -> Iterator[str]:
        return iter([k for k, _ in self._items])

    def __len__(self) -> int:
        return len(self._items)


class Table(_Node):
    """An appendable table stored in DuckDB."""

    def _source(self) -> tuple[str, int, list[str]]:
        params, structure = self._data_source(_SQL_TABLE)
        uris = params["_assets"]
        if (len(uris) != 1 or _file_path(uris[0], "duckdb") != self._catalog.tables_file
                or params.get("order_by_args") or "table_name" not in params or "dataset_id" not in params):
            raise self._catalog.fail(Unsupported(f"{self!r}: table source {params}"))
        return params["table_name"], int(params["dataset_id"]), list(structure.get("columns") or [])

    @property
    def columns(self) -> list[str]:
        return self._source()[2]

    def read(self, columns: list[str] | None = None) -> Frame:
        """The rows (all columns in the table's order, or the structure's columns among ``columns``)."""
        table_name, dataset_id, all_columns = self._source()
        wanted = [c for c in all_columns if c in set(columns)] if columns else all_columns
        return Frame(self._catalog.read_table(table_name, dataset_id, wanted))


class Array(_Node):
    """An array stored as zarr (version 3) in the data directory."""

    def read(self):
        import numpy as np

        params, structure = self._data_source(_ZARR)
        uris = params["_assets"]
        path = _file_path(uris[0], "file") if len(uris) == 1 else None
        if path is None:
            raise self._catalog.fail(Unsupported(f"{self!r}: array assets {uris}"))
        data_type = structure.get("data_type") or {}
        try:
            dtype = np.dtype(f"{ {'big': '>', 'little': '<'}.get(data_type.get('endianness'), '|')}"
                             f"{data_type['kind']}{data_type['itemsize']}")
            shape = tuple(int(n) for n in structure["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise self._catalog.fail(Unsupported(f"{self!r}: structure {structure}: {exc}")) from None
        try:
            arr = _read_zarr3(Path(path), shape)
        except _NotPlain:
            arr = _read_with_zarr(path, shape)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise self._catalog.fail(Unsupported(f"{self!r}: {exc}")) from None
        if arr.shape != shape:
            raise self._catalog.fail(Unsupported(f"{self!r}: shape {arr.shape}, structure says {shape}"))
        return arr.astype(dtype, copy=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._data_source(_ZARR)[1]["shape"])


class _NotPlain(StrainstreamError):
    """A zarr array this module does not decode itself (codecs, encodings): use zarr."""


def _read_with_zarr(path: str, shape: tuple[int, ...]):
    import zarr

    return zarr.open_array(path, mode="r")[tuple(slice(0, n) for n in shape)]


def _read_zarr3(path: Path, shape: tuple[int, ...]):
    """A zarr v3 array of plain bytes (+ zstd) codecs and a regular chunk grid, decoded here."""
    import numpy as np

    meta = json.loads((path / "zarr.json").read_text())
    codecs = meta.get("codecs") or []
    names = [c.get("name") for c in codecs]
    grid = meta.get("chunk_grid") or {}
    encoding = meta.get("chunk_key_encoding") or {}
    if (meta.get("zarr_format") != 3 or meta.get("node_type") != "array" or meta.get("storage_transformers")
            or names not in (["bytes"], ["bytes", "zstd"]) or grid.get("name") != "regular"
            or encoding.get("name") != "default"):
        raise _NotPlain
    endian = (codecs[0].get("configuration") or {}).get("endian", "little")
    try:
        dtype = np.dtype(meta["data_type"]).newbyteorder("<" if endian == "little" else ">")
    except TypeError:
        raise _NotPlain from None
    if dtype.kind not in "biuf":
        raise _NotPlain
    decompress = None
    if "zstd" in names:
        try:
            import zstandard
        except ImportError:
            raise _NotPlain from None
        decompress = zstandard.ZstdDecompressor().decompress
    fill = meta.get("fill_value")
    if isinstance(fill, str):
        if fill not in ("NaN", "Infinity", "-Infinity"):
            raise _NotPlain
        fill = float(fill.replace("Infinity", "inf"))
    chunk = tuple(int(n) for n in grid["configuration"]["chunk_shape"])
    full = tuple(int(n) for n in meta["shape"])
    # tiled stores whole chunks (the zarr array may be larger) and reads [0:n] of each axis
    if len(full) != len(shape) or len(chunk) != len(shape) or any(f < n for f, n in zip(full, shape, strict=True)):
        raise ValueError(f"zarr shape {full} / chunks {chunk} vs {shape}")
    sep = (encoding.get("configuration") or {}).get("separator", "/")
    out = np.full(shape, fill, dtype=dtype)
    counts = [-(-n // c) if c else 0 for n, c in zip(shape, chunk, strict=True)]
    nbytes = int(np.prod(chunk)) * dtype.itemsize
    for index in np.ndindex(*counts):
        name = sep.join(["c", *map(str, index)])
        try:
            raw = (path / name).read_bytes()
        except FileNotFoundError:
            continue  # never written: the fill value
        if decompress is not None:
            raw = decompress(raw, max_output_size=nbytes)
        block = np.frombuffer(raw, dtype=dtype).reshape(chunk)
        where = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, chunk, shape, strict=True))
        out[where] = block[tuple(slice(0, s.stop - s.start) for s in where)]
    return out


# -- a running server, over tiled's HTTP API ------------------------------------------------

_MSGPACK = "application/x-msgpack"
_ARROW_FILE = "application/vnd.apache.arrow.file"
_OCTETS = "application/octet-stream"
#: tiled's endianness names -> numpy's byte-order characters
_ENDIAN = {"big": ">", "little": "<", "not_applicable": "|"}


def open_server(uri: str, api_key: str | None, *, timeout: float = 30.0) -> ServerContainer:
    """The root of the catalog served at ``uri`` (tiled's API URI, ``http(s)://HOST:PORT/api/v1``),
    read over HTTP without ``tiled.client``; :class:`Unsupported` if it cannot be read here
    (no key, not reachable, the key refused, not tiled's API): the caller connects with tiled,
    which words the error.

    Use it as a context manager to close the connection.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise Unsupported(f"not an http(s) API URI: {uri!r}")
    if not api_key:
        raise Unsupported("no API key")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise Unsupported(f"{uri!r}: {exc}") from None
    http = _Http(parts, api_key, timeout)
    try:
        item = http.get_msgpack(f"{http.base}/metadata/")
        if item is None or not isinstance(item.get("data"), dict):
            raise http.fail(Unsupported(f"{uri} answered no root node"))
        root = ServerContainer(http, item["data"])
        if root.structure_family != "container":
            raise http.fail(Unsupported(f"the root of {uri} is a {root.structure_family}"))
    except BaseException:
        http.close()
        raise
    return root


class _Http:
    """One keep-alive connection to the server; every answer not understood is :class:`Unsupported`
    (remembered in :attr:`failed`, as :class:`_Catalog` does)."""

    def __init__(self, parts, api_key: str, timeout: float) -> None:
        import http.client

        self.failed: BaseException | None = None
        #: node items by link, absent ones as None: the reader reads a finished run, and
        #: ``key in node`` followed by ``node[key]`` is one request
        self.nodes: dict[str, dict | None] = {}
        self.listings: dict[str, list[str]] = {}  # a container's keys by its search link
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.base = parts.path.rstrip("/")
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self._conn = cls(parts.hostname, parts.port, timeout=timeout)
        self._headers = {"Authorization": f"Apikey {api_key}", "Accept-Encoding": "identity",
                         "User-Agent": "strainstream"}

    fail = _Catalog.fail

    def close(self) -> None:
        self._conn.close()

    def get(self, url: str, accept: str, params: dict | None = None) -> tuple[int, bytes]:
        """``(status, body)`` of ``GET url`` (a link the server gave, or a path on it)."""
        import http.client
        from urllib.parse import parse_qs, urlencode

        if url.startswith(self.origin + "/"):
            path = url[len(self.origin):]
        elif url.startswith("/"):
            path = url
        else:
            raise self.fail(Unsupported(f"a link outside {self.origin}: {url}"))
        path, _, query = path.partition("?")
        params = {**parse_qs(query, keep_blank_values=True), **(params or {})}  # as tiled's client
        if params:
            path += "?" + urlencode(params, doseq=True)
        for attempt in (1, 2):  # once more on a fresh connection if the server closed the idle one
            try:
                self._conn.request("GET", path, headers={**self._headers, "Accept": accept})
                response = self._conn.getresponse()
                body = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self._conn.close()
                if attempt == 2:
                    raise self.fail(Unsupported(f"GET {path}: {exc}")) from None
            except (OSError, http.client.HTTPException) as exc:
                self._conn.close()
                raise self.fail(Unsupported(f"GET {path}: {type(exc).__name__}: {exc}")) from None
        if response.will_close:
            self._conn.close()
        encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
        if response.status == 200:
            content_type = (response.getheader("Content-Type") or "").split(";")[0].strip()
            if encoding != "identity" or content_type != accept:
                raise self.fail(Unsupported(f"GET {path}: {content_type} ({encoding}), not {accept}"))
        return response.status, body

    def get_msgpack(self, url: str, params: dict | None = None) -> dict | None:
        """The decoded answer (as tiled's client decodes it); None for 404."""
        status, body = self.get(url, _MSGPACK, params)
        if status == 404:
            return None
        if status != 200:
            raise self.fail(Unsupported(f"GET {url}: HTTP {status}"))
        try:
            import msgpack

            return msgpack.unpackb(body, timestamp=3)
        except Exception as exc:  # ImportError, msgpack's errors
            raise self.fail(Unsupported(f"GET {url}: {type(exc).__name__}: {exc}")) from None


class _ServerNode:
    """One node as the server describes it (an ``item`` of tiled's JSON:API answers)."""

    def __init__(self, http: _Http, item: dict) -> None:
        self._http, self._item = http, item
        attributes = item.get("attributes") or {}
        self._attributes = attributes
        self.key = item.get("id") or ""
        self.structure_family = attributes.get("structure_family")
        ancestors = tuple(attributes.get("ancestors") or ())
        self.path = (*ancestors, self.key) if self.key else ancestors
        self._metadata: MappingProxyType | None = None

    @property
    def metadata(self) -> MappingProxyType:
        if self._metadata is None:
            self._metadata = MappingProxyType(self._attributes.get("metadata") or {})
        return self._metadata

    @property
    def specs(self) -> list[dict[str, Any]]:
        return list(self._attributes.get("specs") or [])

    @property
    def uri(self) -> str:
        return self._link("self")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {'/'.join(self.path) or '/'}>"

    def _link(self, name: str) -> str:
        link = (self._item.get("links") or {}).get(name)
        if not isinstance(link, str):
            raise self._http.fail(Unsupported(f"{self!r}: no {name} link"))
        return link

    def _structure(self) -> dict:
        structure = self._attributes.get("structure")
        if not isinstance(structure, dict):
            raise self._http.fail(Unsupported(f"{self!r}: no structure"))
        return structure


class ServerContainer(_ServerNode):
    """A container node of a server: the :class:`Container` API over HTTP."""

    def _make(self, item: dict) -> _ServerNode:
        family = (item.get("attributes") or {}).get("structure_family")
        cls = {"container": ServerContainer, "table": ServerTable, "array": ServerArray}.get(family)
        if cls is None:
            raise self._http.fail(Unsupported(f"node family {family!r}"))
        return cls(self._http, item)

    def _params(self) -> dict:
        """tiled's client sends the container's own sorting (none: the server's default order)."""
        if self.structure_family != "container" or self._structure().get("contents") is not None:
            raise self._http.fail(Unsupported(f"{self!r}: inlined contents"))
        sorting = [f"{'-' if int(s['direction']) < 0 else ''}{s['key']}"
                   for s in (self._attributes.get("sorting") or [])] or [""]
        return {"sort": sorting} if "".join(sorting) else {}

    def _child(self, key: str) -> _ServerNode | None:
        if "/" in key:  # tiled walks a path: leave that to it
            raise self._http.fail(Unsupported(f"key {key!r} with '/'"))
        link = self._link("self").rstrip("/") + "/" + quote(key, safe="")
        cache = self._http.nodes  # `k in c`, then `c[k]`: one request (a finished run does not change)
        if link not in cache:
            answer = self._http.get_msgpack(link)
            cache[link] = None if answer is None else answer["data"]
        return None if cache[link] is None else self._make(cache[link])

    def _pages(self, fields: str | None) -> Iterator[dict]:
        link: str | None = self._link("search")
        params = self._params()
        if fields is not None:
            params["fields"] = fields
        while link is not None:
            answer = self._http.get_msgpack(link, params)
            if answer is None:
                raise self._http.fail(Unsupported(f"{self!r}: search answered 404"))
            yield answer
            link = (answer.get("links") or {}).get("next")

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._child(key) is not None

    def __getitem__(self, key: str) -> _ServerNode:
        node = self._child(key) if isinstance(key, str) else None
        if node is None:
            raise KeyError(key)
        return node

    def _keys(self) -> list[str]:
        link = self._link("search")
        listings = self._http.listings  # list(node) asks len(node) first: one request for both
        if link not in listings:
            listings[link] = [item["id"] for page in self._pages("") for item in page["data"]]
        return listings[link]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._keys()))

    def __len__(self) -> int:
        return len(self._keys())

    def keys(self) -> list[str]:
        return list(self)

    def items(self) -> Iterator[tuple[str, _ServerNode]]:
        return iter([(item["id"], self._make(item)) for page in self._pages(None) for item in page["data"]])

    def search(self, query) -> _SearchResults:
        """Children whose metadata matches ``tiled.queries.Key(...) == value`` (only Eq)."""
        return _search(self.items(), query, self._http.fail)

    def reading(self):
        """A no-op: the connection stays open until :meth:`close` (the :class:`Container` API)."""
        return contextlib.nullcontext()

    @property
    def failed(self) -> BaseException | None:
        """The first :class:`Unsupported` met, even if a caller swallowed it."""
        return self._http.failed

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServerContainer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ServerTable(_ServerNode):
    """A table node of a server: its one partition read as Arrow, columns as :class:`Table` gives them."""

    @property
    def columns(self) -> list[str]:
        return list(self._structure().get("columns") or [])

    def read(self, columns: list[str] | None = None) -> Frame:
        structure = self._structure()
        all_columns = list(structure.get("columns") or [])
        if structure.get("npartitions") != 1:  # dask concatenates partitions: leave that to tiled
            raise self._http.fail(Unsupported(f"{self!r}: {structure.get('npartitions')} partitions"))
        wanted = [c for c in all_columns if c in set(columns)] if columns else all_columns
        params: dict[str, Any] = {"partition": 0}
        if columns:
            params["column"] = wanted
        status, body = self._http.get(self._link("partition"), _ARROW_FILE, params)
        if status != 200:  # e.g. an appendable table without rows yet: tiled's client says what
            raise self._http.fail(Unsupported(f"{self!r}: HTTP {status}"))
        try:
            table = _read_arrow_file(body)
            out = [(name, _arrow_as_pandas(*table[name], name)) for name in wanted]
        except Unsupported as exc:
            raise self._http.fail(exc) from None
        except Exception as exc:  # a damaged file, a missing column
            raise self._http.fail(Unsupported(f"{self!r}: {type(exc).__name__}: {exc}")) from None
        return Frame(out)


def _arrow_as_pandas(kind: str, values: list, nulls: int, name: str) -> list:
    """The values of an Arrow column (:func:`_read_arrow_file`) as
    ``DataFrame.to_dict(orient="records")`` gives them after tiled's client converts the Arrow
    file to pandas (the rules of :meth:`_Catalog._as_pandas`: integers with a missing value
    become floats, NaN for missing numbers; booleans with a missing value are
    :class:`Unsupported`)."""
    if kind == "int":
        return [math.nan if v is None else float(v) for v in values] if nulls else values
    if kind == "float":
        return [math.nan if v is None else v for v in values] if nulls else values
    if kind == "string" or (kind == "bool" and not nulls):
        return values
    raise Unsupported(f"column {name!r} of type {kind}" + (" with missing values" if nulls else ""))


class ServerArray(_ServerNode):
    """An array node of a server, read whole as bytes in its stored dtype."""

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self._structure()["shape"])

    def read(self):
        import numpy as np

        structure = self._structure()
        data_type = structure.get("data_type") or {}
        try:
            if data_type.get("fields") or data_type.get("dt_units") or data_type["kind"] not in "biufc":
                raise ValueError(f"data type {data_type}")
            dtype = np.dtype(f"{_ENDIAN[data_type['endianness']]}{data_type['kind']}{int(data_type['itemsize'])}")
            shape = tuple(int(n) for n in structure["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise self._http.fail(Unsupported(f"{self!r}: structure {structure}: {exc}")) from None
        if 0 in shape:
            return np.array([], dtype=dtype).reshape(shape)
        params = {"expected_shape": ",".join(map(str, shape)) or "scalar"}
        status, body = self._http.get(self._link("full"), _OCTETS, params)
        if status != 200 or len(body) != math.prod(shape) * dtype.itemsize:
            raise self._http.fail(Unsupported(f"{self!r}: HTTP {status}, {len(body)} bytes for {shape} {dtype}"))
        return np.frombuffer(body, dtype=dtype).reshape(shape)


# -- the Arrow IPC file format, for the flat tables tiled serves ----------------------------
# (pyarrow and the numpy it imports take ~0.3 s to import: longer than reading a run's results)

class _Flat:
    """A flatbuffers table in ``buf`` at ``pos``: scalar, offset, vector and string fields."""

    __slots__ = ("buf", "pos", "_vt", "_vt_len")

    def __init__(self, buf: memoryview, pos: int) -> None:
        import struct

        self.buf, self.pos = buf, pos
        self._vt = pos - struct.unpack_from("<i", buf, pos)[0]
        self._vt_len = struct.unpack_from("<H", buf, self._vt)[0]

    def _field(self, index: int) -> int:
        import struct

        at = 4 + 2 * index
        if at >= self._vt_len:
            return 0
        off = struct.unpack_from("<H", self.buf, self._vt + at)[0]
        return self.pos + off if off else 0

    def scalar(self, index: int, fmt: str, default):
        import struct

        at = self._field(index)
        return struct.unpack_from("<" + fmt, self.buf, at)[0] if at else default

    def _target(self, index: int) -> int:
        import struct

        at = self._field(index)
        return at + struct.unpack_from("<I", self.buf, at)[0] if at else 0

    def table(self, index: int) -> _Flat | None:
        at = self._target(index)
        return _Flat(self.buf, at) if at else None

    def vector(self, index: int) -> tuple[int, int]:
        """(start of the elements, count); (0, 0) when absent."""
        import struct

        at = self._target(index)
        return (at + 4, struct.unpack_from("<I", self.buf, at)[0]) if at else (0, 0)

    def tables(self, index: int) -> list[_Flat]:
        import struct

        start, n = self.vector(index)
        return [_Flat(self.buf, start + 4 * i + struct.unpack_from("<I", self.buf, start + 4 * i)[0])
                for i in range(n)]

    def string(self, index: int) -> str | None:
        start, n = self.vector(index)
        return bytes(self.buf[start:start + n]).decode() if start else None


#: Arrow ``Type`` union members this reader decodes
_ARROW_INT, _ARROW_FLOAT, _ARROW_UTF8, _ARROW_BOOL, _ARROW_LARGE_UTF8 = 2, 3, 5, 6, 20
_INT_FORMATS = {(8, True): "b", (16, True): "h", (32, True): "i", (64, True): "q",
                (8, False): "B", (16, False): "H", (32, False): "I", (64, False): "Q"}


def _read_arrow_file(data: bytes) -> dict[str, tuple[str, list, int]]:
    """``{column: (kind, values, null_count)}`` of an Arrow IPC file whose columns are flat
    integers, float32/64, (large) strings or booleans, uncompressed, without dictionaries;
    ``kind`` is "int", "float", "string" or "bool", ``values`` as ``pyarrow``'s ``to_pylist``
    gives them (None for a null). Anything else raises :class:`Unsupported`."""
    import struct
    import sys

    buf = memoryview(data)
    if (len(buf) < 22 or bytes(buf[:6]) != b"ARROW1" or bytes(buf[-6:]) != b"ARROW1"
            or sys.byteorder != "little"):
        raise Unsupported("not an Arrow IPC file (or not on a little-endian machine)")
    footer_len = struct.unpack_from("<i", buf, len(buf) - 10)[0]
    footer_at = len(buf) - 10 - footer_len
    footer = _Flat(buf, footer_at + struct.unpack_from("<I", buf, footer_at)[0])
    schema = footer.table(1)
    if schema is None or schema.scalar(0, "h", 0) != 0 or footer.vector(2)[1]:
        raise Unsupported("Arrow file: big-endian, no schema, or dictionaries")
    fields = []
    for f in schema.tables(1):
        type_id, kind = f.scalar(2, "B", 0), f.table(3)
        if f.table(4) is not None or f.vector(5)[1] or kind is None:
            raise Unsupported(f"Arrow column {f.string(0)!r}: dictionary-encoded or nested")
        if type_id == _ARROW_INT:
            fmt = _INT_FORMATS.get((kind.scalar(0, "i", 0), bool(kind.scalar(1, "B", 0))))
        elif type_id == _ARROW_FLOAT:
            fmt = {1: "f", 2: "d"}.get(kind.scalar(0, "h", 0))
        else:
            fmt = {_ARROW_UTF8: "i", _ARROW_LARGE_UTF8: "q", _ARROW_BOOL: "?"}.get(type_id)
        if fmt is None:
            raise Unsupported(f"Arrow column {f.string(0)!r} of type {type_id}")
        fields.append((f.string(0) or "", type_id, fmt))
    columns: list[tuple[list, int]] = [([], 0) for _ in fields]
    start, n_batches = footer.vector(3)
    for b in range(n_batches):
        offset, meta_len, body_len = struct.unpack_from("<qi4xq", buf, start + 24 * b)
        fb = offset + (8 if struct.unpack_from("<i", buf, offset)[0] == -1 else 4)
        message = _Flat(buf, fb + struct.unpack_from("<I", buf, fb)[0])
        batch = message.table(2)
        if message.scalar(1, "B", 0) != 3 or batch is None or batch.table(3) is not None:
            raise Unsupported("Arrow file: a block that is not an uncompressed record batch")
        body = offset + meta_len
        if body + body_len > footer_at:
            raise Unsupported("Arrow file: a record batch past the footer")
        nodes_at, n_nodes = batch.vector(1)
        buffers_at, n_buffers = batch.vector(2)
        if n_nodes != len(fields):
            raise Unsupported("Arrow file: nested columns")
        next_buffer = 0

        def buffer(body=body, buffers_at=buffers_at, n_buffers=n_buffers) -> memoryview:
            nonlocal next_buffer
            if next_buffer >= n_buffers:
                raise Unsupported("Arrow file: fewer buffers than columns need")
            off, length = struct.unpack_from("<qq", buf, buffers_at + 16 * next_buffer)
            next_buffer += 1
            return buf[body + off:body + off + length]

        for i, (_name, type_id, fmt) in enumerate(fields):
            length, nulls = struct.unpack_from("<qq", buf, nodes_at + 16 * i)
            validity = buffer()
            if type_id in (_ARROW_UTF8, _ARROW_LARGE_UTF8):
                offsets, chars = buffer().cast(fmt)[:length + 1], bytes(buffer())
                values: list = [chars[offsets[j]:offsets[j + 1]].decode() for j in range(length)]
            elif type_id == _ARROW_BOOL:
                bits = buffer()
                values = [bool(bits[j >> 3] >> (j & 7) & 1) for j in range(length)]
            else:
                values = buffer().cast(fmt)[:length].tolist()
            if len(values) != length:
                raise Unsupported("Arrow file: a buffer shorter than its column")
            if nulls:
                values = [v if validity[j >> 3] >> (j & 7) & 1 else None for j, v in enumerate(values)]
            done, total = columns[i]
            done.extend(values)
            columns[i] = (done, total + nulls)
    kinds = {_ARROW_INT: "int", _ARROW_FLOAT: "float", _ARROW_UTF8: "string", _ARROW_LARGE_UTF8: "string",
             _ARROW_BOOL: "bool"}
    return {name: (kinds[type_id], *columns[i]) for i, (name, type_id, _) in enumerate(fields)}
