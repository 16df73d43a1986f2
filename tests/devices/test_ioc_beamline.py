"""Integration tests against the running IOCs (caproto subprocesses on loopback, ophyd/pyepics).

Known answers: detector frames are recomputed with the forward models (strainstream.sim) for
the state the IOC recorded (XRD) or the motor positions we set (SXDM, TXM) and must agree
exactly (XRD, TXM within float32 rounding) or within 1 count of rounding (SXDM, whose IOC
evaluates the Gaussian for one raster point instead of the whole raster).
"""

from __future__ import annotations

import time

import h5py
import numpy as np
import pytest

from strainstream.devices.testing import wait_for

pytestmark = pytest.mark.system



@pytest.fixture(scope="module")
def beamline(sim_beamline):
    """The session's simulated beamline (tests/conftest.py): pyepics reads the CA address
    list once per process, so all Channel Access tests share one set of IOC ports."""
    return sim_beamline


@pytest.fixture(scope="module")
def devs(sim_devices):
    return sim_devices


def _shape(det):
    size = det.cam.array_size
    return int(size.array_size_y.get()), int(size.array_size_x.get())



def _acquire_one(det):
    """Stage, trigger once, unstage; return (path, frame index, asset documents)."""
    det.stage()
    try:
        det.trigger().wait(timeout=60)
        docs = list(det.collect_asset_docs())
    finally:
        det.unstage()
    (name, resource), (_, datum) = docs
    assert name == "resource" and resource["spec"] == "AD_HDF5"
    path = f"{resource['root'].rstrip('/')}/{resource['resource_path']}"
    return path, datum["datum_kwargs"]["point_number"], docs


def _attrs(path, index):
    with h5py.File(path, "r", swmr=True, locking=False) as f:
        frame = f["/entry/data/data"][index]
        att = {k: float(v[index]) for k, v in f["/entry/instrument/NDAttributes"].items()}
    return frame, att


# ------------------------------------------------------------------------------ motors
def test_motor_move_completes_at_move_end(devs):
    from ophyd import EpicsMotor

    m = devs["es"].sample_x
    assert type(m) is EpicsMotor and m.prefix == "SS:ES:sample_x"
    m.set(0.0).wait(timeout=10)
    seen = []
    cid = m.user_readback.subscribe(lambda value, **kw: seen.append(value), run=False)
    st = m.set(4.0)
    st.wait(timeout=10)
    m.user_readback.unsubscribe(cid)
    # the status finished when the record's DMOV went back to 1: at target, and the
    # readback went through intermediate positions (50 um/s, 10 ms steps)
    assert st.success
    assert m.motor_done_move.get(use_monitor=False) == 1
    assert m.position == pytest.approx(4.0, abs=1e-12)
    assert len([v for v in seen if 0.0 < v < 4.0]) >= 3
    reading = m.read()
    assert reading["es_sample_x"]["value"] == pytest.approx(4.0)
    assert reading["es_sample_x_user_setpoint"]["value"] == pytest.approx(4.0)


def test_motor_soft_limits_refuse_moves(devs, beamline):
    from caproto import ErrorResponseReceived
    from caproto.sync.client import write
    from ophyd.utils.errors import LimitError

    m = devs["es"].det_z
    before = m.position
    with pytest.raises(LimitError, match=r"det_z: target 5000 mm is outside the soft limits \[300, 2000\] mm"):
        m.set(5000)
    assert m.position == before
    # a raw Channel Access put (no ophyd in between) is refused by the IOC itself
    pv = f"{beamline.prefix}ES:det_z.VAL"
    with pytest.raises(ErrorResponseReceived, match="outside the soft limits"):
        write(pv, 5000.0, notify=True, timeout=5, repeater=False)
    assert m.position == before
    with pytest.raises(LimitError, match=r"det_z: target 2050 mm is outside"):
        m.set(2050)
    # moving the limit makes the target legal (EpicsMotor follows HLM by monitor; the
    # stage's hard limit switch is at 2085 mm)
    m.high_limit_travel.put(2060.0, wait=True)
    try:
        assert wait_for(lambda: m.limits == (300.0, 2060.0), 5)
        m.velocity.put(20000.0, wait=True)
        m.set(2050).wait(timeout=10)
        assert m.position == pytest.approx(2050.0)
        m.set(before).wait(timeout=10)
    finally:
        m.high_limit_travel.put(2000.0, wait=True)
        m.velocity.put(100.0, wait=True)
        assert wait_for(lambda: m.limits == (300.0, 2000.0), 5)


def test_motor_limits_follow_every_hlm_change(devs):
    """EpicsMotor re-reads VAL's control limits when HLM changes; a stale VAL monitor event
    handled after that re-read put the old limits back (CI: 1 in ~20 changes; caproto sent
    VAL's DBE_PROPERTY event to value subscribers, which a real IOC does not)."""
    m = devs["es"].det_z
    before = m.position
    m.velocity.put(20000.0, wait=True)
    try:
        for _ in range(30):
            for hlm in (2060.0, 2000.0):
                m.high_limit_travel.put(hlm, wait=True)
                # ophyd may re-read on its monitor thread, after the put has returned
                assert wait_for(lambda h=hlm: m.limits == (300.0, h), 2), (hlm, m.limits)
                time.sleep(0.05)  # a stale event was handled within a few ms
                assert m.limits == (300.0, hlm)
                if hlm > 2050:
                    m.set(2050).wait(timeout=10)
                    m.set(before).wait(timeout=10)
    finally:
        m.high_limit_travel.put(2000.0, wait=True)
        m.velocity.put(100.0, wait=True)
    assert m.position == pytest.approx(before)


def test_motor_stop_ends_the_move_early(devs):
    m = devs["es"].sample_z
    m.set(0.0).wait(timeout=10)
    m.velocity.put(10.0, wait=True)
    try:
        st = m.set(90.0)  # 9 s at 10 um/s
        assert wait_for(lambda: m.position > 1.0, 10)
        m.stop()
        st.wait(timeout=10)
        pos = m.position
        assert 1.0 < pos < 90.0
        assert m.motor_done_move.get(use_monitor=False) == 1
    finally:
        m.velocity.put(50.0, wait=True)
        m.set(0.0).wait(timeout=10)


# ------------------------------------------------------------------------------ cycler
def test_cycler_charges_the_cell(devs):
    from strainstream.sim.cell import ocv_V, preset

    cyc = devs["cycler"]
    cyc.rest().wait(5)
    cyc.reset_cell().wait(5)
    cyc.accel.put(3000.0, wait=True)
    try:
        _check_charge(cyc, ocv_V, preset)
    finally:
        cyc.accel.put(600.0, wait=True)
        cyc.rest().wait(5)


def _check_charge(cyc, ocv_V, preset):
    v0 = cyc.voltage_V.get(use_monitor=False)
    assert cyc.soc.get(use_monitor=False) == 0.0
    cyc.start_cc(100.0, v_max_V=4.5).wait(5)  # 2.28 h at 100 mA/g -> ~3 s of wall time
    assert wait_for(lambda: cyc.mode_rbv.get() == "CC", 5)
    samples = []

    def done():
        rb = cyc.read()
        samples.append((rb["cycler_soc"]["value"], rb["cycler_voltage_V"]["value"],
                        rb["cycler_capacity_mAh_g"]["value"], rb["cycler_mode_rbv"]["value"]))
        return samples[-1][3] == "REST"

    assert wait_for(done, timeout_s=40, period_s=0.1), "the charge did not reach 4.5 V"
    soc, v, cap = (np.array([s[i] for s in samples]) for i in range(3))
    charging = np.array([s[3] == "CC" for s in samples])
    assert charging.sum() >= 5
    # voltage and capacity rise during the CC charge
    assert np.all(np.diff(cap[charging]) >= 0) and np.all(np.diff(soc[charging]) >= 0)
    assert v[charging][-1] > v[charging][0] > v0 - 0.5
    # on charge the voltage sits above the open-circuit curve (overpotential 0..0.3 V); the
    # monitors of V and soc may come from neighbouring 0.1 s ticks, hence the -0.05 V slack
    over = v[charging] - np.asarray(ocv_V("SC-NM91", soc[charging]))
    assert np.median(over) > 0 and np.all(over > -0.05) and np.all(over < 0.3)
    # at rest (state frozen): capacity = soc x practical capacity (first cycle, exact)
    time.sleep(0.3)
    q = preset("SC-NM91").practical_capacity_mAh_g
    soc_end = cyc.soc.get(use_monitor=False)
    assert cyc.capacity_mAh_g.get(use_monitor=False) == pytest.approx(soc_end * q, rel=1e-9)
    assert cyc.voltage_V.get(use_monitor=False) == pytest.approx(ocv_V("SC-NM91", soc_end), abs=0.2)
    assert cyc.limit_hits.get(use_monitor=False) == 1
    assert soc_end > 0.8


def test_cycler_step_timer_ends_the_pulse_at_its_cell_time(devs):
    """CYC:step_time_s: the IOC itself ends a CC step after exactly that much cell time, so a
    GITT pulse's length does not depend on how late a loaded client polls (CI saw +23 s at
    accel 100 with client-side timing); a later untimed start is not limited."""
    cyc = devs["cycler"]
    cyc.rest().wait(5)
    cyc.reset_cell().wait(5)
    cyc.accel.put(1000.0, wait=True)  # 10^3 s of cell time per wall second: 0.1 s ticks of 100 s
    try:
        t0 = cyc.time_s.get(use_monitor=False)
        cyc.start_cc(50.0, v_max_V=4.5, step_time_s=250.0).wait(5)
        assert cyc.step_time_s.get(use_monitor=False) == 250.0
        assert wait_for(lambda: cyc.mode_rbv.get(use_monitor=False) == "REST", 10), \
            "the step timer did not end the CC step"
        time.sleep(0.3)
        # 50 mA/g for 250 s = 3.4722 mAh/g; the start is applied at a tick boundary of the
        # cell time, so the charge is exact to the simulator's precision, not to a 100 s tick
        q = cyc.capacity_mAh_g.get(use_monitor=False)
        assert q == pytest.approx(50.0 * 250.0 / 3600.0, rel=1e-9), q
        assert cyc.limit_hits.get(use_monitor=False) == 0
        assert cyc.time_s.get(use_monitor=False) - t0 > 250.0
        cyc.start_cc(50.0, v_max_V=4.5).wait(5)  # untimed: step_time_s put back to 0
        assert cyc.step_time_s.get(use_monitor=False) == 0.0
        time.sleep(0.6)
        assert cyc.mode_rbv.get(use_monitor=False) == "CC"
        assert cyc.capacity_mAh_g.get(use_monitor=False) > q + 50.0 * 250.0 / 3600.0
    finally:
        cyc.accel.put(600.0, wait=True)
        cyc.rest().wait(5)


# --------------------------------------------------------------------------- detectors
def test_xrd_frame_matches_forward_model(devs):
    from strainstream.sim.cell import LatticePhase
    from strainstream.sim.cell import preset as cell_preset
    from strainstream.sim.xrd_frames import DetectorGeometry, XRDFrameSimulator

    cyc, xrd, sim = devs["cycler"], devs["xrd"], devs["xrd_sim"]
    cyc.rest().wait(5)
    sim.noise.put(1, wait=True)
    sim.seed.put(7, wait=True)
    path, index, _ = _acquire_one(xrd)
    frame, att = _attrs(path, index)
    rows, cols = _shape(xrd)
    assert frame.shape == (rows, cols) and frame.dtype == np.uint16
    phases = [
        LatticePhase(name=f"p{k}", **{f: att[f"phase{k}_{f}"] for f in
                                      ("a_A", "c_A", "fraction", "microstrain", "size_nm",
                                       "li_occupancy")})
        for k in range(int(att["n_phases"]))
    ]
    # the state recorded is the cycler's state (at rest, so it is still the same)
    assert att["soc"] == pytest.approx(cyc.soc.get(use_monitor=False), abs=1e-9)
    sim = XRDFrameSimulator(DetectorGeometry.binned(2048 // rows))
    tm = dict(cell_preset("SC-NM91").transition_metals)
    expected = sim.frame(phases, seed=[7, int(att["counter"])], transition_metals=tm).image
    np.testing.assert_array_equal(frame, expected)
    assert frame.max() > 10 * np.median(frame)  # rings are really there


def test_sxdm_frame_matches_forward_model(devs):
    from strainstream.sim.sxdm_frames import particle_preset, simulate_sxdm

    es, det = devs["es"], devs["sxdm"]
    shape = _shape(det)
    sim = simulate_sxdm(particle_preset("SC-NM91", "charged", ny=32, nx=32), energy_keV=8.35,
                        shape=shape, drift_step_nm=0.0, noise=False,
                        n_theta=21, theta_range_deg=1.0)
    theta0 = es.theta.position
    k, iy, ix = 10, 16, 14  # Bragg angle, near the particle centre
    step_um = sim.particle.step_nm / 1000.0
    for st in (es.energy.set(8350.0), es.sample_x.set(ix * step_um), es.sample_y.set(iy * step_um),
               es.theta.set(float(sim.theta_deg[k]))):
        st.wait(timeout=20)
    devs["sxdm_sim"].noise.put(0, wait=True)
    try:
        path, index, _ = _acquire_one(det)
    finally:
        devs["sxdm_sim"].noise.put(1, wait=True)
        for st in (es.sample_x.set(0.0), es.sample_y.set(0.0), es.theta.set(theta0)):
            st.wait(timeout=20)
    frame, att = _attrs(path, index)
    assert att["theta_deg"] == sim.theta_deg[k]
    expected = sim.frames_at(k)[iy, ix].astype(np.int64)
    assert frame.shape == shape and frame.dtype == np.uint32
    assert np.abs(frame.astype(np.int64) - expected).max() <= 1
    assert expected.max() > 20  # the Bragg peak is on the crop


def test_txm_image_matches_forward_model_and_defocus(devs):
    from strainstream.devices.ioc.endstation import zp_focus_mm
    from strainstream.sim.txm_images import particle_sample, simulate_txm_scan

    es, cam = devs["es"], devs["txm"]
    shape = _shape(cam)
    e0, zp0 = es.energy.position, es.zp_z.position
    e = 8352.0
    zp = zp_focus_mm(e)
    for st in (es.energy.set(e), es.zp_z.set(zp), es.sample_inout.set(0.0)):
        st.wait(timeout=20)
    devs["txm_sim"].noise.put(0, wait=True)
    try:
        path, i_in, _ = _acquire_one(cam)
        es.sample_inout.set(5.0).wait(timeout=10)
        path_out, i_out, _ = _acquire_one(cam)
        es.sample_inout.set(0.0).wait(timeout=10)
        es.zp_z.set(zp + 0.3).wait(timeout=10)
        path_blur, i_blur, _ = _acquire_one(cam)
    finally:
        devs["txm_sim"].noise.put(1, wait=True)
        for st in (es.zp_z.set(zp0), es.energy.set(e0), es.sample_inout.set(0.0)):
            st.wait(timeout=20)
    img_in, att = _attrs(path, i_in)
    img_out, _ = _attrs(path_out, i_out)
    img_blur, _ = _attrs(path_blur, i_blur)
    assert att["zp_z_mm"] == pytest.approx(zp) and att["sample_in"] == 1.0
    scan = simulate_txm_scan(np.array([e]), sample=particle_sample(shape),
                             zp_follows_focus=False, zp_position_m=att["zp_z_mm"] / 1000.0,
                             drift_px_rms=0.0, noise=False)
    np.testing.assert_allclose(img_in, scan.stack[0].astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(img_out, scan.flats[0].astype(np.float32), rtol=1e-6)
    # the particle absorbs (sample in darker than the flat), and defocus blurs the edges
    assert img_in.mean() < 0.99 * img_out.mean()
    grad = lambda a: np.abs(np.diff(a.astype(float), axis=1)).sum()  # noqa: E731
    assert grad(img_blur) < 0.9 * grad(img_in)


def test_stock_ophyd_area_detector_writes_n_frames_into_one_file(beamline, tmp_path):
    """The interface a real beamline profile relies on: ophyd's stock SingleTrigger +
    AreaDetector with an HDF5Plugin + FileStoreHDF5IterativeWrite at HDF1: stages, triggers N
    times and unstages, leaving one HDF5 file (FullFileName_RBV) of N frames."""
    from ophyd import Component as Cpt
    from ophyd.areadetector import AreaDetector, HDF5Plugin, SingleTrigger
    from ophyd.areadetector.filestore_mixins import FileStoreHDF5IterativeWrite

    class HDF5PluginWithFileStore(HDF5Plugin, FileStoreHDF5IterativeWrite):
        pass

    class Detector(SingleTrigger, AreaDetector):
        hdf1 = Cpt(HDF5PluginWithFileStore, "HDF1:", write_path_template=f"{tmp_path}/")

    det = Detector(beamline.prefix + "XRD:", name="stock")
    det.wait_for_connection(timeout=10)
    n = 4
    det.stage()
    try:
        for _ in range(n):
            det.trigger().wait(timeout=30)
        path = det.hdf1.full_file_name.get(use_monitor=False)
        docs = list(det.hdf1.collect_asset_docs())
    finally:
        det.unstage()
    assert path.startswith(str(tmp_path)) and path.endswith("_000000.h5")
    with h5py.File(path, "r", swmr=True, locking=False) as f:
        data = f["/entry/data/data"][()]
        att = {k: v[()] for k, v in f["/entry/instrument/NDAttributes"].items()}
    assert data.shape == (n, *_shape(det)) and data.dtype == np.uint16
    assert np.all(np.diff(att["counter"]) == 1)
    assert [d["datum_kwargs"]["point_number"] for name, d in docs if name == "datum"] == list(range(n))
    # every frame is the forward model for the cell state the IOC recorded with it
    from strainstream.sim.cell import LatticePhase
    from strainstream.sim.cell import preset as cell_preset
    from strainstream.sim.xrd_frames import DetectorGeometry, XRDFrameSimulator

    rows = data.shape[1]
    sim = XRDFrameSimulator(DetectorGeometry.binned(2048 // rows))
    tm = dict(cell_preset("SC-NM91").transition_metals)
    seed = int(beamline.devices()["xrd_sim"].seed.get())
    noise = bool(beamline.devices()["xrd_sim"].noise.get())
    for i in range(n):
        phases = [LatticePhase(name=f"p{k}", **{f: float(att[f"phase{k}_{f}"][i]) for f in
                                               ("a_A", "c_A", "fraction", "microstrain", "size_nm",
                                                "li_occupancy")})
                  for k in range(int(att["n_phases"][i]))]
        expected = sim.frame(phases, seed=[seed, int(att["counter"][i])], noise=noise,
                             transition_metals=tm).image
        np.testing.assert_array_equal(data[i], expected)


def test_a_frame_the_plugin_did_not_write_fails_the_trigger_named(devs):
    """A frame the HDF5 plugin did not write (callbacks disabled mid-series, disk full) fails
    its trigger instead of shifting every later event onto the wrong frame."""
    det = devs["sxdm"]
    det.stage()
    try:
        det.trigger().wait(timeout=30)
        det.hdf1.enable.put("Disable", wait=True)
        with pytest.raises(RuntimeError, match=r"sxdm: the IOC did not write frame 1 to .*\.h5 "
                                               r"\(HDF1:NumCaptured_RBV = 1"):
            det.trigger().wait(timeout=30)
    finally:
        det.hdf1.enable.put("Enable", wait=True)
        det.unstage()


def test_stage_reads_the_whole_file_name_when_pyepics_remembers_a_shorter_one(devs):
    """pyepics asks a ``get(use_monitor=False)`` for as many elements as the PV's last monitor
    update held; while the monitor for a longer, new file name is still in flight, a plain read
    returns a prefix ('/' once in CI, and the run then failed with SeriesLost at its first
    frame). The detector reads its CHAR-waveform PVs whole."""
    from strainstream.devices._ioc import read_text

    det = devs["xrd"]
    pv = det.hdf1.full_file_name._read_pv
    det.stage()
    try:
        path = det._series_path
        assert path.endswith("_000000.h5") and len(path) > 20
        pv._args["count"] = 1  # the state pyepics is in before the new name's update arrives
        assert det.hdf1.full_file_name.get(use_monitor=False) == path[:1]  # pyepics' behaviour
        assert read_text(det.hdf1.full_file_name) == path
        det._check_series()  # compares the whole name: no SeriesLost
        det.trigger().wait(timeout=30)
    finally:
        det.unstage()
    pv._args["count"] = 1
    det.stage()  # a new series: its name is read whole too
    try:
        assert det._series_path.endswith("_000000.h5") and det._series_path != path
        assert read_text(det.hdf1.full_file_name) == det._series_path
    finally:
        det.unstage()


def test_runengine_count_documents_become_stream_documents(devs):
    """RunEngine documents of the IOC detector (Resource/Datum) become one StreamResource and
    one StreamDatum per event (strainstream.asset_docs), resolving to the file's frames."""
    from bluesky import RunEngine
    from bluesky.plans import count

    from strainstream.asset_docs import DatumToStream
    from strainstream.callbacks.base import FrameResolver

    det = devs["xrd"]
    shape = list(_shape(det))
    raw, docs = [], []
    RE = RunEngine({})
    convert = DatumToStream(lambda name, doc: docs.append((name, doc)))
    RE(count([det, devs["cycler"]], num=3), lambda name, doc: (raw.append(name), convert(name, doc)))
    assert raw.count("resource") == 1 and raw.count("datum") == 3
    names = [n for n, _ in docs]
    assert names.count("stream_resource") == 1 and names.count("stream_datum") == 3
    assert names.count("event") == 3 and "resource" not in names and "datum" not in names
    res = next(d for n, d in docs if n == "stream_resource")
    desc = next(d for n, d in docs if n == "descriptor")
    assert desc["data_keys"]["xrd_image"]["external"] == "STREAM:"
    assert desc["data_keys"]["xrd_image"]["shape"] == shape
    assert res["data_key"] == "xrd_image" and res["parameters"]["dataset"] == "/entry/data/data"
    path = res["uri"][len("file://localhost"):]
    resolver = FrameResolver()
    for n, d in docs:
        if n == "stream_resource":
            resolver.stream_resource(d)
        elif n == "stream_datum":
            resolver.stream_datum(d)
    with h5py.File(path, "r", swmr=True, locking=False) as f:
        data = f["/entry/data/data"][()]
    assert data.shape == (3, *shape)
    for s in (1, 2, 3):
        np.testing.assert_array_equal(resolver.read("xrd_image", s), data[s - 1])
    resolver.close()
    datums = [d for n, d in docs if n == "stream_datum"]
    assert [(d["seq_nums"]["start"], d["indices"]["start"]) for d in datums] == [(1, 0), (2, 1), (3, 2)]


def test_ring_current_dump_and_recovery(devs):
    b = devs["beam"]
    assert b.ring_current_mA.get(use_monitor=False) > 390
    b.dump(0.5).wait(5)
    assert wait_for(lambda: b.ring_current_mA.get() < 1.0, 5)
    assert wait_for(lambda: b.ring_current_mA.get() > 390, 10)
    b.shutter.open().wait(5)
    assert b.shutter.is_open
    assert b.read()["beam_shutter_status"]["value"] == "Open"  # monitor already updated
    b.shutter.close().wait(5)
    assert not b.shutter.is_open


def test_status_reports_answering_pvs(beamline, capsys):
    from strainstream.cli.beamline import status

    st = beamline.status()
    assert all(v is not None for r in st.values() for v in r.values())
    ports = ",".join(f"{n}={p}" for n, p in beamline.ports.items())
    assert status(["--ports", ports, "--json"]) == 0
    assert '"ok": true' in capsys.readouterr().out


def test_status_json_lists_every_device_with_its_stock_class(beamline):
    """Interface: ``strainstream beamline status --json`` with the client environment that
    ``beamline up --json`` prints lists every device: name, dotted class, PV prefix, connected."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, **beamline.client_env()}
    r = subprocess.run([sys.executable, "-m", "strainstream.cli", "beamline", "status", "--json",
                        "--prefix", beamline.prefix], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    devices = {d["name"]: d for d in json.loads(r.stdout)["devices"]}
    assert all(set(d) == {"name", "class", "prefix", "connected"} for d in devices.values())
    p = beamline.prefix
    for m in ("sample_x", "sample_y", "sample_z", "theta", "zp_z", "det_z", "sample_inout", "energy"):
        assert devices[m] == {"name": m, "class": "ophyd.epics_motor.EpicsMotor",
                              "prefix": f"{p}ES:{m}", "connected": True}
    for det, suffix in (("xrd", "XRD:"), ("sxdm", "SXDM:"), ("txm", "TXM:")):
        assert "AreaDetector" in devices[det]["class"] and devices[det]["connected"]
        assert devices[det]["prefix"] == p + suffix
    assert devices["cycler"]["connected"] and devices["beam"]["connected"]


def test_suspender_pauses_a_run_during_a_beam_dump(devs, capsys):
    import threading

    from bluesky import RunEngine
    from bluesky.plans import count
    from bluesky.suspenders import SuspendFloor

    b, cyc = devs["beam"], devs["cycler"]
    RE = RunEngine({})
    RE.install_suspender(SuspendFloor(b.ring_current_mA, 300.0, resume_thresh=390.0))
    events = []
    threading.Timer(0.3, lambda: b.dump(0.5)).start()
    RE(count([cyc], num=6, delay=0.2), lambda n, d: events.append(d) if n == "event" else None)
    # the dump suspended the run, which resumed once the current recovered and completed
    # all 6 points (the interrupted one is re-taken after the rewind)
    out = capsys.readouterr().out
    assert "Suspending" in out and "fell below 300.0" in out
    assert max(e["seq_num"] for e in events) == 6 and len(events) >= 6


def test_up_cli_runs_until_terminated(tmp_path):
    import json
    import signal
    import subprocess
    import sys

    from strainstream.beamline import probe

    code = "import sys; from strainstream.cli.beamline import up; sys.exit(up(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--write-dir", str(tmp_path / "d"), "--iocs", "beam",
         "--log-dir", str(tmp_path / "logs"), "--json"],
        stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        addr = info["addresses"]["beam"]
        assert info["prefixes"] == {"beam": ["SS:BEAM:"]}
        assert info["env"]["EPICS_CA_ADDR_LIST"] == addr
        pv = "SS:BEAM:ring_current_mA"
        assert probe([pv], [addr])[pv] > 0
        proc.send_signal(signal.SIGTERM)  # like a supervisor; Ctrl-C (SIGINT) works the same
        assert proc.wait(timeout=20) == 143  # 128 + SIGTERM
        assert probe([pv], [addr], timeout_s=0.3)[pv] is None  # the IOC is gone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_iocs_exit_when_their_parent_dies(tmp_path):
    import subprocess
    import sys

    code = ("import sys, time; from strainstream.beamline import Beamline; "
            "bl = Beamline(sys.argv[1], iocs=['beam']).start(); "
            "print(bl.iocs['beam'].proc.pid, flush=True); time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        pid = int(parent.stdout.readline())
        assert _alive(pid)
        parent.kill()  # no atexit, no cleanup: the IOC must notice by itself
        parent.wait()
        assert wait_for(lambda: not _alive(pid), 10), "orphaned IOC still running"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()


# -------------------------------------------------------------------- dead IOCs (last)
def test_missing_ioc_gives_a_named_error(beamline):
    from strainstream.devices._ioc import IOCNotAnswering
    from strainstream.devices.cycler import cycler

    dev = cycler("XX:", ioc_address="127.0.0.1:5064")
    with pytest.raises(IOCNotAnswering,
                       match=r"cycler IOC at 127\.0\.0\.1:5064 \(prefix XX:\) not answering: "
                             r"PV XX:CYC:\S+ timed out"):
        dev.wait_for_connection(timeout=0.5)


def test_killed_iocs_give_named_errors_and_come_back(beamline, devs):
    from strainstream.beamline import probe
    from strainstream.cli.beamline import status
    from strainstream.devices._ioc import IOCNotAnswering

    b, x, cyc = devs["beam"], devs["xrd"], devs["cycler"]
    b.read()
    x.stage()
    beamline.kill("beam")
    beamline.kill("cycler")
    try:
        # wait until the client has seen the circuits close: a put racing the disconnect
        # would otherwise wait for its own timeout (60 s) before failing
        assert wait_for(lambda: not x.cam.acquire.connected and not cyc.connected, 30)
        # a detector acquisition on a dead IOC: fails at once with the named error
        addr = beamline.addresses["cycler"]
        with pytest.raises(IOCNotAnswering, match=rf"cycler IOC at {addr} \(prefix SS:XRD:\) "
                                                  r"not answering: PV SS:XRD:cam1:Acquire"):
            x.trigger().wait(10)
        with pytest.raises(IOCNotAnswering, match=r"PV SS:CYC:\S+"):
            cyc.start_cc(20.0)
        with pytest.raises(IOCNotAnswering):
            x.unstage()
        # a monitored value read before the client noticed would still be the cached one
        assert wait_for(lambda: not b.connected, 10)
        addr = beamline.addresses["beam"]
        with pytest.raises(IOCNotAnswering,
                           match=rf"beam IOC at {addr} \(prefix SS:\) not answering: PV SS:BEAM:\S+"):
            b.read()
        with pytest.raises(IOCNotAnswering, match="beam IOC"):
            b.shutter.open()
        ports = ",".join(f"{n}={p}" for n, p in beamline.ports.items())
        assert status(["--ports", ports, "--timeout", "0.3"]) == 1
    finally:
        # the session's other tests need them: same ports, and wait for pyepics to reconnect
        beamline.restart("beam")
        beamline.restart("cycler")
    pv = "SS:BEAM:ring_current_mA"
    assert probe([pv], [beamline.addresses["beam"]])[pv] > 0
    assert wait_for(lambda: b.connected and cyc.connected and x.connected, 60, 0.2)
    assert b.ring_current_mA.get(use_monitor=False) > 0
    # the detector whose unstage failed with its IOC is whole again: stage, take, unstage
    x.stage()
    try:
        x.trigger().wait(30)
    finally:
        x.unstage()


def _reads(signal, value) -> bool:
    try:
        return signal.get(use_monitor=False) == value
    except Exception:  # not reconnected yet
        return False


def test_restart_with_options_swaps_the_coin_cell(beamline, devs):
    """``Beamline.restart(name, options)``: the cycler IOC comes back with another cell preset
    on the same address (the study demo's cell swap); clients reconnect by themselves."""
    cyc = devs["cycler"]
    before = cyc.preset.get(use_monitor=False)
    other = "PC-NC91" if before != "PC-NC91" else "SC-NC91"
    try:
        beamline.restart("cycler", {"--preset": other})
        assert wait_for(lambda: _reads(cyc.preset, other), 60, 0.2)
        assert beamline.iocs["cycler"].args.count("--preset") == 1  # replaced, not appended
    finally:
        beamline.restart("cycler", {"--preset": before})
    assert wait_for(lambda: _reads(cyc.preset, before) and devs["xrd"].connected, 60, 0.2)
