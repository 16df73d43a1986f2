"""What the dashboard reads from tiled: the run list, the new rows of a results table, the
maps, a pixel's rocking curve and a voxel's spectrum.

Everything here blocks (HTTP to tiled) and runs in a worker thread of the page, never on the
Bokeh server's loop. The readers reuse the CLI's and the figures' code: the run list is
``strainstream runs``' :func:`~strainstream.cli.runs.run_summary`, the results tables are the
sink's (:mod:`strainstream.callbacks.sinks`), the (003) window is
:func:`strainstream.callbacks.xrd.i003_matrix`, dQ/dV is :func:`strainstream.electrochem.dqdv`
and the spectra are normalised with :func:`strainstream.xanes.edge_normalise`.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["ArraysFollower", "TableFollower", "analyses_of", "list_runs", "pixel_rocking_curve",
           "voxel_spectrum"]


def _base(node):
    return getattr(node, "base", node)


#: backstop reads in a row that found rows the subscription had not pushed, after which the
#: subscription is made anew: a tiled restart resets the memory streaming cache's sequence
#: numbers, so tiled's own reconnect (resuming after the last number it saw) stays silent
#: until the new numbers catch up; a reconnect that failed leaves no subscription thread
STALE_AFTER = 2

#: start-document keys kept in a run's line (``line["start"]``) for the protocol panels: the
#: rate series a run belongs to and its rate, the GITT particle radius and pulse current
START_KEYS = ("sample", "rate_mA_g", "series", "series_index", "series_rates_mA_g", "particle_radius_um",
              "current_mA_g")

#: seconds a finished run's line of the run list is reused before it is read again
SETTLED_S = 30.0
_SETTLED = ("complete", "failed", "aborted")


def list_runs(root, cache: dict[str, tuple[float, dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """Every run of the catalog, newest first, as ``strainstream runs --json`` lists them
    (``uid``, ``time``, ``experiment``, ``material``, ``status``, ``events_recorded``,
    ``events_analysed``, ``analyses``) and ``start``: the :data:`START_KEYS` of its start document.

    ``cache`` (uid → (monotonic time, line)), kept by the caller, spares most requests for
    runs whose run and analyses all finished: their line is read again every
    :data:`SETTLED_S` s only, or at once when an analysis appears (one request a run).
    """
    import time

    from strainstream.cli.runs import run_summary

    now = time.monotonic()
    out = []
    for uid in reversed([k for k in root if k != "derived"]):
        if cache is not None and uid in cache and now - cache[uid][0] < SETTLED_S \
                and sorted(analyses_of(root, uid)) == sorted(cache[uid][1]["analyses"]):  # no new analysis
            out.append(cache[uid][1])
            continue
        try:
            start = (root[uid].metadata or {}).get("start")
            if not start:
                continue
            line = run_summary(root, uid)
        except KeyError:  # deleted meanwhile
            continue
        line["start"] = {k: start[k] for k in START_KEYS if k in start}
        out.append(line)
        settled = line["status"] in _SETTLED and line["analyses"] and all(
            a.get("status") in _SETTLED for a in line["analyses"].values())
        if cache is not None:
            if settled:
                cache[uid] = (now, line)
            else:
                cache.pop(uid, None)
    return out


def analyses_of(root, uid: str) -> list[str]:
    """Names of the results tables of run ``uid`` (no ``_arrays`` boxes)."""
    from strainstream.callbacks.sinks import ARRAYS_SUFFIX, DERIVED

    try:
        node = _base(root[DERIVED][uid])
    except KeyError:
        return []
    return [k for k in node if not k.endswith(ARRAYS_SUFFIX)]


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    return v


class TableFollower:
    """The rows of ``derived/<uid>/<analysis>`` not handed out yet, in ``seq_num`` order.

    Two ways in, both deduplicated on ``seq_num`` (a retried append's duplicate, or a row
    that came both ways, is handed out once):

    - :meth:`subscribe`: tiled's websocket subscription of the table (the project's
      streaming path, as :mod:`strainstream.callbacks.tiled_source` follows the raw runs):
      appended rows arrive within tens of ms and go to ``on_rows`` from tiled's thread;
    - :meth:`new_rows`: read the table (one request) — the first fill and the safety net
      for whatever a subscription missed (tiled restarted, cache evicted). When it finds
      unpushed rows :data:`STALE_AFTER` times in a row, :attr:`stale` says to subscribe again.
    """

    def __init__(self, root, uid: str, analysis: str) -> None:
        self.root, self.uid, self.analysis = root, uid, analysis
        self.node = None
        self.seen: set[int] = set()
        self.metadata: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._sub = None
        self._handler = None
        self.missed = 0

    def _node(self):
        from strainstream.callbacks.sinks import DERIVED

        if self.node is None:
            self.node = _base(self.root[DERIVED][self.uid])[self.analysis]
        return self.node

    def _take(self, df) -> dict[str, list]:
        """The rows of ``df`` not handed out yet, as columns."""
        if df is None or not len(df):
            return {}
        df = df.drop_duplicates("seq_num").sort_values("seq_num")
        with self._lock:
            df = df[~df["seq_num"].isin(self.seen)]
            self.seen.update(int(s) for s in df["seq_num"])
        if not len(df):
            return {}
        return {c: [_clean(v) for v in df[c].tolist()] for c in df.columns}

    def new_rows(self) -> dict[str, list]:
        """Columns of the new rows (empty dict when there are none or the table is not there yet)."""
        try:
            node = self._node()
        except KeyError:
            return {}
        try:
            df = node.read()
        except Exception as exc:  # no partition yet, or a 4xx for a table being created
            if "404" in str(exc) or "partition" in str(exc).lower():
                return {}
            raise
        rows = self._take(df)
        if self._sub is not None:
            self.missed = self.missed + 1 if rows else 0
        return rows

    @property
    def subscribed(self) -> bool:
        return self._sub is not None

    @property
    def stale(self) -> bool:
        """The subscription missed rows :data:`STALE_AFTER` reads in a row, or its thread died:
        close it and subscribe again."""
        if self._sub is None:
            return False
        thread = getattr(self._sub, "_thread", None)  # tiled's receiving thread
        # it dies when tiled is down as it reconnects (an httpx error tiled does not retry)
        return self.missed >= STALE_AFTER or (thread is not None and not thread.is_alive())

    def subscribe(self, on_rows: Callable[[dict[str, list]], None]) -> bool:
        """Follow the table's appends over tiled's websocket; ``on_rows(columns)`` gets the new
        rows (from tiled's thread). False when the table does not exist yet."""
        try:
            node = self._node()
        except KeyError:
            return False
        follower = self

        class _Handler:  # a strong object: tiled holds callbacks by weak reference
            def __call__(self, update) -> None:
                try:
                    rows = follower._take(update.data())
                except Exception:  # a malformed update: the next read fills it in
                    logger.debug("table update of %s not decoded", follower.uid, exc_info=True)
                    return
                if rows:
                    on_rows(rows)

        sub = node.subscribe()
        self._handler = _Handler()
        sub.new_data.add_callback(self._handler)
        # tiled's start_in_thread waits, without a timeout, until the websocket is connected
        # (forever when its thread died on the way): wait in a thread of our own instead
        threading.Thread(target=sub.start_in_thread, args=(0,), daemon=True,
                         name=f"dashboard-subscribe-{self.uid[:8]}").start()
        self._sub, self.missed = sub, 0
        return True

    def close(self) -> None:
        """Drop the subscription."""
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                sub.disconnect(wait=False)
            except Exception:  # already closed by the server
                logger.debug("disconnect failed", exc_info=True)

    def refresh_metadata(self) -> dict[str, Any]:
        """The table's metadata (status, summary), read again."""
        try:
            node = self._node()
            node.refresh()
            self.metadata = dict(node.metadata)
        except KeyError:
            pass
        return self.metadata


class ArraysFollower:
    """The maps of ``derived/<uid>/<analysis>_arrays``, read again only when their metadata
    changed (the worker rewrites them after each rocking angle / energy)."""

    def __init__(self, root, uid: str, analysis: str) -> None:
        self.root, self.uid, self.analysis = root, uid, analysis
        self.box = None
        self.last: dict[str, Any] | None = None

    def poll(self) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """``(arrays, metadata)`` when they changed since the last call, else None."""
        from strainstream.callbacks.sinks import ARRAYS_SUFFIX, DERIVED

        if self.box is None:
            try:
                self.box = _base(_base(self.root[DERIVED][self.uid])[f"{self.analysis}{ARRAYS_SUFFIX}"])
            except KeyError:
                return None
        else:
            self.box.refresh()
        md = dict(self.box.metadata)
        if md == self.last:
            return None
        arrays = {k: np.asarray(self.box[k].read()) for k in self.box}
        self.last = md
        return arrays, md


def _frames_node(run, key: str | None):
    """``(data key, node)``: the raw frames array of a run's primary stream (``key``, else the
    first 3-D array)."""
    primary = _base(run["primary"])
    if key and key in primary:
        return key, primary[key]
    for k in primary:
        if k == "internal":
            continue
        node = primary[k]
        if len(getattr(node, "shape", ())) == 3:
            return k, node
    raise KeyError("no detector frames in the run's primary stream")


def pixel_rocking_curve(root, uid: str, iy: int, ix: int, rows: dict[str, list]) -> dict[str, list]:
    """Rocking curve of raster point ``(iy, ix)``: summed detector counts against θ.

    Each event's frame is found as the analyses find it (``ExternalFrames``: the StreamDatums
    the data source recorded; a fly map's frames come in one range per raster line), and read
    from the detector file when it is on this filesystem, else through tiled.

    Parameters
    ----------
    rows : dict of lists
        The ``sxdm`` results columns drawn so far (``seq_num``, ``theta_deg``, ``iy``, ``ix``):
        they say which events (frames) belong to the pixel.

    Returns
    -------
    dict
        ``theta_deg`` (deg, sorted) and ``counts`` (detector counts summed over the frame).
    """
    from strainstream.callbacks.tiled_format import ExternalFrames

    seq = np.asarray(rows.get("seq_num", []), dtype=np.int64)
    theta = np.asarray(rows.get("theta_deg", []), dtype=float)
    pick = (np.asarray(rows.get("iy", []), dtype=np.int64) == iy) & (np.asarray(rows.get("ix", []), dtype=np.int64) == ix)
    if not pick.any():
        return {"theta_deg": [], "counts": []}
    run = root[uid]
    start = run.metadata.get("start") or {}
    key, node = _frames_node(run, (start.get("sxdm_keys") or {}).get("frames"))
    frames = ExternalFrames(node, key)
    order = np.argsort(theta[pick], kind="stable")
    counts = [float(np.nansum(frames.read(int(s)), dtype=np.float64)) for s in seq[pick][order]]
    return {"theta_deg": theta[pick][order].tolist(), "counts": counts}


def voxel_spectrum(root, uid: str, iy: int, ix: int, rows: dict[str, list],
                   whiteline_eV: float | None = None) -> dict[str, Any]:
    """Normalised XANES spectrum of voxel ``(iy, ix)`` from the raw sample/flat/dark frames.

    Parameters
    ----------
    rows : dict of lists
        The ``txm_xanes`` results columns (``seq_num``, ``role``, ``energy_eV``, ``flag``).
    whiteline_eV : float, optional
        The fitted white-line energy of the voxel (from the map), eV; returned as is.

    Returns
    -------
    dict
        ``energy_eV``, ``mu`` (edge-normalised absorbance), ``whiteline_eV`` and ``mu_wl``
        (the normalised absorbance interpolated at the white line, for the marker).
    """
    from strainstream.callbacks.tiled_format import ExternalFrames
    from strainstream.xanes import absorbance_from_counts, edge_normalise

    seq = np.asarray(rows.get("seq_num", []), dtype=np.int64)
    role = np.asarray(rows.get("role", []), dtype=object)
    energy = np.asarray(rows.get("energy_eV", []), dtype=float)
    flags = rows.get("flag") or [""] * seq.size
    ok = np.array([not f for f in flags], dtype=bool) if len(flags) == seq.size else np.ones(seq.size, bool)
    run = root[uid]
    start = run.metadata.get("start") or {}
    key, node = _frames_node(run, (start.get("txm_keys") or {}).get("frames"))
    frames = ExternalFrames(node, key)  # which row of the node is which event's frame
    column = np.asarray(frames.node[:, int(iy), int(ix)], dtype=float)  # one request: every frame's voxel

    def value(s: int) -> float:
        ref = frames.ref(int(s))
        return float(column[ref.node_index]) if ref is not None and ref.node_index < column.size else math.nan

    darks = [value(s) for s, r, k in zip(seq, role, ok, strict=True) if r == "dark" and k]
    dark = float(np.nanmean(darks)) if darks else 0.0
    energies, sample, flat = [], [], []
    for e in np.unique(energy[np.isfinite(energy)]):
        at = ok & (energy == e)
        s = [value(q) for q in seq[at & (role == "sample")]]
        f = [value(q) for q in seq[at & (role == "flat")]]
        if s and f:
            energies.append(float(e))
            sample.append(np.nanmean(s))
            flat.append(np.nanmean(f))
    out: dict[str, Any] = {"energy_eV": energies, "mu": [], "whiteline_eV": whiteline_eV, "mu_wl": None}
    if len(energies) < 4:
        return out
    mu = absorbance_from_counts(np.array(sample)[:, None, None], np.array(flat)[:, None, None],
                                np.full((1, 1), dark))[:, 0, 0]
    try:
        mu = edge_normalise(np.array(energies), mu[:, None]).normalised[:, 0]
    except Exception:  # too few energies for the edge windows: raw absorbance
        pass
    out["mu"] = [float(v) for v in mu]
    if whiteline_eV is not None and math.isfinite(whiteline_eV):
        out["mu_wl"] = float(np.interp(whiteline_eV, energies, mu))
    return out
