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

Resume: a restarted worker feeds the run from its first event again. Events whose row an
earlier pass committed are never analysed again; an analysis that accumulates state across
events (maps, image stacks) overrides :meth:`AnalysisCallback.restore`, which the base calls
once per committed event, held like a new event until its frames are resolvable, so that
state is rebuilt exactly as the uninterrupted pass built it.

Commits: rows are appended to the sink in batches (:meth:`AnalysisCallback.batch`), each
exactly once (a failed append is reconciled with what the sink holds). A sink that allows it
(``background_commits``, e.g. tiled) is appended to by one committer thread per callback,
in order, while the next events are analysed; :meth:`AnalysisCallback.flush` and the stop
wait for it.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from event_model import DocumentRouter

from strainstream.errors import StrainstreamError
from strainstream.framestats import FrameError

__all__ = ["AnalysisCallback", "FrameResolver", "FrameUnavailable", "MAX_FRAME_BYTES", "ResultSink",
           "RunDocumentError", "check_frame_header", "checked_flag", "checked_number", "checked_range"]

logger = logging.getLogger(__name__)

COLUMN_TYPES = {"float64", "int64", "string", "bool"}
_COMMIT_ATTEMPTS = 4
_COMMIT_BACKOFF_S = 0.5
#: inside a batch, rows are committed once the oldest uncommitted one waited this long: a
#: worker catching up on a backlog shows results as it goes, not after the whole backlog
BATCH_WINDOW_S = 0.1
#: largest detector frame read (bytes in memory): a file declaring bigger frames is refused
#: before anything is allocated (a 4k x 4k float64 frame is 128 MiB)
MAX_FRAME_BYTES = 1 << 30
#: a committer thread with nothing to commit for this long ends (a new one when needed)
COMMITTER_IDLE_S = 30.0
#: HDF5 frames are read in blocks of up to this many frames and this many bytes
READ_AHEAD_FRAMES = 64
READ_AHEAD_BYTES = 64 << 20
_FRAME_KINDS = "biuf"  # bool, signed/unsigned integer, float frames; never complex/strings/records


class FrameUnavailable(StrainstreamError, LookupError):
    """The frame of an event cannot be found (yet)."""


class RunDocumentError(StrainstreamError, ValueError):
    """A run's start document (metadata, analysis parameters) or descriptor cannot be used.

    The one error an analysis callback raises on bad documents; the message names the run,
    the document and the key. Raised on the start document, a descriptor or at construction
    (analysis parameters); the worker then gives up on that analysis of that run. Bad events,
    stream resources/datums and frames never raise: they end as flagged rows.
    """


class ResultSink:
    """Where result rows go. Subclasses store them (tiled) or keep them (memory)."""

    #: :meth:`append` and :meth:`committed_seq_nums` may be called from a committer thread
    #: (never two calls at once) while the documents are processed on another: the callback
    #: then analyses the next events while a batch's append is in flight
    background_commits: bool = False

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
        self._datasets: dict[tuple[str, str], Any] = {}
        #: (path, dataset) -> (first index, frames): the last block read of each dataset
        self._blocks: dict[tuple[str, str], tuple[int, np.ndarray]] = {}
        self.fallback = fallback

    def stream_resource(self, doc: Mapping[str, Any]) -> None:
        uid, key = doc.get("uid"), doc.get("data_key")
        if not isinstance(uid, str) or not isinstance(key, str):
            raise FrameUnavailable(f"StreamResource without a usable 'uid'/'data_key' "
                                   f"({uid!r}, {key!r}): ignored")
        self._resources[uid] = dict(doc)

    def stream_datum(self, doc: Mapping[str, Any]) -> None:
        """Record which frames a StreamDatum covers; raises FrameUnavailable for a bad one."""
        res_uid = doc.get("stream_resource")
        res = self._resources.get(res_uid) if isinstance(res_uid, str) else None
        if res is None:
            raise FrameUnavailable(f"StreamDatum {doc.get('uid')!r} refers to unknown StreamResource "
                                   f"{res_uid!r}")
        try:
            seq, idx = doc["seq_nums"], doc["indices"]
            start, stop, index0 = _int(seq["start"]), _int(seq["stop"]), _int(idx["start"])
        except (KeyError, TypeError, ValueError) as exc:
            raise FrameUnavailable(f"StreamDatum {doc.get('uid')!r} has unusable seq_nums/indices "
                                   f"({exc})") from None
        if stop <= start or index0 < 0:
            raise FrameUnavailable(f"StreamDatum {doc.get('uid')!r} covers no frame (seq_nums "
                                   f"{start}..{stop}, first index {index0})")
        ranges = self._ranges.setdefault(res["data_key"], [])
        entry = (start, stop, index0, res_uid)
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
        uri = res.get("uri")
        path = _local_path(uri) if isinstance(uri, str) else None
        if res.get("mimetype") == "multipart/related;type=image/tiff" and path is not None and path.is_dir():
            return self._read_tiff(res, path, index)
        if path is not None and path.exists():
            dataset = (res.get("parameters") or {}).get("dataset") if isinstance(
                res.get("parameters"), Mapping) else None
            if not isinstance(dataset, str):
                raise FrameUnavailable(f"StreamResource {res.get('uid')} of {data_key} names no HDF5 "
                                       f"'dataset' in its parameters ({dataset!r})")
            return self._read_h5(path, dataset, index)
        if self.fallback is not None:
            return np.asarray(self.fallback(data_key, seq_num))
        raise FrameUnavailable(f"detector file {uri!r} is not readable here and no fallback is set")

    def _read_tiff(self, res: Mapping[str, Any], folder: Path, index: int) -> np.ndarray:
        """Frame ``index`` of an areaDetector TIFF series (one file per frame). areaDetector's
        own template (``%s%s_%6.6d.tiff`` + ``filename``) goes through area-detector-handlers'
        AD_TIFF handler; the forms tiled exports (``xrd_%06d.tiff``, ``xrd_{:06d}.tiff``) are
        formatted with the frame index."""
        key = f"tiff:{res.get('uid')}"
        reader = self._files.get(key)
        if reader is None:
            params = res.get("parameters") if isinstance(res.get("parameters"), Mapping) else {}
            template, filename = params.get("template"), params.get("filename", "")
            if not isinstance(template, str) or not template:
                raise FrameUnavailable(f"StreamResource {res.get('uid')} (TIFF series) names no 'template'")
            if template.count("%s") == 2:
                from area_detector_handlers.handlers import AreaDetectorTiffHandler

                handler = AreaDetectorTiffHandler(str(folder), template, filename or "")

                def reader(i, handler=handler):
                    (name,) = handler.get_file_list([{"point_number": i}])
                    return name, (lambda: handler(i)[0])
            else:
                def reader(i, template=template):
                    name = str(folder / (template.format(i) if "{" in template else template % i))
                    return name, (lambda: _tiff(name))
            self._files[key] = reader
        try:
            name, load = reader(index)
        except (TypeError, ValueError) as exc:
            raise FrameUnavailable(f"StreamResource {res.get('uid')}: TIFF template does not "
                                   f"format frame {index} ({exc})") from None
        if not os.path.isfile(name):
            raise FrameUnavailable(f"TIFF frame {index}: {name} does not exist")
        frame = np.asarray(load())
        check_frame_header(frame.shape, frame.dtype, name)
        return frame

    def _read_h5(self, path: Path, dataset: str, index: int) -> np.ndarray:
        """Frame ``index`` of ``path:dataset``. Frames are read in blocks (up to
        :data:`READ_AHEAD_FRAMES`, as many as the file holds): a fly line's frames arrive
        together and come out of one HDF5 read, not one per frame."""
        import h5py

        key = (str(path), dataset)
        block = self._blocks.get(key)
        if block is not None and block[0] <= index < block[0] + len(block[1]):
            return np.array(block[1][index - block[0]])  # a copy: the block is shared
        ds = self._datasets.get(key)
        if ds is None:
            f = self._files.get(key[0])
            if f is None:
                if not path.is_file():
                    raise FrameUnavailable(f"detector file {path} is not a file")
                f = self._files[key[0]] = h5py.File(path, "r", swmr=True, locking=False)
            ds = f.get(dataset)
            if not isinstance(ds, h5py.Dataset):
                raise FrameUnavailable(f"detector file {path} has no dataset {dataset}")
            if ds.ndim < 1:
                raise FrameError("wrong_shape", f"{path}:{dataset} is a scalar, not a stack of frames")
            check_frame_header(ds.shape[1:], ds.dtype, f"{path}:{dataset}")
            self._datasets[key] = ds
        if index >= ds.shape[0]:
            ds.refresh()
        if index >= ds.shape[0]:
            raise FrameUnavailable(f"frame {index} not (yet) in {path} ({ds.shape[0]} frames)")
        per_frame = max(int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize, 1)
        stop = min(ds.shape[0], index + max(1, min(READ_AHEAD_FRAMES, READ_AHEAD_BYTES // per_frame)))
        frames = ds[index:stop]
        self._blocks[key] = (index, frames)
        return np.array(frames[0])

    def close(self) -> None:
        for f in self._files.values():
            try:
                if hasattr(f, "close"):
                    f.close()
            except Exception:  # closing a broken file handle must not mask the real error
                logger.debug("closing %s failed", f, exc_info=True)
        self._files.clear()
        self._datasets.clear()
        self._blocks.clear()


def _tiff(path: str) -> np.ndarray:
    import tifffile

    return tifffile.imread(path)


def _int(value: Any) -> int:
    """An integer from a document field (int or integral float); ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{value!r} is not an integer")
    if isinstance(value, float | np.floating) and not float(value).is_integer():
        raise ValueError(f"{value!r} is not an integer")
    out = int(value)
    if not -(2**63) <= out < 2**63:
        raise ValueError(f"{value!r} is out of the int64 range")
    return out


def checked_number(value: Any, name: str, *, integer: bool = False, minimum: float | None = None,
                   positive: bool = False, allow_none: bool = False) -> float | int | None:
    """A metadata/parameter value as a finite float (an int with ``integer``).

    Raises
    ------
    RunDocumentError
        Not a number (strings, lists, bools, None unless ``allow_none``), not finite, not an
        integer with ``integer``, below ``minimum`` or not > 0 with ``positive``; the
        message names ``name``.
    """
    if value is None and allow_none:
        return None
    what = "an integer" if integer else "a number"
    if (isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating)
            or not math.isfinite(value) or (integer and not float(value).is_integer())
            or abs(value) >= 2**63):
        raise RunDocumentError(f"{name} must be {what}, got {value!r}")
    out = int(value) if integer else float(value)
    if positive and not out > 0:
        raise RunDocumentError(f"{name} must be > 0, got {value!r}")
    if minimum is not None and out < minimum:
        raise RunDocumentError(f"{name} must be ≥ {minimum}, got {value!r}")
    return out


def checked_flag(value: Any, name: str) -> bool:
    """A yes/no parameter: a bool (or 0/1); RunDocumentError naming ``name`` otherwise."""
    if isinstance(value, bool | np.bool_) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise RunDocumentError(f"{name} must be true or false, got {value!r}")


def checked_range(value: Any, name: str, allow_none: bool = True) -> tuple[float, float] | None:
    """A (low, high) pair of finite numbers with low < high; RunDocumentError naming ``name``."""
    if value is None and allow_none:
        return None
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise RunDocumentError(f"{name} must be a [low, high] pair, got {value!r}")
    lo, hi = (checked_number(v, name) for v in value)
    if not lo < hi:
        raise RunDocumentError(f"{name} must be [low, high] with low < high, got {value!r}")
    return lo, hi


def check_frame_header(shape: tuple[int, ...], dtype: np.dtype, where: str) -> None:
    """Refuse frames of a non-numeric dtype or too big to read, before reading them.

    Raises
    ------
    FrameError
        ``"bad_dtype"`` (complex, strings, records, objects) or ``"too_large"`` (more than
        :data:`MAX_FRAME_BYTES`).
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in _FRAME_KINDS:
        raise FrameError("bad_dtype", f"{where}: frames of dtype {dtype} are not detector counts "
                         "(expected integers or floats)")
    nbytes = math.prod(int(n) for n in shape) * max(dtype.itemsize, 8)  # analysed as float64
    if nbytes > MAX_FRAME_BYTES:
        raise FrameError("too_large", f"{where}: a frame of shape {tuple(shape)} needs "
                         f"{nbytes / 2**30:.1f} GiB as float64 (limit {MAX_FRAME_BYTES / 2**30:.0f} GiB)")


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
    :meth:`analyse` (one event → dict of result columns) and optionally :meth:`summary`;
    analyses that accumulate across events also implement :meth:`restore`.

    Each emitted row carries ``seq_num``, ``time`` (event time), ``flag`` (``""`` when the
    event was analysed, else a reason such as ``"all_nan"``) and ``message``.
    """

    name: str = "analysis"
    version: str = "0"
    columns: dict[str, str] = {}
    #: the external (frame) data key(s) this analysis needs; found in the descriptor
    frame_keys: tuple[str, ...] = ()
    #: an event's result depends on that event alone (not on earlier rows or accumulated
    #: state): the live follower may then take a newer event first under load (skip-ahead).
    #: False for seeded (XRD, XANES) and accumulating (SXDM) analyses: the same order as a
    #: replay keeps their results bit-identical.
    order_free: bool = False

    def __init__(self, sink: ResultSink, parameters: dict[str, Any] | None = None,
                 frame_fallback: Callable[[str, int], np.ndarray] | None = None) -> None:
        super().__init__()
        bad = {t for t in self.columns.values() if t not in COLUMN_TYPES}
        if bad:
            raise TypeError(f"unknown column types {bad}; use {sorted(COLUMN_TYPES)}")
        self.sink = sink
        if parameters is not None and not isinstance(parameters, Mapping):
            raise RunDocumentError(f"analysis_parameters.{self.name} must be a mapping of parameter "
                                   f"names to values, got {type(parameters).__name__}")
        self.parameters = dict(parameters or {})
        self.frames = FrameResolver(fallback=frame_fallback)
        self.start_doc: dict[str, Any] | None = None
        self.descriptors: dict[str, dict] = {}
        self.done: set[int] = set()
        self.rows: list[dict[str, Any]] = []
        #: seq_num -> row committed by an earlier pass (read back from the sink at the start)
        self.committed: dict[int, dict[str, Any]] = {}
        self._restores = type(self).restore is not AnalysisCallback.restore
        self._restored: set[int] = set()
        self._held: dict[int, dict] = {}  # seq_num -> event (new or committed) waiting for frames
        self._pending: list[dict[str, Any]] = []
        self._pending_since = 0.0  # time.monotonic() when the oldest pending row was made
        self._batching = False
        # background commits (sink.background_commits): batches handed to the committer
        # thread, in order; their rows stay in _in_flight (seq_num -> row) until stored
        self._background = bool(getattr(sink, "background_commits", False))
        self._commit_cond = threading.Condition()
        self._commit_queue: deque[list[dict[str, Any]]] = deque()
        self._in_flight: dict[int, dict[str, Any]] = {}
        self._returned: list[dict[str, Any]] = []  # rows of a failed commit: pending again
        self._commit_error: BaseException | None = None
        self._committing = False
        self._committer: threading.Thread | None = None
        self._stream = self.parameters.get("stream", "primary")
        if not isinstance(self._stream, str):
            raise RunDocumentError(f"analysis_parameters.{self.name}.stream must be a stream name, "
                                   f"got {self._stream!r}")

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
        imported = doc.get("strainstream_import")
        if isinstance(imported, Mapping):  # what the user supplied on import, kept with the results
            meta["parameters"] = {**self.parameters, "import": dict(imported)}
        self.rows = sorted(self.sink.begin(meta, self.all_columns()), key=lambda r: r["seq_num"])
        self.committed = {int(r["seq_num"]): r for r in self.rows}
        self.done = set(self.committed)
        try:
            self.on_start(doc)
        except RunDocumentError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
            # metadata of the wrong type or shape: one documented error naming the run
            raise RunDocumentError(f"run {doc['uid']}: {self.name} cannot use its start document: "
                                   f"{_one_line(exc)}") from exc

    def descriptor(self, doc):
        if doc.get("name", "primary") == self._stream:
            uid, data_keys = doc.get("uid"), doc.get("data_keys", {})
            if not isinstance(uid, str) or not isinstance(data_keys, Mapping):
                raise RunDocumentError(f"descriptor {uid!r} of run {self.start_doc and self.start_doc.get('uid')}: "
                                       f"needs a 'uid' and a 'data_keys' mapping (got {type(data_keys).__name__})")
            self.descriptors[uid] = dict(doc)
            self.on_descriptor(doc)

    def stream_resource(self, doc):
        try:
            self.frames.stream_resource(doc)
        except FrameUnavailable as exc:  # its events end flagged 'frame_unavailable'
            logger.warning("%s: %s", self.name, exc)

    def stream_datum(self, doc):
        try:
            self.frames.stream_datum(doc)
        except FrameUnavailable as exc:  # the events it should cover end flagged at the stop
            logger.warning("%s: %s", self.name, exc)
            return
        # only the held events this datum covers can have become ready
        lo, hi = int(doc["seq_nums"]["start"]), int(doc["seq_nums"]["stop"])
        if hi - lo < len(self._held):
            candidates = [seq for seq in range(lo, hi) if seq in self._held]
        else:
            candidates = [seq for seq in self._held if lo <= seq < hi]
        for seq in sorted(candidates):
            if self._frames_ready(seq):
                self._handle(self._held.pop(seq))

    def event(self, doc):
        seq = self._event_seq(doc)
        if seq is None or seq in self._held or seq in self._restored:
            return
        with self._commit_cond:  # (the committer moves rows from _in_flight to done)
            if seq in self._in_flight:
                return
            if seq in self.done:  # its row is committed: never analysed again
                if not (self._restores and seq in self.committed):
                    return  # nothing to rebuild (per-event analysis, or analysed in this pass)
            elif any(r["seq_num"] == seq for r in self._pending):
                return
        if self._frames_ready(seq):
            self._handle(doc)
        else:
            self._held[seq] = dict(doc)

    def stop(self, doc):
        self.release_held()
        self.flush()
        self.rows.sort(key=lambda r: r["seq_num"])
        summary = self.summary()
        summary["exit_status"] = doc.get("exit_status")
        self.sink.finish(summary)
        self.frames.close()

    # -- machinery -----------------------------------------------------------------------
    def release_held(self) -> None:
        """Hand every held event on, in seq_num order, frames resolvable or not (the stop)."""
        for seq in sorted(self._held):
            self._handle(self._held.pop(seq))

    def _handle(self, event: dict) -> None:
        """An event whose frames are resolvable (or never will be): restore or analyse it."""
        seq = int(event["seq_num"])
        if seq in self.committed:
            self._restored.add(seq)
            # as in _process: the rebuilt state must carry the live pass's bits
            with _single_thread():
                self.restore(event, self.committed[seq])
        else:
            self._process(event)

    def committed_frames(self, seq: int) -> dict[str, np.ndarray] | None:
        """The frames of committed event ``seq`` for :meth:`restore`; None (logged) if unreadable."""
        try:
            return self.read_frames(seq)
        except (FrameUnavailable, FrameError, OSError, KeyError, ValueError) as exc:
            logger.warning("%s: frame of committed event %d of run %s is unreadable now (%s); the "
                           "accumulated results will lack it", self.name, seq,
                           self.start_doc and self.start_doc.get("uid"), exc)
            return None

    def param_number(self, key: str, default: Any, **checks: Any) -> float | int | None:
        """Analysis parameter ``key`` checked with :func:`checked_number` (RunDocumentError)."""
        return checked_number(self.parameters.get(key, default),
                              f"analysis_parameters.{self.name}.{key}", **checks)

    def param_flag(self, key: str, default: bool) -> bool:
        """Yes/no analysis parameter ``key`` (RunDocumentError if it is not one)."""
        return checked_flag(self.parameters.get(key, default), f"analysis_parameters.{self.name}.{key}")

    def _event_seq(self, doc) -> int | None:
        """The seq_num of an event of the analysed stream; None (logged) for others or a bad one."""
        if not isinstance(doc.get("descriptor"), str) or doc["descriptor"] not in self.descriptors:
            return None
        try:
            return _int(doc.get("seq_num"))
        except ValueError:
            logger.warning("%s: event %s of run %s has no usable seq_num (%r); ignored", self.name,
                           doc.get("uid"), self.start_doc and self.start_doc.get("uid"), doc.get("seq_num"))
            return None

    def all_columns(self) -> dict[str, str]:
        return {"seq_num": "int64", "time": "float64", "flag": "string", "message": "string",
                **self.columns}

    def _frame_keys(self) -> list[str]:
        keys = []
        for desc in self.descriptors.values():
            for key, dk in desc.get("data_keys", {}).items():
                if isinstance(dk, Mapping) and dk.get("external") == "STREAM:" and (not self.frame_keys or key in self.frame_keys):
                    keys.append(key)
        return keys

    def _frames_ready(self, seq: int) -> bool:
        return all(self.frames.available(k, seq) for k in self._frame_keys())

    def known_rows(self) -> tuple[list[dict[str, Any]], ...]:
        """Every row there is so far: ``(committed, in flight, pending)``, each a list in
        the order the rows were made (committed: earlier passes' first, in seq_num order)."""
        with self._commit_cond:
            return list(self.rows), list(self._in_flight.values()), list(self._pending)

    def previous_row(self, seq: int) -> dict[str, Any] | None:
        """The latest row (committed, in flight or pending) of an event before ``seq``; None
        if none."""
        best = None
        for rows in self.known_rows():  # each in increasing seq_num order
            for row in reversed(rows):
                if row["seq_num"] < seq:
                    if best is None or row["seq_num"] > best["seq_num"]:
                        best = row
                    break
        return best

    def read_frames(self, seq: int) -> dict[str, np.ndarray]:
        """The event's frames, each checked to be numeric and of a sane size (FrameError)."""
        out = {}
        for k in self._frame_keys():
            frame = self.frames.read(k, seq)
            arr = frame if isinstance(frame, np.ndarray) else np.asarray(frame)
            check_frame_header(arr.shape, arr.dtype, f"{k} at seq_num {seq}")
            out[k] = arr
        return out

    def _process(self, event: dict) -> None:
        seq = int(event["seq_num"])
        row: dict[str, Any] = {c: _missing(t) for c, t in self.columns.items()}
        t = event.get("time")
        row.update(seq_num=seq, time=float(t) if _is_number(t) else math.nan, flag="", message="")
        try:
            if not math.isfinite(row["time"]) or not isinstance(event.get("data"), Mapping):
                raise FrameError("bad_event", f"event seq_num {seq} has no usable 'time' ({t!r}) or "
                                 f"'data' ({type(event.get('data')).__name__})")
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
        row = self._typed_row(row)
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append(row)
        if not self._batching:
            self.flush()
        elif time.monotonic() - self._pending_since >= BATCH_WINDOW_S:
            try:
                self._commit()
            except Exception as exc:  # the rows stay pending: the batch's end commits them
                logger.warning("%s: committing within a batch failed (%s); retried at its end", self.name, exc)

    def _typed_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` with exactly the declared columns and types; a value that is not of its
        column's type (or ±inf) is stored as missing and the row flagged, never written as good."""
        out, bad = {}, []
        for col, kind in self.all_columns().items():
            try:
                value = _coerce(row.get(col), kind)
            except (TypeError, ValueError, OverflowError):
                value, _ = _missing(kind), bad.append(col)
            if kind == "float64" and math.isinf(value):
                value, _ = math.nan, bad.append(col)
            out[col] = value
        if bad:
            logger.warning("%s: event %d: unusable values in %s", self.name, out["seq_num"], bad)
            if not out["flag"]:
                out["flag"] = "bad_value"
            out["message"] = "; ".join(m for m in (out["message"], f"not a finite {self.name} "
                                                   f"result: {', '.join(bad)}") if m)
        return out

    @contextlib.contextmanager
    def batch(self):
        """Commit the rows of the events processed inside the block together: in one append
        at its end, or, in a long block, whenever the oldest uncommitted row has waited
        :data:`BATCH_WINDOW_S`. With background commits the block's end hands its rows to
        the committer thread and returns (:meth:`flush` waits for them)."""
        self._batching = True
        try:
            yield self
        finally:
            self._batching = False
            self._commit()

    def flush(self) -> None:
        """Commit pending rows to the sink (one atomic append) and wait until every row
        handed to the committer is stored; raise what a failed commit raised (its rows are
        pending again: the next flush, or a restart, commits them)."""
        if not self._background:
            self._commit()
            return
        try:
            self._commit()
        except Exception as exc:  # an earlier batch failed: its rows are pending again
            logger.warning("%s: an earlier commit failed (%s); sending its rows again", self.name, exc)
            self._commit()
        with self._commit_cond:
            while self._commit_queue or self._committing:
                self._commit_cond.wait()
        self._commit()  # raises the failure of what was just waited for (its rows pending)

    def _commit(self) -> None:
        """Commit the pending rows: at once, or handed to the committer thread."""
        if not self._background:
            try:
                self._append_rows(self._pending)
            finally:  # what was stored is done; the rest stays pending
                self._pending = [r for r in self._pending if r["seq_num"] not in self.done]
            return
        with self._commit_cond:
            error, self._commit_error = self._commit_error, None
            if self._returned:  # a failed commit's rows go first, as if never handed over
                for row in self._returned:
                    self._in_flight.pop(row["seq_num"], None)
                self._pending = self._returned + self._pending
                self._returned = []
            if error is not None:
                raise error
            if not self._pending:
                return
            rows, self._pending = self._pending, []
            for row in rows:
                self._in_flight[row["seq_num"]] = row
            self._commit_queue.append(rows)
            if self._committer is None:
                self._committer = threading.Thread(target=self._commit_loop, daemon=True,
                                                   name=f"commit-{self.name}")
                self._committer.start()
            self._commit_cond.notify_all()

    def _commit_loop(self) -> None:
        """The committer thread: appends the queued batches in order; after a failure the
        failed batch and all later ones are returned to the document thread unsent."""
        while True:
            with self._commit_cond:
                if not self._commit_queue:
                    self._commit_cond.wait(COMMITTER_IDLE_S)
                if not self._commit_queue:
                    self._committer = None
                    return
                rows = self._commit_queue.popleft()
                self._committing = True
            try:
                self._append_rows(rows)
            except BaseException as exc:  # kept for the document thread; never lost here
                with self._commit_cond:  # (rows it did store left _in_flight in _mark_done)
                    later = [r for batch in self._commit_queue for r in batch]
                    self._commit_queue.clear()
                    self._returned.extend([r for r in rows if r["seq_num"] not in self.done] + later)
                    self._commit_error = exc
            finally:
                with self._commit_cond:
                    self._committing = False
                    self._commit_cond.notify_all()

    def _append_rows(self, rows: list[dict[str, Any]]) -> None:
        """Append ``rows`` to the sink, each exactly once: a failed append is reconciled with
        what the sink holds and the rest re-sent. Raises when the rows stay unstored; those
        stored are marked done either way. ``self._pending`` is left alone (callers)."""
        if not rows:
            return
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
                    if not rows:
                        return
                if attempt == _COMMIT_ATTEMPTS - 1:
                    raise
        self._mark_done(rows)

    def _mark_done(self, rows: list[dict[str, Any]]) -> None:
        with self._commit_cond:
            for row in rows:
                self.done.add(row["seq_num"])
                self._in_flight.pop(row["seq_num"], None)
            self.rows.extend(rows)

    # -- to override ---------------------------------------------------------------------
    def on_start(self, doc) -> None:
        """Hook: read parameters from the start document."""

    def on_descriptor(self, doc) -> None:
        """Hook: read configuration from the descriptor."""

    def analyse(self, event: dict, frames: dict[str, np.ndarray]) -> dict[str, Any]:
        raise NotImplementedError

    def restore(self, event: dict, row: dict[str, Any]) -> None:
        """Hook: rebuild accumulated state from an event an earlier pass committed (resume).

        Called by the base (never by subclasses) exactly once per event whose result ``row``
        was read back from the sink at the start, instead of :meth:`analyse`: as soon as the
        event's frames are resolvable — held exactly like a new event until its StreamDatum
        arrives, handed on at the stop regardless —, so restored and new events are taken in
        the same seq_num order as an uninterrupted pass takes them. Read the frames with
        :meth:`committed_frames`; ``row["flag"]`` says whether the first pass used them. No
        row is written. Runs under the same one-thread BLAS limit as :meth:`analyse`.

        The default does nothing, and the base then neither holds committed events nor
        resolves their frames: per-event analyses (frame statistics, XRD) need no state from
        earlier events (beyond :meth:`previous_row`, which sees the committed rows).
        """

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


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, RunDocumentError) else text


def _missing(kind: str):
    return {"float64": math.nan, "int64": -1, "string": "", "bool": False}[kind]


def _coerce(value, kind: str):
    """``value`` as the Python type of column kind ``kind``; TypeError/ValueError if it is not one."""
    if value is None:
        return _missing(kind)
    if kind == "float64":
        if isinstance(value, str | bytes) or np.ndim(value) != 0:
            raise TypeError(f"{value!r} is not a number")
        return float(value)
    if kind == "int64":
        if isinstance(value, float | np.floating) and math.isnan(value):
            return _missing(kind)
        return _int(value)
    if kind == "bool":
        if np.ndim(value) != 0:
            raise TypeError(f"{value!r} is not a truth value")
        return bool(value)
    return str(value)
