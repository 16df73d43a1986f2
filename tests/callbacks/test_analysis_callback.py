"""AnalysisCallback: frame resolution, document order, exactly-once, flags (no server)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from bluesky import RunEngine

from strainstream.callbacks.framestats import FrameStatsCallback
from strainstream.callbacks.sinks import MemorySink
from strainstream.devices.detectors import powder_ring_source, sim_frame_detector
from strainstream.framestats import frame_statistics
from strainstream.plans.frames import frame_series


def _run(tmp_path, source=None, num=6):
    docs = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: docs.append((name, copy.deepcopy(doc))))
    det = sim_frame_detector("det", tmp_path / "det", frame_source=source, frame_shape=(32, 40))
    RE(frame_series([det], num=num))
    return docs


def _feed(docs, sink=None):
    sink = sink or MemorySink()
    cb = FrameStatsCallback(sink)
    for name, doc in docs:
        cb(name, doc)
    return cb, sink


def _replay_order(docs):
    """Like tiled's run.documents(): stream_resource/stream_datum merged, after the events."""
    head = [(n, d) for n, d in docs if n in ("start", "descriptor")]
    events = [(n, d) for n, d in docs if n == "event"]
    res = [(n, d) for n, d in docs if n == "stream_resource"]
    datums = [d for n, d in docs if n == "stream_datum"]
    merged = dict(datums[0])
    merged["indices"] = {"start": datums[0]["indices"]["start"], "stop": datums[-1]["indices"]["stop"]}
    merged["seq_nums"] = {"start": datums[0]["seq_nums"]["start"], "stop": datums[-1]["seq_nums"]["stop"]}
    stop = [(n, d) for n, d in docs if n == "stop"]
    return head + events + res + [("stream_datum", merged)] + stop


def test_results_match_frames_computed_directly(tmp_path):
    docs = _run(tmp_path)
    cb, sink = _feed(docs)
    source = powder_ring_source((32, 40))
    assert [r["seq_num"] for r in sink.rows] == [1, 2, 3, 4, 5, 6]
    for i, row in enumerate(sink.rows):
        truth = frame_statistics(source(i).astype(np.float32))
        for key, value in truth.items():
            assert row[key] == value, key
        assert row["flag"] == ""
    assert sink.status == "complete"
    assert sink.summary["events_analysed"] == 6


def test_replay_order_gives_identical_rows(tmp_path):
    docs = _run(tmp_path)
    _, live = _feed(docs)
    _, replay = _feed(_replay_order(docs))
    assert replay.rows == live.rows
    assert replay.summary == live.summary


def test_committed_rows_are_not_analysed_again(tmp_path):
    docs = _run(tmp_path)
    _, full = _feed(docs)
    resumed = MemorySink()
    resumed.rows = [dict(r) for r in full.rows[:4]]
    appended = []
    resumed.append = lambda rows: appended.extend(rows)  # record only new commits
    cb, _ = _feed(docs, resumed)
    assert [r["seq_num"] for r in appended] == [5, 6]
    assert appended == full.rows[4:]
    assert resumed.summary == full.summary  # summary over all committed rows


def test_nan_frame_is_flagged_and_run_goes_on(tmp_path):
    good = powder_ring_source((32, 40))

    def source(i):
        return np.full((32, 40), np.nan, np.float32) if i == 2 else good(i)

    _, sink = _feed(_run(tmp_path, source=source))
    flags = [r["flag"] for r in sink.rows]
    assert flags == ["", "", "all_nan", "", "", ""]
    assert "NaN" in sink.rows[2]["message"]
    assert np.isnan(sink.rows[2]["mean"])
    assert sink.summary["events_flagged"] == 1


def test_missing_frame_is_flagged_at_stop(tmp_path):
    docs = [(n, d) for n, d in _run(tmp_path) if not (n == "stream_datum" and d["seq_nums"]["start"] == 3)]
    _, sink = _feed(docs)
    assert [r["seq_num"] for r in sink.rows] == [1, 2, 4, 5, 6, 3]
    assert sink.rows[-1]["flag"] == "frame_unavailable"


def test_wrong_frame_shape_is_refused_by_the_detector(tmp_path):
    RE = RunEngine({})
    det = sim_frame_detector("det", tmp_path, frame_source=lambda i: np.zeros((3, 3)), frame_shape=(4, 4))
    with pytest.raises(Exception) as info:
        RE(frame_series([det], num=1))
    assert "does not match the detector" in str(info.value.__cause__)


class _FlakySink(MemorySink):
    """append fails once per mode: 'lost' stores the rows but loses the answer; 'refused'
    stores nothing."""

    def __init__(self, mode):
        super().__init__()
        self.mode, self.failed = mode, False

    def append(self, rows):
        if not self.failed:
            self.failed = True
            if self.mode == "lost":
                super().append(rows)
            raise ConnectionError("response lost")
        super().append(rows)


@pytest.mark.parametrize("mode", ["lost", "refused"])
def test_failed_commit_is_reconciled_without_duplicates(tmp_path, mode, monkeypatch):
    import strainstream.callbacks.base as base

    monkeypatch.setattr(base, "_COMMIT_BACKOFF_S", 0.0)
    docs = _run(tmp_path)
    _, clean = _feed(docs)
    sink = _FlakySink(mode)
    _feed(docs, sink)
    assert [r["seq_num"] for r in sink.rows] == [1, 2, 3, 4, 5, 6]  # each row stored once
    assert sink.rows == clean.rows
    assert sink.summary == clean.summary


def test_a_long_batch_commits_as_it_goes_and_a_short_one_once(tmp_path, monkeypatch):
    """A worker catching up on a backlog feeds it as one batch: rows are committed whenever the
    oldest uncommitted one waited BATCH_WINDOW_S, so the live view advances during the batch."""
    import strainstream.callbacks.base as base

    docs = _run(tmp_path, num=8)
    head = [(n, d) for n, d in docs if n not in ("event", "stop")]
    events = [d for n, d in docs if n == "event"]
    clock = {"t": 0.0}
    monkeypatch.setattr(base.time, "monotonic", lambda: clock["t"])
    for step_s, expected in ((0.04, [[1, 2, 3, 4], [5, 6, 7, 8]]), (0.0, [[1, 2, 3, 4, 5, 6, 7, 8]])):
        sink = MemorySink()
        commits = []
        sink.append = lambda rows, sink=sink, commits=commits: (
            commits.append([r["seq_num"] for r in rows]), MemorySink.append(sink, rows))
        cb = FrameStatsCallback(sink)
        for name, doc in head:
            cb(name, doc)
        with cb.batch():
            for ev in events:
                clock["t"] += step_s  # each event's analysis "takes" step_s
                cb("event", ev)
        assert commits == expected, step_s
        assert [r["seq_num"] for r in sink.rows] == list(range(1, 9))
