"""TiledWriter's format: rows <-> events and frame references resolved from the data source.

A run is written with bluesky-tiled-plugins' TiledWriter into an in-process tiled catalog.
Its detector file holds frames of an earlier series before this run's (the StreamResource
names the dataset with ``slice: "4:"``) and only every other event carries a frame, so
``seq_num - 1`` names the wrong frame (or none) for every event.
"""

from __future__ import annotations

import dataclasses
import time
import uuid

import h5py
import numpy as np
import pytest

pytest.importorskip("tiled")

from bluesky_tiled_plugins import TiledWriter  # noqa: E402
from bluesky_tiled_plugins.writing.consolidators import CONSOLIDATOR_REGISTRY, HDF5Consolidator  # noqa: E402

from strainstream.callbacks.base import FrameResolver  # noqa: E402
from strainstream.callbacks.tiled_format import (  # noqa: E402
    DATUM_RANGES,
    ExternalFrames,
    events_from_rows,
    install_consolidators,
    row_from_event,
    rows_of,
    stored_seq_nums,
    stream_container,
)
from strainstream.replay import frame_fallback  # noqa: E402

# tiled's in-process client uses starlette's test client
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

SHAPE = (4, 3)
DATASET = "/entry/data/data"
FIRST = 4  # frames 0..3 of the file belong to an earlier series


@pytest.fixture
def catalog(tmp_path):
    from tiled.catalog import from_uri
    from tiled.client import Context, from_context
    from tiled.server.app import build_app

    (tmp_path / "data").mkdir()
    (tmp_path / "det").mkdir()
    cat = from_uri(f"sqlite:///{tmp_path}/catalog.db", init_if_not_exists=True,
                   writable_storage=[str(tmp_path / "data"), f"duckdb:///{tmp_path}/tables.duckdb"],
                   readable_storage=[str(tmp_path / "det")])
    return from_context(Context.from_app(build_app(cat))), tmp_path / "det"


def _frames(n: int) -> np.ndarray:
    return np.arange(n * SHAPE[0] * SHAPE[1], dtype="float32").reshape(n, *SHAPE)


def _write_run(client, path, *, n_events: int, framed, frame_of) -> str:
    """Write a run: events 1..n_events, a frame (StreamDatum index ``frame_of(seq)``) for
    the events where ``framed(seq)``."""
    with h5py.File(path, "w") as f:
        f[DATASET] = _frames(FIRST + n_events)
    writer = TiledWriter(client, batch_size=1)
    start = {"uid": str(uuid.uuid4()), "time": time.time()}
    writer("start", start)
    desc = {"uid": str(uuid.uuid4()), "run_start": start["uid"], "name": "primary", "time": time.time(),
            "data_keys": {"x": {"source": "sim", "shape": [], "dtype": "number"},
                          "det_image": {"source": "sim", "shape": list(SHAPE), "dtype": "array",
                                        "dtype_numpy": "<f4", "external": "STREAM:"}},
            "object_keys": {"det": ["det_image"]}, "configuration": {}, "hints": {}}
    writer("descriptor", desc)
    sres = {"uid": str(uuid.uuid4()), "run_start": start["uid"], "data_key": "det_image",
            "mimetype": "application/x-hdf5", "uri": f"file://localhost{path}",
            "parameters": {"dataset": DATASET, "chunk_shape": [1, *SHAPE], "slice": f"{FIRST}:",
                           "locking": False}}  # h5py here and tiled in one process
    writer("stream_resource", sres)
    for seq in range(1, n_events + 1):
        if framed(seq):
            i = frame_of(seq)
            writer("stream_datum", {"uid": str(uuid.uuid4()), "stream_resource": sres["uid"],
                                    "descriptor": desc["uid"], "indices": {"start": i, "stop": i + 1},
                                    "seq_nums": {"start": seq, "stop": seq + 1}})
        writer("event", {"uid": str(uuid.uuid4()), "descriptor": desc["uid"], "seq_num": seq,
                         "time": time.time(), "data": {"x": float(seq)}, "timestamps": {"x": 1.5 * seq},
                         "filled": {}})
    writer("stop", {"uid": str(uuid.uuid4()), "run_start": start["uid"], "time": time.time(),
                    "exit_status": "success"})
    return start["uid"]


def test_frames_resolve_from_recorded_datums_not_seq_num(catalog, monkeypatch):
    """Frames start at index 3 of the file and only even events carry one: every frame
    reference (file index, tiled index, h5py read, HTTP read, replay fallback, the
    StreamDatum given to the callbacks) names the frame the detector's StreamDatum named."""
    client, det = catalog
    monkeypatch.setitem(CONSOLIDATOR_REGISTRY, "application/x-hdf5", HDF5Consolidator)
    install_consolidators()
    assert CONSOLIDATOR_REGISTRY["application/x-hdf5"] is not HDF5Consolidator
    path = det / "offset.h5"
    uid = _write_run(client, path, n_events=6, framed=lambda s: s % 2 == 0,
                     frame_of=lambda s: FIRST + s // 2 - 1)
    truth = _frames(FIRST + 6)
    stream = stream_container(client[uid].base, "primary")
    node = stream["det_image"]
    assert node.data_sources()[0].properties[DATUM_RANGES]  # the data source carries its datums

    frames = ExternalFrames(node, "det_image")
    assert frames.recorded
    for seq in (1, 3, 5):
        assert frames.ref(seq) is None, f"event {seq} has no frame"
    for k, seq in enumerate((2, 4, 6)):
        ref = frames.ref(seq)
        assert (ref.index, ref.node_index) == (FIRST + k, k)
        assert seq - 1 != ref.index  # what the old code assumed
        np.testing.assert_array_equal(frames.read(seq), truth[FIRST + k])       # h5py
        np.testing.assert_array_equal(frames.read_http(seq), truth[FIRST + k])  # tiled

    # replay's HTTP fallback and the documents the live source emits
    fallback = frame_fallback(client[uid])
    np.testing.assert_array_equal(fallback("det_image", 4), truth[FIRST + 1])
    resolver = FrameResolver()
    resolver.stream_resource(frames.stream_resource("sr", uid))
    for seq in (2, 4, 6):
        resolver.stream_datum(frames.stream_datum(frames.ref(seq), f"sd{seq}", "sr", "d"))
    assert not resolver.available("det_image", 3)
    np.testing.assert_array_equal(resolver.read("det_image", 6), truth[FIRST + 2])
    frames.close()
    resolver.close()


def test_frames_of_an_archive_resolve_from_structure_and_slice(catalog, monkeypatch):
    """A run written by a plain TiledWriter (no datum record): rows of the array are the
    stream's events in order, frame ``start + row`` of the file by the data source's slice."""
    client, det = catalog
    monkeypatch.setitem(CONSOLIDATOR_REGISTRY, "application/x-hdf5", HDF5Consolidator)
    uid = _write_run(client, det / "plain.h5", n_events=4, framed=lambda s: True,
                     frame_of=lambda s: FIRST + s - 1)
    truth = _frames(FIRST + 4)
    stream = stream_container(client[uid].base, "primary")
    assert stored_seq_nums(stream)() == [1, 2, 3, 4]
    frames = ExternalFrames(stream["det_image"], "det_image", seq_nums=stored_seq_nums(stream))
    assert not frames.recorded
    for seq in range(1, 5):
        ref = frames.ref(seq)
        assert (ref.index, ref.node_index) == (FIRST + seq - 1, seq - 1)
        np.testing.assert_array_equal(frames.read(seq), truth[FIRST + seq - 1])
        np.testing.assert_array_equal(frames.read_http(seq), truth[FIRST + seq - 1])
    assert frames.ref(5) is None
    frames.close()


def test_rows_and_events_round_trip(catalog, monkeypatch):
    client, det = catalog
    monkeypatch.setitem(CONSOLIDATOR_REGISTRY, "application/x-hdf5", HDF5Consolidator)
    uid = _write_run(client, det / "rows.h5", n_events=3, framed=lambda s: True, frame_of=lambda s: s - 1)
    rows = rows_of(stream_container(client[uid].base, "primary")["internal"].read())
    events = events_from_rows(reversed(rows), "desc")
    assert [e["seq_num"] for e in events] == [1, 2, 3]
    assert events[1]["data"] == {"x": 2.0} and events[1]["timestamps"] == {"x": 3.0}
    assert all(isinstance(e["seq_num"], int) for e in events)
    back = row_from_event(events[1])
    assert back == {"seq_num": 2, "time": events[1]["time"], "x": 2.0, "ts_x": 3.0}


def test_an_event_page_is_one_table_write_with_the_rows_of_its_events(catalog, monkeypatch):
    """A fly scan's line (one event page of N rows, its frames in one StreamDatum range) is
    written in one table append, with exactly the rows the row-by-row path writes."""
    from bluesky_tiled_plugins.writing import tiled_writer as tw
    from event_model import pack_event_page

    client, det = catalog
    install_consolidators()
    appends = []
    original = tw._RunWriter._write_internal_data
    monkeypatch.setattr(tw._RunWriter, "_write_internal_data",
                        lambda self, cache, desc_node: (appends.append(len(cache)),
                                                        original(self, cache, desc_node=desc_node)))
    n_lines, per_line = 3, 4
    path = det / "fly.h5"
    with h5py.File(path, "w") as f:
        f[DATASET] = _frames(n_lines * per_line)

    def write(paged: bool) -> list[dict]:
        writer = TiledWriter(client, batch_size=1)
        start = {"uid": str(uuid.uuid4()), "time": time.time()}
        writer("start", start)
        desc = {"uid": str(uuid.uuid4()), "run_start": start["uid"], "name": "primary", "time": 1.0,
                "data_keys": {"x": {"source": "fly", "shape": [], "dtype": "number"},
                              "ix": {"source": "fly", "shape": [], "dtype": "integer"},
                              "det_image": {"source": "sim", "shape": list(SHAPE), "dtype": "array",
                                            "dtype_numpy": "<f4", "external": "STREAM:"}},
                "object_keys": {"fly": ["x", "ix", "det_image"]}, "configuration": {}, "hints": {}}
        writer("descriptor", desc)
        sres = {"uid": str(uuid.uuid4()), "run_start": start["uid"], "data_key": "det_image",
                "mimetype": "application/x-hdf5", "uri": f"file://localhost{path}",
                "parameters": {"dataset": DATASET, "chunk_shape": [1, *SHAPE], "locking": False}}
        writer("stream_resource", sres)
        for line in range(n_lines):
            first = line * per_line
            writer("stream_datum", {"uid": str(uuid.uuid4()), "stream_resource": sres["uid"],
                                    "descriptor": desc["uid"],
                                    "indices": {"start": first, "stop": first + per_line},
                                    "seq_nums": {"start": first + 1, "stop": first + per_line + 1}})
            events = [{"uid": f"{line}-{k}", "descriptor": desc["uid"], "seq_num": first + k + 1,
                       "time": 100.0 + first + k, "data": {"x": 0.05 * k, "ix": k},
                       "timestamps": {"x": 7.0, "ix": 7.0}, "filled": {}} for k in range(per_line)]
            if paged:
                writer("event_page", pack_event_page(*events))
            else:
                for ev in events:
                    writer("event", ev)
        writer("stop", {"uid": str(uuid.uuid4()), "run_start": start["uid"], "time": time.time(),
                        "exit_status": "success"})
        run = client[start["uid"]].base
        frames = stream_container(run, "primary")["det_image"].read()
        np.testing.assert_array_equal(frames, _frames(n_lines * per_line))
        return rows_of(stream_container(run, "primary")["internal"].read())

    by_row = write(paged=False)
    assert appends == [1] * (n_lines * per_line)
    appends.clear()
    by_page = write(paged=True)
    assert appends == [per_line] * n_lines
    assert by_page == by_row


def test_a_new_node_is_registered_with_its_first_frame_and_offered_sources_resolve(catalog, monkeypatch):
    """The installed writer registers a detector node with its first StreamDatum's frame in
    one request (no empty node then a data-source update), and frame references take a later
    data source as a websocket ``array-ref`` update carries it (tiled's stream-message model)
    without asking the server."""
    from tiled.stream_messages import DataSource as MessageDataSource

    client, det = catalog
    monkeypatch.setitem(CONSOLIDATOR_REGISTRY, "application/x-hdf5", HDF5Consolidator)
    install_consolidators()
    requests: list[str] = []
    original = type(client.context.http_client).send

    def send(self, request, *args, **kwargs):
        requests.append(f"{request.method} {request.url.path}")
        return original(self, request, *args, **kwargs)

    monkeypatch.setattr(type(client.context.http_client), "send", send)
    uid = _write_run(client, det / "first.h5", n_events=4, framed=lambda s: True,
                     frame_of=lambda s: FIRST + s - 1)
    registered = [r for r in requests if "/register/" in r]
    updates = [r for r in requests if r.startswith("PUT") and "/data_source/" in r]
    assert len(registered) == 1 and len(updates) == 3, "events 2-4 update it; event 1 registers it"
    monkeypatch.undo()
    truth = _frames(FIRST + 4)
    node = stream_container(client[uid].base, "primary")["det_image"]
    source = node.data_sources()[0]
    assert source.properties[DATUM_RANGES] == [[1, 5, FIRST, FIRST + 4, 0, 0]]  # node rows from 0

    frames = ExternalFrames(node, "det_image")
    frames._ranges = []  # as if made before the run's frames were written
    assert frames.ref(3) is None
    frames.offer(MessageDataSource.model_validate(source.model_dump() if hasattr(source, "model_dump")
                                                  else dataclasses.asdict(source)))
    monkeypatch.setattr(frames.node, "refresh", lambda: pytest.fail("asked the server"))
    for seq in range(1, 5):
        ref = frames.ref(seq)
        assert (ref.index, ref.node_index) == (FIRST + seq - 1, seq - 1)
        np.testing.assert_array_equal(frames.read(seq), truth[FIRST + seq - 1])
    frames.close()
