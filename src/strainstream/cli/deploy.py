"""``strainstream deploy up | status``: the services of a deployment profile (:mod:`strainstream.deploy`)."""

from __future__ import annotations

import json
import sys
from typing import Any

from ._common import Parser, add_server_options, stop_requested
from .serve import add_dashboard_option

__all__ = ["register"]


def register(commands) -> None:
    """Add ``deploy up | status`` to the sub-command parsers ``commands``."""
    from strainstream.deploy import PROFILES

    p = commands.add_parser("deploy", help="start the services of a deployment profile (embedded | scaleout)")
    p.set_defaults(group_parser=p)
    sub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    up = sub.add_parser("up", help="start a profile's services (embedded | scaleout) until Ctrl-C",
                        description=(
                            "Start the services of a profile on 127.0.0.1 and keep them running until "
                            "Ctrl-C or SIGTERM (a component that dies is restarted). embedded: tiled "
                            "(SQLite catalog, memory streaming cache) + workers; scaleout: PostgreSQL "
                            "catalog + Redis streaming cache + tiled + workers sharing the runs."))
    up.add_argument("--profile", choices=PROFILES, default="embedded")
    add_server_options(up, data_dir_required=True, uri=False,
                       data_dir_help="where catalog, data, services and logs live",
                       api_key_help="writer key (default $STRAINSTREAM_API_KEY or DIR/.api_key)")
    up.add_argument("--workers", type=int, default=1, help="analysis workers (default 1)")
    up.add_argument("--port", type=int, default=None, help="tiled port (default: a free one)")
    up.add_argument("--json", action="store_true", help="print what runs where as one JSON line")
    add_dashboard_option(up)
    up.set_defaults(func=cmd_up, reports=(RuntimeError,))
    st = sub.add_parser("status", help="check the services of a running deployment",
                        description="Check the services of a running deployment.")
    add_server_options(st, data_dir_required=True, uri=False, api_key=False,
                       data_dir_help="the --data-dir of `strainstream deploy up`")
    st.add_argument("--json", action="store_true", help="print the status as one JSON object")
    st.set_defaults(func=cmd_status, reports=(RuntimeError,))


def _print_info(info: dict[str, Any]) -> None:
    lines = [f"profile      {info['profile']}   (data in {info['data_dir']})",
             f"tiled        {info['tiled_uri']}   pid {info['tiled_pid']}",
             f"catalog      {info['catalog']}"]
    if info.get("postgres_port"):
        lines[-1] += f"   pid {info['postgres_pid']}"
    lines.append(f"stream cache {info['streaming_cache']}"
                 + (f"   pid {info['redis_pid']}" if info.get("redis_port") else ""))
    for i, w in enumerate(info["workers"]):
        shard = f"   shard {w['shard'][0]}/{w['shard'][1]}" if w.get("shard") else ""
        lines.append(f"worker {i:<5} pid {w['pid']}{shard}")
    if info.get("dashboard_url"):
        lines.append(f"dashboard    {info['dashboard_url']}")
    lines.append(f"logs         {info['logs']}")
    print("\n".join(lines), flush=True)


def cmd_up(args) -> int:
    """Start a profile's services and supervise them until Ctrl-C or SIGTERM."""
    from pathlib import Path

    from strainstream.deploy import Deployment

    with stop_requested() as done:
        dep = Deployment(Path(args.data_dir), profile=args.profile, workers=args.workers,
                         port=args.port, api_key=args.api_key, dashboard_port=args.dashboard_port)
        try:
            dep.start()
            if args.json:
                print(json.dumps(dep.info()), flush=True)
            else:
                _print_info(dep.info())
                print("Ctrl-C (or SIGTERM) stops everything.", flush=True)
            while not done.wait(1.0):
                dep.supervise_once(log=lambda msg: print(msg, file=sys.stderr, flush=True))
        finally:
            dep.stop()
    return done.exit_code("deploy up")


def cmd_status(args) -> int:
    """Check the components of a running deployment (exit 0 when all answer, 1 otherwise)."""
    from strainstream.deploy import status

    st = status(args.data_dir)
    if args.json:
        print(json.dumps(st))
    else:
        _print_info({**st, "tiled_pid": st.get("tiled_pid")})
        for name, ok in st["checks"].items():
            print(f"{name:<12} {'up' if ok else 'DOWN'}")
    return 0 if st["ok"] else 1
