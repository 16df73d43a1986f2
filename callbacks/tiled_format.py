"""TiledWriter's storage format, in one place: rows <-> events, frame references, data-source patches.

``bluesky_tiled_plugins.TiledWriter`` stores a run as a container of streams; each stream
holds

- an ``internal`` table: one row per event with ``seq_num``, ``time``, one column per
  (non-external) data key and a ``ts_<key>`` column with its timestamp;
- one array node per external data key (detector frames), whose single data source names
  the detector's file (assets), how to read it (parameters: HDF5 ``dataset``, optional
  ``slice``) and the array it holds (structure: ``(rows, *frame_shape)``). The writer's
  consolidator grows that data source with one patch per StreamDatum.

This module is the only code that knows that layout. The live source
(:mod:`strainstream.callbacks.tiled_source`), replay (:mod:`strainstream.replay`) and the
spool flush (:mod:`strainstream.spool`) go through it.

Frame references
----------------
Which frame belongs to which event is resolved from the data source itself
(:class:`ExternalFrames`), never from ``seq_num - 1``:

1. Data sources written through :func:`install_consolidators` (every strainstream
   session and spool flush) record the StreamDatums they consumed in their ``properties``
   (``"stream_datums": [[seq_start, seq_stop, index_start, index_stop, asset, row], ...]``,
   contiguous datums merged): each event's frame index in the detector file is the one its
   StreamDatum named, and its index in the tiled array is ``row`` + (index - index_start).
   The array's rows are the file's frames: a frame no event references (taken for an event
   a beam-loss suspension dropped; ophyd area detectors cannot remove it from the file)
   still has its row, so tiled serves exactly the file. (Entries written before had no
   ``row``: the rows then count the referenced frames only.)
   Runs whose frames do not start at index 0 of the file, or whose events do not each carry
   a frame, resolve exactly.
2. Data sources without that record (archives written by a plain TiledWriter) are read
   through their structure and parameters: row ``r`` of the array holds the ``r``-th event
   of the stream (in seq_num order) and is frame ``start + r * step`` of the file, where
   ``start:...:step`` is the data source's ``slice`` parameter (the same view tiled's HDF5
   adapter gives over HTTP).
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DATUM_RANGES",
    "INTERNAL",
    "ExternalFrames",
    "FrameRef",
    "append_missing_rows",
    "events_from_rows",
    "install_consolidators",
    "is_timestamp_column",
    "put_data_source",
    "register_stream_datums",
    "row_from_event",
    "rows_of",
    "stored_seq_nums",
    "stream_container",
]

logger = logging.getLogger(__name__)

#: the table of a stream's event rows
INTERNAL = "internal"
#: columns of the event table that are not data keys
RESERVED = ("seq_num", "time")
#: prefix of the timestamp column of a data key
TS_PREFIX = "ts_"
#: key of the StreamDatum record in a data source's ``properties``
DATUM_RANGES = "stream_datums"


# -- rows <-> events ----------------------------------------------------------------------------
def _py(v):
    return v.item() if isinstance(v, np.generic) else v


def is_timestamp_column(name: str) -> bool:
    """Is ``name`` the ``ts_<key>`` timestamp column of a data key (not a data key)?"""
    return name.startswith(TS_PREFIX)


def rows_of(df) -> list[dict[str, Any]]:
    """The rows of a table read from tiled (a pandas DataFrame) as dicts."""
    return df.to_dict(orient="records") if len(df) else []


def events_from_rows(rows: Iterable[Mapping[str, Any]], descriptor_uid: str) -> list[dict[str, Any]]:
    """Event documents from rows of a TiledWriter ``internal`` table (sorted by seq_num)."""
    events = []
    for row in rows:
        row = {k: _py(v) for k, v in row.items()}
        seq = int(row["seq_num"])
        data = {k: v for k, v in row.items() if k not in RESERVED and not is_timestamp_column(k)}
        ts = {k[len(TS_PREFIX):]: v for k, v in row.items() if is_timestamp_column(k)}
        events.append(
            {
                "uid": f"event-{descriptor_uid}-{seq}",
                "descriptor": descriptor_uid,
                "seq_num": seq,
                "time": float(row["time"]),
                "data": data,
                "timestamps": ts,
                "filled": {},
            }
        )
    return sorted(events, key=lambda e: e["seq_num"])


def row_from_event(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The ``internal`` table row TiledWriter stores for an event document."""
    row = {"seq_num": doc["seq_num"], "time": doc["time"], **doc["data"]}
    row.update({f"{TS_PREFIX}{k}": v for k, v in doc["timestamps"].items()})
    return row


def stream_container(run, stream: str | None):
    """The plain container of ``stream`` in ``run`` (None if tiled does not have it)."""
    node = run[stream] if stream is not None and stream in run else None
    return getattr(node, "base", node)


def stored_seq_nums(stream_node) -> Callable[[], list[int]]:
    """``() -> sorted seq_nums of the rows stored in the stream's internal table``."""

    def seq_nums() -> list[int]:
        if stream_node is None or INTERNAL not in stream_node:
            return []
        return sorted({int(s) for s in stream_node[INTERNAL].read()["seq_num"].tolist()})

    return seq_nums


def append_missing_rows(stream_node, rows: Sequence[Mapping[str, Any]]) -> int:
    """Append to the stream's ``internal`` table the rows whose seq_num it does not hold
    (columns as the stored schema); returns how many were appended."""
    import pyarrow as pa

    if stream_node is None or INTERNAL not in stream_node:
        return 0
    table = stream_node[INTERNAL]
    have = set(table.read()["seq_num"].tolist())
    rows = [r for r in rows if r["seq_num"] not in have]
    if not rows:
        return 0
    schema = table.structure().arrow_schema_decoded
    rows = [{k: r.get(k) for k in schema.names} for r in rows]
    table.append_partition(0, pa.Table.from_pylist(rows, schema=schema))
    return len(rows)


#: StreamResource mimetype of a folder of one TIFF per frame (areaDetector's AD_TIFF)
TIFF_SEQUENCE = "multipart/related;type=image/tiff"


# -- frame references ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameRef:
    """Where the frame of one event is.

    Attributes
    ----------
    seq_num : int
        The event.
    index : int
        Frame index in the detector file's dataset (what the StreamDatum named).
    node_index : int
        Index along the first axis of the tiled array node.
    uri : str
        The file holding the frame (``""`` when unknown: read through tiled).
    """

    seq_num: int
    index: int
    node_index: int
    uri: str


def _field(obj, name: str, default=None):
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _first_axis_slice(text: Any) -> tuple[int, int]:
    """``(start, step)`` of the first axis of a data source's ``slice`` parameter."""
    if not text:
        return 0, 1
    first = str(text).strip("()[] ").split(",")[0].strip()
    if ":" not in first:
        return 0, 1  # an integer index drops the axis: not a stack of frames
    parts = [p.strip() for p in first.split(":")]
    start = int(parts[0]) if parts[0] else 0
    step = int(parts[2]) if len(parts) > 2 and parts[2] else 1
    if start < 0 or step < 1:
        raise ValueError(f"slice {text!r} of the frames is not supported (negative start or step)")
    return start, step


class ExternalFrames:
    """The frames of one external array node, resolved from its data source.

    Parameters
    ----------
    node : tiled array client
        The node (``run[stream][data_key]``).
    data_key : str
        Its data key.
    seq_nums : callable, optional
        ``() -> sorted seq_nums of the stream's events``, used only for data sources that do
        not record their StreamDatums (default: the events are numbered 1, 2, ...).
    fetched : bool
        ``node`` was just fetched with its data sources (no request to read them again).
    """

    def __init__(self, node, data_key: str, seq_nums: Callable[[], Sequence[int]] | None = None,
                 fetched: bool = False) -> None:
        has_sources = getattr(node, "_include_data_sources", False)
        self.node = node if has_sources else node.include_data_sources()  # one request: item + data source
        fresh = fetched or not has_sources  # else a node fetched earlier: read its source again
        self.data_key = data_key
        self._seq_nums = seq_nums
        self.mimetype = ""
        self.parameters: dict[str, Any] = {}
        self.uris: list[str] = []
        self.rows = 0
        self.recorded = False
        self._ranges: list[tuple[int, int, int, int, int, int]] = []  # seq0, seq1, idx0, idx1, asset, row0
        self._files: dict[str, Any] = {}
        self._offer_lock = threading.Lock()
        self._offered = None  # a newer data source, not applied yet (see offer)
        self._load(fetch=not fresh)

    # -- the data source -------------------------------------------------------------------
    def refresh(self) -> None:
        """Read the node's data source again (it grows while the run is written)."""
        self._load(fetch=True)

    def offer(self, source) -> None:
        """A newer data source of the node, e.g. from a websocket ``array-ref`` update (thread
        safe; applied by the next :meth:`ref`, so a reader needs no request for new frames)."""
        with self._offer_lock:
            self._offered = source

    def _take_offered(self) -> None:
        with self._offer_lock:
            source, self._offered = self._offered, None
        if source is not None:
            self._apply(source)

    def _load(self, fetch: bool) -> None:
        if fetch:
            self.node.refresh()  # one request; also updates the shape used by HTTP reads
        (source,) = self.node.data_sources()[:1]
        self._apply(source)

    def _apply(self, source) -> None:
        """Take the frame references of data source ``source`` (a tiled DataSource)."""
        self.mimetype = source.mimetype
        self.parameters = dict(source.parameters or {})
        assets = sorted(source.assets or [], key=lambda a: a.num or 0)
        self.uris = [a.data_uri for a in assets if a.parameter in ("data_uris", "data_uri")] or \
            [a.data_uri for a in assets]
        shape = _field(source.structure, "shape") or [0]
        self.rows = int(shape[0]) if len(shape) else 0
        recorded = (source.properties or {}).get(DATUM_RANGES)
        self.recorded = recorded is not None
        ranges = []
        if self.recorded:
            row = 0
            for seq0, seq1, idx0, idx1, asset, *row0 in recorded:
                if row0:  # written since frames take their file row (gaps included)
                    row = int(row0[0])
                ranges.append((int(seq0), int(seq1), int(idx0), int(idx1), int(asset), row))
                row += int(idx1) - int(idx0)
        else:
            start, step = _first_axis_slice(self.parameters.get("slice"))
            seqs = list(self._seq_nums()) if self._seq_nums is not None else []
            if not seqs:
                seqs = list(range(1, self.rows + 1))  # bluesky numbers a stream's events 1, 2, ...
            for r, seq in enumerate(seqs[: self.rows]):
                idx = start + r * step
                if ranges and ranges[-1][1] == seq and ranges[-1][3] == idx and step == 1:
                    s0, _, i0, _, a, r0 = ranges[-1]
                    ranges[-1] = (s0, seq + 1, i0, idx + 1, a, r0)
                else:
                    ranges.append((seq, seq + 1, idx, idx + step, 0, r))
        self._ranges = sorted(ranges)

    @property
    def uri(self) -> str:
        """The detector file, when the node has exactly one (``""`` otherwise)."""
        return self.uris[0] if len(self.uris) == 1 else ""

    def ref(self, seq_num: int) -> FrameRef | None:
        """Where the frame of event ``seq_num`` is; None if the data source has no frame for it."""
        if self._offered is not None:
            self._take_offered()
        i = bisect.bisect_right(self._ranges, (seq_num, float("inf"))) - 1
        if i < 0:
            return None
        seq0, seq1, idx0, idx1, asset, row0 = self._ranges[i]
        if not seq0 <= seq_num < seq1:
            return None
        per = max((idx1 - idx0) // max(seq1 - seq0, 1), 1)  # frames per event
        if self.recorded:
            node_index = row0 + (seq_num - seq0) * per
        else:
            node_index = row0 + (seq_num - seq0)
        uri = self.uris[asset] if self.recorded and asset < len(self.uris) else self.uri
        return FrameRef(seq_num, idx0 + (seq_num - seq0) * per, node_index, uri)

    def resolve(self, seq_num: int) -> FrameRef | None:
        """:meth:`ref`, reading the data source again once if it does not cover ``seq_num`` yet."""
        found = self.ref(seq_num)
        if found is None:
            self.refresh()
            found = self.ref(seq_num)
        return found

    # -- documents ---------------------------------------------------------------------------
    def stream_resource(self, uid: str, run_start: str) -> dict[str, Any]:
        """A StreamResource document for the node (file URI ``""`` with several files)."""
        return {"uid": uid, "data_key": self.data_key, "mimetype": self.mimetype, "uri": self.uri,
                "parameters": dict(self.parameters), "run_start": run_start}

    @staticmethod
    def stream_datum(ref: FrameRef, uid: str, stream_resource: str, descriptor: str) -> dict[str, Any]:
        """The StreamDatum document of one event's frame."""
        return {"uid": uid, "stream_resource": stream_resource, "descriptor": descriptor,
                "indices": {"start": ref.index, "stop": ref.index + 1},
                "seq_nums": {"start": ref.seq_num, "stop": ref.seq_num + 1}}

    # -- reading -----------------------------------------------------------------------------
    def read(self, seq_num: int) -> np.ndarray:
        """The frame of event ``seq_num``: from the file when it is on this filesystem
        (h5py, SWMR), else through tiled (HTTP). KeyError if no frame is registered for it."""
        ref = self.resolve(seq_num)
        if ref is None:
            raise KeyError(f"{self.data_key}: no frame registered for seq_num {seq_num}")
        if self.mimetype == TIFF_SEQUENCE and ref.node_index < len(self.uris):
            path = _local_file(self.uris[ref.node_index])  # one file per frame (areaDetector TIFF)
            if path is not None:
                import tifffile

                return np.asarray(tifffile.imread(path))
            return self.read_http(seq_num)
        path = _local_file(ref.uri) if ref.uri else None
        dataset = self.parameters.get("dataset")
        if path is not None and isinstance(dataset, str) and self.mimetype == "application/x-hdf5":
            return self._read_h5(path, dataset, ref.index)
        return self.read_http(seq_num)

    def read_http(self, seq_num: int) -> np.ndarray:
        """The frame of event ``seq_num`` read through tiled."""
        ref = self.resolve(seq_num)
        if ref is None:
            raise KeyError(f"{self.data_key}: no frame registered for seq_num {seq_num}")
        shape = getattr(self.node, "shape", None)
        if shape and ref.node_index >= shape[0]:
            self.node.refresh()  # frame references offered by an update: the node's shape is older
        return np.asarray(self.node[ref.node_index])

    def _read_h5(self, path, dataset: str, index: int) -> np.ndarray:
        import h5py

        f = self._files.get(str(path))
        if f is None:
            f = self._files[str(path)] = h5py.File(path, "r", swmr=True, locking=False)
        ds = f[dataset]
        if index >= ds.shape[0]:
            ds.refresh()
        return np.asarray(ds[index])

    def close(self) -> None:
        for f in self._files.values():
            with contextlib.suppress(Exception):
                f.close()
        self._files.clear()


def _local_file(uri: str):
    from pathlib import Path
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        path = Path(parsed.path)
    elif parsed.scheme == "" and uri.startswith("/"):
        path = Path(uri)
    else:
        return None
    return path if path.is_file() else None


# -- writing: the consolidator and its data-source patches ------------------------------------
_RECORDING: dict[type, type] = {}


def _recording(cls: type) -> type:
    """A subclass of consolidator ``cls`` that records the StreamDatums it consumed in its
    data source's ``properties`` (see :data:`DATUM_RANGES`)."""
    if cls in _RECORDING:
        return _RECORDING[cls]

    class Recording(cls):  # type: ignore[misc, valid-type]
        def consume_stream_datum(self, doc):
            ranges = self.__dict__.setdefault("_strainstream_datums", [])
            seq0, seq1 = int(doc["seq_nums"]["start"]), int(doc["seq_nums"]["stop"])
            idx0, idx1 = int(doc["indices"]["start"]), int(doc["indices"]["stop"])
            asset = max(len(getattr(self, "assets", ())) - 1, 0)
            # the node's rows are the file's frames: a frame no event references (taken for an
            # event a suspension dropped) still takes its row, so row = file offset + index
            files = self.__dict__.setdefault("_strainstream_files", {})  # asset -> [row0, seen]
            if asset not in files:
                start = idx0 if not ranges else 0  # a run's frames may start inside its file
                files[asset] = [self._num_rows - start, start]
            row0, seen = files[asset]
            gap = max(idx0 - seen, 0)
            self._num_rows += gap
            last = ranges[-1] if ranges else None
            row = row0 + idx0
            if last is not None and last[1] == seq0 and last[3] == idx0 and last[4] == asset \
                    and (idx1 - idx0) == (seq1 - seq0) and (last[3] - last[2]) == (last[1] - last[0]):
                last[1], last[3] = seq1, idx1
            else:
                ranges.append([seq0, seq1, idx0, idx1, asset, row])
            patch = super().consume_stream_datum(doc)
            files[asset][1] = max(seen, idx1)
            if gap and patch is not None:
                patch = type(patch)(offset=(patch.offset[0] - gap, *patch.offset[1:]),
                                    shape=(patch.shape[0] + gap, *patch.shape[1:]))
            return patch

        def get_data_source(self):
            source = super().get_data_source()
            ranges = self.__dict__.get("_strainstream_datums", [])
            source.properties = {**(source.properties or {}), DATUM_RANGES: [list(r) for r in ranges]}
            return source

    Recording.__name__ = Recording.__qualname__ = f"Recording{cls.__name__}"
    _RECORDING[cls] = Recording
    return Recording


def _normalized_event_page(self, doc) -> None:
    """RunNormalizer.event_page: normalize each row as ``event`` does, emit one page."""
    from event_model import DocumentNames, pack_event_page, unpack_event_page

    rows: list[dict] = []
    emit = self.emit

    def collect(name, d):
        if name == DocumentNames.event:
            rows.append(d)
        else:
            emit(name, d)

    self.emit = collect
    try:
        for event in unpack_event_page(doc):
            self.event(event)
    finally:
        del self.emit  # back to the class's method
    if rows:
        emit(DocumentNames.event_page, pack_event_page(*rows))


def _run_writer_event_page(self, doc) -> None:
    """_RunWriter.event_page: the page's rows in the cache, then one table write (not one per
    row, as ``event`` does at batch_size=1)."""
    from event_model import unpack_event_page

    desc_node = self._desc_nodes[doc["descriptor"]]
    data_cache = self._internal_data_cache[desc_node.item["id"]]
    for event in unpack_event_page(doc):
        row = {"seq_num": event["seq_num"], "time": event["time"], **event["data"]}
        row.update({f"ts_{k}": v for k, v in event["timestamps"].items()})
        data_cache.append(row)
    if data_cache and len(data_cache) >= self._batch_size:
        self._write_internal_data(data_cache, desc_node=desc_node)
        data_cache.clear()


def _install_page_writes() -> None:
    """bluesky-tiled-plugins (2.0.12) writes an event page row by row at batch_size=1: both
    its RunNormalizer and its _RunWriter unpack pages into events. A fly scan's line (one
    page of N rows) then costs N table writes and N updates for every subscriber. Patched
    here: one normalized page, one table write (the rows, types and seq_nums are those the
    row-by-row path writes). Skipped if the classes are not the ones this was written for."""
    from bluesky_tiled_plugins.writing import tiled_writer as tw

    writer, normalizer = tw._RunWriter, tw.RunNormalizer
    if getattr(writer, "_strainstream_pages", False):
        return
    needed = ("_desc_nodes", "_internal_data_cache", "_write_internal_data", "_batch_size")
    if not all(n in writer.__init__.__code__.co_names or hasattr(writer, n) for n in needed):
        logger.warning("bluesky_tiled_plugins' _RunWriter is not the one strainstream knows: "
                       "event pages are written row by row")
        return
    normalizer.event_page = _normalized_event_page
    writer.event_page = _run_writer_event_page
    writer._strainstream_pages = True


def _run_writer_stream_datum(self, doc) -> None:
    """_RunWriter.stream_datum at batch_size 1: the first StreamDatum of a new external node
    registers the node with its frames in one request, where bluesky-tiled-plugins (2.0.12)
    registers it empty and then sends the data source again with the datum's frames (two
    sequential requests, 80-170 ms, on the way to every run's first event). Later datums,
    another StreamResource of the same key and batched writers take the original path."""
    from bluesky_tiled_plugins.writing import tiled_writer as tw

    sres_uid, desc_uid = doc["stream_resource"], doc["descriptor"]
    if (self._batch_size <= 1 and sres_uid not in self._sres_nodes
            and sres_uid in self._stream_resource_cache and desc_uid in self._desc_nodes):
        sres_doc = self._stream_resource_cache[sres_uid]
        desc_node = self._desc_nodes[desc_uid]
        full_key = f"{desc_node.item['id']}_{sres_doc['data_key']}"  # as get_sres_node names it
        if full_key not in self._sres_nodes:
            consolidator = tw.consolidator_factory(sres_doc, desc_node.metadata)
            consolidator.consume_stream_datum(doc)
            source = consolidator.get_data_source()
            node = desc_node.new(key=consolidator.data_key, structure_family=source.structure_family,
                                 data_sources=[source], metadata={}, specs=[], access_tags=self.access_tags)
            # kept only once tiled has the node: a failed request leaves no half-counted datum
            self._consolidators[sres_uid] = self._consolidators[full_key] = consolidator
            self._sres_nodes[sres_uid] = self._sres_nodes[full_key] = node
            return
    _ORIGINAL["stream_datum"](self, doc)


#: _RunWriter methods replaced here, by name
_ORIGINAL: dict[str, Any] = {}


def _install_first_datum_registration() -> None:
    """Register a new external node with its first StreamDatum's frames (one request, not
    two): :func:`_run_writer_stream_datum`. Skipped if ``_RunWriter`` is not the one known."""
    from bluesky_tiled_plugins.writing import tiled_writer as tw

    writer = tw._RunWriter
    if getattr(writer, "_strainstream_first_datum", False):
        return
    needed = ("_sres_nodes", "_stream_resource_cache", "_consolidators", "_desc_nodes")
    if not (all(n in writer.__init__.__code__.co_names for n in needed)
            and hasattr(tw, "consolidator_factory") and hasattr(writer, "get_sres_node")):
        logger.warning("bluesky_tiled_plugins' _RunWriter is not the one strainstream knows: a new "
                       "external node is registered empty, then sent its first frames")
        return
    _ORIGINAL["stream_datum"] = writer.stream_datum
    writer.stream_datum = _run_writer_stream_datum
    writer._strainstream_first_datum = True


def install_consolidators() -> None:
    """Make TiledWriter record each HDF5 StreamDatum in its node's data source (idempotent),
    write an event page in one request (:func:`_install_page_writes`) and register a new
    external node with its first frames (:func:`_install_first_datum_registration`).

    Adds the record to the data-source update the writer sends anyway (no extra request);
    readers of runs written before keep working (:class:`ExternalFrames`, case 2)."""
    from bluesky_tiled_plugins.writing.consolidators import CONSOLIDATOR_REGISTRY, HDF5Consolidator

    _install_page_writes()
    _install_first_datum_registration()

    current = CONSOLIDATOR_REGISTRY["application/x-hdf5"]
    if current in _RECORDING.values():
        return
    if current is not HDF5Consolidator and not issubclass(current, HDF5Consolidator):
        return  # someone else's consolidator: leave it alone
    CONSOLIDATOR_REGISTRY["application/x-hdf5"] = _recording(current)


def make_consolidator(stream_resource: Mapping[str, Any], descriptor: Mapping[str, Any]):
    """The consolidator the (installed) TiledWriter builds for ``stream_resource``."""
    from bluesky_tiled_plugins.writing.consolidators import consolidator_factory

    install_consolidators()
    return consolidator_factory(dict(stream_resource), dict(descriptor))


def put_data_source(node, source, patch=None) -> None:
    """Send a consolidator's data source (grown by ``patch``) to ``node``: the request the live
    TiledWriter sends after each StreamDatum."""
    from tiled.client.utils import handle_error
    from tiled.utils import safe_json_dump

    source.id = node.data_sources()[0].id
    params = ({"patch_shape": ",".join(map(str, patch.shape)),
               "patch_offset": ",".join(map(str, patch.offset))} if patch else None)
    handle_error(node.context.http_client.put(
        node.uri.replace("/metadata/", "/data_source/", 1),
        content=safe_json_dump({"data_source": source}), params=params))


def register_stream_datums(run, docs: Sequence[Mapping[str, Any]], unsent: set[int],
                           stream_of: Mapping[str, str], uid: str, say: Callable[[str], Any]) -> int:
    """Grow the external array nodes of ``run`` over the frames of the unsent StreamDatums.

    ``docs`` are the run's documents (``{"name", "doc"}``, in emission order); ``unsent`` the
    positions of those tiled has not accepted; ``stream_of`` maps descriptor uid -> stream.
    The consolidator of each StreamResource is rebuilt from the documents: every StreamDatum
    is consumed in order (so its state matches the live writer's), and after each unsent one
    the node's data source is updated with that datum's patch, exactly the request the live
    TiledWriter would have sent. Returns how many were sent.
    """
    resources = {d["doc"]["uid"]: d["doc"] for d in docs if d["name"] == "stream_resource"}
    consolidators: dict[str, Any] = {}
    nodes: dict[str, Any] = {}
    registered: dict[str, int] = {}  # frames tiled already has, per StreamResource
    sent = 0
    for i, d in enumerate(docs):
        if d["name"] != "stream_datum":
            continue
        doc = d["doc"]
        sres_uid = doc["stream_resource"]
        if sres_uid not in consolidators:
            stream = stream_of.get(doc["descriptor"])
            sres = resources.get(sres_uid)
            desc_node = stream_container(run, stream)
            if sres is None or desc_node is None or sres["data_key"] not in desc_node:
                say(f"spool: run {uid}: StreamDatum {doc['uid']} refers to a StreamResource or stream "
                    "tiled does not have; its frames stay in the detector file, unregistered")
                consolidators[sres_uid] = None
                continue
            consolidators[sres_uid] = make_consolidator(sres, dict(desc_node.metadata))
            node = nodes[sres_uid] = desc_node[sres["data_key"]]
            registered[sres_uid] = int(node.shape[0]) if node.shape else 0
        consolidator = consolidators[sres_uid]
        if consolidator is None:
            continue
        patch = consolidator.consume_stream_datum(doc)
        if i not in unsent or (patch and patch.offset[0] + patch.shape[0] <= registered[sres_uid]):
            continue  # tiled has it (sent, maybe without the record of it): only the state advances
        put_data_source(nodes[sres_uid], consolidator.get_data_source(), patch)
        sent += 1
    return sent
