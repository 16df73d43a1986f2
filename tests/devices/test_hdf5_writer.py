import h5py
import numpy as np
import pytest

from strainstream.callbacks.base import FrameResolver
from strainstream.devices._hdf5 import DATASET, H5FrameWriter


def test_frames_readable_while_file_is_written_in_the_same_process(tmp_path):
    w = H5FrameWriter(tmp_path / "d.h5", (4, 5), "float32")
    resolver = FrameResolver()
    resolver.stream_resource({"uid": "r", "data_key": "img", "uri": w.uri, "parameters": {"dataset": DATASET}})
    for i in range(3):
        w.append(np.full((4, 5), i, np.float32))
        resolver.stream_datum({"stream_resource": "r", "seq_nums": {"start": i + 1, "stop": i + 2},
                               "indices": {"start": i, "stop": i + 1}})
        assert resolver.read("img", i + 1).tolist() == np.full((4, 5), i).tolist()
    w.close()
    resolver.close()
    with h5py.File(tmp_path / "d.h5", "r") as f:
        assert f[DATASET].shape == (3, 4, 5)


def test_writer_refuses_to_overwrite_and_wrong_shapes(tmp_path):
    with H5FrameWriter(tmp_path / "d.h5", (4, 5)) as w:
        with pytest.raises(ValueError, match="does not match"):
            w.append(np.zeros((5, 4)))
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        H5FrameWriter(tmp_path / "d.h5", (4, 5))


def test_resolver_falls_back_when_the_file_is_not_here():
    calls = []

    def fallback(key, seq):
        calls.append((key, seq))
        return np.ones((2, 2))

    resolver = FrameResolver(fallback=fallback)
    resolver.stream_resource({"uid": "r", "data_key": "img", "uri": "file://localhost/nowhere/x.h5",
                              "parameters": {"dataset": DATASET}})
    resolver.stream_datum({"stream_resource": "r", "seq_nums": {"start": 1, "stop": 4},
                           "indices": {"start": 10, "stop": 13}})
    assert resolver.locate("img", 3)[1] == 12
    assert resolver.read("img", 3).sum() == 4
    assert calls == [("img", 3)]
    resolver.fallback = None
    with pytest.raises(LookupError, match="not readable here"):
        resolver.read("img", 2)
