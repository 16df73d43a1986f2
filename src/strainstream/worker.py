"""The live analysis worker: a separate process that follows new runs in tiled.

It subscribes to the catalog root (websocket) for new runs and for their stop documents,
follows each run the router knows (:mod:`strainstream.callbacks.router`) with a
:class:`~strainstream.callbacks.tiled_source.RunFollower`, and writes results to
``derived/<uid>/<analysis>`` through :class:`~strainstream.callbacks.sinks.TiledSink`.

On start-up it also catches up: recent runs whose results are missing or incomplete are
followed from where their result tables stop (after a crash or a SIGKILL nothing is lost
and nothing is analysed twice).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

__all__ = ["Worker", "run_worker"]

logger = logging.getLogger("strainstream.worker")


class Worker:
    """Follow runs in a tiled catalog and analyse them live.

    Parameters
    ----------
    root : tiled client container
        The catalog root.
    catch_up_s : float
        On start-up, runs started less than this many seconds ago whose results are not
        complete are analysed (from their committed position).
    """

    def __init__(self, root, catch_up_s: float = 86400.0) -> None:
        self.root = root
        self.catch_up_s = catch_up_s
        self.lock = threading.Lock()
        self.followers: dict[str, Any] = {}
        self.finished: set[str] = set()
        self._root_sub = None
        self.stopped = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Worker:
        self._warm_up()
        sub = self.root.subscribe()
        sub.child_created.add_callback(self._on_run_created)
        sub.child_metadata_updated.add_callback(self._on_run_metadata)
        sub.start_in_thread()
        self._root_sub = sub
        self.catch_up()
        return self

    @staticmethod
    def _warm_up() -> None:
        """Import every analysis now, so the first event of the first run pays no imports."""
        import importlib

        import h5py  # noqa: F401  (frames are read from the detectors' HDF5 files)

        from strainstream.callbacks import router, sinks, tiled_source  # noqa: F401

        for specs in router.ANALYSES.values():
            for spec in specs:
                importlib.import_module(spec.partition(":")[0])

    def stop(self) -> None:
        self.stopped.set()
        if self._root_sub is not None:
            self._root_sub.disconnect(wait=False)
        with self.lock:
            followers = list(self.followers.values())
        for f in followers:
            f.close()

    def catch_up(self) -> None:
        """Follow recent runs whose derived results are missing or incomplete."""
        from tiled.queries import Key

        since = time.time() - self.catch_up_s
        try:
            recent = self.root.search(Key("start.time") > since)
            uids = list(recent)
        except Exception:
            logger.exception("catch-up query failed; falling back to listing the catalog")
            uids = list(self.root)
        for uid in uids:
            if uid == "derived" or uid in self.finished:
                continue
            if self._complete(uid):
                continue
            self.follow(uid)

    def _complete(self, uid: str) -> bool:
        from strainstream.callbacks.router import analyses_for
        from strainstream.callbacks.sinks import DERIVED

        try:
            md = self.root[uid].metadata
            names = [cls.name for cls in analyses_for(md.get("start", {}))]
            if not names:
                return True
            if "stop" not in md:
                return False
            node = self.root[DERIVED][uid]
            return all(n in node and node[n].metadata.get("status") == "complete" for n in names)
        except KeyError:
            return False

    # -- following -----------------------------------------------------------------------
    def follow(self, uid: str) -> None:
        from strainstream.callbacks.router import make_callbacks
        from strainstream.callbacks.sinks import TiledSink
        from strainstream.callbacks.tiled_source import RunFollower

        with self.lock:
            if uid in self.followers or uid in self.finished or self.stopped.is_set():
                return

            def factory(start_doc, fallback):
                return make_callbacks(start_doc, lambda name: TiledSink(self.root, uid, name), fallback)

            follower = RunFollower(self.root, uid, factory, on_done=self._on_done)
            self.followers[uid] = follower
        try:
            if follower.start():
                logger.info("following run %s", uid)
            else:
                with self.lock:
                    self.followers.pop(uid, None)
                    self.finished.add(uid)
        except Exception:
            logger.exception("run %s: could not be followed", uid)
            with self.lock:
                self.followers.pop(uid, None)

    def _on_done(self, uid: str) -> None:
        with self.lock:
            self.followers.pop(uid, None)
            self.finished.add(uid)
        logger.info("run %s analysed", uid)

    def _on_run_created(self, update) -> None:
        specs = [getattr(s, "name", s) for s in (update.specs or [])]
        if "BlueskyRun" not in specs:
            return
        try:
            self.follow(update.key)
        except Exception:
            logger.exception("run %s: follow failed", update.key)

    def _on_run_metadata(self, update) -> None:
        md = getattr(update, "metadata", None) or {}
        if "stop" not in md:
            return
        with self.lock:
            follower = self.followers.get(update.key)
        if follower is not None:
            try:
                follower.finish(dict(md["stop"]))
            except Exception:
                logger.exception("run %s: finishing failed", update.key)


def run_worker(uri: str, api_key: str, catch_up_s: float = 86400.0, ready_file: str | None = None) -> int:
    """Run a worker until SIGINT/SIGTERM. Returns the exit code."""
    from strainstream.server import connect

    root = connect(uri, api_key)
    worker = Worker(root, catch_up_s=catch_up_s).start()
    logger.info("worker ready, following %s", uri)
    if ready_file:
        with open(ready_file, "w") as f:
            f.write("ready\n")

    def _stop(signum, frame):
        worker.stopped.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not worker.stopped.wait(0.5):
        pass
    worker.stop()
    return 0
