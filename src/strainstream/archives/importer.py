"""Write runs nobody here recorded into the catalog, through the live writer path.

:func:`import_run` takes one run's documents (from :mod:`.exports` or :mod:`.folder`):

- classic ``Resource``/``Datum`` (ophyd v1 area detectors, specs ``AD_HDF5``, ``AD_TIFF``)
  become ``StreamResource``/``StreamDatum`` per event (:class:`strainstream.asset_docs.DatumToStream`),
  with ``root_map`` applied; every file a run references is checked first (the spec's own
  handler from area-detector-handlers lists the files of a datum), and a frame whose shape
  disagrees with its descriptor is refused before anything is written;
- ``experiment``/``calibration`` overrides and the field map are applied to the start document
  and recorded there (``strainstream_import``), so results and replays say what was supplied;
- the documents go to tiled through ``TiledWriter(batch_size=1)``, as the RunEngine's do;
  frames stay where they are, referenced (their folder must be readable by the server:
  :func:`strainstream.datadir.add_archive_roots`).

The run keeps its uid. A run the catalog already holds with its stop document is left alone
(``status="present"``); one it holds in part is completed (``status="resumed"``: missing
event rows by seq_num, unregistered frames, the stop document). An export without a stop
document (an aborted run) is imported with a stop document ``exit_status="abort"`` whose
``reason`` says it was added on import.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from strainstream.errors import StrainstreamError

__all__ = ["ArchiveError", "ImportOptions", "ImportResult", "PreparedRun", "import_run", "prepare_run",
           "write_run"]


class ArchiveError(StrainstreamError, ValueError):
    """A run cannot be imported as it is (missing file, unknown spec, shape mismatch...)."""


@dataclass
class ImportOptions:
    """What the user supplied beside the documents (``strainstream import`` options)."""

    root_map: dict[str, str] = field(default_factory=dict)
    experiment: str | None = None
    calibration: dict[str, Any] | None = None  # a geometry dict (--poni, --wavelength)
    fields: dict[str, str] = field(default_factory=dict)  # analysis input -> the run's data key
    source: str = ""  # where the documents came from (file or folder)

    def record(self) -> dict[str, Any]:
        """The JSON record kept in the start document (``strainstream_import``)."""
        out: dict[str, Any] = {"source": self.source, "imported": time.time()}
        if self.root_map:  # [OLD, NEW] pairs: start-document keys may not hold "/" or "."
            out["root_map"] = [[old, new] for old, new in self.root_map.items()]
        if self.experiment:
            out["experiment"] = self.experiment
        if self.calibration:
            out["calibration"] = dict(self.calibration)
        if self.fields:
            out["fields"] = dict(self.fields)
        return out


@dataclass
class ImportResult:
    uid: str
    status: str  # imported | resumed | present
    events: int
    documents: int
    notes: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)  # where its frames are


@dataclass
class PreparedRun:
    """One run's documents ready for tiled (see :func:`prepare_run`)."""

    docs: list[tuple[str, dict]]
    notes: list[str]
    folders: list[str]  # where its frames are (the server must be allowed to read them)

    @property
    def uid(self) -> str:
        return self.docs[0][1]["uid"]

    @property
    def events(self) -> int:
        return sum(1 for n, _ in self.docs if n == "event")


# -- preparing the documents --------------------------------------------------------------------
def _local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    return Path(parsed.path if parsed.scheme == "file" else uri)


def _check_resource(doc: Mapping[str, Any], datums: list[Mapping[str, Any]],
                    root_map: Mapping[str, str]) -> list[str]:
    """The files a classic Resource's datums name, through area-detector-handlers' handler
    for its spec; ArchiveError for a spec it cannot read or a file that is missing."""
    from area_detector_handlers import handlers as adh

    from strainstream.asset_docs import SPEC_MIMETYPES, resource_path

    spec = str(doc.get("spec", "")).upper()
    if spec not in SPEC_MIMETYPES:
        raise ArchiveError(f"Resource {doc.get('uid')}: spec {spec!r} is not one strainstream reads "
                           f"(it reads {', '.join(sorted(SPEC_MIMETYPES))}); its frames cannot be imported")
    path = resource_path(doc, root_map)
    kwargs = dict(doc.get("resource_kwargs") or {})
    hint = (f"; if the archive moved, map its root with --root-map {doc.get('root') or '/OLD'}=/NEW"
            if not root_map else f" (after --root-map {root_map})")
    if spec == "AD_TIFF":
        handler = adh.AreaDetectorTiffHandler(path, **kwargs)
        files = handler.get_file_list([dict(d.get("datum_kwargs") or {}) for d in datums])
    else:
        files = [path]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ArchiveError(f"Resource {doc.get('uid')} ({spec}): {missing[0]}{more} does not exist{hint}")
    return files


def _check_shapes(docs: list[tuple[str, dict]]) -> None:
    """Refuse a StreamResource whose HDF5 frames disagree with the descriptor's shape."""
    import h5py

    shapes: dict[str, list] = {}
    for name, doc in docs:
        if name == "descriptor":
            for key, dk in doc["data_keys"].items():
                if str(dk.get("external") or "").startswith("STREAM"):
                    shapes[key] = list(dk.get("shape") or [])
    for name, doc in docs:
        if name != "stream_resource" or doc.get("mimetype") != "application/x-hdf5":
            continue
        want = shapes.get(doc.get("data_key"))
        path = _local_path(doc["uri"])
        if not path.is_file():
            raise ArchiveError(f"StreamResource {doc.get('uid')}: {path} does not exist; if the "
                               "archive moved, map its root with --root-map OLD=NEW")
        dataset = (doc.get("parameters") or {}).get("dataset") or "/entry/data/data"
        try:
            with h5py.File(path, "r", locking=False) as f:
                got = list(f[dataset].shape[1:])
        except (OSError, KeyError) as exc:
            raise ArchiveError(f"{path}: cannot read dataset {dataset} ({exc})") from None
        if want and got != want[-len(got):] and got != want:
            raise ArchiveError(f"{path}: frames of {doc.get('data_key')!r} are {got} but the "
                               f"descriptor says {want}")


def prepare_run(documents: Iterable[tuple[str, Mapping[str, Any]]], options: ImportOptions,
                say: Callable[[str], Any] = lambda msg: None) -> PreparedRun:
    """One run's documents converted for tiled.

    Checks every referenced file, converts Resource/Datum, applies the overrides, adds a
    stop document when the export has none. Raises :class:`ArchiveError`.
    """
    import copy

    from strainstream.asset_docs import DatumToStream, resource_path

    raw = [(str(n), copy.deepcopy(dict(d))) for n, d in documents]
    if not raw or raw[0][0] != "start":
        raise ArchiveError(f"{options.source}: the documents do not begin with a start document "
                           f"(first: {raw[0][0] if raw else 'nothing'})")
    starts = [i for i, (n, _) in enumerate(raw) if n == "start"]
    if len(starts) > 1:
        raise ArchiveError(f"{options.source}: {len(starts)} runs in one stream; import them one at a time")
    notes: list[str] = []
    folders: set[str] = set()
    # classic resources: check the files their datums name
    datums: dict[str, list[dict]] = {}
    for n, d in raw:
        if n == "datum":
            datums.setdefault(d["resource"], []).append(d)
        elif n == "datum_page":
            from event_model import unpack_datum_page

            for one in unpack_datum_page(d):
                datums.setdefault(one["resource"], []).append(dict(one))
    for n, d in raw:
        if n == "resource":
            files = _check_resource(d, datums.get(d["uid"], []), options.root_map)
            folders.update(str(Path(f).parent) for f in files)
            if not datums.get(d["uid"]):
                notes.append(f"Resource {d['uid']} ({resource_path(d, options.root_map)}) has no datum")
    # the start document: overrides, and what was supplied (in the import record)
    from strainstream.rundesc import apply_overrides

    start = raw[0][1]
    if options.experiment and start.get("experiment") not in (None, options.experiment):
        notes.append(f"experiment {start['experiment']!r} analysed as {options.experiment!r}")
    try:
        start = apply_overrides(start, {"experiment": options.experiment,
                                        "calibration": options.calibration, "fields": options.fields})
    except ValueError as exc:
        raise ArchiveError(f"{options.source}: {exc}") from None
    start.pop("strainstream_overrides", None)
    raw[0] = ("start", start)
    start["strainstream_import"] = options.record()
    if raw[-1][0] != "stop":
        events = sum(1 for n, _ in raw if n == "event")
        notes.append(f"no stop document (aborted run): imported the {events} events there are, "
                     "closed with exit_status 'abort'")
        last = max((d.get("time", 0) for n, d in raw if n == "event"), default=start.get("time", 0))
        raw.append(("stop", {"uid": f"{start['uid']}-import-stop", "run_start": start["uid"],
                             "time": last, "exit_status": "abort",
                             "reason": "strainstream import: the export has no stop document",
                             "num_events": {}}))
    # Resource/Datum -> StreamResource/StreamDatum (each event's own frame), root_map applied
    out: list[tuple[str, dict]] = []
    try:
        convert = DatumToStream(lambda n, d: out.append((n, dict(d))), root_map=options.root_map)
        for n, d in raw:
            convert(n, d)
    except (KeyError, ValueError) as exc:
        raise ArchiveError(f"{options.source}: {exc}") from None
    for n, d in out:
        if n == "stream_resource":
            p = _local_path(d["uri"])
            folders.add(str(p if d["uri"].endswith("/") else p.parent))
    _check_shapes(out)
    return PreparedRun(out, notes, sorted(folders))


# -- writing ------------------------------------------------------------------------------------
def import_run(client, documents: Iterable[tuple[str, Mapping[str, Any]]], options: ImportOptions,
               say: Callable[[str], Any] = lambda msg: None) -> ImportResult:
    """Import one run into the catalog ``client``; see the module docstring."""
    return write_run(client, prepare_run(documents, options, say), say)


def write_run(client, run: PreparedRun, say: Callable[[str], Any] = lambda msg: None,
              batch_size: int = 1) -> ImportResult:
    """Write a :class:`PreparedRun` into the catalog ``client`` (or complete it there).

    ``batch_size``: events per table append (TiledWriter's own batching)."""
    from bluesky_tiled_plugins import TiledWriter

    from strainstream.callbacks.tiled_format import install_consolidators
    from strainstream.spool import complete_partial_run

    docs, uid = run.docs, run.uid
    if uid in client:
        if "stop" in client[uid].metadata:
            return ImportResult(uid, "present", run.events, 0, run.notes, run.folders)
        n = complete_partial_run(client, uid, [{"name": n, "doc": d} for n, d in docs],
                                 [(i, n, d) for i, (n, d) in enumerate(docs)], say)
        return ImportResult(uid, "resumed", run.events, n, run.notes, run.folders)
    install_consolidators()
    writer = TiledWriter(client, batch_size=batch_size)
    for i, (name, doc) in enumerate(docs):
        try:
            writer(name, doc)
        except Exception as exc:
            done = ("nothing was written" if i == 0 else
                    "the run is imported in part — the same import again resumes it")
            raise ArchiveError(f"run {uid}: tiled refused document {i + 1} of {len(docs)} ({name}): "
                               f"{' '.join(str(exc).split())[:300]}; {done}") from exc
    return ImportResult(uid, "imported", run.events, len(docs), run.notes, run.folders)
