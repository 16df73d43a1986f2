"""``strainstream report``: the study's figure set and figures of merit of a material, a series
or some runs, as one self-contained HTML file and a PDF."""

from __future__ import annotations

import os

from ._common import CommandError, add_server_options, data_dir_of, number, print_json

__all__ = ["register"]

#: sub-directory of the data directory that receives the report by default
REPORT_DIR = "report"


def register(commands) -> None:
    """Add ``report`` to the sub-command parsers ``commands``."""
    p = commands.add_parser(
        "report", help="HTML + PDF report of a material's (series', runs') analysed runs",
        description="One self-contained HTML report (figures embedded) and a PDF of the live-analysis "
                    "results of the runs of a material, of a series or of the runs given: operando XRD "
                    "panels, phase fractions beside the voltage, electrochemistry, SXDM strain/rotation "
                    "maps, TXM white-line maps, a comparison of the materials, and a table of figures "
                    "of merit, each naming its run uid and analysis version (on the simulated beamline "
                    "also the simulator's truth). Without --material/--series/--runs: every analysed run. "
                    "Writes OUTPUT/report.html and OUTPUT/report.pdf and prints their paths.")
    add_server_options(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--material", nargs="+", default=None, metavar="MATERIAL",
                       help="the runs of these materials (e.g. SC-NM91; a run of the composition alone, "
                            "e.g. a TXM scan of NM91 particles, belongs to SC-NM91 and PC-NM91)")
    which.add_argument("--runs", nargs="+", default=None, metavar="UID",
                       help="exactly these runs (uid or a unique prefix of 6+ characters)")
    which.add_argument("--series", default=None, help="the runs of this series (the start documents' series)")
    p.add_argument("--output", default=None, metavar="DIR",
                   help=f"directory for report.html and report.pdf (default DATA_DIR/{REPORT_DIR}/)")
    p.add_argument("--dpi", type=number(int, low=30, high=300), default=80,
                   help="resolution of the figures in the HTML (default 80; the PDF's are vector)")
    p.add_argument("--json", action="store_true",
                   help="print the report's paths, runs and figures of merit as one JSON object")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from strainstream.report import figures_of_merit, read_runs, report_summary, write_report

    from ._common import resolve_server
    from .runs import read_catalog

    data_dir = data_dir_of(args)
    out_dir = args.output
    if out_dir is None:
        if not data_dir or not os.path.isdir(data_dir):
            raise CommandError(f"no data directory {data_dir!r} to write the report into; pass "
                               "--output DIR (or --data-dir DIR)")
        out_dir = os.path.join(data_dir, REPORT_DIR)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise CommandError(f"--output {out_dir}: exists and is not a directory")
    runs, notes = read_catalog(args, lambda root: read_runs(root, materials=args.material, uids=args.runs,
                                                            series=args.series))
    target = resolve_server(args)
    merits = figures_of_merit(runs)
    import matplotlib

    matplotlib.use("Agg")
    from strainstream.dashboard import running_dashboard

    try:
        paths = write_report(runs, merits, out_dir, notes=notes, server_uri=target.uri,
                             data_dir=target.data_dir, dashboard_url=running_dashboard(target.data_dir))
    except OSError as exc:
        raise CommandError(f"--output {out_dir}: cannot write the report ({exc.strerror or exc})") from None
    if args.json:
        print_json(report_summary(runs, merits, paths, notes))
    else:
        for note in notes:
            print(f"note: {note}")
        print(paths["html"])
        print(paths["pdf"])
    return 0
