"""The beam gate of the endstation detectors (``TXM:SIM:BeamGate``, ``SXDM:SIM:BeamGate``).

With the gate on, the detectors see the beam IOC's photons: with the shutter closed (or the
ring current below ``SIM:BeamMin_mA``) the TXM camera records its dark current only (the
forward model's ``darks`` + read noise) and the SXDM photon counter records zeros; with the
shutter open the frames are the same as without the gate. Known answers: the forward models
of :mod:`strainstream.sim` (as in test_ioc_beamline.py). The session's beamline is shared:
every setting changed here is restored.
"""

from __future__ import annotations

import copy
from urllib.parse import urlparse

import h5py
import numpy as np
import pytest
from bluesky import RunEngine

from strainstream.devices.testing import wait_for

pytestmark = pytest.mark.system

DARK_COUNTS = 100.0  # simulate_txm_scan's dark level (the TXM camera's model)
READ_NOISE_COUNTS = 2.0


def _shape(det):
    size = det.cam.array_size
    return int(size.array_size_y.get()), int(size.array_size_x.get())


def _acquire(det, n=1):
    """Stage, trigger ``n`` times, unstage; return (frames (n, rows, cols), NDAttributes)."""
    det.stage()
    try:
        for _ in range(n):
            det.trigger().wait(timeout=60)
        docs = list(det.collect_asset_docs())
    finally:
        det.unstage()
    (_, resource), *datums = docs
    path = f"{resource['root'].rstrip('/')}/{resource['resource_path']}"
    index = [d["datum_kwargs"]["point_number"] for _, d in datums]
    with h5py.File(path, "r", swmr=True, locking=False) as f:
        frames = f["/entry/data/data"][index]
        att = {k: v[index] for k, v in f["/entry/instrument/NDAttributes"].items()}
    return frames, att


def _set_shutter(beam, sim, open_: bool) -> None:
    (beam.shutter.open() if open_ else beam.shutter.close()).wait(10)
    assert wait_for(lambda: sim.beam_on.get(use_monitor=False) == int(open_), 5), \
        f"{sim.name}.beam_on did not follow the shutter"


@pytest.fixture
def gated(sim_devices):
    """TXM and SXDM beam gates on; gates, noise, shutter and motors restored afterwards."""
    beam, es = sim_devices["beam"], sim_devices["es"]
    sims = (sim_devices["txm_sim"], sim_devices["sxdm_sim"])
    shutter_was_open = beam.shutter.is_open
    positions = {m: getattr(es, m).position for m in ("energy", "zp_z", "sample_inout", "sample_x",
                                                      "sample_y", "theta")}
    for sim in sims:
        sim.beam_gate.put(1, wait=True)  # completes once the IOC follows the beam IOC
    yield sim_devices
    for sim in sims:
        sim.beam_gate.put(0, wait=True)
        sim.beam_min_mA.put(1.0, wait=True)
        sim.noise.put(1, wait=True)
    (beam.shutter.open() if shutter_was_open else beam.shutter.close()).wait(10)
    for st in [getattr(es, m).set(p) for m, p in positions.items()]:
        st.wait(timeout=30)


def test_gate_controls_are_served_and_default_off(sim_devices):
    for key in ("xrd_sim", "sxdm_sim", "txm_sim"):
        sim = sim_devices[key]
        assert sim.beam_gate.get(use_monitor=False) == 0, f"{key}: the gate must default to off"
        assert sim.beam_min_mA.get(use_monitor=False) == pytest.approx(1.0)
        assert sim.beam_on.get(use_monitor=False) == 1
        assert sim.beam_gate.pvname.endswith(":SIM:BeamGate")  # simulation-only: under SIM:


def test_txm_closed_shutter_frames_are_the_dark_current(gated):
    from strainstream.sim.txm_images import particle_sample, simulate_txm_scan

    es, cam, beam, sim = gated["es"], gated["txm"], gated["beam"], gated["txm_sim"]
    shape = _shape(cam)
    es.sample_inout.set(5.0).wait(timeout=10)  # the flat field: the brightest image
    model = simulate_txm_scan(np.array([es.energy.position]), sample=particle_sample(shape),
                              zp_follows_focus=False, zp_position_m=es.zp_z.position / 1000.0,
                              drift_px_rms=0.0, noise=False)
    # shutter closed, no noise: exactly the model's dark current
    _set_shutter(beam, sim, False)
    sim.noise.put(0, wait=True)
    frames, att = _acquire(cam)
    np.testing.assert_allclose(frames[0], model.darks.astype(np.float32), rtol=1e-6)
    assert att["beam_on"].tolist() == [0.0]
    # with noise: dark + read noise (no shot noise: no photons)
    sim.noise.put(1, wait=True)
    frames, att = _acquire(cam, n=3)
    assert att["beam_on"].tolist() == [0.0] * 3
    residual = frames.astype(np.float64) - model.darks
    assert frames.mean() == pytest.approx(DARK_COUNTS, rel=0.02)
    assert abs(residual.mean()) < 0.2  # 3 × 64² pixels of N(0, 2): σ_mean ≈ 0.02 counts
    assert residual.std() == pytest.approx(READ_NOISE_COUNTS, rel=0.1)
    assert frames.mean() < 0.02 * model.flats[0].mean()
    # shutter open, no noise: the flat exactly as without the gate
    _set_shutter(beam, sim, True)
    sim.noise.put(0, wait=True)
    frames, att = _acquire(cam)
    np.testing.assert_allclose(frames[0], model.flats[0].astype(np.float32), rtol=1e-6)
    assert att["beam_on"].tolist() == [1.0]
    # a ring current below BeamMin_mA: no photons either
    sim.beam_min_mA.put(1.0e4, wait=True)
    assert wait_for(lambda: sim.beam_on.get(use_monitor=False) == 0, 5)
    frames, att = _acquire(cam)
    np.testing.assert_allclose(frames[0], model.darks.astype(np.float32), rtol=1e-6)
    assert att["beam_on"].tolist() == [0.0]


def test_sxdm_closed_shutter_frames_are_zero(gated):
    from strainstream.sim.sxdm_frames import particle_preset, simulate_sxdm

    es, det, beam, sim = gated["es"], gated["sxdm"], gated["beam"], gated["sxdm_sim"]
    shape = _shape(det)
    model = simulate_sxdm(particle_preset("SC-NM91", "charged", ny=32, nx=32), energy_keV=8.35,
                          shape=shape, drift_step_nm=0.0, noise=False, n_theta=21,
                          theta_range_deg=1.0)
    k, iy, ix = 10, 16, 14  # Bragg angle, near the particle centre: a bright peak
    step_um = model.particle.step_nm / 1000.0
    for st in (es.energy.set(8350.0), es.sample_x.set(ix * step_um), es.sample_y.set(iy * step_um),
               es.theta.set(float(model.theta_deg[k]))):
        st.wait(timeout=20)
    expected = model.frames_at(k)[iy, ix].astype(np.int64)
    assert expected.max() > 20
    _set_shutter(beam, sim, False)
    frames, att = _acquire(det, n=2)  # with counting noise: still nothing
    assert frames.dtype == np.uint32 and not frames.any()
    assert att["beam_on"].tolist() == [0.0, 0.0]
    _set_shutter(beam, sim, True)
    sim.noise.put(0, wait=True)
    frames, att = _acquire(det)
    assert att["beam_on"].tolist() == [1.0]
    assert np.abs(frames[0].astype(np.int64) - expected).max() <= 1  # as without the gate


def test_txm_xanes_darks_are_accepted_with_the_gate_on(gated):
    """A short txm_xanes run: the plan closes the shutter for its darks, the gated camera
    records its dark current, and the live analysis uses the dark frames."""
    from strainstream.asset_docs import DatumToStream
    from strainstream.callbacks.sinks import MemorySink
    from strainstream.callbacks.xanes import XANESCallback
    from strainstream.plans.xanes import ROLES, txm_xanes

    cam, es, beam = gated["txm"], gated["es"], gated["beam"]
    docs = []
    RE = RunEngine({})
    RE.subscribe(DatumToStream(lambda n, d: docs.append((n, copy.deepcopy(d)))))
    energies = [8338.0, 8344.0, 8350.0, 8356.0, 8362.0]  # the analysis needs >= 5
    params = {"bandwidth_eV": 3.0, "min_edge_jump": 0.05}
    RE(txm_xanes(cam, es, energies_eV=energies, n_darks=3, sample_out_mm=1.0, beam=beam,
                 md={"analysis_parameters": {"txm_xanes": params}}))
    assert docs[-1][1]["exit_status"] == "success"
    (res,) = [d for n, d in docs if n == "stream_resource"]
    with h5py.File(urlparse(res["uri"]).path, "r", swmr=True, locking=False) as f:
        frames = f[res["parameters"]["dataset"]][...]
        beam_on = f["/entry/instrument/NDAttributes/beam_on"][...]
    roles = [d["data"]["txm_role"] for n, d in docs if n == "event"]
    assert roles[:3] == [ROLES["dark"]] * 3
    np.testing.assert_array_equal(beam_on, [0.0] * 3 + [1.0] * 10)
    assert frames[:3].mean() == pytest.approx(DARK_COUNTS, rel=0.02)
    sink = MemorySink()
    cb = XANESCallback(sink, parameters=params)
    for n, d in docs:
        cb(n, d)
    s = sink.summary
    assert "analysis_error" not in s, s.get("analysis_error")
    assert s["n_dark"] == 3 and s["dark_source"] == "frames", s["dark_source"]
