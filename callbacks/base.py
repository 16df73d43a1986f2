"""The document-consuming base of every strainstream analysis.

An :class:`AnalysisCallback` is an event-model ``DocumentRouter``: it receives the documents
of one run (live from the tiled stream through :mod:`strainstream.callbacks.tiled_source`, or
replayed from the catalog with ``run.documents()``), resolves detector frames from
StreamResource/StreamDatum documents, runs the pure-numpy analysis on each event, and hands
one result row per event to a sink (:mod:`strainstream.callbacks.sinks`).

Replays deliver StreamResource/StreamDatum documents merged and *after* the events, so an
event whose frame is not yet resolvable is held back and analysed as soon as its
StreamDatum arrives (or at the stop document, flagged if it never does). Results depend on
event data and frames only, never on document uids or order, so live and replayed passes
give identical numbers.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from event_model import DocumentRouter

from strainstream.framestats import FrameError

__all__ = ["AnalysisCallback", "FrameResolver", "FrameUnavailable", "ResultSink"]

logger = logging.getLogger(__name__)

COLUMN_TYPES = {"float64", "int64", "string", "bool"}
_COMMIT_ATTEMPTS = 4
_COMMIT_BACKOFF_S = 0.5


class FrameUnavailable(LookupError):
    """The frame of an event cannot be found (yet)."""


class ResultSink:
    """Where result rows go. Subclasses store them (tiled) or keep them (memory)."""

    def begin(self, metadata: dict[str, Any], columns: dict[str, str]) -> list[dict[str, Any]]:
        """Open the results of one analysis of one run; return the rows already committed."""
        raise NotImplementedError

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Commit rows (atomic: after this returns, all of them are stored; else none)."""
        raise NotImplementedError

    def finish(self, summary: dict[str, Any]) -> None:
        """Mark the analysis complete and store its summary."""
        raise NotImplementedError

    def put_arrays(self, arrays: dict[str, np.ndarray], metadata: dict[str, Any] | None = None) -> None:
        """Store (replace) the analysis' current arrays, e.g. strain maps after each angle."""
        raise NotImplementedError

    def committed_seq_nums(self) -> set[int]:
        """seq_nums of the rows stored so far (to reconcile after a failed append)."""
        raise NotImplementedError


class FrameResolver:
    """Map (data_key, seq_num) to a detector frame using StreamResource/StreamDatum documents.

    Frames are read straight from the detector's HDF5 file (SWMR) when the file is on this
    filesystem; otherwise ``fallback(data_key, seq_num)`` (e.g. an HTTP read through tiled)
    is used.
    """

    def __init__(self, fallback: Callable[[str, int], np.ndarray] | None = None) -> None:
        self._resources: dict[str, dict] = {}
        self._ranges: dict[str, list[tuple[int, int, int, str]]] = {}
        self._files: dict[str, Any] = {}
        self.fallback = fallback

    def stream_resource(self, doc: Mapping[str, Any]) -> None:
        self._resources[doc["uid"]] = dict(doc)

    def stream_datum(self, doc: Mapping[str, Any]) -> None:
        res = self._resources.get(doc["stream_resource"])
        if res is None:
            raise FrameUnavailable(f"StreamDatum refers to unknown StreamResource {doc['stream_resource']}")
        seq, idx = doc["seq_nums"], doc["indices"]
        ranges = self._ranges.setdefault(res["data_key"], [])
        entry = (int(seq["start"]), int(seq["stop"]), int(idx["start"]), doc["stream_resource"])
        if ranges and entry[0] < ranges[-1][0]:
            bisect.insort(ranges, entry)
        else:  # the usual case: StreamDatums arrive in seq_num order
            ranges.append(entry)

    def _find(self, data_key: str, seq_num: int):
        """The (start, stop, index0, resource) range covering ``seq_num`` (bisect: O(log n))."""
        ranges = self._ranges.get(data_key, ())
        i = bisect.bisect_right(ranges, (seq_num, float("inf"))) - 1
        if i >= 0 and ranges[i][0] <= seq_num < ranges[i][1]:
            return ranges[i]
        return None

    def available(self, data_key: str, seq_num: int) -> bool:
        return self._find(data_key, seq_num) is not None

    def locate(self, data_key: str, seq_num: int) -> tuple[dict, int]:
        found = self._find(data_key, seq_num)
        if found is None:
            raise FrameUnavailable(f"no StreamDatum covers {data_key} at seq_num {seq_num}")
        start, _, index0, res_uid = found
        return self._resources[res_uid], index0 + (seq_num - start)

    def read(self, data_key: str, seq_num: int) -> np.ndarray:
        """Return the frame of ``data_key`` for event ``seq_num``."""
        res, index = self.locate(data_key, seq_num)
        path = _local_path(res["uri"])
        if path is not None and path.exists():
            return self._read_h5(path, res["parameters"]["dataset"], index)
        if self.fallback is not None:
            return np.asarray(self.fallback(data_key, seq_num))
        raise FrameUnavailable(f"detector file {res['uri']} is not readable here and no fallback is set")

    def _read_h5(self, path: Path, dataset: str, index: int) -> np.ndarray:
        import h5py

        key = str(path)
        f = self._files.get(key)
        if f is None:
            f = self._files[key] = h5py.File(path, "r", swmr=True, locking=False)
        ds = f[dataset]
        if index >= ds.shape[0]:
            ds.refresh()
        if index >= ds.shape[0]:
            raise FrameUnavailable(f"frame {index} not (yet) in {path} ({ds.shape[0]} frames)")
        return ds[index]

    def close(self) -> None:
        for f in self._files.values():
            try:
                f.close()
            except Exception:  # closing a broken file handle must not mask the real error
                logger.debug("closing %s failed", f, exc_info=True)
        self._files.clear()


def _local_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return Path(parsed.path)
    if parsed.scheme == "" and os.path.isabs(uri):
        return Path(uri)
    return None


class AnalysisCallback(DocumentRouter):
    """Base of the per-run analyses.

    Subclasses set ``name``, ``version``, ``columns`` (result column → type) and implement
    :meth:`analyse` (one event → dict of result columns) and optionally :meth:`summary`.

    Each emitted row carries ``seq_num``, ``time`` (event time), ``flag`` (``""`` when the
    event was analysed, else a reason such as ``"all_nan"``) and ``message``.
    """

    name: str = "analysis"
    version: str = "0"
    columns: dict[str, str] = {}
    #: the external (frame) data key(s) this analysis needs; found in the descriptor
    frame_keys: tuple[str, ...] = ()

    def __init__(self, sink: ResultSink, parameters: dict[str, Any] | None = None,
                 frame_fallback: Callable[[str, int], np.ndarray] | None = None) -> None:
        super().__init__()
        bad = {t for t in self.columns.values() if t not in COLUMN_TYPES}
        if bad:
            raise TypeError(f"unknown column types {bad}; use {sorted(COLUMN_TYPES)}")
        self.sink = sink
        self.parameters = dict(parameters or {})
        self.frames = FrameResolver(fallback=frame_fallback)
        self.start_doc: dict[str, Any] | None = None
        self.descriptors: dict[str, dict] = {}
        self.done: set[int] = set()
        self.rows: list[dict[str, Any]] = []
        self._held: dict[int, dict] = {}
        self._pending: list[dict[str, Any]] = []
        self._batching = False
        self._stream: str = self.parameters.get("stream", "primary")

    # -- documents ---------------------------------------------------------------------
    def start(self, doc):
        self.start_doc = dict(doc)
        meta = {
            "raw_uid": doc["uid"],
            "analysis": self.name,
            "version": self.version,
            "parameters": self.parameters,
            "experiment": doc.get("experiment"),
        }
        self.rows = sorted(self.sink.begin(meta, self.all_columns()), key=lambda r: r["seq_num"])
        self.done = {int(r["seq_num"]) for r in self.rows}
        self.on_start(doc)

    def descriptor(self, doc):
        if doc.get("name", "primary") == self._stream:
            self.descriptors[doc["uid"]] = dict(doc)
            self.on_descriptor(doc)

    def stream_resource(self, doc):
        self.frames.stream_resource(doc)

    def stream_datum(self, doc):
        self.frames.stream_datum(doc)
        # only the held events this datum covers can have become ready
        lo, hi = int(doc["seq_nums"]["start"]), int(doc["seq_nums"]["stop"])
        if hi - lo < len(self._held):
            candidates = [seq for seq in range(lo, hi) if seq in self._held]
        else:
            candidates = [seq for seq in self._held if lo <= seq < hi]
        for seq in sorted(candidates):
            if self._frames_ready(seq):
                self._process(self._held.pop(seq))

    def event(self, doc):
        if doc["descriptor"] not in self.descriptors:
            return
        seq = int(doc["seq_num"])
        if seq in self.done or seq in self._held or any(r["seq_num"] == seq for r in self._pending):
            return
        if self._frames_ready(seq):
            self._process(doc)
        else:
            self._held[seq] = dict(doc)

    def stop(self, doc):
        for seq in sorted(self._held):
            self._process(self._held.pop(seq))
        self.flush()
        self.rows.sort(key=lambda r: r["seq_num"])
        summary = self.summary()
        summary["exit_status"] = doc.get("exit_status")
        self.sink.finish(summary)
        self.frames.close()

    # -- machinery -----------------------------------------------------------------------
    def all_columns(self) -> dict[str, str]:
        return {"seq_num": "int64", "time": "float64", "flag": "string", "message": "string",
                **self.columns}

    def _frame_keys(self) -> list[str]:
        keys = []
        for desc in self.descriptors.values():
            for key, dk in desc.get("data_keys", {}).items():
                if dk.get("external") == "STREAM:" and (not self.frame_keys or key in self.frame_keys):
                    keys.append(key)
        return keys

    def _frames_ready(self, seq: int) -> bool:
        return all(self.frames.available(k, seq) for k in self._frame_keys())

    def previous_row(self, seq: int) -> dict[str, Any] | None:
        """The latest row (committed or pending) of an event before ``seq``; None if none."""
        best = None
        for rows in (self._pending, self.rows):  # each in increasing seq_num order
            for row in reversed(rows):
                if row["seq_num"] < seq:
                    if best is None or row["seq_num"] > best["seq_num"]:
                        best = row
                    break
        return best

    def read_frames(self, seq: int) -> dict[str, np.ndarray]:
        return {k: self.frames.read(k, seq) for k in self._frame_keys()}

    def _process(self, event: dict) -> None:
        seq = int(event["seq_num"])
        row: dict[str, Any] = {c: _missing(t) for c, t in self.columns.items()}
        row.update(seq_num=seq, time=float(event["time"]), flag="", message="")
        try:
            # one BLAS/OpenMP thread: results must not depend on the machine's thread count,
            # so the live pass and a replay elsewhere give the same bits
            with _single_thread():
                row.update(self.analyse(event, self.read_frames(seq)))
        except FrameError as exc:
            row.update(flag=exc.reason, message=str(exc))
        except FrameUnavailable as exc:
            row.update(flag="frame_unavailable", message=str(exc))
        except ValueError as exc:
            if not getattr(exc, "reason", None):  # core errors carry a short reason tag
                raise
            row.update(flag=str(exc.reason), message=str(exc))
        except (OSError, KeyError) as exc:
            logger.warning("%s: event %d of %s could not be analysed: %s", self.name, seq,
                           self.start_doc and self.start_doc.get("uid"), exc)
            row.update(flag="analysis_error", message=f"{type(exc).__name__}: {exc}")
        row = {c: _coerce(row.get(c), t) for c, t in self.all_columns().items()}
        self._pending.append(row)
        if not self._batching:
            self.flush()

    @contextlib.contextmanager
    def batch(self):
        """Commit the rows of all events processed inside the block in one append."""
        self._batching = True
        try:
            yield self
        finally:
            self._batching = False
            self.flush()

    def flush(self) -> None:
        """Commit pending rows to the sink (one atomic append)."""
        if not self._pending:
            return
        rows = self._pending
        for attempt in range(_COMMIT_ATTEMPTS):
            try:
                self.sink.append(rows)
                break
            except Exception as exc:
                # the append may have been stored although its answer was lost: ask the sink
                # what it holds and re-send only the rest (never a row twice)
                logger.warning("%s: committing %d rows failed (%s); reconciling", self.name, len(rows), exc)
                time.sleep(_COMMIT_BACKOFF_S * (attempt + 1))
                try:
                    stored = self.sink.committed_seq_nums()
                except Exception:
                    stored = None
                if stored is not None:
                    self._mark_done([r for r in rows if r["seq_num"] in stored])
                    rows = [r for r in rows if r["seq_num"] not in stored]
                    self._pending = rows
                    if not rows:
                        return
                if attempt == _COMMIT_ATTEMPTS - 1:
                    raise  # the rows stay pending: the next flush (or a restart) commits them
        self._mark_done(rows)
        self._pending = []

    def _mark_done(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.done.add(row["seq_num"])
        self.rows.extend(rows)

    # -- to override ---------------------------------------------------------------------
    def on_start(self, doc) -> None:
        """Hook: read parameters from the start document."""

    def on_descriptor(self, doc) -> None:
        """Hook: read configuration from the descriptor."""

    def analyse(self, event: dict, frames: dict[str, np.ndarray]) -> dict[str, Any]:
        raise NotImplementedError

    def publish_arrays(self, arrays: dict[str, np.ndarray], metadata: dict[str, Any] | None = None) -> None:
        """Store the analysis' current arrays (maps) next to its table, replacing older ones."""
        self.sink.put_arrays({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata)

    def summary(self) -> dict[str, Any]:
        """Run-level summary computed from ``self.rows`` (every committed row, by seq_num)."""
        return {}


_CONTROLLER = None


def _single_thread():
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1)


def _missing(kind: str):
    return {"float64": math.nan, "int64": -1, "string": "", "bool": False}[kind]


def _coerce(value, kind: str):
    if value is None:
        return _missing(kind)
    if kind == "float64":
        return float(value)
    if kind == "int64":
        return int(value)
    if kind == "bool":
        return bool(value)
    return str(value)
