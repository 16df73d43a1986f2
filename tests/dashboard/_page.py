"""Reading and driving the dashboard page from Selenium through BokehJS' document."""

from __future__ import annotations

import time
from typing import Any

#: JS helpers put on the page: a model by name, a column of a ColumnDataSource
HELPERS = """
window.__m = function(name) {
  const d = (window.Bokeh && Bokeh.documents) ? Bokeh.documents[0] : null;
  return d ? d.get_model_by_name(name) : null;
};
window.__col = function(name, key) {
  const m = window.__m(name);
  if (!m) return null;
  const d = m.data;
  const c = (d instanceof Map) ? d.get(key) : d[key];
  return c == null ? null : Array.from(c);
};
"""


def js(driver, script: str, *args) -> Any:
    return driver.execute_script(HELPERS + script, *args)


def wait_for(driver, script: str, timeout_s: float = 30.0, what: str = "", *args) -> Any:
    """Poll ``script`` (returns a truthy value when done) every 50 ms; its value."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = js(driver, script, *args)
        except Exception as exc:  # page (re)loading
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what or script}: last {last!r}")


def text_of(driver, name: str) -> str:
    return js(driver, "const m = window.__m(arguments[0]); return m ? m.text : null;", name) or ""


def column(driver, source: str, key: str) -> list | None:
    return js(driver, "return window.__col(arguments[0], arguments[1]);", source, key)


def set_active_tab(driver, index: int) -> None:
    js(driver, "window.__m('tabs').active = arguments[0];", index)


#: page coordinates (CSS px) of data point (x, y) of the figure named ``name``
_WHERE = """
const fig = window.__m(arguments[0]);
function find(views) {
  for (const v of views) {
    if (v.model === fig) return v;
    const kids = v.child_views || (v.children ? v.children() : []);
    const r = find(Array.from(kids || []));
    if (r) return r;
  }
  return null;
}
const roots = Bokeh.index.roots ? Array.from(Bokeh.index.roots) : Object.values(Bokeh.index);
const view = find(roots);
if (!view) return null;
const xs = view.frame.x_scale, ys = view.frame.y_scale;
const r = view.canvas_view.el.getBoundingClientRect();
return [r.left + xs.compute(arguments[1]), r.top + ys.compute(arguments[2])];
"""


def click_data_point(driver, figure: str, x: float, y: float) -> None:
    """A real mouse click (pointer events) on data point (x, y) of the figure ``figure``."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    where = js(driver, _WHERE, figure, x, y)
    assert where, f"figure {figure} not found on the page"
    print(f"click {figure} at data ({x:.4g}, {y:.4g}) = page ({where[0]:.0f}, {where[1]:.0f}) px")
    actions = ActionBuilder(driver)
    (actions.pointer_action.move_to_location(int(round(where[0])), int(round(where[1])))
     .pause(0.3).pointer_down().pause(0.05).pointer_up())
    actions.perform()
    del ActionChains
