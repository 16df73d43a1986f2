"""Replay an archived run through the same analysis callbacks as the live worker."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = ["replay_documents", "replay_run"]


def replay_documents(documents, start_doc: dict[str, Any], frame_fallback=None, progress: bool = False):
    """Feed ``(name, doc)`` pairs to the run's analyses with in-memory sinks.

    Returns the list of callbacks (each with ``.sink`` holding its results).
    """
    from strainstream.callbacks.router import make_callbacks
    from strainstream.callbacks.sinks import MemorySink

    callbacks = make_callbacks(start_doc, lambda name: MemorySink(), frame_fallback)
    n = 0
    for name, doc in documents:
        doc = doc.to_dict() if hasattr(doc, "to_dict") else dict(doc)
        for cb in callbacks:
            cb(name, doc)
        if name == "event":
            n += 1
            if progress and n % 50 == 0:
                print(f"replayed {n} events", file=sys.stderr, flush=True)
    return callbacks


def replay_run(run, progress: bool = False) -> dict[str, Any]:
    """Replay a tiled/databroker run; return results in the form of ``strainstream results``."""
    from strainstream.callbacks.sinks import results_document

    start_doc = dict(run.metadata["start"])

    def fallback(data_key: str, seq_num: int) -> np.ndarray:
        for stream in run:
            node = run[stream]
            if data_key in node:
                return np.asarray(node[data_key][seq_num - 1])
        raise KeyError(data_key)

    callbacks = replay_documents(run.documents(), start_doc, fallback, progress=progress)
    if not callbacks:
        raise ValueError(
            f"run {start_doc['uid']} (experiment={start_doc.get('experiment')!r}) has no strainstream analysis"
        )
    return results_document(start_doc["uid"], {cb.name: cb.sink.as_dict() for cb in callbacks})
