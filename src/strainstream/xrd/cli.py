"""``strainstream xrd`` command line: refine a 1-D pattern."""

from __future__ import annotations

import argparse
import json
import sys


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr, exit code 2, no usage dump
        raise _CLIError(message)


class _CLIError(Exception):
    pass


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="strainstream xrd",
                description="Operando XRD analysis of 1-D powder patterns.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    r = sub.add_parser("refine", help="refine lattice a, c, volume, microstrain of an R-3m "
                                      "layered oxide from a two-column pattern")
    r.add_argument("file", metavar="FILE.xy",
                   help="two whitespace columns (x, intensity), '#' comments allowed")
    r.add_argument("--wavelength", type=float, default=0.1665,
                   help="X-ray wavelength in Å (default 0.1665, APS 11-ID-C)")
    r.add_argument("--phases", choices=("auto", "1", "2"), default="auto",
                   help="number of layered phases (default auto: H2/H3 split detected)")
    r.add_argument("--x", choices=("q", "two_theta_deg"), default="q",
                   help="first column: Q in Å⁻¹ (default) or 2θ in degrees")
    r.add_argument("--al", choices=("model", "exclude", "none"), default="model",
                   help="Al current-collector peaks: model (default), exclude or none")
    r.add_argument("--q-min", type=float, default=None, help="lowest Q to fit, Å⁻¹")
    r.add_argument("--q-max", type=float, default=None, help="highest Q to fit, Å⁻¹")
    r.add_argument("--instrument-fwhm", type=float, default=0.0,
                   help="instrumental FWHM in Q, Å⁻¹ (default 0)")
    r.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return p


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
                    raise _CLIError(f"{path}:{lineno}: expected two columns (x intensity), "
                                    f"got {text!r}")
                try:
                    rows.append((float(parts[0]), float(parts[1])))
                except ValueError:
                    raise _CLIError(f"{path}:{lineno}: not a number: {text!r}") from None
    except FileNotFoundError:
        raise _CLIError(f"cannot read {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _CLIError(f"cannot read {path}: {exc}") from None
    if len(rows) < 10:
        raise _CLIError(f"{path} holds {len(rows)} data rows; a pattern needs many more")
    arr = np.asarray(rows, dtype=float)
    return arr[:, 0], arr[:, 1]


def _refine(args) -> int:
    import numpy as np

    from . import PatternError, refine_pattern

    x, y = _read_xy(args.file)
    if args.x == "two_theta_deg":
        if np.any(x <= 0) or np.any(x >= 180):
            raise _CLIError("2θ values must lie in (0, 180) degrees; is the first column Q? "
                            "(use --x q)")
        q = 4 * np.pi * np.sin(np.radians(x) / 2) / args.wavelength
    else:
        q = x
    q_range = None
    if args.q_min is not None or args.q_max is not None:
        q_range = (args.q_min if args.q_min is not None else -np.inf,
                   args.q_max if args.q_max is not None else np.inf)
    phases = "auto" if args.phases == "auto" else int(args.phases)
    try:
        res = refine_pattern(q, y, args.wavelength, phases=phases, al=args.al,
                             q_range_A_inv=q_range, instrument_fwhm_A_inv=args.instrument_fwhm)
    except PatternError as exc:
        raise _CLIError(str(exc)) from None
    if args.json:
        print(json.dumps(res.to_dict()))
    else:
        print(f"Rwp = {100 * res.rwp:.2f} %   phases = {res.n_phases}   "
              f"flags = {', '.join(res.flags) or '-'}")
        for i, p in enumerate(res.phases, 1):
            size = "∞" if p.size_nm is None else f"{p.size_nm:.0f}"
            print(f"phase {i}: a = {p.a_A:.5f}({p.a_err_A:.1e}) Å  c = {p.c_A:.4f}"
                  f"({p.c_err_A:.1e}) Å  V = {p.volume_A3:.3f} Å³  ε = {p.microstrain:.2e}  "
                  f"D = {size} nm  fraction = {p.fraction:.3f}")
    return 0


def main(argv: list[str]) -> int:
    """Entry point of ``strainstream xrd``; returns the exit code (2 on error)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        return _refine(args)
    except _CLIError as exc:
        print(f"strainstream xrd: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
