"""Calibration of a measured detector image from rough starts: accuracy and time (issue 20).

Run: ``python benchmarks/bench_xrd_calibrate_measured.py [--starts N]``

Image: the Dioptas test image CeO2_Pilatus1M.tif (tests/data/measured, SOURCES.md), Pilatus
1M with module gaps, λ = 0.4066 Å, 1.1° tilt, beam stop. Reference: the facility's PONI
(direct-beam distance 208.689 mm, centre x = 487.259, y = 512.548 px, tilt 1.083°).
Starts: distance off by −10 … +10 %, beam centre off by up to ±3 mm in both directions, no
tilt (a grid of N starts, default 6). For every start the table gives the differences from
the reference and the wall time of :func:`strainstream.xrd.calibrate` (one core).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "measured"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--starts", type=int, default=6)
    args = ap.parse_args()

    from strainstream.cli.xrd import _read_image
    from strainstream.xrd import calibrate, load_poni, make_azimuthal_integrator

    image = _read_image(DATA / "CeO2_Pilatus1M.tif.gz")
    ref = dict(load_poni(DATA / "CeO2_Pilatus1M.poni", shape=image.shape, orientation=2),
               detector="Pilatus1M")
    f_ref = make_azimuthal_integrator(ref).getFit2D()
    px = 172e-6
    starts = [(1.10, 3e-3, -1e-3), (0.90, -3e-3, 3e-3), (1.05, 2e-3, 2e-3),
              (0.95, -2e-3, -3e-3), (1.10, -3e-3, -3e-3), (0.90, 3e-3, 3e-3)][: args.starts]
    print(f"{'dist':>6} {'d1 mm':>6} {'d2 mm':>6} | {'Δdist mm':>8} {'Δx px':>6} {'Δy px':>6} "
          f"{'Δtilt °':>7} {'rms px':>6} {'time s':>6}")
    for scale, d1, d2 in starts:
        start = dict(ref, distance_m=ref["distance_m"] * scale, rot1=0.0, rot2=0.0, rot3=0.0,
                     poni1_m=f_ref["centerY"] * px + d1, poni2_m=f_ref["centerX"] * px + d2)
        t0 = time.perf_counter()
        try:
            g, diag = calibrate(image, start, "CeO2", return_diagnostics=True)
        except ValueError as exc:
            print(f"{scale:6.2f} {d1 * 1e3:6.1f} {d2 * 1e3:6.1f} | failed: {exc}")
            continue
        dt = time.perf_counter() - t0
        f = make_azimuthal_integrator(g).getFit2D()
        print(f"{scale:6.2f} {d1 * 1e3:6.1f} {d2 * 1e3:6.1f} | "
              f"{f['directDist'] - f_ref['directDist']:8.3f} {f['centerX'] - f_ref['centerX']:6.2f} "
              f"{f['centerY'] - f_ref['centerY']:6.2f} {f['tilt'] - f_ref['tilt']:7.3f} "
              f"{diag['rms_px']:6.2f} {dt:6.1f}")


if __name__ == "__main__":
    main()
