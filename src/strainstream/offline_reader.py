"""Read the catalog of an embedded data directory straight from its files, without tiled.

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

Imports: the standard library; ``duckdb`` when a table is read; ``numpy`` (and ``zstandard``,
else ``zarr``) when an array is read. Nothing from tiled.
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
           "Unsupported", "open_catalog"]

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
        key, value = getattr(query, "key", None), getattr(query, "value", None)
        if type(query).__name__ != "Eq" or not isinstance(key, str):
            raise self._catalog.fail(Unsupported(f"query {query!r}"))
        out = []
        for k, node in self.items():
            found: Any = dict(node.metadata)
            for part in key.split("."):
                found = found.get(part) if isinstance(found, dict) else None
            if found is not None and found == value:
                out.append((k, node))
        return _SearchResults(out)

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
