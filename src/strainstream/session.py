"""RunEngine sessions: a RunEngine wired to a tiled server, created by a factory (no globals).

Documents reach tiled through a :class:`BufferedWriter`: the RunEngine hands each document to
an ordered queue (and appends it to an on-disk spool, JSON lines) and goes on; one background
thread feeds bluesky's ``TiledWriter`` in order. When tiled is unreachable (connection
refused or reset, HTTP 503, timeouts) the thread waits and retries with backoff while the
RunEngine keeps running; nothing is dropped: documents wait in the queue, and in the spool
even if the RunEngine process dies (:func:`flush_spool` sends them later). At the end of
each run the session waits (bounded) for the queue to drain and says so if it cannot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BufferedWriter",
    "OutageTolerantTransport",
    "Session",
    "WriterDrainTimeout",
    "default_spool_dir",
    "flush_spool",
    "spooled_runs",
    "make_session",
    "tolerate_outages",
]

logger = logging.getLogger("strainstream.session")

#: HTTP statuses meaning "the server did not process the request; try again later"
_UNAVAILABLE = {503}


class WriterDrainTimeout(RuntimeError):
    """Documents are still buffered (tiled unreachable) when a run ended."""


@dataclass
class Session:
    """What a console or the demo needs: the RunEngine, its tiled writer and the catalog."""

    RE: Any
    writer: Any
    client: Any

    def close(self, timeout_s: float | None = None) -> bool:
        """Wait (bounded) for buffered documents to reach tiled and stop the writer thread.

        Returns False when documents were left behind (they stay in the spool)."""
        close = getattr(self.writer, "close", None)
        return close(timeout_s) if close is not None else True


# -- transport: wait out an outage instead of failing ----------------------------------------
class OutageTolerantTransport:
    """An httpx transport wrapper that waits for an unreachable server instead of failing.

    Only failures that prove the server did not process the request are retried here:
    connection errors (refused, reset before sending) and HTTP 503. They are retried with
    exponential backoff (0.1 s doubling to ``max_backoff_s``) for up to ``max_outage_s``,
    then the last error is raised. Failures after the request was sent (read errors and
    timeouts, other 5xx) go up to tiled's client, which retries idempotent requests and
    adopts nodes whose creation answer was lost (it never appends the same rows twice on
    its own; bluesky's TiledWriter may, with a warning — readers skip duplicate seq_nums).

    Parameters
    ----------
    inner : httpx.BaseTransport
        The transport to wrap (tiled's caching transport).
    max_outage_s : float
        Longest outage waited for, seconds.
    on_down, on_up : callable, optional
        Called (no arguments / with the outage duration in s) when the server becomes
        unreachable and when it answers again.
    """

    def __init__(self, inner, *, max_outage_s: float = 3600.0, max_backoff_s: float = 2.0,
                 on_down: Callable[[], None] | None = None,
                 on_up: Callable[[float], None] | None = None) -> None:
        self.inner = inner
        self.max_outage_s = max_outage_s
        self.max_backoff_s = max_backoff_s
        self.on_down = on_down
        self.on_up = on_up
        self.down_since: float | None = None
        self.outages: list[float] = []  # durations (s) of the outages waited out
        self._lock = threading.Lock()

    def __getattr__(self, name):  # tiled reads e.g. ``.cache`` from its transport
        return getattr(self.inner, name)

    def handle_request(self, request):
        import httpx

        backoff = 0.1
        started: float | None = None
        while True:
            try:
                response = self.inner.handle_request(request)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                error: Exception | None = exc
            else:
                if response.status_code not in _UNAVAILABLE:
                    self._up()
                    return response
                response.read()
                response.close()
                error = None
            now = time.monotonic()
            started = started if started is not None else now
            self._down()
            if now - started > self.max_outage_s:
                if error is not None:
                    raise error
                return response
            time.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    def _down(self) -> None:
        with self._lock:
            if self.down_since is not None:
                return
            self.down_since = time.monotonic()
        if self.on_down is not None:
            self.on_down()

    def _up(self) -> None:
        if self.down_since is None:
            return
        with self._lock:
            if self.down_since is None:
                return
            duration = time.monotonic() - self.down_since
            self.down_since = None
            self.outages.append(duration)
        if self.on_up is not None:
            self.on_up(duration)

    def close(self) -> None:
        self.inner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tolerate_outages(client, **kwargs) -> OutageTolerantTransport:
    """Make every HTTP request of ``client`` (and clients sharing its context) wait out
    server outages (see :class:`OutageTolerantTransport`); returns the transport."""
    http = client.context.http_client
    transport = OutageTolerantTransport(http._transport, **kwargs)
    http._transport = transport
    return transport


# -- the spool -------------------------------------------------------------------------------
def default_spool_dir() -> Path:
    """``$STRAINSTREAM_SPOOL_DIR`` or the user's state directory (``.../strainstream/spool``)."""
    env = os.environ.get("STRAINSTREAM_SPOOL_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_state_dir("strainstream")) / "spool"


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


class _Spool:
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


# -- the writer ------------------------------------------------------------------------------
class BufferedWriter:
    """A RunEngine callback that hands documents to tiled in order, in a background thread.

    Parameters
    ----------
    writer : callable
        The real writer, ``writer(name, doc)`` (bluesky's ``TiledWriter``), called in the
        order the documents were emitted, from one thread.
    transport : OutageTolerantTransport, optional
        The transport of the writer's client (to report outages).
    spool_dir : path, optional
        Where every document is also appended (JSON lines) until tiled has it.
    drain_timeout_s : float
        At the end of a run, wait at most this long for the buffer to drain.
    max_lag : int
        While tiled is reachable, the RunEngine waits when more than this many documents
        are buffered (back-pressure: a slow server slows the run down as a direct writer
        would, instead of piling up documents). While tiled is unreachable the RunEngine
        never waits: documents pile up in the queue and the spool.
    say : callable
        Where progress and warning lines go (default: stderr).
    client : tiled client, optional
        The writer's client. With it, before a run's stop document is written, the stored
        event tables are checked against the events sent and any missing row is appended
        again (a server that answered 200 to an append and lost it under concurrent load
        has been seen: tiled's DuckDB tables).
    """

    def __init__(self, writer: Callable[[str, dict], Any], *, transport: OutageTolerantTransport | None = None,
                 spool_dir: str | os.PathLike | None = None, drain_timeout_s: float = 120.0,
                 max_lag: int = 8, say: Callable[[str], None] | None = None, client=None) -> None:
        self.writer = writer
        self.client = client
        self._run_docs: dict[str, list[tuple[str, dict]]] = {}  # descriptors and events, for the audit
        self.repaired: dict[str, int] = {}  # run uid -> event rows re-appended by the audit
        self.transport = transport
        self.drain_timeout_s = drain_timeout_s
        self.max_lag = max_lag
        self._closed = False
        self.say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.spool = _Spool(Path(spool_dir)) if spool_dir is not None else None
        self._queue: queue.Queue = queue.Queue()
        self._pending = 0  # documents accepted and not yet in tiled
        self._cond = threading.Condition()
        self._run_of: dict[str, str] = {}  # descriptor / resource uid -> run uid
        self._current_run: str | None = None
        self.failed: list[tuple[str, str, int, str]] = []  # (run uid, doc name, index, error)
        self.sent_after_outage = 0
        self._outage_backlog: int | None = None
        self._thread = threading.Thread(target=self._work, name="tiled-writer", daemon=True)
        self._thread.start()
        if transport is not None:
            transport.on_down = self._on_down
            transport.on_up = self._on_up

    @property
    def pending(self) -> int:
        """Documents accepted from the RunEngine and not yet stored in tiled."""
        with self._cond:
            return self._pending

    # -- RunEngine side (must stay fast) ------------------------------------------------
    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        uid = self._run_uid(name, doc)
        index = -1
        if self.spool is not None and uid:
            try:
                index = self.spool.add(uid, name, doc)
            except (OSError, TypeError, ValueError) as exc:  # never stop the run for the spool
                logger.error("spooling the %s document of run %s failed: %s", name, uid, exc)
        if self._closed:
            raise RuntimeError("this session's tiled writer is closed")
        with self._cond:
            self._pending += 1
            # back-pressure while the server is reachable; never while it is away
            while self._pending > self.max_lag and not self.unreachable:
                self._cond.wait(0.1)
        self._queue.put((name, doc, uid, index))
        if name == "stop":
            self.wait_drained(self.drain_timeout_s, run_uid=uid)

    @property
    def unreachable(self) -> bool:
        """Is the writer waiting for an unreachable server right now?"""
        return self.transport is not None and self.transport.down_since is not None

    def close(self, timeout_s: float | None = None) -> bool:
        """Wait (bounded) until the buffer is drained, then stop the writer thread.

        Returns False if documents were left behind (they stay in the spool)."""
        drained = self.wait_drained(timeout_s)
        self._closed = True
        self._queue.put(None)
        if self.transport is not None:
            self.transport.max_outage_s = 0  # an in-flight request gives up now
        self._thread.join(5.0)
        return drained

    def _run_uid(self, name: str, doc: dict[str, Any]) -> str:
        if name == "start":
            self._current_run = doc["uid"]
            return doc["uid"]
        if name in ("stop", "stream_resource", "resource"):
            uid = doc.get("run_start") or self._current_run or ""
            if name != "stop":
                self._run_of[doc["uid"]] = uid
            return uid
        if name == "descriptor":
            self._run_of[doc["uid"]] = doc["run_start"]
            return doc["run_start"]
        for key in ("descriptor", "stream_resource", "resource"):
            if key in doc and doc[key] in self._run_of:
                return self._run_of[doc[key]]
        return self._current_run or ""

    def wait_drained(self, timeout_s: float | None = None, *, run_uid: str | None = None) -> bool:
        """Wait until every accepted document is in tiled; False (and a warning) on timeout."""
        timeout_s = self.drain_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
            pending = self._pending
        if pending:
            where = f" (spooled in {self.spool.path(run_uid)})" if self.spool is not None and run_uid else ""
            why = "tiled unreachable" if self.unreachable else "tiled too slow"
            msg = (f"{why}: {pending} documents still buffered after waiting "
                   f"{timeout_s:.0f} s at the end of run {run_uid or '?'}{where}; they are sent "
                   f"while this session lives" + (f", or later with `strainstream spool --flush "
                                                  f"--spool-dir {self.spool.dir}`" if self.spool else ""))
            logger.error(msg)
            self.say(msg)
            return False
        return True

    # -- writer thread --------------------------------------------------------------------
    def _on_down(self) -> None:
        backlog = self.pending
        self._outage_backlog = backlog
        self.say(f"tiled unreachable: {backlog} documents buffered; retrying with backoff "
                 "(the run goes on)")

    def _on_up(self, duration_s: float) -> None:
        self.say(f"tiled reachable again after {duration_s:.1f} s: flushing {self.pending} "
                 "buffered documents")
        self._outage_backlog = None

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            name, doc, uid, index = item
            try:
                self._write(name, doc, uid, index)
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()

    def _audit(self, uid: str) -> None:
        """Re-append event rows of run ``uid`` that tiled does not hold (before its stop)."""
        docs = self._run_docs.pop(uid, [])
        if self.client is None or not docs:
            return
        events = [(i, name, doc) for i, (name, doc) in enumerate(docs) if name == "event"]
        try:
            n = _complete_partial_run(self.client, uid, [{"name": k, "doc": d} for k, d in docs], events,
                                      self.say)
        except Exception as exc:
            logger.error("run %s: checking the stored events failed: %s", uid, exc)
            return
        if n:
            self.repaired[uid] = n
            msg = f"run {uid}: {n} event rows acknowledged by tiled but missing from it were written again"
            logger.warning(msg)
            self.say(msg)

    def _write(self, name: str, doc: dict[str, Any], uid: str, index: int) -> None:
        import httpx

        if name in ("descriptor", "event") and uid:
            self._run_docs.setdefault(uid, []).append((name, doc))
        elif name == "stop" and uid:
            self._audit(uid)

        # re-sending an event or a stop is safe (a row stored twice is skipped by readers);
        # other documents change the writer's state before their request and are not re-sent
        attempts = 3 if name in ("event", "stop") else 1
        for attempt in range(attempts):
            try:
                self.writer(name, doc)
                break
            except Exception as exc:
                if attempt + 1 < attempts and isinstance(exc, httpx.HTTPError):
                    logger.warning("writing %s document of run %s failed (%s); retrying", name, uid, exc)
                    time.sleep(1.0 + attempt)
                    continue
                where = f"; kept in {self.spool.path(uid)}" if self.spool is not None and uid else ""
                msg = f"tiled refused the {name} document #{index} of run {uid}: {exc}{where}"
                logger.error(msg)
                self.say(msg)
                self.failed.append((uid, name, index, repr(exc)))
                return
        if self.spool is not None and uid and index >= 0:
            if name == "stop" and not any(f[0] == uid for f in self.failed):
                self.spool.done(uid)
            else:
                self.spool.sent(uid, index)


def make_session(uri: str, api_key: str, *, progress: bool = True,
                 spool_dir: str | os.PathLike | None = None, drain_timeout_s: float = 120.0,
                 max_outage_s: float = 3600.0, max_lag: int = 8) -> Session:
    """Create a RunEngine that streams every document to tiled.

    Parameters
    ----------
    uri : str
        tiled server API URI, e.g. ``http://127.0.0.1:8000/api/v1``.
    api_key : str
        Key with write access.
    progress : bool
        Print per-event progress of each run (points done / expected).
    spool_dir : path, optional
        Where documents are spooled (JSON lines) until tiled has them; default
        :func:`default_spool_dir`. The demo uses ``DATA_DIR/spool``.
    drain_timeout_s : float
        At the end of each run, wait this long at most for buffered documents to reach tiled.
    max_outage_s : float
        Longest server outage the writer waits out before a document counts as failed.
    max_lag : int
        Documents the RunEngine may run ahead of tiled while the server is reachable
        (see :class:`BufferedWriter`).

    Notes
    -----
    The writer is ``bluesky_tiled_plugins.TiledWriter`` with ``batch_size=1`` so every event
    reaches tiled (and the live worker) as soon as it is emitted, wrapped in a
    :class:`BufferedWriter` with its own tiled client (:class:`OutageTolerantTransport`).
    """
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter

    from strainstream.server import connect

    client = connect(uri, api_key)
    write_client = connect(uri, api_key)
    transport = tolerate_outages(write_client, max_outage_s=max_outage_s)
    RE = RunEngine({}, call_returns_result=False)
    writer = BufferedWriter(TiledWriter(write_client, batch_size=1), transport=transport,
                            spool_dir=spool_dir if spool_dir is not None else default_spool_dir(),
                            drain_timeout_s=drain_timeout_s, max_lag=max_lag, client=write_client)
    RE.subscribe(writer)
    if progress:
        from strainstream.callbacks.progress import ProgressPrinter

        RE.subscribe(ProgressPrinter())
    return Session(RE=RE, writer=writer, client=client)


# -- recovery --------------------------------------------------------------------------------
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

    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    spool = _Spool(Path(spool_dir))
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
            report[uid] = _complete_partial_run(client, uid, docs, unsent, say)
        complete = "stop" in client[uid].metadata
        if complete:
            spool.done(uid)
        say(f"spool: run {uid}: {report[uid]} documents sent" + ("" if complete else " (run has no stop yet)"))
    return report


def _stream_node(run, stream: str | None):
    """The plain container of ``stream`` in ``run`` (None if tiled does not have it)."""
    node = run[stream] if stream is not None and stream in run else None
    return getattr(node, "base", node)


def _register_unsent_stream_datums(run, docs: list[dict], unsent: set[int], stream_of: dict[str, str],
                                   uid: str, say) -> int:
    """Grow the external array nodes of ``run`` over the frames of the unsent StreamDatums.

    bluesky-tiled-plugins' consolidator for each StreamResource is rebuilt from the spooled
    documents: every StreamDatum is consumed in order (so its state matches the live writer's),
    and after each unsent one the node's data source is updated with that datum's patch,
    exactly the request the live TiledWriter would have sent. Returns how many were sent.
    """
    from bluesky_tiled_plugins.writing.consolidators import consolidator_factory
    from tiled.client.utils import handle_error
    from tiled.utils import safe_json_dump

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
            desc_node = _stream_node(run, stream)
            if sres is None or desc_node is None or sres["data_key"] not in desc_node:
                say(f"spool: run {uid}: StreamDatum {doc['uid']} refers to a StreamResource or stream "
                    "tiled does not have; its frames stay in the detector file, unregistered")
                consolidators[sres_uid] = None
                continue
            consolidators[sres_uid] = consolidator_factory(sres, dict(desc_node.metadata))
            node = nodes[sres_uid] = desc_node[sres["data_key"]]
            registered[sres_uid] = int(node.shape[0]) if node.shape else 0
        consolidator = consolidators[sres_uid]
        if consolidator is None:
            continue
        patch = consolidator.consume_stream_datum(doc)
        if i not in unsent or (patch and patch.offset[0] + patch.shape[0] <= registered[sres_uid]):
            continue  # tiled has it (sent, maybe without the record of it): only the state advances
        node = nodes[sres_uid]
        source = consolidator.get_data_source()
        source.id = node.data_sources()[0].id
        params = ({"patch_shape": ",".join(map(str, patch.shape)),
                   "patch_offset": ",".join(map(str, patch.offset))} if patch else None)
        handle_error(node.context.http_client.put(
            node.uri.replace("/metadata/", "/data_source/", 1),
            content=safe_json_dump({"data_source": source}), params=params))
        sent += 1
    return sent


def _complete_partial_run(client, uid: str, docs: list[dict], unsent: list[tuple[int, str, dict]], say) -> int:
    import pyarrow as pa

    run = client[uid]
    run = getattr(run, "base", run)
    names = {d["doc"]["uid"]: d["doc"].get("name", "primary") for d in docs if d["name"] == "descriptor"}
    n = 0
    rows_by_stream: dict[str, list[dict]] = {}
    for _, name, doc in unsent:
        if name == "event":
            stream = names.get(doc["descriptor"])
            row = {"seq_num": doc["seq_num"], "time": doc["time"], **doc["data"]}
            row.update({f"ts_{k}": v for k, v in doc["timestamps"].items()})
            rows_by_stream.setdefault(stream, []).append(row)
    n += _register_unsent_stream_datums(run, docs, {i for i, name, _ in unsent if name == "stream_datum"},
                                        names, uid, say)
    for stream, rows in rows_by_stream.items():
        node = _stream_node(run, stream)
        if node is None or "internal" not in node:
            continue
        table = node["internal"]
        have = set(table.read()["seq_num"].tolist())
        rows = [r for r in rows if r["seq_num"] not in have]
        if rows:
            schema = table.structure().arrow_schema_decoded
            rows = [{k: r.get(k) for k in schema.names} for r in rows]
            table.append_partition(0, pa.Table.from_pylist(rows, schema=schema))
            n += len(rows)
    for _, name, doc in unsent:
        if name == "stop" and "stop" not in run.metadata:
            run.update_metadata({"stop": doc})
            n += 1
    return n
