"""``strainstream xrd`` command line: refine a 1-D pattern, calibrate on a CeO2 frame."""

from __future__ import annotations

import json
import sys

from strainstream.errors import UsageError

from ._common import Parser

__all__ = ["main", "register"]


def register(commands) -> None:
    """Add ``strainstream xrd refine | calibrate`` to the sub-command parsers ``commands``."""
    p = commands.add_parser("xrd", help="operando XRD analysis on 1-D patterns (refine) and "
                                        "calibrant frames (calibrate)",
                            description="Operando XRD analysis of 1-D powder patterns.")
    p.set_defaults(group_parser=p, group_exit=0)
    sub = p.add_subparsers(dest="action", metavar="COMMAND", parser_class=Parser)
    r = sub.add_parser("refine", help="refine lattice a, c, volume, microstrain of an R-3m "
                                      "layered oxide from a two-column pattern")
    r.add_argument("file", metavar="FILE.xy",
                   help="two whitespace columns (x, intensity), '#' comments allowed")
    r.add_argument("--wavelength", type=float, default=None,
                   help="X-ray wavelength in Å (default: the --calibration file's, else 0.1665, "
                        "APS 11-ID-C)")
    r.add_argument("--phases", choices=("auto", "1", "2"), default="auto",
                   help="number of layered phases (default auto: H2/H3 split detected)")
    r.add_argument("--x", choices=("q", "two_theta_deg"), default="q",
                   help="first column: Q in Å⁻¹ (default) or 2θ in degrees")
    r.add_argument("--al", choices=("model", "exclude", "none"), default="model",
                   help="Al current-collector peaks: model (default), exclude or none")
    r.add_argument("--kalpha2", nargs="?", type=float, const=1.544414, default=None,
                   metavar="LAMBDA2",
                   help="laboratory Kα1/Kα2 doublet (2θ input): strip the Kα2 component of "
                        "wavelength LAMBDA2 Å (default Cu, 1.544414) before refining with "
                        "--wavelength as Kα1 (default Cu Kα1 1.540593)")
    r.add_argument("--kalpha2-ratio", type=float, default=0.5,
                   help="I(Kα2)/I(Kα1) for --kalpha2 (default 0.5)")
    r.add_argument("--zero-shift", default=None, metavar="DEG|refine",
                   help="2θ input: the diffractometer's 2θ zero shift in degrees (observed = "
                        "true + shift), or 'refine' to refine it within ±0.3° (laboratory "
                        "Bragg-Brentano patterns: an uncorrected 0.1° zero moves c by ~3e-3)")
    r.add_argument("--cell", default=None, metavar="A,C",
                   help="starting lattice a,c in Å (e.g. 2.87,14.2): (003) is searched within "
                        "c ± 4 %% and a within ± 3 %% (weak or spotty patterns)")
    r.add_argument("--q-min", type=float, default=None, help="lowest Q to fit, Å⁻¹")
    r.add_argument("--q-max", type=float, default=None, help="highest Q to fit, Å⁻¹")
    width = r.add_mutually_exclusive_group()
    width.add_argument("--calibration", metavar="GEOM.json", default=None,
                       help="geometry file of `strainstream xrd calibrate --out` (or a PONI file): "
                            "its instrument function (a width per peak; else its one "
                            "instrument_fwhm_A_inv) is removed from the peak widths, and its "
                            "wavelength is used unless --wavelength is given")
    width.add_argument("--instrument-fwhm", type=float, default=None,
                       help="instrumental FWHM in Q, Å⁻¹ (the instrument_fwhm_A_inv of "
                            "strainstream xrd calibrate); without it or --calibration the peak "
                            "widths are taken as all sample (size and microstrain come out wrong)")
    r.add_argument("--calibrant", default=None, metavar="NAME",
                   help="the pattern is a cubic calibrant (CeO2, LaB6, Si): refine its lattice "
                        "parameter instead of a layered oxide and compare with the certified one")
    r.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    c = sub.add_parser("calibrate", help="refine the detector geometry and measure the "
                                         "instrumental FWHM on a calibrant (CeO2) frame")
    c.add_argument("frame", metavar="FRAME.h5",
                   help="calibrant frame: HDF5 file (dataset --dataset), .npy array, or an "
                        "image file fabio reads (TIFF, CBF, EDF..., also gzipped)")
    c.add_argument("--approx", required=True, metavar="GEOM.json",
                   help="approximate geometry: JSON geometry dict (distance_m, poni1_m, "
                        "poni2_m, rot1..3, wavelength_A, pixel_size_um, shape) or a PONI file "
                        "of any version (a file without detector shape takes the frame's); "
                        "distance within ~10 %%, beam centre within a few mm")
    c.add_argument("--detector", default=None, metavar="NAME",
                   help="pyFAI detector name (Pilatus1M, Eiger2_4M, Perkin, ...): its module "
                        "gaps are masked and it is kept in the output geometry")
    c.add_argument("--orientation", type=int, choices=(1, 2, 3, 4), default=None,
                   help="pyFAI detector orientation (default: the geometry's, else 3); 2 for "
                        "a PONI file Dioptas wrote without one (Dioptas flips images up-down)")
    c.add_argument("--mask", default=None, metavar="MASK",
                   help="user mask (non-zero = masked): .npy, or an image file fabio reads "
                        "(e.g. a Dioptas .mask); negative, saturated and gap pixels are "
                        "masked anyway")
    c.add_argument("--no-centre-search", action="store_true",
                   help="start from the --approx beam centre as it is (no search for the "
                        "sharpest rings; use it when that centre is known within a pixel)")
    c.add_argument("--max-rms-px", type=float, default=1.0,
                   help="refuse a calibration whose rms ring residual exceeds this, pixels "
                        "(default 1)")
    c.add_argument("--dataset", default="/entry/data/data",
                   help="HDF5 dataset holding the frame(s) (default /entry/data/data)")
    c.add_argument("--index", type=int, default=0,
                   help="frame index in a 3-D (frames, rows, cols) dataset (default 0)")
    c.add_argument("--calibrant", default="CeO2", help="pyFAI calibrant name (default CeO2)")
    c.add_argument("--npt", type=int, default=2500,
                   help="Q bins of the width measurement; use the operando integration's "
                        "(default 2500)")
    c.add_argument("--no-width", action="store_true",
                   help="do not measure the instrumental FWHM (geometry only)")
    c.add_argument("--out", metavar="GEOM.json", help="write the geometry dict to this file")
    c.add_argument("--json", action="store_true",
                   help="print the geometry dict as one JSON object on stdout")
    r.set_defaults(func=_refine)
    c.set_defaults(func=_calibrate)


def _read_xy(path):
    import numpy as np

    try:
        with open(path, encoding="utf-8", errors="strict") as fh:
            rows = []
            for lineno, line in enumerate(fh, 1):
                text = line.split("#", 1)[0].strip()
                if not text:
                    continue
                parts = text.replace(",", " ").split()
                if len(parts) < 2:
                    raise UsageError(f"{path}:{lineno}: expected two columns (x intensity), "
                                    f"got {text!r}")
                try:
                    rows.append((float(parts[0]), float(parts[1])))
                except ValueError:
                    raise UsageError(f"{path}:{lineno}: not a number: {text!r}") from None
    except FileNotFoundError:
        raise UsageError(f"cannot read {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    if len(rows) < 10:
        raise UsageError(f"{path} holds {len(rows)} data rows; a pattern needs many more")
    arr = np.asarray(rows, dtype=float)
    return arr[:, 0], arr[:, 1]


#: wavelength of the refinement when neither --wavelength nor a calibration gives one (APS 11-ID-C)
DEFAULT_WAVELENGTH_A = 0.1665


def _instrument(args) -> tuple[float, float | dict]:
    """(wavelength Å, instrumental width) from --wavelength, --calibration, --instrument-fwhm.

    The width is the calibration's instrument function (Caglioti U, V, W and η: a width per
    peak) when it carries one, else its one ``instrument_fwhm_A_inv`` or --instrument-fwhm
    (Å⁻¹). Without either width option the FWHM is 0 (the caller warns: the refinement then
    attributes the whole peak width to the sample)."""
    wavelength = args.wavelength
    if args.calibration:
        geometry = _read_geometry(args.calibration)
        fwhm = geometry.get("instrument_function") or geometry.get("instrument_fwhm_A_inv")
        if fwhm is None:
            raise UsageError(f"{args.calibration} holds no instrument_fwhm_A_inv; calibrate with the "
                             "width measured (`strainstream xrd calibrate` without --no-width) or "
                             "pass --instrument-fwhm")
        if wavelength is None:
            wavelength = float(geometry["wavelength_A"])
        elif abs(wavelength - float(geometry["wavelength_A"])) > 1e-4 * wavelength:
            print(f"strainstream xrd: warning: --wavelength {wavelength:g} Å differs from the "
                  f"calibration's {geometry['wavelength_A']:g} Å; using --wavelength", file=sys.stderr)
        return wavelength, (dict(fwhm) if isinstance(fwhm, dict) else float(fwhm))
    if args.instrument_fwhm is not None and not args.instrument_fwhm >= 0:
        raise UsageError(f"--instrument-fwhm must be >= 0 Å⁻¹, got {args.instrument_fwhm}")
    return (DEFAULT_WAVELENGTH_A if wavelength is None else wavelength), (args.instrument_fwhm or 0.0)


def _refine(args) -> int:
    import numpy as np

    from strainstream.xrd import PatternError, refine_pattern

    if args.kalpha2 is not None:
        from strainstream.xrd import CU_KALPHA1_A

        if args.x != "two_theta_deg":
            raise UsageError("--kalpha2 needs a 2θ pattern (--x two_theta_deg)")
        if args.wavelength is None and args.calibration is None:
            args.wavelength = CU_KALPHA1_A
    wavelength, instrument_fwhm = _instrument(args)
    x, y = _read_xy(args.file)
    if args.calibration is None and args.instrument_fwhm is None and not args.calibrant:
        print("strainstream xrd: warning: no instrumental width (--calibration GEOM.json or "
              "--instrument-fwhm): the whole peak width is taken as sample broadening, so size "
              "comes out small and microstrain large", file=sys.stderr)
    zero = None
    if args.zero_shift is not None:
        if args.x != "two_theta_deg":
            raise UsageError("--zero-shift needs a 2θ pattern (--x two_theta_deg)")
        if args.zero_shift != "refine":
            try:
                zero = float(args.zero_shift)
            except ValueError:
                raise UsageError(f"--zero-shift must be degrees or 'refine', got {args.zero_shift!r}") from None
            if not abs(zero) < 5:
                raise UsageError(f"--zero-shift must be below 5 degrees, got {args.zero_shift}")
        else:
            zero = "refine"
    if args.x == "two_theta_deg":
        if np.any(x <= 0) or np.any(x >= 180):
            raise UsageError("2θ values must lie in (0, 180) degrees; is the first column Q? "
                            "(use --x q)")
        if args.kalpha2 is not None:
            from strainstream.xrd import strip_kalpha2

            try:
                y = strip_kalpha2(x, y, wavelength, args.kalpha2, args.kalpha2_ratio)
            except ValueError as exc:
                raise UsageError(f"--kalpha2: {exc}") from None
        shift = zero if isinstance(zero, float) else 0.0
        q = 4 * np.pi * np.sin(np.radians(x - shift) / 2) / wavelength
    else:
        q = x
    q_range = None
    if args.q_min is not None or args.q_max is not None:
        q_range = (args.q_min if args.q_min is not None else -np.inf,
                   args.q_max if args.q_max is not None else np.inf)
    if args.calibrant:
        if zero == "refine":  # a calibrant's lattice is certified: its pattern gives the zero
            raise UsageError("--zero-shift refine is for a sample pattern; with --calibrant give the "
                             "shift in degrees (or none)")
        return _refine_calibrant(args, q, y, wavelength, q_range)
    phases = "auto" if args.phases == "auto" else int(args.phases)
    cell = None
    if args.cell:
        try:
            cell = tuple(float(v) for v in args.cell.split(","))
        except ValueError:
            cell = ()
        if len(cell) != 2:
            raise UsageError(f"--cell must be A,C in Å (e.g. 2.87,14.2), got {args.cell!r}")
    try:
        width = ({"instrument": instrument_fwhm} if isinstance(instrument_fwhm, dict)
                 else {"instrument_fwhm_A_inv": instrument_fwhm})
        if zero is None:
            res = refine_pattern(q, y, wavelength, phases=phases, al=args.al, cell=cell,
                                 q_range_A_inv=q_range, **width)
        else:
            from strainstream.xrd import refine_two_theta_pattern

            res = refine_two_theta_pattern(x, y, wavelength, zero_deg=zero, phases=phases, al=args.al,
                                           cell=cell, q_range_A_inv=q_range, **width)
    except PatternError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(res.to_dict()))
    else:
        zero_text = "" if res.zero_shift_deg is None else f"   2θ zero = {res.zero_shift_deg:+.4f}°"
        print(f"Rwp = {100 * res.rwp:.2f} %   phases = {res.n_phases}   "
              f"flags = {', '.join(res.flags) or '-'}{zero_text}")
        for i, p in enumerate(res.phases, 1):
            size = "∞" if p.size_nm is None else f"{p.size_nm:.0f}"
            print(f"phase {i}: a = {p.a_A:.5f}({p.a_err_A:.1e}) Å  c = {p.c_A:.4f}"
                  f"({p.c_err_A:.1e}) Å  V = {p.volume_A3:.3f} Å³  ε = {p.microstrain:.2e}  "
                  f"D = {size} nm  fraction = {p.fraction:.3f}")
    return 0


def _refine_calibrant(args, q, y, wavelength, q_range) -> int:
    from strainstream.xrd import refine_calibrant_lattice

    try:
        res = refine_calibrant_lattice(q, y, wavelength, args.calibrant, q_range_A_inv=q_range)
    except ValueError as exc:  # PatternError, unknown or non-cubic calibrant
        raise UsageError(str(exc)) from None
    out = {"calibrant": res.calibrant, "a_A": res.a_A, "a_err_A": res.a_err_A,
           "reference_a_A": res.reference_a_A, "relative_deviation": res.relative_deviation,
           "n_peaks": res.n_peaks, "wavelength_A": wavelength}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{res.calibrant}: a = {res.a_A:.5f}({res.a_err_A:.1e}) Å from {res.n_peaks} "
              f"reflections; reference {res.reference_a_A:.6f} Å, deviation "
              f"{res.relative_deviation:+.1e}")
    return 0


def _read_frame(path, dataset, index):
    """One 2-D frame from an HDF5 dataset (2-D, or 3-D with a frame index) or a .npy file."""
    from pathlib import Path

    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"cannot read {path}: no such file")
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return _read_image(p, index)
    if p.suffix.lower() == ".npy":
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:  # EOFError: an empty file
            raise UsageError(f"cannot read {path} as a .npy array: {exc or type(exc).__name__}") from None
        where = str(path)
    else:
        import h5py

        try:
            fh = h5py.File(p, "r")
        except OSError as exc:
            raise UsageError(f"cannot read {path} as HDF5 (or give a .npy file or an image file: "
                             f"{', '.join(IMAGE_SUFFIXES)}): {exc}") from None
        with fh:
            obj = fh.get(dataset)
            if not isinstance(obj, h5py.Dataset):
                found = []
                fh.visititems(lambda name, o: found.append("/" + name)
                              if isinstance(o, h5py.Dataset) and o.ndim in (2, 3) else None)
                hint = f"; 2-D/3-D datasets in the file: {', '.join(found[:5])}" if found else ""
                raise UsageError(f"{path} has no dataset {dataset}{hint} (use --dataset)")
            return np.asarray(_select_frame(obj, index, f"{path}:{dataset}"))
    return np.asarray(_select_frame(arr, index, where))


#: file name endings read as detector images with fabio (anything else: .npy or HDF5)
IMAGE_SUFFIXES = (".tif", ".tiff", ".cbf", ".edf", ".gz", ".bz2", ".mccd", ".img", ".mar3450",
                  ".mar2300", ".sfrm", ".spe", ".mask")


def _read_image(p, index=0):
    """One frame of an image file fabio reads (TIFF, CBF, EDF, Dioptas .mask...)."""
    import contextlib
    import io

    import fabio
    import numpy as np

    try:  # fabio prints a debugging line on stdout for gzipped files
        with contextlib.redirect_stdout(io.StringIO()):
            img = fabio.open(str(p))
    except Exception as exc:  # fabio raises many types for unknown formats
        raise UsageError(f"cannot read {p} as an HDF5 file, a .npy array or an image file "
                         f"fabio knows: {exc}") from None
    with img:
        if index not in (0, -1) and not 0 <= index < img.nframes:
            raise UsageError(f"{p} holds {img.nframes} frame(s); --index {index} is out of range")
        data = img.getframe(index).data if index not in (0, -1) else img.data
        return np.asarray(_select_frame(np.asarray(data), 0, str(p)))


#: largest calibrant frame read (bytes as float64)
MAX_FRAME_BYTES = 1 << 30


def _select_frame(arr, index, where):
    """One frame of a 2-D/3-D array or dataset, checked (dtype, size) before it is read."""
    if arr.dtype.kind not in "biuf":
        raise UsageError(f"{where} has dtype {arr.dtype}; a detector frame holds integers or floats")
    if arr.ndim in (2, 3) and arr.shape[-1] * arr.shape[-2] * 8 > MAX_FRAME_BYTES:
        raise UsageError(f"{where} declares {arr.shape[-2]}×{arr.shape[-1]} frames: too large to read "
                        f"(limit {MAX_FRAME_BYTES >> 30} GiB)")
    if arr.ndim == 2:
        if index not in (0, -1):
            raise UsageError(f"{where} holds one 2-D frame; --index {index} is out of range")
        return arr[()]
    if arr.ndim == 3:
        n = arr.shape[0]
        if not -n <= index < n:
            raise UsageError(f"{where} holds {n} frames; --index {index} is out of range")
        return arr[index]
    raise UsageError(f"{where} has shape {tuple(arr.shape)}; expected a 2-D frame or a 3-D "
                    "stack (frames, rows, cols)")


def _read_geometry(path, shape=None, orientation=None):
    from pathlib import Path

    from strainstream.xrd import load_poni, validate_geometry

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"cannot read {path}: no such file")
    if p.suffix.lower() == ".poni":
        try:
            return load_poni(p, shape=shape, orientation=orientation)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    try:
        geometry = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read {path} as a JSON geometry: {exc}") from None
    try:
        return validate_geometry(geometry)
    except ValueError as exc:
        raise UsageError(f"{path}: {exc}") from None


def _calibrate(args) -> int:
    import numpy as np

    from strainstream.xrd import calibrate, validate_geometry

    frame = _read_frame(args.frame, args.dataset, args.index)
    approx = _read_geometry(args.approx, shape=frame.shape, orientation=args.orientation)
    if args.orientation is not None:
        approx["orientation"] = args.orientation
    if args.detector:
        approx["detector"] = args.detector
    try:
        approx = validate_geometry(approx)
    except ValueError as exc:
        raise UsageError(f"{args.approx}: {exc}") from None
    mask = None
    if args.mask:
        from pathlib import Path

        mp = Path(args.mask)
        if not mp.is_file():
            raise UsageError(f"cannot read {args.mask}: no such file")
        if mp.suffix.lower() == ".npy":
            try:
                mask = np.load(mp, allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise UsageError(f"cannot read {args.mask} as a .npy array: {exc}") from None
        else:
            mask = _read_image(mp)
        if mask.shape != frame.shape:
            raise UsageError(f"mask {args.mask} has shape {mask.shape}, the frame {frame.shape}")
        mask = mask != 0
    if args.npt < 10:
        raise UsageError(f"--npt must be ≥ 10, got {args.npt}")
    if not args.max_rms_px > 0:
        raise UsageError(f"--max-rms-px must be > 0 px, got {args.max_rms_px}")
    try:
        geometry, diag = calibrate(frame, approx, args.calibrant, mask=mask,
                                   find_centre=not args.no_centre_search,
                                   measure_width=not args.no_width, max_rms_px=args.max_rms_px,
                                   width_options={"npt": args.npt}, return_diagnostics=True)
    except ValueError as exc:  # FrameError, PatternError, unknown calibrant...
        raise UsageError(str(exc)) from None
    if args.out:
        import os

        tmp = f"{args.out}.part-{os.getpid()}"
        try:  # to a temporary file, then renamed: never a half-written geometry
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(geometry, fh, indent=1, allow_nan=False)
                fh.write("\n")
            os.replace(tmp, args.out)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot write {args.out}: {exc}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    if args.json:
        print(json.dumps(geometry))
        return 0
    print(f"{diag['calibrant']}: {diag['n_control_points']} control points on "
          f"{diag['n_rings']} rings, rms residual {diag['rms_px']:.2f} px "
          f"(2θ {diag['rms_2theta_deg']:.4f}°)")
    for key, value in geometry.items():
        print(f"  {key} = {value}")
    width = diag.get("instrument_width")
    if width:
        n_used = sum(width["peaks"]["used"])
        params = ", ".join(f"{k} = {v:.4g}" for k, v in width["params"].items())
        print(f"instrumental FWHM {width['instrument_fwhm_A_inv']:.5f} Å⁻¹ ({width['model']}: "
              f"{params}; {n_used} reflections, scatter {100 * width['rel_scatter']:.1f} %)")
    if args.out:
        print(f"geometry written to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``strainstream xrd ARGV...``; returns the exit code (2 on error, one line on stderr)."""
    from strainstream.cli import command_main

    return command_main("xrd")(argv)
