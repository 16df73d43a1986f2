"""``strainstream results | replay | plot``: what the analyses found for one run."""

from __future__ import annotations

import os

from ._common import CommandError, add_server_options, get_run, open_catalog, print_json

__all__ = ["register"]


def register(commands) -> None:
    """Add ``results``, ``replay`` and ``plot`` to the sub-command parsers ``commands``."""
    p = commands.add_parser("results", help="print the stored derived results of a run")
    p.add_argument("uid")
    add_server_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_results)

    p = commands.add_parser("replay", help="re-run an archived run through the live analysis callbacks")
    p.add_argument("uid")
    add_server_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout (same form as results)")
    p.set_defaults(func=cmd_replay)

    p = commands.add_parser("plot", help="save the figure(s) of a run's derived results as PNG")
    p.add_argument("uid")
    add_server_options(p)
    p.add_argument("--out", default=None, help="PNG file (default: UID8_ANALYSIS.png)")
    p.add_argument("--analysis", default=None, help="only this analysis")
    p.add_argument("--live", action="store_true", help="keep updating the PNG until the run is analysed")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between live updates")
    p.add_argument("--dpi", type=int, default=110)
    p.set_defaults(func=cmd_plot)


def cmd_results(args) -> int:
    from strainstream.callbacks.sinks import read_results

    root = open_catalog(args)
    run = get_run(root, args.uid)
    uid = run.metadata["start"]["uid"]
    try:
        doc = read_results(root, uid)
    except KeyError:
        raise CommandError(f"run {uid} has no derived results yet (is a worker running?)") from None
    if args.json:
        print_json(doc)
    else:
        _print_results_table(doc)
    return 0


def cmd_replay(args) -> int:
    from strainstream.replay import replay_run

    root = open_catalog(args)
    run = get_run(root, args.uid)
    try:
        doc = replay_run(run, progress=not args.json)
    except ValueError as exc:  # e.g. a run no analysis knows
        raise CommandError(str(exc)) from None
    if args.json:
        print_json(doc)
    else:
        _print_results_table(doc)
    return 0


def cmd_plot(args) -> int:
    import time

    import matplotlib

    matplotlib.use("Agg")
    from strainstream.callbacks.plots import figure_for
    from strainstream.callbacks.sinks import read_arrays, read_results

    root = open_catalog(args, need_server=args.live)
    uid = get_run(root, args.uid).metadata["start"]["uid"]
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
        raise CommandError(f"run {uid} has no derived results to plot yet")
    for out in written:
        print(out)
    return 0


def _print_results_table(doc) -> None:
    print(f"run {doc['uid']}")
    for name, entry in doc["analyses"].items():
        print(f"  {name} v{entry['version']}: {entry['status']}, {entry['n_rows']} events")
        for k, v in (entry.get("summary") or {}).items():
            print(f"    {k}: {v}")
