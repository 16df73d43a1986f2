"""``strainstream xanes`` — TXM-XANES white-line maps from an HDF5 energy stack.

    strainstream xanes whiteline FILE.h5 [--out OUT.h5] [--plot [PNG]] [--json]

FILE.h5 holds ``energies_eV`` (n,) and ``stack`` (n, ny, nx). If ``flats`` (n, ny, nx) and
``darks`` (ny, nx) are present, ``stack`` is raw counts (normalised with the flat of the same
energy, corrected for an optional ``magnification`` (n,) dataset and registered), otherwise
it is absorbance. OUT.h5 receives ``whiteline_eV`` (ny, nx; NaN outside the mask), ``mask``
(bool), ``flags``, ``edge_jump`` and the histogram. ``--plot`` writes a figure (white-line
map with a µm scale bar when the pixel size is known — ``--pixel-size-um`` or a
``pixel_size_um`` (or ``voxel_size_um``) attribute of FILE.h5 —, histogram with mean and σ, edge-jump map, mean
spectrum) to PNG, by default STEM_whiteline.png beside OUT.h5 (else beside FILE.h5).
"""

from __future__ import annotations

import argparse
import json

from strainstream.errors import UsageError

from ._common import Parser

PROG = "strainstream xanes"


__all__ = ["main", "register"]


#: largest input read (bytes as float64, all datasets together)
MAX_INPUT_BYTES = 4 << 30


def register(commands) -> None:
    """Add ``strainstream xanes whiteline`` to the sub-command parsers ``commands``."""
    parser = commands.add_parser("xanes", help="TXM-XANES white-line maps (whiteline)",
                                 description="TXM-XANES analysis: per-voxel white-line energy maps.")
    parser.set_defaults(group_parser=parser, group_exit=0)
    sub = parser.add_subparsers(dest="action", metavar="COMMAND", parser_class=Parser)
    p = sub.add_parser(
        "whiteline",
        help="white-line energy map, mask and statistics from an HDF5 energy stack",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", metavar="FILE.h5", help="input HDF5 (energies_eV, stack[, flats, darks])")
    p.add_argument("--out", metavar="OUT.h5", help="write whiteline_eV, mask, ... to this file")
    p.add_argument("--json", action="store_true", help="print one JSON object with the statistics")
    p.add_argument("--min-edge-jump", type=float, default=0.1,
                   help="mask voxels whose edge jump (absorbance) is below this (default 0.1)")
    p.add_argument("--bandwidth-eV", type=float, default=1.5,
                   help="Gaussian kernel width of the local cubic fit, eV (default 1.5)")
    p.add_argument("--register", choices=("auto", "yes", "no"), default="auto",
                   help="sub-pixel registration across energies (auto: only for raw counts)")
    p.add_argument("--edge-energy", action="store_true",
                   help="also compute the half-jump edge energy map")
    p.add_argument("--bins", type=int, default=50, help="histogram bins (default 50)")
    p.add_argument("--plot", nargs="?", const="", default=None, metavar="PNG", type=_png,
                   help="write a figure of the maps and histogram to PNG (default: "
                        "STEM_whiteline.png beside OUT.h5, else beside FILE.h5)")
    p.add_argument("--pixel-size-um", type=float, default=None, metavar="UM",
                   help="pixel size in the sample plane, µm, for the figure's scale bar "
                        "(default: the file's pixel_size_um or voxel_size_um attribute, else pixel axes)")
    p.set_defaults(func=_whiteline, reports=(ValueError, OSError))


def _png(text: str) -> str:
    from strainstream.callbacks.plots import png_argument

    return png_argument(text)


_png.__name__ = "PNG"


def _read_input(path: str) -> dict:
    import h5py
    import numpy as np

    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot open as HDF5 ({exc})") from None
    with f:
        missing = [k for k in ("energies_eV", "stack") if not isinstance(f.get(k), h5py.Dataset)]
        if missing:
            raise UsageError(
                f"{path}: missing dataset(s) {', '.join(missing)}; the file must hold "
                "energies_eV (n,) and stack (n, ny, nx)"
            )
        _check_layout(path, f)
        data = {"energies_eV": np.asarray(f["energies_eV"][()], dtype=np.float64),
                "stack": np.asarray(f["stack"][()], dtype=np.float64)}
        has_f, has_d = "flats" in f, "darks" in f
        if has_f != has_d:
            raise UsageError(
                f"{path}: {'flats' if has_f else 'darks'} present but "
                f"{'darks' if has_f else 'flats'} missing; raw counts need both flats and darks"
            )
        if has_f:
            data["flats"] = np.asarray(f["flats"][()], dtype=np.float64)
            data["darks"] = np.asarray(f["darks"][()], dtype=np.float64)
        if "magnification" in f:
            data["magnification"] = np.asarray(f["magnification"][()], dtype=np.float64)
        attrs = data["attrs"] = {}  # for the figure's title and scale bar
        for key, name in (("pixel_size_um", "pixel_size_um"), ("voxel_size_um", "pixel_size_um"),
                          ("material", "material"), ("sample", "sample")):
            value = f.attrs.get(key)
            if value is not None and name not in attrs:
                attrs[name] = value.decode() if isinstance(value, bytes) else value
    return data


def _check_layout(path: str, f) -> None:
    """Dataset kinds, dtypes and total size, checked before anything is read (a file may
    declare a 20 GB stack it never stored); shapes are checked by the analysis."""
    import h5py

    total = 0
    for name in ("energies_eV", "stack", "flats", "darks", "magnification"):
        if name not in f:
            continue
        ds = f[name]
        if not isinstance(ds, h5py.Dataset):
            raise UsageError(f"{path}: {name} is not a dataset")
        if ds.dtype.kind not in "biuf":
            raise UsageError(f"{path}: {name} has dtype {ds.dtype}; expected integers or floats")
        total += ds.size * 8
    if total > MAX_INPUT_BYTES:
        raise UsageError(f"{path}: the datasets (stack {f['stack'].shape}) need {total / 2**30:.1f} GiB "
                         f"in memory (limit {MAX_INPUT_BYTES >> 30} GiB)")


def _write_atomic(path: str, write) -> None:
    """``write(tmp_path)``, then rename onto ``path``: never a half-written output file."""
    import os

    tmp = f"{path}.part-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _whiteline(args: argparse.Namespace) -> int:
    import numpy as np

    from strainstream import xanes
    from strainstream.xanes._errors import check_energies

    data = _read_input(args.file)
    e = check_energies(data["energies_eV"], min_points=5)
    stack = data["stack"]
    if stack.ndim != 3 or stack.shape[0] != e.size:
        raise xanes.XanesInputError(
            f"stack shape {stack.shape} disagrees with the {e.size} energies: expected "
            f"({e.size}, ny, nx)"
        )
    raw = "flats" in data
    if raw:
        absorb = xanes.absorbance_from_counts(stack, data["flats"], data["darks"])
    else:
        absorb = stack
    if "magnification" in data:
        absorb = xanes.correct_magnification(absorb, data["magnification"])
    do_reg = args.register == "yes" or (args.register == "auto" and raw)
    shifts = None
    if do_reg:
        reg = xanes.register_stack(absorb)
        absorb, shifts = reg.aligned, reg.shifts_px
    res = xanes.analyse_whiteline(
        e, absorb, min_edge_jump=args.min_edge_jump, bandwidth_eV=args.bandwidth_eV,
        edge_energy=args.edge_energy, bins=args.bins,
    )
    st = res.stats
    valid_jump = res.edge_jump[res.mask]
    summary = {
        "whiteline_mean_eV": st.mean_eV,
        "whiteline_std_eV": st.std_eV,
        "whiteline_median_eV": st.median_eV,
        "n_voxels": st.n_voxels,
        "n_total": res.counts["n_total"],
        "n_masked": res.counts["n_total"] - st.n_voxels,
        "n_no_material": res.counts["n_no_material"],
        "n_nonfinite": res.counts["n_nonfinite"],
        "n_bad_fit": res.counts["n_bad_fit"],
        "edge_jump_median": float(np.median(valid_jump)) if valid_jump.size else float("nan"),
        "edge_reference_eV": res.edge_reference_eV,
        "energy_range_eV": [float(e[0]), float(e[-1])],
        "n_energies": int(e.size),
        "input": "raw counts" if raw else "absorbance",
        "registered": bool(do_reg),
        "max_shift_px": float(np.abs(shifts).max()) if shifts is not None else 0.0,
    }
    if res.edge_energy_eV is not None:
        ee = res.edge_energy_eV[res.mask]
        ee = ee[np.isfinite(ee)]
        summary["edge_energy_mean_eV"] = float(ee.mean()) if ee.size else float("nan")
    if args.pixel_size_um is not None and not (np.isfinite(args.pixel_size_um) and args.pixel_size_um > 0):
        raise UsageError(f"--pixel-size-um must be a positive size in µm, got {args.pixel_size_um}")
    if args.out:
        _write_atomic(args.out, lambda tmp: _write_output(tmp, res, st, shifts, summary))
        summary["out"] = args.out
    if args.plot is not None:
        summary["plot"] = _write_figure(args, data.get("attrs") or {}, e, absorb, res, st, summary)
    if args.json:
        print(json.dumps({k: (None if isinstance(v, float) and v != v else v)
                          for k, v in summary.items()}))
    else:
        print(f"white line: mean {st.mean_eV:.3f} eV, std {st.std_eV:.3f} eV, "
              f"median {st.median_eV:.3f} eV over {st.n_voxels} of {res.counts['n_total']} voxels")
        print(f"masked: {res.counts['n_no_material']} without material "
              f"(edge jump < {args.min_edge_jump}), {res.counts['n_nonfinite']} non-finite, "
              f"{res.counts['n_bad_fit']} bad fits")
        if args.out:
            print(f"wrote {args.out}")
        if args.plot is not None:
            print(f"figure written to {summary['plot']}")
    return 0


def _write_figure(args: argparse.Namespace, attrs: dict, energies, absorb, res, st, summary: dict) -> str:
    """The white-line figure of one analysed stack as a PNG (``--plot``); returns its path.

    Parameters
    ----------
    attrs : dict
        ``pixel_size_um``, ``material``, ``sample`` attributes of the input file (any).
    energies : ndarray, shape (n,)
        eV.
    absorb : ndarray, shape (n, ny, nx)
        Absorbance stack as analysed; its mean over the mask is the spectrum panel.
    """
    import os

    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    from strainstream.callbacks.plots import png_path, save_figure
    from strainstream.callbacks.plots.xanes import txm_xanes_figure

    mask = np.asarray(res.mask, dtype=bool)
    spectrum = np.nanmean(absorb[:, mask], axis=1) if mask.any() else np.full(energies.size, np.nan)
    entry = {"columns": {}, "summary": {**summary, "histogram_counts": np.asarray(st.histogram_counts).tolist(),
                                         "histogram_edges_eV": np.asarray(st.bin_edges_eV).tolist()}}
    arrays = {"whiteline_eV": res.whiteline_eV, "mask": mask, "edge_jump": res.edge_jump}
    pixel = args.pixel_size_um if args.pixel_size_um is not None else attrs.get("pixel_size_um")
    fig = txm_xanes_figure(entry, arrays=arrays, pixel_size_um=pixel,
                           start={k: attrs[k] for k in ("material", "sample") if k in attrs},
                           source=os.path.basename(args.file), spectrum=(energies, spectrum))
    return save_figure(fig, png_path(args.plot, args.out or args.file, "whiteline"))


def _write_output(path: str, res, st, shifts, summary: dict) -> None:
    import h5py
    import numpy as np

    with h5py.File(path, "w") as f:
        f["whiteline_eV"] = res.whiteline_eV
        f["mask"] = res.mask
        f["flags"] = res.flags
        f["edge_jump"] = res.edge_jump
        if res.edge_energy_eV is not None:
            f["edge_energy_eV"] = res.edge_energy_eV
        f["histogram_counts"] = st.histogram_counts
        f["histogram_bin_edges_eV"] = st.bin_edges_eV
        if shifts is not None:
            f["shifts_px"] = shifts
        for k, v in summary.items():
            f.attrs[k] = v if not isinstance(v, list) else np.asarray(v)


def main(argv: list[str] | None = None) -> int:
    """``strainstream xanes ARGV...``; returns the exit code (2 on error, one line on stderr)."""
    from strainstream.cli import command_main

    return command_main("xanes")(argv)
