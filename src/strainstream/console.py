"""``strainstream console``: IPython with the beamline profile (RE, db, devices, plans).

The namespace is :func:`strainstream.profile.build_namespace` — the objects RE Manager runs
from the queue (``deploy/queueserver``). Interactive by default; ``-c CODE`` or
``--execute FILE`` run code in that namespace and exit (exit code 1 if it raised)::

    strainstream console --data-dir DIR --beamline-ports cycler=5064,endstation=5066,beam=5068
    strainstream console --data-dir DIR -c "RE(count([xrd], 3))"
"""

from __future__ import annotations

import sys
from pathlib import Path

from strainstream.config import apply_environment

__all__ = ["run_console"]

PROG = "strainstream console"


def _banner(ns: dict, missing: list[str]) -> str:
    from strainstream.profile import summary

    text = "strainstream console — the beamline profile (strainstream.profile)\n" + summary(ns)
    if missing:
        text += f"\nNOT CONNECTED (IOC down or unreachable): {', '.join(missing)}"
    return text + "\n"


def run_console(config, epics: dict[str, str], *, connect_timeout_s: float = 10.0,
                code: str | None = None, execute: str | None = None) -> int:
    """IPython with the namespace of the profile ``config`` (a :class:`~strainstream.profile.ProfileConfig`).

    ``epics`` is the Channel Access client environment of the beamline's IOCs (set before
    the first CA use: Channel Access reads its address list once). Returns the exit code.
    """
    apply_environment(epics)

    from strainstream.profile import build_namespace, connect_devices

    ns = build_namespace(config)
    missing = connect_devices(ns, connect_timeout_s)
    try:
        return _run_ipython(ns, missing, code=code, execute=execute)
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
