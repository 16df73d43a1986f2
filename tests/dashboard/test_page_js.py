"""The dashboard's fixes of BokehJS' paint costs (``PAINT_FIXES_JS``) rest on facts about the
installed BokehJS and about the page: checked here without a browser, so that a Bokeh upgrade or
a page style that breaks them fails a test instead of slowing or changing the page silently."""

from __future__ import annotations

import re
from pathlib import Path

import bokeh
import pytest

import strainstream.dashboard as dashboard
from strainstream.dashboard._app import PAINT_FIXES_JS

BOKEH_JS = Path(bokeh.__file__).parent / "server" / "static" / "js"


def _js(name: str) -> str:
    return (BOKEH_JS / name).read_text(encoding="utf-8")


def test_no_bk_css_variable_is_defined_by_bokeh_or_the_dashboard():
    """``_get_css_value`` answers "" at once: right only while no ``--bk-*`` variable exists."""
    pattern = re.compile(r"--bk-[a-z]")
    for path in sorted(BOKEH_JS.glob("*.js")):
        hits = pattern.findall(path.read_text(encoding="utf-8"))
        assert not hits, f"{path.name} defines or reads --bk-* CSS variables: {sorted(set(hits))[:5]}"
    sources = sorted(Path(dashboard.__file__).parent.rglob("*.py"))
    assert len(sources) >= 4
    for path in sources:
        text = path.read_text(encoding="utf-8")
        assert not pattern.search(text), f"{path.name} sets a --bk-* CSS variable: the page fix would ignore it"


def test_the_patched_bokehjs_members_exist():
    """Each member the fix replaces is where it was measured (BokehJS 3.9)."""
    src = _js("bokeh.js")
    modules = re.search(r'\{"main":0,.*?\}', src[-60000:]).group(0)
    for module in ("core/dom", "core/visuals/visual", "models/plots/plot_canvas"):
        assert f'"{module}":' in modules, module
        assert f'Bokeh.require("{module}")' in PAINT_FIXES_JS
    assert re.search(r"class InlineStyleSheet extends StyleSheet \{.*?_update\(css\) \{\s*this\.el\.textContent = css;",
                     src, re.S)
    assert re.search(r"class VisualProperties \{.*?_get_css_value\(name\) \{\s*const style = getComputedStyle",
                     src, re.S)
    plot_view = src[src.index("class PlotView extends"):]
    assert re.search(r"get base_font_size\(\) \{\s*const font_size = getComputedStyle\(this\.el\)\.fontSize;",
                     plot_view[:200000])
    # every visual read falls back to the model's value when the cascade answers ""
    # (a non-empty value, or one of the enumeration's: "" is neither)
    getters = re.findall(r'const (css_\w+) = this\._get_css_value\("[a-z-]+"\);\s*'
                         r'if \((?:\1 != ""|enums_1\.\w+\.valid\(\1\))\)', src)
    assert len(getters) == src.count("this._get_css_value(") == 24


@pytest.mark.parametrize("css, same", [
    (":host { left: 80.9090909090909px; top: 35.45454545454777px; }", True),
    (":host { left: 80.91px; top: 35.45454545454777px; }", False),
    (":host { display: none; }", False),
])
def test_position_style_sheets_compare_to_a_thousandth_of_a_pixel(css, same):
    """The rounding ``PAINT_FIXES_JS`` applies before comparing (here in Python's ``re``)."""
    rule = re.search(r'css\.replace\(/(.+?)/g, "\$1"\)', PAINT_FIXES_JS)
    assert rule is not None
    key = re.compile(rule.group(1).replace("\\\\", "\\"))
    before = ":host { left: 80.90909090909092px; top: 35.45454545454413px; }"
    assert (key.sub(r"\1", css) == key.sub(r"\1", before)) is same
