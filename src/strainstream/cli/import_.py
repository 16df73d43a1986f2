"""``strainstream import``: document exports and beamtime folders into the catalog (:mod:`strainstream.archives`)."""

from __future__ import annotations

import sys

from ._common import (
    CommandError,
    add_description_options,
    add_server_options,
    number,
    print_json,
    root_map_of,
    run_overrides,
)

__all__ = ["register"]

#: events per table append on import (TiledWriter's batching: 4-10x the throughput of one
#: request per event, benchmarks/bench_import_export.py)
IMPORT_BATCH = 100

#: --field names of a beamtime folder's potentiostat log (columns of the file)
LOG_FIELDS = ("voltage", "current", "capacity", "time", "datetime")


def register(commands) -> None:
    """Add ``import`` to the sub-command parsers ``commands``."""
    p = commands.add_parser(
        "import", help="import document exports (msgpack/jsonl) or a beamtime folder (detector "
                       "images + potentiostat log) into the catalog",
        description="Import runs recorded elsewhere. PATH: an export file (.jsonl, .msgpack), a "
                    "folder of them (suitcase, databroker-pack), or a beamtime folder of detector "
                    "images (with --frames). Frames stay where they are, referenced; runs keep "
                    "their uid; importing twice is a no-op and a half-imported run resumes.")
    p.add_argument("path", metavar="PATH")
    add_server_options(p, api_key=True)
    add_description_options(p, "analyse the runs as this experiment (default: as recorded; a "
                               "beamtime folder is operando_xrd)")
    p.add_argument("--frames", default=None, metavar="GLOB",
                   help="beamtime folder: the detector images (TIFF/EDF/CBF/HDF5), e.g. '*.tif'")
    p.add_argument("--cycler", default=None, metavar="LOG",
                   help="beamtime folder: potentiostat log (.mpr, .mpt, .csv)")
    p.add_argument("--time-source", choices=("header", "mtime"), default="header",
                   help="beamtime folder: frame times from the image header (default) or the file mtime")
    p.add_argument("--timezone", default=None, metavar="ZONE",
                   help="beamtime folder: time zone of times written without one (image headers, "
                        "the log), e.g. Europe/Berlin (default: this machine's)")
    p.add_argument("--material", default=None, help="beamtime folder: the sample material")
    p.add_argument("--mass-mg", type=number(float, low=0, low_open=True, unit="mg"), default=None,
                   help="beamtime folder: active mass (mg), for capacities in mAh/g")
    p.add_argument("--analyse", action="store_true",
                   help="run the analyses in this process after the import (no worker needed)")
    p.add_argument("--json", action="store_true",
                   help='stdout: one JSON object {"runs": [{"uid", "events", "analyses"}]}')
    p.set_defaults(func=cmd_import)


def _runs(args, options, say):
    """``[(source, PreparedRun)]`` of PATH (raises CommandError / ArchiveError)."""
    from pathlib import Path

    from strainstream.archives.exports import find_exports, read_export
    from strainstream.archives.importer import prepare_run
    from strainstream.datadir import detector_dir

    path = Path(args.path)
    if not path.exists():
        raise CommandError(f"{args.path}: no such file or folder")
    if args.frames is not None:
        from strainstream.archives.folder import folder_run

        if not path.is_dir():
            raise CommandError(f"--frames needs PATH to be a folder, got the file {args.path}")
        if options.experiment not in (None, "operando_xrd"):
            raise CommandError("a beamtime folder is an operando_xrd run; --experiment "
                               f"{options.experiment} does not apply")
        if not options.calibration or "wavelength_A" not in options.calibration:
            raise CommandError("a beamtime folder needs the detector geometry: --poni FILE "
                               "(and --wavelength if the file has none)")
        unknown = sorted(set(options.fields) - set(LOG_FIELDS))
        if unknown:
            raise CommandError(f"--field {', '.join(unknown)}: a beamtime folder maps the log's "
                               f"columns {', '.join(LOG_FIELDS)}")
        columns = dict(options.fields)
        docs = folder_run(path, frames_glob=args.frames, geometry=options.calibration,
                          out_dir=detector_dir(args.data_dir) / "imports", cycler_log=args.cycler,
                          columns=columns or None, time_source=args.time_source,
                          material=args.material, mass_mg=args.mass_mg, timezone=args.timezone)
        folder_options = type(options)(root_map=options.root_map, source=str(path.resolve()))
        return [(str(path), prepare_run(docs, folder_options, say))]
    for name in ("cycler", "material", "mass_mg", "timezone"):
        if getattr(args, name) is not None:
            raise CommandError(f"--{name.replace('_', '-')} belongs to a beamtime folder import (with --frames)")
    files = find_exports(path)
    if not files:
        raise CommandError(f"{args.path}: no document exports (.jsonl, .msgpack) in it; for a folder "
                           "of detector images pass --frames GLOB")
    out = []
    for f in files:
        options.source = str(f.resolve())
        out.append((str(f), prepare_run(read_export(f), options, say)))
    return out


def cmd_import(args) -> int:
    """``strainstream import PATH ...``; exit 0 when every run is in the catalog (and analysed)."""
    import contextlib

    from strainstream.archives.exports import ExportError
    from strainstream.archives.importer import ArchiveError, ImportOptions, write_run
    from strainstream.cli._common import config_from_args, data_dir_of
    from strainstream.client import connect, running_server
    from strainstream.datadir import add_archive_roots, make_layout

    def say(msg: str) -> None:
        print(f"strainstream import: {msg}", file=sys.stderr, flush=True)

    args.data_dir = data_dir_of(args)
    overrides = run_overrides(args)
    options = ImportOptions(root_map=root_map_of(args), experiment=overrides.get("experiment"),
                            calibration=overrides.get("calibration"), fields=overrides.get("fields", {}))
    try:
        prepared = _runs(args, options, say)
    except (ArchiveError, ExportError) as exc:
        raise CommandError(str(exc)) from None
    make_layout(args.data_dir)
    new_roots = add_archive_roots(args.data_dir, [f for _, run in prepared for f in run.folders])
    config = config_from_args(args)
    running = None if config.uri else running_server(args.data_dir)
    uri = config.uri or (running.uri if running else None)
    with contextlib.ExitStack() as stack:
        if uri is None:  # no server on the data directory: one for the import
            from strainstream.server import TiledServer

            server = stack.enter_context(TiledServer(args.data_dir))
            uri, api_key = server.uri, server.api_key
        else:
            from strainstream.auth import api_key_for

            if new_roots:
                raise CommandError(f"the server at {uri} was started before {', '.join(new_roots)} "
                                   "held frames of the catalog; restart it (the data directory "
                                   "now lists the folder in archive_roots.json) and import again")
            api_key = config.api_key or api_key_for(args.data_dir, create=False)
        client = connect(uri, api_key)
        report = []
        for source, run in prepared:
            try:
                result = write_run(client, run, say, batch_size=IMPORT_BATCH)
            except ArchiveError as exc:
                raise CommandError(str(exc)) from None
            for note in result.notes:
                say(f"{source}: {note}")
            entry = {"uid": result.uid, "events": result.events, "status": result.status,
                     "source": source, "notes": result.notes, "analyses": {}}
            say(f"{source}: run {result.uid} {result.status} ({result.events} events)")
            if args.analyse:
                from strainstream.reprocess import reprocess_run

                for o in reprocess_run(client, result.uid):
                    entry["analyses"][o.analysis] = {"status": o.status, "rows": o.n_rows,
                                                     "detail": o.detail}
                    say(f"run {result.uid[:8]}: {o.analysis} {o.status} ({o.n_rows} rows) {o.detail}")
            report.append(entry)
    if args.json:
        print_json({"runs": report})
    failed = [a for r in report for a in r["analyses"].values() if a["status"] == "failed"]
    return 1 if failed else 0
