"""Beamline faults survived, with real processes (issue #8).

Every test here runs the real pieces: the session's caproto IOCs (cycler + XRD detector,
beam), and where analysis is involved a real tiled server and a real worker subprocess. The
faults are injected while a plan runs:

- beam dump and shutter close mid-run: the plan suspends and resumes, no frame is missing,
  no beam-off frame is kept, the frames repeated by the rewind are cut from the detector
  file and analysed once;
- the beam IOC killed mid-run: the plan suspends until the restarted IOC answers (and the
  operator reopens the shutter the restart closed), then completes;
- the detector's IOC killed mid-series: the run fails at once with a named error, closed
  with exit_status "fail"; the frames already written stay readable from tiled and the
  file; a continuation run records the rest;
- an unwritable or too small data directory: a named DataDirError before any document.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from strainstream.callbacks.sinks import DERIVED
from strainstream.datadir import detector_dir
from strainstream.demo import wait_for_results
from strainstream.devices.testing import wait_for
from strainstream.session import make_session

pytestmark = pytest.mark.system



def _calibration(shape: int) -> dict:
    from strainstream.sim.xrd_frames import DetectorGeometry, XRDFrameSimulator

    geo = DetectorGeometry.binned(2048 // shape)
    sim = XRDFrameSimulator(geo)
    inst = 2 * np.pi / geo.wavelength_A * np.radians(sim.instrument_fwhm_2theta_deg)
    return dict(geo.to_dict(), instrument_fwhm_A_inv=inst)


def _file_of(root, uid: str, key: str) -> str:
    (source,) = root[uid]["primary"][key].data_sources()
    return source.assets[0].data_uri.removeprefix("file://localhost")


def _read_file(path: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    with h5py.File(path, "r", swmr=True, locking=False) as f:
        frames = f["/entry/data/data"][()]
        att = {k: v[()] for k, v in f["/entry/instrument/NDAttributes"].items()}
    return frames, att


def _event_frames(root, uid: str, key: str, seq: list[int]):
    """(frames, attributes, file indices) of the frames the events ``seq`` reference, in order
    (the detector file may hold more: frames taken for events a suspension dropped)."""
    from strainstream.callbacks.tiled_format import ExternalFrames

    frames_ref = ExternalFrames(root[uid]["primary"][key], key)
    idx = np.array([frames_ref.ref(s).index for s in seq])
    frames, att = _read_file(_file_of(root, uid, key))
    return frames[idx], {k: v[idx] for k, v in att.items()}, idx


class _Counter:
    """RunEngine subscriber: events of the primary stream seen so far, and the stop document."""

    def __init__(self) -> None:
        self.events = 0
        self.stop: dict | None = None
        self.start: dict | None = None
        self.descriptors: set[str] = set()
        self.changed = threading.Condition()

    def __call__(self, name, doc) -> None:
        if name == "start":
            self.start = doc
        elif name == "descriptor" and doc["name"] == "primary":
            self.descriptors.add(doc["uid"])
        elif name == "event" and doc["descriptor"] in self.descriptors:
            with self.changed:
                self.events = max(self.events, doc["seq_num"])
                self.changed.notify_all()
        elif name == "stop":
            self.stop = doc

    def wait_events(self, n: int, timeout_s: float = 60.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.events >= n, timeout_s)


@pytest.fixture
def session(tiled_server, tmp_path):
    """A RunEngine streaming to ``tiled_server`` (own spool directory), closed afterwards."""
    s = make_session(tiled_server.uri, tiled_server.api_key, progress=False,
                     spool_dir=tmp_path / "spool")
    yield s
    s.close(30.0)


@pytest.fixture
def xrd_setup(sim_beamline, sim_devices, tiled_server):
    """The XRD detector writing where tiled reads, cycler and beam; restored afterwards."""
    dets = sim_beamline.devices(write_dir=detector_dir(tiled_server.data_dir))
    det = dets["xrd"]
    det.wait_for_connection(timeout=30)
    cyc, beam = sim_devices["cycler"], sim_devices["beam"]
    yield det, cyc, beam
    for ioc in ("beam", "cycler"):  # a failed fault test must not leave an IOC dead
        if not sim_beamline.is_running(ioc):
            sim_beamline.restart(ioc)
    wait_for(lambda: det.connected and cyc.connected and beam.connected, 60, 0.2)
    sim = sim_devices["xrd_sim"]
    sim.beam_gate.put(0, wait=True)
    det.cam.acquire_time.put(0.0, wait=True)
    cyc.accel.put(600.0, wait=True)
    cyc.rest().wait(10)
    beam.shutter.close().wait(10)


# ------------------------------------------------------------------- 1. dump + shutter
@pytest.mark.slow
def test_beam_dump_and_shutter_close_mid_run_lose_and_repeat_nothing(
        xrd_setup, sim_devices, tiled_server, worker_factory, capsys, session):
    from strainstream.plans.xrd import operando_xrd
    from strainstream.sim.cell import LatticePhase
    from strainstream.sim.cell import preset as cell_preset
    from strainstream.sim.xrd_frames import DetectorGeometry, XRDFrameSimulator

    det, cyc, beam = xrd_setup
    worker_factory()
    shape = int(det.cam.array_size.array_size_y.get())
    # the detector sees the beam IOC's photons: with the shutter closed its frames are dark
    beam.shutter.close().wait(10)
    sim_ctl = sim_devices["xrd_sim"]
    sim_ctl.beam_gate.put(1, wait=True)
    assert wait_for(lambda: sim_ctl.beam_on.get(use_monitor=False) == 0, 10), "beam link not up"
    det.cam.acquire_time.put(0.2, wait=True)  # most of the time a frame is in flight
    sim_ctl.seed.put(11, wait=True)
    cyc.reset_cell().wait(10)
    cyc.accel.put(160.0, wait=True)  # the 200 mA/g charge takes ~27 s of wall time

    seen = _Counter()
    session.RE.subscribe(seen)
    faults: list[str] = []

    def inject():  # each fault ~0.4 s after an event: while the next frame is being taken
        if not seen.wait_events(4):
            return
        time.sleep(0.4)
        beam.dump(2.0).wait(10)  # current 0 for 2 s, then a 2 s ramp
        faults.append("dump")
        if not seen.wait_events(seen.events + 4):
            return
        time.sleep(0.4)
        beam.shutter.close().wait(10)
        faults.append("shutter")
        time.sleep(1.5)
        beam.shutter.open().wait(10)

    t = threading.Thread(target=inject, daemon=True)
    t.start()
    (uid,) = session.RE(operando_xrd(det, cyc, calibration=_calibration(shape), rate_mA_g=200.0,
                                     frame_interval_s=0.3, max_frames=200, beam=beam,
                                     md={"sample": "fault test"}))
    t.join(30)
    out = capsys.readouterr().out
    assert faults == ["dump", "shutter"]
    assert out.count("Suspending....") >= 2, out[-2000:]
    assert "storage-ring current below" in out and "photon shutter closed" in out
    assert seen.stop["exit_status"] == "success"

    root = tiled_server.client()
    primary = root[uid]["primary"]
    seq = primary["seq_num"].read().tolist()
    n = len(seq)
    assert seq == list(range(1, n + 1)), "every event exactly once, in order"
    assert n == seen.events and n > 10

    # each event references the frame taken for it; frames taken for events the suspensions
    # dropped stay in the file, referenced by nothing
    frames, att, idx = _event_frames(root, uid, "xrd_image", seq)
    n_file = _read_file(_file_of(root, uid, "xrd_image"))[0].shape[0]
    assert np.all(np.diff(idx) >= 1) and idx[-1] < n_file
    assert np.all(att["beam_on"] == 1.0), "a beam-off frame was referenced"
    assert np.all(frames.reshape(n, -1).max(axis=1) > 0)
    counter = att["counter"]
    assert np.all(np.diff(counter) >= 1)
    n_cut = n_file - n  # frames taken, then not referenced after a rewind
    # event k holds the frame it triggered: the frame's cell state lies between the cycler
    # readings of the previous event and of its own (taken right after the frame)
    cap_event = np.asarray(primary["cycler_capacity_mAh_g"].read(), dtype=float)
    cap_frame = att["capacity_mAh_g"]
    assert np.all(cap_frame <= cap_event + 1e-9)
    assert np.all(cap_frame[1:] >= cap_event[:-1] - 1e-9)
    # tiled serves the file's frames, each event's where its StreamDatum says
    from strainstream.callbacks.tiled_format import ExternalFrames

    refs = ExternalFrames(primary["xrd_image"], "xrd_image")
    for i in sorted({0, n // 2, n - 1}):
        ref = refs.ref(seq[i])
        assert ref.node_index == idx[i]
        np.testing.assert_array_equal(primary["xrd_image"][ref.node_index], frames[i])
    # frames around the faults equal the forward model for the state the IOC recorded
    sim = XRDFrameSimulator(DetectorGeometry.binned(2048 // shape))
    tm = dict(cell_preset("SC-NM91").transition_metals)
    jumps = [int(i) for i in np.flatnonzero(np.diff(counter) > 1) + 1]
    for i in sorted({0, n - 1, *jumps}):
        phases = [LatticePhase(name=f"p{k}", **{f: float(att[f"phase{k}_{f}"][i]) for f in
                                               ("a_A", "c_A", "fraction", "microstrain", "size_nm",
                                                "li_occupancy")})
                  for k in range(int(att["n_phases"][i]))]
        expected = sim.frame(phases, seed=[11, int(counter[i])], transition_metals=tm).image
        np.testing.assert_array_equal(frames[i], expected)

    # the live analysis: one row per event, computed from that event's frame
    results = wait_for_results(root, uid, n, timeout_s=180)
    entry = results["analyses"]["operando_xrd"]
    assert entry["status"] == "complete" and entry["n_rows"] == n
    raw = root[DERIVED][uid]["operando_xrd"].read()
    assert sorted(raw["seq_num"].tolist()) == list(range(1, n + 1)) and len(raw) == n
    rows = raw.sort_values("seq_num")
    one = (att["n_phases"] == 1) & (rows["n_phases"].to_numpy() == 1)
    assert one.sum() > 5
    # refined c of a single-phase frame is that frame's simulated c, not a neighbour's
    c_fit = rows["c_A"].to_numpy()
    err = np.abs(c_fit[one] - att["phase0_c_A"][one])
    err_prev = np.abs(c_fit[1:][one[1:]] - att["phase0_c_A"][:-1][one[1:]])
    assert np.median(err) < 0.002 and np.mean(err < 0.01) >= 0.8, err
    assert np.median(err_prev) > 5 * np.median(err), (err, err_prev)
    print(f"FAULTS dump+shutter: events {n}, suspensions {out.count('Suspending....')}, "
          f"frames taken but not referenced (dropped events) {n_cut}, lost 0")


# --------------------------------------------------------------- 2. IOC restart mid-run
@pytest.mark.slow
def test_beam_ioc_killed_mid_run_suspends_until_it_is_back(
        xrd_setup, sim_devices, sim_beamline, tiled_server, capsys, session):
    from strainstream.plans.xrd import operando_xrd

    det, cyc, beam = xrd_setup
    shape = int(det.cam.array_size.array_size_y.get())
    beam.shutter.close().wait(10)
    sim_ctl = sim_devices["xrd_sim"]
    sim_ctl.beam_gate.put(1, wait=True)  # frames are dark while the restarted IOC's shutter is closed
    assert wait_for(lambda: sim_ctl.beam_on.get(use_monitor=False) == 0, 10), "beam link not up"
    cyc.reset_cell().wait(10)
    cyc.accel.put(250.0, wait=True)
    seen = _Counter()
    session.RE.subscribe(seen)
    outage: dict[str, float] = {}

    def fault():
        if not seen.wait_events(5):
            return
        sim_beamline.kill("beam")  # SIGKILL: no goodbye to the clients
        outage["killed_at_event"] = seen.events
        time.sleep(2.0)
        outage["events_while_down"] = seen.events - outage["killed_at_event"]
        t0 = time.monotonic()
        sim_beamline.restart("beam")  # same port; pyepics reconnects by itself
        wait_for(lambda: beam.connected, 60, 0.1)
        outage["reconnect_s"] = time.monotonic() - t0
        time.sleep(0.5)
        outage["events_before_shutter"] = seen.events - outage["killed_at_event"]
        beam.shutter.open().wait(10)  # the operator: a restarted beam IOC starts with it closed

    t = threading.Thread(target=fault, daemon=True)
    t.start()
    (uid,) = session.RE(operando_xrd(det, cyc, calibration=_calibration(shape), rate_mA_g=200.0,
                                     frame_interval_s=0.3, max_frames=200, beam=beam))
    t.join(60)
    out = capsys.readouterr().out
    assert "beam IOC not answering" in out, out[-2000:]
    # suspended while the IOC was away and until the shutter was open again (at most the
    # event being saved when the IOC died got through)
    assert outage["events_while_down"] <= 1 and outage["events_before_shutter"] <= 1, outage
    assert seen.stop["exit_status"] == "success"
    root = tiled_server.client()
    primary = root[uid]["primary"]
    seq = primary["seq_num"].read().tolist()
    n = len(seq)
    assert seq == list(range(1, n + 1)) and n > outage["killed_at_event"] + 3
    frames, att, _ = _event_frames(root, uid, "xrd_image", seq)
    assert frames.shape[0] == n and np.all(att["beam_on"] == 1.0)
    cap_event = np.asarray(primary["cycler_capacity_mAh_g"].read(), dtype=float)
    assert np.all(att["capacity_mAh_g"] <= cap_event + 1e-9)
    assert np.all(att["capacity_mAh_g"][1:] >= cap_event[:-1] - 1e-9)
    print(f"FAULTS beam IOC kill: events {n}, killed after event {outage['killed_at_event']}, "
          f"pyepics reconnect {outage['reconnect_s']:.1f} s after restart, lost 0")


@pytest.mark.slow
def test_detector_ioc_killed_mid_series_fails_named_and_a_continuation_completes(
        xrd_setup, sim_beamline, tiled_server, session):
    from strainstream.devices._ioc import IOCNotAnswering
    from strainstream.plans.frames import frame_series

    det, cyc, beam = xrd_setup
    seen = _Counter()
    session.RE.subscribe(seen)
    total = 12

    def fault():
        if seen.wait_events(4):
            sim_beamline.kill("cycler")  # the XRD detector's IOC, SIGKILL mid-series

    t = threading.Thread(target=fault, daemon=True)
    t.start()
    addr = sim_beamline.addresses["cycler"]
    with pytest.raises(IOCNotAnswering, match=rf"cycler IOC at {addr} \(prefix SS:XRD:\) not answering"):
        session.RE(frame_series([det], num=total, delay_s=0.3))
    t.join(30)
    uid = seen.start["uid"]
    assert seen.stop is not None and seen.stop["exit_status"] == "fail"
    assert "cycler IOC" in seen.stop["reason"]
    # what was recorded before the fault is readable from tiled and from the file
    root = tiled_server.client()
    assert wait_for(lambda: root[uid].metadata.get("stop") is not None, 60, 0.2)
    primary = root[uid]["primary"]
    seq = primary["seq_num"].read().tolist()
    k = len(seq)
    assert seq == list(range(1, k + 1)) and 4 <= k < total
    images = primary["xrd_image"].read()
    path = _file_of(root, uid, "xrd_image")
    frames, att = _read_file(path)  # the IOC died with the file open: SWMR keeps it readable
    assert images.shape[0] == k and frames.shape[0] >= k
    np.testing.assert_array_equal(images, frames[:k])
    assert np.all(images.reshape(k, -1).max(axis=1) > 0)

    # the IOC is back (same port): the rest of the series in a new run that names the first
    sim_beamline.restart("cycler")
    assert wait_for(lambda: det.connected and cyc.connected, 60, 0.2)
    seen2 = _Counter()
    session.RE.subscribe(seen2)
    (uid2,) = session.RE(frame_series([det], num=total - k, delay_s=0.1, md={"continues": uid}))
    assert seen2.stop["exit_status"] == "success"
    run2 = root[uid2]
    assert run2.metadata["start"]["continues"] == uid
    assert run2["primary"]["seq_num"].read().tolist() == list(range(1, total - k + 1))
    frames2, _ = _read_file(_file_of(root, uid2, "xrd_image"))
    assert frames2.shape[0] == total - k
    print(f"FAULTS detector IOC kill: {k} events kept in run 1 (file {frames.shape[0]} frames), "
          f"{total - k} in the continuation, lost 0")


def test_restarted_detector_ioc_is_not_silently_written_to_a_new_file(xrd_setup, sim_beamline):
    """An IOC that restarts between two frames (faster than the client notices) lost the
    series file: the next trigger refuses instead of writing to a file no document names."""
    from strainstream.devices.detectors import SeriesLost

    det, cyc, _ = xrd_setup
    det.stage()
    try:
        det.trigger().wait(60)
        list(det.collect_asset_docs())
        sim_beamline.restart("cycler")  # SIGTERM + start: the series file is closed
        assert wait_for(lambda: det.connected, 60, 0.2)
        with pytest.raises(SeriesLost, match=r"xrd: the cycler IOC at .* no longer writes .*\.h5"):
            det.trigger()
    finally:
        det.unstage()


# ------------------------------------------------------- 3. data directory pre-flight
def _unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create files in, even as root (chmod is not enough)."""
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    candidates = [ro, Path("/sys")]  # sysfs refuses new files to root as well
    for d in candidates:
        try:
            (d / ".probe").touch()
        except OSError:
            return d
        (d / ".probe").unlink()
    pytest.skip("no directory here refuses writes to this user")


def _no_run(tiled_server, before: int, docs: list) -> None:
    assert docs == []  # not even a start document
    assert len(tiled_server.client()) == before


@pytest.mark.parametrize("problem", ["file instead of directory", "not writable", "no space"])
def test_bad_ioc_data_dir_refused_before_the_run(problem, sim_beamline, tiled_server, tmp_path, session):
    from strainstream.devices._hdf5 import DataDirError
    from strainstream.plans.frames import frame_series

    num = 3
    if problem == "file instead of directory":
        target = tmp_path / "detectors"
        target.write_text("not a directory")
        match = rf"xrd \(cycler IOC\): data directory {target} is not a directory"
    elif problem == "not writable":
        target = _unwritable_dir(tmp_path)
        match = rf"xrd \(cycler IOC\): data directory {target} is not writable"
    else:
        target, num = tmp_path / "detectors", 10**9
        match = (rf"xrd \(cycler IOC\): data directory {target} needs \S+ [kMGTP]?B for {num} "
                 rf"frames of \d+x\d+ uint16, \S+ [kMGT]?B free")
    det = sim_beamline.devices(write_dir=target)["xrd"]
    det.wait_for_connection(timeout=30)
    docs: list = []
    session.RE.subscribe(lambda n, d: docs.append(n))
    before = len(tiled_server.client())
    with pytest.raises(DataDirError, match=match):
        session.RE(frame_series([det], num=num))
    _no_run(tiled_server, before, docs)


def test_ioc_side_data_dir_problem_is_reported_by_the_ioc(sim_beamline, tmp_path):
    """The plugin's own FilePath (no write_dir from the client) is checked (shared directory)
    and the IOC says it does not exist (FilePathExists_RBV)."""
    from bluesky import RunEngine

    from strainstream.devices._hdf5 import DataDirError
    from strainstream.devices.detectors import ioc_detector
    from strainstream.plans.frames import frame_series

    det = ioc_detector("xrd", sim_beamline.prefix, name="xrd_iocdir",
                       ioc_address=sim_beamline.addresses["cycler"])
    det.wait_for_connection(timeout=30)
    old = det.hdf1.file_path.get(use_monitor=False)
    bad = tmp_path / "a-file"
    bad.write_text("x")
    det.hdf1.file_path.put(str(bad / "sub") + "/", wait=True)
    docs: list = []
    try:
        with pytest.raises(DataDirError, match=r"xrd_iocdir \(cycler IOC\): data directory "
                                               rf"{bad}/sub cannot be created"):
            RunEngine({})(frame_series([det], num=2), lambda n, d: docs.append(n))
        assert docs == []
        assert det.hdf1.file_path_exists.get(use_monitor=False) == 0
    finally:
        det.hdf1.file_path.put(old, wait=True)


def test_bad_local_data_dir_refused_before_the_run(tmp_path):
    from bluesky import RunEngine

    from strainstream.devices._hdf5 import DataDirError
    from strainstream.devices.detectors import sim_frame_detector
    from strainstream.plans.frames import frame_series

    ro = _unwritable_dir(tmp_path)
    docs: list = []
    RE = RunEngine({})
    with pytest.raises(DataDirError, match=rf"det: data directory {ro} is not writable"):
        RE(frame_series([sim_frame_detector("det", ro, frame_shape=(64, 64))], num=2),
           lambda n, d: docs.append(n))
    big = sim_frame_detector("det", tmp_path / "ok", frame_shape=(2048, 2048))
    with pytest.raises(DataDirError, match=r"det: data directory \S+ needs .* for 100000000 frames "
                                           r"of 2048x2048 float32, .* free"):
        RE(frame_series([big], num=10**8), lambda n, d: docs.append(n))
    assert docs == []
    (uid,) = RE(frame_series([sim_frame_detector("det", tmp_path / "ok", frame_shape=(8, 8))],
                             num=2), lambda n, d: docs.append(n))
    assert docs.count("event") == 2
