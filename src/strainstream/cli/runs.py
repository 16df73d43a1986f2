"""``strainstream runs | results | replay | plot``: the runs of a catalog and what the analyses found."""

from __future__ import annotations

import logging
import os

from ._common import (
    CommandError,
    add_description_options,
    add_server_options,
    get_run,
    number,
    open_catalog,
    print_json,
    resolve_server,
    root_map_of,
    run_overrides,
)

__all__ = ["read_catalog", "register"]

logger = logging.getLogger(__name__)


def register(commands) -> None:
    """Add ``runs``, ``results``, ``replay`` and ``plot`` to the sub-command parsers ``commands``."""
    p = commands.add_parser("runs", help="list the runs: uid, time, experiment, material, status, "
                                         "events recorded/analysed")
    add_server_options(p)
    p.add_argument("--experiment", default=None, help="only runs of this experiment (e.g. operando_xrd)")
    p.add_argument("--limit", type=number(int, low=1), default=None, help="only the N newest runs")
    p.add_argument("--json", action="store_true", help="one JSON list on stdout")
    p.set_defaults(func=cmd_runs)

    p = commands.add_parser("results", help="print the stored derived results of a run")
    p.add_argument("uid")
    add_server_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_results)

    p = commands.add_parser("replay", help="re-run an archived run through the live analysis callbacks")
    p.add_argument("uid")
    add_server_options(p)
    add_description_options(p, "analyse the run as this experiment (default: as recorded)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout (same form as results)")
    p.set_defaults(func=cmd_replay)

    p = commands.add_parser(
        "plot", help="save the figure(s) of a run's derived results as PNG (DATA_DIR/figures/)",
        description="Figures of a run's analyses (operando XRD, cycling, GITT, SXDM, TXM-XANES, frame "
                    "statistics; for a run of a rate_series also microstrain vs rate over the series) "
                    "as PNG files, written to DATA_DIR/figures/UID8_ANALYSIS.png unless --out "
                    "names a file or a directory; the written paths are printed.")
    p.add_argument("uid")
    add_server_options(p)
    p.add_argument("--out", default=None, metavar="PATH",
                   help="PNG file, or an existing directory (default: DATA_DIR/figures/); with "
                        "several analyses a file name gets _ANALYSIS before .png")
    p.add_argument("--analysis", default=None, help="only this analysis")
    p.add_argument("--live", action="store_true", help="keep updating the PNG until the run is analysed")
    p.add_argument("--interval", type=number(float, low=0.1, high=3600, unit="s"), default=2.0,
                   help="seconds between live updates (default 2)")
    p.add_argument("--dpi", type=number(int, low=30, high=1200), default=110,
                   help="resolution of the PNG (default 110)")
    p.set_defaults(func=cmd_plot)


def read_catalog(args, read, *, need_server: bool = False):
    """``read(root)`` on the catalog of the command's server options; its result.

    ``root`` is first a light reader of :mod:`strainstream.offline_reader`: with a server
    (``--uri`` or one running on the data directory) tiled's HTTP API read without
    ``tiled.client`` (:func:`~strainstream.offline_reader.open_server`: no httpx, pandas, dask
    or bluesky-tiled-plugins to import); without one the catalog files read directly
    (:func:`~strainstream.offline_reader.open_catalog`: no tiled server stack, DuckDB opened
    read-only only while ``read`` runs). When that reader does not recognise the catalog, or
    meets anything it does not know while reading, ``read`` runs again through tiled: a tiled
    client of the server (:func:`strainstream.client.connect`), or the catalog opened
    in-process (:func:`strainstream.client.open_offline`), as before. ``read`` must not print
    or write: it may run twice.
    """
    from strainstream.offline_reader import Unsupported, open_server
    from strainstream.offline_reader import open_catalog as open_direct

    target = resolve_server(args, need_server=need_server)
    try:
        light = open_direct(target.data_dir) if target.offline else open_server(target.uri, target.api_key)
        with light as root, root.reading():
            try:
                result = read(root)
            except Exception:
                if root.failed is None:
                    raise
            else:
                if root.failed is None:
                    return result
            reason = root.failed
    except Unsupported as exc:
        reason = exc
    from strainstream.client import connect, open_offline

    where = target.data_dir if target.offline else target.uri
    logger.debug("reading %s through tiled: %s", where, reason)
    return read(open_offline(target.data_dir) if target.offline else connect(target.uri, target.api_key))


#: what a stop document's exit_status means for the user
_STATUS = {"success": "complete", "abort": "aborted", "fail": "failed"}


def _seq_count(node) -> int | None:
    """Distinct seq_nums in a table node (a retried append may store a row twice)."""
    from strainstream.offline_reader import Unsupported

    try:
        return len(set(node.read(columns=["seq_num"])["seq_num"].tolist()))
    except Unsupported:  # the direct reader cannot: read_catalog reads through tiled
        raise
    except Exception:  # no partition yet, or not a table
        return None


def run_summary(root, uid: str) -> dict:
    """One line of ``strainstream runs``: the run's identity, status and how far its analyses got."""
    import datetime

    from strainstream.results_doc import ARRAYS_SUFFIX, DERIVED

    md = dict(root[uid].metadata)
    start, stop = md.get("start") or {}, md.get("stop") or {}
    sample = start.get("sample")
    material = start.get("material") or (sample.get("material") if isinstance(sample, dict) else sample)
    recorded = (stop.get("num_events") or {}).get("primary")
    if recorded is None and "primary" in root[uid]:
        primary = root[uid]["primary"]
        recorded = _seq_count(getattr(primary, "base", primary)["internal"]) \
            if "internal" in getattr(primary, "base", primary) else None
    analyses: dict[str, dict] = {}
    if DERIVED in root and uid in root[DERIVED]:
        derived = root[DERIVED][uid]
        derived = getattr(derived, "base", derived)
        for name in derived:
            if name.endswith(ARRAYS_SUFFIX):
                continue
            node = derived[name]
            analyses[name] = {"status": dict(node.metadata).get("status", "unknown"),
                              "events_analysed": _seq_count(node) or 0}
    entry = {
        "uid": uid,
        "time": datetime.datetime.fromtimestamp(start["time"]).isoformat(timespec="seconds")
        if start.get("time") else None,
        "experiment": start.get("experiment"),
        "material": material,
        "status": _STATUS.get(stop.get("exit_status"), stop.get("exit_status")) if stop else "running",
        "events_recorded": recorded,
        "events_analysed": min((a["events_analysed"] for a in analyses.values()), default=None),
        "analyses": analyses,
    }
    if start.get("experiment") == "calibration":
        entry["calibrant"] = start.get("calibrant")
        entry["geometry"] = md.get("geometry") or start.get("geometry")
    return entry


def cmd_runs(args) -> int:
    """List the runs of the catalog, newest first."""

    def read(root) -> list[dict]:
        uids = [k for k in root if k != "derived"]
        rows = []
        for uid in reversed(uids):  # the catalog keeps insertion (time) order
            try:
                start = (root[uid].metadata or {}).get("start") or {}
            except KeyError:
                continue
            if not start or (args.experiment and start.get("experiment") != args.experiment):
                continue
            rows.append(run_summary(root, uid))
            if args.limit and len(rows) >= args.limit:
                break
        return rows

    rows = read_catalog(args, read)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no runs" + (f" of experiment {args.experiment}" if args.experiment else ""))
        return 0
    header = ("UID", "TIME", "EXPERIMENT", "MATERIAL", "STATUS", "EVENTS", "ANALYSED")
    table = [header]
    for r in rows:
        analysed = "-" if r["events_analysed"] is None else str(r["events_analysed"])
        if r["experiment"] == "calibration":
            analysed = f"calibrant {r.get('calibrant') or '?'}"
        table.append((r["uid"][:8], (r["time"] or "-").replace("T", " "), r["experiment"] or "-",
                      str(r["material"] or "-"), r["status"],
                      "-" if r["events_recorded"] is None else str(r["events_recorded"]), analysed))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_results(args) -> int:
    def read(root) -> dict:
        from strainstream.results_doc import read_results  # sinks' reader, without the callbacks

        run = get_run(root, args.uid)
        uid = run.metadata["start"]["uid"]
        try:
            return read_results(root, uid)
        except KeyError:
            raise CommandError(f"run {uid} has no derived results yet (is a worker running?)") from None

    doc = read_catalog(args, read)
    if args.json:
        print_json(doc)
    else:
        _print_results_table(doc)
    return 0


def cmd_replay(args) -> int:
    from strainstream.replay import replay_run

    root_map, overrides = root_map_of(args), run_overrides(args)
    root = open_catalog(args)
    run = get_run(root, args.uid)
    try:
        doc = replay_run(run, progress=not args.json, root_map=root_map, overrides=overrides)
    except ValueError as exc:  # e.g. a run no analysis knows
        raise CommandError(str(exc)) from None
    if args.json:
        print_json(doc)
    else:
        _print_results_table(doc)
    return 0


#: sub-directory of the data directory that receives the figures of ``strainstream plot``
FIGURES_DIR = "figures"


def figure_path(out: str | None, data_dir: str | None, uid: str, analysis: str, several: bool) -> str:
    """Where ``strainstream plot`` writes the figure of ``analysis`` of run ``uid``.

    ``out`` a directory (existing, or ending in a separator): ``out/UID8_ANALYSIS.png``;
    ``out`` a file: itself, or ``NAME_ANALYSIS.png`` when ``several`` analyses are plotted;
    no ``out``: ``DATA_DIR/figures/UID8_ANALYSIS.png`` — never the current directory.
    """
    name = f"{uid[:8]}_{analysis}.png"
    if out is None:
        if not data_dir or not os.path.isdir(data_dir):
            raise CommandError(f"no data directory {data_dir!r} to write the figure into; "
                               "pass --out PATH.png (or --data-dir DIR)")
        return os.path.join(data_dir, FIGURES_DIR, name)
    if os.path.isdir(out) or out.endswith(os.sep):
        return os.path.join(out, name)
    if several:
        root, ext = os.path.splitext(out)
        return f"{root}_{analysis}{ext or '.png'}"
    return out


def _plot_inputs(root, args) -> tuple[dict, dict, list[str], dict, list | None]:
    """What ``strainstream plot`` draws, read from ``root``: the run's start document, its
    results document, the analyses to draw, their stored arrays and (for a run of a
    rate_series, else None) the series' (start, operando_xrd entry) pairs."""
    from strainstream.callbacks.plots import FIGURES
    from strainstream.results_doc import (  # sinks' readers, no event_model
        figure_arrays,
        read_results,
    )

    run = get_run(root, args.uid)
    start = dict(run.metadata["start"])
    uid = start["uid"]
    try:
        doc = read_results(root, uid)
    except KeyError:
        doc = {"analyses": {}}
    names = [n for n in doc["analyses"] if n in FIGURES and (not args.analysis or n == args.analysis)]
    arrays = {name: figure_arrays(root, uid, name) for name in names}
    # a run of a rate_series: also microstrain vs rate over the series' runs
    series = None
    if start.get("series") and "operando_xrd" in doc["analyses"] and args.analysis in (None, "rate_series"):
        from strainstream.callbacks.plots.electrochem import series_entries

        series = series_entries(root, start)
    return start, doc, names, arrays, series


def cmd_plot(args) -> int:
    """Write the figure of each analysis of a run (``--live``: until the run is analysed)."""
    import time

    from ._common import data_dir_of

    data_dir = data_dir_of(args)
    if args.out is None and not (data_dir and os.path.isdir(data_dir)):
        figure_path(None, data_dir, "", "", False)  # raises before the catalog is opened
    if args.live:  # one connection to the server for every update
        root = open_catalog(args, need_server=True)
        get_run(root, args.uid)  # an unknown run is an error before the loop

        def read_inputs():
            return _plot_inputs(root, args)
    else:  # read everything first: the catalog's files are closed while the figures are drawn

        def read_inputs():
            return read_catalog(args, lambda root: _plot_inputs(root, args))

    from strainstream.callbacks.plots import figure_for, figure_key, png_key, save_figure

    def agg() -> None:  # matplotlib only when a figure is drawn (0.5 s of imports)
        import matplotlib

        matplotlib.use("Agg")

    written: list[str] = []
    while True:
        start, doc, names, arrays, series = read_inputs()
        uid = start["uid"]
        several = len(names) + (series is not None) > 1
        for name in names:
            kw = dict(arrays=arrays[name], start=start, analyses=doc["analyses"])
            out = figure_path(args.out, data_dir, uid, name, several)
            key = figure_key(name, doc["analyses"][name], dpi=args.dpi, **kw)
            if png_key(out) != key:  # else: drawn from these very results already (the worker)
                agg()
                save_figure(figure_for(name, doc["analyses"][name], **kw), out, dpi=args.dpi, key=key)
            if out not in written:
                written.append(out)
        if series is not None:
            agg()
            from strainstream.callbacks.plots.electrochem import rate_series_figure

            fig = rate_series_figure(series)
            out = save_figure(fig, figure_path(args.out, data_dir, uid, "rate_series", len(names) + 1 > 1),
                              dpi=args.dpi)
            if out not in written:
                written.append(out)
        done = doc["analyses"] and all(e["status"] == "complete" for e in doc["analyses"].values())
        if not args.live or done:
            break
        time.sleep(args.interval)
    if not written:
        if args.analysis and args.analysis in doc["analyses"]:
            raise CommandError(f"analysis {args.analysis!r} of run {uid} has no figure")
        if start.get("experiment") == "calibration":
            raise CommandError(f"run {uid} is a calibration run: it has no derived results to plot "
                               "(`strainstream runs` shows its geometry)")
        what = f"analysis {args.analysis!r}" if args.analysis else "derived results"
        raise CommandError(f"run {uid} has no {what} to plot yet (is a worker running? "
                           "`strainstream runs` shows what each run holds)")
    for out in written:
        print(out)
    return 0


def _human(value) -> str:
    """A summary value as a person reads it: floats to 6 significant digits."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(f"{v:.6g}" for v in value) + "]"
    return str(value)


def _print_results_table(doc) -> None:
    print(f"run {doc['uid']}")
    for name, entry in doc["analyses"].items():
        print(f"  {name} v{entry['version']}: {entry['status']}, {entry['n_rows']} events")
        for k, v in (entry.get("summary") or {}).items():
            print(f"    {k}: {_human(v)}")
