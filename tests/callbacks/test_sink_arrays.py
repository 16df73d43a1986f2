"""TiledSink.put_arrays: maps written by a writer thread, the newest set only, errors kept.

The writes themselves are replaced by a recorder here (the round trip through a real tiled
server is tests/system/test_sinks.py); what is checked is the hand-off: put_arrays does not
wait for a write, a set superseded before its write starts is never written, flush_arrays
waits for the newest set and raises what its write raised.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from strainstream.callbacks.sinks import TiledSink


def _sink(write):
    sink = TiledSink(None, "raw-uid", "sxdm")
    sink._write_arrays = write  # the recorder stands in for the HTTP writes
    return sink


def test_put_arrays_returns_at_once_and_only_the_newest_waiting_set_is_written():
    started, gate, written = threading.Event(), threading.Event(), []

    def write(arrays, metadata):
        started.set()
        assert gate.wait(10)
        written.append((float(arrays["m"][0, 0]), metadata["angle"]))

    sink = _sink(write)
    maps = {"m": np.zeros((2, 2))}
    t0 = time.monotonic()
    sink.put_arrays(maps, {"angle": 1})
    assert started.wait(10)  # set 1 is being written (and blocked)
    for angle in (2, 3, 4):
        maps["m"][:] = angle  # the caller's array changes after the call: copied at the call
        sink.put_arrays(maps, {"angle": angle})
    assert time.monotonic() - t0 < 5  # nothing waited for the blocked write
    gate.set()
    sink.flush_arrays(timeout=10)
    assert written == [(0.0, 1), (4.0, 4)]  # sets 2 and 3 were superseded while waiting


def test_a_failed_write_is_raised_by_flush_and_the_next_put_then_writing_goes_on():
    calls = []

    def write(arrays, metadata):
        calls.append(metadata["angle"])
        if metadata["angle"] == 1:
            raise OSError("tiled refused the array")

    sink = _sink(write)
    sink.put_arrays({"m": np.ones(3)}, {"angle": 1})
    with pytest.raises(OSError, match="refused"):
        sink.flush_arrays(timeout=10)
    sink.flush_arrays(timeout=10)  # raised once, not again
    sink.put_arrays({"m": np.ones(3)}, {"angle": 2})
    sink.flush_arrays(timeout=10)
    assert calls == [1, 2]


def test_flush_times_out_naming_the_run_when_a_write_hangs():
    gate = threading.Event()
    sink = _sink(lambda arrays, metadata: gate.wait(10))
    sink.put_arrays({"m": np.ones(3)}, {"angle": 1})
    with pytest.raises(TimeoutError, match="sxdm arrays of run raw-uid"):
        sink.flush_arrays(timeout=0.2)
    gate.set()
    sink.flush_arrays(timeout=10)
