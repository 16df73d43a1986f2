"""Route a run to its analyses by the ``experiment`` key of its start document.

Plans record ``experiment`` (``frame_series``, ``operando_xrd``, ``operando_cycling``,
``operando_gitt``, ``sxdm``, ``txm_xanes``) in the start document; this table names the
analysis callbacks that consume each kind. It is the one place live workers, replays and
tests learn which analyses a run gets.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .base import AnalysisCallback, ResultSink, RunDocumentError

__all__ = ["ANALYSES", "analyses_for", "make_callbacks"]

#: experiment -> list of "module:Class" analysis callbacks
ANALYSES: dict[str, list[str]] = {
    "frame_series": ["strainstream.callbacks.framestats:FrameStatsCallback"],
    "operando_xrd": ["strainstream.callbacks.xrd:OperandoXRDCallback"],
    "operando_cycling": ["strainstream.callbacks.xrd:OperandoXRDCallback",
                         "strainstream.callbacks.electrochem:CyclingCallback"],
    "operando_gitt": ["strainstream.callbacks.xrd:OperandoXRDCallback",
                      "strainstream.callbacks.electrochem:GITTCallback"],
    "sxdm": ["strainstream.callbacks.sxdm:SXDMCallback"],
    "txm_xanes": ["strainstream.callbacks.xanes:XANESCallback"],
}


def _load(spec: str) -> type[AnalysisCallback]:
    module, _, cls = spec.partition(":")
    return getattr(importlib.import_module(module), cls)


def analyses_for(start_doc: dict[str, Any]) -> list[type[AnalysisCallback]]:
    """The analysis classes for a run (empty when the run is not one of ours)."""
    return [_load(s) for s in ANALYSES.get(start_doc.get("experiment", ""), [])]


def make_callbacks(
    start_doc: dict[str, Any],
    sink_factory: Callable[[str], ResultSink],
    frame_fallback=None,
) -> list[AnalysisCallback]:
    """Instantiate the run's analyses, each with its own sink from ``sink_factory(name)``.

    Analysis parameters come from ``start_doc["analysis_parameters"][name]`` when present.

    Raises
    ------
    RunDocumentError
        ``analysis_parameters`` (or one analysis' entry) is not a mapping.
    """
    params = start_doc.get("analysis_parameters", {}) or {}
    if not isinstance(params, dict):
        raise RunDocumentError(f"run {start_doc.get('uid')}: 'analysis_parameters' must map analysis "
                               f"names to parameter dicts, got {type(params).__name__}")
    return [
        cls(sink_factory(cls.name), parameters=params.get(cls.name), frame_fallback=frame_fallback)
        for cls in analyses_for(start_doc)
    ]
