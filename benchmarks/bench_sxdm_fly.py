"""Fly-scan SXDM end to end: frames/s from the first frame written to the last map row in tiled.

Starts a real tiled server (embedded default: SQLite + memory streaming cache), a worker
process and the simulated beamline's IOCs (the endstation's SXDM detector at ``--shape``²,
its particle ``--raster`` points a side), then runs
:func:`strainstream.plans.sxdm.sxdm_fly_map` over the whole particle (``--raster``² points ×
``--angles`` rocking angles, one frame every ``--period-ms``) through a RunEngine session
into tiled while the worker maps it live.

    python benchmarks/bench_sxdm_fly.py [--json] [--quick] [--shape 256] [--raster 40]
                                        [--angles 41] [--period-ms 1] [--beside-demo]

``--json`` prints one JSON object: ``frames`` (frames recorded), ``frames_per_s`` (frames /
time from the first frame written to the last map row visible in tiled), ``max_lag_lines``
(the most raster lines the scan had finished beyond a line when that line's last result
row became visible in tiled), ``events_analysed`` (result rows, i.e. frames analysed),
``map_shape`` ([ny, nx] of the published maps); and ``scan_frames_per_s`` (frames / scan
time, RunEngine side), ``lag_s_p50``/``lag_s_max`` (line written -> its rows visible),
``period_ms``, ``frame_shape``, ``noise``, ``beside_demo``; and the lag split in its two legs
(p50/max, s): ``raw_lag_s_p50``/``raw_lag_s_max`` (line written -> its event rows visible in
tiled: the RunEngine's writer and the server) and ``analysis_lag_s_p50``/``analysis_lag_s_max``
(event rows visible -> result rows visible: the worker and the server).

The first frame's time is the first line's trigger (its motion start), taken as the time
the first line's StreamDatum was emitted minus the line's frames × period.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_latency import VisibleTimes, demo_beside  # noqa: E402

from strainstream.beamline import Beamline  # noqa: E402
from strainstream.callbacks.sinks import DERIVED  # noqa: E402
from strainstream.datadir import detector_dir  # noqa: E402
from strainstream.server import TiledServer  # noqa: E402
from strainstream.session import make_session  # noqa: E402
from strainstream.worker import websockets_use_api_key  # noqa: E402
from strainstream.workerproc import WorkerProcess  # noqa: E402


class RawRows:
    """When each event row of the runs' ``primary`` streams became visible in tiled (a
    subscriber, as the worker is one): ``times[seq_num]``."""

    def __init__(self, root):
        self.root, self.times, self.subs = root, {}, []

    def _subscribe(self, node, path: list[str]) -> None:
        """Follow ``node`` down ``path`` (child keys, as they are created) to its rows."""
        sub = node.subscribe()
        handler = self._Step(self, path)
        (sub.child_created if path else sub.new_data).add_callback(handler)
        self.subs.append((sub, handler))  # (tiled holds callbacks weakly)
        sub.start_in_thread(0)

    class _Step:
        def __init__(self, owner, path):
            self.owner, self.path = owner, path

        def __call__(self, update):
            if not self.path:  # rows
                now = time.time()
                for seq in update.data()["seq_num"].tolist():
                    self.owner.times.setdefault(int(seq), now)
            elif update.key == self.path[0]:
                self.owner._subscribe(update.child(), self.path[1:])

    def start(self):
        sub = self.root.subscribe()
        handler = self._Runs(self)
        sub.child_created.add_callback(handler)
        self.subs.append((sub, handler))
        sub.start_in_thread()
        return self

    class _Runs:
        def __init__(self, owner):
            self.owner = owner

        def __call__(self, update):
            if update.key != DERIVED:
                self.owner._subscribe(update.child(), ["primary", "internal"])

    def close(self):
        for sub, _ in self.subs:
            sub.disconnect(wait=False)


def run(shape: int, raster: int, angles: int, period_ms: float, data_dir: str, noise: bool = True) -> dict:
    from strainstream.devices.ioc.endstation import theta_bragg_deg
    from strainstream.plans.sxdm import sxdm_fly_map

    n_frames = raster * raster * angles
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(TiledServer(data_dir))
        stack.enter_context(WorkerProcess(server.uri, server.api_key, data_dir))
        bl = stack.enter_context(Beamline(Path(data_dir) / "iocs", iocs=("endstation", "beam"),
                                          sxdm_shape=shape, startup_timeout_s=120,
                                          extra_args={"endstation": ["--sxdm-raster", str(raster)]}))
        devices = bl.devices(write_dir=detector_dir(data_dir))
        for name in ("sxdm", "es", "beam", "sxdm_sim"):
            devices[name].wait_for_connection(timeout=30)
        devices["sxdm_sim"].noise.put(int(noise), wait=True)
        root = server.client()
        websockets_use_api_key(root)
        rows = VisibleTimes(root, "sxdm").start()
        raw = RawRows(root).start()
        session = make_session(server.uri, server.api_key, progress=False, spool_dir=f"{data_dir}/spool")
        line_times: list[float] = []
        session.RE.subscribe(lambda name, doc: line_times.append(time.time()) if name == "stream_datum" else None)
        es = devices["es"]
        step_nm = 50.0
        centre = (raster - 1) / 2 * step_nm / 1000.0
        theta = round(theta_bragg_deg(float(es.energy.position)), 4)
        t_run = time.time()
        (uid,) = session.RE(sxdm_fly_map(devices["sxdm"], es, theta_center_deg=theta,
                                         theta_half_range_deg=0.6, n_theta=angles,
                                         x_center_um=centre, y_center_um=centre, nx=raster,
                                         ny=raster, step_nm=step_nm, period_s=period_ms / 1000.0,
                                         md={"sample": "SC-NM91 charged particle (simulated)"}))
        t_scan = time.time() - t_run
        deadline = time.time() + max(600.0, 10 * t_scan)
        while len(rows.times.get(uid, ())) < n_frames and time.time() < deadline:
            time.sleep(0.2)
        seen = rows.times.get(uid, {})  # seq_num -> when its result row became visible
        t_end = max(seen.values()) if seen else float("nan")
        rows.close()
        raw.close()
        entry = root[DERIVED][uid]["sxdm"]
        events = len(entry.read())
        maps = root[DERIVED][uid]["sxdm_arrays"] if "sxdm_arrays" in root[DERIVED][uid] else None
        map_shape = None
        if maps is not None:
            key = next((k for k in ("strain", "d_spacing_A") if k in maps), None)
            map_shape = list(maps[key].shape) if key else None
    t_first = line_times[0] - raster * period_ms / 1000.0
    # lag in lines: when line k's last row became visible, how many later lines were written
    lags_lines, lags_s, raw_s, analysis_s = [], [], [], []
    for k, t_written in enumerate(line_times):
        seqs = range(k * raster + 1, (k + 1) * raster + 1)
        if not all(s in seen for s in seqs):
            continue
        t_vis = max(seen[s] for s in seqs)
        lags_s.append(t_vis - t_written)
        lags_lines.append(sum(1 for t in line_times[k + 1:] if t < t_vis))
        if all(s in raw.times for s in seqs):
            t_raw = max(raw.times[s] for s in seqs)
            raw_s.append(t_raw - t_written)
            analysis_s.append(t_vis - t_raw)
    return {
        "frames": n_frames,
        "frames_per_s": n_frames / (t_end - t_first),
        "max_lag_lines": int(max(lags_lines)) if lags_lines else None,
        "events_analysed": int(events),
        "map_shape": map_shape,
        "scan_frames_per_s": n_frames / t_scan,
        "lag_s_p50": float(np.percentile(lags_s, 50)) if lags_s else None,
        "lag_s_max": float(max(lags_s)) if lags_s else None,
        "raw_lag_s_p50": float(np.percentile(raw_s, 50)) if raw_s else None,
        "raw_lag_s_max": float(max(raw_s)) if raw_s else None,
        "analysis_lag_s_p50": float(np.percentile(analysis_s, 50)) if analysis_s else None,
        "analysis_lag_s_max": float(max(analysis_s)) if analysis_s else None,
        "period_ms": period_ms,
        "frame_shape": [shape, shape],
        "noise": bool(noise),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON object")
    ap.add_argument("--quick", action="store_true", help="16 x 16 raster x 10 angles (2,560 frames)")
    ap.add_argument("--shape", type=int, default=256, help="SXDM frame rows = cols (default 256)")
    ap.add_argument("--raster", type=int, default=40, help="raster points a side (default 40)")
    ap.add_argument("--angles", type=int, default=41, help="rocking angles (default 41)")
    ap.add_argument("--period-ms", type=float, default=1.0,
                    help="frame period, ms (default 1: 1 kHz; at 2 ms a 40-point line's frames alone "
                         "cap it at 500 frames/s, every turnaround below that)")
    ap.add_argument("--beside-demo", action="store_true", help="run a second demo beside it (load)")
    ap.add_argument("--no-noise", action="store_true",
                    help="the IOC computes expected counts, no Poisson draw (the simulated detector's "
                         "own CPU cost is then a third lower; a real detector costs the host none)")
    args = ap.parse_args()
    raster, angles = (16, 10) if args.quick else (args.raster, args.angles)
    with demo_beside(args.beside_demo), tempfile.TemporaryDirectory() as d:
        out = run(args.shape, raster, angles, args.period_ms, os.path.join(d, "data"),
                  noise=not args.no_noise)
    out["beside_demo"] = args.beside_demo
    if args.json:
        print(json.dumps(out))
        return
    for k, v in out.items():
        print(f"{k:>18}: {v}")


if __name__ == "__main__":
    main()
