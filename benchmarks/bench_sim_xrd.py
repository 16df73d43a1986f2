"""Benchmark: simulated coin-cell XRD frames and the coin-cell model.

Run:  python benchmarks/bench_sim_xrd.py [--repeat N]

Prints a table of median wall times (single process; numpy may use its own threads) for
* building the simulator for one geometry (pyFAI pixel-Q, solid angle; once per geometry),
* the 1-D model I(Q) (reflections + structure factors + peak rendering) per frame,
* the 2-D frame from the 1-D model, noise-free and with noise (normal-approx / exact Poisson),
* the reference: pyFAI ``AzimuthalIntegrator.calcfrom1d`` (pyFAI's own 1-D → 2-D image
  reconstruction) on the same profile and geometry, with the speed ratio and the maximum
  relative difference between the two noise-free images,
* one ``CoinCell.step`` (CC with a voltage limit, and CV) and ``CoinCell.lattice``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402

from strainstream.sim import cell as C  # noqa: E402
from strainstream.sim import xrd_frames as X  # noqa: E402


def timeit(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    rows: list[tuple[str, float, str]] = []

    phases = C.lattice_at_soc("SC-NM91", 0.81)  # two phases: the busiest pattern
    for label, geo in (("2048x2048", X.DetectorGeometry()),
                       ("512x512", X.DetectorGeometry.binned(4))):
        t0 = time.perf_counter()
        sim = X.XRDFrameSimulator(geo)
        rows.append((f"{label} build simulator (once per geometry)", time.perf_counter() - t0, ""))
        q, inten = sim.profile(phases)
        t_prof = timeit(lambda sim=sim: sim.profile(phases), args.repeat)
        t_exp = timeit(lambda sim=sim, inten=inten: sim.expected_image(inten), args.repeat)
        t_draw = timeit(lambda sim=sim, inten=inten: sim.draw(inten, seed=1), args.repeat)
        t_exact = timeit(lambda sim=sim, inten=inten: sim.draw(inten, seed=1, exact_poisson=True),
                         args.repeat)
        t_frame = timeit(lambda sim=sim: sim.frame(phases, seed=2), args.repeat)
        ref = timeit(lambda sim=sim, q=q, inten=inten: sim.ai.calcfrom1d(
            q, inten, shape=sim.geometry.shape, dim1_unit="q_A^-1", correctSolidAngle=True),
            args.repeat)
        ours = sim.expected_image(inten)
        theirs = sim.ai.calcfrom1d(q, inten, shape=geo.shape, dim1_unit="q_A^-1",
                                   correctSolidAngle=True)
        rel = float(np.max(np.abs(ours - theirs) / np.maximum(theirs, 1.0)))
        rows += [
            (f"{label} 1-D model I(Q)", t_prof, ""),
            (f"{label} 2-D expected image (ours)", t_exp, f"{ref / t_exp:.1f}x faster than pyFAI"),
            (f"{label} pyFAI calcfrom1d (reference)", ref, f"max rel diff {rel:.1e}"),
            (f"{label} draw: noise (normal approx >30 counts)", t_draw, ""),
            (f"{label} draw: exact Poisson", t_exact, ""),
            (f"{label} full frame = model + draw (goal < 0.3 s)", t_frame,
             "OK" if t_frame < 0.3 or label != "2048x2048" else "SLOW"),
        ]

    cell = C.CoinCell("SC-NM91", 10.0)
    cell.set_mode("CC", current_mA_g=200.0, v_limit_V=4.5, then="cv")
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        cell.step(2.0)  # 200 mA/g, 2 s per call: a 60x-accelerated IOC at 30 Hz
    rows.append(("CoinCell.step CC (dt 2 s, per call)", (time.perf_counter() - t0) / n, ""))
    cv = C.CoinCell("SC-NM91", 10.0, soc=0.9)
    cv.set_mode("CV", voltage_V=4.5)
    t0 = time.perf_counter()
    for _ in range(n):
        cv.step(2.0)
    rows.append(("CoinCell.step CV (dt 2 s, per call)", (time.perf_counter() - t0) / n, ""))
    t0 = time.perf_counter()
    for _ in range(n):
        cell.lattice()
    rows.append(("CoinCell.lattice (per call)", (time.perf_counter() - t0) / n, ""))

    width = max(len(r[0]) for r in rows)
    print(f"{'operation':<{width}}  {'median time':>12}  note")
    for name, t, note in rows:
        print(f"{name:<{width}}  {t * 1e3:>9.3f} ms  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
