"""``strainstream demo``: server, IOCs and worker started, a simulated experiment, a summary."""

from __future__ import annotations

import argparse
import sys

from ._common import CommandError, add_server_options, data_dir_of, number, print_json

__all__ = ["register"]

#: strainstream.demo.EXPERIMENTS (kept here: the parser is built without importing the demo)
EXPERIMENTS = ("operando_xrd", "sxdm", "txm_xanes", "study", "frame_series")

#: XRD frame sizes the simulated detector offers (the 2048² panel binned 1x to 16x)
FRAME_SIZES = (2048, 1024, 512, 256, 128)


def _frame_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value not in FRAME_SIZES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a frame size of the simulated 2048x2048 detector; allowed "
            f"{', '.join(map(str, FRAME_SIZES))}")
    return value


def _writable_data_dir(path: str) -> str:
    """Create the data directory (and parents) or say in one line why it cannot be used."""
    import os
    from pathlib import Path

    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"--data-dir {path}: cannot create it ({exc.strerror or exc})") from None
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        raise CommandError(f"--data-dir {path}: not a writable directory")
    return str(p)


def register(commands) -> None:
    """Add ``demo`` to the sub-command parsers ``commands``."""
    p = commands.add_parser("demo", help="start server + worker, run a simulated experiment, print a summary")
    add_server_options(p, uri=False, api_key=False)
    p.add_argument("--experiment", choices=EXPERIMENTS, default="operando_xrd",
                   help="operando_xrd (default: IOC beamline, CeO2 calibration, live lattice "
                        "refinement while the cell charges), sxdm (raster x rocking map of one "
                        "particle, live strain/rotation maps), txm_xanes (energy scan across the "
                        "Ni K edge, white-line map), study (the four cells SC/PC x NC91/NM91 "
                        "charged with XRD, SXDM of the two SC particles, a TXM scan, the study's "
                        "comparisons and its report in DATA_DIR/report/: HTML + PDF, see `strainstream "
                        "report`) or frame_series (no IOCs)")
    p.add_argument("--frame-size", type=_frame_size, default=None,
                   help=f"XRD frame rows=cols, one of {', '.join(map(str, FRAME_SIZES))} "
                        "(default 1024; study 512)")
    p.add_argument("--rate", type=number(float, low=0, high=5000, low_open=True, unit="mA/g"),
                   default=200.0, help="charge rate, mA/g (0 < RATE <= 5000; default 200)")
    p.add_argument("--duration", type=number(float, low=5, high=86400, unit="s"), default=None,
                   help="wall seconds each charge takes (5 to 86400; default 60; study 30)")
    p.add_argument("--interval", type=number(float, low=0.05, high=3600, unit="s"), default=1.0,
                   help="seconds between XRD frames (0.05 to 3600, less than --duration; default 1)")
    p.add_argument("--frames", type=number(int, low=1, high=100_000), default=20,
                   help="frame_series: number of frames (1 to 100000; default 20)")
    p.add_argument("--delay", type=number(float, low=0, high=3600, unit="s"), default=0.2,
                   help="frame_series: seconds between frames (0 to 3600; default 0.2)")
    p.add_argument("--raster", type=number(int, low=4, high=32), default=6,
                   help="sxdm: raster points per side, 50 nm apart (4 to 32: the simulated "
                        "particle needs 4 x 4; default 6)")
    p.add_argument("--angles", type=number(int, low=3, high=101), default=7,
                   help="sxdm: rocking angles over ±0.6° (3 to 101; default 7)")
    p.add_argument("--energies", type=number(int, low=5, high=201), default=42,
                   help="txm_xanes: energies from 8300 to 8400 eV, coarse below and above the "
                        "edge and fine across it (1 eV steps at the default 42; 5 to 201)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    import contextlib

    study = args.experiment == "study"
    if args.frame_size is None:
        args.frame_size = 512 if study else 1024
    if args.duration is None:
        args.duration = 30.0 if study else 60.0
    if args.experiment in ("operando_xrd", "study") and args.interval >= args.duration:
        raise CommandError(f"--interval {args.interval:g} s must be shorter than --duration "
                           f"{args.duration:g} s (at least one frame during the charge)")
    data_dir = _writable_data_dir(data_dir_of(args))
    from strainstream.demo import run_demo, signals_interrupt

    # bluesky prints suspension notices on stdout: keep stdout for the JSON summary alone;
    # Ctrl-C, SIGTERM and SIGHUP abort the run in progress, stop every process, exit 128 + signal
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout), \
            signals_interrupt() as received:
        try:
            summary = run_demo(data_dir, experiment=args.experiment, frames=args.frames,
                               delay_s=args.delay, frame_size=args.frame_size,
                               rate_mA_g=args.rate, duration_s=args.duration,
                               frame_interval_s=args.interval, raster=args.raster, angles=args.angles,
                               energies=args.energies, quiet=args.json)
        except KeyboardInterrupt as exc:
            exc.signum = received.signum  # strainstream.cli.run_command exits 128 + signum
            raise
    if args.json:
        print_json(summary)
    return 0 if summary["events_analysed"] == summary["events_recorded"] else 1
