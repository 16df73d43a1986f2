"""``strainstream sxdm``: SXDM strain/rotation maps from 5-D rocking-curve data.

    strainstream sxdm map FILE.h5 [--out MAPS.h5] [--plot [PNG]] [--json] [--refine] [--d-ref Å]
"""

from __future__ import annotations

import argparse
import json
import sys

from strainstream.errors import UsageError

from ._common import Parser

PROG = "strainstream sxdm"


__all__ = ["main", "register"]


def register(commands) -> None:
    """Add ``strainstream sxdm map`` to the sub-command parsers ``commands``."""
    p = commands.add_parser("sxdm", help="SXDM strain/rotation maps from 5-D rocking-curve data (map)",
                            description="SXDM strain and rotation maps of single particles.")
    p.set_defaults(group_parser=p, group_exit=0)
    sub = p.add_subparsers(dest="action", metavar="COMMAND", parser_class=Parser)
    m = sub.add_parser(
        "map",
        help="maps and statistics from FILE.h5 (frames, theta_deg, geometry attributes)",
        description="Centre of mass of the 3-D (003) peak per raster point, drift-registered.",
    )
    m.add_argument("file", metavar="FILE.h5", help="SXDM file: frames (n_theta, ny, nx, rows, cols), theta_deg")
    m.add_argument("--out", metavar="MAPS.h5", help="write the maps (intensity, mask, d_spacing_A, strain, tilts)")
    m.add_argument("--json", action="store_true", help="print the particle statistics as one JSON object")
    m.add_argument("--plot", nargs="?", const="", default=None, metavar="PNG", type=_png,
                   help="write a figure of the maps (strain, θxy, θxz, histograms) to PNG (default: "
                        "STEM_sxdm_map.png beside MAPS.h5, else beside FILE.h5)")
    m.add_argument("--d-ref", type=float, metavar="ANGSTROM", help="reference d-spacing for strain_ref, Å")
    m.add_argument("--background", default="auto", help="'auto' (frame border) or counts per pixel per frame")
    m.add_argument("--threshold", default="auto", help="'auto' (Poisson) or counts above background")
    m.add_argument("--no-register", action="store_true", help="do not correct drift between rocking angles")
    m.add_argument("--refine", action="store_true", help="finish with Gaussian fits of the peak projections")
    m.add_argument("--max-chunk-mb", type=float, default=256.0, help="memory bound of one read chunk, MB")
    m.set_defaults(func=_map, reports=(ValueError, OSError))


def _png(text: str) -> str:
    from strainstream.callbacks.plots import png_argument

    return png_argument(text)


_png.__name__ = "PNG"


def _number_or_auto(text: str, name: str) -> str | float:
    if text == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"--{name} must be 'auto' or a number, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    """``strainstream sxdm ARGV...``; returns the exit code (2 on error, one line on stderr)."""
    from strainstream.cli import command_main

    return command_main("sxdm")(argv)


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (h5py/HDF5 messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _map(args: argparse.Namespace) -> int:
    import math

    from strainstream.sxdm import SXDMError
    from strainstream.sxdm._io import map_file, write_maps
    from strainstream.sxdm._mapper import compute_statistics

    if not (math.isfinite(args.max_chunk_mb) and args.max_chunk_mb > 0):
        raise UsageError(f"--max-chunk-mb must be a positive number, got {args.max_chunk_mb}")
    if args.d_ref is not None and not (math.isfinite(args.d_ref) and args.d_ref > 0):
        raise UsageError(f"--d-ref must be a positive d-spacing in Å, got {args.d_ref}")
    maps = map_file(
        args.file,
        max_chunk_mb=args.max_chunk_mb,
        d_ref_A=args.d_ref,
        background=_number_or_auto(args.background, "background"),
        threshold_counts=_number_or_auto(args.threshold, "threshold"),
        register=not args.no_register,
        refine=args.refine,
    )
    for msg in maps.messages:
        print(f"{PROG}: warning: {msg}", file=sys.stderr)
    if args.out:
        write_maps(args.out, maps)
    if not maps.mask.any():
        raise SXDMError("no raster point inside the particle mask" + (f": {maps.messages[0]}" if maps.messages else ""))
    stats = compute_statistics(maps)
    figure = _write_figure(args, maps, stats) if args.plot is not None else None
    if args.json:
        print(json.dumps(stats.to_dict() | ({"plot": figure} if figure else {})))
    else:
        print(f"particle: {stats.n_pixels} raster points, d_mean {stats.d_mean_A:.5f} Å")
        print(f"strain  : std {stats.strain_std:.3e}, range {stats.strain_range:.3e}")
        print(f"tilts   : θxy std {stats.tilt_xy_std_deg:.4f}°, θxz std {stats.tilt_xz_std_deg:.4f}°")
        print(f"strain–θxy correlation {stats.strain_tilt_correlation:+.3f}")
        if args.out:
            print(f"maps written to {args.out}")
        if figure:
            print(f"figure written to {figure}")
    return 0


def _file_metadata(path: str) -> dict:
    """``material``, ``sample`` and ``step_nm`` attributes of the SXDM file, for the figure."""
    import h5py

    from strainstream.sxdm._io import read_sxdm_info

    md: dict = {"step_nm": float(read_sxdm_info(path).geometry.step_nm)}
    with h5py.File(path, "r") as f:
        for key in ("material", "sample"):
            value = f.attrs.get(key)
            if value is not None:
                md[key] = value.decode() if isinstance(value, bytes) else str(value)
    return md


def _write_figure(args: argparse.Namespace, maps, stats) -> str:
    """The SXDM figure of ``maps`` as a PNG (``--plot``); returns its path."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    from strainstream.callbacks.plots import png_path, save_figure
    from strainstream.callbacks.plots.sxdm import sxdm_figure

    md = _file_metadata(args.file)
    arrays = {k: getattr(maps, k) for k in ("intensity", "mask", "strain", "tilt_xy_deg", "tilt_xz_deg")}
    arrays.update(shifts_px=maps.shifts_px, theta_deg=maps.theta_deg)
    entry = {"summary": {**stats.to_dict(), "step_nm": md["step_nm"]}, "columns": {}}
    fig = sxdm_figure(entry, arrays=arrays, start={k: md[k] for k in ("material", "sample") if k in md},
                      source=os.path.basename(args.file))
    return save_figure(fig, png_path(args.plot, args.out or args.file, "sxdm_map"))
