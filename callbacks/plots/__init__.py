"""Figures of derived results (matplotlib), as the papers show them.

Each analysis has one figure function taking the ``columns`` of its results entry
(see :func:`strainstream.callbacks.sinks.read_results`) and returning a Figure.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FIGURES", "figure_for"]


def _frame_stats(entry, fig=None):
    from .framestats import frame_stats_figure

    return frame_stats_figure(entry, fig)


def _operando_xrd(entry, fig=None):
    from .xrd import operando_xrd_figure

    return operando_xrd_figure(entry, fig)


FIGURES = {"frame_stats": _frame_stats, "operando_xrd": _operando_xrd}
FIGURES["sxdm"] = __import__(f"{__name__}.sxdm", fromlist=["sxdm_figure"]).sxdm_figure
FIGURES["txm_xanes"] = lambda entry, fig=None: __import__(f"{__name__}.xanes", fromlist=["_"]).txm_xanes_figure(entry, fig)


def figure_for(name: str, entry: dict[str, Any], fig=None):
    """The figure of analysis ``name`` for its results entry; KeyError if it has none."""
    return FIGURES[name](entry, fig)
