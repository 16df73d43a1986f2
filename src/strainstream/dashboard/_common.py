"""What the dashboard's panels share: sizes, tools, the figure factory, column access."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["H", "TOOLS", "W", "col", "fig", "nan"]

#: panel sizes, px
W, H = 420, 300
TOOLS = "pan,wheel_zoom,box_zoom,reset,save"


def nan(v: Any) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def col(cols: dict[str, list], key: str, n: int) -> np.ndarray:
    v = cols.get(key)
    if v is None or len(v) != n:
        return np.full(n, np.nan)
    return np.array([nan(x) for x in v], dtype=float)


def fig(title: str, x_label: str, y_label: str, tooltips=None, **kw):
    """A figure with the dashboard's tools; ``tooltips`` (label, value with its unit) on hover.
    A renderer whose source lacks a field the tooltips show would show "???": limit the hover
    tool to the renderers that have them (``p.select_one(HoverTool).renderers = [...]``)."""
    from bokeh.models import HoverTool
    from bokeh.plotting import figure

    kw.setdefault("width", W)
    kw.setdefault("tools", TOOLS)
    kw.setdefault("height", H)
    p = figure(title=title, x_axis_label=x_label, y_axis_label=y_label, **kw)
    if tooltips:
        p.add_tools(HoverTool(tooltips=tooltips))
    p.toolbar.logo = None
    return p
