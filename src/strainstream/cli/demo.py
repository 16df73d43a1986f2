"""``strainstream demo``: server, IOCs and worker started, a simulated experiment, a summary."""

from __future__ import annotations

import sys

from ._common import add_server_options, data_dir_of, print_json

__all__ = ["register"]


def register(commands) -> None:
    """Add ``demo`` to the sub-command parsers ``commands``."""
    p = commands.add_parser("demo", help="start server + worker, run a simulated experiment, print a summary")
    add_server_options(p, uri=False, api_key=False)
    p.add_argument("--experiment", choices=["operando_xrd", "frame_series"], default="operando_xrd",
                   help="operando_xrd (default: IOC beamline, CeO2 calibration, live lattice "
                        "refinement while the cell charges) or frame_series (no IOCs)")
    p.add_argument("--frame-size", type=int, default=1024, help="XRD frame rows=cols (divides 2048)")
    p.add_argument("--rate", type=float, default=200.0, help="charge rate, mA/g")
    p.add_argument("--duration", type=float, default=60.0, help="wall seconds the charge takes")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between XRD frames")
    p.add_argument("--frames", type=int, default=20, help="frame_series: number of frames")
    p.add_argument("--delay", type=float, default=0.2, help="frame_series: seconds between frames")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    import contextlib

    from strainstream.demo import run_demo

    # bluesky prints suspension notices on stdout: keep stdout for the JSON summary alone
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
        summary = run_demo(data_dir_of(args), experiment=args.experiment, frames=args.frames,
                           delay_s=args.delay, frame_size=args.frame_size, rate_mA_g=args.rate,
                           duration_s=args.duration, frame_interval_s=args.interval, quiet=args.json)
    if args.json:
        print_json(summary)
    return 0 if summary["events_analysed"] == summary["events_recorded"] else 1
