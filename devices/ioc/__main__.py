"""Launcher: ``python -m strainstream.devices.ioc {cycler,endstation,beam} --prefix SS: --port N``."""

from __future__ import annotations

import importlib
import sys

IOCS = ("cycler", "endstation", "beam")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in IOCS:
        print(f"usage: python -m strainstream.devices.ioc {{{','.join(IOCS)}}} --prefix P --port N "
              "[options]  (--help after the name for the options)", file=sys.stderr)
        return 2
    mod = importlib.import_module(f"strainstream.devices.ioc.{argv[0]}")
    return mod.main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
