"""The live analysis' result rows of a run, for a plan that decides from them (issue 19).

:class:`LiveResults` follows ``derived/<uid>/<analysis>`` as the dashboard does
(:class:`strainstream.dashboard._data.TableFollower`: tiled's websocket subscription, rows
pushed within tens of ms, and a read of the table every ``backstop_s`` as the safety net).
Calling it never waits on the network: it returns the rows that have arrived, and the
subscription and the reads happen in threads of their own. A plan calls it between frames.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["LiveResults"]


class LiveResults:
    """``live(uid)`` → the result rows of ``analysis`` for run ``uid`` that have arrived so far
    (dicts with ``seq_num``, one per analysed event).

    Parameters
    ----------
    root : tiled container client
        The catalog the worker writes its results to.
    analysis : str
        The analysis' name (its results table).
    backstop_s : float
        Seconds between reads of the whole table (the subscription's safety net; also how
        often a table not made yet is looked for).
    """

    def __init__(self, root, analysis: str = "operando_xrd", *, backstop_s: float = 1.0) -> None:
        self.root, self.analysis, self.backstop_s = root, analysis, float(backstop_s)
        self._rows: dict[str, dict[int, dict[str, Any]]] = {}
        self._followers: dict[str, Any] = {}
        self._busy: set[str] = set()
        self._last_read: dict[str, float] = {}
        self._lock = threading.Lock()
        self.errors = 0

    def __call__(self, uid: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._rows.setdefault(uid, {})
            due = time.monotonic() - self._last_read.get(uid, -1e9) >= self.backstop_s
            if due and uid not in self._busy:
                self._busy.add(uid)
                self._last_read[uid] = time.monotonic()
                threading.Thread(target=self._read, args=(uid,), daemon=True,
                                 name=f"live-results-{uid[:8]}").start()
            return [rows[k] for k in sorted(rows)]

    def _add(self, uid: str, columns: dict[str, list]) -> None:
        if not columns:
            return
        names = list(columns)
        with self._lock:
            rows = self._rows.setdefault(uid, {})
            for values in zip(*(columns[n] for n in names), strict=True):
                row = dict(zip(names, values, strict=True))
                rows.setdefault(int(row["seq_num"]), row)

    def _read(self, uid: str) -> None:
        from strainstream.dashboard._data import TableFollower

        try:
            follower = self._followers.get(uid)
            if follower is None:
                follower = self._followers[uid] = TableFollower(self.root, uid, self.analysis)
            if follower.stale:
                follower.close()
            if not follower.subscribed:
                follower.subscribe(lambda columns: self._add(uid, columns))
            self._add(uid, follower.new_rows())
        except Exception as exc:  # tiled away for a moment: the next call reads again
            self.errors += 1
            logger.debug("results of %s not read: %s", uid, exc)
        finally:
            with self._lock:
                self._busy.discard(uid)

    def close(self) -> None:
        """Drop the subscriptions."""
        for follower in list(self._followers.values()):
            follower.close()
        self._followers.clear()
