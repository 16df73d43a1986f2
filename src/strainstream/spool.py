"""The document spool: every document the RunEngine emits, on disk until tiled has it.

:class:`BufferedWriter <strainstream.session.BufferedWriter>` appends each document of a run
to ``<spool_dir>/<uid>.jsonl`` and the positions tiled accepted to ``<uid>.sent``; both are
removed once the run's stop document is in tiled. :func:`flush_spool` sends what is left
(e.g. after the RunEngine process died), completing runs tiled has in part through
:mod:`strainstream.callbacks.tiled_format` (rows, frames and the consolidator's data-source
patches, as the live writer would have sent them).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from strainstream.config import Config, load_config

__all__ = ["Spool", "complete_partial_run", "default_spool_dir", "flush_spool", "spooled_runs"]


def default_spool_dir(config: Config | None = None) -> Path:
    """The configuration's ``spool_dir`` (``$STRAINSTREAM_SPOOL_DIR``, the file, or the given
    ``config``) or the user's state directory (``.../strainstream/spool``)."""
    config = config if config is not None else load_config()
    if config.spool_dir:
        return Path(config.spool_dir)
    import platformdirs

    return Path(platformdirs.user_state_dir("strainstream")) / "spool"


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


class Spool:
    """Per-run JSON-lines files: ``<uid>.jsonl`` (every document) and ``<uid>.sent``
    (indices of the documents tiled has accepted). Both are removed once the run's stop
    document is in tiled."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._docs: dict[str, Any] = {}
        self._sent: dict[str, Any] = {}
        self._count: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, uid: str, name: str, doc: dict[str, Any]) -> int:
        line = json.dumps({"name": name, "doc": doc}, default=_json_default, allow_nan=True)
        with self._lock:
            f = self._docs.get(uid)
            if f is None:
                f = self._docs[uid] = open(self.dir / f"{uid}.jsonl", "a")  # noqa: SIM115
                self._count[uid] = 0
            f.write(line + "\n")
            f.flush()
            index = self._count[uid]
            self._count[uid] = index + 1
            return index

    def sent(self, uid: str, index: int) -> None:
        with self._lock:
            f = self._sent.get(uid)
            if f is None:
                f = self._sent[uid] = open(self.dir / f"{uid}.sent", "a")  # noqa: SIM115
            f.write(f"{index}\n")
            f.flush()

    def done(self, uid: str) -> None:
        with self._lock:
            for files in (self._docs, self._sent):
                f = files.pop(uid, None)
                if f is not None:
                    f.close()
            self._count.pop(uid, None)
            for suffix in (".jsonl", ".sent"):
                with contextlib.suppress(FileNotFoundError):
                    (self.dir / f"{uid}{suffix}").unlink()

    def path(self, uid: str) -> Path:
        return self.dir / f"{uid}.jsonl"


# -- recovery -------------------------------------------------------------------------------
def spooled_runs(spool_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The runs in a spool: ``[{uid, documents, sent}]`` (documents written / accepted by tiled)."""
    out = []
    for path in sorted(Path(spool_dir).glob("*.jsonl")):
        docs = sum(1 for line in path.read_text().splitlines() if line.strip())
        sent_path = path.with_suffix(".sent")
        sent = len(set(sent_path.read_text().split())) if sent_path.exists() else 0
        out.append({"uid": path.stem, "documents": docs, "sent": sent})
    return out


def flush_spool(spool_dir: str | os.PathLike, client, *, say: Callable[[str], None] | None = None) -> dict[str, int]:
    """Send the documents left in a spool (e.g. after the RunEngine process died) to tiled.

    A run that tiled does not have at all is written from its spooled documents. A run that
    tiled has in part gets its missing event rows (by seq_num), the frames of its unsent
    StreamDatums (the detector array grows over them, as the live writer would have done) and
    its stop document. Returns ``{uid: documents sent}``; the spool files of a run are
    removed once it is complete in tiled.
    """
    from bluesky_tiled_plugins import TiledWriter

    from strainstream.callbacks.tiled_format import install_consolidators

    install_consolidators()  # frames registered with their StreamDatums' own indices
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    spool = Spool(Path(spool_dir))
    report: dict[str, int] = {}
    for path in sorted(Path(spool_dir).glob("*.jsonl")):
        uid = path.stem
        docs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        sent_path = path.with_suffix(".sent")
        sent = {int(x) for x in sent_path.read_text().split()} if sent_path.exists() else set()
        unsent = [(i, d["name"], d["doc"]) for i, d in enumerate(docs) if i not in sent]
        if uid not in client:
            writer = TiledWriter(client, batch_size=1)
            for d in docs:
                writer(d["name"], d["doc"])
            report[uid] = len(docs)
        else:
            report[uid] = complete_partial_run(client, uid, docs, unsent, say)
        complete = "stop" in client[uid].metadata
        if complete:
            spool.done(uid)
        say(f"spool: run {uid}: {report[uid]} documents sent" + ("" if complete else " (run has no stop yet)"))
    return report


def complete_partial_run(client, uid: str, docs: list[dict], unsent: list[tuple[int, str, dict]], say) -> int:
    """Send what tiled lacks of run ``uid`` (which it has in part): the frames of unsent
    StreamDatums, the event rows it does not hold (by seq_num) and the stop document.

    ``docs`` are the run's documents (``{"name", "doc"}``, in emission order), ``unsent``
    ``(position, name, doc)`` of those tiled has not accepted. Returns how many were sent."""
    from strainstream.callbacks.tiled_format import (
        append_missing_rows,
        register_stream_datums,
        row_from_event,
        stream_container,
    )

    run = client[uid]
    run = getattr(run, "base", run)
    names = {d["doc"]["uid"]: d["doc"].get("name", "primary") for d in docs if d["name"] == "descriptor"}
    rows_by_stream: dict[str, list[dict]] = {}
    for _, name, doc in unsent:
        if name == "event":
            rows_by_stream.setdefault(names.get(doc["descriptor"]), []).append(row_from_event(doc))
        elif name == "event_page":  # a fly scan's line
            from event_model import unpack_event_page

            rows_by_stream.setdefault(names.get(doc["descriptor"]), []).extend(
                row_from_event(ev) for ev in unpack_event_page(doc))
    n = register_stream_datums(run, docs, {i for i, name, _ in unsent if name == "stream_datum"},
                               names, uid, say)
    for stream, rows in rows_by_stream.items():
        n += append_missing_rows(stream_container(run, stream), rows)
    for _, name, doc in unsent:
        if name == "stop" and "stop" not in run.metadata:
            run.update_metadata({"stop": doc})
            n += 1
    return n
