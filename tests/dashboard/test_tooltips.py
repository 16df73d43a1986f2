"""Every hover tooltip of the dashboard shows values, never Bokeh's "???" (a field missing
from the source of a renderer it hovers), and says the unit of each dimensioned value."""

from __future__ import annotations

import re


def test_every_tooltip_field_is_in_the_sources_it_hovers():
    from bokeh.document import Document
    from bokeh.models import GlyphRenderer, HoverTool, Plot

    from strainstream.dashboard._app import Page

    doc = Document()
    Page(doc, "http://127.0.0.1:9/api/v1", None)  # builds the page; reads nothing before start()
    checked, units = 0, 0
    for plot in doc.select({"type": Plot}):
        for tool in [t for t in plot.tools if isinstance(t, HoverTool)]:
            renderers = plot.renderers if tool.renderers == "auto" else tool.renderers
            fields = {f for _, value in tool.tooltips for f in re.findall(r"@\{?(\w+)\}?", value)}
            for r in renderers:
                if not isinstance(r, GlyphRenderer):
                    continue
                missing = fields - set(r.data_source.column_names)
                assert not missing, f"{plot.title.text!r}: hover on a renderer without {sorted(missing)} shows ???"
                checked += 1
            for label, value in tool.tooltips:
                assert "..." not in value, (plot.title.text, label, value)
                if re.search(r"[°Åµ]|eV|mAh|\bV\b|\bh\b|×10", value):
                    units += 1
    assert checked >= 20 and units >= 20, (checked, units)
