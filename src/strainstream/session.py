"""RunEngine sessions: a RunEngine wired to a tiled server, created by a factory (no globals).

Documents reach tiled through a :class:`BufferedWriter`: the RunEngine hands each document to
an ordered queue (and appends it to an on-disk spool, JSON lines) and goes on; one background
thread feeds bluesky's ``TiledWriter`` in order. When tiled is unreachable (connection
refused or reset, HTTP 503, timeouts) the thread waits and retries with backoff while the
RunEngine keeps running; nothing is dropped: documents wait in the queue, and in the spool
even if the RunEngine process dies (:func:`strainstream.spool.flush_spool` sends them later). At the end of
each run the session waits (bounded) for the queue to drain and says so if it cannot.
"""

from __future__ import annotations

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

from strainstream.errors import StrainstreamError
from strainstream.spool import Spool, complete_partial_run, default_spool_dir
from strainstream.transport import OutageTolerantTransport, TiledUnreachable, tolerate_outages

__all__ = ["BufferedWriter", "Session", "WriterDrainTimeout", "coalesce", "make_session"]

logger = logging.getLogger("strainstream.session")


class WriterDrainTimeout(StrainstreamError, RuntimeError):
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
    max_coalesce : int
        At most this many queued documents are written together (:func:`coalesce`): what
        the thread finds queued when it takes a document, never waiting for more. 1: one
        request per document.
    """

    def __init__(self, writer: Callable[[str, dict], Any], *, transport: OutageTolerantTransport | None = None,
                 spool_dir: str | os.PathLike | None = None, drain_timeout_s: float = 120.0,
                 max_lag: int = 8, say: Callable[[str], None] | None = None, client=None,
                 max_coalesce: int = 64) -> None:
        self.writer = writer
        self.max_coalesce = max(1, int(max_coalesce))
        self.client = client
        self._run_docs: dict[str, list[tuple[str, dict]]] = {}  # descriptors and events, for the audit
        self.repaired: dict[str, int] = {}  # run uid -> event rows re-appended by the audit
        self.transport = transport
        self.drain_timeout_s = drain_timeout_s
        self.max_lag = max_lag
        self._closed = False
        self.say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.spool = Spool(Path(spool_dir)) if spool_dir is not None else None
        self._queue: queue.Queue = queue.Queue()
        self._pending = 0  # documents accepted and not yet in tiled
        self._cond = threading.Condition()
        self._run_of: dict[str, str] = {}  # descriptor / resource uid -> run uid
        self._current_run: str | None = None
        self.failed: list[tuple[str, str, int, str]] = []  # (run uid, doc name, index, error)
        self._told_unreachable: set[str] = set()  # runs whose outage refusal was already said
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
            # what is already queued goes with it (never waiting for more: latency unchanged
            # at low rates; at rates the server cannot take one request per document, runs of
            # events become one event page and their StreamDatums one range per resource)
            items, last = [item], False
            while len(items) < self.max_coalesce:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    last = True
                    break
                items.append(nxt)
            try:
                batches = coalesce(items)
            except Exception:  # a document unlike the RunEngine's: each goes alone, as sent
                logger.debug("documents not coalesced", exc_info=True)
                batches = [(name, doc, uid, [index]) for name, doc, uid, index in items]
            for name, doc, uid, indices in batches:
                try:
                    self._write(name, doc, uid, indices)
                finally:
                    with self._cond:
                        self._pending -= len(indices)
                        self._cond.notify_all()
            if last:
                return

    def _audit(self, uid: str) -> None:
        """Re-append event rows of run ``uid`` that tiled does not hold (before its stop)."""
        docs = self._run_docs.pop(uid, [])
        if self.client is None or not docs:
            return
        events = [(i, name, doc) for i, (name, doc) in enumerate(docs) if name == "event"]
        try:
            n = complete_partial_run(self.client, uid, [{"name": k, "doc": d} for k, d in docs], events,
                                      self.say)
        except Exception as exc:
            logger.error("run %s: checking the stored events failed: %s", uid, exc)
            return
        if n:
            self.repaired[uid] = n
            msg = f"run {uid}: {n} event rows acknowledged by tiled but missing from it were written again"
            logger.warning(msg)
            self.say(msg)

    def _write(self, name: str, doc: dict[str, Any], uid: str, indices: list[int]) -> None:
        import event_model
        import httpx

        index = indices[0]
        if name in ("descriptor", "event") and uid:
            self._run_docs.setdefault(uid, []).append((name, doc))
        elif name == "event_page" and uid:
            self._run_docs.setdefault(uid, []).extend(("event", e) for e in event_model.unpack_event_page(doc))
        elif name == "stop" and uid:
            self._audit(uid)

        # re-sending an event or a stop is safe (a row stored twice is skipped by readers);
        # other documents change the writer's state before their request and are not re-sent
        attempts = 3 if name in ("event", "event_page", "stop") else 1
        stored = False
        for attempt in range(attempts):
            try:
                self.writer(name, doc)
                stored = True
                break
            except Exception as exc:
                if attempt + 1 < attempts and isinstance(exc, httpx.HTTPError):
                    logger.warning("writing %s document of run %s failed (%s); retrying", name, uid, exc)
                    time.sleep(1.0 + attempt)
                    continue
                where = f"; kept in {self.spool.path(uid)}" if self.spool is not None and uid else ""
                msg = f"tiled refused the {name} document #{index} of run {uid}: {exc}{where}"
                # one line per run for an outage longer than the writer waits, not one per document
                if isinstance(exc, TiledUnreachable) and uid in self._told_unreachable:
                    logger.debug(msg)
                else:
                    logger.error(msg)
                    self.say(msg)
                    if isinstance(exc, TiledUnreachable):
                        self._told_unreachable.add(uid)
                self.failed.extend((uid, name, i, repr(exc)) for i in indices)
                break
        refused = [f for f in self.failed if f[0] == uid] if name == "stop" else []
        if refused:
            where = (f"every document of it is kept in {self.spool.path(uid)}; send them with "
                     f"`strainstream spool --flush --spool-dir {self.spool.dir}` once tiled is back"
                     if self.spool is not None else "no spool was configured: they are lost")
            msg = f"run {uid}: {len(refused)} documents are not in tiled; {where}"
            logger.error(msg)
            self.say(msg)
            self._told_unreachable.discard(uid)
        if not stored:
            return
        if self.spool is not None and uid and index >= 0:
            if name == "stop" and not refused:
                self.spool.done(uid)
            else:
                for i in indices:
                    self.spool.sent(uid, i)


def coalesce(items: list[tuple[str, dict[str, Any], str, int]]) -> list[tuple[str, dict[str, Any], str, list[int]]]:
    """Merge runs of queued events and event pages into one event page, and their
    StreamDatums into ranges.

    ``items`` are ``(name, doc, run uid, spool index)`` in the order the RunEngine emitted
    them; the result is ``(name, doc, run uid, spool indices)`` in an order tiled accepts:
    within a run of events or event pages of one descriptor (with the StreamDatums between
    them), each resource's StreamDatums become one StreamDatum whose ``seq_nums`` and
    ``indices`` span theirs (only while they are contiguous) and the events one
    ``event_page``, written after the StreamDatums (every StreamDatum still reaches tiled
    before the event that uses it). A fly scan's lines (one StreamDatum and one event page
    each) queued behind a slow server are so written as one line. Anything else (start,
    descriptors, resources, stop) ends a run and is passed on alone. A run of one document
    (an event, or one event page) is passed on unchanged.
    """
    import event_model

    out: list[tuple[str, dict[str, Any], str, list[int]]] = []
    group: dict[str, Any] | None = None

    def close() -> None:
        nonlocal group
        if group is None:
            return
        for sd, idx in group["datums"].values():
            out.append(("stream_datum", sd, group["uid"], idx))
        kept, idx = group["kept"], group["event_indices"]
        if len(kept) == 1:  # one event or one page: as it came
            out.append((*kept[0], group["uid"], idx))
        elif kept:
            events = [e for name, doc in kept
                      for e in ([doc] if name == "event" else event_model.unpack_event_page(doc))]
            out.append(("event_page", event_model.pack_event_page(*events), group["uid"], idx))
        group = None

    for name, doc, uid, index in items:
        if name not in ("event", "event_page", "stream_datum"):
            close()
            out.append((name, doc, uid, [index]))
            continue
        descriptor = doc["descriptor"]
        if group is not None and (group["uid"] != uid or group["descriptor"] != descriptor):
            close()
        if name == "stream_datum" and group is not None:
            prev = group["datums"].get(doc["stream_resource"])
            if prev is not None and not (prev[0]["seq_nums"]["stop"] == doc["seq_nums"]["start"]
                                         and prev[0]["indices"]["stop"] == doc["indices"]["start"]):
                close()  # not contiguous: a new run
        if group is None:
            group = {"uid": uid, "descriptor": descriptor, "datums": {}, "kept": [], "event_indices": []}
        if name != "stream_datum":
            group["kept"].append((name, doc))
            group["event_indices"].append(index)
            continue
        res = doc["stream_resource"]
        prev = group["datums"].get(res)
        if prev is None:
            group["datums"][res] = (dict(doc, seq_nums=dict(doc["seq_nums"]), indices=dict(doc["indices"])),
                                    [index])
        else:
            prev[0]["seq_nums"]["stop"] = doc["seq_nums"]["stop"]
            prev[0]["indices"]["stop"] = doc["indices"]["stop"]
            prev[1].append(index)
    close()
    return out


def make_session(uri: str, api_key: str, *, progress: bool = True,
                 spool_dir: str | os.PathLike | None = None, drain_timeout_s: float = 120.0,
                 max_outage_s: float = 3600.0, max_lag: int = 8, max_coalesce: int = 64) -> Session:
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
    max_coalesce : int
        Queued documents written together (:func:`coalesce`); 1: one request per document.

    Notes
    -----
    The writer is ``bluesky_tiled_plugins.TiledWriter`` with ``batch_size=1`` so every event
    reaches tiled (and the live worker) as soon as it is emitted, wrapped in a
    :class:`BufferedWriter` with its own tiled client (:class:`OutageTolerantTransport`).
    """
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter

    from strainstream.asset_docs import DatumToStream
    from strainstream.callbacks.tiled_format import install_consolidators
    from strainstream.server import connect

    install_consolidators()  # data sources record their StreamDatums' indices

    client = connect(uri, api_key)
    write_client = connect(uri, api_key)
    transport = tolerate_outages(write_client, max_outage_s=max_outage_s)
    RE = RunEngine({}, call_returns_result=False)
    writer = BufferedWriter(TiledWriter(write_client, batch_size=1), transport=transport,
                            spool_dir=spool_dir if spool_dir is not None else default_spool_dir(),
                            drain_timeout_s=drain_timeout_s, max_lag=max_lag, client=write_client,
                            max_coalesce=max_coalesce)
    # ophyd area detectors' Resource/Datum become StreamResource/StreamDatum before the spool
    # and tiled see them, each datum paired with the event that references it
    RE.subscribe(DatumToStream(writer))
    if progress:
        from strainstream.callbacks.progress import LiveLattice, ProgressPrinter

        # the live a, c come from the worker's results, read by a thread of their own
        RE.subscribe(ProgressPrinter(lattice=LiveLattice(connect(uri, api_key))))
    return Session(RE=RE, writer=writer, client=client)

