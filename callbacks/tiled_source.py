"""Follow one raw run in tiled and turn it into bluesky documents for the analysis callbacks.

The live path and the replay path feed the same callbacks: replay uses the catalog's own
``run.documents()``; this module builds the equivalent documents while the run is still
being written:

- ``start`` from the run's metadata, ``descriptor`` from each stream's metadata;
- ``event`` from rows of the stream's ``internal`` table, delivered by tiled's websocket
  stream (``table-data`` updates);
- ``stream_resource`` / ``stream_datum`` from the data source of each external array node
  (the detector's HDF5 file) so that frames are read straight from the file;
- ``stop`` when the run's metadata gains its stop document.

Exactly once: each callback knows the seq_nums already committed to its result table and
skips them; rows are fed in seq_num order; a gap in the stream (streaming-cache eviction,
missed updates, a restart) is back-filled from the stored table in the catalog before newer
rows are processed.

Server restarts: the websocket subscriptions die with the server. The worker notices
(:meth:`RunFollower.reattach` is called by its watchdog once the server answers again) and
the follower drops its old subscriptions, subscribes afresh to every node, back-fills each
stream from the stored table after the last event it fed, commits result rows that failed
during the outage, and finishes the run if its stop document arrived meanwhile. This holds
for the memory streaming cache (its sequence numbers restart and its history is gone: a
sequence number going backwards is logged as a cache reset) and for Redis (history kept).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from strainstream.errors import StrainstreamError

from .base import AnalysisCallback
from .tiled_format import INTERNAL, ExternalFrames, events_from_rows, rows_of

__all__ = ["RunFollower"]

logger = logging.getLogger(__name__)


class _Stream:
    def __init__(self, name: str, node, descriptor: dict[str, Any]) -> None:
        self.name = name
        self.node = node  # the stream container (base client)
        self.descriptor = descriptor
        self.fed = 0  # highest seq_num fed to the callbacks
        self.seen: set[int] = set()  # every seq_num fed (a row may reach the table late)
        self.resources: dict[str, str] = {}  # data_key -> stream_resource uid
        self.frames: dict[str, ExternalFrames] = {}  # data_key -> its frame references
        self.frame_subs: dict[str, Any] = {}  # data_key -> (subscription, handler) of its node
        self.unresolved: dict[str, set[int]] = {}  # data_key -> seq_nums fed without a frame yet
        self.table_sub = None
        self.node_sub = None
        self.last_sequence = 0  # streaming-cache sequence of the last table update seen
        self.described = False  # its descriptor was emitted
        self.table = None  # its event table node, subscribed and not back-filled yet
        #: the table was looked up since its container was subscribed: a table created
        #: after that comes as the subscription's child_created, no need to ask again
        self.table_looked_up = False

    @property
    def external_keys(self) -> list[str]:
        return [k for k, v in self.descriptor.get("data_keys", {}).items() if v.get("external") == "STREAM:"]


class RunFollower:
    """Feed the documents of one run, live, to its analysis callbacks.

    Parameters
    ----------
    root : tiled container client
        Catalog root holding the run.
    uid : str
        The run's uid (its key in the catalog).
    make_callbacks : callable
        ``make_callbacks(start_doc, frame_fallback) -> list[AnalysisCallback]``.
    on_done : callable, optional
        Called with the uid when the run is finished and analysed.
    run_node : tiled container client, optional
        The run's container, built from the update that announced its creation: the run is
        new, so it is not fetched, its streams are not listed and their tables not looked up;
        they come as child_created updates of the subscriptions, which start at each node's
        first update (a stream or row the streaming cache no longer holds is read from the
        catalog at the stop at the latest).
    """

    def __init__(self, root, uid: str, make_callbacks: Callable[..., list[AnalysisCallback]],
                 on_done: Callable[[str], None] | None = None, run_node=None) -> None:
        self.root = root
        self.uid = uid
        self._new_run = run_node
        self._make_callbacks = make_callbacks
        self.on_done = on_done
        self.lock = threading.RLock()
        self.streams: dict[str, _Stream] = {}
        self.callbacks: list[AnalysisCallback] = []
        self.finished = False
        self._subs: list[Any] = []
        self.run_node = None
        self._queue: queue.Queue = queue.Queue()
        #: stream name -> (stream, rows) skipped ahead of, analysed in order in slices
        self._backlog: dict[str, tuple[_Stream, list[dict[str, Any]]]] = {}
        #: times the newest row was analysed ahead of older ones (skip-ahead)
        self.skipped_ahead = 0
        self._drainer = threading.Thread(target=self._drain, name=f"follow-{uid[:8]}", daemon=True)
        #: times the subscriptions were re-attached (server restarts) and cache resets seen
        self.reattached = 0
        #: a subscription did not connect: the worker's watchdog re-attaches the run
        self.needs_reattach = threading.Event()
        self.cache_resets = 0

    # -- public -------------------------------------------------------------------------
    def start(self) -> bool:
        """Emit the start document, attach to the streams; return False if nothing to do."""
        new, self._new_run = self._new_run, None
        run = self.root[self.uid] if new is None else new
        self.run_node = getattr(run, "base", run)
        md = self.run_node.metadata
        start_doc = dict(md["start"])
        # the analyses are made and open their result tables (several requests) in one thread
        # while this one subscribes to the run and its streams (several more): the first
        # events wait for the longer of the two, not for their sum
        error: Exception | None = None
        stop = None

        def begin() -> list[AnalysisCallback]:
            callbacks = self._make_callbacks(start_doc, self._fallback)
            for cb in callbacks:
                cb("start", start_doc)
            return callbacks

        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"begin-{self.uid[:8]}") as pool:
            made = pool.submit(begin)
            with self.lock:
                try:
                    sub = self.run_node.subscribe()
                    sub.child_created.add_callback(self._on_stream_created)
                    self._subs.append(sub)
                    self._start(sub)
                    names = [] if new is not None else list(self.run_node)
                    for name in names:  # subscribed, not yet described to the analyses
                        self._attach_stream(name, emit=False)
                except Exception as exc:
                    error = exc
                try:
                    self.callbacks = made.result()
                except Exception as exc:
                    error = error or exc
                if error is not None or not self.callbacks:
                    self.finished = True  # not ours (or broken): stop listening at once
                    subs, self._subs = self._subs, []
                else:
                    try:
                        self._drainer.start()
                        for name in names:  # descriptors, then what the tables already hold
                            self._attach_stream(name)
                        stop = self.run_node.metadata.get("stop")
                    except Exception as exc:
                        # no event may reach an analysis that never saw its descriptor
                        error = exc
                        self.finished = True
                        subs, self._subs = self._subs, []
        if self.finished:
            _disconnect_all(subs)  # outside the lock: their callbacks may be waiting for it
            if error is not None:
                raise error
            return False
        if stop is not None:  # outside the lock: finish() disconnects subscriptions
            self.finish(dict(stop))
        return True

    def finish(self, stop_doc: dict[str, Any]) -> None:
        """Back-fill every stream from the catalog, then emit the stop document."""
        with self.lock:
            if self.finished:
                return
            for name in list(self.run_node):
                self._attach_stream(name, subscribe=False)
            self._work_backlog()  # skipped events, in order, before the stop
            for stream in self.streams.values():
                self._backfill(stream, holes=True)
                self._retry_unresolved(stream)
            self._emit("stop", stop_doc)
            self.finished = True
        self.close()
        if self.on_done is not None:
            self.on_done(self.uid)

    def close(self) -> None:
        subs, self._subs = self._subs, []
        _disconnect_all(subs)

    def reattach(self) -> None:
        """Re-subscribe after the server came back; back-fill and commit what the outage held up.

        Safe to call at any time (also when nothing was lost): events are fed at most once
        (by seq_num) and result rows are committed at most once.
        """
        self.needs_reattach.clear()
        with self.lock:
            if self.finished:
                return
            old, self._subs = self._subs, []
            for stream in self.streams.values():
                stream.table_sub = None
                stream.node_sub = None
                stream.table_looked_up = False
                stream.frames = {}  # fetched again (and their nodes subscribed again) when needed
                stream.frame_subs = {}
                stream.last_sequence = 0  # a new subscription numbers from its own start
        _disconnect_all(old)  # outside the lock: their callbacks may be waiting for it
        with self.lock:
            if self.finished:
                return
            self.reattached += 1
            run = self.root[self.uid]  # fresh metadata (the stop document may have arrived)
            self.run_node = getattr(run, "base", run)
            sub = self.run_node.subscribe()
            sub.child_created.add_callback(self._on_stream_created)
            self._subs.append(sub)
            self._start(sub)
            fed = {name: st.fed for name, st in self.streams.items()}
            for name in list(self.run_node):
                self._attach_stream(name)
            for stream in self.streams.values():
                self._backfill(stream)
            for cb in self.callbacks:  # rows whose commit failed during the outage
                try:
                    cb.flush()
                except Exception:
                    logger.exception("run %s: committing held-up results failed", self.uid)
            caught = {n: st.fed - fed.get(n, 0) for n, st in self.streams.items() if st.fed > fed.get(n, 0)}
            logger.warning("run %s: re-attached after a server outage; back-filled %s", self.uid,
                           caught or "nothing (no events missed)")
            stop = self.run_node.metadata.get("stop")
        if stop is not None:  # outside the lock: finish() disconnects subscriptions
            self.finish(dict(stop))

    def note_sequence(self, stream: _Stream, sequence: int) -> None:
        """Track the streaming-cache sequence of a table; a step backwards is a cache reset."""
        if sequence <= stream.last_sequence:
            self.cache_resets += 1
            logger.warning("run %s/%s: streaming cache sequence went back (%d -> %d): the server "
                           "restarted with a memory cache; back-filling from the catalog",
                           self.uid, stream.name, stream.last_sequence, sequence)
        stream.last_sequence = sequence

    # -- internals ----------------------------------------------------------------------
    def _emit(self, name: str, doc: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb(name, doc)

    def _fallback(self, data_key: str, seq_num: int) -> np.ndarray:
        """The frame read through tiled, at the index the node's data source gives it."""
        for stream in self.streams.values():
            if data_key in stream.external_keys:
                frames = self._frames(stream, data_key)
                if frames is not None:
                    return frames.read_http(seq_num)
        raise KeyError(data_key)

    def _frames(self, stream: _Stream, key: str) -> ExternalFrames | None:
        """The frame references of ``key`` in ``stream`` (None while tiled has no node for it)."""
        frames = stream.frames.get(key)
        if frames is None:
            # one request for the node and its data source (not `in`, `[]`, then the source)
            node = _child(stream.node.new_variation(include_data_sources=True), key)
            if node is None:
                return None
            frames = stream.frames[key] = ExternalFrames(node, key, fetched=True)
        return frames

    def _subscribe_frames(self, stream: _Stream) -> None:
        """Subscribe to the external nodes of ``stream`` not subscribed yet: each data-source
        update the writer sends (``array-ref``, with the whole data source) is offered to the
        node's frame references, so new events' frames need no request (a frame whose update
        has not arrived yet is looked up as before). Called after a batch is committed, once
        the stream's first :data:`SUBSCRIBE_FRAMES_AFTER` events are analysed, so that a run's
        first results do not wait for these subscriptions (5-event 512² runs, first result:
        290-380 ms without the subscription, 360-500 ms with it made on the node's creation)."""
        for key, frames in list(stream.frames.items()):
            if key in stream.frame_subs or self.finished:
                continue
            self._subscribe_node(stream, key, frames)

    def _subscribe_node(self, stream: _Stream, key: str, frames: ExternalFrames) -> None:
        try:
            from tiled.client.stream import ArraySubscription

            sub = ArraySubscription(frames.node.context, list(frames.node.path_parts))
            handler = _ArrayRefHandler(frames)
            sub.new_data.add_callback(handler)
            stream.frame_subs[key] = (sub, handler)  # keeps the handler alive (weak refs)
            self._subs.append(sub)
            self._start(sub)
        except SubscriptionNotConnected:
            raise
        except Exception:  # an optional saving: the data source is read per batch instead
            logger.debug("run %s: not subscribed to %s/%s", self.uid, stream.name, key, exc_info=True)

    def _start(self, sub) -> None:
        """Start ``sub``; if it does not connect, flag the run for a re-attach and raise."""
        try:
            start_subscription(sub, 0)
        except SubscriptionNotConnected:
            self.needs_reattach.set()
            raise

    def _on_stream_created(self, update) -> None:
        try:
            with self.lock:
                if not self.finished:
                    # its table comes as the child_created of its subscription (from its start)
                    self._attach_stream(update.key, node=created_child(update), new=True)
        except Exception:
            logger.exception("run %s: attaching stream %s failed", self.uid, update.key)

    def _attach_stream(self, name: str, subscribe: bool = True, emit: bool = True, node=None,
                       new: bool = False) -> None:
        """Know stream ``name``, subscribe to it and its event table (``subscribe``), and
        (``emit``) describe it to the analyses and feed them what its table holds.
        ``node``: the stream's container when the caller has it (saves a request); ``new``:
        the stream was just created (its table is not looked up: it comes as a child_created
        of the stream's subscription, which starts at the stream's first update)."""
        if name in self.streams:
            stream = self.streams[name]
        else:
            node = self.run_node[name] if node is None else node
            node = getattr(node, "base", node)
            md = dict(node.metadata)
            desc = {k: v for k, v in md.items() if not k.startswith("_")}
            desc.update(name=name, run_start=self.uid)
            stream = self.streams[name] = _Stream(name, node, desc)
        if emit and not stream.described:
            self._emit("descriptor", stream.descriptor)
            stream.described = True
        if subscribe and stream.node_sub is None and not self.finished:
            sub = stream.node.subscribe()
            sub.child_created.add_callback(self._on_stream_child)
            stream.node_sub = sub
            self._subs.append(sub)
            self._start(sub)
            stream.table_looked_up = new
        if subscribe and stream.table_sub is None and not stream.table_looked_up and not self.finished:
            # once per subscription of the container (made above, so a table created after
            # this look-up arrives as its child_created)
            table = _child(stream.node, INTERNAL)  # one request, not `in` then `[]`
            stream.table_looked_up = stream.node_sub is not None
            if table is not None:
                self._subscribe_table(stream, table, backfill=emit)
        if emit and stream.table is not None:  # subscribed before the analyses were ready
            table, stream.table = stream.table, None
            self._backfill(stream, table=table)

    def _on_stream_child(self, update) -> None:
        try:
            with self.lock:
                stream_name = update.subscription.segments[-1]
                stream = self.streams.get(stream_name)
                if stream is None or self.finished:
                    return
                if update.key == INTERNAL and stream.table_sub is None:
                    self._subscribe_table(stream, created=True)
                elif update.key in stream.external_keys and update.key not in stream.frames:
                    # the update carries the node's data source: its frame references
                    # without a request on the way to the first event's frame
                    node = created_child(update, include_data_sources=True)
                    if node is not None:
                        stream.frames[update.key] = ExternalFrames(node, update.key, fetched=True)
        except Exception:
            logger.exception("run %s: subscribing to %s failed", self.uid, update.key)

    def _subscribe_table(self, stream: _Stream, table=None, backfill: bool = True,
                         created: bool = False) -> None:
        """Subscribe to the stream's event table (``table``: its node, when the caller has it)
        and feed (``backfill``) or keep for later what it holds.

        ``created``: the table was just created (its container's child_created). It is then
        subscribed by path, with no request, and not read: the subscription starts at the
        table's first update, so its rows come through the websocket (a row the streaming
        cache no longer holds is a gap, back-filled when the next row comes or at the stop).
        On the way to a run's first result that saves two requests (the node, its rows)."""
        if created:
            from tiled.client.stream import TableSubscription

            sub = TableSubscription(stream.node.context, [*stream.node.path_parts, INTERNAL])
        else:
            table = stream.node[INTERNAL] if table is None else table
            sub = table.subscribe()
        handler = _TableHandler(self, stream)
        sub.new_data.add_callback(handler)
        stream.table_sub = (sub, handler)  # keeps the handler alive (tiled holds weak refs)
        self._subs.append(sub)
        self._start(sub)
        if created:
            return
        if backfill:
            self._backfill(stream, table=table)
        else:
            stream.table = table  # back-filled once the stream is described

    def enqueue(self, stream: _Stream, rows: list[dict[str, Any]]) -> None:
        """Queue rows of a live table update for the run's processing thread."""
        self._queue.put((stream, rows))

    def _drain(self) -> None:
        """Process queued updates; everything waiting is handled (and committed) as one batch,
        so a worker that fell behind catches up with few large appends instead of many small.
        Between batches, a slice of the skip-ahead backlog (:meth:`_work_backlog`)."""
        while not self.finished:
            try:
                item = self._queue.get(timeout=0.5) if not self._backlog else self._queue.get_nowait()
            except queue.Empty:
                item = None
                if not self._backlog:
                    continue
            items = [item] if item is not None else []
            with contextlib.suppress(queue.Empty):
                while True:
                    items.append(self._queue.get_nowait())
            by_stream: dict[str, tuple[_Stream, list]] = {}
            for stream, rows in items:
                by_stream.setdefault(stream.name, (stream, []))[1].extend(rows)
            for stream, rows in by_stream.values():
                try:
                    self.on_rows(stream, rows)
                except Exception:
                    logger.exception("run %s: processing table updates failed", self.uid)
            if self._backlog:
                try:
                    self._work_backlog(BACKFILL_SLICE_S)
                except Exception:
                    logger.exception("run %s: back-filling skipped events failed", self.uid)

    def on_rows(self, stream: _Stream, rows: list[dict[str, Any]]) -> None:
        """Process rows from live table updates (may repeat or skip seq_nums).

        Skip-ahead: when every analysis of the run takes events in any order
        (``order_free``) and the oldest new row waited more than :data:`SKIP_AHEAD_LAG_S`,
        the newest row is analysed (and its result committed) first, for the live view; the
        older ones wait in a backlog that is analysed in seq_num order, in slices between
        newer rows (each event is still analysed once; the lag of the live view stays about
        one slice, where it grew without bound)."""
        with self.lock:
            if self.finished:
                return
            rows = sorted(rows, key=lambda r: int(r["seq_num"]))
            new = [r for r in rows if int(r["seq_num"]) > stream.fed]
            if not new:
                return
            if int(new[0]["seq_num"]) > stream.fed + 1:
                self._backfill(stream, upto=int(new[0]["seq_num"]) - 1)
            new = [r for r in new if int(r["seq_num"]) > stream.fed]
            if len(new) > 1 and self.skip_ahead and _lag_s(new[0]) > SKIP_AHEAD_LAG_S:
                self.skipped_ahead += 1
                self._feed(stream, new[-1:])  # committed at once: the live view is current
                self._backlog.setdefault(stream.name, (stream, []))[1].extend(new[:-1])
                return
            self._feed(stream, new)

    @property
    def skip_ahead(self) -> bool:
        """May newer events be analysed before older ones? (every analysis is order-free)"""
        return bool(self.callbacks) and all(getattr(cb, "order_free", False) for cb in self.callbacks)

    def _work_backlog(self, budget_s: float | None = None) -> None:
        """Analyse skipped events in seq_num order, for at most ``budget_s`` (None: all)."""
        deadline = None if budget_s is None else time.monotonic() + budget_s
        with self.lock:
            for name, (stream, rows) in list(self._backlog.items()):
                rows = sorted((r for r in rows if int(r["seq_num"]) not in stream.seen),
                              key=lambda r: int(r["seq_num"]))
                rows = self._feed(stream, rows, deadline=deadline)
                if rows:
                    self._backlog[name] = (stream, rows)
                else:
                    del self._backlog[name]
                if deadline is not None and time.monotonic() >= deadline:
                    return

    def _backfill(self, stream: _Stream, upto: int | None = None, holes: bool = False, table=None) -> None:
        """Feed stored rows after ``stream.fed`` (up to ``upto``); with ``holes`` also every
        stored row never fed (a row the writer appended again after the server lost it).
        ``table``: the stream's event table node when the caller has it (saves a request)."""
        table = _child(stream.node, INTERNAL) if table is None else table
        if table is None:
            return
        rows = rows_of(table.read())
        rows = [r for r in rows if (int(r["seq_num"]) > stream.fed or (holes and int(r["seq_num"]) not in stream.seen))
                and (upto is None or int(r["seq_num"]) <= upto)]
        if rows:
            logger.info("run %s/%s: back-filling %d events from the catalog", self.uid, stream.name, len(rows))
            self._feed(stream, sorted(rows, key=lambda r: int(r["seq_num"])))

    def _feed(self, stream: _Stream, rows: list[dict[str, Any]],
              deadline: float | None = None) -> list[dict[str, Any]]:
        """Analyse ``rows`` in their order (committed at the end); past ``deadline``
        (``time.monotonic()``) the rest is returned unanalysed."""
        seen: set[int] = set()
        unique = []
        for r in rows:
            s = int(r["seq_num"])
            if s not in seen:
                seen.add(s)
                unique.append(r)
        events = events_from_rows(unique, stream.descriptor["uid"])
        with contextlib.ExitStack() as batch:
            for cb in self.callbacks:
                batch.enter_context(cb.batch())
            self._retry_unresolved(stream)
            for key in stream.external_keys:  # one data-source read per batch, if any
                frames = self._frames(stream, key) if events else None
                if frames is not None and frames.ref(events[-1]["seq_num"]) is None:
                    frames.refresh()
            for i, event in enumerate(events):
                if deadline is not None and i and time.monotonic() >= deadline:
                    return unique[i:]
                seq = event["seq_num"]
                for key in stream.external_keys:
                    self._emit_stream_datum(stream, key, seq, refresh=False)
                self._emit("event", event)
                stream.fed = max(stream.fed, seq)
                stream.seen.add(seq)
        if len(stream.frame_subs) < len(stream.frames) and len(stream.seen) >= SUBSCRIBE_FRAMES_AFTER:
            self._subscribe_frames(stream)
        return []

    def _emit_stream_datum(self, stream: _Stream, key: str, seq: int, refresh: bool = True) -> None:
        """Emit the StreamResource (once) and the StreamDatum of event ``seq``'s frame, with
        the indices the node's data source gives it; a frame not registered yet is retried
        at the next rows and at the stop (the callbacks hold the event meanwhile)."""
        frames = self._frames(stream, key)
        ref = None if frames is None else frames.resolve(seq) if refresh else frames.ref(seq)
        if ref is None:
            stream.unresolved.setdefault(key, set()).add(seq)
            return
        stream.unresolved.get(key, set()).discard(seq)
        if key not in stream.resources:
            sr_uid = f"sr-{stream.descriptor['uid']}-{key}"
            self._emit("stream_resource", frames.stream_resource(sr_uid, self.uid))
            stream.resources[key] = sr_uid
        self._emit("stream_datum", frames.stream_datum(
            ref, f"sd-{stream.descriptor['uid']}-{key}-{seq}", stream.resources[key], stream.descriptor["uid"]))

    def _retry_unresolved(self, stream: _Stream) -> None:
        """Emit the StreamDatums of events fed before tiled had their frames."""
        for key, seqs in list(stream.unresolved.items()):
            frames = self._frames(stream, key) if seqs else None
            if frames is None:
                continue
            frames.refresh()  # once for all of them
            for seq in sorted(seqs):
                self._emit_stream_datum(stream, key, seq, refresh=False)


class _ArrayRefHandler:
    """Callable for an external array node's subscription: offers each update's data source
    to the node's frame references (a strong object: tiled holds weak refs)."""

    def __init__(self, frames: ExternalFrames) -> None:
        self.frames = frames

    def __call__(self, update) -> None:
        source = getattr(update, "data_source", None)
        if source is not None:
            self.frames.offer(source)


class _TableHandler:
    """Callable for a table subscription (a strong object so tiled's weak ref stays alive)."""

    def __init__(self, follower: RunFollower, stream: _Stream) -> None:
        self.follower = follower
        self.stream = stream

    def __call__(self, update) -> None:
        try:
            seq = getattr(update, "sequence", None)
            if seq is not None:
                self.follower.note_sequence(self.stream, int(seq))
            self.follower.enqueue(self.stream, rows_of(update.data()))
        except Exception:
            logger.exception("run %s: decoding a table update failed", self.follower.uid)


#: the oldest waiting event is this old (s, event time to now): analyse the newest first
SKIP_AHEAD_LAG_S = 1.0
#: skipped events are analysed in slices of at most this long (s) between newer rows
BACKFILL_SLICE_S = 0.5


def _lag_s(row: dict[str, Any]) -> float:
    """Seconds since the event of ``row`` (its ``time``; 0 if it has none)."""
    try:
        return time.time() - float(row["time"])
    except (KeyError, TypeError, ValueError):
        return 0.0


#: events of a stream analysed before its external nodes are subscribed (their data-source
#: updates then replace a request per batch): not among a run's first, latency-critical events
SUBSCRIBE_FRAMES_AFTER = 5

#: wait for a websocket subscription to connect, s (normally milliseconds)
CONNECT_TIMEOUT_S = 20.0


class SubscriptionNotConnected(StrainstreamError, RuntimeError):
    """A tiled subscription did not connect (its thread died, or the server did not answer)."""


def start_subscription(sub, start: int | None = 0, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """``sub.start_in_thread(start)`` that gives up after ``timeout_s``.

    tiled's ``start_in_thread`` waits without a timeout until the websocket is connected —
    forever when its thread dies on the way (e.g. HTTP 500 on the handshake while the server
    shuts down, which its retry loop does not catch). Called under a follower's lock that
    hung the worker for good (CI: a server restarted at the moment the worker subscribed to a
    new stream). Here the wait runs in a thread of its own; past ``timeout_s`` this raises
    :class:`SubscriptionNotConnected` and the caller asks for a re-attach.

    Raises
    ------
    SubscriptionNotConnected
    """
    t = threading.Thread(target=sub.start_in_thread, args=(start,), daemon=True,
                         name="tiled-subscribe-wait")
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise SubscriptionNotConnected(f"tiled subscription {getattr(sub, '_uri', sub)} not connected "
                                       f"after {timeout_s:g} s")


def created_child(update, include_data_sources: bool = False):
    """The client of the node a ``child_created`` update announces, built from the update (its
    metadata, structure and data sources) without a request; None if it cannot be built (the
    caller then asks the server)."""
    try:
        from types import SimpleNamespace

        from tiled.client.utils import client_for_item

        sub = update.subscription
        # the root's subscription has the segments ["/"]: the child's ancestors are []
        segments = [seg for seg in sub.segments if seg.strip("/")]
        view = SimpleNamespace(
            key=update.key, metadata=update.metadata, structure_family=update.structure_family,
            specs=update.specs, data_sources=update.data_sources, access_tags=update.access_tags,
            subscription=SimpleNamespace(segments=segments, context=sub.context))
        item = type(update)._item(view)
        item["attributes"]["data_sources"] = [
            ds.model_dump(mode="json") if hasattr(ds, "model_dump") else ds for ds in update.data_sources or []]
        return client_for_item(sub.context, sub.structure_clients, item, include_data_sources=include_data_sources)
    except Exception:  # another tiled's update: fall back to a request
        logger.debug("client of %s not built from its update", getattr(update, "key", "?"), exc_info=True)
        return None


def _child(node, key: str):
    """``node[key]``, or None when tiled has no such child (one request either way)."""
    try:
        return node[key]
    except KeyError:
        return None


def _disconnect_all(subs: list[Any]) -> None:
    for sub in subs:
        try:
            sub.disconnect(wait=False)
        except Exception:  # a subscription already closed by the server
            logger.debug("disconnect failed", exc_info=True)
