"""Skip-ahead under load (RunFollower.on_rows): when every analysis of a run is order-free and
the oldest new row waited longer than SKIP_AHEAD_LAG_S, the newest event is analysed and
committed first (the live view is current) and the older ones are analysed afterwards, in
seq_num order, in time slices — each exactly once. Seeded or accumulating analyses (not
order-free) always get the events in order. Known answers: the exact event orders below."""

from __future__ import annotations

import contextlib
import time

import pytest

from strainstream.callbacks.framestats import FrameStatsCallback
from strainstream.callbacks.tiled_source import RunFollower, _Stream


class _Recorder:
    """An analysis that records the events it is given and what each commit held."""

    def __init__(self, order_free: bool) -> None:
        self.order_free = order_free
        self.events: list[int] = []
        self.commits: list[list[int]] = []
        self._open: list[int] = []

    def __call__(self, name, doc):
        if name == "event":
            self.events.append(doc["seq_num"])
            self._open.append(doc["seq_num"])

    @contextlib.contextmanager
    def batch(self):
        yield self
        if self._open:
            self.commits.append(self._open)
            self._open = []


def _follower(*callbacks) -> tuple[RunFollower, _Stream]:
    follower = RunFollower(root=None, uid="run-1", make_callbacks=lambda *a: [])
    follower.callbacks = list(callbacks)
    stream = _Stream("primary", node=None, descriptor={"uid": "d1", "data_keys": {"x": {"dtype": "number"}}})
    return follower, stream


def _rows(seqs, age_s: float) -> list[dict]:
    t0 = time.time() - age_s
    return [{"seq_num": s, "time": t0 + 0.01 * s, "x": float(s)} for s in seqs]


def test_a_late_backlog_gives_the_newest_event_first_then_the_rest_in_order_once():
    rec = _Recorder(order_free=True)
    follower, stream = _follower(rec)
    follower.on_rows(stream, _rows(range(1, 11), age_s=5.0))
    assert rec.events == [10] and rec.commits == [[10]], "the newest first, committed alone"
    assert follower.skipped_ahead == 1 and stream.fed == 10
    # newer rows that are on time go straight on, before the backlog
    follower.on_rows(stream, _rows([11, 12], age_s=0.0))
    assert rec.events == [10, 11, 12]
    follower._work_backlog()
    assert rec.events == [10, 11, 12, *range(1, 10)]
    assert sorted(rec.events) == list(range(1, 13)), "every event exactly once"
    assert not follower._backlog
    # rows seen again (a repeated update) are not analysed twice
    follower.on_rows(stream, _rows(range(1, 13), age_s=5.0))
    follower._work_backlog()
    assert sorted(rec.events) == list(range(1, 13))


def test_the_backlog_is_worked_in_slices_of_the_time_budget(monkeypatch):
    rec = _Recorder(order_free=True)
    follower, stream = _follower(rec)
    follower.on_rows(stream, _rows(range(1, 8), age_s=3.0))
    follower._work_backlog(0.0)  # a slice always takes at least one event
    assert rec.events == [7, 1]
    follower._work_backlog(0.0)
    assert rec.events == [7, 1, 2]
    follower._work_backlog(None)
    assert rec.events == [7, *range(1, 7)] and not follower._backlog


@pytest.mark.parametrize("age_s, order_free", [(5.0, False), (0.0, True)])
def test_in_order_when_an_analysis_depends_on_order_or_nothing_is_late(age_s, order_free):
    """A seeded analysis beside an order-free one, or rows that are on time: seq_num order."""
    rec = _Recorder(order_free=True)
    other = _Recorder(order_free=order_free)
    follower, stream = _follower(rec, other)
    follower.on_rows(stream, _rows(range(1, 11), age_s=age_s))
    assert rec.events == other.events == list(range(1, 11))
    assert follower.skipped_ahead == 0 and not follower._backlog


def test_which_analyses_are_order_free():
    from strainstream.callbacks.sxdm import SXDMCallback
    from strainstream.callbacks.xanes import XANESCallback
    from strainstream.callbacks.xrd import OperandoXRDCallback

    assert FrameStatsCallback.order_free
    assert not OperandoXRDCallback.order_free, "seeded from the previous row"
    assert not SXDMCallback.order_free, "accumulates maps"
    assert not XANESCallback.order_free, "seeded from the previous row"
