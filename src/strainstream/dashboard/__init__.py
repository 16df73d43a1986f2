"""``strainstream dashboard``: the live web page of the catalog (run list, operando XRD, SXDM,
TXM-XANES, compare, and the protocols: cycling, GITT, rate series), following tiled with a
read-only key.

Why Bokeh (a Bokeh server embedded in our process):

- mature and self-contained: the server serves BokehJS itself (resources mode ``server``), so
  the page loads no asset from a CDN and works offline at a beamline;
- interactive out of the box: zoom, pan, hover tooltips with values and units, tap events on
  images (a pixel's rocking curve, a voxel's spectrum), data tables with sorting;
- live: the Python side updates ``ColumnDataSource`` objects and Bokeh pushes only the new
  rows (``stream``) over its own websocket; the browser reconnects by reloading the session;
- no JavaScript build step and no second server process: one Python process, one port.

The page follows the results table of each view over tiled's websocket subscription (rows
drawn within ~0.1–0.7 s of landing in tiled) and reads it again every
:data:`~strainstream.dashboard._app.BACKSTOP_S` s as a safety net; it streams only the rows it
has not drawn yet. Reads run in worker threads, without Bokeh's document lock (a locked
callback holds the lock across its awaits, which held pushed rows back); the page is changed
in next-tick callbacks. When the safety net finds rows the subscription missed (tiled
restarted: the memory cache's sequence numbers start afresh) it subscribes again. An
unreachable tiled shows "tiled unreachable, retrying" in the status line; a key tiled refuses
shows a login error with a key field, never a blank page. ``serve --dashboard-port`` and
``deploy up --dashboard-port`` serve the page beside tiled.

This module stays light (no Bokeh, no tiled import): :func:`running_dashboard` tells other
commands (``demo``) where a running dashboard is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["DASHBOARD_JSON", "DEFAULT_PORT", "dashboard_json_path", "running_dashboard"]

#: the file a running ``strainstream dashboard`` writes in its data directory
DASHBOARD_JSON = "dashboard.json"
#: Bokeh's usual port
DEFAULT_PORT = 5006


def dashboard_json_path(data_dir: str | os.PathLike | None = None) -> Path:
    """``DATA_DIR/dashboard.json`` (``data_dir`` default: the configured one,
    ``$STRAINSTREAM_DATA_DIR`` or the configuration file's, else ``./strainstream-data``)."""
    if data_dir is None:
        from strainstream.config import load_config

        data_dir = load_config().data_dir
    return Path(data_dir) / DASHBOARD_JSON


def running_dashboard(data_dir: str | os.PathLike | None = None) -> str | None:
    """The URL of the dashboard running for ``data_dir``, or None (no file, or its process died)."""
    path = dashboard_json_path(data_dir)
    try:
        info = json.loads(path.read_text())
        url, pid = info["url"], int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        pass
    return str(url)
