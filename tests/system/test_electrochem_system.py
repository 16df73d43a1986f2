"""operando_cycling end to end: simulated beamline → RunEngine → tiled → worker → results, replay.

Time-compressed (the cycler's ``accel``), 256² frames. The worker gives the run both
analyses (router): ``operando_xrd`` per frame and ``cycling`` per cycle; a replay through
the same callbacks equals the stored results bit for bit. (The beam-loss suspension of this
plan is exercised in tests/plans/test_electrochem_plans.py.)
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from strainstream.datadir import detector_dir
from strainstream.demo import wait_for_results
from strainstream.plans.electrochem import operando_cycling
from strainstream.replay import replay_run
from strainstream.session import make_session
from strainstream.sim.cell import preset
from strainstream.sim.xrd_frames import DetectorGeometry, XRDFrameSimulator

pytestmark = pytest.mark.system

N_CYCLES = 2


def _calibration(shape):
    geo = DetectorGeometry.binned(2048 // shape)
    sim = XRDFrameSimulator(geo)
    inst = 2 * np.pi / geo.wavelength_A * np.radians(sim.instrument_fwhm_2theta_deg)
    return dict(geo.to_dict(), instrument_fwhm_A_inv=inst)


def test_cycling_live_analysis_and_replay(sim_beamline, sim_devices, tiled_server, worker_factory, tmp_path):
    worker_factory()
    det = sim_beamline.devices(write_dir=detector_dir(tiled_server.data_dir))["xrd"]
    det.wait_for_connection(timeout=30)
    cyc, beam = sim_devices["cycler"], sim_devices["beam"]
    cyc.reset_cell().wait(10)
    cyc.accel.put(5000.0, wait=True)  # a 100 mA/g half cycle in ~2 s
    session = make_session(tiled_server.uri, tiled_server.api_key, progress=False,
                           spool_dir=tmp_path / "spool")
    shape = int(det.cam.array_size.array_size_y.get())
    t0 = time.monotonic()
    try:
        (uid,) = session.RE(operando_cycling(
            det, cyc, calibration=_calibration(shape), n_cycles=N_CYCLES, rate_mA_g=100.0,
            xrd_interval_s=6000.0, poll_s=0.1, beam=beam, md={"sample": "system cycling"}))
    finally:
        cyc.accel.put(600.0, wait=True)
        session.close(30.0)
    root = tiled_server.client()
    t1 = time.monotonic()
    live = wait_for_results(root, uid, 0, timeout_s=60)
    t2 = time.monotonic()
    assert set(live["analyses"]) == {"operando_xrd", "cycling"}
    cyc_entry, xrd_entry = live["analyses"]["cycling"], live["analyses"]["operando_xrd"]
    assert cyc_entry["status"] == "complete" and cyc_entry["n_rows"] == N_CYCLES
    cols = cyc_entry["columns"]
    assert cols["cycle"] == list(range(1, N_CYCLES + 1))
    r100 = preset("SC-NM91").retention_100_cycles
    np.testing.assert_allclose(cols["retention"], r100 ** (np.arange(N_CYCLES) / 100.0), atol=0.005)
    assert cols["coulombic_efficiency"][0] < 0.995
    np.testing.assert_allclose(cols["coulombic_efficiency"][1:], 1.0, atol=0.005)
    # a and c of every frame next to the cycling table, with the cycler readings beside them
    assert xrd_entry["status"] == "complete" and xrd_entry["n_rows"] >= 2 * N_CYCLES + 1
    assert not any(xrd_entry["columns"]["flag"])
    c = [v for v in xrd_entry["columns"]["c_A"] if v is not None and math.isfinite(v)]
    assert len(c) == xrd_entry["n_rows"] and 13.4 < min(c) and max(c) < 14.6
    assert all(v is not None for v in xrd_entry["columns"]["voltage_V"])
    # replay through the same callbacks: bit for bit
    assert replay_run(root[uid]) == live
    print(f"cycling system test: {xrd_entry['n_rows']} frames, run {t1 - t0:.1f} s, worker done "
          f"{t2 - t1:.1f} s later, replay {time.monotonic() - t2:.1f} s")
