"""``strainstream report``: one HTML report (and PDF) of a material's, a series' or some runs'
live-analysis results — the study's figure set and a table of figures of merit.

- :func:`read_runs` picks the runs from a catalog (tiled client or
  :mod:`strainstream.offline_reader`) and reads their start documents, results and maps;
- :func:`figures_of_merit` computes the table (:class:`Merit`: value, unit, run uid, analysis
  and its version, where the number came from; on the simulated beamline also the
  simulator's truth, :mod:`strainstream.report._truth`);
- :func:`write_report` draws the figures (each analysis' own figure of
  :mod:`strainstream.callbacks.plots`, the phase fractions beside the voltage, the
  comparison of the materials) into ``report.html`` (self-contained: base64 PNGs) and
  ``report.pdf``.

Reading and writing are separate: what is read can be read again (a catalog read directly
falls back to tiled), the files are written once.
"""

from __future__ import annotations

from typing import Any

from ._collect import NoRunsFound, ReportError, RunData, RunWithoutResults, read_runs
from ._merit import Merit, figures_of_merit
from ._render import format_value, write_report

__all__ = ["Merit", "NoRunsFound", "ReportError", "RunData", "RunWithoutResults", "figures_of_merit",
           "format_value", "read_runs", "report_summary", "write_report"]


def report_summary(runs: list[RunData], merits: list[Merit], paths: dict[str, str] | None = None,
                   notes: list[str] | None = None) -> dict[str, Any]:
    """The report as strict JSON: its files, the runs (uid, experiment, material, analysis
    versions) and the figures of merit."""
    out: dict[str, Any] = {}
    if paths:
        out.update(paths)
    out["runs"] = [{"uid": r.uid, "experiment": r.experiment, "material": r.material,
                    "analyses": {k: v.get("version") for k, v in r.analyses.items()}} for r in runs]
    out["figures_of_merit"] = [m.as_json() for m in merits]
    out["notes"] = list(notes or [])
    return out
