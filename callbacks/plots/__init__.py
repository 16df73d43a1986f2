"""Figures of derived results (matplotlib), as the papers show them.

Each analysis has one figure function taking its results entry (see
:func:`strainstream.callbacks.sinks.read_results`), optionally the stored arrays and the run's
start document (sample, material, rate and pixel size for titles and scale bars), and
returning a Figure. :func:`save_figure` writes one as a PNG without ever leaving a half-written
file under the real name. Use a non-interactive backend (Agg) in servers and the CLI.
:func:`figure_key` digests everything a figure is drawn from; ``save_figure(..., key=KEY)``
stores it in the PNG and :func:`png_key` reads it back, so ``strainstream plot`` reuses a PNG
drawn from the same results (e.g. by the worker when the run was analysed) without importing
matplotlib.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

__all__ = ["FIGURES", "figure_for", "figure_key", "png_argument", "png_key", "png_path", "save_figure"]

#: the PNG text field holding :func:`figure_key` of the results a figure was drawn from
KEY_FIELD = "strainstream figure key"


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


@functools.cache
def _code_digest() -> bytes:
    """Digest of this package's source: a figure drawn by other figure code is not reused."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).resolve().parent.glob("*.py")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.digest()


def figure_key(name: str, entry: dict[str, Any], *, arrays: dict[str, Any] | None = None,
               start: dict[str, Any] | None = None, analyses: dict[str, Any] | None = None,
               dpi: int = 110) -> str:
    """Digest (hex) of everything :func:`figure_for` draws analysis ``name`` from, the
    resolution and the figure code: equal keys, the same PNG."""
    import numpy as np

    h = hashlib.sha256(_code_digest())
    sibling = analyses.get(SIBLINGS[name][1]) if name in SIBLINGS and analyses else None
    h.update(json.dumps([name, int(dpi), entry, start, sibling], sort_keys=True, default=repr).encode())
    for key in sorted(arrays or {}):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def png_key(path: str | os.PathLike) -> str | None:
    """The :data:`KEY_FIELD` text of the PNG at ``path`` (None: no file, not a PNG, no key)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError:
        return None
    with f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
        while True:  # the text chunks come before the image data
            head = f.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind in (b"IDAT", b"IEND") or length > 1 << 20:
                return None
            data = f.read(length)
            f.read(4)  # CRC
            if kind == b"tEXt":
                field, _, text = data.partition(b"\0")
                if field == KEY_FIELD.encode("latin-1"):
                    return text.decode("latin-1")


def save_figure(fig, path: str | os.PathLike, dpi: int = 110, key: str | None = None) -> str:
    """Write ``fig`` as a PNG at ``path`` (directories created), atomically; return the path.

    ``key`` (:func:`figure_key`) is stored in the PNG for :func:`png_key`."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    part = f"{path}.part-{os.getpid()}.png"  # never a half-written PNG under the real name
    try:
        fig.savefig(part, dpi=dpi, format="png", metadata={KEY_FIELD: key} if key else None)
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
