"""Benchmark: the simulated beamline's IOCs — CA round trips, detector frame rates, CPU cost.

Run:  python benchmarks/bench_ioc_roundtrip.py [--n 200] [--frames 10] [--xrd-shape 2048]
(needs the installed package: strainstream.devices lives outside src/.)

Starts the three IOCs (strainstream.beamline.Beamline) twice, with TCP_NODELAY on the IOCs'
client sockets (the patch) and with it forced off (caproto's behaviour without the patch on
platforms whose asyncio does not set it), and measures from a separate client process:

* put-with-completion and get round trips of a plain PV with pyepics (the ophyd control
  layer) and with caproto's threading client;
* a zero-length move of a stock ``EpicsMotor`` (the record's DMOV 0 -> 1, held low for the
  IOC's monitor flush time so the client sees it);
* frames/s each detector IOC sustains through ophyd (stage, trigger+wait per frame), with
  the IOC's CPU seconds per frame, against the reference: the same forward model called
  directly in-process (ratio = IOC rate / direct rate);
* idle CPU of each IOC (scan loops: cycler 10 Hz, ring current 5 Hz).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def _median_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def child(args) -> int:
    cfg = json.loads(args.child)
    os.environ.update(cfg["env"])
    prefix, pids, n = cfg["prefix"], cfg["pids"], cfg["n"]
    import epics

    out: dict = {}
    pv = epics.PV(prefix + "CYC:then_cv")
    pv.wait_for_connection(timeout=10)
    out["pyepics_put_ms"] = _median_ms(lambda: pv.put(0, wait=True), n)
    vals = iter(range(10**9))
    mon = epics.PV(prefix + "CYC:current_sp_mA_g", auto_monitor=True)
    mon.wait_for_connection(timeout=10)
    out["pyepics_put_mon_ms"] = _median_ms(lambda: mon.put(20.0 + next(vals) % 2, wait=True), n)
    mon.put(20.0, wait=True)
    out["pyepics_get_ms"] = _median_ms(lambda: pv.get(use_monitor=False), n)

    from caproto.threading.client import Context

    ctx = Context()
    (cpv,) = ctx.get_pvs(prefix + "CYC:then_cv")
    cpv.wait_for_connection(timeout=10)
    out["caproto_put_ms"] = _median_ms(lambda: cpv.write([0], wait=True), n)
    out["caproto_get_ms"] = _median_ms(lambda: cpv.read(), n)
    ctx.disconnect()

    from strainstream.devices.motors import motor

    m = motor(prefix, "sample_z")
    m.wait_for_connection(timeout=10)
    out["motor_null_move_ms"] = _median_ms(lambda: m.set(m.position).wait(10), max(10, n // 10))

    if cfg["frames"]:
        import numpy as np

        from strainstream.devices.detectors import ioc_detector

        rates = {}
        for kind, ioc in (("xrd", "cycler"), ("sxdm", "endstation"), ("txm", "endstation")):
            det = ioc_detector(kind, prefix, write_dir=cfg["write_dir"])
            det.wait_for_connection(timeout=10)
            det.stage()
            det.trigger().wait(120)  # warm-up
            c0, t0 = _cpu_s(pids[ioc]), time.perf_counter()
            for _ in range(cfg["frames"]):
                det.trigger().wait(120)
            dt, dc = time.perf_counter() - t0, _cpu_s(pids[ioc]) - c0
            det.unstage()
            rates[kind] = {"shape": [int(det.cam.array_size.array_size_y.get()), int(det.cam.array_size.array_size_x.get())],
                           "fps": cfg["frames"] / dt, "ioc_cpu_s_per_frame": dc / cfg["frames"]}
        # reference: the same forward models called directly in this process
        from strainstream.devices.ioc.endstation import (
            sxdm_point_expected,
            theta_bragg_deg,
            zp_focus_mm,
        )
        from strainstream.sim.cell import CoinCell
        from strainstream.sim.sxdm_frames import particle_preset, simulate_sxdm
        from strainstream.sim.txm_images import particle_sample, simulate_txm_scan
        from strainstream.sim.xrd_frames import DetectorGeometry, XRDFrameSimulator

        s = rates["xrd"]["shape"][0]
        xsim = XRDFrameSimulator(DetectorGeometry.binned(2048 // s))
        cell = CoinCell("SC-NM91")
        ph, tm = cell.lattice(), dict(cell.preset.transition_metals)
        ref = {"xrd": lambda: xsim.frame(ph, seed=[0, 1], transition_metals=tm).image}
        ssim = simulate_sxdm(particle_preset(), energy_keV=8.35,
                             shape=tuple(rates["sxdm"]["shape"]), drift_step_nm=0, noise=False)
        th = theta_bragg_deg(8350.0)
        rng = np.random.default_rng(0)
        ref["sxdm"] = lambda: rng.poisson(sxdm_point_expected(ssim, 16, 16, th))
        smp = particle_sample(tuple(rates["txm"]["shape"]))
        zp = zp_focus_mm(8350.0) / 1000.0
        ref["txm"] = lambda: simulate_txm_scan(np.array([8350.0]), sample=smp,
                                               zp_follows_focus=False, zp_position_m=zp,
                                               drift_px_rms=0.0, noise=False).stack[0]
        for kind, fn in ref.items():
            fn()
            rates[kind]["direct_fps"] = 1e3 / _median_ms(fn, cfg["frames"])
        out["frames"] = rates

    c0 = {k: _cpu_s(p) for k, p in pids.items()}
    time.sleep(3.0)
    out["idle_cpu_pct"] = {k: 100 * (_cpu_s(p) - c0[k]) / 3.0 for k, p in pids.items()}
    print(json.dumps(out))
    return 0


def run_config(nodelay: bool, args, frames: int) -> dict:
    from strainstream.beamline import Beamline

    with tempfile.TemporaryDirectory(prefix="bench-ioc-") as tmp, Beamline(
        Path(tmp) / "data", xrd_shape=args.xrd_shape, sxdm_shape=args.sxdm_shape,
        txm_shape=args.txm_shape, nodelay=nodelay, set_env=False,
    ) as bl:
        cfg = {"env": bl.client_env(), "prefix": bl.prefix, "n": args.n, "frames": frames,
               "write_dir": str(Path(tmp) / "data"),
               "pids": {k: i.proc.pid for k, i in bl.iocs.items()}}
        res = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)],
                             capture_output=True, text=True, timeout=900)
        if res.returncode:
            raise SystemExit(f"client failed:\n{res.stderr[-3000:]}")
        return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="round trips per measurement")
    ap.add_argument("--frames", type=int, default=10, help="frames per detector")
    ap.add_argument("--xrd-shape", type=int, default=2048)
    ap.add_argument("--sxdm-shape", type=int, default=256)
    ap.add_argument("--txm-shape", type=int, default=128)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    on = run_config(True, args, args.frames)
    off = run_config(False, args, 0)
    print(f"{'CA round trip (median, ms)':<34}{'NODELAY on':>12}{'off':>10}{'off/on':>9}")
    for key, label in (("pyepics_put_ms", "pyepics put (wait=True)"),
                       ("pyepics_put_mon_ms", "pyepics put, monitored, new value"),
                       ("pyepics_get_ms", "pyepics get (no monitor)"),
                       ("caproto_put_ms", "caproto put (wait=True)"),
                       ("caproto_get_ms", "caproto get"),
                       ("motor_null_move_ms", "ophyd motor zero-length move")):
        print(f"{label:<34}{on[key]:>12.2f}{off[key]:>10.2f}{off[key] / on[key]:>9.1f}")
    print()
    print(f"{'detector IOC':<14}{'shape':>10}{'frames/s':>10}{'direct/s':>10}{'IOC/direct':>11}"
          f"{'IOC CPU s/frame':>17}")
    for kind, r in on.get("frames", {}).items():  # none with --frames 0
        print(f"{kind:<14}{'x'.join(map(str, r['shape'])):>10}{r['fps']:>10.2f}"
              f"{r['direct_fps']:>10.2f}{r['fps'] / r['direct_fps']:>11.2f}"
              f"{r['ioc_cpu_s_per_frame']:>17.3f}")
    print()
    print("idle CPU, % of one core: " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                  on["idle_cpu_pct"].items()))
    print(f"(machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
