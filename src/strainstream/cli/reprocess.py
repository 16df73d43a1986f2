"""``strainstream reprocess QUERY``: re-run the analyses of archived runs (:mod:`strainstream.reprocess`)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

from ._common import (
    add_description_options,
    add_server_options,
    config_from_args,
    resolve_server,
    root_map_of,
    run_overrides,
)

if TYPE_CHECKING:
    from strainstream.reprocess import Outcome

__all__ = ["main", "register"]


def register(commands) -> None:
    """Add ``reprocess`` to the sub-command parsers ``commands``."""
    p = commands.add_parser(
        "reprocess", help="re-run the analyses of many archived runs with Dask",
        description="Re-run the analyses of archived runs with Dask and write the results back to "
                    "tiled (derived/<uid>/<analysis>, with the analysis version). Up-to-date results "
                    "are skipped, so a rerun is cheap and changes nothing.",
        epilog="QUERY terms (AND-ed) on the start document: KEY=VALUE, KEY!=VALUE, KEY<VALUE, "
               "KEY<=VALUE, KEY>VALUE, KEY>=VALUE; KEY is dotted (sample.material), stop.KEY looks "
               "into the stop document; VALUE is a number/true/false/null or a string (quote "
               "\"8\" for the string 8). Example: strainstream reprocess experiment=frame_series "
               "sample.material=SC-NM91 --since 2026-11-01 --workers 4")
    p.add_argument("query", nargs="*", metavar="QUERY", help="KEY=VALUE terms on the start document")
    p.add_argument("--all", action="store_true", help="every run with a strainstream analysis (no QUERY needed)")
    p.add_argument("--since", default=None, help="runs started at or after this ISO date/time (local time)")
    p.add_argument("--until", default=None, help="runs started before this ISO date/time (a bare date: through that day)")
    p.add_argument("--uid", action="extend", nargs="+", default=None, metavar="UID",
                   help="only these runs (unique prefixes of 6+ characters accepted; put QUERY terms before --uid)")
    p.add_argument("--limit", type=int, default=None, help="at most N runs (the oldest matching)")
    p.add_argument("--workers", type=int, default=2,
                   help="Dask LocalCluster worker processes (default 2; 0: no Dask, one run after the other here)")
    p.add_argument("--scheduler", default=None,
                   help="address of an existing Dask scheduler (default: $STRAINSTREAM_DASK_SCHEDULER, "
                        "else a LocalCluster)")
    p.add_argument("--run-timeout", type=float, default=1800.0, metavar="SECONDS",
                   help="a run still unanswered after this long on a Dask worker is reported failed and "
                        "its worker restarted (default 1800)")
    p.add_argument("--force", action="store_true", help="replace results even when they are up to date")
    p.add_argument("--dry-run", action="store_true", help="list the matching runs and stop")
    add_description_options(p, "analyse the runs as this experiment (default: as recorded)")
    p.add_argument("--json", action="store_true", help="print the outcomes as one JSON list on stdout")
    add_server_options(p, data_dir_help="data directory of the running `strainstream serve` "
                                         "(default: ./strainstream-data)",
                       api_key_help="API key that may write (default: $STRAINSTREAM_API_KEY, else "
                                    "DATA_DIR/.api_key)")
    p.set_defaults(func=cmd_reprocess)


class _Progress:
    """Runs done / total on stderr: a rich bar on a terminal, one line per run otherwise."""

    def __init__(self, total: int, quiet: bool = False) -> None:
        self.total, self.quiet, self._bar, self._task = total, quiet, None, None
        if not quiet and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(TextColumn("reprocess"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("runs"), TimeElapsedColumn(), console=Console(stderr=True))
            self._task = self._bar.add_task("runs", total=total)

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __call__(self, done: int, total: int, outcomes: list[Outcome]) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done)
        elif not self.quiet:
            states = ", ".join(f"{o.analysis} {o.label}" for o in outcomes)
            print(f"reprocess: {done}/{total} runs ({outcomes[0].uid[:8]}: {states})", file=sys.stderr, flush=True)


def cmd_reprocess(args) -> int:
    """``strainstream reprocess`` (exit 0: all done or skipped; 1: some run failed; 2: usage)."""
    from strainstream.client import connect
    from strainstream.reprocess import (
        ReprocessError,
        build_queries,
        find_runs,
        format_table,
        reprocess,
    )

    if not (args.query or args.all or args.since or args.until or args.uid):
        raise ReprocessError("give a QUERY (e.g. sample.material=SC-NM91), --since/--until, --uid, or --all")
    if args.limit is not None and args.limit < 1:
        raise ReprocessError(f"--limit must be at least 1, got {args.limit}")
    if args.run_timeout <= 0:
        raise ReprocessError(f"--run-timeout must be positive, got {args.run_timeout}")
    if args.workers < 0:
        raise ReprocessError(f"--workers must be 0 or more, got {args.workers}")
    build_queries(args.query, args.since, args.until)  # malformed terms fail before connecting
    overrides, root_map = run_overrides(args), root_map_of(args)
    target = resolve_server(args, need_server=True, why=" (the Dask workers write through the server)")
    uri, key = target.uri, target.api_key
    root = connect(uri, key)
    uids, unmatched = find_runs(root, args.query, args.since, args.until, args.uid, args.limit)
    for u in unmatched:
        print(f"strainstream reprocess: --uid {u} matches no run with a strainstream analysis "
              "(and the query)", file=sys.stderr)
    parts = list(args.query) or (["--all"] if args.all else [])
    parts += [f"--since {args.since}"] if args.since else []
    parts += [f"--until {args.until}"] if args.until else []
    parts += [f"--uid {' '.join(args.uid)}"] if args.uid else []
    described = " ".join(parts)
    if not uids:
        print(f"strainstream reprocess: no runs match {described}", file=sys.stderr)
        if args.json:
            print("[]")
        return 0
    if args.dry_run:
        for uid in uids:
            print(uid)
        return 0
    scheduler = args.scheduler or config_from_args(args).dask_scheduler
    where = (f"Dask scheduler {scheduler}" if scheduler else
             "this process" if args.workers == 0 else f"a LocalCluster of {args.workers} processes")
    print(f"strainstream reprocess: {len(uids)} run(s) match {described}; the ones that need work "
          f"go to {where}",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with _Progress(len(uids)) as progress:
        outcomes = reprocess(uri, key, uids, workers=args.workers, scheduler=scheduler,
                             force=args.force, on_done=progress, run_timeout_s=args.run_timeout,
                             overrides=overrides or None, root_map=root_map or None)
    elapsed = time.perf_counter() - t0
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    if args.json:
        print(json.dumps([asdict(o) for o in outcomes]))
    else:
        print(format_table(outcomes))
    print(f"strainstream reprocess: {len(uids)} run(s) in {elapsed:.1f} s: {counts['done']} done, "
          f"{counts['skipped']} skipped, {counts['failed']} failed", file=sys.stderr)
    return 1 if counts["failed"] else 0


def main(argv: list[str] | None = None) -> int:
    """``strainstream reprocess ARGV...``; returns the exit code."""
    from strainstream.cli import command_main

    return command_main("reprocess")(argv)
