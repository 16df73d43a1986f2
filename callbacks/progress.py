"""Console progress for runs: points done out of points expected, rate and time left."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from event_model import DocumentRouter

__all__ = ["ProgressPrinter"]


class ProgressPrinter(DocumentRouter):
    """Print one progress line per event (every ``every`` events) and a line at the end."""

    def __init__(self, stream: TextIO | None = None, every: int = 1) -> None:
        super().__init__()
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

    def event(self, doc):
        self._n += 1
        if self._n % self.every:
            return
        dt = time.monotonic() - self._t0
        rate = self._n / dt if dt > 0 else 0.0
        extra = ""
        for suffix, label, prec in (("voltage_V", "V", 3), ("capacity_mAh_g", "mAh/g", 1),
                                    ("energy", "eV", 1), ("theta", "θ", 3)):
            data = doc.get("data")
            matches = sorted((len(k), k, v) for k, v in (data.items() if isinstance(data, dict) else ())
                             if isinstance(k, str) and k.endswith(suffix) and isinstance(v, int | float)
                             and not isinstance(v, bool))
            if matches:  # the shortest key: cycler_capacity_mAh_g before cycler_charge_capacity_...
                extra += f", {label} {matches[0][2]:.{prec}f}"
        if self._total:
            left = (self._total - self._n) / rate if rate else float("nan")
            msg = f"{self._n}/{self._total} ({100 * self._n / self._total:.0f} %), {rate:.1f} pts/s, ~{left:.0f} s left"
        else:
            msg = f"{self._n} points, {rate:.1f} pts/s"
        print(f"[{self._label}] {msg}{extra}", file=self.out, flush=True)

    def stop(self, doc):
        dt = time.monotonic() - self._t0
        print(f"[{self._label}] {doc.get('exit_status')} after {self._n} points in {dt:.1f} s",
              file=self.out, flush=True)
