"""Unit tests of the beamline devices without any IOC: mock (fake-signal) devices, the IOC
PV layout, the SXDM single-point model, the HDF5 per-frame scalars, and the launcher's
argument handling."""

from __future__ import annotations

import tempfile

import h5py
import numpy as np
import pytest


@pytest.fixture
def mock_ok(tmp_path, monkeypatch):
    # importing ophyd.sim leaves a temporary directory behind: keep it in tmp_path
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    yield


def test_mock_motor_refuses_targets_outside_the_limits(mock_ok):
    from ophyd.utils.errors import LimitError

    from strainstream.devices.motors import MOTOR_NAMES, endstation, motor

    m = motor("SS:", "sample_x", mock=True)
    m.user_setpoint.sim_set_limits((-10.0, 10.0))
    m.motor_egu.sim_put("um")
    assert m.prefix == "SS:ES:sample_x" and m.name == "sample_x"
    assert m.limits == (-10.0, 10.0)
    with pytest.raises(LimitError, match=r"sample_x: target 20 um is outside the soft limits "
                                         r"\[-10, 10\] um \(SS:ES:sample_x.HLM/.LLM\); move refused"):
        m.set(20.0)
    with pytest.raises(LimitError, match="target nan"):
        m.check_value(float("nan"))
    m.check_value(9.5)
    with pytest.raises(ValueError, match="unknown motor 'nope'"):
        motor("SS:", "nope", mock=True)
    # the container's motors are EpicsMotors (fakes here) with the same named check
    es = endstation("SS:", mock=True)
    assert es.component_names == MOTOR_NAMES
    assert [getattr(es, n).prefix for n in MOTOR_NAMES] == [f"SS:ES:{n}" for n in MOTOR_NAMES]
    es.det_z.user_setpoint.sim_set_limits((300.0, 2000.0))
    es.det_z.motor_egu.sim_put("mm")
    with pytest.raises(LimitError, match=r"es_det_z: target 5000 mm is outside the soft limits \[300, 2000\] mm"):
        es.det_z.check_value(5000.0)


def test_motors_are_stock_epics_motors():
    # (no real device here: a pyepics context made now would miss the session's IOC ports;
    # tests/devices/test_motor_record.py checks the factory's instances)
    from ophyd import EpicsMotor

    from strainstream.devices.motors import Endstation

    assert f"{EpicsMotor.__module__}.{EpicsMotor.__qualname__}" == "ophyd.epics_motor.EpicsMotor"
    assert all(getattr(Endstation, n).cls is EpicsMotor for n in Endstation.component_names)


def _mock_staged_detector(kind, tmp_path, rows=16, cols=8):
    from strainstream.devices.detectors import ioc_detector

    det = ioc_detector(kind, "SS:", write_dir=tmp_path, mock=True)
    det.cam.array_size.array_size_y.sim_put(rows)
    det.cam.array_size.array_size_x.sim_put(cols)
    det.cam.num_images.sim_put(1)
    det.cam.data_type.sim_put("UInt16")
    det.hdf1.plugin_type.sim_put("NDFileHDF5")
    det.hdf1.array_size.width.sim_put(cols)
    det.hdf1.array_size.height.sim_put(rows)
    det.hdf1.file_path_exists.sim_put(1)
    det.hdf1.full_file_name.sim_put(str(tmp_path / f"{kind}_000000.h5"))
    det.stage()
    return det


def test_mock_ioc_detector_emits_resource_and_one_datum_per_frame(mock_ok, tmp_path):
    from strainstream.callbacks.assets import DatumToStream

    det = _mock_staged_detector("xrd", tmp_path)
    assert det.prefix == "SS:XRD:" and det.cam.prefix == "SS:XRD:cam1:"
    assert det.hdf1.prefix == "SS:XRD:HDF1:"
    assert det.hdf1.file_path.get() == f"{tmp_path}/"
    assert det.hdf1.file_write_mode.get() == "Stream" and det.hdf1.capture.get() == 1
    det.hdf1.num_captured.sim_put(1)
    det.trigger().wait(timeout=5)
    ev1 = det.read()["xrd_image"]["value"]
    det.hdf1.num_captured.sim_put(2)
    det.trigger().wait(timeout=5)
    ev2 = det.read()["xrd_image"]["value"]
    docs = list(det.collect_asset_docs())
    desc = det.describe()["xrd_image"]
    det.unstage()
    assert [n for n, _ in docs] == ["resource", "datum", "datum"]
    res = docs[0][1]
    assert res["spec"] == "AD_HDF5" and res["resource_kwargs"] == {"frame_per_point": 1}
    assert [d["datum_kwargs"] for _, d in docs[1:]] == [{"point_number": 0}, {"point_number": 1}]
    assert [d["datum_id"] for _, d in docs[1:]] == [ev1, ev2]
    assert desc["shape"] == (1, 16, 8) and desc["external"] == "FILESTORE:"
    # what tiled and the worker get: one StreamResource, each event paired with its datum
    out = []
    conv = DatumToStream(lambda n, d: out.append((n, d)))
    conv("start", {"uid": "r1"})
    conv("descriptor", {"uid": "d1", "run_start": "r1", "name": "primary",
                        "data_keys": {"xrd_image": desc}})
    for name, doc in docs:
        conv(name, doc)
    conv("datum", {"datum_id": "stale", "resource": res["uid"],
                   "datum_kwargs": {"point_number": 2}})  # a frame no event kept
    for seq, datum_id in ((1, ev1), (2, ev2)):
        conv("event", {"uid": f"e{seq}", "descriptor": "d1", "seq_num": seq, "time": 0.0,
                       "data": {"xrd_image": datum_id}, "timestamps": {"xrd_image": 0.0}})
    conv("stop", {"uid": "s1", "run_start": "r1"})
    names = [n for n, _ in out]
    assert names == ["start", "descriptor", "event", "stream_resource", "stream_datum", "event",
                     "stream_datum", "stop"]
    d = out[1][1]["data_keys"]["xrd_image"]
    assert d["external"] == "STREAM:" and d["shape"] == [16, 8]
    sres = out[3][1]
    assert sres["uri"] == f"file://localhost{tmp_path / 'xrd_000000.h5'}" or \
        sres["uri"].startswith("file://localhost" + str(tmp_path))
    assert sres["parameters"] == {"dataset": "/entry/data/data", "chunk_shape": [1, 16, 8],
                                  "swmr": True}
    assert [(x["seq_nums"]["start"], x["indices"]["start"]) for n, x in out if n == "stream_datum"] \
        == [(1, 0), (2, 1)]
    assert "xrd_image" not in out[2][1]["data"]


def test_datum_to_stream_pairs_events_with_their_own_frames():
    """A frame taken for an event the RunEngine dropped (suspension) is never referenced: the
    next event's StreamDatum names the next frame of the file, with the event's seq_num."""
    from strainstream.callbacks.assets import DatumToStream

    out = []
    conv = DatumToStream(lambda n, d: out.append((n, d)))
    conv("start", {"uid": "r"})
    conv("descriptor", {"uid": "d", "run_start": "r", "name": "primary", "data_keys": {
        "img": {"source": "PV:X", "dtype": "array", "shape": [1, 4, 4], "external": "FILESTORE:"}}})
    conv("resource", {"uid": "R", "spec": "AD_HDF5", "root": "/data", "resource_path": "f.h5",
                      "resource_kwargs": {"frame_per_point": 1}, "path_semantics": "posix",
                      "run_start": "r"})
    for p in range(4):
        conv("datum", {"datum_id": f"R/{p}", "resource": "R", "datum_kwargs": {"point_number": p}})
    for seq, p in ((1, 0), (2, 2), (3, 3)):  # frame 1 was taken for a dropped event
        conv("event", {"uid": f"e{seq}", "descriptor": "d", "seq_num": seq, "time": 0.0,
                       "data": {"img": f"R/{p}"}, "timestamps": {"img": 0.0}})
    sd = [d for n, d in out if n == "stream_datum"]
    assert [(d["seq_nums"], d["indices"]) for d in sd] == [
        ({"start": 1, "stop": 2}, {"start": 0, "stop": 1}),
        ({"start": 2, "stop": 3}, {"start": 2, "stop": 3}),
        ({"start": 3, "stop": 4}, {"start": 3, "stop": 4})]
    (sres,) = [d for n, d in out if n == "stream_resource"]
    assert sres["uri"] == "file://localhost/data/f.h5"
    with pytest.raises(ValueError, match="spec 'AD_TIFF' is not one this pipeline reads"):
        conv("resource", {"uid": "T", "spec": "AD_TIFF", "root": "/", "resource_path": "x",
                          "resource_kwargs": {}})
    with pytest.raises(KeyError, match="references datum nope"):
        conv("event", {"uid": "e9", "descriptor": "d", "seq_num": 9, "time": 0.0,
                       "data": {"img": "nope"}, "timestamps": {"img": 0.0}})


def test_mock_detector_reports_a_frame_the_ioc_did_not_write(mock_ok, tmp_path):
    det = _mock_staged_detector("sxdm", tmp_path, 4, 4)
    det.hdf1.write_message.sim_put("disk full")
    st = det.trigger()  # NumCaptured_RBV stays 0
    with pytest.raises(RuntimeError, match="did not write frame 0.*disk full"):
        st.wait(timeout=5)
    det.unstage()


def test_sim_frame_detector_unchanged(tmp_path):
    from strainstream.devices.detectors import sim_frame_detector

    det = sim_frame_detector("det", tmp_path, frame_shape=(8, 8))
    det.stage()
    for _ in range(2):
        det.trigger().wait(1)
    docs = list(det.collect_asset_docs())
    det.unstage()
    assert [n for n, _ in docs] == ["stream_resource", "stream_datum", "stream_datum"]
    with h5py.File(docs[0][1]["uri"][len("file://localhost"):], "r") as f:
        assert f["/entry/data/data"].shape == (2, 8, 8)


def test_ioc_not_answering_message():
    from strainstream.devices._ioc import IOCNotAnswering

    e = IOCNotAnswering("cycler", "127.0.0.1:5064", "XX:", "XX:CYC:voltage_V")
    assert str(e) == ("cycler IOC at 127.0.0.1:5064 (prefix XX:) not answering: "
                      "PV XX:CYC:voltage_V timed out")
    assert isinstance(e, TimeoutError)


def test_h5_writer_per_frame_scalars(tmp_path):
    from strainstream.devices._hdf5 import ATTRIBUTES, DATASET, H5FrameWriter

    with H5FrameWriter(tmp_path / "a.h5", (2, 3), "uint16", scalar_keys=("soc", "t")) as w:
        w.append(np.ones((2, 3)), {"soc": 0.25, "t": 1.0})
        w.append(np.ones((2, 3)), {"soc": 0.5})
        with pytest.raises(ValueError, match=r"unknown per-frame scalars \['x'\]"):
            w.append(np.ones((2, 3)), {"x": 1.0})
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f[DATASET].shape[0] == 2  # the refused frame was not written
        np.testing.assert_array_equal(f[f"{ATTRIBUTES}/soc"][:2], [0.25, 0.5])
        assert f[f"{ATTRIBUTES}/t"][0] == 1.0 and np.isnan(f[f"{ATTRIBUTES}/t"][1])


def test_ioc_pv_layout():
    from strainstream.devices.ioc import beam, cycler, endstation

    cyc = cycler.build("T:", xrd_shape=128)
    assert {"T:CYC:voltage_V", "T:CYC:start", "T:XRD:cam1:Acquire", "T:XRD:HDF1:FullFileName_RBV",
            "T:XRD:SIM:Sample"} <= set(cyc.pvdb)
    es = endstation.build("T:", sxdm_shape=16, txm_shape=16)
    for m in ("sample_x", "sample_y", "sample_z", "theta", "zp_z", "det_z", "sample_inout", "energy"):
        record = es.pvdb[f"T:ES:{m}"]  # a motor record: fields served as T:ES:<m>.<FIELD>
        assert record.field_inst.record_type.value == "motor"
        for f in ("VAL", "RBV", "DMOV", "MOVN", "STOP", "SPMG", "VELO", "ACCL", "HLM", "LLM", "HLS",
                  "LLS", "EGU", "DIR", "OFF", "SET", "FOFF", "MSTA", "TDIR", "CNEN", "HOMF", "HOMR",
                  "DESC"):
            assert record.get_field(f) is not None
    assert "T:SXDM:cam1:Acquire" in es.pvdb and "T:TXM:HDF1:Capture" in es.pvdb
    assert {"T:BEAM:ring_current_mA", "T:BEAM:shutter", "T:BEAM:dump"} <= set(beam.build("T:").pvdb)
    with pytest.raises(ValueError, match="divide 2048"):
        cycler.build("T:", xrd_shape=100)


def test_sxdm_single_point_model_equals_the_raster_model():
    from strainstream.devices.ioc.endstation import sxdm_point_expected
    from strainstream.sim.sxdm_frames import particle_preset, simulate_sxdm

    sim = simulate_sxdm(particle_preset(ny=12, nx=12), shape=(24, 24), n_theta=5,
                        theta_range_deg=0.4, drift_step_nm=0.0, noise=False)
    for k in (0, 2, 4):
        full = sim.expected_frames(k)
        for iy, ix in ((6, 6), (3, 8), (0, 0)):
            got = sxdm_point_expected(sim, iy, ix, sim.theta_deg[k])
            np.testing.assert_allclose(got, full[iy, ix], rtol=1e-9, atol=1e-9)


def test_beamline_arguments_without_starting(tmp_path, monkeypatch, capsys):
    from strainstream.beamline import Beamline
    from strainstream.beamline import parse_ports as _parse_ports
    from strainstream.cli.beamline import status
    from strainstream.supervisor import find_free_port as free_port

    bl = Beamline(tmp_path, ports={"cycler": 5999}, iocs=["cycler", "beam"], set_env=False)
    assert bl.addresses["cycler"] == "127.0.0.1:5999"
    assert bl.ports["beam"] != 5999
    env = bl.client_env()
    assert env["EPICS_CA_AUTO_ADDR_LIST"] == "NO"
    assert env["EPICS_CA_ADDR_LIST"].split() == [f"127.0.0.1:{p}" for p in bl.ports.values()]
    assert bl.pv_prefixes() == {"cycler": ["SS:CYC:", "SS:XRD:"], "beam": ["SS:BEAM:"]}
    bl.__exit__(None, None, None)
    with pytest.raises(ValueError, match="unknown IOC"):
        Beamline(tmp_path, iocs=["motors"])
    assert _parse_ports("cycler=5064,beam=5066") == {"cycler": 5064, "beam": 5066}
    with pytest.raises(ValueError, match="--ports wants name=port"):
        _parse_ports("cycler:5064")
    assert 0 < free_port() < 65536
    monkeypatch.delenv("EPICS_CA_ADDR_LIST", raising=False)
    assert status([]) == 2
    assert "give --ports or set EPICS_CA_ADDR_LIST" in capsys.readouterr().err
