"""RunEngine sessions: a RunEngine wired to a tiled server, created by a factory (no globals)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Session", "make_session"]


@dataclass
class Session:
    """What a console or the demo needs: the RunEngine, its tiled writer and the catalog."""

    RE: Any
    writer: Any
    client: Any


def make_session(uri: str, api_key: str, *, progress: bool = True) -> Session:
    """Create a RunEngine that streams every document to tiled.

    Parameters
    ----------
    uri : str
        tiled server API URI, e.g. ``http://127.0.0.1:8000/api/v1``.
    api_key : str
        Key with write access.
    progress : bool
        Print per-event progress of each run (points done / expected).

    Notes
    -----
    The writer is ``bluesky_tiled_plugins.TiledWriter`` with ``batch_size=1`` so every event
    reaches tiled (and the live worker) as soon as it is emitted.
    """
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter

    from strainstream.server import connect

    client = connect(uri, api_key)
    RE = RunEngine({}, call_returns_result=False)
    writer = TiledWriter(client, batch_size=1)
    RE.subscribe(writer)
    if progress:
        from strainstream.callbacks.progress import ProgressPrinter

        RE.subscribe(ProgressPrinter())
    return Session(RE=RE, writer=writer, client=client)
