"""Replay of an archived operando XRD run through the live analysis callbacks: frames/s.

Writes a run of N simulated SC-NM91 frames (a charge from pristine to 4.5 V) to a real tiled
server (SQLite + memory cache), then replays it with ``strainstream.replay.replay_run`` (the
same callbacks as the worker: integrate + sequential refinement per frame) and reports the
rate, next to the per-frame cost of the analysis alone on frames already in memory.

    python benchmarks/bench_replay_xrd.py [--frames 300] [--size 2048]

Goal (issue 5): >= 10 frames/s for a 300-frame run.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter
from ophyd import Signal

from strainstream.datadir import detector_dir
from strainstream.devices.detectors import sim_frame_detector
from strainstream.plans.frames import frame_series
from strainstream.replay import replay_run
from strainstream.server import TiledServer
from strainstream.sim.cell import CoinCell
from strainstream.sim.xrd_frames import DetectorGeometry, XRDFrameSimulator


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args()
    n = args.frames
    geo = DetectorGeometry.binned(2048 // args.size)
    sim = XRDFrameSimulator(geo)
    inst = 2 * np.pi / geo.wavelength_A * np.radians(sim.instrument_fwhm_2theta_deg)
    calibration = dict(geo.to_dict(), instrument_fwhm_A_inv=inst)
    socs = np.linspace(0.0, 0.97, n)
    volt = Signal(name="cycler_voltage_V", value=0.0)
    cap = Signal(name="cycler_capacity_mAh_g", value=0.0)

    def source(i):
        cell = CoinCell("SC-NM91", 10.0, soc=float(socs[i]))
        volt.put(cell.voltage_V)
        cap.put(cell.capacity_mAh_g)
        return sim.cell_frame(cell, seed=i).image

    with tempfile.TemporaryDirectory() as d, TiledServer(d) as server:
        client = server.client()
        RE = RunEngine({})
        RE.subscribe(TiledWriter(client, batch_size=50))  # an archive: batching is fine here
        det = sim_frame_detector("xrd", detector_dir(d), frame_source=source, frame_shape=geo.shape)
        t0 = time.perf_counter()
        (uid,) = RE(frame_series([det, volt, cap], num=n,
                                 md={"experiment": "operando_xrd", "calibration": calibration}))
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        doc = replay_run(client[uid])
        t_replay = time.perf_counter() - t0
    entry = doc["analyses"]["operando_xrd"]
    flagged = sum(bool(f) for f in entry["columns"]["flag"])
    print(f"frames {n} of {args.size}x{args.size}: archived in {t_write:.1f} s")
    print(f"replay through the live callbacks: {t_replay:.1f} s = {n / t_replay:.1f} frames/s "
          f"(goal >= 10), {flagged} flagged; summary: max Δc {entry['summary'].get('max_delta_c_A'):.3f} Å, "
          f"c contraction {entry['summary'].get('c_contraction_pct'):.2f} %")


if __name__ == "__main__":
    main()
