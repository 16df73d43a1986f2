"""Result sinks: tiled (the live worker's commit log) and memory (replay, tests).

Derived results live in tiled next to the raw runs, at ``derived/<raw_uid>/<analysis>``: an
appendable table with one row per analysed event (``seq_num`` first) and metadata
``{raw_uid, analysis, version, parameters, status, summary}``. A row is committed when its
append returns, so the table itself records what has been analysed: a restarted worker
reads it back and continues after the last committed event.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any

import numpy as np

from strainstream.results_doc import (  # the reading side, importable without the callbacks
    ARRAYS_SUFFIX,
    DERIVED,
    _analysis_entry,
    _base,
    _json_safe,
    _table_rows,
    read_arrays,
    read_results,
    results_document,
)

from .base import ResultSink

#: a TiledSink's array-writer thread ends after this long without arrays to write (s)
ARRAYS_THREAD_IDLE_S = 30.0

__all__ = ["DERIVED", "MemorySink", "TiledSink", "delete_results", "read_arrays", "read_results",
           "results_document", "stored_results_metadata"]

logger = logging.getLogger(__name__)


class MemorySink(ResultSink):
    """Keep results in memory (replay and tests)."""

    def __init__(self) -> None:
        self.metadata: dict[str, Any] = {}
        self.columns: dict[str, str] = {}
        self.rows: list[dict[str, Any]] = []
        self.summary: dict[str, Any] | None = None
        self.status = "new"
        self.arrays: dict[str, Any] = {}
        self.arrays_metadata: dict[str, Any] = {}

    def begin(self, metadata, columns):
        self.metadata, self.columns, self.status = dict(metadata), dict(columns), "running"
        return list(self.rows)

    def append(self, rows):
        self.rows.extend(dict(r) for r in rows)

    def finish(self, summary):
        self.summary, self.status = dict(summary), "complete"

    def committed_seq_nums(self):
        return {int(r["seq_num"]) for r in self.rows}

    def put_arrays(self, arrays, metadata=None):
        self.arrays.update({k: v.copy() for k, v in arrays.items()})
        self.arrays_metadata.update(metadata or {})

    def as_dict(self) -> dict[str, Any]:
        return _analysis_entry(self.metadata, self.status, self.summary, self.columns, self.rows,
                               self.arrays)


def _arrow_schema(columns: dict[str, str]):
    import pyarrow as pa

    types = {"float64": pa.float64(), "int64": pa.int64(), "string": pa.string(), "bool": pa.bool_()}
    return pa.schema([(name, types[kind]) for name, kind in columns.items()])


def _get_or_create_container(parent, key: str, metadata: dict[str, Any]):
    """Return child container ``key`` of ``parent``, creating it (race-safe between workers)."""
    from tiled.client.utils import ClientError

    for _ in range(5):
        try:
            return parent[key]  # one request (`key in parent` and then `[key]` were two)
        except KeyError:
            pass
        try:
            return parent.create_container(key=key, metadata=metadata)
        except ClientError as exc:  # another worker created it first
            if exc.response.status_code != 409:
                raise
            time.sleep(0.05)
    return parent[key]


#: id(root) -> (weak reference to root, its ``derived`` container client): looked up once
#: per catalog client, not once per run (it is never deleted while a worker runs)
_DERIVED_NODES: dict[int, tuple[weakref.ref, Any]] = {}
_DERIVED_LOCK = threading.Lock()


def _derived_node(root, fresh: bool = False):
    """The ``derived`` container of ``root``, looked up (or created) once per client;
    ``fresh``: look it up again (the cached one was deleted behind our back)."""
    with _DERIVED_LOCK:
        entry = _DERIVED_NODES.get(id(root))
        if not fresh and entry is not None and entry[0]() is root:
            return entry[1]
    node = _get_or_create_container(root, DERIVED, {"description": "strainstream derived results"})
    with _DERIVED_LOCK:
        for key in [k for k, (ref, _) in _DERIVED_NODES.items() if ref() is None]:
            del _DERIVED_NODES[key]
        _DERIVED_NODES[id(root)] = (weakref.ref(root), node)
    return node


def _create_or_get_container(parent, key: str, metadata: dict[str, Any]):
    """``(child container key of parent, created)``: created when it is new (one request, the
    common case for a live run), else the existing one (a restarted worker, a reprocessing)."""
    from tiled.client.utils import ClientError

    try:
        return parent.create_container(key=key, metadata=metadata), True
    except ClientError as exc:
        if exc.response.status_code != 409:
            raise
    return _get_or_create_container(parent, key, metadata), False


class TiledSink(ResultSink):
    """Store results in tiled at ``derived/<raw_uid>/<analysis>``.

    Parameters
    ----------
    root : tiled client container
        The catalog root (where the raw runs are).
    raw_uid : str
        The raw run.
    analysis : str
        Name of the analysis (the table's key).
    extra_metadata : dict, optional
        Added to the table's metadata when the table is created (e.g. ``replaced``: what a
        reprocessing replaced).
    """

    #: appends go out from the callback's committer thread (the tiled client is thread-safe)
    background_commits = True

    def __init__(self, root, raw_uid: str, analysis: str, extra_metadata: dict[str, Any] | None = None) -> None:
        self.root = root
        self.raw_uid = raw_uid
        self.analysis = analysis
        self.extra_metadata = dict(extra_metadata or {})
        self.node = None
        self._schema = None
        self._run_node = None  # derived/<raw_uid>, found or created once in begin()
        self._box = None  # derived/<raw_uid>/<analysis>_arrays, on the first put_arrays
        self._array_nodes: dict[str, Any] = {}
        # put_arrays hands the newest arrays to a writer thread (see there)
        self._arrays_cond = threading.Condition()
        self._arrays_next: tuple[dict[str, Any], dict[str, Any] | None] | None = None
        self._arrays_busy = False
        self._arrays_error: BaseException | None = None
        self._arrays_thread: threading.Thread | None = None

    def begin(self, metadata, columns):
        self._schema = _arrow_schema(columns)
        # a live run's first events wait for this: as few requests as possible (the derived
        # container once per client, the run's container created directly)
        from tiled.client.utils import ClientError

        md = {"raw_uid": self.raw_uid}
        try:
            node, created = _create_or_get_container(_derived_node(self.root), self.raw_uid, md)
        except ClientError:  # the cached derived container is gone (deleted behind our back)
            node, created = _create_or_get_container(_derived_node(self.root, fresh=True), self.raw_uid, md)
        run_node = self._run_node = _base(node)
        if not created and self.analysis in run_node:
            self.node = run_node[self.analysis]
            rows = _table_rows(self.node)
            self.node.update_metadata({"status": "running"})
            return rows
        md = dict(metadata, **_json_safe(self.extra_metadata), status="running", created=time.time())
        try:
            self.node = run_node.create_appendable_table(schema=self._schema, key=self.analysis, metadata=md)
        except Exception:
            if self.analysis in run_node:  # created concurrently by another worker
                self.node = run_node[self.analysis]
                return _table_rows(self.node)
            raise
        return []

    def append(self, rows):
        import pyarrow as pa

        table = pa.Table.from_pylist(list(rows), schema=self._schema)
        self.node.append_partition(0, table)

    def finish(self, summary):
        self.flush_arrays()  # "complete" only once the final arrays are stored
        self.node.update_metadata({"status": "complete", "summary": _json_safe(summary),
                                   "finished": time.time()})

    def committed_seq_nums(self):
        return {int(r["seq_num"]) for r in _table_rows(self.node)}

    def put_arrays(self, arrays, metadata=None):
        """Arrays live in the container ``derived/<uid>/<analysis>_arrays``; rewritten in place.

        Called after every rocking angle / energy. The arrays (copied) go to a writer thread
        and this returns at once: writing eight maps took a live SXDM worker 0.5-0.8 s per
        angle, during which no event was analysed (a fly scan's lines queued behind it).
        Only the newest arrays are written: a set still waiting when a newer one comes is
        replaced by it. :meth:`finish` (and :meth:`flush_arrays`) waits until the newest set
        is stored; a failed write is raised there or by the next call. The container and the
        array nodes are looked up once and reused: a later set costs one write per array.
        """
        job = ({k: np.array(v, copy=True) for k, v in arrays.items()}, dict(metadata) if metadata else None)
        with self._arrays_cond:
            self._raise_arrays_error()
            self._arrays_next = job
            if self._arrays_thread is None:
                self._arrays_thread = threading.Thread(target=self._arrays_loop, daemon=True,
                                                       name=f"arrays-{self.raw_uid[:8]}-{self.analysis}")
                self._arrays_thread.start()
            self._arrays_cond.notify_all()

    def flush_arrays(self, timeout: float | None = None) -> None:
        """Wait until the newest arrays given to :meth:`put_arrays` are stored; raise what
        their write raised. ``timeout`` (s): TimeoutError if they are not stored by then."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._arrays_cond:
            while self._arrays_next is not None or self._arrays_busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"{self.analysis} arrays of run {self.raw_uid} not stored "
                                       f"within {timeout} s")
                self._arrays_cond.wait(left)
            self._raise_arrays_error()

    def _raise_arrays_error(self) -> None:  # (lock held)
        error, self._arrays_error = self._arrays_error, None
        if error is not None:
            raise error

    def _arrays_loop(self) -> None:
        while True:
            with self._arrays_cond:
                if self._arrays_next is None:
                    self._arrays_cond.wait(ARRAYS_THREAD_IDLE_S)
                if self._arrays_next is None:  # idle: the thread ends (a new one when needed)
                    self._arrays_thread = None
                    return
                job, self._arrays_next = self._arrays_next, None
                self._arrays_busy = True
            try:
                self._write_arrays(*job)
            except BaseException as exc:  # kept for the caller; never lost in this thread
                with self._arrays_cond:
                    self._arrays_error = exc
            finally:
                with self._arrays_cond:
                    self._arrays_busy = False
                    self._arrays_cond.notify_all()

    def _write_arrays(self, arrays, metadata) -> None:
        if self._box is None:
            self._box = _base(_get_or_create_container(
                self._run_node, f"{self.analysis}{ARRAYS_SUFFIX}",
                {"raw_uid": self.raw_uid, "analysis": self.analysis}))
            self._array_nodes = {k: self._box[k] for k in self._box}
        box = self._box
        for name, arr in arrays.items():
            node = self._array_nodes.get(name)
            if node is not None:
                if tuple(node.shape) == arr.shape and node.dtype == arr.dtype:
                    node.write(arr)
                    continue
                box.delete_contents([name], external_only=False)
            self._array_nodes[name] = box.write_array(arr, key=name)
        if metadata:
            box.update_metadata(_json_safe(metadata))


def stored_results_metadata(root, raw_uid: str, analysis: str) -> dict[str, Any] | None:
    """Metadata of the stored results table of one analysis of ``raw_uid``; None if there is none.

    The dict has ``version``, ``status`` (``running`` while being written or after a crash,
    ``complete``, ``failed``) and whatever else the writer stored.
    """
    try:
        run_node = _base(root[DERIVED][raw_uid])
        if analysis not in run_node:
            return None
        return dict(run_node[analysis].metadata)
    except KeyError:
        return None


def delete_results(root, raw_uid: str, analysis: str) -> bool:
    """Delete the stored results (table and arrays) of one analysis of ``raw_uid``.

    Returns True if there was something to delete. The live worker's readers find nothing
    at ``derived/<raw_uid>/<analysis>`` until new results are written there.
    """
    try:
        run_node = _base(root[DERIVED][raw_uid])
    except KeyError:
        return False
    keys = [k for k in (f"{analysis}{ARRAYS_SUFFIX}", analysis) if k in run_node]
    for key in keys:  # the arrays first: a table without arrays still reads as results
        run_node.delete_contents([key], recursive=True, external_only=False)
    return bool(keys)

