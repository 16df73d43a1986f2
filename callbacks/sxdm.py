"""SXDM: live strain and rotation maps of one particle from raster × rocking-angle frames.

One result row per frame (θ, its planned-angle index, raster indices, total and maximum
counts, optional fluorescence, flag). The frames feed a :class:`strainstream.sxdm.StrainMapper`
in whole raster lines (one ``add_frames`` call per line, frames in ``ix`` order, lines in
plan order: (θ index, iy)), so the mapper sees the same batches in the same order whether the
events come live, replayed, or partly as already-committed events after a worker restart —
the maps are bit-identical in all three. After each completed rocking angle the current maps
are published with :meth:`~strainstream.callbacks.base.AnalysisCallback.publish_arrays`
(``intensity``, ``mask``, ``d_spacing_A``, ``strain``, ``tilt_xy_deg``, ``tilt_xz_deg``,
``flags``, ``shifts_px``; NaN outside the mask) with metadata ``angles_done``,
``theta_deg_done``, ``n_angles``, ``n_frames``, ``final``, ``step_nm``, ``d_mean_A``,
``messages``, ``incomplete_lines`` (``[itheta, iy, frames]`` of every raster line mapped with
fewer than ``nx`` frames: a fly line cut short, a point never taken); the final maps and the particle statistics (the summary) at the stop document.

Resume: a restarted worker is fed the run's events again; events already committed produce
no new row, but :meth:`SXDMCallback.restore` puts their frames (if their row was not flagged)
into the raster lines exactly as the first pass did.

Start-document metadata used (written by :func:`strainstream.plans.sxdm.sxdm_map`): the
geometry keys of :data:`strainstream.sxdm.GEOMETRY_KEYS`, ``theta_deg`` (planned angles),
``raster`` (``nx``, ``ny``, ``step_nm``, ``x_center_um``, ``y_center_um``) and ``sxdm_keys``
(event keys of θ, the raster indices and the frames). Without the index keys the indices are
computed from the sample positions (see :mod:`strainstream.plans.sxdm`).
Optional ``analysis_parameters.sxdm``: ``threshold_counts``, ``mask_fraction``,
``min_counts``, ``register``, ``d_ref_A``, ``background``, ``border_px``,
``detect_hot_pixels``, ``theta_tolerance_deg`` (default 1e-3).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from strainstream.errors import StrainstreamError
from strainstream.rundesc import SXDMKeys

from .base import AnalysisCallback, RunDocumentError, _single_thread, checked_number

__all__ = ["MAP_KEYS", "SXDMCallback"]

logger = logging.getLogger(__name__)

#: arrays published after each rocking angle (each (ny, nx) but ``shifts_px`` (n_theta, 2))
MAP_KEYS = ("intensity", "mask", "d_spacing_A", "strain", "tilt_xy_deg", "tilt_xz_deg")
_EXTRA_KEYS = ("flags", "shifts_px")
#: incomplete raster lines buffered before the oldest one goes to the mapper as it is
MAX_PENDING_LINES = 4
_MAPPER_PARAMS = ("threshold_counts", "mask_fraction", "min_counts", "register", "d_ref_A",
                  "background", "border_px", "detect_hot_pixels", "hot_factor",
                  "theta_edge_fraction", "border_fraction", "registration_reference")
_STAT_KEYS = ("d_mean_A", "strain_std", "strain_range", "tilt_xy_std_deg", "tilt_xz_std_deg",
              "strain_tilt_correlation", "n_pixels")


def _as_float(value: Any) -> float:
    """A number from event data as float; NaN for anything else (None, strings, lists, bools)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return math.nan
    return float(value)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


class _EventError(StrainstreamError, ValueError):
    """An event that cannot go into the maps; ``reason`` is the row's flag."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SXDMCallback(AnalysisCallback):
    """Progressive SXDM strain/rotation maps; one row per frame, maps per rocking angle."""

    name = "sxdm"
    version = "1"
    columns = {
        "theta_deg": "float64",
        "itheta": "int64",
        "iy": "int64",
        "ix": "int64",
        "total_counts": "float64",
        "max_counts": "float64",
        "fluorescence": "float64",
    }

    # ------------------------------------------------------------------ set-up
    def on_start(self, doc) -> None:
        from strainstream.sxdm import GEOMETRY_KEYS, StrainMapper, SXDMGeometry

        missing = [k for k in GEOMETRY_KEYS if k not in doc]
        if missing:
            raise ValueError(f"run {doc['uid']} lacks SXDM geometry metadata {missing} in its start "
                             "document; record it with the run (strainstream.plans.sxdm.sxdm_map does)")
        uid = doc["uid"]
        raster = doc.get("raster") or {}
        if not isinstance(raster, dict) or "ny" not in raster or "nx" not in raster:
            raise RunDocumentError(f"run {uid}: start document needs 'raster' with nx, ny (the plan's "
                                   f"raster), got {raster!r}")
        self.ny = checked_number(raster["ny"], f"run {uid}: raster.ny", integer=True, minimum=1)
        self.nx = checked_number(raster["nx"], f"run {uid}: raster.nx", integer=True, minimum=1)
        for key in ("x_center_um", "y_center_um"):  # used when events lack raster indices
            checked_number(raster.get(key), f"run {uid}: raster.{key}", allow_none=True)
        try:
            theta = np.asarray(doc["theta_deg"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise RunDocumentError(f"run {uid}: start document needs the planned 'theta_deg' list of "
                                   f"angles ({_one_line(exc)})") from None
        if theta.ndim != 1 or theta.size == 0 or not np.all(np.isfinite(theta)):
            raise RunDocumentError(f"run {uid}: 'theta_deg' must be a non-empty list of angles")
        self.theta_planned = theta
        self.raster = dict(raster)
        self.step_nm = checked_number(doc["step_nm"], f"run {uid}: step_nm", positive=True)
        try:
            self.keys = SXDMKeys.from_start(doc).to_start()
        except ValueError as exc:
            raise RunDocumentError(f"run {uid}: {exc}") from None
        if self.keys["frames"]:
            self.frame_keys = (self.keys["frames"],)
        p = self.parameters
        self.theta_tol = self.param_number("theta_tolerance_deg", 1e-3, minimum=0.0)
        kwargs = {k: p[k] for k in _MAPPER_PARAMS if k in p}
        self.geometry = SXDMGeometry.from_metadata({k: doc[k] for k in GEOMETRY_KEYS})
        self.mapper = StrainMapper(self.geometry, (self.ny, self.nx), theta_deg=theta,
                                   theta_tolerance_deg=self.theta_tol, **kwargs)
        # line (itheta, iy) -> {ix: frame or None}; lines go to the mapper in plan order
        self._lines: dict[tuple[int, int], dict[int, np.ndarray | None]] = {}
        self._new_in_angle: set[int] = set()
        self._next_line = 0  # flat index itheta * ny + iy of the next line to add
        self._line_item: tuple | None = None
        self._frame_shape: tuple[int, ...] | None = None
        self.angles_done = 0
        self.incomplete_lines: list[list[int]] = []  # [itheta, iy, frames] of lines mapped short
        self.final_maps = None
        self._final_error = ""

    # ------------------------------------------------------------------ documents
    def stop(self, doc):
        self.release_held()
        self.flush()
        with _single_thread():
            self._add_lines(final=True)
            self._publish(final=True)
        super().stop(doc)

    # ------------------------------------------------------------------ per event
    def _locate(self, data: dict[str, Any]) -> tuple[int, int, int] | None:
        """(itheta, iy, ix) the plan meant for an event (recorded indices, else from θ and the
        positions); None when it cannot be told or lies outside the plan."""
        k = self.keys
        if not isinstance(data, dict):
            return None
        try:
            if k["itheta"] in data:
                it = int(data[k["itheta"]])
            else:
                it = int(np.argmin(np.abs(self.theta_planned - float(data[k["theta"]]))))
            if k["iy"] in data and k["ix"] in data:
                iy, ix = int(data[k["iy"]]), int(data[k["ix"]])
            else:  # from the positions (raster definition of the plan)
                step_um = self.step_nm / 1000.0
                ix = round((float(data[k["x"]]) - self.raster["x_center_um"]) / step_um + (self.nx - 1) / 2)
                iy = round((float(data[k["y"]]) - self.raster["y_center_um"]) / step_um + (self.ny - 1) / 2)
        except (KeyError, TypeError, ValueError, OverflowError):
            return None
        if 0 <= it < self.theta_planned.size and 0 <= iy < self.ny and 0 <= ix < self.nx:
            return it, iy, ix
        return None

    def _indices(self, data: dict[str, Any]) -> tuple[int, int, int]:
        """(itheta, iy, ix) of a usable event; raises _EventError (the row's flag) otherwise."""
        loc = self._locate(data)
        if loc is None:
            raise _EventError("outside_raster", "the event's raster point / rocking angle is not part of "
                              f"the planned {self.theta_planned.size}×{self.ny}×{self.nx} scan (or not recorded)")
        theta = _as_float(data.get(self.keys["theta"]))
        if not math.isfinite(theta):
            raise _EventError("no_theta", f"event has no rocking angle {self.keys['theta']!r}")
        if abs(self.theta_planned[loc[0]] - theta) > self.theta_tol:
            raise _EventError("theta_off_plan", f"θ = {theta:.6f} deg is not the planned angle "
                              f"{loc[0]} ({self.theta_planned[loc[0]]:.6f} deg, tolerance {self.theta_tol} deg)")
        return loc

    def analyse(self, event, frames) -> dict[str, Any]:
        data = event["data"]
        row: dict[str, Any] = {}
        fl = self.keys["fluorescence"]
        if fl and data.get(fl) is not None:
            row["fluorescence"] = _as_float(data[fl])
        row["theta_deg"] = _as_float(data.get(self.keys["theta"]))
        loc = self._locate(data)
        if loc is not None:
            row.update(itheta=loc[0], iy=loc[1], ix=loc[2])
        it, iy, ix = self._indices(data)
        if not frames:
            raise _EventError("no_frame", "the event has no detector frame (no STREAM: data key)")
        (frame,) = frames.values()
        frame = np.asarray(frame)
        if frame.ndim != 2:
            raise _EventError("bad_frame", f"frame has shape {frame.shape}, expected (rows, cols)")
        if self._frame_shape is None:
            self._frame_shape = frame.shape  # the first frame in seq order (every pass alike)
        if frame.shape != self._frame_shape:
            raise _EventError("bad_frame", f"frame shape {frame.shape} differs from the run's "
                              f"{self._frame_shape}")
        total = frame.sum(dtype=np.float64)
        row.update(total_counts=total, max_counts=float(frame.max()))
        if not math.isfinite(total):
            raise _EventError("nonfinite", "the frame holds non-finite values")
        self._line_item = (it, iy, ix, frame)
        return row

    def _process(self, event: dict) -> None:
        self._line_item = None
        try:
            super()._process(event)
        finally:  # even if committing the row failed: the frame was analysed, as in a replay
            self._register(event)

    def _register(self, event: dict) -> None:
        item, self._line_item = self._line_item, None
        if item is None:  # flagged: the frame stays out of the maps, the line still completes
            loc = self._locate(event.get("data"))
            if loc is None:
                return
            item = (*loc, None)
        self._new_in_angle.add(item[0])
        self._to_line(*item)

    def restore(self, event: dict, row: dict[str, Any]) -> None:
        """A committed event: its frame (none if its row was flagged) into its raster line."""
        loc = self._locate(event.get("data"))
        if loc is None:
            return
        frames = None if row.get("flag") else self.committed_frames(int(event["seq_num"]))
        frame = None
        if frames is not None and len(frames) == 1:
            (frame,) = frames.values()
            if self._frame_shape is None:
                self._frame_shape = np.shape(frame)
        self._to_line(*loc, frame)

    # ------------------------------------------------------------------ lines, maps
    def _to_line(self, it: int, iy: int, ix: int, frame: np.ndarray | None) -> None:
        if it * self.ny + iy < self._next_line:  # e.g. a repeated point after its line went in
            logger.warning("sxdm: frame for (θ %d, iy %d, ix %d) came after its raster line was "
                           "mapped; left out", it, iy, ix)
            return
        self._lines.setdefault((it, iy), {}).setdefault(ix, frame)
        with _single_thread():
            self._add_lines(final=False)

    def _add_lines(self, final: bool) -> None:
        """Hand complete lines (all lines left when ``final``) to the mapper, in plan order."""
        n_lines = self.theta_planned.size * self.ny
        while self._next_line < n_lines:
            it, iy = divmod(self._next_line, self.ny)
            line = self._lines.get((it, iy), {})
            # a line missing an event that never comes (not locatable) must not hold all later
            # frames in memory: it goes in incomplete once MAX_PENDING_LINES later lines wait
            if len(line) < self.nx and not final and len(self._lines) <= MAX_PENDING_LINES:
                return
            if 0 < len(line) < self.nx:
                logger.warning("sxdm: raster line (θ %d, iy %d) mapped with %d of %d frames",
                               it, iy, len(line), self.nx)
                self.incomplete_lines.append([int(it), int(iy), len(line)])
            self._lines.pop((it, iy), None)
            ixs = sorted(i for i, f in line.items() if f is not None)
            if ixs:
                frames = np.stack([line[i] for i in ixs])
                try:
                    self.mapper.add_frames(np.full(len(ixs), self.theta_planned[it]),
                                           np.full(len(ixs), iy), np.asarray(ixs), frames)
                except ValueError as exc:  # e.g. a frame shape the mapper refuses
                    logger.warning("sxdm: raster line (θ %d, iy %d) left out of the maps: %s", it, iy, exc)
            self._next_line += 1
            if iy == self.ny - 1:
                self.angles_done = it + 1
                if not final and it in self._new_in_angle:
                    self._publish(final=False)

    def _publish(self, final: bool) -> None:
        from strainstream.sxdm import SXDMError

        try:
            maps = self.mapper.maps()
        except SXDMError as exc:
            self._final_error = str(exc)
            return
        arrays = {k: getattr(maps, k) for k in MAP_KEYS + _EXTRA_KEYS}
        done = self.theta_planned[: self.angles_done]
        meta = {"angles_done": int(self.angles_done), "n_angles": int(self.theta_planned.size),
                "theta_deg_done": [float(t) for t in done], "n_frames": int(maps.n_frames),
                "final": bool(final), "step_nm": self.step_nm, "d_mean_A": maps.d_mean_A,
                "n_pixels": int(maps.mask.sum()), "messages": list(maps.messages),
                "incomplete_lines": [list(x) for x in self.incomplete_lines]}
        self.publish_arrays(arrays, meta)
        if final:
            self.final_maps = maps

    def summary(self) -> dict[str, Any]:
        from strainstream.sxdm import SXDMError, compute_statistics

        good = sum(1 for r in self.rows if not r["flag"])  # rows committed by this pass
        out: dict[str, Any] = {k: math.nan for k in _STAT_KEYS}
        out["n_pixels"] = 0
        maps = self.final_maps
        message = self._final_error
        out["strain_tilt_xz_correlation"] = math.nan
        if maps is not None:
            try:
                st = compute_statistics(maps)
                out.update(st.to_dict(), strain_tilt_xz_correlation=st.strain_tilt_xz_correlation)
            except SXDMError as exc:
                message = str(exc)
            message = message or "; ".join(maps.messages)
        out.update(n_frames=int(maps.n_frames) if maps is not None else 0,
                   frames_flagged=len(self.rows) - good,
                   angles_done=int(self.angles_done), n_angles=int(self.theta_planned.size),
                   lines_incomplete=len(self.incomplete_lines), step_nm=self.step_nm, message=message)
        return out
