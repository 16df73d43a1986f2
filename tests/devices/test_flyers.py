"""FlyLine (devices.flyers) with stand-in detector and motor: the documents of a line and
its failure modes, without an IOC."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from ophyd.status import Status
from ophyd.utils import WaitTimeoutError

from strainstream.devices.flyers import FlyLine, FlyLineError


class _Sig:
    SUB_META = "meta"

    def __init__(self, value, pvname="X"):
        self.value, self.pvname = value, pvname
        self.subs: dict[int, tuple] = {}

    def get(self, **kwargs):
        return self.value

    def subscribe(self, cb, event_type=None, run=True):
        cid = len(self.subs) + 1
        self.subs[cid] = (event_type, cb)
        return cid

    def unsubscribe(self, cid):
        self.subs.pop(cid, None)

    def update(self, value):
        self.value = value
        for event_type, cb in list(self.subs.values()):
            if event_type is None:
                cb(value=value)

    def disconnect(self):
        for event_type, cb in list(self.subs.values()):
            if event_type == self.SUB_META:
                cb(connected=False)


class _Acquire(_Sig):
    def __init__(self, det):
        super().__init__(0, "SS:SXDM:cam1:Acquire")
        self.det = det

    def put(self, value, use_complete=False, callback=None):
        self.det.cam.detector_state.value = "Acquire"

        def take():  # the series: frames written, then the put completes
            if self.det.dies_after is not None:  # the IOC dies mid-line
                self.det.hdf1.num_captured.update(self.det.hdf1.num_captured.value + self.det.dies_after)
                self.disconnect()
                return
            self.det.hdf1.num_captured.update(self.det.hdf1.num_captured.value + self.det.frames_per_put)
            callback()

        threading.Thread(target=take).start()


class _Det:
    name, prefix, image_key, dtype = "sxdm", "SS:SXDM:", "sxdm_image", np.dtype("uint32")
    ioc_name, ioc_address = "endstation", None
    acquire_timeout_s = 5.0

    def __init__(self, frames_per_put, dies_after=None):
        self.frames_per_put, self.dies_after = frames_per_put, dies_after
        self._series_path = "/data/sxdm_000000.h5"
        self.hdf1 = type("H", (), {})()
        self.hdf1.num_captured = _Sig(0)
        self.cam = type("C", (), {})()
        self.cam.detector_state = _Sig("Idle")
        self.cam.acquire = _Acquire(self)
        self.cam.array_size = type("A", (), {})()
        self.cam.array_size.array_size_y, self.cam.array_size.array_size_x = _Sig(8), _Sig(6)

    def _check_series(self):
        pass

    def collect_asset_docs(self):
        return iter(())

    def _write_message(self):
        return ""

    def ioc_error(self, exc):
        return exc


class _Motor:
    name = "es_sample_x"

    def __init__(self, ends=True):
        self.ends = ends

    def set(self, value):
        st = Status()
        if self.ends:  # (a motor whose IOC died never ends its move)
            threading.Thread(target=st.set_finished).start()  # ends with the frames' thread
        return st


def _line(fly, n, k):
    fly.prepare(stop=1.0, n=n, rows={"ix": list(range(n)), "x": [0.05 * i for i in range(n)]})
    fly.kickoff().wait(5)
    fly.complete().wait(5)
    docs = list(fly.collect_asset_docs())
    pages = list(fly.collect_pages())
    return docs, pages


def test_each_line_is_collected_once_with_its_frame_range():
    """The detector's and the motor's completions race (two threads): the line is still
    checked and collected exactly once (it was collected twice now and then: an extra
    StreamDatum past the file's end)."""
    n = 5
    fly = FlyLine(_Det(n), _Motor(), {"ix": "integer", "x": "number"}, name="sxdm_fly")
    keys = fly.describe_collect()
    assert keys["sxdm_image"]["external"] == "STREAM:" and keys["sxdm_image"]["shape"] == [8, 6]
    assert keys["ix"]["dtype"] == "integer"
    for k in range(40):
        docs, pages = _line(fly, n, k)
        names = [name for name, _ in docs]
        assert names == (["stream_resource"] if k == 0 else []) + ["stream_datum"]
        assert docs[-1][1]["indices"] == {"start": k * n, "stop": (k + 1) * n}
        assert len(pages) == 1 and pages[0]["data"]["ix"] == list(range(n))


def test_a_line_whose_frames_did_not_all_reach_the_file_fails_named():
    fly = FlyLine(_Det(3), _Motor(), {"ix": "integer"}, name="sxdm_fly")
    fly.prepare(stop=1.0, n=5, rows={"ix": list(range(5))})
    fly.kickoff().wait(5)
    with pytest.raises(FlyLineError, match=r"sxdm: the line wrote 3 of its 5 frames to /data/sxdm_000000.h5"):
        fly.complete().wait(5)
    # the 3 frames in the file stay recorded, with the first 3 rows of the line
    (sr, sd) = list(fly.collect_asset_docs())
    assert sd[1]["indices"] == {"start": 0, "stop": 3}
    assert [p["data"]["ix"] for p in fly.collect_pages()] == [[0, 1, 2]]


def test_an_ioc_that_dies_mid_line_fails_it_named_and_keeps_the_frames_written():
    """The detector IOC dies after writing 4 of 10 frames: neither its Acquire put nor the
    motor's move ever completes; the disconnection fails the line at once, naming the IOC,
    and the 4 frames it reported written are recorded (a StreamDatum and 4 rows)."""
    fly = FlyLine(_Det(10, dies_after=4), _Motor(ends=False), {"ix": "integer"}, name="sxdm_fly")
    fly.prepare(stop=1.0, n=10, rows={"ix": list(range(10))}, period_s=0.002)
    fly.kickoff().wait(5)
    with pytest.raises(Exception, match="SS:SXDM:cam1:Acquire disconnected during the fly line"):
        fly.complete().wait(5)
    (sr, sd) = list(fly.collect_asset_docs())
    assert sd[1]["indices"] == {"start": 0, "stop": 4}
    assert [p["data"]["ix"] for p in fly.collect_pages()] == [[0, 1, 2, 3]]


def test_prepare_refuses_rows_that_do_not_match_the_line():
    fly = FlyLine(_Det(3), _Motor(), {"ix": "integer", "x": "number"})
    with pytest.raises(ValueError, match="rows lack"):
        fly.prepare(stop=1.0, n=3, rows={"ix": [0, 1, 2]})
    with pytest.raises(ValueError, match="needs 3 values"):
        fly.prepare(stop=1.0, n=3, rows={"ix": [0, 1, 2], "x": [0.0]})


class _RecordingMotor(_Motor):
    def __init__(self):
        super().__init__()
        self.moves: list[float] = []

    def set(self, value):
        self.moves.append(value)
        return super().set(value)


def test_the_line_starts_only_after_the_turnaround_move_ended():
    """prepare(start_after=[status]): kickoff arms the detector but starts the line's motion
    only when the other axis' move (still under way) has ended."""
    det, motor = _Det(frames_per_put=3), _RecordingMotor()
    fly = FlyLine(det, motor, {"ix": "integer", "x": "number"})
    turn = Status()
    fly.prepare(stop=1.0, n=3, rows={"ix": [0, 1, 2], "x": [0.0, 0.05, 0.1]}, start_after=[turn])
    kicked = fly.kickoff()
    with pytest.raises(WaitTimeoutError):
        kicked.wait(0.3)
    assert det.cam.detector_state.value == "Acquire" and motor.moves == []  # armed, not moving
    turn.set_finished()
    kicked.wait(5)
    fly.complete().wait(5)
    assert motor.moves == [1.0]
    assert [d[1]["indices"] for d in fly.collect_asset_docs() if d[0] == "stream_datum"] == [{"start": 0, "stop": 3}]


def test_a_failed_turnaround_fails_the_line_before_its_motion_and_disarms_the_detector():
    det, motor = _Det(frames_per_put=3), _RecordingMotor()
    puts = []
    acquire_put = det.cam.acquire.put
    det.cam.acquire.put = lambda value, **kw: (puts.append(value), acquire_put(value, **kw) if value else None)
    fly = FlyLine(det, motor, {"ix": "integer", "x": "number"})
    turn = Status()
    fly.prepare(stop=1.0, n=3, rows={"ix": [0, 1, 2], "x": [0.0, 0.05, 0.1]}, start_after=[turn])
    kicked = fly.kickoff()
    turn.set_exception(RuntimeError("sample_y stalled"))
    with pytest.raises(FlyLineError, match="move before the line failed.*sample_y stalled"):
        kicked.wait(5)
    with pytest.raises(FlyLineError):
        fly.complete().wait(5)
    assert motor.moves == [] and puts == [1, 0]
