"""Benchmark: progressive SXDM moments (StrainMapper.add_frames) on 256×256 frames.

Prints frames/s of the progressive moments for several batch sizes, and the same frames
reduced by two references measured in this run:
- gridding the frames into 3-D reciprocal space with xrayutilities (Gridder3D, the usual
  offline route; GPL, test-only dependency) followed by a centre of mass;
- a per-position 3-D Gaussian fit (scipy.optimize.least_squares) of the peak volume.

Goal (issue 6): ≥ 5,000 frames/s on a 2-core machine.

    python benchmarks/bench_sxdm_moments.py [--theta 21] [--raster 14]

The machine's load average is printed: on a shared 2-core machine the rates scale with the
free cores. ``OPENBLAS_NUM_THREADS=1`` avoids BLAS threads competing with the mapper's own
two worker threads.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from strainstream.sim.sxdm_frames import particle_preset, simulate_sxdm
from strainstream.sxdm import StrainMapper


def _make_frames(n_theta: int, ny: int, nx: int):
    sim = simulate_sxdm(particle_preset(ny=ny, nx=nx, seed=0), shape=(256, 256), n_theta=n_theta,
                        theta_range_deg=2.0, seed=1)
    frames = np.stack([sim.frames_at(i) for i in range(n_theta)])  # (T, ny, nx, 256, 256) uint32
    return sim, frames


def bench_warm(sim, frames, batch: int, repeat: int = 20) -> float:
    """Cache-warm batches: one raster block, fed again and again (as right after an HDF5 read)."""
    n_t, ny, nx = frames.shape[:3]
    block = np.ascontiguousarray(frames[n_t // 2].reshape(ny * nx, 256, 256)[:batch])
    iy, ix = (a.ravel()[:batch] for a in np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij"))
    mp = StrainMapper(sim.metadata, (ny, nx), theta_deg=sim.theta_deg)
    for i in range(3):  # warm-up, hot-pixel checks of the first frames
        mp.add_frames(sim.theta_deg[i], iy, ix, block)
    mp._hot_frames_checked = 10**9  # steady state: past the first 2000 frames
    t0 = time.perf_counter()
    for i in range(repeat):
        mp.add_frames(sim.theta_deg[i % n_t], iy, ix, block)
    return repeat * batch / (time.perf_counter() - t0)


def bench_mapper(sim, frames, batch: int, repeat: int, **kw) -> float:
    n_t, ny, nx = frames.shape[:3]
    flat = frames.reshape(n_t, ny * nx, 256, 256)
    iy, ix = (a.ravel() for a in np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij"))
    best = np.inf
    for _ in range(repeat):
        mp = StrainMapper(sim.metadata, (ny, nx), theta_deg=sim.theta_deg, **kw)
        mp.add_frames(sim.theta_deg[0], iy[:1], ix[:1], flat[0, :1])  # set-up outside the timing
        t0 = time.perf_counter()
        for i in range(n_t):
            for s in range(0, ny * nx, batch):
                mp.add_frames(sim.theta_deg[i], iy[s : s + batch], ix[s : s + batch], flat[i, s : s + batch])
        best = min(best, time.perf_counter() - t0)
    return n_t * ny * nx / best


def bench_xrayutilities(sim, frames, n_pos: int) -> float | None:
    try:
        import xrayutilities as xu
    except ImportError:
        return None
    md = sim.metadata
    qc = xu.QConversion(["z-"], ["z-", "x+"], [0, 1, 0])
    qc.init_area("z-", "x+", cch1=md["cen_row"], cch2=md["cen_col"], Nch1=256, Nch2=256,
                 pwidth1=md["pixel_size_um"] * 1e-6, pwidth2=md["pixel_size_um"] * 1e-6,
                 distance=md["distance_m"])
    t0 = time.perf_counter()
    th = np.repeat(sim.theta_deg, 1)
    qx, qy, qz = qc.area(th, md["delta_deg"] * np.ones_like(th), md["gamma_deg"] * np.ones_like(th),
                         en=md["energy_keV"] * 1000)  # (T, 256, 256), shared by all positions
    n_t, ny, nx = frames.shape[:3]
    g = xu.Gridder3D(64, 64, 64)
    for p in range(n_pos):
        iy, ix = divmod(p + (ny // 2) * nx, nx)
        vol = frames[:, iy, ix].astype(float) - md.get("background", 0.0)
        g(qx, qy, qz, vol)
        w = g.data
        _ = (w.sum(), (w.sum((1, 2)) * g.xaxis).sum())  # centre of mass on the grid
    return n_pos * n_t / (time.perf_counter() - t0)


def bench_gauss_fit(frames, n_pos: int) -> float:
    from scipy.optimize import least_squares

    n_t, ny, nx = frames.shape[:3]
    t0 = time.perf_counter()
    for p in range(n_pos):
        iy, ix = divmod(p + (ny // 2) * nx, nx)
        vol = frames[:, iy, ix].astype(float)
        t, r, c = np.indices(vol.shape, dtype=float)
        i0 = np.unravel_index(vol.argmax(), vol.shape)

        def resid(x, t=t, r=r, c=c, vol=vol):
            a, t0_, r0, c0, st, sr, sc, b = x
            m = a * np.exp(-0.5 * (((t - t0_) / st) ** 2 + ((r - r0) / sr) ** 2 + ((c - c0) / sc) ** 2)) + b
            return (m - vol).ravel()

        least_squares(resid, [vol.max(), *i0, 2.0, 3.0, 3.0, 0.2], max_nfev=200)
    return n_pos * n_t / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--theta", type=int, default=21, help="rocking angles")
    ap.add_argument("--raster", type=int, default=14, help="raster points per side")
    args = ap.parse_args()
    t0 = time.perf_counter()
    sim, frames = _make_frames(args.theta, args.raster, args.raster)
    n = frames.shape[0] * frames.shape[1] * frames.shape[2]
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    print(f"{n} frames of 256×256 uint32 ({frames.nbytes / 1e9:.2f} GB) simulated in {time.perf_counter() - t0:.1f} s")
    rows = []
    for batch in (1, args.raster, args.raster**2):
        rows.append((f"StrainMapper, streamed, batch {batch}", bench_mapper(sim, frames, batch, 2)))
    rows.append((f"StrainMapper float64, streamed, batch {args.raster**2}",
                 bench_mapper(sim, frames, args.raster**2, 1, compute_dtype=np.float64)))
    for batch in (args.raster, 4 * args.raster):
        rows.append((f"StrainMapper, cache-warm, batch {batch}", bench_warm(sim, frames, batch)))
    best = max(r[1] for r in rows)
    mp = StrainMapper(sim.metadata, frames.shape[1:3], theta_deg=sim.theta_deg)
    iy, ix = (a.ravel() for a in np.meshgrid(*map(np.arange, frames.shape[1:3]), indexing="ij"))
    for i in range(frames.shape[0]):
        mp.add_frames(sim.theta_deg[i], iy, ix, frames[i].reshape(-1, 256, 256))
    t0 = time.perf_counter()
    mp.maps()
    t_maps = time.perf_counter() - t0
    xu_fps = bench_xrayutilities(sim, frames, 4)
    fit_fps = bench_gauss_fit(frames, 2)
    print("streamed: batches sliced from the 1 GB array in RAM (memory-bandwidth bound); "
          "cache-warm: a batch just read (e.g. one HDF5 chunk) is reduced while in cache")
    print(f"{'method':<44}{'frames/s':>12}{'ratio':>10}")
    for name, fps in rows:
        print(f"{name:<44}{fps:>12.0f}{'':>10}")
    ref = [("xrayutilities Gridder3D 64³ + COM", xu_fps), ("3-D Gaussian fit per position", fit_fps)]
    for name, fps in ref:
        if fps is None:
            print(f"{name:<44}{'n/a':>12}{'(not installed)':>16}")
        else:
            print(f"{name:<44}{fps:>12.1f}{best / fps:>9.0f}×")
    print(f"maps() incl. drift registration ({frames.shape[0]} angles, {frames.shape[1]}×{frames.shape[2]}): {1e3 * t_maps:.1f} ms")
    print("goal: >= 5000 frames/s (issue 6); ratio = best StrainMapper rate / reference rate")


if __name__ == "__main__":
    main()
