"""sxdm_map and find_bragg against the simulated beamline's endstation IOC (motors + SXDM
detector + beam): events, metadata, raster bookkeeping and live maps of the IOC's particle."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from bluesky import RunEngine

from strainstream.asset_docs import DatumToStream
from strainstream.callbacks.router import make_callbacks
from strainstream.callbacks.sinks import MemorySink
from strainstream.plans.sxdm import find_bragg, sxdm_map
from strainstream.sim.sxdm_frames import particle_preset
from strainstream.sxdm import GEOMETRY_KEYS

pytestmark = pytest.mark.system

NX = NY = 4
N_THETA = 9
STEP_UM = 0.05
# the IOC's particle (32×32 raster, beam at raster point (y, x) = positions / step): a 4×4
# window inside it with mild tilts, so the peak stays off the border of the test beamline's
# small 32² detector crop (it holds the peak to ±3σ only)
Y0, X0 = 10, 21
X_CENTER_UM, Y_CENTER_UM = (X0 + 1.5) * STEP_UM, (Y0 + 1.5) * STEP_UM
PARAMS = {"register": False}  # no drift to register on a 4×4 raster


def _theta_bragg(energy_eV):
    from strainstream.devices.ioc.endstation import theta_bragg_deg

    return theta_bragg_deg(energy_eV)


@pytest.fixture(scope="module")
def map_docs(sim_devices):
    det, es, beam = sim_devices["sxdm"], sim_devices["es"], sim_devices["beam"]
    beam.shutter.open().wait(10)
    energy = float(es.energy.position)
    docs = []
    RE = RunEngine({})
    RE.subscribe(DatumToStream(lambda n, d: docs.append((n, copy.deepcopy(d)))))
    RE(sxdm_map(det, es, theta_center_deg=round(_theta_bragg(energy), 4), theta_half_range_deg=0.4,
                n_theta=N_THETA, x_center_um=X_CENTER_UM, y_center_um=Y_CENTER_UM, nx=NX, ny=NY,
                step_nm=50.0, beam=beam,
                md={"sample": "SC-NM91 charged", "analysis_parameters": {"sxdm": PARAMS}}))
    return docs, energy


def test_events_and_metadata(map_docs, sim_devices):
    docs, energy = map_docs
    start = docs[0][1]
    assert start["experiment"] == "sxdm" and start["plan_name"] == "sxdm_map"
    assert set(GEOMETRY_KEYS) <= set(start)
    assert start["energy_keV"] == pytest.approx(energy / 1000.0)
    assert start["hkl"] == [0, 0, 3] and start["step_nm"] == 50.0
    assert start["num_points"] == N_THETA * NY * NX and len(start["theta_deg"]) == N_THETA
    assert start["raster"]["nx"] == NX and start["sxdm_keys"]["frames"] == "sxdm_image"
    events = [d for n, d in docs if n == "event"]
    assert len(events) == N_THETA * NY * NX
    assert sum(n == "stream_datum" for n, _ in docs) == len(events)
    assert docs[-1][1]["exit_status"] == "success"
    for ev in events:  # positions and θ follow from the recorded indices
        d = ev["data"]
        assert d["es_sample_x"] == pytest.approx(X_CENTER_UM + (d["sxdm_ix"] - 1.5) * STEP_UM, abs=1e-6)
        assert d["es_sample_y"] == pytest.approx(Y_CENTER_UM + (d["sxdm_iy"] - 1.5) * STEP_UM, abs=1e-6)
        assert d["es_theta"] == pytest.approx(start["theta_deg"][d["sxdm_itheta"]], abs=1e-5)
    assert [e["data"]["sxdm_ix"] for e in events[:2 * NX]] == [0, 1, 2, 3, 3, 2, 1, 0]  # snake


def test_live_maps_of_the_ioc_particle(map_docs):
    docs, _ = map_docs
    sinks = {}
    (cb,) = make_callbacks(docs[0][1], lambda name: sinks.setdefault(name, MemorySink()))
    assert cb.name == "sxdm" and cb.parameters == PARAMS
    for n, d in docs:
        cb(n, d)
    sink = sinks["sxdm"]
    assert len(sink.rows) == N_THETA * NY * NX and not any(r["flag"] for r in sink.rows)
    a = sink.arrays
    assert a["mask"].all(), (a["flags"], sink.summary["message"])  # all inside the particle
    pt = particle_preset("SC-NM91", "charged", ny=32, nx=32)
    y, x = np.meshgrid(np.arange(Y0, Y0 + 4.0), np.arange(X0, X0 + 4.0), indexing="ij")
    truth = pt.fields(y, x)
    # measured: max |Δd/d| 1.5e-5, |Δθxy| 0.0016°, |Δθxz| 0.0008° (Poisson noise on)
    np.testing.assert_allclose(a["d_spacing_A"], truth["d_spacing_A"], rtol=1e-4)
    np.testing.assert_allclose(a["tilt_xy_deg"], truth["tilt_xy_deg"], atol=0.005)
    np.testing.assert_allclose(a["tilt_xz_deg"], truth["tilt_xz_deg"], atol=0.005)
    assert sink.summary["n_pixels"] == NX * NY
    assert sink.summary["angles_done"] == N_THETA


def test_find_bragg_finds_the_peak(sim_devices):
    det, es = sim_devices["sxdm"], sim_devices["es"]
    energy = float(es.energy.position)
    es.sample_x.set(X_CENTER_UM).wait(10)
    es.sample_y.set(Y_CENTER_UM).wait(10)
    RE = RunEngine({}, call_returns_result=True)
    tb = _theta_bragg(energy)
    theta_before = float(es.theta.position)
    res = RE(find_bragg(det, es, theta_center_deg=round(tb + 0.12, 4), half_range_deg=0.4, num=9))
    assert res.plan_result == pytest.approx(tb, abs=0.06)
    assert es.theta.position == pytest.approx(theta_before, abs=1e-4)  # θ went back


def test_shutter_closed_mid_map_suspends_and_retakes_the_point(sim_devices):
    import threading

    det, es, beam = sim_devices["sxdm"], sim_devices["es"], sim_devices["beam"]
    beam.shutter.open().wait(10)
    energy = float(es.energy.position)
    docs = []
    RE = RunEngine({})

    def close_and_reopen():
        beam.shutter.close().wait(10)
        threading.Timer(1.0, lambda: beam.shutter.open()).start()

    def record(name, doc):  # the shutter closes once the map is under way (after 3 points)
        docs.append((name, doc))
        if name == "event" and sum(n == "event" for n, _ in docs) == 3:
            threading.Thread(target=close_and_reopen, daemon=True).start()

    RE.subscribe(DatumToStream(record))
    RE(sxdm_map(det, es, theta_center_deg=round(_theta_bragg(energy), 4), theta_half_range_deg=0.1,
                n_theta=2, x_center_um=X_CENTER_UM, y_center_um=Y_CENTER_UM, nx=3, ny=3, beam=beam))
    events = [d for n, d in docs if n == "event"]
    points = [(e["data"]["sxdm_itheta"], e["data"]["sxdm_iy"], e["data"]["sxdm_ix"]) for e in events]
    assert sorted(points) == [(t, y, x) for t in range(2) for y in range(3) for x in range(3)]
    assert max(np.diff([e["time"] for e in events])) > 1.0  # it did pause
    assert sum(n == "stream_datum" for n, _ in docs) == len(events)
    assert docs[-1][1]["exit_status"] == "success"


def test_map_opens_a_closed_shutter_and_leaves_it_as_found(sim_devices):
    """Started with the shutter closed, the map opens it (a closed shutter would suspend the
    run for ever), takes every point, and closes it again at the end (#21 point 7)."""
    det, es, beam = sim_devices["sxdm"], sim_devices["es"], sim_devices["beam"]
    beam.shutter.close().wait(10)
    energy = float(es.energy.position)
    docs = []
    RE = RunEngine({})
    RE.subscribe(DatumToStream(lambda n, d: docs.append((n, d))))
    try:
        RE(sxdm_map(det, es, theta_center_deg=round(_theta_bragg(energy), 4), theta_half_range_deg=0.1,
                    n_theta=2, x_center_um=X_CENTER_UM, y_center_um=Y_CENTER_UM, nx=2, ny=1,
                    step_nm=50.0, beam=beam))
        names = [n for n, _ in docs]
        assert names.count("event") == 4 and names[-1] == "stop"
        assert docs[-1][1]["exit_status"] == "success"
        assert beam.shutter.status.get(use_monitor=False) == "Closed"
    finally:
        beam.shutter.open().wait(10)
