"""The RunEngine's tiled writer writes what it finds queued together: runs of events as one
event page, their StreamDatums as one range per resource (``session.coalesce``)."""

from __future__ import annotations

import copy
import json
import threading

import numpy as np
import pytest

from strainstream.session import BufferedWriter, coalesce


def _sd(i: int, res: str = "sr1", desc: str = "d1", index: int | None = None) -> dict:
    index = i - 1 if index is None else index
    return {"uid": f"{res}/{i}", "stream_resource": res, "descriptor": desc,
            "seq_nums": {"start": i, "stop": i + 1}, "indices": {"start": index, "stop": index + 1}}


def _ev(i: int, desc: str = "d1") -> dict:
    return {"uid": f"e{i}", "descriptor": desc, "seq_num": i, "time": 100.0 + i,
            "data": {"x": float(i)}, "timestamps": {"x": 100.0 + i}, "filled": {}}


def _items(docs):
    return [(name, doc, "r1", k) for k, (name, doc) in enumerate(docs)]


def test_runs_of_events_become_one_page_after_one_stream_datum_range_per_resource():
    docs = [("start", {"uid": "r1"}), ("descriptor", {"uid": "d1", "run_start": "r1"}),
            ("stream_resource", {"uid": "sr1"}), ("stream_resource", {"uid": "sr2"})]
    for i in range(1, 5):
        docs += [("stream_datum", _sd(i)), ("stream_datum", _sd(i, "sr2", index=10 + i)), ("event", _ev(i))]
    docs.append(("stop", {"uid": "s1", "run_start": "r1"}))
    before = copy.deepcopy(docs)
    out = coalesce(_items(docs))
    assert docs == before, "the queued documents (also the spool's and the RunEngine's) are not changed"
    assert [o[0] for o in out] == ["start", "descriptor", "stream_resource", "stream_resource",
                                   "stream_datum", "stream_datum", "event_page", "stop"]
    sd1, sd2, page = out[4][1], out[5][1], out[6][1]
    assert (sd1["stream_resource"], sd1["seq_nums"], sd1["indices"]) == ("sr1", {"start": 1, "stop": 5},
                                                                         {"start": 0, "stop": 4})
    assert (sd2["stream_resource"], sd2["seq_nums"], sd2["indices"]) == ("sr2", {"start": 1, "stop": 5},
                                                                         {"start": 11, "stop": 15})
    assert page["seq_num"] == [1, 2, 3, 4] and page["data"]["x"] == [1.0, 2.0, 3.0, 4.0]
    assert page["time"] == [101.0, 102.0, 103.0, 104.0] and page["descriptor"] == "d1"
    # every spool index is accounted for once, with the document that carried it
    assert out[4][3] == [4, 7, 10, 13] and out[5][3] == [5, 8, 11, 14] and out[6][3] == [6, 9, 12, 15]
    assert sorted(i for o in out for i in o[3]) == list(range(len(docs)))


def test_a_gap_in_the_frame_indices_or_another_stream_starts_a_new_page():
    docs = [("stream_datum", _sd(1)), ("event", _ev(1)), ("stream_datum", _sd(2)), ("event", _ev(2)),
            ("stream_datum", _sd(3, index=7)), ("event", _ev(3)),  # the file's index jumped
            ("event", _ev(1, desc="d2")),  # another stream
            ("stream_datum", _sd(4, index=8)), ("event", _ev(4))]
    out = coalesce(_items(docs))
    assert [(o[0], o[3]) for o in out] == [
        ("stream_datum", [0, 2]), ("event_page", [1, 3]),
        ("stream_datum", [4]), ("event", [5]),
        ("event", [6]),
        ("stream_datum", [7]), ("event", [8]),
    ]
    assert out[0][1]["indices"] == {"start": 0, "stop": 2} and out[2][1]["indices"] == {"start": 7, "stop": 8}
    # one queued event alone is written as the event it is
    assert coalesce(_items([("event", _ev(5))])) == [("event", _ev(5), "r1", [0])]


def test_queued_events_are_written_as_pages_and_a_refused_page_fails_each_of_its_documents(tmp_path):
    gate, entered = threading.Event(), threading.Event()
    written: list[tuple[str, object]] = []

    def writer(name, doc):
        entered.set()
        gate.wait(10)
        if name == "event_page" and 13 in doc["seq_num"]:
            raise ValueError("refused")
        written.append((name, doc.get("seq_num")))

    said: list[str] = []
    w = BufferedWriter(writer, spool_dir=tmp_path, drain_timeout_s=0.2, max_lag=100, say=said.append)
    w("start", {"uid": "r1", "time": 0})
    assert entered.wait(10)  # the writer thread took the start alone and waits at the gate:
    # what follows is queued together (else its first batch could end mid-stream)
    w("descriptor", {"uid": "d1", "run_start": "r1", "name": "primary"})
    for i in range(1, 6):
        w("event", _ev(i))
    w("descriptor", {"uid": "d2", "run_start": "r1", "name": "other"})
    for i in range(11, 15):
        w("event", _ev(i, desc="d2"))
    gate.set()
    assert w.wait_drained(10)
    assert written == [("start", None), ("descriptor", None), ("event_page", [1, 2, 3, 4, 5]),
                       ("descriptor", None)]
    assert [(f[1], f[2]) for f in w.failed] == [("event_page", k) for k in range(8, 12)]
    assert any("refused the event_page document #8 of run r1" in m for m in said), said
    sent = {int(x) for x in (tmp_path / "r1.sent").read_text().split()}
    assert sent == set(range(8)), "documents of the refused page stay unsent in the spool"
    lines = [json.loads(x) for x in (tmp_path / "r1.jsonl").read_text().splitlines()]
    assert [x["name"] for x in lines].count("event") == 9, "the spool keeps the events themselves"
    assert w.close(1)


def test_max_coalesce_one_writes_every_document_alone():
    gate = threading.Event()
    written = []
    w = BufferedWriter(lambda name, doc: (gate.wait(10), written.append(name)), max_lag=100,
                       say=lambda m: None, max_coalesce=1)
    for i in range(1, 5):
        w("event", _ev(i))
    gate.set()
    assert w.wait_drained(10) and written == ["event"] * 4 and w.close(1)


def test_coalesced_pages_reach_tiled_like_single_events(tiled_server, tmp_path):
    """The RunEngine emits faster than the (held) writer: every row, frame reference and frame
    is in tiled as a one-document-per-request writer would store it."""
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter

    from strainstream.callbacks.tiled_format import install_consolidators
    from strainstream.datadir import detector_dir
    from strainstream.devices.detectors import sim_frame_detector
    from strainstream.plans.frames import frame_series

    install_consolidators()
    server = tiled_server
    tiled_writer = TiledWriter(server.client(), batch_size=1)
    names: list[str] = []
    hold = threading.Event()

    def held_writer(name, doc):
        if name == "event":
            hold.wait(30)  # the first event waits: what follows queues behind it
        names.append(name)
        tiled_writer(name, doc)

    writer = BufferedWriter(held_writer, max_lag=100, say=lambda m: None)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(writer)
    n = 12
    rng = np.random.default_rng(3)
    frames = [rng.poisson(50, size=(24, 20)).astype(np.float32) for _ in range(n)]
    det = sim_frame_detector("det", detector_dir(server.data_dir), frame_source=lambda i: frames[i],
                             frame_shape=(24, 20))
    threading.Timer(1.0, hold.set).start()
    (uid,) = RE(frame_series([det], num=n))
    assert writer.close(60)
    assert names.count("event_page") >= 1 and names.count("event") + names.count("event_page") < n, names
    run = server.client()[uid]
    table = run.base["primary"].base["internal"].read()
    assert sorted(table["seq_num"].tolist()) == list(range(1, n + 1))
    image = run["primary"]["det_image"]
    assert image.shape == (n, 24, 20)
    np.testing.assert_array_equal(image.read(), np.stack(frames))
    assert run.metadata["stop"]["num_events"]["primary"] == n


def _line(k: int, n: int = 3) -> list[tuple[str, dict]]:
    """Fly line ``k`` (0-based) of ``n`` frames as FlyLine.collect emits it."""
    import event_model

    first = k * n + 1
    datum = {"uid": f"sr1/{k}", "stream_resource": "sr1", "descriptor": "d1",
             "seq_nums": {"start": first, "stop": first + n}, "indices": {"start": k * n, "stop": (k + 1) * n}}
    return [("stream_datum", datum),
            ("event_page", event_model.pack_event_page(*[_ev(first + i) for i in range(n)]))]


def test_queued_fly_lines_become_one_stream_datum_range_and_one_page():
    """A fly scan's lines (a StreamDatum and an event page each) queued together are written
    as one line: the ranges joined, the pages' rows in order; one queued line (or page)
    goes as it came; a page and single events of one stream merge too."""
    docs = _line(0) + _line(1) + _line(2)
    before = copy.deepcopy(docs)
    out = coalesce(_items(docs))
    assert docs == before
    assert [(o[0], o[3]) for o in out] == [("stream_datum", [0, 2, 4]), ("event_page", [1, 3, 5])]
    sd, page = out[0][1], out[1][1]
    assert sd["seq_nums"] == {"start": 1, "stop": 10} and sd["indices"] == {"start": 0, "stop": 9}
    assert page["seq_num"] == list(range(1, 10)) and page["data"]["x"] == [float(i) for i in range(1, 10)]
    assert page["time"] == [100.0 + i for i in range(1, 10)] and page["descriptor"] == "d1"

    one = _line(4)
    assert coalesce(_items(one)) == [(name, doc, "r1", [k]) for k, (name, doc) in enumerate(one)]

    mixed = coalesce(_items([_line(0)[1], ("event", _ev(4)), ("event", _ev(5))]))
    assert [(o[0], o[3]) for o in mixed] == [("event_page", [0, 1, 2])]
    assert mixed[0][1]["seq_num"] == [1, 2, 3, 4, 5]

    gap = _line(0) + _line(2)  # frames 3..5 missing from the file: two lines, two ranges
    assert [(o[0], o[3]) for o in coalesce(_items(gap))] == [
        ("stream_datum", [0]), ("event_page", [1]), ("stream_datum", [2]), ("event_page", [3])]


@pytest.mark.parametrize("bad", ["seq_nums", "indices"])
def test_stream_datums_are_merged_only_when_contiguous(bad):
    second = _sd(2)
    second[bad] = {"start": second[bad]["start"] + 1, "stop": second[bad]["stop"] + 1}
    out = coalesce(_items([("stream_datum", _sd(1)), ("event", _ev(1)), ("stream_datum", second),
                           ("event", _ev(2))]))
    assert [o[0] for o in out] == ["stream_datum", "event", "stream_datum", "event"]


def test_documents_that_cannot_be_paged_are_written_one_by_one():
    """Events without the keys of an event page (not from a RunEngine) are not lost."""
    gate = threading.Event()
    written = []
    w = BufferedWriter(lambda name, doc: (gate.wait(10), written.append((name, doc["seq_num"]))), max_lag=100,
                       say=lambda m: None)
    for i in range(4):
        w("event", {"descriptor": "d", "seq_num": i})
    gate.set()
    assert w.wait_drained(10) and written == [("event", i) for i in range(4)] and w.close(1)
