"""A suspension at any point of an event leaves the detector file holding exactly the
recorded frames, in event order (event k <-> file row k-1), with no StreamDatum or
StreamResource lost or repeated. In-process detector and RunEngine (no IOC): the suspension
is requested from inside the event (after the trigger, after the read) so the timing is exact.
"""

from __future__ import annotations

import threading

import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import count
from bluesky.suspenders import SuspendBoolHigh
from ophyd import Signal

from strainstream.devices.detectors import sim_frame_detector


class _Tripwire(Signal):
    """Readable that raises the suspender's signal when read for the n-th time (once)."""

    def __init__(self, *, name, alarm: Signal, at: set[int], clear_after_s: float = 0.2):
        super().__init__(name=name, value=0)
        self.alarm, self.at, self.clear_after_s, self.reads = alarm, set(at), clear_after_s, 0

    def read(self):
        self.reads += 1
        if self.reads in self.at:
            self.alarm.put(1)
            threading.Timer(self.clear_after_s, lambda: self.alarm.put(0)).start()
        return super().read()


def _run(tmp_path, trip_reads, num=6):
    shots = Signal(name="shot", value=-1)
    n_taken = [0]

    def source(i):  # every frame ever taken has its own constant value
        n_taken[0] += 1
        shots.put(n_taken[0])
        return np.full((8, 8), float(n_taken[0]), np.float32)

    det = sim_frame_detector("det", tmp_path, frame_source=source, frame_shape=(8, 8))
    alarm = Signal(name="alarm", value=0)
    # read order per event: det, shot, trip -> the suspension comes after the frame was read
    trip = _Tripwire(name="trip", alarm=alarm, at=trip_reads)
    RE = RunEngine({})
    RE.record_interruptions = True
    RE.install_suspender(SuspendBoolHigh(alarm, sleep=0.05))
    docs = []
    RE(count([det, shots, trip], num=num), lambda n, d: docs.append((n, d)))
    return docs, n_taken[0]


@pytest.mark.parametrize("trip_reads", [{2}, {1}, {2, 4}])
def test_frames_read_into_a_dropped_event_are_cut(tmp_path, trip_reads):
    num = 6
    docs, taken = _run(tmp_path, trip_reads, num)
    events = [d for n, d in docs if n == "event" and "det_frame_count" in d["data"]]
    datums = [d for n, d in docs if n == "stream_datum"]
    resources = [d for n, d in docs if n == "stream_resource"]
    # a suspension that lands before the save re-takes the frame (at least the first does)
    assert num < taken <= num + len(trip_reads)
    assert [e["seq_num"] for e in events] == list(range(1, num + 1))
    assert len(resources) == 1 and resources[0]["run_start"]
    assert [(d["indices"]["start"], d["seq_nums"]["start"]) for d in datums] == [
        (k, k + 1) for k in range(num)]
    path = resources[0]["uri"].removeprefix("file://localhost")
    with h5py.File(path, "r", swmr=True, locking=False) as f:
        frames = f["/entry/data/data"][()]
    assert frames.shape[0] == num
    # event k holds the frame it triggered: file row k-1 has that shot's value
    assert [float(fr[0, 0]) for fr in frames] == [float(e["data"]["shot"]) for e in events]
    interruptions = [d for n, d in docs if n == "event" and "interruption" in d["data"]]
    assert len(interruptions) >= len(trip_reads)


def test_suspension_during_the_delay_repeats_no_saved_event(tmp_path):
    """frame_series checkpoints after each frame: a suspension while it waits between frames
    re-takes nothing (bluesky's plain count would emit the last seq_num again)."""
    from strainstream.plans.frames import frame_series

    det = sim_frame_detector("det", tmp_path, frame_shape=(8, 8))
    alarm = Signal(name="alarm", value=0)
    RE = RunEngine({})
    RE.install_suspender(SuspendBoolHigh(alarm, sleep=0.05))
    docs = []

    def record(name, doc):
        docs.append((name, doc))
        if name == "event" and doc["seq_num"] == 2:  # saved; the plan now waits 0.5 s
            alarm.put(1)
            threading.Timer(0.2, lambda: alarm.put(0)).start()

    RE(frame_series([det], num=4, delay_s=0.5), record)
    events = [d for n, d in docs if n == "event"]
    assert [e["seq_num"] for e in events] == [1, 2, 3, 4]
    datums = [d for n, d in docs if n == "stream_datum"]
    assert [d["indices"]["start"] for d in datums] == [0, 1, 2, 3]
    with h5py.File(next(d for n, d in docs if n == "stream_resource")["uri"].removeprefix(
            "file://localhost"), "r", swmr=True, locking=False) as f:
        assert f["/entry/data/data"].shape[0] == 4
