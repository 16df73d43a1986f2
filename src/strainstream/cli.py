"""The ``strainstream`` command.

Every sub-command imports what it needs inside its handler, so ``strainstream --help`` and the
analysis-only sub-commands start fast and need no server.

Analysis sub-commands (``xrd``, ``sxdm``, ``xanes``) are delegated to
``strainstream.<name>.cli.main(argv) -> int``, which owns its own argument parser.

Errors the user can fix (server not running, wrong key, unknown uid, bad file) are printed as
one line ``strainstream: error: ...`` with exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

ANALYSIS_COMMANDS = {
    "xrd": "operando XRD analysis on 1-D patterns (refine)",
    "sxdm": "SXDM strain/rotation maps from 5-D rocking-curve data (map)",
    "xanes": "TXM-XANES white-line maps (whiteline)",
}
#: operations sub-commands, each delegated to ``strainstream.<module>.main(argv) -> int``
#: (the module owns its argument parser and its ``--help``)
OPERATION_COMMANDS = {
    "console": ("console", "an IPython session with the RunEngine, devices and plans of a profile"),
    "queue": ("queue", "bluesky-queueserver for this beamline: up | status (Redis started for you)"),
    "deploy": ("deploy", "start the services of a deployment profile (embedded | scaleout)"),
    "keys": ("keys", "create and list API keys (read-write for writers, read-only for viewers)"),
    "reprocess": ("reprocess", "re-run the analyses of many archived runs with Dask"),
}
DEFAULT_DATA_DIR = "strainstream-data"


class CLIError(Exception):
    """An error to report to the user as one line, with a non-zero exit code."""


def _delegate(name: str, argv: list[str]) -> int:
    import importlib

    module = importlib.import_module(f"strainstream.{name}.cli")
    return int(module.main(argv) or 0)


def _beamline(argv: list[str]) -> int:
    """``strainstream beamline up|status ...`` → :mod:`strainstream.beamline`."""
    if not argv or argv[0] not in ("up", "status"):
        print("usage: strainstream beamline {up,status} [options]  (see `strainstream beamline up -h`)\n"
              "  up      start the simulated beamline's IOCs on loopback until Ctrl-C\n"
              "  status  report which PVs answer", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from strainstream import beamline

    return int(getattr(beamline, argv[0])(argv[1:]) or 0)


# -- helpers -------------------------------------------------------------------------------
def _add_server_args(p: argparse.ArgumentParser, data_dir_default: str | None = DEFAULT_DATA_DIR) -> None:
    p.add_argument("--data-dir", default=data_dir_default,
                   help=f"strainstream data directory (default: ./{DEFAULT_DATA_DIR})")
    p.add_argument("--uri", default=os.environ.get("STRAINSTREAM_URI"),
                   help="tiled API URI of a running server (default: the one serving --data-dir, "
                        "else the catalog in --data-dir is opened directly)")
    p.add_argument("--api-key", default=None,
                   help="API key (default: $STRAINSTREAM_API_KEY, else DATA_DIR/.api_key)")


def _open_catalog(args, need_server: bool = False):
    """A client for the catalog: --uri, else the server running on --data-dir, else offline."""
    from strainstream.server import ServerError, api_key_for, connect, open_offline, running_server

    if args.uri:
        key = args.api_key or os.environ.get("STRAINSTREAM_API_KEY")
        if key is None and args.data_dir and os.path.exists(os.path.join(args.data_dir, ".api_key")):
            key = api_key_for(args.data_dir, create=False)
        return connect(args.uri, key)
    if not args.data_dir or not os.path.isdir(args.data_dir):
        raise ServerError(
            f"data directory {args.data_dir!r} does not exist; pass --data-dir DIR "
            "(the one given to `strainstream demo` or `strainstream serve`) or --uri"
        )
    info = running_server(args.data_dir)
    if info is not None:
        return connect(info.uri, api_key_for(args.data_dir, args.api_key, create=False))
    if need_server:
        raise ServerError(
            f"no tiled server is running for {args.data_dir}; start one with "
            f"`strainstream serve --data-dir {args.data_dir}` or pass --uri"
        )
    return open_offline(args.data_dir)


def _get_run(root, uid: str):
    from strainstream.server import ServerError

    if not uid or uid == "derived":
        raise ServerError(f"{uid!r} is not a run uid")
    try:
        node = root[uid]
    except KeyError:
        # allow a unique prefix, as people copy the first 8 characters
        matches = [k for k in root if k.startswith(uid) and k != "derived"] if len(uid) >= 6 else []
        if len(matches) != 1:
            raise ServerError(f"no run with uid {uid!r} in the catalog") from None
        node = root[matches[0]]
    if "start" not in (node.metadata or {}):
        raise ServerError(f"{uid!r} is not a run (no start document)")
    return node


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=None, allow_nan=False))


# -- sub-commands --------------------------------------------------------------------------
def cmd_serve(args) -> int:
    import signal
    import threading

    from strainstream.server import TiledServer

    server = TiledServer(args.data_dir, port=args.port, api_key=args.api_key, cache_uri=args.cache)
    server.start()
    print(f"tiled serving {os.path.abspath(args.data_dir)} at {server.uri} (API key in "
          f"{'$STRAINSTREAM_API_KEY' if os.environ.get('STRAINSTREAM_API_KEY') or args.api_key else os.path.join(args.data_dir, '.api_key')})",
          flush=True)
    print(f"viewers: `strainstream keys create --read-only --data-dir {args.data_dir}` mints a "
          f"read-only key (admin key in {os.path.join(args.data_dir, '.admin_key')} unless "
          "$STRAINSTREAM_ADMIN_KEY is set)", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    signal.signal(signal.SIGINT, lambda *a: done.set())
    try:
        while not done.wait(0.5):
            if server.process is None or server.process.poll() is not None:
                print("strainstream serve: error: the tiled server exited; see "
                      f"{os.path.join(args.data_dir, 'logs', 'tiled.log')}", file=sys.stderr)
                return 1
    finally:
        server.stop()
    return 0


def cmd_worker(args) -> int:
    from strainstream.server import api_key_for, running_server
    from strainstream.worker import run_worker

    uri = args.uri
    if uri is None:
        info = running_server(args.data_dir) if args.data_dir else None
        if info is None:
            raise CLIError("no server to follow: pass --uri or the --data-dir of a running `strainstream serve`")
        uri = info.uri
    key = api_key_for(args.data_dir or ".", args.api_key, create=False)
    shard = None
    if args.shard:
        from strainstream.worker import parse_shard

        try:
            shard = parse_shard(args.shard)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    return run_worker(uri, key, catch_up_s=args.catch_up_hours * 3600, ready_file=args.ready_file,
                      shard=shard)


def _spool_dir(args):
    """--spool-dir, else $STRAINSTREAM_SPOOL_DIR, else DATA_DIR/spool (the demo's), else the
    user's state directory (the console's and queue server's default)."""
    from pathlib import Path

    from strainstream.session import default_spool_dir

    if args.spool_dir:
        return Path(args.spool_dir)
    if not os.environ.get("STRAINSTREAM_SPOOL_DIR") and args.data_dir:
        local = Path(args.data_dir) / "spool"
        if local.is_dir():
            return local
    return default_spool_dir()


def cmd_spool(args) -> int:
    """List the runs whose documents wait in the spool; with --flush send them to tiled."""
    from strainstream.session import flush_spool, spooled_runs

    spool = _spool_dir(args)
    root = _open_catalog(args, need_server=True)
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


def cmd_results(args) -> int:
    from strainstream.callbacks.sinks import read_results

    root = _open_catalog(args)
    run = _get_run(root, args.uid)
    uid = run.metadata["start"]["uid"]
    try:
        doc = read_results(root, uid)
    except KeyError:
        raise CLIError(f"run {uid} has no derived results yet (is a worker running?)") from None
    if args.json:
        _print_json(doc)
    else:
        _print_results_table(doc)
    return 0


def cmd_replay(args) -> int:
    from strainstream.replay import replay_run

    root = _open_catalog(args)
    run = _get_run(root, args.uid)
    try:
        doc = replay_run(run, progress=not args.json)
    except ValueError as exc:  # e.g. a run no analysis knows
        raise CLIError(str(exc)) from None
    if args.json:
        _print_json(doc)
    else:
        _print_results_table(doc)
    return 0


def cmd_plot(args) -> int:
    import time

    import matplotlib

    matplotlib.use("Agg")
    from strainstream.callbacks.plots import figure_for
    from strainstream.callbacks.sinks import read_arrays, read_results

    root = _open_catalog(args, need_server=args.live)
    uid = _get_run(root, args.uid).metadata["start"]["uid"]
    written: list[str] = []
    while True:
        try:
            doc = read_results(root, uid)
        except KeyError:
            doc = {"analyses": {}}
        for name, entry in doc["analyses"].items():
            if args.analysis and name != args.analysis:
                continue
            arrays, _ = read_arrays(root, uid, name)
            try:
                fig = figure_for(name, entry, arrays=arrays)
            except KeyError:
                continue
            out = args.out or f"{uid[:8]}_{name}.png"
            if len(doc["analyses"]) > 1 and args.out and not args.analysis:
                out = args.out.replace(".png", f"_{name}.png")
            fig.suptitle(f"{name} — run {uid[:8]} ({entry['n_rows']} events, {entry['status']})")
            part = out + ".part.png"  # never leave a half-written PNG under the real name
            fig.savefig(part, dpi=args.dpi)
            os.replace(part, out)
            if out not in written:
                written.append(out)
        done = doc["analyses"] and all(e["status"] == "complete" for e in doc["analyses"].values())
        if not args.live or done:
            break
        time.sleep(args.interval)
    if not written:
        raise CLIError(f"run {uid} has no derived results to plot yet")
    for out in written:
        print(out)
    return 0


def cmd_demo(args) -> int:
    import contextlib

    from strainstream.demo import run_demo

    # bluesky prints suspension notices on stdout: keep stdout for the JSON summary alone
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
        summary = run_demo(args.data_dir, experiment=args.experiment, frames=args.frames,
                           delay_s=args.delay, frame_size=args.frame_size, rate_mA_g=args.rate,
                           duration_s=args.duration, frame_interval_s=args.interval, quiet=args.json)
    if args.json:
        _print_json(summary)
    return 0 if summary["events_analysed"] == summary["events_recorded"] else 1


def _print_results_table(doc) -> None:
    print(f"run {doc['uid']}")
    for name, entry in doc["analyses"].items():
        print(f"  {name} v{entry['version']}: {entry['status']}, {entry['n_rows']} events")
        for k, v in (entry.get("summary") or {}).items():
            print(f"    {k}: {v}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="strainstream",
        description="Live streaming analysis for operando battery-cathode beamline studies.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in ANALYSIS_COMMANDS.items():
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)

    p = sub.add_parser("beamline", help="simulated beamline IOCs: up | status", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    for name, (_module, help_text) in OPERATION_COMMANDS.items():
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)

    p = sub.add_parser("serve", help="run the embedded tiled server (SQLite catalog + streaming cache)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="default: $STRAINSTREAM_API_KEY, else DATA_DIR/.api_key (created)")
    p.add_argument("--cache", default="memory", help="streaming cache: memory (default) or redis://127.0.0.1:PORT")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run the live analysis worker against a tiled server")
    _add_server_args(p)
    p.add_argument("--catch-up-hours", type=float, default=24.0,
                   help="on start, finish runs this recent whose results are incomplete (default 24)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="follow only the runs of shard I of N (0 <= I < N): N workers share the runs")
    p.add_argument("--ready-file", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("spool", help="runs whose documents did not all reach tiled; --flush sends them")
    _add_server_args(p)
    p.add_argument("--spool-dir", default=None,
                   help="default: $STRAINSTREAM_SPOOL_DIR, else DATA_DIR/spool if present, else the "
                        "user state directory (where console and queue server sessions spool)")
    p.add_argument("--flush", action="store_true", help="send the spooled documents to tiled")
    p.set_defaults(func=cmd_spool)

    p = sub.add_parser("results", help="print the stored derived results of a run")
    p.add_argument("uid")
    _add_server_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("replay", help="re-run an archived run through the live analysis callbacks")
    p.add_argument("uid")
    _add_server_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout (same form as results)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("plot", help="save the figure(s) of a run's derived results as PNG")
    p.add_argument("uid")
    _add_server_args(p)
    p.add_argument("--out", default=None, help="PNG file (default: UID8_ANALYSIS.png)")
    p.add_argument("--analysis", default=None, help="only this analysis")
    p.add_argument("--live", action="store_true", help="keep updating the PNG until the run is analysed")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between live updates")
    p.add_argument("--dpi", type=int, default=110)
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("demo", help="start server + worker, run a simulated experiment, print a summary")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "beamline":
        return _beamline(argv[1:])
    if argv and argv[0] in OPERATION_COMMANDS:
        import importlib

        module = importlib.import_module(f"strainstream.{OPERATION_COMMANDS[argv[0]][0]}")
        return _reporting_errors(argv[0], lambda: int(module.main(argv[1:]) or 0))
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
    logging.basicConfig(
        level=logging.INFO if args.verbose or args.command in ("worker", "serve") else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("silx").setLevel(logging.ERROR)  # pyFAI's silx: "Unable to import pyOpenCl"
    return _reporting_errors(args.command, lambda: args.func(args))


def _reporting_errors(command: str, run) -> int:
    """Run a sub-command; errors the user can fix become one line and exit code 2."""
    from strainstream.server import ServerError

    try:
        return run()
    except (CLIError, ServerError) as exc:
        print(f"strainstream {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"strainstream {command}: interrupted", file=sys.stderr)
        return 130

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
