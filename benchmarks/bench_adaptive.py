"""Adaptive vs fixed operando sampling at equal frame budget, on the simulated beamline (#19).

Starts a real tiled server (embedded default), a worker process and the simulated beamline's
cycler and beam IOCs (XRD frames ``--shape``²), calibrates from the simulated CeO2, then
charges a fresh SC-NM91 cell twice in about ``--duration`` wall seconds each, with at most
``--frames`` frames: once with the adaptive agent (:mod:`strainstream.adaptive`, decisions
fed by the worker's live refinement), once with the same agent in fixed-interval mode. Both
are measured against the simulator's truth over the same state-of-charge range
(:func:`strainstream.adaptive_compare.compare_sampling`).

    python benchmarks/bench_adaptive.py [--json] [--frames 30] [--duration 90] [--shape 512]

``--json`` prints one JSON object: ``adaptive`` and ``fixed`` (``frames``, ``frames_in_window``,
``two_phase_frames``, ``c_curve_rms_A``, ``max_delta_c_A``, ``max_delta_c_true_A``, ``dose_s``,
``decisions``, ``replay_identical``, ``uid``, ``window_soc``, ``soc_range``, ``c_mean_curve_rms_A``,
``frames_soc_c``: each refined frame as [soc, phase-fraction weighted c, phases]) and
``ratio_frames_in_window``, ``preset``, ``frames_budget``, ``duration_s``, ``frame_shape``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from pathlib import Path

from strainstream.adaptive import SamplingBudget
from strainstream.adaptive_compare import compare_sampling, format_table
from strainstream.beamline import Beamline
from strainstream.datadir import detector_dir
from strainstream.demo import calibrate_from_ceo2
from strainstream.server import TiledServer
from strainstream.session import make_session
from strainstream.workerproc import WorkerProcess


def run(frames: int, duration_s: float, shape: int, data_dir: str, say) -> dict:
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(TiledServer(data_dir))
        stack.enter_context(WorkerProcess(server.uri, server.api_key, data_dir))
        bl = stack.enter_context(Beamline(Path(data_dir) / "iocs", iocs=("cycler", "beam"), xrd_shape=shape,
                                          startup_timeout_s=120))
        devices = bl.devices(write_dir=detector_dir(data_dir))
        for name in ("cycler", "xrd", "xrd_sim", "beam"):
            devices[name].wait_for_connection(timeout=30)
        session = make_session(server.uri, server.api_key, progress=False, spool_dir=f"{data_dir}/spool")
        stack.callback(session.close, 30.0)
        geometry = calibrate_from_ceo2(session, devices["xrd"], shape, say, sim=devices["xrd_sim"])
        budget = SamplingBudget(frames=frames, expected_capacity_mAh_g=225.0)
        out = compare_sampling(session, devices, server.client(), calibration=geometry, budget=budget,
                               duration_s=duration_s, say=say)
    out.update(frames_budget=frames, duration_s=duration_s, frame_shape=shape)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON object")
    ap.add_argument("--frames", type=int, default=30, help="frame budget of each charge (default 30)")
    ap.add_argument("--duration", type=float, default=90.0, help="wall seconds a charge takes (default 90)")
    ap.add_argument("--shape", type=int, default=512, help="XRD frame rows = cols (default 512)")
    args = ap.parse_args()
    say = (lambda *a: None) if args.json else print
    with tempfile.TemporaryDirectory() as d:
        out = run(args.frames, args.duration, args.shape, os.path.join(d, "data"), say)
    if args.json:
        print(json.dumps(out, default=float))
        return
    print(format_table(out))


if __name__ == "__main__":
    main()
