"""``strainstream serve | worker | spool``: the tiled server, the analysis worker, the spool."""

from __future__ import annotations

import argparse
import os
import sys

from ._common import (
    CommandError,
    add_server_options,
    config_from_args,
    data_dir_of,
    number,
    open_catalog,
    resolve_server,
    stop_requested,
)

__all__ = ["register"]


def register(commands) -> None:
    """Add ``serve``, ``worker`` and ``spool`` to the sub-command parsers ``commands``."""
    p = commands.add_parser("serve", help="run the embedded tiled server (SQLite catalog + streaming cache)")
    add_server_options(p, uri=False,
                       api_key_help="default: $STRAINSTREAM_API_KEY, else DATA_DIR/.api_key (created)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--cache", default="memory", help="streaming cache: memory (default) or redis://127.0.0.1:PORT")
    add_dashboard_option(p)
    p.set_defaults(func=cmd_serve)

    p = commands.add_parser("worker", help="run the live analysis worker against a tiled server")
    add_server_options(p)
    p.add_argument("--catch-up-hours", type=float, default=24.0,
                   help="on start, finish runs this recent whose results are incomplete (default 24)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="follow only the runs of shard I of N (0 <= I < N): N workers share the runs "
                        "(default: $STRAINSTREAM_WORKER_SHARD, else all runs)")
    p.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True,
                   help="draw each analysed run's figures into DATA_DIR/figures at low priority, so "
                        "`strainstream plot` of a finished run answers at once (needs --data-dir; "
                        "default on)")
    p.add_argument("--ready-file", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_worker)

    p = commands.add_parser("spool", help="runs whose documents did not all reach tiled; --flush sends them")
    add_server_options(p)
    p.add_argument("--spool-dir", default=None,
                   help="default: $STRAINSTREAM_SPOOL_DIR, else DATA_DIR/spool if present, else the "
                        "user state directory (where console and queue server sessions spool)")
    p.add_argument("--flush", action="store_true", help="send the spooled documents to tiled")
    p.set_defaults(func=cmd_spool)


def add_dashboard_option(p) -> None:
    """``--dashboard-port``: serve the dashboard page beside tiled (``serve``, ``deploy up``)."""
    from strainstream.dashboard import DEFAULT_PORT

    p.add_argument("--dashboard-port", type=number(int, low=1, high=65535), default=None, metavar="PORT",
                   help=f"also serve the live dashboard at http://localhost:PORT/ (127.0.0.1 only; "
                        f"e.g. {DEFAULT_PORT}; default: none, run `strainstream dashboard` instead)")


def cmd_serve(args) -> int:
    from strainstream.server import TiledServer

    config = config_from_args(args)
    data_dir = data_dir_of(args, config)
    server = TiledServer(data_dir, port=args.port, api_key=config.api_key, cache_uri=args.cache)
    server.start()
    where = "$STRAINSTREAM_API_KEY" if config.api_key else os.path.join(data_dir, ".api_key")
    print(f"tiled serving {os.path.abspath(data_dir)} at {server.uri} (API key in {where})", flush=True)
    print(f"viewers: `strainstream keys create --read-only --data-dir {data_dir}` mints a "
          f"read-only key (admin key in {os.path.join(data_dir, '.admin_key')} unless "
          "$STRAINSTREAM_ADMIN_KEY is set)", flush=True)
    dashboard = None
    with stop_requested() as done:
        try:
            if args.dashboard_port:
                from strainstream.dashboard._server import serve_dashboard

                dashboard = serve_dashboard(server.uri, server.api_key, port=args.dashboard_port,
                                            data_dir=data_dir, port_option="--dashboard-port")
                print(f"dashboard at {dashboard.url} (from another machine: "
                      f"ssh -L {args.dashboard_port}:localhost:{args.dashboard_port} THIS-HOST)", flush=True)
            while not done.wait(0.5):
                if server.process is None or server.process.poll() is not None:
                    print("strainstream serve: error: the tiled server exited; see "
                          f"{os.path.join(data_dir, 'logs', 'tiled.log')}", file=sys.stderr)
                    return 1
        finally:
            if dashboard is not None:
                dashboard.stop()
            server.stop()
    return done.exit_code("serve")


def cmd_worker(args) -> int:
    from strainstream.auth import api_key_for
    from strainstream.errors import ServerError
    from strainstream.worker import parse_shard, run_worker

    try:
        target = resolve_server(args, need_server=True)
    except ServerError:
        if args.uri is None and args.data_dir is None:
            raise CommandError("no server to follow: pass --uri or the --data-dir of a running "
                               "`strainstream serve`") from None
        raise
    key = target.api_key or api_key_for(target.data_dir or ".", create=False)
    config = config_from_args(args)
    shard = args.shard or config.worker_shard
    if shard:
        try:
            shard = parse_shard(shard)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    figures_dir = None
    if args.figures and target.data_dir and os.path.isdir(target.data_dir):
        from strainstream.cli.runs import FIGURES_DIR

        figures_dir = os.path.join(target.data_dir, FIGURES_DIR)
    return run_worker(target.uri, key, catch_up_s=args.catch_up_hours * 3600, ready_file=args.ready_file,
                      shard=shard, figures_dir=figures_dir)


def _spool_dir(args):
    """--spool-dir, else $STRAINSTREAM_SPOOL_DIR, else DATA_DIR/spool (the demo's), else the
    user's state directory (the console's and queue server's default)."""
    from pathlib import Path

    from strainstream.spool import default_spool_dir

    if args.spool_dir:
        return Path(args.spool_dir)
    config = config_from_args(args)
    data_dir = data_dir_of(args, config)
    if not config.spool_dir and data_dir:
        local = Path(data_dir) / "spool"
        if local.is_dir():
            return local
    return default_spool_dir()


def cmd_spool(args) -> int:
    """List the runs whose documents wait in the spool; with --flush send them to tiled."""
    from strainstream.spool import flush_spool, spooled_runs

    spool = _spool_dir(args)
    root = open_catalog(args, need_server=True)
    runs = spooled_runs(spool)
    if not runs:
        print(f"spool {spool}: empty (every document reached tiled)")
        return 0
    for run in runs:
        where = "partly in tiled" if run["uid"] in root else "not in tiled"
        print(f"{run['uid']}: {run['documents']} documents spooled, {run['sent']} sent ({where})")
    if not args.flush:
        print(f"send them with: strainstream spool --flush --spool-dir {spool}")
        return 0
    report = flush_spool(spool, root, say=print)
    left = spooled_runs(spool)
    print(f"flushed {sum(report.values())} documents of {len(report)} runs; "
          f"{len(left)} runs still spooled (no stop document yet)" if left else
          f"flushed {sum(report.values())} documents of {len(report)} runs; spool empty")
    return 0
