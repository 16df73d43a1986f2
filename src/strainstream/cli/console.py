"""``strainstream console``: IPython with the beamline profile (:mod:`strainstream.console`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import CommandError
from ._profile import add_profile_options, profile_from_args

__all__ = ["register"]


def register(commands) -> None:
    """Add ``console`` to the sub-command parsers ``commands``."""
    ap = commands.add_parser("console", help="an IPython session with the RunEngine, devices and plans "
                                             "of a profile",
                             description=("IPython session with the RunEngine (TiledWriter, progress, "
                                          "table), the beamline's devices and the plans of the "
                                          "strainstream profile."))
    add_profile_options(ap)
    ap.add_argument("--connect-timeout", type=float, default=10.0,
                    help="seconds to wait for the devices to connect (default 10)")
    ap.add_argument("--offline", action="store_true",
                    help="no tiled server: runs are not stored (tests of devices and plans)")
    ap.add_argument("--figures", action=argparse.BooleanOptionalAction, default=None,
                    help="a live matplotlib window per analysis of the running run, the figures of "
                         "`strainstream plot` (default: on when there is a display, $DISPLAY or "
                         "$MPLBACKEND)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("-c", dest="code", default=None, help="run CODE in the namespace and exit")
    mode.add_argument("--execute", default=None, metavar="FILE",
                      help="run the Python FILE in the namespace and exit")
    ap.set_defaults(func=cmd_console, reports=(ValueError,))


def cmd_console(args) -> int:
    """``strainstream console [options] [-c CODE | --execute FILE]``; returns the exit code."""
    from strainstream.console import run_console

    if args.execute and not Path(args.execute).is_file():
        raise CommandError(f"no such file {args.execute!r}")
    config, epics = profile_from_args(args)
    if config.uri is None and not args.offline:
        raise CommandError("no tiled server to store the runs: pass --data-dir of a running "
                           "`strainstream serve`, --uri (or $STRAINSTREAM_URI), or --offline")
    figures = args.figures
    if figures is None:
        from strainstream.config import environment_value

        figures = bool(environment_value("DISPLAY") or environment_value("MPLBACKEND"))
    if figures and config.uri is None:
        if args.figures:
            raise CommandError("--figures needs a tiled server (the figures show what the worker stores)")
        figures = False
    if figures:
        import dataclasses

        config = dataclasses.replace(config, figures=True)
    return run_console(config, epics, connect_timeout_s=args.connect_timeout, code=args.code,
                       execute=args.execute)
