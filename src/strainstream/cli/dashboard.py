"""``strainstream dashboard``: the live web page of a tiled catalog (see :mod:`strainstream.dashboard`)."""

from __future__ import annotations

import sys

from ._common import (
    add_server_options,
    data_dir_of,
    number,
    resolve_server,
    stop_requested,
)

__all__ = ["register"]


def register(commands) -> None:
    """Add ``dashboard`` to the sub-command parsers ``commands``."""
    from strainstream.dashboard import DEFAULT_PORT

    p = commands.add_parser(
        "dashboard", help="serve the live dashboard web page (runs, operando XRD, SXDM, TXM-XANES, compare)",
        description="A web page following the tiled catalog live (all assets served locally). Open "
                    "the printed URL; from another machine tunnel it: ssh -L PORT:localhost:PORT HOST.")
    add_server_options(p, api_key_help="API key the page reads tiled with; a read-only key is enough "
                                       "(default: $STRAINSTREAM_API_KEY, else DATA_DIR/.api_key)")
    p.add_argument("--port", type=number(int, low=1, high=65535), default=DEFAULT_PORT,
                   help=f"HTTP port of the page (default {DEFAULT_PORT})")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; use an SSH tunnel)")
    p.set_defaults(func=cmd_dashboard)


def cmd_dashboard(args) -> int:
    import os

    from strainstream.dashboard._server import serve_dashboard

    target = resolve_server(args, need_server=True, why=" (the dashboard follows a running server)")
    data_dir = data_dir_of(args)
    keep_file = data_dir if data_dir and os.path.isdir(data_dir) else None
    server = serve_dashboard(target.uri, target.api_key, host=args.host, port=args.port, data_dir=keep_file)
    print(f"strainstream dashboard: {server.url} (following {target.uri}); Ctrl-C stops it", flush=True)
    with stop_requested() as done:
        try:
            while not done.wait(0.5):
                if not server._thread.is_alive():
                    print("strainstream dashboard: error: the web server stopped", file=sys.stderr)
                    return 1
        finally:
            server.stop()
    if done.signum is not None:
        import signal

        print(f"strainstream dashboard: stopped ({signal.Signals(done.signum).name})", file=sys.stderr, flush=True)
        return 128 + done.signum
    return 0
