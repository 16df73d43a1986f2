"""Synthetic derived-results entries with known values, for the figure tests.

The operando XRD entry follows the simulated SC-NM91 coin cell (:mod:`strainstream.sim.cell`):
cycler readings and the lattice of its phase(s) at each frame, an (003) window of Gaussian
peaks at Q = 6π/c, laid out exactly as the ``operando_xrd`` callback stores its rows
(``columns`` as lists, see :func:`strainstream.callbacks.sinks.read_results`).
"""

from __future__ import annotations

import contextlib
import io
import math
import struct
from pathlib import Path

import numpy as np

from strainstream.callbacks.xrd import Q003_GRID_A_INV

#: the start document of the synthetic operando run (what the figure title reads)
XRD_START = {"uid": "0123456789abcdef", "experiment": "operando_xrd", "material": "SC-NM91",
             "rate_mA_g": 200.0, "sample": "coin cell 7", "time": 1.7e9}


def operando_xrd_entry(n: int = 80, preset: str = "SC-NM91", rate_mA_g: float = 200.0) -> dict:
    """A results entry of ``operando_xrd`` for one charge of the simulated cell, ``n`` frames."""
    from strainstream.sim.cell import CoinCell

    cell = CoinCell(preset, mass_mg=10.0)
    cell.set_mode("CC", current_mA_g=rate_mA_g, v_limit_V=4.5)
    # time to 4.5 V at this rate: practical capacity / rate, hours → s; frames evenly spaced
    dt = cell.practical_capacity_mAh_g / rate_mA_g * 3600.0 / (n - 1)
    keys = ("cell_time_s", "time", "voltage_V", "current_mA", "capacity_mAh_g", "flag", "n_phases",
            *(f"{c}{s}" for s in ("", "_2") for c in ("a_A", "c_A", "volume_A3", "microstrain", "fraction")),
            "delta_c_A", "seq_num")
    cols: dict[str, list] = {k: [] for k in keys}
    i003 = []
    for k in range(n):
        if k:
            cell.step(dt)
        rb = cell.readbacks()
        phases = sorted(cell.lattice(), key=lambda p: -p.c_A)  # the refiner's order: largest c first
        cols["seq_num"].append(k + 1)
        cols["cell_time_s"].append(rb["time_s"])
        cols["time"].append(1.7e9 + rb["time_s"] / 100.0)
        cols["voltage_V"].append(rb["voltage_V"])
        cols["current_mA"].append(rb["current_mA"])
        cols["capacity_mAh_g"].append(rb["capacity_mAh_g"])
        cols["flag"].append("")
        cols["n_phases"].append(len(phases))
        for sfx, ph in zip(("", "_2"), (*phases, None, None), strict=False):
            for c, v in (("a_A", ph and ph.a_A), ("c_A", ph and ph.c_A), ("volume_A3", ph and ph.volume_A3),
                         ("microstrain", ph and ph.microstrain), ("fraction", ph and ph.fraction)):
                cols[f"{c}{sfx}"].append(math.nan if ph is None else float(v))
        cols["delta_c_A"].append(abs(phases[0].c_A - phases[1].c_A) if len(phases) == 2 else math.nan)
        profile = sum(p.fraction * np.exp(-0.5 * ((Q003_GRID_A_INV - 6 * math.pi / p.c_A) / 0.006) ** 2)
                      for p in phases)
        i003.append(1000.0 * profile + 20.0)
    for j in range(Q003_GRID_A_INV.size):
        cols[f"i003_{j:02d}"] = [float(row[j]) for row in i003]
    c = np.array(cols["c_A"])
    c2 = np.array(cols["c_A_2"])
    c_all = np.fmax(c, np.nan_to_num(c2, nan=-np.inf))
    c_max = float(c_all.max())
    summary = {"frames_refined": n, "frames_flagged": 0, "c_first_A": float(c[0]), "c_max_A": c_max,
               "c_last_A": float(c[-1]), "c_contraction_pct": float(100.0 * (c_max - c[-1]) / c_max),
               "max_delta_c_A": float(np.nanmax(np.r_[0.0, cols["delta_c_A"]]))}
    return {"version": "1", "status": "complete", "n_rows": n, "summary": summary, "columns": cols}


def sxdm_arrays(ny: int = 24, nx: int = 28, seed: int = 1) -> dict[str, np.ndarray]:
    """Maps of one round particle: strain ±2e-3, tilts ±0.05°, NaN outside the particle."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:ny, 0:nx]
    r = np.hypot((yy - ny / 2) / (ny * 0.38), (xx - nx / 2) / (nx * 0.38))
    mask = r < 1.0
    strain = 2e-3 * np.sin(xx / 3.0) * np.cos(yy / 4.0) + rng.normal(0, 2e-4, mask.shape)
    tilt_xy = -0.05 * np.sin(xx / 3.0) * np.cos(yy / 4.0)
    tilt_xz = 0.03 * (yy - ny / 2) / ny
    out = {"intensity": np.where(mask, 1000.0 * (1.2 - r), 5.0), "mask": mask}
    for key, v in (("strain", strain), ("tilt_xy_deg", tilt_xy), ("tilt_xz_deg", tilt_xz)):
        out[key] = np.where(mask, v, np.nan)
    out["d_spacing_A"] = np.where(mask, 4.73 * (1 + strain), np.nan)
    return out


def sxdm_entry(arrays: dict[str, np.ndarray]) -> dict:
    """A results entry of ``sxdm`` (rocking-curve rows, summary) for ``arrays``."""
    theta = np.repeat(np.linspace(8.0, 9.2, 9), 4)
    total = 1e5 * np.exp(-0.5 * ((theta - 8.6) / 0.25) ** 2)
    s = arrays["strain"][arrays["mask"]]
    summary = {"n_pixels": int(arrays["mask"].sum()), "strain_std": float(np.std(s)), "step_nm": 50.0,
               "tilt_xy_std_deg": float(np.nanstd(arrays["tilt_xy_deg"])),
               "tilt_xz_std_deg": float(np.nanstd(arrays["tilt_xz_deg"]))}
    return {"version": "1", "status": "complete", "n_rows": theta.size, "summary": summary,
            "columns": {"theta_deg": theta.tolist(), "total_counts": total.tolist(),
                        "flag": [""] * theta.size, "seq_num": list(range(1, theta.size + 1))}}


def txm_arrays(ny: int = 60, nx: int = 80, seed: int = 2) -> dict[str, np.ndarray]:
    """Two particles with a white-line gradient (8349–8352 eV) and two outlier pixels outside them.

    Returns the arrays and, under ``"_outliers"``, the (iy, ix) of the outliers.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:ny, 0:nx]
    p1 = np.hypot(yy - 25, xx - 25) < 14
    p2 = np.hypot(yy - 38, xx - 58) < 12
    mask = p1 | p2
    wl = 8349.0 + 3.0 * xx / nx + rng.normal(0, 0.2, mask.shape)
    wl = np.where(mask, wl, np.nan)
    jump = np.where(mask, 1.0, 0.02) + rng.normal(0, 0.01, mask.shape)
    outliers = [(3, 75), (55, 4)]  # isolated noise "voxels" far from the particles, wild energies
    for (iy, ix), e in zip(outliers, (8341.0, 8359.5), strict=True):
        mask[iy, ix] = True
        wl[iy, ix] = e
    return {"whiteline_eV": wl, "mask": mask, "edge_jump": jump, "_outliers": np.array(outliers)}


def txm_entry(arrays: dict[str, np.ndarray]) -> dict:
    """A results entry of ``txm_xanes`` (per-frame rows, summary with histogram) for ``arrays``."""
    wl = arrays["whiteline_eV"][np.isfinite(arrays["whiteline_eV"])]
    counts, edges = np.histogram(wl, bins=50)
    energies = np.arange(8330.0, 8371.0, 1.0)
    cols = {"energy_eV": [], "image_mean": [], "role": [], "flag": [], "seq_num": []}
    for e in energies:
        for role, mean in (("sample", 300.0 - 80.0 / (1 + math.exp(-(e - 8345.0)))), ("flat", 400.0)):
            cols["energy_eV"].append(float(e))
            cols["image_mean"].append(mean)
            cols["role"].append(role)
            cols["flag"].append("")
            cols["seq_num"].append(len(cols["seq_num"]) + 1)
    summary = {"whiteline_mean_eV": float(wl.mean()), "whiteline_std_eV": float(wl.std()),
               "n_voxels": int(wl.size), "histogram_counts": counts.tolist(),
               "histogram_edges_eV": edges.tolist()}
    return {"version": "1", "status": "complete", "n_rows": len(cols["seq_num"]), "summary": summary,
            "columns": cols}


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``strainstream ARGV`` in process: (exit code, stdout, stderr)."""
    from strainstream.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def png_size(path) -> tuple[int, int]:
    """(width, height) in pixels of the PNG file ``path``."""
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])
