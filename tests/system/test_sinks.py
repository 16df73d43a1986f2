"""TiledSink against a real tiled server: rows, arrays (rewritten in place) and read-back."""

from __future__ import annotations

import math

import numpy as np
import pytest

from strainstream.callbacks.sinks import MemorySink, TiledSink, read_results

pytestmark = pytest.mark.system

COLUMNS = {"seq_num": "int64", "time": "float64", "flag": "string", "message": "string",
           "x": "float64"}


def _exercise(sink):
    committed = sink.begin({"analysis": "demo", "version": "1", "parameters": {"k": 1}}, COLUMNS)
    assert committed == []
    sink.append([{"seq_num": 1, "time": 1.5, "flag": "", "message": "", "x": 0.1},
                 {"seq_num": 2, "time": 2.5, "flag": "blank", "message": "no counts", "x": math.nan}])
    maps = {"strain": np.array([[1e-3, np.nan], [2e-3, -1e-3]]), "mask": np.array([[True, False], [True, True]])}
    sink.put_arrays(maps, {"angles_done": 1})
    maps["strain"] = maps["strain"] * 2  # a later, sharper map replaces the first one
    sink.put_arrays(maps, {"angles_done": 2})
    sink.finish({"n": 2, "worst": math.nan})


def test_tiled_sink_round_trip_equals_memory_sink(tiled_server):
    root = tiled_server.client()
    _exercise(TiledSink(root, "raw-uid-1", "demo"))
    mem = MemorySink()
    _exercise(mem)
    stored = read_results(root, "raw-uid-1")["analyses"]["demo"]
    assert stored == mem.as_dict()
    assert stored["columns"]["x"] == [0.1, None]
    assert stored["summary"] == {"n": 2, "worst": None}
    box = root["derived"]["raw-uid-1"]["demo_arrays"]
    np.testing.assert_array_equal(box["strain"].read(), [[2e-3, np.nan], [4e-3, -2e-3]])
    assert box.metadata["angles_done"] == 2
    # a restarted writer gets the committed rows back
    again = TiledSink(root, "raw-uid-1", "demo").begin({}, COLUMNS)
    assert [r["seq_num"] for r in again] == [1, 2]
