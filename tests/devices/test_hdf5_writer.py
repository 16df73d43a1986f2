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
