"""The ``strainstream`` command: one entry, every sub-command registered from one list.

Each sub-command lives in a module of this package with a ``register(subparsers)`` function
that adds its parser(s) and sets ``func`` (the handler, ``args -> exit code``); handlers
import what they need inside, so ``strainstream --help`` and the file-analysis commands start
fast and need no server. ``strainstream COMMAND ...`` imports and registers only COMMAND's
module (:data:`COMMAND_OF`; the full parser for ``--help`` and unknown commands). The modules, in the order ``--help`` lists them:

=============  ======================================================================
module         sub-commands
=============  ======================================================================
``demo``       demo
``serve``      serve, worker, spool
``runs``       results, replay, plot
``report``     report
``beamline``   beamline up | status
``console``    console
``queue``      queue up | status | plans
``deploy``     deploy up | status
``dashboard``  dashboard
``keys``       keys create | list | revoke
``reprocess``  reprocess
``config``     config show | schema
``xrd``        xrd refine | calibrate
``sxdm``       sxdm map
``xanes``      xanes whiteline
=============  ======================================================================

Errors: anything deriving from :class:`strainstream.errors.StrainstreamError` (and, for the
file-analysis commands, ``ValueError``/``OSError`` from reading the user's files) is printed
as one line ``strainstream COMMAND: error: MESSAGE`` with exit code 2; Ctrl-C gives 130.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from strainstream.errors import StrainstreamError

from ._common import Parser

__all__ = ["COMMAND_MODULES", "COMMAND_OF", "build_parser", "main", "run_command"]

#: the modules of this package that register sub-commands, in ``--help`` order
COMMAND_MODULES = ("demo", "serve", "runs", "report", "import_", "beamline", "console", "queue", "deploy",
                   "dashboard", "keys", "reprocess", "config", "xrd", "sxdm", "xanes")
#: the module of :data:`COMMAND_MODULES` that registers each sub-command (a test checks it):
#: ``strainstream COMMAND ...`` imports and registers only that module
COMMAND_OF = {
    "demo": "demo", "serve": "serve", "worker": "serve", "spool": "serve", "runs": "runs",
    "results": "runs", "replay": "runs", "plot": "runs", "report": "report", "import": "import_", "beamline": "beamline",
    "console": "console", "queue": "queue", "deploy": "deploy", "dashboard": "dashboard", "keys": "keys",
    "reprocess": "reprocess", "config": "config", "xrd": "xrd", "sxdm": "sxdm", "xanes": "xanes",
}
#: sub-commands that log at INFO by default (long-running services)
_SERVICES = ("serve", "worker")


def build_parser(command: str | None = None) -> Parser:
    """The ``strainstream`` parser with every sub-command of :data:`COMMAND_MODULES`, or (``command``
    one of :data:`COMMAND_OF`) with only the sub-commands of the module that registers it: the
    same parse of ``strainstream COMMAND ...`` without importing the other modules (the
    beamline's configuration model, the deployment's supervisor, ...)."""
    parser = Parser(prog="strainstream",
                    description="Live streaming analysis for operando battery-cathode beamline studies.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    modules = COMMAND_MODULES if command not in COMMAND_OF else (COMMAND_OF[command],)
    for name in modules:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    parser.set_defaults(known_commands=frozenset(sub.choices) if len(modules) > 1 else frozenset(COMMAND_OF))
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The sub-command ``argv`` names (after the top-level ``-v``), else None (help, a typo: the
    full parser answers)."""
    for arg in argv:
        if arg not in ("-v", "--verbose"):
            return arg if arg in COMMAND_OF else None
    return None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def run_command(command: str, handler: Callable[[], int], reports: tuple[type[BaseException], ...] = ()) -> int:
    """Run a sub-command's handler; user-fixable errors become one line on stderr.

    Returns the handler's exit code; 2 (or the error's ``exit_code``) for a
    :class:`StrainstreamError` or one of ``reports``; 130 on Ctrl-C (128 + the
    signal a command turned into one: 143 SIGTERM, 129 SIGHUP).
    """
    try:
        return int(handler() or 0)
    except StrainstreamError as exc:
        print(f"strainstream {command}: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except reports as exc:
        print(f"strainstream {command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C (or a signal a command turned into one)
        signum = int(getattr(exc, "signum", 2))  # SIGINT unless the command says otherwise
        detail = f": {_one_line(exc)}" if str(exc) else ""
        print(f"strainstream {command}: interrupted{detail}", file=sys.stderr)
        return 128 + signum
    except BrokenPipeError:  # the reader went away (`strainstream results UID --json | head`)
        # as a shell tool does: quietly, and without a second error when Python flushes stdout
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``strainstream``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(argv))
    command = argv[0] if argv and argv[0] in parser.get_default("known_commands") else ""
    try:
        args = parser.parse_args(argv)
    except StrainstreamError as exc:  # usage error: one line
        prefix = f"strainstream {command}" if command else "strainstream"
        print(f"{prefix}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help()
        return 0
    if getattr(args, "func", None) is None:  # a group (``queue``) without its action
        if getattr(args, "group_exit", 2) == 0:  # the analysis groups answer with their help
            args.group_parser.print_help()
            return 0
        actions = next(a.choices for a in args.group_parser._actions if a.choices and a.dest == "action")
        print(f"strainstream {args.command}: error: no action given; usage: strainstream "
              f"{args.command} {{{','.join(actions)}}} [options] (see `strainstream {args.command} "
              "ACTION --help`)", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO if args.verbose or args.command in _SERVICES else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("silx").setLevel(logging.ERROR)  # pyFAI's silx: "Unable to import pyOpenCl"
    if not args.verbose:  # one INFO line per HTTP request (health checks twice a second) is noise
        logging.getLogger("httpx").setLevel(logging.WARNING)
    return run_command(args.command, lambda: args.func(args), getattr(args, "reports", ()))


def command_main(name: str) -> Callable[[Sequence[str] | None], int]:
    """``main(argv)`` of one sub-command (``strainstream NAME ARGV...``), for scripts and tests."""

    def _main(argv: Sequence[str] | None = None) -> int:
        return main([name, *(sys.argv[1:] if argv is None else argv)])

    _main.__doc__ = f"``strainstream {name} ARGV...``; returns the exit code."
    return _main
