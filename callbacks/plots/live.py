"""Live matplotlib windows of the running run's analyses, for the console.

:class:`LiveFigures` is a RunEngine callback: while a run records, a daemon thread reads what
the worker has stored for it (``read_results``/``read_arrays``, every ``interval_s``) so the
RunEngine never waits on tiled; the figures are drawn on the caller's thread (matplotlib is
not thread-safe) from the events, at most once per ``interval_s``, with the same figure code as
``strainstream plot``. After the stop document, the window keeps updating (a matplotlib
timer, run by the GUI event loop) until every analysis of the run is complete.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from event_model import DocumentRouter

__all__ = ["LiveFigures"]


class LiveFigures(DocumentRouter):
    """One window per analysis of the running run (``"<analysis> <uid8>"``), redrawn live.

    Parameters
    ----------
    client : tiled client container
        The catalog root the worker writes its results under.
    interval_s : float
        Seconds between reads of the results (and at most between redraws).
    pyplot : module, optional
        ``matplotlib.pyplot`` (default: imported on first use).
    follow_s : float
        How long after the run's stop document the windows keep waiting for the worker.
    """

    def __init__(self, client, *, interval_s: float = 2.0, pyplot=None, follow_s: float = 300.0) -> None:
        super().__init__()
        self.client = client
        self.interval_s = float(interval_s)
        self.follow_s = float(follow_s)
        self._plt = pyplot
        self._start: dict[str, Any] | None = None
        self._fetched: tuple[int, dict[str, Any], dict[str, dict]] | None = None  # (generation, doc, arrays)
        self._drawn_generation = -1
        self._last_draw = 0.0
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._timer = None
        self.figures: dict[str, Any] = {}  # analysis -> Figure of the current run
        self.complete = False

    # -- documents (the RunEngine's thread) -------------------------------------------------
    def start(self, doc):
        self._stop_following()
        self._start, self._fetched, self._drawn_generation = dict(doc), None, -1
        self.figures, self.complete = {}, False
        self._wake = threading.Event()
        threading.Thread(target=self._fetch_loop, args=(doc["uid"], self._wake),
                         name=f"live-figures-{doc['uid'][:8]}", daemon=True).start()

    def event(self, doc):
        if time.monotonic() - self._last_draw >= self.interval_s:
            self.draw()

    def event_page(self, doc):
        self.event(doc)

    def stop(self, doc):
        self.draw()
        if self.complete:
            self._stop_following()
            return
        plt = self._pyplot()
        fig = next(iter(self.figures.values()), None) or plt.gcf()
        deadline = time.monotonic() + self.follow_s
        timer = fig.canvas.new_timer(interval=int(self.interval_s * 1000))

        def _tick():
            self.draw()
            if self.complete or time.monotonic() > deadline:
                timer.stop()
                self._stop_following()

        timer.add_callback(_tick)
        timer.start()
        self._timer = timer

    # -- results (the follower's thread) ----------------------------------------------------
    def _fetch_loop(self, uid: str, wake: threading.Event) -> None:
        generation = 0
        while True:
            with contextlib.suppress(Exception):  # no worker yet, tiled busy: try again
                self.fetch(uid, generation)
                generation += 1
            if wake.wait(self.interval_s):
                return

    def fetch(self, uid: str, generation: int = 0) -> None:
        """Read the stored results and arrays of run ``uid`` (for the next :meth:`draw`)."""
        from strainstream.callbacks.plots import FIGURES
        from strainstream.callbacks.sinks import read_results
        from strainstream.results_doc import figure_arrays

        doc = read_results(self.client, uid)
        arrays = {name: figure_arrays(self.client, uid, name) for name in doc["analyses"] if name in FIGURES}
        with self._lock:
            if self._start is not None and self._start.get("uid") == uid:
                self._fetched = (generation, doc, arrays)

    def _stop_following(self) -> None:
        self._wake.set()
        if self._timer is not None:
            with contextlib.suppress(Exception):
                self._timer.stop()
            self._timer = None

    # -- drawing (the caller's thread) ------------------------------------------------------
    def _pyplot(self):
        if self._plt is None:
            import matplotlib.pyplot as plt

            self._plt = plt
        return self._plt

    def draw(self) -> bool:
        """Redraw the windows from the latest fetched results; False if nothing new."""
        from strainstream.callbacks.plots import FIGURES, figure_for

        self._last_draw = time.monotonic()
        with self._lock:
            fetched = self._fetched
        if fetched is None or fetched[0] == self._drawn_generation:
            return False
        generation, doc, arrays = fetched
        plt = self._pyplot()
        uid = self._start["uid"] if self._start else doc.get("uid", "?")
        for name, entry in doc["analyses"].items():
            if name not in FIGURES:
                continue
            fig = self.figures.get(name)
            if fig is None:
                fig = self.figures[name] = plt.figure(num=f"{name} {str(uid)[:8]}", figsize=(11, 7))
            fig.clf()
            with contextlib.suppress(KeyError, ValueError):  # a partial table the figure cannot show yet
                figure_for(name, entry, fig=fig, arrays=arrays.get(name), start=self._start,
                           analyses=doc["analyses"])
            fig.canvas.draw_idle()
            with contextlib.suppress(Exception):
                fig.canvas.flush_events()  # let the GUI paint (a no-op on Agg)
        self._drawn_generation = generation
        self.complete = bool(doc["analyses"]) and all(
            e.get("status") == "complete" for e in doc["analyses"].values())
        return True
