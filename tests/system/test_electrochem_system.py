"""The electrochemical protocols end to end: simulated beamline → RunEngine → tiled → worker →
results, replay — operando_cycling and rate_series in one test, operando_gitt in another.

Time-compressed (the cycler's ``accel``), 256² frames. The worker gives a cycling run both
analyses (router): ``operando_xrd`` per frame and ``cycling`` per cycle; a GITT run
``operando_xrd`` and ``gitt``; each run of a rate series ``operando_xrd``. Every plan meets
a beam dump (the cell goes on): cycling and rate series are suspended, GITT's pulse and
cycler record go on and its relaxed frame waits for the beam; a replay through the same
callbacks equals the stored results bit for bit.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from strainstream.datadir import detector_dir
from strainstream.demo import wait_for_results
from strainstream.plans.electrochem import operando_cycling, operando_gitt, rate_series
from strainstream.replay import replay_run
from strainstream.session import make_session
from strainstream.sim.cell import gitt_formula_diffusivity_cm2_s, preset
from strainstream.sim.xrd_frames import DetectorGeometry, XRDFrameSimulator

pytestmark = pytest.mark.system

N_CYCLES = 2


def _calibration(shape):
    geo = DetectorGeometry.binned(2048 // shape)
    sim = XRDFrameSimulator(geo)
    inst = 2 * np.pi / geo.wavelength_A * np.radians(sim.instrument_fwhm_2theta_deg)
    return dict(geo.to_dict(), instrument_fwhm_A_inv=inst)


class BeamDumpAfter:
    """RunEngine subscriber: a beam dump (``duration_s`` at 0 mA, then the ramp back) from a
    thread once ``when(stream_name, event)`` is true for an event (once per instance)."""

    def __init__(self, beam, when, duration_s: float = 1.0) -> None:
        self.beam, self.when, self.duration_s = beam, when, duration_s
        self.streams: dict[str, str] = {}
        self.dumped: list[float] = []
        self.thread: threading.Thread | None = None
        self.error: str | None = None

    def __call__(self, name, doc) -> None:
        if name == "descriptor":
            self.streams[doc["uid"]] = doc["name"]
        elif name == "event" and self.thread is None and self.when(self.streams.get(doc["descriptor"]), doc):
            self.thread = threading.Thread(target=self._dump, daemon=True)
            self.thread.start()

    def _dump(self) -> None:
        try:
            self.beam.dump(self.duration_s).wait(10)
        except Exception as exc:  # reported by the test
            self.error = repr(exc)
        else:
            self.dumped.append(time.monotonic())
            self.back_epoch = time.time()  # the beam is back (the ramp done)

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join(30)


def test_cycling_and_rate_series_live_analysis_and_replay(sim_beamline, sim_devices, tiled_server, worker_factory,
                                                          tmp_path, capsys):
    """operando_cycling, then a rate_series, on one server and worker: a beam dump in each
    (after the second frame of the cycling run and of the series' first run) suspends the
    plan while the cell goes on; the worker's results are complete and replay bit for bit."""
    worker_factory()
    det = sim_beamline.devices(write_dir=detector_dir(tiled_server.data_dir))["xrd"]
    det.wait_for_connection(timeout=30)
    cyc, beam = sim_devices["cycler"], sim_devices["beam"]
    cyc.reset_cell().wait(10)
    cyc.accel.put(5000.0, wait=True)  # a 100 mA/g half cycle in ~2 s
    session = make_session(tiled_server.uri, tiled_server.api_key, progress=False,
                           spool_dir=tmp_path / "spool")
    starts = []
    session.RE.subscribe(lambda name, doc: starts.append(doc) if name == "start" else None)
    seen = []

    def second_frame_of(n_start):
        def when(stream, doc):
            seen.append((len(starts), stream, doc["seq_num"]))
            return stream == "primary" and doc["seq_num"] == 2 and len(starts) == n_start
        return when

    dumps = [BeamDumpAfter(beam, second_frame_of(n)) for n in (1, 2)]
    for dump in dumps:
        session.RE.subscribe(dump)
    shape = int(det.cam.array_size.array_size_y.get())
    t0 = time.monotonic()
    try:
        (uid,) = session.RE(operando_cycling(
            det, cyc, calibration=_calibration(shape), n_cycles=N_CYCLES, rate_mA_g=100.0,
            xrd_interval_s=6000.0, poll_s=0.1, beam=beam, md={"sample": "system cycling"}))
        dumps[0].join()
        t_series = time.monotonic()
        cyc.accel.put(1000.0, wait=True)  # a 100 mA/g charge in ~8 s, 200 mA/g in ~4 s
        series_uids = session.RE(rate_series(det, cyc, calibration=_calibration(shape), rates_mA_g=(100.0, 200.0),
                                             frame_interval_s=0.5, max_frames=40, beam=beam,
                                             series="system-series"))
        dumps[1].join()
    finally:
        cyc.accel.put(600.0, wait=True)
        session.close(30.0)
    assert all(d.dumped for d in dumps), ("a beam dump was not injected", [d.error for d in dumps],
                                          sorted(set(seen)))
    assert capsys.readouterr().out.count("storage-ring current below") >= 2  # both runs suspended
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
    t3 = time.monotonic()
    # the rate series: two runs linked by the series id, each analysed live and replayed
    assert len(series_uids) == 2
    eps_end = []
    for k, (s_uid, rate) in enumerate(zip(series_uids, (100.0, 200.0), strict=True)):
        start = dict(root[s_uid].metadata["start"])
        assert (start["series"], start["series_index"], start["rate_mA_g"]) == ("system-series", k, rate)
        res = wait_for_results(root, s_uid, 0, timeout_s=60)
        entry = res["analyses"]["operando_xrd"]
        assert set(res["analyses"]) == {"operando_xrd"} and entry["status"] == "complete"
        cols = entry["columns"]
        good = [not f for f in cols["flag"]]
        assert entry["n_rows"] >= 3 and sum(good) >= entry["n_rows"] - 1, cols["flag"]
        eps = [e for e, g in zip(cols["microstrain"], good, strict=True) if g]
        assert all(e is not None and 0 < e < 0.01 for e in eps)
        eps_end.append(eps[-1])
        assert replay_run(root[s_uid]) == res
    print(f"cycling system test: {xrd_entry['n_rows']} frames, run {t_series - t0:.1f} s, worker done "
          f"{t2 - t1:.1f} s later, replay {t3 - t2:.1f} s; rate series (2 runs) {t1 - t_series:.1f} s, "
          f"results + replays {time.monotonic() - t3:.1f} s, ε at the end of charge {eps_end}")


def test_gitt_live_analysis_and_replay(sim_beamline, sim_devices, tiled_server, worker_factory, tmp_path,
                                      capsys):
    """operando_gitt with the worker: D per pulse in derived/<uid>/gitt(_arrays), a and c of the
    relaxed points in derived/<uid>/operando_xrd; a beam dump from the first pulse's start
    until after its rest (≈ 20 s wall = 2000 s of cell time) leaves the pulse and the cycler
    record alone and makes the relaxed frame wait for the beam; replay bit for bit."""
    worker_factory()
    det = sim_beamline.devices(write_dir=detector_dir(tiled_server.data_dir))["xrd"]
    det.wait_for_connection(timeout=30)
    cyc, beam = sim_devices["cycler"], sim_devices["beam"]
    cyc.reset_cell().wait(10)
    cyc.accel.put(3000.0, wait=True)
    cyc.start_cc(100.0, v_max_V=4.5).wait(10)  # to soc ≈ 0.3 outside the run, then relax
    deadline = time.monotonic() + 20
    while cyc.soc.get() < 0.3 and time.monotonic() < deadline:
        time.sleep(0.05)
    cyc.rest().wait(10)
    time.sleep(1.0)
    # cycler updates 10 s of cell time apart: ≥ 20 readings in the 100–400 s fit window even
    # when the RunEngine (one tiled write per event), worker and IOCs share 2 cores
    cyc.accel.put(100.0, wait=True)
    session = make_session(tiled_server.uri, tiled_server.api_key, progress=False,
                           spool_dir=tmp_path / "spool")

    def pulse_started(stream, doc):  # the first reading under current: the dump starts
        return stream == "cycler" and doc["data"]["cycler_current_mA"] != 0.0

    # pulse 600 s + rest 1200 s of cell time ≈ 18 s wall at accel 100: the beam is still
    # down when the relaxed frame is due
    dump = BeamDumpAfter(beam, pulse_started, duration_s=20.0)
    session.RE.subscribe(dump)
    shape = int(det.cam.array_size.array_size_y.get())
    p = preset("SC-NM91")
    t0 = time.monotonic()
    try:
        (uid,) = session.RE(operando_gitt(
            det, cyc, calibration=_calibration(shape), particle_radius_um=p.particle_radius_um,
            current_mA_g=20.0, pulse_s=600.0, rest_s=1200.0, n_pulses=2, poll_s=0.02, beam=beam))
    finally:
        dump.join()
        cyc.accel.put(600.0, wait=True)
        session.close(30.0)
    assert dump.dumped, "the beam dump was not injected"
    assert "storage-ring current below" in capsys.readouterr().out
    root = tiled_server.client()
    t1 = time.monotonic()
    live = wait_for_results(root, uid, 0, timeout_s=90)
    t2 = time.monotonic()
    assert set(live["analyses"]) == {"operando_xrd", "gitt"}
    gitt = live["analyses"]["gitt"]
    assert gitt["status"] == "complete" and gitt["summary"]["pulses"] == 2
    d = np.array(gitt["summary"]["d_cm2_s"], dtype=float)
    cols = gitt["columns"]
    reasons = [(k, r) for k, r in zip(cols["pulse"], cols["pulse_reason"], strict=True) if k >= 0]
    flags = [f for f in cols["flag"] if f]
    # issue #18: within 5 % of the simulator's for every pulse, under the load of RE + tiled
    # + worker + IOCs on 2 cores and across a beam dump over the first pulse and rest
    np.testing.assert_allclose(d, gitt_formula_diffusivity_cm2_s("SC-NM91"), rtol=0.05,
                               err_msg=f"{reasons} {flags} {cols['cell_time_s'][:6]} {cols['current_mA'][:6]}")
    # the dump did not stop the cycler record: the readings of the first pulse (all under
    # the dump) ≤ 5 updates apart (CI saw 30.5 s once on 2 loaded cores: a 10 s IOC update
    # lands a little late and two are coalesced), and it lasted its 600 s (τ from the charge
    # counter), not the dump's 2000 s (before, the suspension left a gap of ≥ 200 s)
    good = [not f for f in cols["flag"]]
    t_cell = np.array(cols["cell_time_s"])[good]
    on = np.array(cols["current_mA"])[good] != 0.0
    end = np.flatnonzero(on[:-1] & ~on[1:])[0] + 1  # the first reading after the first pulse
    first = t_cell[:end][on[:end]]
    assert first.size >= 20 and np.diff(first).max() <= 50.0, np.diff(first)
    tau = [t for k, t in zip(cols["pulse"], cols["tau_s"], strict=True) if k >= 0]
    np.testing.assert_allclose(tau[0], 600.0, atol=1.0)  # timed by the cycler (CYC:step_time_s)
    # the relaxed frame after the first pulse waited for the beam
    xrd_times = live["analyses"]["operando_xrd"]["columns"]["time"]
    assert xrd_times[1] >= dump.back_epoch - 1.0, (xrd_times, dump.back_epoch)
    arrays = root["derived"][uid]["gitt_arrays"]
    np.testing.assert_array_equal(arrays["d_cm2_s"].read(), d)
    assert live["analyses"]["operando_xrd"]["n_rows"] == 3  # before the pulses and after each rest
    assert replay_run(root[uid]) == live
    print(f"GITT system test: D {d}, run {t1 - t0:.1f} s, worker done {t2 - t1:.1f} s later, "
          f"replay {time.monotonic() - t2:.1f} s")
