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

    from strainstream.devices.motors import motor

    m = motor("SS:", "sample_x", mock=True)
    m.high_limit.sim_put(10.0)
    m.low_limit.sim_put(-10.0)
    m.units.sim_put("um")
    assert m.prefix == "SS:ES:sample_x" and m.name == "sample_x"
    assert m.limits == (-10.0, 10.0)
    with pytest.raises(LimitError, match=r"sample_x: target 20 um is outside the soft limits "
                                         r"\[-10, 10\] um"):
        m.check_value(20.0)
    m.check_value(9.5)
    with pytest.raises(ValueError, match="unknown motor 'nope'"):
        motor("SS:", "nope", mock=True)


def test_mock_ioc_detector_emits_stream_resource_and_datum(mock_ok, tmp_path):
    from strainstream.devices.detectors import ioc_detector

    det = ioc_detector("xrd", "SS:", write_dir=tmp_path, mock=True)
    assert det.prefix == "SS:XRD:"
    det.file_name.sim_put(str(tmp_path / "xrd_1.h5"))
    det.rows.sim_put(16)
    det.cols.sim_put(8)
    det.stage()
    assert det.file_dir.get() == str(tmp_path)
    det.frame_count.sim_put(1)
    det.trigger().wait(timeout=5)
    det.frame_count.sim_put(2)
    det.trigger().wait(timeout=5)
    docs = list(det.collect_asset_docs())
    det.unstage()
    assert [n for n, _ in docs] == ["stream_resource", "stream_datum", "stream_datum"]
    res = docs[0][1]
    assert res["uri"] == f"file://localhost{tmp_path / 'xrd_1.h5'}"
    assert res["data_key"] == "xrd_image"
    assert res["parameters"] == {"dataset": "/entry/data/data", "chunk_shape": [1, 16, 8],
                                 "swmr": True}
    assert [d["indices"] for _, d in docs[1:]] == [{"start": 0, "stop": 1}, {"start": 1, "stop": 2}]
    desc = det.describe()["xrd_image"]
    assert desc["shape"] == [16, 8] and desc["external"] == "STREAM:"
    assert desc["dtype_numpy"] == np.dtype("uint16").str


def test_mock_detector_reports_a_frame_the_ioc_did_not_write(mock_ok, tmp_path):
    from strainstream.devices.detectors import ioc_detector

    det = ioc_detector("sxdm", "SS:", mock=True)
    det.file_name.sim_put("/x/sxdm.h5")
    det.rows.sim_put(4)
    det.cols.sim_put(4)
    det.status_message.sim_put("error: disk full")
    det.stage()
    st = det.trigger()  # frame counter stays 0
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
    assert {"T:CYC:voltage_V", "T:CYC:start", "T:XRD:Acquire", "T:XRD:FullFileName_RBV"} <= set(cyc.pvdb)
    es = endstation.build("T:", sxdm_shape=16, txm_shape=16)
    for m in ("sample_x", "sample_y", "sample_z", "theta", "zp_z", "det_z", "sample_inout", "energy"):
        for f in ("VAL", "RBV", "DMOV", "MOVN", "VELO", "HLM", "LLM", "STOP", "EGU"):
            assert f"T:ES:{m}.{f}" in es.pvdb
    assert "T:SXDM:Acquire" in es.pvdb and "T:TXM:Capture" in es.pvdb
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
