"""A series of detector frames: the simplest strainstream experiment."""

from __future__ import annotations

from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
from bluesky.protocols import Readable
from bluesky.utils import MsgGenerator

from ._common import preflight

__all__ = ["frame_series"]


def frame_series(
    detectors: list[Readable],
    num: int,
    delay_s: float = 0.0,
    md: dict[str, Any] | None = None,
) -> MsgGenerator:
    """Take ``num`` frames with ``delay_s`` seconds between them.

    The run is tagged ``experiment="frame_series"`` so the analysis worker computes frame
    statistics for every frame.

    Parameters
    ----------
    detectors : list of readable devices
        Area detector(s) (frames written to HDF5, referenced by StreamResource/StreamDatum).
    num : int
        Number of frames (>= 1).
    delay_s : float
        Time between frames, seconds.
    md : dict, optional
        Extra metadata for the start document (e.g. ``{"continues": uid}`` for the rest of
        a series whose run failed).

    Raises
    ------
    DataDirError
        Before the run starts, when a detector's data directory cannot take ``num`` frames.
    """
    if num < 1:
        raise ValueError(f"num must be at least 1, got {num}")
    if delay_s < 0:
        raise ValueError(f"delay_s must be >= 0, got {delay_s}")
    _md = {"experiment": "frame_series", **(md or {})}
    yield from preflight(detectors, num)  # DataDirError before any document
    return (yield from bp.count(detectors, num=num, delay=delay_s, md=_md, per_shot=_shot))


def _shot(detectors: list[Readable], take_reading=bps.trigger_and_read) -> MsgGenerator:
    """One frame between two checkpoints: a suspension during the delay that follows must
    not rewind past the saved event (bluesky's ``count`` would re-take it under the same
    seq_num)."""
    yield from bps.checkpoint()
    ret = yield from take_reading(list(detectors))
    yield from bps.checkpoint()
    return ret
