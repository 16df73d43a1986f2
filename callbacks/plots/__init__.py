"""Figures of derived results (matplotlib), as the papers show them.

Each analysis has one figure function taking its results entry (see
:func:`strainstream.callbacks.sinks.read_results`), optionally the stored arrays and the run's
start document (sample, material, rate and pixel size for titles and scale bars), and
returning a Figure. :func:`save_figure` writes one as a PNG without ever leaving a half-written
file under the real name. Use a non-interactive backend (Agg) in servers and the CLI.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["FIGURES", "figure_for", "png_argument", "png_path", "save_figure"]


#: analysis name -> "module:function" (relative to this package), imported when used
FIGURES: dict[str, str] = {
    "frame_stats": "framestats:frame_stats_figure",
    "operando_xrd": "xrd:operando_xrd_figure",
    "sxdm": "sxdm:sxdm_figure",
    "txm_xanes": "xanes:txm_xanes_figure",
    "cycling": "electrochem:cycling_figure",
    "gitt": "electrochem:gitt_figure",
}


#: analysis -> (keyword of its figure function, the other analysis of the same run it draws)
SIBLINGS: dict[str, tuple[str, str]] = {"gitt": ("xrd", "operando_xrd")}


def figure_for(name: str, entry: dict[str, Any], fig=None, arrays: dict[str, Any] | None = None,
               start: dict[str, Any] | None = None, analyses: dict[str, Any] | None = None):
    """The figure of analysis ``name`` for its results entry; KeyError if it has none.

    ``arrays`` are the analysis' stored maps (:func:`strainstream.callbacks.sinks.read_arrays`),
    used by the figures that show maps (SXDM, TXM-XANES); ``start`` is the run's start
    document (title: material/sample, rate; map scale bars: step or pixel size);
    ``analyses`` the run's other results entries (name → entry), for figures that join two
    analyses (:data:`SIBLINGS`: GITT's D next to the XRD lattice of each relaxed point).
    """
    import importlib

    module, _, func = FIGURES[name].partition(":")
    function = getattr(importlib.import_module(f"{__name__}.{module}"), func)
    kwargs: dict[str, Any] = {"start": start}
    if arrays:
        kwargs["arrays"] = arrays
    if name in SIBLINGS and analyses and SIBLINGS[name][1] in analyses:
        kwargs[SIBLINGS[name][0]] = analyses[SIBLINGS[name][1]]
    return function(entry, fig, **kwargs)


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> str:
    """Write ``fig`` as a PNG at ``path`` (directories created), atomically; return the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    part = f"{path}.part-{os.getpid()}.png"  # never a half-written PNG under the real name
    try:
        fig.savefig(part, dpi=dpi, format="png")
        os.replace(part, path)
    finally:
        if os.path.exists(part):
            os.unlink(part)
    return path


def png_path(requested: str | None, beside: str | os.PathLike, tag: str) -> str:
    """The PNG path of a file command's ``--plot [PNG]``.

    ``requested`` a path: itself (an existing directory: ``DIR/STEM_TAG.png`` in it); none
    (``--plot`` alone): ``STEM_TAG.png`` next to ``beside`` (the output or input data file),
    so a figure lands with its data, never in the current directory by default.
    """
    beside = os.fspath(beside)
    name = f"{os.path.splitext(os.path.basename(beside))[0]}_{tag}.png"
    if requested and os.path.isdir(requested):
        return os.path.join(requested, name)
    if requested:
        return requested
    return os.path.join(os.path.dirname(os.path.abspath(beside)), name)


def png_argument(text: str) -> str:
    """An argparse ``type`` for ``--plot PNG``: a ``.png`` path or an existing directory (so
    ``--plot FILE.h5`` is an error, not a figure named FILE.h5)."""
    import argparse

    if not text or text.lower().endswith(".png") or os.path.isdir(text):  # "": --plot alone
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a .png path or a directory (put --plot "
                                     "after the input file, or give it a PNG path)")
