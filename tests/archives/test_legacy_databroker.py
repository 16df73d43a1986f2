"""Legacy v1-style databroker code reads runs recorded into a real tiled server (#14, point 5).

Two runs go through the project's own session (TiledWriter, ``batch_size=1``) into a
``strainstream.server.TiledServer``: a frame series from the in-process detector (64 x 48
float32 frames in an HDF5 file, StreamResource/StreamDatum) and a scalar "cycler" run tagged
``experiment="operando_xrd"``. The documents the RunEngine emitted are the truth; the HDF5
file and the detector's frame source are the truth for pixels.
"""

from __future__ import annotations

import copy
import json
import os
import time
from urllib.parse import urlparse

import numpy as np
import pytest

# databroker.v1 needs databroker[back-compat] (strainstream[legacy]); CI installs it
BACK_COMPAT = ("humanize", "jinja2", "doct", "boltons")
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    import boltons  # noqa: F401  (a missing package is a failure in CI)
    import doct  # noqa: F401
    import humanize  # noqa: F401
    import jinja2  # noqa: F401
else:
    for _name in BACK_COMPAT:
        pytest.importorskip(
            _name, reason=f"{_name} missing: databroker's v1 layer needs pip install 'strainstream[legacy]'"
        )

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

FRAME_SHAPE = (64, 48)  # not square: a transposed frame cannot pass
N_FRAMES = 4
VOLTAGES = [3.70, 3.85, 4.05]
CAPACITIES = [0.0, 12.5, 25.0]


def _cycler_run(voltage, capacity):
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp

    @bpp.run_decorator(md={"experiment": "operando_xrd", "sample": "NMC811 coin cell", "cell_id": "C7"})
    def plan():
        for v, q in zip(VOLTAGES, CAPACITIES, strict=True):
            yield from bps.mv(voltage, v, capacity, q)
            yield from bps.trigger_and_read([voltage, capacity])

    return plan()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """The server (running for the module) and the documents of the two runs, by uid."""
    from ophyd import Signal

    from strainstream.datadir import detector_dir
    from strainstream.devices.detectors import sim_frame_detector
    from strainstream.plans.frames import frame_series
    from strainstream.server import TiledServer
    from strainstream.session import make_session

    data_dir = tmp_path_factory.mktemp("legacy") / "data"
    with TiledServer(data_dir) as server:
        session = make_session(server.uri, server.api_key, progress=False, spool_dir=data_dir / "spool")
        docs: list[tuple[str, dict]] = []
        session.RE.subscribe(lambda name, doc: docs.append((name, copy.deepcopy(doc))))
        det = sim_frame_detector("det", detector_dir(data_dir), frame_shape=FRAME_SHAPE)
        t0 = time.time()
        (frames_uid,) = session.RE(frame_series([det], num=N_FRAMES, md={"sample": "simulated powder rings"}))
        voltage = Signal(name="cell_voltage", value=0.0)
        capacity = Signal(name="cell_capacity", value=0.0)
        (cycler_uid,) = session.RE(_cycler_run(voltage, capacity))
        assert session.close(60), "documents did not reach tiled"
        by_run: dict[str, list[tuple[str, dict]]] = {frames_uid: [], cycler_uid: []}
        uid = None
        for name, doc in docs:
            uid = doc["uid"] if name == "start" else uid
            by_run[uid].append((name, doc))
        yield {"server": server, "frames": frames_uid, "cycler": cycler_uid, "docs": by_run,
               "t0": t0, "t1": time.time()}


@pytest.fixture(scope="module")
def db(recorded):
    from strainstream.legacy import broker

    return broker(recorded["server"].uri, api_key=recorded["server"].api_key)


def _docs(recorded, uid, name):
    return [d for n, d in recorded["docs"][uid] if n == name]


def _hdf5_frames(recorded) -> np.ndarray:
    import h5py

    (res,) = _docs(recorded, recorded["frames"], "stream_resource")
    with h5py.File(urlparse(res["uri"]).path, "r") as f:
        return f[res["parameters"]["dataset"]][()]


def test_broker_is_databrokers_v1_broker(db):
    import databroker
    from databroker.v1 import Broker

    assert databroker.Broker is Broker and isinstance(db, Broker)


def test_headers_by_uid_prefix_recency_and_scan_id(db, recorded):
    frames, cycler = recorded["frames"], recorded["cycler"]
    assert db[frames].uid == frames
    assert db[frames[:8]].uid == frames
    assert db[-1].uid == cycler and db[-2].uid == frames
    (start,) = _docs(recorded, cycler, "start")
    assert db[start["scan_id"]].uid == cycler
    assert [h.uid for h in db[[frames, -1]]] == [frames, cycler]
    with pytest.raises(KeyError):
        db["ffffffff"]


def test_start_and_stop_equal_what_was_recorded(db, recorded):
    uid = recorded["frames"]
    h = db[uid]
    (start,) = _docs(recorded, uid, "start")
    (stop,) = _docs(recorded, uid, "stop")
    assert h.start["uid"] == uid
    assert {k: h.start[k] for k in start} == json.loads(json.dumps(start))  # tuples -> lists
    assert h.start["experiment"] == "frame_series" and h.start["sample"] == "simulated powder rings"
    assert h.stop["exit_status"] == "success" and h.stop["num_events"] == {"primary": N_FRAMES}
    assert h.stop["uid"] == stop["uid"]
    assert h.stream_names == ["primary"] and h.fields() == {"det_frame_count", "det_image"}
    assert h.devices() == {"det"}
    assert h.config_data("det")["primary"][0]["det_exposure_s"] == 0.1


def test_scalar_table_equals_the_events(db, recorded):
    uid = recorded["cycler"]
    events = _docs(recorded, uid, "event")
    table = db[uid].table()
    assert list(table.index) == [1, 2, 3] and table.index.name == "seq_num"
    assert set(table.columns) == {"cell_voltage", "cell_capacity", "time"}
    assert table["cell_voltage"].tolist() == VOLTAGES
    assert table["cell_capacity"].tolist() == CAPACITIES
    raw = db[uid].table(convert_times=False, localize_times=False)
    np.testing.assert_allclose(raw["time"], [e["time"] for e in events], rtol=0, atol=1e-6)
    assert str(table["time"].dtype).startswith("datetime64")


def test_frame_table_without_fill_has_no_frames(db, recorded):
    uid = recorded["frames"]
    table = db[uid].table()
    assert len(table) == N_FRAMES == len(_docs(recorded, uid, "event"))
    assert set(table.columns) == {"det_frame_count", "time"}
    assert table["det_frame_count"].tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="externally stored"):
        db[uid].table(fields=["det_image"])


def test_filled_table_and_data_give_the_hdf5_frames(db, recorded):
    from strainstream.devices.detectors import powder_ring_source

    stored = _hdf5_frames(recorded)
    truth = powder_ring_source(FRAME_SHAPE)
    assert stored.shape == (N_FRAMES, *FRAME_SHAPE)
    h = db[recorded["frames"]]
    filled = h.table(fill=True)
    assert set(filled.columns) == {"det_frame_count", "det_image", "time"}
    for seq_num, frame in filled["det_image"].items():
        assert frame.shape == FRAME_SHAPE and frame.dtype == np.float32
        np.testing.assert_array_equal(frame, stored[seq_num - 1])
        np.testing.assert_array_equal(frame, truth(seq_num - 1))
    for i, frame in enumerate(h.data("det_image")):
        np.testing.assert_array_equal(frame, stored[i])


def test_get_images_reads_frames_lazily(db, recorded):
    stored = _hdf5_frames(recorded)
    h = db[recorded["frames"]]
    images = db.get_images(h, "det_image")
    assert len(images) == N_FRAMES
    assert images.frame_shape == FRAME_SHAPE and images.pixel_type == np.float32
    np.testing.assert_array_equal(images[2], stored[2])
    np.testing.assert_array_equal(images[-1], stored[-1])
    np.testing.assert_array_equal(np.stack(list(images)), stored)
    np.testing.assert_array_equal(np.stack(images[1:3]), stored[1:3])
    both = db.get_images([h, h], "det_image")
    assert len(both) == 2 * N_FRAMES
    np.testing.assert_array_equal(both[N_FRAMES + 1], stored[1])
    with pytest.raises(IndexError):
        images[N_FRAMES]
    with pytest.raises(KeyError, match="no data key 'image'.*det_image"):
        db.get_images(h, "image")


def test_search_by_metadata_text_and_time(db, recorded):
    frames, cycler = recorded["frames"], recorded["cycler"]
    assert [h.uid for h in db(experiment="operando_xrd")] == [cycler]
    assert [h.uid for h in db(experiment="frame_series")] == [frames]
    assert [h.uid for h in db(cell_id="C7", sample="NMC811 coin cell")] == [cycler]
    assert [h.uid for h in db(experiment="sxdm")] == []
    assert [h.uid for h in db("NMC811")] == [cycler]
    assert [h.uid for h in db(since=recorded["t0"] - 1, until=recorded["t1"] + 1)] == [frames, cycler]
    assert [h.uid for h in db(since=recorded["t1"] + 1)] == []
    (h,) = db(experiment="operando_xrd")
    assert h.table()["cell_voltage"].tolist() == VOLTAGES


def test_documents_replay_the_run(db, recorded):
    uid = recorded["frames"]
    names = [name for name, _ in db[uid].documents()]
    assert names[0] == "start" and names[-1] == "stop" and names[1] == "descriptor"
    assert names.count("event") == N_FRAMES
    assert names.count("stream_resource") == 1 and "stream_datum" in names
    got = [d for name, d in db[uid].documents() if name == "event"]
    want = _docs(recorded, uid, "event")
    assert [e["seq_num"] for e in got] == [e["seq_num"] for e in want]
    assert [e["data"]["det_frame_count"] for e in got] == [e["data"]["det_frame_count"] for e in want]
    assert [e["time"] for e in got] == pytest.approx([e["time"] for e in want], abs=1e-6)
    events = list(db[recorded["cycler"]].events())
    assert [e["data"]["cell_voltage"] for e in events] == VOLTAGES


def test_plain_broker_on_the_root_needs_the_adapter(recorded):
    """Why strainstream.legacy exists: the catalog root has no CatalogOfBlueskyRuns spec.

    If this fails, the server now declares the spec: update strainstream.legacy's docstring.
    """
    from databroker import Broker

    from strainstream.legacy import _private

    server = recorded["server"]
    root = server.client()  # the user's plain client, with a registry of its own: databroker
    # switches the registry it is given to v2 run clients (see the next test)
    plain = Broker(type(root)(root.context, item=root.item,
                              structure_clients=_private(root.structure_clients)))
    assert plain[recorded["frames"]].start["uid"] == recorded["frames"]  # full uid: fine
    with pytest.raises(TypeError):
        plain[-1]
    with pytest.raises(AttributeError, match="v1"):
        list(plain(experiment="operando_xrd"))


def test_using_the_broker_leaves_other_clients_of_the_process_alone(db, recorded):
    """databroker's v1 layer switches run clients to v2 through bluesky-tiled-plugins' ``.v2``
    (a shallow copy of the client registry): strainstream.legacy keeps that switch private."""
    from bluesky_tiled_plugins.clients.bluesky_run import BlueskyRunV3

    header = db[recorded["frames"]]
    header.table()
    list(header.documents())
    run = recorded["server"].client()[recorded["frames"]]
    assert type(run) is BlueskyRunV3 and "primary" in list(run)
