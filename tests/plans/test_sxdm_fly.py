"""sxdm_fly_map against the simulated endstation IOC: the detector in TriggerMode External,
triggered by the start of each sample_x line move; one StreamDatum range and one event page
per line; frames on the raster points; the same live maps as the step plan."""

from __future__ import annotations

import copy

import h5py
import numpy as np
import pytest
from bluesky import RunEngine

from strainstream.asset_docs import DatumToStream
from strainstream.callbacks.router import make_callbacks
from strainstream.callbacks.sinks import MemorySink
from strainstream.plans.sxdm import sxdm_fly_map
from strainstream.sim.sxdm_frames import particle_preset

pytestmark = pytest.mark.system

NX, NY = 6, 4
N_THETA = 9
STEP_UM = 0.05
Y0, X0 = 10, 20  # a 4×6 window of the IOC's 32×32 particle (see test_sxdm_plan.py)
X_CENTER_UM, Y_CENTER_UM = (X0 + (NX - 1) / 2) * STEP_UM, (Y0 + (NY - 1) / 2) * STEP_UM
PARAMS = {"register": False}
PERIOD_S = 0.004


@pytest.fixture(scope="module")
def fly_docs(sim_devices):
    from strainstream.devices.ioc.endstation import theta_bragg_deg

    det, es, beam = sim_devices["sxdm"], sim_devices["es"], sim_devices["beam"]
    beam.shutter.open().wait(10)
    energy = float(es.energy.position)
    velo0 = float(es.sample_x.velocity.get())
    docs = []
    RE = RunEngine({})
    RE.subscribe(DatumToStream(lambda n, d: docs.append((n, copy.deepcopy(d)))))
    RE(sxdm_fly_map(det, es, theta_center_deg=round(theta_bragg_deg(energy), 4),
                    theta_half_range_deg=0.4, n_theta=N_THETA, x_center_um=X_CENTER_UM,
                    y_center_um=Y_CENTER_UM, nx=NX, ny=NY, step_nm=50.0, period_s=PERIOD_S,
                    md={"sample": "SC-NM91 charged", "analysis_parameters": {"sxdm": PARAMS}}))
    return docs, velo0


def test_one_datum_range_and_one_event_page_per_line(fly_docs, sim_devices):
    docs, velo0 = fly_docs
    names = [n for n, _ in docs]
    start = docs[0][1]
    assert start["plan_name"] == "sxdm_fly_map" and start["experiment"] == "sxdm"
    assert start["fly"]["velocity_um_s"] == pytest.approx(STEP_UM / PERIOD_S)
    lines = N_THETA * NY
    assert names.count("event_page") == lines and names.count("stream_datum") == lines
    assert names.count("stream_resource") == 1 and "event" not in names
    assert docs[-1][1]["exit_status"] == "success"
    datums = [d for n, d in docs if n == "stream_datum"]
    pages = [d for n, d in docs if n == "event_page"]
    assert [(d["indices"]["start"], d["indices"]["stop"]) for d in datums] == \
        [(k * NX, (k + 1) * NX) for k in range(lines)]
    assert [(d["seq_nums"]["start"], d["seq_nums"]["stop"]) for d in datums] == \
        [(1 + k * NX, 1 + (k + 1) * NX) for k in range(lines)]
    assert [p["seq_num"] for p in pages] == [list(range(1 + k * NX, 1 + (k + 1) * NX)) for k in range(lines)]
    assert pages[0]["data"]["sxdm_ix"] == list(range(NX))
    assert pages[1]["data"]["sxdm_ix"] == list(range(NX - 1, -1, -1))  # snake
    # the plan put back the detector's trigger mode and the motor's speed, and left no
    # Resource of its stage in the detector's cache (it would come out of the next step scan)
    det, es = sim_devices["sxdm"], sim_devices["es"]
    assert list(det.collect_asset_docs()) == []
    assert det.cam.trigger_mode.get(as_string=True) == "Internal"
    assert float(es.sample_x.velocity.get()) == pytest.approx(velo0)


def test_every_frame_was_taken_on_its_raster_point(fly_docs):
    """The IOC records where the stage was at each frame's mid-exposure: the run-up of half a
    step and VELO = step / period put frame i of a line on raster point i (to rounding)."""
    docs, _ = fly_docs
    res = next(d for n, d in docs if n == "stream_resource")
    path = res["uri"][len("file://localhost"):]
    pages = [d for n, d in docs if n == "event_page"]
    with h5py.File(path, "r", swmr=True, locking=False) as f:
        att = {k: v[()] for k, v in f["/entry/instrument/NDAttributes"].items()}
        n_frames = f["/entry/data/data"].shape[0]
    assert n_frames == N_THETA * NY * NX
    x_planned = np.concatenate([p["data"]["es_sample_x"] for p in pages])
    y_planned = np.concatenate([p["data"]["es_sample_y"] for p in pages])
    np.testing.assert_allclose(att["sample_x_um"], x_planned, atol=1e-9)
    np.testing.assert_allclose(att["sample_y_um"], y_planned, atol=1e-9)


def test_fly_map_gives_the_step_maps_truth(fly_docs):
    docs, _ = fly_docs
    sinks = {}
    (cb,) = make_callbacks(docs[0][1], lambda name: sinks.setdefault(name, MemorySink()))
    for n, d in docs:
        cb(n, d)
    sink = sinks["sxdm"]
    assert len(sink.rows) == N_THETA * NY * NX and not any(r["flag"] for r in sink.rows)
    a = sink.arrays
    assert a["mask"].all(), (a["flags"], sink.summary["message"])
    pt = particle_preset("SC-NM91", "charged", ny=32, nx=32)
    y, x = np.meshgrid(np.arange(Y0, Y0 + NY * 1.0), np.arange(X0, X0 + NX * 1.0), indexing="ij")
    truth = pt.fields(y, x)
    # the step map's tolerances (tests/plans/test_sxdm_plan.py)
    np.testing.assert_allclose(a["d_spacing_A"], truth["d_spacing_A"], rtol=1e-4)
    np.testing.assert_allclose(a["tilt_xy_deg"], truth["tilt_xy_deg"], atol=0.005)
    np.testing.assert_allclose(a["tilt_xz_deg"], truth["tilt_xz_deg"], atol=0.005)
    assert sink.summary["angles_done"] == N_THETA



def test_a_line_cut_short_is_mapped_and_named_incomplete(fly_docs):
    """A fly line whose series was cut short (an IOC that died mid-line: the plan records the
    frames that reached the file) goes into the maps with the frames it has, and the published
    maps and the summary name it."""
    docs, _ = fly_docs
    cut = 5  # the 6th line (θ 1, iy 1) keeps its first 2 frames
    keep = 2
    out, line = [], -1
    for n, d in docs:
        if n == "stream_datum":
            line += 1
            if line == cut:
                d = dict(d, indices={"start": d["indices"]["start"], "stop": d["indices"]["start"] + keep},
                         seq_nums={"start": d["seq_nums"]["start"], "stop": d["seq_nums"]["start"] + keep})
        elif n == "event_page" and line == cut:
            d = dict(d, seq_num=d["seq_num"][:keep], time=d["time"][:keep], uid=d["uid"][:keep],
                     data={k: v[:keep] for k, v in d["data"].items()},
                     timestamps={k: v[:keep] for k, v in d["timestamps"].items()})
        out.append((n, d))
    sinks = {}
    (cb,) = make_callbacks(out[0][1], lambda name: sinks.setdefault(name, MemorySink()))
    for n, d in out:
        cb(n, d)
    sink = sinks["sxdm"]
    assert len(sink.rows) == N_THETA * NY * NX - (NX - keep)
    assert sink.arrays_metadata["incomplete_lines"] == [[1, 1, keep]]
    assert sink.summary["lines_incomplete"] == 1


def test_a_detector_ioc_killed_mid_line_loses_no_frame_of_the_file(sim_beamline, sim_devices):
    """SIGKILL the endstation IOC (detector and motors) in the middle of a fly line: the run
    fails naming the IOC, every frame that reached the file is recorded (the last line's
    StreamDatum stops where the file does), and the live map lists that line as incomplete."""
    import threading

    from strainstream.devices.ioc.endstation import theta_bragg_deg

    det, es = sim_devices["sxdm"], sim_devices["es"]
    energy = float(es.energy.position)
    nx, period = 30, 0.02  # 0.6 s per line
    docs = []
    RE = RunEngine({})
    RE.subscribe(DatumToStream(lambda n, d: docs.append((n, copy.deepcopy(d)))))

    def kill_mid_line():  # in the 3rd line (after 2 StreamDatums), 0.25 s into it
        while sum(n == "stream_datum" for n, _ in docs) < 2:
            threading.Event().wait(0.01)
        threading.Event().wait(0.35)
        sim_beamline.kill("endstation")

    killer = threading.Thread(target=kill_mid_line)
    killer.start()
    try:
        with pytest.raises(Exception, match=r"endstation IOC at \S+ \(prefix SS:SXDM:\) not answering"):
            RE(sxdm_fly_map(det, es, theta_center_deg=round(theta_bragg_deg(energy), 4),
                            theta_half_range_deg=0.4, n_theta=2, x_center_um=X_CENTER_UM,
                            y_center_um=Y_CENTER_UM, nx=nx, ny=NY, step_nm=50.0, period_s=period,
                            md={"analysis_parameters": {"sxdm": PARAMS}}))
    finally:
        killer.join()
        sim_beamline.restart("endstation")
        for name in ("sxdm", "es"):
            sim_devices[name].wait_for_connection(timeout=30)
    assert docs[-1][0] == "stop" and docs[-1][1]["exit_status"] == "fail"
    datums = [d for n, d in docs if n == "stream_datum"]
    pages = [d for n, d in docs if n == "event_page"]
    assert len(datums) == len(pages) == 3
    last = datums[-1]["indices"]
    assert last["start"] == 2 * nx and 2 * nx < last["stop"] < 3 * nx  # the cut line, in part
    assert len(pages[-1]["seq_num"]) == last["stop"] - last["start"]
    res = next(d for n, d in docs if n == "stream_resource")
    with h5py.File(res["uri"][len("file://localhost"):], "r", swmr=True, locking=False) as f:
        in_file = f["/entry/data/data"].shape[0]
    assert last["stop"] == in_file, "every frame that reached the file is recorded"
    # the live analysis maps the lines it has and names the cut one
    sinks = {}
    (cb,) = make_callbacks(docs[0][1], lambda name: sinks.setdefault(name, MemorySink()))
    for n, d in docs:
        cb(n, d)
    sink = sinks["sxdm"]
    assert len(sink.rows) == in_file
    assert sink.arrays_metadata["incomplete_lines"] == [[0, 2, in_file - 2 * nx]]
    assert sink.summary["lines_incomplete"] == 1


def test_a_motion_stopped_mid_line_is_where_the_frames_after_it_were_taken(sim_devices):
    """The simulated detector computes a batch of frames while it is exposed, from where the
    stage's motion will be; a motion stopped mid-line (the motor record's STOP) changes that,
    and the frames after the stop must say where the stage really was: no frame is recorded
    beyond the stop, and every frame after it is at the stopped position, its counts too (no
    noise: frames taken at one position are identical)."""
    import threading
    import time

    from strainstream.devices.ioc.endstation import theta_bragg_deg

    det, es = sim_devices["sxdm"], sim_devices["es"]
    sim_devices["beam"].shutter.open().wait(10)  # (photons: frames with counts)
    energy = float(es.energy.position)
    nx, period, step_um = 100, 0.004, 0.01  # 0.4 s per line on the particle, 2 frames per batch
    noise = sim_devices["sxdm_sim"].noise
    noise_was = int(noise.get())
    noise.put(0, wait=True)
    x_start = X_CENTER_UM - (nx - 1) / 2 * step_um

    def fly_and_stop() -> tuple[float, list]:
        docs: list = []
        RE = RunEngine({})
        RE.subscribe(DatumToStream(lambda n, d: docs.append((n, copy.deepcopy(d)))))
        done = threading.Event()

        # 0.15 s after the line's motion was seen started (detector armed, stage moving): the
        # stop lands at x = 1.25-1.35 um, where the particle's intensity falls steeply (a frame
        # computed for a later position differs: with the stop at 1.0-1.2 um the check below
        # missed the IOC's unchecked batches in 2 of 3 runs)
        def stop_mid_line():
            while not done.is_set():
                if (det.cam.detector_state.get(as_string=True) == "Acquire"
                        and int(es.sample_x.motor_done_move.get()) == 0):
                    time.sleep(0.15)
                    es.sample_x.motor_stop.put(1)
                    return
                time.sleep(0.002)

        stopper = threading.Thread(target=stop_mid_line)
        stopper.start()
        try:
            RE(sxdm_fly_map(det, es, theta_center_deg=round(theta_bragg_deg(energy), 4),
                            theta_half_range_deg=0.4, n_theta=1, x_center_um=X_CENTER_UM,
                            y_center_um=Y_CENTER_UM, nx=nx, ny=1, step_nm=step_um * 1000,
                            period_s=period))
        finally:
            done.set()
            stopper.join()
        return float(es.sample_x.position), docs

    def recorded(docs: list) -> tuple[np.ndarray, np.ndarray]:
        res = next(d for n, d in docs if n == "stream_resource")
        with h5py.File(res["uri"][len("file://localhost"):], "r", swmr=True, locking=False) as f:
            return f["/entry/instrument/NDAttributes/sample_x_um"][()], f["/entry/data/data"][()]

    try:
        # a loaded machine can starve the stopping thread for 0.3 s: the stop then lands past
        # the particle's edge (x = 1.35 um; frames of zero counts, nothing to compare) or past
        # the line's end; fly again then
        for _ in range(4):
            x_stop, docs = fly_and_stop()
            x, frames = recorded(docs)
            if (x_start < x_stop < x_start + (nx - 1) * step_um
                    and frames[x >= x_stop - 1e-9].any()):
                break
    finally:
        noise.put(noise_was, wait=True)
    assert len(x) == nx
    assert x_start < x_stop < x_start + (nx - 1) * step_um, "the motion was stopped mid-line"
    assert x.max() <= x_stop + 1e-9, "no frame is recorded beyond where the stage stopped"
    at_stop = x >= x_stop - 1e-9
    after = x[at_stop]
    assert len(after) >= 10 and np.all(after == x_stop)
    still = frames[at_stop]
    assert still.any() and all(np.array_equal(fr, still[-1]) for fr in still), \
        "a frame after the stop was computed for where the stage would have been"
    assert np.all(np.diff(x) >= 0)  # the trajectory, then the stop
