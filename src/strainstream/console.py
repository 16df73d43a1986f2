"""``strainstream console``: IPython with the beamline profile (RE, db, devices, plans).

The namespace is :func:`strainstream.profile.build_namespace` — the objects RE Manager runs
from the queue (``deploy/queueserver``). Interactive by default; ``-c CODE`` or
``--execute FILE`` run code in that namespace and exit (exit code 1 if it raised)::

    strainstream console --data-dir DIR --beamline-ports cycler=5064,endstation=5066,beam=5068
    strainstream console --data-dir DIR -c "RE(count([xrd], 3))"
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["main"]

PROG = "strainstream console"


def _banner(ns: dict, missing: list[str]) -> str:
    from strainstream.profile import summary

    text = "strainstream console — the beamline profile (strainstream.profile)\n" + summary(ns)
    if missing:
        text += f"\nNOT CONNECTED (IOC down or unreachable): {', '.join(missing)}"
    return text + "\n"


def main(argv: list[str] | None = None) -> int:
    """``strainstream console [options] [-c CODE | --execute FILE]``; returns the exit code."""
    from strainstream.queue import add_profile_args, profile_from_args

    ap = argparse.ArgumentParser(prog=PROG, description=(
        "IPython session with the RunEngine (TiledWriter, progress, table), the beamline's "
        "devices and the plans of the strainstream profile."))
    add_profile_args(ap)
    ap.add_argument("--connect-timeout", type=float, default=10.0,
                    help="seconds to wait for the devices to connect (default 10)")
    ap.add_argument("--offline", action="store_true",
                    help="no tiled server: runs are not stored (tests of devices and plans)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("-c", dest="code", default=None, help="run CODE in the namespace and exit")
    mode.add_argument("--execute", default=None, metavar="FILE",
                      help="run the Python FILE in the namespace and exit")
    args = ap.parse_args(argv)
    if args.execute and not Path(args.execute).is_file():
        print(f"{PROG}: error: no such file {args.execute!r}", file=sys.stderr)
        return 2
    try:
        config, epics = profile_from_args(args)
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if config.uri is None and not args.offline:
        print(f"{PROG}: error: no tiled server to store the runs: pass --data-dir of a running "
              "`strainstream serve`, --uri (or $STRAINSTREAM_URI), or --offline", file=sys.stderr)
        return 2
    # Channel Access reads its address list once, when its context is created: set it first
    os.environ.update(epics)

    from strainstream.profile import build_namespace, connect_devices

    ns = build_namespace(config)
    missing = connect_devices(ns, args.connect_timeout)
    try:
        return _run_ipython(ns, missing, code=args.code, execute=args.execute)
    finally:
        if "epics.ca" in sys.modules:  # close CA before exit: no disconnect noise at shutdown
            import epics

            epics.ca.finalize_libca()


def _run_ipython(ns: dict, missing: list[str], *, code: str | None, execute: str | None) -> int:
    import IPython
    from traitlets.config import Config

    cfg = Config()
    cfg.TerminalInteractiveShell.banner1 = _banner(ns, missing)
    cfg.TerminalIPythonApp.display_banner = code is None and execute is None
    cfg.InteractiveShellApp.hide_initial_ns = True
    argv = ["--no-confirm-exit"]
    if execute is not None:
        path = str(Path(execute).resolve())
        code = (f"get_ipython().safe_execfile({path!r}, get_ipython().user_ns, "
                "raise_exceptions=True)")
    elif missing and code is not None:
        print(f"{PROG}: warning: not connected: {', '.join(missing)}", file=sys.stderr)
    if code is not None:
        argv += ["-c", code]
    try:
        IPython.start_ipython(argv=argv, user_ns=ns, config=cfg)
    except SystemExit as exc:  # IPython exits with 1 when -c code raised
        return exc.code if isinstance(exc.code, int) else 1
    return 0
