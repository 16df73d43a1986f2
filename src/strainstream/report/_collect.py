"""Which runs a report covers, and everything it draws from them, read from the catalog."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from strainstream.errors import StrainstreamError

__all__ = ["NoRunsFound", "ReportError", "RunData", "RunWithoutResults", "read_runs", "run_material"]

#: experiments in the order the report shows them (others follow in catalog order)
EXPERIMENT_ORDER = ("operando_xrd", "operando_cycling", "operando_gitt", "rate_series", "sxdm", "txm_xanes")


class ReportError(StrainstreamError, ValueError):
    """The report cannot be written as asked; the message says why and what to do."""


class NoRunsFound(ReportError):
    """No run of the catalog matches the material, uids or series given."""


class RunWithoutResults(ReportError):
    """A run named for the report has no derived results (not analysed, or a calibration)."""


@dataclass
class RunData:
    """One run as the report uses it: start document, its primary stream's configuration
    (device name → ``{"data": {...}}``), results document
    (:func:`strainstream.results_doc.read_results`) and each analysis' stored arrays
    (:func:`strainstream.results_doc.figure_arrays`)."""

    start: dict[str, Any]
    results: dict[str, Any]
    configuration: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def uid(self) -> str:
        return str(self.start["uid"])

    @property
    def experiment(self) -> str:
        return str(self.start.get("experiment") or "")

    @property
    def material(self) -> str:
        return run_material(self.start) or "?"

    @property
    def analyses(self) -> dict[str, Any]:
        return self.results.get("analyses") or {}


def run_material(start: dict[str, Any]) -> str | None:
    """The material a start document names (``material``, else the sample's), or None."""
    sample = start.get("sample")
    material = start.get("material") or (sample.get("material") if isinstance(sample, dict) else None)
    return str(material) if material else None


def _material_match(start: dict[str, Any], wanted: list[str]) -> str | None:
    """"exact" when ``start``'s material is one of ``wanted`` (case-insensitive); "composition"
    when it is the composition of one (a TXM scan of "NM91" particles belongs to the report of
    SC-NM91, if that material has runs of its own); else None."""
    material = (run_material(start) or "").upper()
    if not material:
        return None
    if material in (w.upper() for w in wanted):
        return "exact"
    if any("-" in w and material == w.upper().split("-", 1)[1] for w in wanted):
        return "composition"
    return None


def _configuration(run) -> dict[str, Any]:
    """The primary stream's configuration of a run node ({} when it has none)."""
    try:
        primary = run["primary"]
    except (KeyError, TypeError):
        return {}
    primary = getattr(primary, "base", primary)
    return dict((primary.metadata or {}).get("configuration") or {})


def _read_one(root, uid: str) -> RunData | None:
    """The run ``uid`` with its results, or None when it has no derived results."""
    from strainstream.callbacks.plots import FIGURES
    from strainstream.results_doc import figure_arrays, read_results

    run = root[uid]
    start = dict(run.metadata["start"])
    try:
        results = read_results(root, start["uid"])
    except KeyError:
        return None
    if not results.get("analyses"):
        return None
    arrays = {name: figure_arrays(root, start["uid"], name) for name in results["analyses"] if name in FIGURES}
    return RunData(start=start, results=results, configuration=_configuration(run), arrays=arrays)


def read_runs(root, *, materials: list[str] | None = None, uids: list[str] | None = None,
              series: str | None = None) -> tuple[list[RunData], list[str]]:
    """The runs a report covers, read from the catalog ``root``; and notes on runs left out.

    ``uids``: exactly these runs (unique prefixes of 6+ characters accepted); each must have
    derived results (:class:`RunWithoutResults` otherwise). ``materials``: every run of these
    materials (and of their composition, see :func:`_material_match`); ``series``: every
    run whose start document has this ``series`` (or a uid prefix of it). Neither: every run
    with derived results. With a material or series, runs without results are left out
    and named in the notes; :class:`NoRunsFound` when nothing is left.

    Reads only: it may run twice (:func:`strainstream.cli.runs.read_catalog`).
    """
    from strainstream.cli._common import get_run
    from strainstream.results_doc import DERIVED

    notes: list[str] = []
    if uids:
        runs = []
        for given in uids:
            node = get_run(root, given)
            start = node.metadata["start"]
            data = _read_one(root, start["uid"])
            if data is None:
                what = ("a calibration run (its geometry is in the runs it calibrates)"
                        if start.get("experiment") == "calibration" else "not analysed yet (is a worker running?)")
                raise RunWithoutResults(f"run {start['uid']} has no derived results: {what}")
            if all(r.uid != data.uid for r in runs):
                runs.append(data)
        return runs, notes
    runs, exact = [], []
    for uid in list(root):
        if uid == DERIVED:
            continue
        try:
            start = dict(root[uid].metadata.get("start") or {})
        except KeyError:
            continue
        if not start or start.get("experiment") == "calibration":
            continue
        match = _material_match(start, materials) if materials else "exact"
        if match is None:
            continue
        if series and not str(start.get("series") or "").startswith(series):
            continue
        data = _read_one(root, uid)
        if data is None:
            notes.append(f"run {uid} ({start.get('experiment') or '?'}, {run_material(start) or '?'}) "
                         "has no derived results: left out")
            continue
        runs.append(data)
        exact.append(match == "exact")
    if not any(exact):  # a composition's runs alone are no report of the material
        runs = []
        what = (f"material {', '.join(materials)}" if materials else f"series {series}" if series
                else "the catalog")
        hint = " (all of them unanalysed)" if notes else ""
        raise NoRunsFound(f"no analysed run found for {what}{hint}; `strainstream runs` lists the runs "
                          "and their materials")
    order = {e: k for k, e in enumerate(EXPERIMENT_ORDER)}
    runs.sort(key=lambda r: order.get(r.experiment, len(order)))  # stable: catalog order within
    return runs, notes
