"""operando_xrd against the simulated beamline's IOCs (cycler + XRD detector + beam)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from bluesky import RunEngine

from strainstream.asset_docs import DatumToStream
from strainstream.callbacks.sinks import MemorySink
from strainstream.callbacks.xrd import OperandoXRDCallback
from strainstream.plans.xrd import operando_xrd
from strainstream.sim.xrd_frames import DetectorGeometry, XRDFrameSimulator

pytestmark = pytest.mark.system


def _calibration(shape):
    geo = DetectorGeometry.binned(2048 // shape)
    sim = XRDFrameSimulator(geo)
    inst = 2 * np.pi / geo.wavelength_A * np.radians(sim.instrument_fwhm_2theta_deg)
    return dict(geo.to_dict(), instrument_fwhm_A_inv=inst)


@pytest.fixture(scope="module")
def charge_docs(sim_devices):
    cyc, det, beam = sim_devices["cycler"], sim_devices["xrd"], sim_devices["beam"]
    cyc.reset_cell().wait(10)
    cyc.accel.put(300.0, wait=True)  # a 2.7 -> 4.5 V charge at 200 mA/g in ~15 s
    docs = [("limit_hits_before", {"n": cyc.limit_hits.get()})]
    RE = RunEngine({})
    RE.subscribe(DatumToStream(lambda n, d: docs.append((n, copy.deepcopy(d)))))
    shape = int(det.cam.array_size.array_size_y.get())
    RE(operando_xrd(det, cyc, calibration=_calibration(shape), rate_mA_g=200.0,
                    frame_interval_s=0.4, max_frames=80, beam=beam, md={"sample": "test cell"}))
    return docs


def _run_docs(charge_docs):
    return [(n, d) for n, d in charge_docs if n != "limit_hits_before"]


def test_run_stops_at_the_voltage_limit_with_cycler_readings(charge_docs, sim_devices):
    hits_before = charge_docs[0][1]["n"]
    charge_docs = _run_docs(charge_docs)
    start = charge_docs[0][1]
    assert start["experiment"] == "operando_xrd" and start["rate_mA_g"] == 200.0
    assert start["calibration"]["wavelength_A"] == pytest.approx(0.1665)
    assert start["sample"] == "test cell"
    events = [d for n, d in charge_docs if n == "event"]
    assert 10 < len(events) < 80
    volts = [e["data"]["cycler_voltage_V"] for e in events]
    # ~2 simulated minutes pass between frames: the last ones bracket the 4.5 V limit, where
    # the cycler stopped (limit_hits) and the plan ended
    assert 4.3 < max(volts) <= 4.5 + 1e-6
    assert sim_devices["cycler"].limit_hits.get() > hits_before
    assert np.all(np.diff([e["data"]["cycler_capacity_mAh_g"] for e in events]) >= 0)
    assert sum(n == "stream_datum" for n, _ in charge_docs) == len(events)
    assert charge_docs[-1][1]["exit_status"] == "success"
    assert sim_devices["cycler"].mode_rbv.get() == "REST"


def test_live_analysis_follows_h2_then_h3(charge_docs):
    sink = MemorySink()
    cb = OperandoXRDCallback(sink)
    for n, d in _run_docs(charge_docs):
        cb(n, d)
    good = [r for r in sink.rows if not r["flag"]]
    assert len(good) == len(sink.rows)
    c = np.array([r["c_A"] if r["n_phases"] == 1 else max(r["c_A"], r["c_A_2"]) for r in good])
    assert c[0] == pytest.approx(14.19, abs=0.03)      # pristine
    assert c.max() == pytest.approx(14.45, abs=0.04)   # H2
    assert good[-1]["c_A"] < 13.8                      # H3 after the collapse
    assert sink.summary["max_delta_c_A"] > 0.5         # H2/H3 coexistence seen (SC-NM91)
    assert np.all(np.diff([r["a_A"] for r in good]) < 2e-3)  # a shrinks (within noise)
