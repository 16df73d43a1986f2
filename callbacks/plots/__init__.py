"""Figures of derived results (matplotlib), as the papers show them.

Each analysis has one figure function taking its results entry (see
:func:`strainstream.callbacks.sinks.read_results`), optionally the stored arrays, and
returning a Figure.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FIGURES", "figure_for"]


#: analysis name -> "module:function" (relative to this package), imported when used
FIGURES: dict[str, str] = {
    "frame_stats": "framestats:frame_stats_figure",
    "operando_xrd": "xrd:operando_xrd_figure",
    "sxdm": "sxdm:sxdm_figure",
    "txm_xanes": "xanes:txm_xanes_figure",
}


def figure_for(name: str, entry: dict[str, Any], fig=None, arrays: dict[str, Any] | None = None):
    """The figure of analysis ``name`` for its results entry; KeyError if it has none.

    ``arrays`` are the analysis' stored maps (:func:`strainstream.callbacks.sinks.read_arrays`),
    used by the figures that show maps (SXDM, TXM-XANES).
    """
    import importlib

    module, _, func = FIGURES[name].partition(":")
    function = getattr(importlib.import_module(f"{__name__}.{module}"), func)
    if arrays:
        return function(entry, fig, arrays=arrays)
    return function(entry, fig)
