"""AnalysisCallback with a sink that takes background commits (tiled's): rows are appended by
one committer thread, in order, each exactly once, while the next events are analysed; the
stop and ``flush`` wait for it; a failed commit loses nothing (no server: MemorySink-based)."""

from __future__ import annotations

import threading

import pytest

from strainstream.callbacks.framestats import FrameStatsCallback
from strainstream.callbacks.sinks import MemorySink

from .test_analysis_callback import _feed, _run


class _BackgroundSink(MemorySink):
    """A MemorySink appended to from the committer thread; ``gate`` (an Event) holds appends
    until set; ``fail`` (a count) makes that many appends fail ('refused': nothing stored, or
    'lost': stored, answer lost)."""

    background_commits = True

    def __init__(self, gate=None, fail=0, mode="refused"):
        super().__init__()
        self.gate, self.fail, self.mode = gate, fail, mode
        self.threads, self.commits = set(), []

    def append(self, rows):
        self.threads.add(threading.current_thread().name)
        if self.gate is not None:
            assert self.gate.wait(10), "append gate never opened"
        if self.fail:
            self.fail -= 1
            if self.mode == "lost":
                super().append(rows)
            raise ConnectionError("server unreachable")
        self.commits.append([r["seq_num"] for r in rows])
        super().append(rows)


def _committer_idle(cb):
    with cb._commit_cond:
        while cb._commit_queue or cb._committing:
            assert cb._commit_cond.wait(10)


def _started(sink, head):
    cb = FrameStatsCallback(sink)
    for name, doc in head:
        cb(name, doc)
    return cb


def _batch(cb, events):
    with cb.batch():
        for ev in events:
            cb("event", ev)


def _head_events_stop(docs):
    head = [(n, d) for n, d in docs if n not in ("event", "stop")]
    events = [d for n, d in docs if n == "event"]
    stop = [d for n, d in docs if n == "stop"][0]
    return head, events, stop


def test_background_commits_give_the_same_rows_in_order_from_one_other_thread(tmp_path):
    docs = _run(tmp_path, num=8)
    _, clean = _feed(docs)
    head, events, stop = _head_events_stop(docs)
    sink = _BackgroundSink()
    cb = _started(sink, head)
    for i in range(0, 8, 2):  # batches of two events, as a live worker's line by line
        _batch(cb, events[i:i + 2])
    cb("stop", stop)
    assert sink.rows == clean.rows and sink.summary == clean.summary
    assert [s for c in sink.commits for s in c] == list(range(1, 9))  # in order, each once
    assert sink.threads == {"commit-frame_stats"}  # never on the document thread


def test_the_next_batch_is_analysed_while_an_append_is_in_flight(tmp_path):
    docs = _run(tmp_path, num=6)
    head, events, stop = _head_events_stop(docs)
    gate = threading.Event()
    sink = _BackgroundSink(gate=gate)
    cb = _started(sink, head)
    _batch(cb, events[:3])
    _batch(cb, events[3:])  # the first batch's append is held at the gate: this does not wait
    assert sink.rows == [] and sorted(cb._in_flight) == [1, 2, 3, 4, 5, 6]
    # events delivered again while their rows are in flight are not analysed twice
    for ev in events:
        cb("event", ev)
    committed, in_flight, pending = cb.known_rows()
    assert (committed, pending) == ([], []) and [r["seq_num"] for r in in_flight] == [1, 2, 3, 4, 5, 6]
    assert cb.previous_row(4)["seq_num"] == 3  # in-flight rows count as rows made
    threading.Timer(0.2, gate.set).start()
    cb("stop", stop)  # waits for the commits
    assert sink.commits == [[1, 2, 3], [4, 5, 6]] and sink.status == "complete"
    assert sink.summary["events_analysed"] == 6


@pytest.mark.parametrize("mode", ["lost", "refused"])
def test_a_failed_background_commit_is_reconciled_without_duplicates(tmp_path, monkeypatch, mode):
    import strainstream.callbacks.base as base

    monkeypatch.setattr(base, "_COMMIT_BACKOFF_S", 0.0)
    docs = _run(tmp_path)
    _, clean = _feed(docs)
    sink = _BackgroundSink(fail=1, mode=mode)
    _feed(docs, sink)
    assert [r["seq_num"] for r in sink.rows] == [1, 2, 3, 4, 5, 6]
    assert sink.rows == clean.rows and sink.summary == clean.summary


def test_an_outage_longer_than_the_retries_loses_nothing_and_keeps_the_order(tmp_path, monkeypatch):
    """Every attempt of a batch fails: the batch and the ones queued behind it come back
    unsent, ``flush`` raises the sink's error, and once the sink answers again one flush
    stores all rows once, in seq_num order (as the re-attach after a server outage does)."""
    import strainstream.callbacks.base as base

    monkeypatch.setattr(base, "_COMMIT_BACKOFF_S", 0.0)
    docs = _run(tmp_path, num=6)
    _, clean = _feed(docs)
    head, events, stop = _head_events_stop(docs)
    gate = threading.Event()
    sink = _BackgroundSink(gate=gate, fail=2 * base._COMMIT_ATTEMPTS)
    sink.committed_seq_nums = lambda: (_ for _ in ()).throw(ConnectionError("server unreachable"))
    cb = _started(sink, head)
    for i in (0, 2, 4):
        _batch(cb, events[i:i + 2])  # three batches queued behind the first one's failing append
    gate.set()
    _committer_idle(cb)  # it gave up on the first batch; the later ones came back unsent
    assert [r["seq_num"] for r in cb._returned] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ConnectionError, match="server unreachable"):
        cb.flush()  # sends them once more: the outage goes on
    assert sink.rows == [] and [r["seq_num"] for r in cb._pending] == [1, 2, 3, 4, 5, 6]
    for ev in events:  # pending rows: redelivered events are not analysed again
        cb("event", ev)
    assert [r["seq_num"] for r in cb._pending] == [1, 2, 3, 4, 5, 6]
    cb.flush()  # the sink answers again
    assert sink.commits == [[1, 2, 3, 4, 5, 6]]
    cb("stop", stop)
    assert sink.rows == clean.rows and sink.summary == clean.summary


def test_a_failure_inside_a_batch_is_raised_at_a_later_commit_not_lost(tmp_path, monkeypatch):
    """A batch's end does not wait; the failure of its append is raised by the next batch's
    end (the worker logs it) and the rows go out with that batch."""
    import strainstream.callbacks.base as base

    monkeypatch.setattr(base, "_COMMIT_BACKOFF_S", 0.0)
    docs = _run(tmp_path, num=4)
    _, clean = _feed(docs)
    head, events, stop = _head_events_stop(docs)
    sink = _BackgroundSink(fail=base._COMMIT_ATTEMPTS)
    cb = _started(sink, head)
    _batch(cb, events[:2])
    _committer_idle(cb)  # the committer gave up on the first batch
    with pytest.raises(ConnectionError), cb.batch():
        for ev in events[2:]:
            cb("event", ev)
    cb("stop", stop)  # sends everything still pending, once
    assert sink.commits == [[1, 2, 3, 4]]
    assert sink.rows == clean.rows and sink.summary == clean.summary
