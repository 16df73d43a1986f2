"""The JSON form of a run's stored derived results, read without the analysis callbacks.

``strainstream results`` needs only this: :mod:`strainstream.callbacks.sinks` (where the
results are written, and which re-exports these readers) imports the document machinery
(``event_model``, numpy), a quarter of a second before anything is read.

Derived results live at ``derived/<raw_uid>/<analysis>`` (a table, one row per analysed
event) and ``derived/<raw_uid>/<analysis>_arrays`` (maps). Imports: the standard library;
numpy only when a run has arrays.
"""

from __future__ import annotations

import logging
import math
from typing import Any

__all__ = ["ARRAYS_SUFFIX", "DERIVED", "read_arrays", "read_results", "results_document"]

logger = logging.getLogger(__name__)

#: the container of derived results; the suffix of an analysis' arrays container
DERIVED = "derived"
ARRAYS_SUFFIX = "_arrays"


def _base(node):
    """The plain container client behind tiled's composite/BlueskyRun wrappers."""
    return getattr(node, "base", node)


def _table_rows(node) -> list[dict[str, Any]]:
    try:
        df = node.read()
    except Exception as exc:  # an appendable table with no partition yet
        logger.debug("results table %s has no rows yet (%s)", node.uri, exc)
        return []
    rows = df.to_dict(orient="records")
    seen: dict[int, dict] = {}
    for r in rows:  # duplicates (a retried append) collapse onto one row per seq_num
        r = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in r.items()}
        seen.setdefault(int(r["seq_num"]), r)
    return [seen[k] for k in sorted(seen)]


def _json_safe(obj):
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item"):
        return _json_safe(obj.item())
    return obj


def _array_digest(arr) -> dict[str, Any]:
    import hashlib

    import numpy as np

    a = np.ascontiguousarray(arr)
    finite = np.isfinite(a) if a.dtype.kind == "f" else np.ones(a.shape, bool)
    return {
        "shape": list(a.shape),
        "dtype": a.dtype.str,
        "sha256": hashlib.sha256(a.tobytes()).hexdigest(),
        "n_finite": int(finite.sum()),
        "mean": float(a[finite].mean()) if finite.any() else None,
    }


def _analysis_entry(metadata, status, summary, columns, rows, arrays=None) -> dict[str, Any]:
    rows = sorted(rows, key=lambda r: r["seq_num"])
    entry = {
        "version": metadata.get("version"),
        "parameters": metadata.get("parameters", {}),
        "status": status,
        "summary": summary or {},
        "n_rows": len(rows),
        "columns": {c: [r.get(c) for r in rows] for c in columns},
    }
    if arrays:
        entry["arrays"] = {k: _array_digest(arrays[k]) for k in sorted(arrays)}
    return _json_safe(entry)


def results_document(raw_uid: str, analyses: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The one JSON form of derived results, shared by ``results`` and ``replay``."""
    return {"uid": raw_uid, "analyses": {k: analyses[k] for k in sorted(analyses)}}


def read_results(root, raw_uid: str) -> dict[str, Any]:
    """Read the stored derived results of ``raw_uid`` as :func:`results_document`;
    KeyError if the run has none. ``root``: a tiled client or an
    :mod:`strainstream.offline_reader` catalog."""
    if DERIVED not in root or raw_uid not in root[DERIVED]:
        raise KeyError(raw_uid)
    run_node = _base(root[DERIVED][raw_uid])
    analyses = {}
    names = list(run_node)
    for name in names:
        if name.endswith(ARRAYS_SUFFIX):
            continue
        node = run_node[name]
        md = dict(node.metadata)
        columns = list(node.columns) if hasattr(node, "columns") else []
        rows = _table_rows(node)
        arrays = None
        if f"{name}{ARRAYS_SUFFIX}" in names:
            box = run_node[f"{name}{ARRAYS_SUFFIX}"]
            arrays = {k: box[k].read() for k in box}
        analyses[name] = _analysis_entry(
            md, md.get("status", "unknown"), md.get("summary"), {c: None for c in columns}, rows, arrays
        )
    return results_document(raw_uid, analyses)


def figure_arrays(root, raw_uid: str, analysis: str) -> dict[str, Any]:
    """The stored arrays of one analysis as its figure draws them: with ``incomplete_lines``
    (``[itheta, iy, frames]`` rows, an int array) from their metadata when a fly map has
    raster lines mapped short."""
    arrays, metadata = read_arrays(root, raw_uid, analysis)
    short = metadata.get("incomplete_lines") if isinstance(metadata, dict) else None
    if short:
        import numpy as np

        arrays = dict(arrays, incomplete_lines=np.asarray(short, dtype=np.int64).reshape(-1, 3))
    return arrays


def read_arrays(root, raw_uid: str, analysis: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stored arrays (maps) of one analysis of ``raw_uid`` and their metadata.

    Returns ``({}, {})`` when the analysis stored no arrays (yet). Also importable as
    :func:`strainstream.callbacks.sinks.read_arrays` (``strainstream plot`` imports it from
    here: the sinks module imports event_model and numpy first).
    """
    try:
        box = _base(_base(root[DERIVED][raw_uid])[f"{analysis}{ARRAYS_SUFFIX}"])
    except KeyError:
        return {}, {}
    return {k: box[k].read() for k in box}, dict(box.metadata)
