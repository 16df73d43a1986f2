"""Replay an archived run through the same analysis callbacks as the live worker.

:func:`replay_run` keeps the results in memory (``strainstream replay``);
:func:`replay_into` writes them wherever a sink factory says (``strainstream reprocess``
gives it :class:`~strainstream.callbacks.sinks.TiledSink`, the live worker's sink).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Collection, Iterable
from typing import Any

import numpy as np

__all__ = ["frame_fallback", "replay_documents", "replay_into", "replay_run", "stream_documents"]


def stream_documents(documents: Iterable[tuple[str, Any]], root_map: dict[str, str] | None = None,
                     overrides: dict[str, Any] | None = None):
    """``(name, doc)`` pairs with classic Resource/Datum (ophyd v1 area detectors, databroker
    archives: ``AD_HDF5``, ``AD_TIFF``) turned into StreamResource/StreamDatum per event
    (:class:`strainstream.asset_docs.DatumToStream`), ``root_map`` (OLD -> NEW path prefixes)
    applied, and the start document as ``overrides`` say
    (:func:`strainstream.rundesc.apply_overrides`); StreamResource/StreamDatum runs pass through."""
    from strainstream.asset_docs import DatumToStream
    from strainstream.rundesc import apply_overrides

    out: list[tuple[str, dict]] = []
    convert = DatumToStream(lambda n, d: out.append((n, d)), root_map=root_map)
    for name, doc in documents:
        doc = doc.to_dict() if hasattr(doc, "to_dict") else dict(doc)
        if name == "start":
            doc = apply_overrides(doc, overrides)
        convert(name, doc)
        yield from out
        out.clear()


def replay_documents(documents: Iterable[tuple[str, Any]], start_doc: dict[str, Any], frame_fallback=None,
                     progress: bool = False, sink_factory: Callable[[str], Any] | None = None,
                     only: Collection[str] | None = None, commit_every: int | None = None,
                     root_map: dict[str, str] | None = None, overrides: dict[str, Any] | None = None):
    """Feed ``(name, doc)`` pairs to the run's analyses.

    Parameters
    ----------
    documents : iterable of (name, doc)
        The run's documents, e.g. ``run.documents()``.
    start_doc : dict
        The run's start document (routes the run to its analyses).
    frame_fallback : callable, optional
        ``(data_key, seq_num) -> frame`` when a detector file is not readable here.
    progress : bool
        Print a line on stderr every 50 events.
    sink_factory : callable, optional
        ``analysis name -> ResultSink``; default: a fresh in-memory sink per analysis.
    only : collection of str, optional
        Run only these analyses of the run (default: all of them).
    commit_every : int, optional
        Commit result rows in batches of this many events (one append each, as the live
        worker does for back-filled events) instead of one append per event.
    root_map : dict, optional
        ``{OLD: NEW}``: detector files recorded under OLD are read under NEW.
    overrides : dict, optional
        ``experiment``, ``calibration``, ``fields``: analyse the run as the user says
        (a run from another beamline; :func:`strainstream.rundesc.apply_overrides`).

    Returns
    -------
    list of AnalysisCallback
        One per analysis, each with ``.sink`` holding its results.
    """
    from strainstream.callbacks.router import make_callbacks
    from strainstream.callbacks.sinks import MemorySink

    if sink_factory is None:
        sink_factory = lambda name: MemorySink()  # noqa: E731
    from strainstream.rundesc import apply_overrides

    start_doc = apply_overrides(start_doc, overrides)
    callbacks = make_callbacks(start_doc, sink_factory, frame_fallback)
    if only is not None:
        callbacks = [cb for cb in callbacks if cb.name in only]
    n = 0
    batch = contextlib.ExitStack()
    try:
        for name, doc in stream_documents(documents, root_map, overrides):
            if name == "stop":
                batch.close()  # commit what is pending before the analyses finish
            for cb in callbacks:
                cb(name, doc)
            if name == "start" and commit_every:
                for cb in callbacks:
                    batch.enter_context(cb.batch())
            if name == "event":
                n += 1
                if commit_every and n % commit_every == 0:
                    for cb in callbacks:
                        cb.flush()
                if progress and n % 50 == 0:
                    print(f"replayed {n} events", file=sys.stderr, flush=True)
    finally:
        batch.close()
    return callbacks


def frame_fallback(run) -> Callable[[str, int], np.ndarray]:
    """``(data_key, seq_num) -> frame`` read through tiled (when the detector file is not local),
    at the index the node's data source gives the event
    (:class:`strainstream.callbacks.tiled_format.ExternalFrames`)."""
    from strainstream.callbacks.tiled_format import (
        ExternalFrames,
        stored_seq_nums,
        stream_container,
    )

    frames: dict[str, ExternalFrames] = {}
    run = getattr(run, "base", run)  # the plain container, whichever run client tiled chose

    def fallback(data_key: str, seq_num: int) -> np.ndarray:
        found = frames.get(data_key)
        if found is None:
            for stream in run:
                node = stream_container(run, stream)
                if node is not None and data_key in node:
                    found = frames[data_key] = ExternalFrames(node[data_key], data_key,
                                                              seq_nums=stored_seq_nums(node))
                    break
            else:
                raise KeyError(data_key)
        return found.read_http(seq_num)

    return fallback


def replay_into(run, sink_factory: Callable[[str], Any] | None = None, only: Collection[str] | None = None,
                commit_every: int | None = None, progress: bool = False,
                root_map: dict[str, str] | None = None, overrides: dict[str, Any] | None = None):
    """Replay a tiled/databroker run into sinks; return the callbacks (see :func:`replay_documents`).

    Raises
    ------
    ValueError
        The run is not one strainstream analyses (its ``experiment`` is unknown).
    """
    start_doc = dict(run.metadata["start"])
    callbacks = replay_documents(run.documents(), start_doc, frame_fallback(run), progress=progress,
                                 sink_factory=sink_factory, only=only, commit_every=commit_every,
                                 root_map=root_map, overrides=overrides)
    if not callbacks and only is None:
        start_doc = dict(start_doc, **({"experiment": overrides["experiment"]}
                                       if overrides and overrides.get("experiment") else {}))
        raise ValueError(
            f"run {start_doc['uid']} (experiment={start_doc.get('experiment')!r}) has no strainstream analysis"
        )
    return callbacks


def replay_run(run, progress: bool = False, root_map: dict[str, str] | None = None,
               overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Replay a tiled/databroker run; return results in the form of ``strainstream results``."""
    from strainstream.callbacks.sinks import results_document

    callbacks = replay_into(run, progress=progress, root_map=root_map, overrides=overrides)
    uid = run.metadata["start"]["uid"]
    return results_document(uid, {cb.name: cb.sink.as_dict() for cb in callbacks})
