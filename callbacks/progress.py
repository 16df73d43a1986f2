"""Console progress for runs: points done out of points expected, rate and time left, and
(operando XRD) the lattice parameters the live worker has refined so far."""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from typing import Any, TextIO

from event_model import DocumentRouter

__all__ = ["LiveLattice", "ProgressPrinter"]



class LiveLattice:
    """The latest a, c the worker has stored for a running operando XRD run.

    A daemon thread reads ``derived/<uid>/operando_xrd`` (three columns) every ``period_s``
    while a run is followed, so the RunEngine's thread never waits on tiled; a read that
    fails (no worker yet, server busy) only leaves the previous value in place.

    Parameters
    ----------
    client : tiled client container
        The catalog root the worker writes its results under.
    period_s : float
        Seconds between reads.
    """

    COLUMNS = ("seq_num", "a_A", "c_A", "c_A_2")

    def __init__(self, client, period_s: float = 1.0) -> None:
        self.client = client
        self.period_s = float(period_s)
        self.latest: dict[str, Any] | None = None
        self._uid: str | None = None
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def follow(self, uid: str) -> None:
        """Start following run ``uid`` (forgetting the previous one)."""
        self.stop()
        self._uid, self.latest = uid, None
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(uid, self._wake),
                                        name=f"live-lattice-{uid[:8]}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following and forget the values (returns at once; the thread ends after its
        current read, whose result is dropped): the next run's lines carry none of them."""
        self._wake.set()
        self._thread = None
        self._uid, self.latest = None, None

    def _loop(self, uid: str, wake: threading.Event) -> None:
        while not wake.wait(self.period_s):
            with contextlib.suppress(Exception):  # tiled down or busy, no result yet: try again
                self._read(uid)

    def _read(self, uid: str) -> None:
        node = self.client["derived"][uid]["operando_xrd"]
        columns = [c for c in self.COLUMNS if c in node.columns]
        if "c_A" not in columns:
            return
        df = node.read(columns=columns)
        if not len(df):
            return
        last = df.sort_values("seq_num").iloc[-1] if "seq_num" in df else df.iloc[-1]
        row = {k: float(last[k]) for k in columns}
        if self._uid == uid:
            self.latest = row

    def text(self) -> str:
        """``", a 2.8731 Å, c 14.2100 Å (event 12)"`` (two phases: ``c 14.44 / 13.90 Å``) or ``""``."""
        row = self.latest
        if not row or not math.isfinite(row.get("c_A", math.nan)):
            return ""
        out = f", a {row['a_A']:.4f} Å, c {row['c_A']:.4f}"
        if math.isfinite(row.get("c_A_2", math.nan)):  # two phases: both c
            out += f" / {row['c_A_2']:.4f}"
        out += " Å"
        return out + f" (event {int(row['seq_num'])})" if "seq_num" in row else out


class ProgressPrinter(DocumentRouter):
    """Print one progress line per event (every ``every`` events) and a line at the end.

    With ``lattice`` (a :class:`LiveLattice`), operando XRD lines also carry the latest
    a and c the live worker refined.
    """

    def __init__(self, stream: TextIO | None = None, every: int = 1,
                 lattice: LiveLattice | None = None) -> None:
        super().__init__()
        self.lattice = lattice
        self.out = stream or sys.stderr
        self.every = max(1, every)
        self._t0 = 0.0
        self._n = 0
        self._total: int | None = None
        self._label = ""

    def start(self, doc):
        self._t0, self._n = time.monotonic(), 0
        total = doc.get("num_points")
        # a progress line must never stop a run: odd metadata only loses the total
        ok = isinstance(total, int) and not isinstance(total, bool) and total > 0
        self._total = total if ok else None
        self._label = f"{doc.get('experiment') or doc.get('plan_name', 'run')} {str(doc.get('uid', '?'))[:8]}"
        print(f"[{self._label}] started ({self._total or '?'} points)", file=self.out, flush=True)
        if self.lattice is not None:
            if doc.get("experiment") == "operando_xrd" and isinstance(doc.get("uid"), str):
                self.lattice.follow(doc["uid"])
            else:
                self.lattice.stop()

    def event(self, doc):
        self._advance(1, doc.get("data"))

    def event_page(self, doc):
        """A fly scan's line: one progress line for its points (the last point's values)."""
        n = len(doc.get("seq_num") or ())
        data = doc.get("data")
        last = {k: v[-1] for k, v in data.items() if isinstance(v, list) and v} if isinstance(data, dict) else {}
        self._advance(n, last, force=True)

    def _advance(self, n: int, data, force: bool = False) -> None:
        self._n += n
        if n == 0 or (self._n % self.every and not force):
            return
        dt = time.monotonic() - self._t0
        rate = self._n / dt if dt > 0 else 0.0
        extra = ""
        for suffix, label, prec in (("voltage_V", "V", 3), ("capacity_mAh_g", "mAh/g", 1),
                                    ("energy", "eV", 1), ("theta", "θ", 3)):
            matches = sorted((len(k), k, v) for k, v in (data.items() if isinstance(data, dict) else ())
                             if isinstance(k, str) and k.endswith(suffix) and isinstance(v, int | float)
                             and not isinstance(v, bool))
            if matches:  # the shortest key: cycler_capacity_mAh_g before cycler_charge_capacity_...
                extra += f", {label} {matches[0][2]:.{prec}f}"
        if self.lattice is not None:
            extra += self.lattice.text()
        if self._total:
            left = (self._total - self._n) / rate if rate else float("nan")
            msg = f"{self._n}/{self._total} ({100 * self._n / self._total:.0f} %), {rate:.1f} pts/s, ~{left:.0f} s left"
        else:
            msg = f"{self._n} points, {rate:.1f} pts/s"
        print(f"[{self._label}] {msg}{extra}", file=self.out, flush=True)

    def stop(self, doc):
        if self.lattice is not None:
            self.lattice.stop()
        dt = time.monotonic() - self._t0
        print(f"[{self._label}] {doc.get('exit_status')} after {self._n} points in {dt:.1f} s",
              file=self.out, flush=True)
