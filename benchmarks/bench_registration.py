"""Benchmark: sub-pixel registration, scikit-image vs strainstream's own code (issue 16 item 6).

Since issue 16 item 6, ``strainstream.sxdm.register_translation`` and
``strainstream.xanes.phase_correlation_shift`` are thin wrappers around
``skimage.registration.phase_cross_correlation`` (keeping our conventions and extras: batches
of maps, the Tukey window, NaN filling, the Gaussian low-pass of the cross-power spectrum).
This benchmark compares them with frozen copies of the code they replaced ("own": a batched
upsampled DFT in numpy's own einsum loops with a parabolic refinement for SXDM, the same
Guizar-Sicairos algorithm as skimage's for TXM) on the known-shift synthetic data of the tests:

- SXDM ``register_translation`` (plain cross-correlation) on the blob maps of
  test_sxdm_registration.py, and the whole drift estimate (``StrainMapper.drift_shifts``: 9
  batched registrations plus the texture refinement) on the simulation of test_sxdm_mapper.py;
- TXM-XANES ``phase_correlation_shift`` on the particle images of test_xanes_align.py, and
  ``register_stack`` on the simulated TXM scans of that test.

Errors are against the known shifts (max |error|, pixels / raster steps). Times are the best of
``--repeat`` runs, own and skimage alternating in the same run; the ratios skimage / own are of
the best and of the median times.
Every case runs twice: with the BLAS thread pool as found (CLI, notebooks, tests) and limited
to one thread (threadpoolctl; the analysis worker runs its callbacks so). skimage's upsampled
DFT is two small ``np.tensordot`` (BLAS) products per image pair; on a busy 2-core machine a
multi-threaded BLAS pool makes such tiny products wait for a core, so the "as found" times
swing from run to run: repeat the run and compare the one-thread rows.

    python benchmarks/bench_registration.py [--repeat 7] [--skip-mapper] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from unittest import mock

import numpy as np
from scipy import ndimage
from threadpoolctl import threadpool_info, threadpool_limits

from strainstream import sxdm, xanes
from strainstream.sxdm import _registration as sxdm_reg
from strainstream.xanes import _align as xanes_align

# --- strainstream's own code before issue 16 item 6 (frozen copies, the reference) ---------

def own_register_translation(
    reference: np.ndarray, moving: np.ndarray, *, upsample: int = 50, normalize: bool = False
) -> np.ndarray:
    """Frozen copy (see the module docstring)."""
    ref = np.asarray(reference, dtype=np.float64)
    mov = np.asarray(moving, dtype=np.float64)
    single = mov.ndim == 2
    if single:
        mov = mov[None]
    if ref.ndim == 2:
        ref = ref[None]
    if ref.ndim != 3 or mov.shape[1:] != ref.shape[1:] or ref.shape[0] not in (1, mov.shape[0]):
        raise ValueError(f"maps must share the shape (ny, nx): reference {ref.shape}, moving {mov.shape}")
    ny, nx = ref.shape[1:]
    x = np.fft.fft2(mov) * np.conj(np.fft.fft2(ref))
    if normalize:
        x /= np.maximum(np.abs(x), 1e-30)
    cc = np.fft.ifft2(x).real
    flat = cc.reshape(len(mov), -1).argmax(1)
    iy, ix = np.unravel_index(flat, (ny, nx))
    s0 = np.stack([np.where(iy > ny // 2, iy - ny, iy), np.where(ix > nx // 2, ix - nx, ix)], -1)
    s0 = s0.astype(float)
    # upsampled DFT on a ±1.5 step window around the coarse peak
    n_up = int(np.ceil(1.5 * upsample)) * 2 + 1
    off = (np.arange(n_up) - n_up // 2) / upsample
    fy, fx = np.fft.fftfreq(ny), np.fft.fftfreq(nx)
    sy = s0[:, 0, None] + off[None]  # (n, n_up)
    sx = s0[:, 1, None] + off[None]
    ey = np.exp(2j * np.pi * sy[:, :, None] * fy[None, None, :])  # (n, n_up, ny)
    ex = np.exp(2j * np.pi * sx[:, :, None] * fx[None, None, :])  # (n, n_up, nx)
    # numpy's own loops: these tiny batched products are slower through a (busy) BLAS pool
    up = np.einsum("iax,ibx->iab", np.einsum("iay,iyx->iax", ey, x), ex).real
    k = up.reshape(len(mov), -1).argmax(1)
    a, b = np.unravel_index(k, (n_up, n_up))
    # parabolic refinement on the fine grid
    shifts = np.empty((len(mov), 2))
    idx = np.arange(len(mov))
    for axis, (j, grid) in enumerate(((a, sy), (b, sx))):
        jm, jp = np.clip(j - 1, 0, n_up - 1), np.clip(j + 1, 0, n_up - 1)
        if axis == 0:
            fm, f0, fp = up[idx, jm, b], up[idx, j, b], up[idx, jp, b]
        else:
            fm, f0, fp = up[idx, a, jm], up[idx, a, j], up[idx, a, jp]
        den = fm - 2 * f0 + fp
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where((den < 0) & (j > 0) & (j < n_up - 1), 0.5 * (fm - fp) / den, 0.0)
        shifts[:, axis] = grid[idx, j] + frac / upsample
    return shifts[0] if single else shifts


def _own_upsampled_dft(
    data: np.ndarray, region_size: int, upsample_factor: int, offsets: np.ndarray
) -> np.ndarray:
    """DFT of ``data`` (ny, nx) on an upsampled ``region_size``² grid by matrix multiplication.

    Contracts the last axis first; each ``tensordot`` puts the new axis in front, so the
    result is ordered (y, x).
    """
    out = data
    for n_items, offset in ((data.shape[1], offsets[1]), (data.shape[0], offsets[0])):
        kernel = (np.arange(region_size) - offset)[:, None] * np.fft.fftfreq(
            n_items, upsample_factor
        )
        out = np.tensordot(np.exp(-2j * np.pi * kernel), out, axes=(1, -1))
    return out


def own_phase_correlation_shift(
    reference: np.ndarray,
    moving: np.ndarray,
    *,
    upsample_factor: int = 50,
    lowpass_sigma_px: float | None = 2.0,
    window: bool = True,
) -> np.ndarray:
    """Frozen copy (see the module docstring)."""
    r = np.asarray(reference, dtype=np.float64)
    m = np.asarray(moving, dtype=np.float64)
    if r.ndim != 2 or r.shape != m.shape:
        raise ValueError(
            f"reference and moving must be 2-D images of the same shape, got {r.shape} and "
            f"{m.shape}"
        )
    r = np.where(np.isfinite(r), r, np.nanmean(r) if np.isfinite(r).any() else 0.0)
    m = np.where(np.isfinite(m), m, np.nanmean(m) if np.isfinite(m).any() else 0.0)
    win = 1.0
    if window:
        win = xanes_align._tukey(r.shape[0])[:, None] * xanes_align._tukey(r.shape[1])[None, :]
    fr = np.fft.fft2((r - r.mean()) * win)
    fm = np.fft.fft2((m - m.mean()) * win)
    prod = fr * fm.conj()
    prod /= np.maximum(np.abs(prod), 100 * np.finfo(np.float64).eps)
    if lowpass_sigma_px:
        ky = np.fft.fftfreq(r.shape[0])[:, None]
        kx = np.fft.fftfreq(r.shape[1])[None, :]
        prod *= np.exp(-2.0 * (np.pi * lowpass_sigma_px) ** 2 * (ky**2 + kx**2))
    cc = np.fft.ifft2(prod)
    peak = np.array(np.unravel_index(int(np.argmax(np.abs(cc))), cc.shape), dtype=np.float64)
    shape = np.array(cc.shape, dtype=np.float64)
    mid = np.fix(shape / 2)
    peak[peak > mid] -= shape[peak > mid]
    if upsample_factor <= 1:
        return peak
    up = float(upsample_factor)
    peak = np.round(peak * up) / up
    region = int(np.ceil(up * 1.5))
    dftshift = np.fix(region / 2.0)
    offsets = dftshift - peak * up
    ccu = _own_upsampled_dft(prod.conj(), region, int(up), offsets).conj()
    sub = np.array(np.unravel_index(int(np.argmax(np.abs(ccu))), ccu.shape), dtype=np.float64)
    return peak + (sub - dftshift) / up


# --- timing ------------------------------------------------------------------------------

def best_of_both(own, lib, repeat: int) -> tuple[list[float], object, list[float], object]:
    """Times of ``own()`` and ``lib()``, called alternately (same machine load), and results."""
    t_own, t_lib = [], []
    r_own = r_lib = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        r_own = own()
        t1 = time.perf_counter()
        r_lib = lib()
        t2 = time.perf_counter()
        t_own.append(t1 - t0)
        t_lib.append(t2 - t1)
    return t_own, r_own, t_lib, r_lib


def patched(target, name: str, replacement, fn):
    """``fn`` run with ``target.name`` replaced (the module-level look-up of its callers)."""
    def run():
        with mock.patch.object(target, name, replacement):
            return fn()
    return run


ROWS: list[dict] = []
BLAS = "as found"


def report(case: str, t_own: list[float], t_sk: list[float], err_own: float, err_sk: float,
           tol: float | None) -> None:
    """One table row: best times, ratio of the best and of the median times, max errors."""
    best_o, best_s = min(t_own), min(t_sk)
    med = float(np.median(t_sk) / np.median(t_own))
    row = dict(case=case, blas_threads=BLAS, t_own_s=best_o, t_skimage_s=best_s, ratio=best_s / best_o,
               ratio_median=med, err_own=err_own, err_skimage=err_sk, tolerance=tol)
    ROWS.append(row)
    tol_s = f"{tol:.2f}" if tol is not None else "-"
    print(f"{case:40s} {best_o * 1e3:9.2f} {best_s * 1e3:9.2f} {best_s / best_o:6.2f} {med:6.2f}  "
          f"{err_own:8.4f} {err_sk:8.4f} {tol_s:>6s}")


# --- SXDM --------------------------------------------------------------------------------

def _blob(cy, cx, n=32):
    y, x = np.mgrid[0:n, 0:n].astype(float)
    r = np.hypot((y - cy) / 7.0, (x - cx) / 5.0)
    return 0.5 * (1 - np.tanh((r - 1.0) / 0.15)) * (1 + 0.3 * np.cos((y - cy) / 3.0))


def bench_sxdm_blobs(repeat: int) -> None:
    c = (15.0, 16.0)
    ref = _blob(*c)
    # the three shifts of test_register_translation_recovers_subpixel_shifts (atol 0.03)
    true = np.array([[0.37, -1.21], [-2.6, 0.05], [0.0, 0.0]])
    mov = np.stack([_blob(c[0] + dy, c[1] + dx) for dy, dx in true])
    for up in (100, 50):
        t_o, e_o, t_s, e_s = best_of_both(functools.partial(own_register_translation, ref, mov, upsample=up),
                                          functools.partial(sxdm.register_translation, ref, mov, upsample=up),
                                          repeat)
        report(f"sxdm test blobs 3×32², upsample {up}", t_o, t_s, np.abs(e_o - true).max(),
               np.abs(e_s - true).max(), 0.03)
    # a rocking scan's worth: 41 maps, random sub-pixel shifts within ±3 steps
    rng = np.random.default_rng(1)
    for n in (24, 32, 64):
        true = rng.uniform(-3, 3, (41, 2))
        cc = (n / 2 - 1, n / 2)
        ref = _blob(*cc, n=n)
        mov = np.stack([_blob(cc[0] + dy, cc[1] + dx, n=n) for dy, dx in true])
        t_o, e_o, t_s, e_s = best_of_both(functools.partial(own_register_translation, ref, mov),
                                          functools.partial(sxdm.register_translation, ref, mov), repeat)
        report(f"sxdm blobs 41×{n}², upsample 50", t_o, t_s, np.abs(e_o - true).max(),
               np.abs(e_s - true).max(), None)


@functools.cache
def _drift_mapper():
    from strainstream.sim.sxdm_frames import particle_preset, simulate_sxdm

    # the drift_sim fixture of tests/sxdm/test_sxdm_mapper.py
    sim = simulate_sxdm(particle_preset("SC-NM91", "charged", ny=24, nx=24, seed=3), shape=(48, 48), seed=5)
    mp = sxdm.StrainMapper(sim.metadata, (24, 24), theta_deg=sim.theta_deg,
                           registration_reference=sim.reference_index)
    iy, ix = (a.ravel() for a in np.meshgrid(np.arange(24), np.arange(24), indexing="ij"))
    for i in range(sim.n_theta):
        mp.add_frames(sim.theta_deg[i], iy, ix, sim.frames_at(i).reshape(-1, *sim.shape))
    return sim, mp


def bench_sxdm_mapper(repeat: int) -> None:
    sim, mp = _drift_mapper()
    own = patched(sxdm_reg, "register_translation", own_register_translation, mp.drift_shifts)
    t_o, s_o, t_s, s_s = best_of_both(own, mp.drift_shifts, repeat)
    bright = slice(17, 24)  # as in the test (atol 0.1 on these angles)
    err_o, err_s = (float(np.abs(s[bright] + sim.drift_px[bright]).max()) for s in (s_o, s_s))
    report("sxdm StrainMapper.drift_shifts 41×24²", t_o, t_s, err_o, err_s, 0.1)
    err_o, err_s = (float(np.abs(s + sim.drift_px).max()) for s in (s_o, s_s))
    print(f"{'  (all 41 angles, max |error|)':40s} {'':36s}  {err_o:8.4f} {err_s:8.4f}")


# --- TXM-XANES ---------------------------------------------------------------------------

def _particles(shape=(96, 112)) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    img = ((yy - 50) ** 2 + (xx - 55) ** 2 < 28**2) * 0.6
    img += ((yy - 30) ** 2 + (xx - 40) ** 2 < 9**2) * 0.3
    img += ((yy - 70) ** 2 + (xx - 85) ** 2 < 12**2) * 0.4
    return ndimage.gaussian_filter(img, 1.0)


def _each(fn, pairs) -> np.ndarray:
    return np.array([fn(r, m) for r, m in pairs])


def bench_xanes_pairs(repeat: int) -> None:
    ref = _particles()
    trues = [(1.3, -2.7), (0.25, 0.6), (-3.4, 4.15), (0.0, 0.0)]  # test_xanes_align.py, atol 0.05
    for noise in (0.0, 0.01):
        rng = np.random.default_rng(0)
        pairs = []
        for t in trues:
            mov = ndimage.shift(ref, t, order=3, mode="nearest")
            pairs.append((ref + noise * rng.standard_normal(ref.shape),
                          mov + noise * rng.standard_normal(ref.shape)))
        expected = -np.array(trues)
        t_o, e_o, t_s, e_s = best_of_both(functools.partial(_each, own_phase_correlation_shift, pairs),
                                          functools.partial(_each, xanes.phase_correlation_shift, pairs),
                                          repeat)
        report(f"xanes test pairs 4×96×112, noise {noise}", t_o, t_s, np.abs(e_o - expected).max(),
               np.abs(e_s - expected).max(), 0.05)
        if noise:  # plain skimage (no window, no low-pass): what the extras buy
            from skimage.registration import phase_cross_correlation

            e_p = np.array([phase_cross_correlation(r, m, upsample_factor=50)[0] for r, m in pairs])
            print(f"{'  plain skimage phase correlation':40s} {'':36s}  {'':8s} "
                  f"{np.abs(e_p - expected).max():8.4f}")


def bench_xanes_stacks(repeat: int) -> None:
    from strainstream.sim import txm_images as T

    for noise, size, tol in ((False, 96, 0.07), (True, 192, 0.15)):  # test_xanes_align.py
        scan = T.simulate_txm_scan(sample=T.particle_sample((size, size)), magnification_changes=False,
                                   drift_px_rms=0.7, seed=5, noise=noise)
        a = xanes.absorbance_from_counts(scan.stack, scan.flats, scan.darks)
        lib = functools.partial(xanes.register_stack, a)
        own = patched(xanes_align, "phase_correlation_shift", own_phase_correlation_shift, lib)
        t_o, r_o, t_s, r_s = best_of_both(own, lib, repeat)
        err_o, err_s = (float(np.abs(r.shifts_px + scan.drift_px - scan.drift_px[r.reference_index]).max())
                        for r in (r_o, r_s))
        report(f"xanes register_stack {a.shape[0]}×{size}², noise {noise}", t_o, t_s, err_o, err_s, tol)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--skip-mapper", action="store_true",
                    help="skip the StrainMapper drift case (feeds 24k frames first)")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args()
    import skimage

    print(f"scikit-image {skimage.__version__}, numpy {np.__version__}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    global BLAS
    n_blas = max((p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"), default=1)
    for BLAS in (f"{n_blas} (as found)", "1"):
        print(f"\nBLAS threads: {BLAS}")
        print(f"{'case':40s} {'own ms':>9s} {'skim ms':>9s} {'ratio':>6s} {'median':>6s}  "
              f"{'err own':>8s} {'err skim':>8s} {'tol':>6s}")
        with threadpool_limits(limits=None if "found" in BLAS else 1, user_api="blas"):
            bench_sxdm_blobs(args.repeat)
            if not args.skip_mapper:
                bench_sxdm_mapper(max(1, args.repeat // 2))
            bench_xanes_pairs(args.repeat)
            bench_xanes_stacks(max(1, args.repeat // 2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_average": os.getloadavg(), "rows": ROWS}, f, indent=1)


if __name__ == "__main__":
    main()
