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


def test_mock_ioc_detector_is_the_stock_areadetector_layout(mock_ok, tmp_path):
    from ophyd.areadetector import AreaDetector, HDF5Plugin, SingleTrigger
    from ophyd.areadetector.filestore_mixins import FileStoreHDF5IterativeWrite

    from strainstream.devices.detectors import ioc_detector, sim_controls

    det = ioc_detector("xrd", "SS:", write_dir=tmp_path, mock=True)
    assert isinstance(det, SingleTrigger) and isinstance(det, AreaDetector)
    assert isinstance(det.hdf1, HDF5Plugin) and isinstance(det.hdf1, FileStoreHDF5IterativeWrite)
    assert det.prefix == "SS:XRD:" and det.cam.prefix == "SS:XRD:cam1:"
    assert det.hdf1.prefix == "SS:XRD:HDF1:" and det.image_key == "xrd_image"
    assert str(det.hdf1.write_path_template) == str(tmp_path)
    assert det.hdf1.stage_sigs["file_write_mode"] == "Stream"
    sim = sim_controls("xrd", "SS:", mock=True)
    assert sim.prefix == "SS:XRD:SIM:" and sim.name == "xrd_sim"
    with pytest.raises(ValueError, match="unknown detector kind 'nope'"):
        ioc_detector("nope", mock=True)


def test_datum_to_stream_pairs_events_with_their_own_frames():
    """A frame taken for an event the RunEngine dropped (suspension) is never referenced: the
    next event's StreamDatum names the next frame of the file, with the event's seq_num."""
    from strainstream.asset_docs import DatumToStream

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
    with pytest.raises(ValueError, match="spec 'XSP3' is not one this pipeline reads"):
        conv("resource", {"uid": "T", "spec": "XSP3", "root": "/", "resource_path": "x",
                          "resource_kwargs": {}})
    with pytest.raises(KeyError, match="references datum nope"):
        conv("event", {"uid": "e9", "descriptor": "d", "seq_num": 9, "time": 0.0,
                       "data": {"img": "nope"}, "timestamps": {"img": 0.0}})


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


def test_sxdm_fast_draw_has_the_poisson_statistics_of_the_expected_frame():
    """The detector-rate draw (background spread by the Poisson–multinomial identity, the
    peak drawn in its box only) against its definition, rng.poisson(expected): per-pixel
    mean and variance over many frames, the total, and determinism per seed."""
    from strainstream.devices.ioc.endstation import (
        pixel_q_components,
        point_q,
        sxdm_point_counts,
        sxdm_point_expected,
    )
    from strainstream.sim.sxdm_frames import particle_preset, simulate_sxdm

    sim = simulate_sxdm(particle_preset(ny=12, nx=12), shape=(64, 64), n_theta=3,
                        theta_range_deg=0.4, drift_step_nm=0.0, noise=False)
    th = float(sim.theta_deg[1])
    q, point = pixel_q_components(sim, th), point_q(sim, 6, 6)
    lam = sxdm_point_expected(sim, 6, 6, th, q=q, point=point)
    assert lam.max() > 20 * sim.background_counts  # a real peak on a flat background
    rng = np.random.default_rng(7)
    n = 3000
    frames = np.stack([sxdm_point_counts(sim, 6, 6, th, rng, q=q, point=point) for _ in range(n)]).astype(float)
    assert frames.dtype == float and frames.shape == (n, 64, 64)
    mean, var = frames.mean(axis=0), frames.var(axis=0)
    z = np.abs(mean - lam) / np.sqrt(lam / n)
    assert z.max() < 5.5  # 4096 pixels: |z| of a correct mean stays below ~4.5
    assert abs(frames.sum(axis=(1, 2)).mean() - lam.sum()) < 4 * np.sqrt(lam.sum() / n)
    bg, peak = lam < 1.01 * sim.background_counts, lam > 10
    assert abs(var[bg].mean() / mean[bg].mean() - 1) < 0.02  # Poisson: variance = mean
    assert abs(var[peak].mean() / mean[peak].mean() - 1) < 0.05
    a = sxdm_point_counts(sim, 6, 6, th, np.random.default_rng([3, 9]), q=q, point=point)
    b = sxdm_point_counts(sim, 6, 6, th, np.random.default_rng([3, 9]))
    np.testing.assert_array_equal(a, b)
    # a point off the particle: background only
    off = sxdm_point_counts(sim, 0, 0, th, np.random.default_rng(1))
    assert off.dtype == np.uint32 and off.shape == (64, 64) and off.max() < 10


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
