"""The ``strainstream`` command.

Every sub-command imports what it needs inside its handler, so ``strainstream --help`` and the
analysis-only sub-commands start fast and need no server.

Analysis sub-commands (``xrd``, ``sxdm``, ``xanes``) are delegated to
``strainstream.<name>.cli.main(argv) -> int``, which owns its own argument parser.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

ANALYSIS_COMMANDS = {
    "xrd": "operando XRD analysis on 1-D patterns (refine)",
    "sxdm": "SXDM strain/rotation maps from 5-D rocking-curve data (map)",
    "xanes": "TXM-XANES white-line maps (whiteline)",
}


class CLIError(Exception):
    """An error to report to the user as one line, with a non-zero exit code."""


def _delegate(name: str, argv: list[str]) -> int:
    import importlib

    module = importlib.import_module(f"strainstream.{name}.cli")
    return int(module.main(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="strainstream",
        description="Live streaming analysis for operando battery-cathode beamline studies.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in ANALYSIS_COMMANDS.items():
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ANALYSIS_COMMANDS:
        try:
            return _delegate(argv[0], argv[1:])
        except CLIError as exc:
            print(f"strainstream {argv[0]}: error: {exc}", file=sys.stderr)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
