"""Fly scanning with a stock areaDetector: one raster line = one triggered series of frames.

:class:`FlyLine` is a bluesky *flyer* (``kickoff``/``complete``/``collect``) made of the
detector (:class:`~strainstream.devices.detectors.IOCAreaDetector`, ophyd's stock
areaDetector classes) and the motor the line runs along (ophyd's ``EpicsMotor``). For each line
the plan calls :meth:`FlyLine.prepare` (where the line starts and ends, how many frames, the
event rows), then

- ``kickoff``: arms the detector (``cam1:Acquire`` = 1 with ``TriggerMode`` External and
  ``NumImages`` frames; the put completes when the series is written), waits until it reports
  armed (``DetectorState_RBV`` Acquire), then starts the motor's move: the motion controller's
  output triggers the series (on a real beamline: its position-compare / trajectory output
  wired to the detector's trigger input, set up by the beamline profile);
- ``complete``: done when the move has ended and the detector's put has completed; then
  ``HDF1:NumCaptured_RBV`` must have grown by the line's frames (a frame the plugin did not
  write fails the line, naming the file and the counts);
- ``collect``: one ``stream_resource`` per file and one ``stream_datum`` per line (the frame
  range), one ``event_page`` per line (the rows given to :meth:`prepare`: indices,
  positions). The frames never travel through Channel Access or inside documents.

The detector settings (``TriggerMode``, ``NumImages``, ``AcquirePeriod``, ``AcquireTime``) and
the motor's ``VELO`` are set by the plan (``strainstream.plans.sxdm.sxdm_fly_map``), which
puts them back when it ends.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from event_model import compose_stream_resource
from ophyd.status import Status
from ophyd.utils.errors import DisconnectedError

from strainstream.errors import StrainstreamError

from ._ioc import ioc_guard

__all__ = ["FlyLine", "FlyLineError"]

#: time the detector has to report armed after the Acquire put (s)
ARM_TIMEOUT_S = 10.0
#: longest wait for a turnaround move given to :meth:`FlyLine.prepare` (s)
TURNAROUND_TIMEOUT_S = 60.0


class FlyLineError(StrainstreamError, RuntimeError):
    """A fly line that did not record all its frames (detector, file or motor)."""


class FlyLine:
    """A bluesky flyer: one raster line of ``n`` frames per kickoff/complete/collect.

    Parameters
    ----------
    detector : IOCAreaDetector
        The area detector (staged by the plan: its HDF5 file open).
    motor : EpicsMotor
        The motor the line runs along.
    row_keys : mapping
        ``{key: dtype}`` ("number" or "integer") of the event rows given to :meth:`prepare`.
    name : str
        Name of the flyer (``object_name`` of its data keys).
    """

    def __init__(self, detector: Any, motor: Any, row_keys: Mapping[str, str], *,
                 name: str = "fly") -> None:
        self.detector = detector
        self.motor = motor
        self.name = name
        self.parent = None
        self.row_keys = dict(row_keys)
        self._line: dict[str, Any] | None = None
        self._complete: Status | None = None
        self._resource = None  # (series path, ComposeStreamResource bundle)
        self._collected: list[tuple[int, int, dict[str, list]]] = []  # (start, stop, rows)
        self._lock = threading.Lock()
        self._shape: list[int] | None = None  # frame rows, cols
        self._pages: list[tuple[int, int, dict[str, list]]] = []  # lines collect_pages emits next

    # ------------------------------------------------------------------ set-up
    def prepare(self, *, stop: float, n: int, rows: Mapping[str, Sequence[Any]],
                period_s: float = 0.0, start_after: Sequence[Any] = ()) -> None:
        """Define the next line: the motor moves to ``stop`` while the detector takes ``n``
        frames ``period_s`` apart; ``rows`` are the ``n`` event rows (``{key: n values}``, keys
        of ``row_keys``). ``start_after``: statuses of moves still under way (the turnaround of
        another axis, e.g. the raster's next row) that must end before the line's motion
        starts; the detector is armed meanwhile. A failed one fails the line before its motion
        (nothing is recorded for it)."""
        if n < 1:
            raise ValueError(f"{self.name}: a line needs at least one frame, got {n}")
        missing = set(self.row_keys) - set(rows)
        if missing:
            raise ValueError(f"{self.name}: rows lack {sorted(missing)}")
        bad = {k: len(v) for k, v in rows.items() if len(v) != n}
        if bad:
            raise ValueError(f"{self.name}: every row key needs {n} values, got {bad}")
        self._line = {"stop": float(stop), "n": int(n), "period_s": float(period_s),
                      "rows": {k: list(rows[k]) for k in self.row_keys}, "after": tuple(start_after)}

    # ------------------------------------------------------------------ flyer
    def kickoff(self) -> Status:
        """Arm the detector, then start the line's move (in a thread: CA puts wait)."""
        line = self._line
        if line is None:
            raise RuntimeError(f"{self.name}: kickoff() before prepare()")
        det = self.detector
        if det._series_path is None:
            raise RuntimeError(f"{self.name}: the detector is not staged (no HDF5 file open)")
        kicked, done = Status(obj=self), Status(obj=self)
        self._complete = done
        state: dict[str, Any] = {}

        once = threading.Lock()

        def finish_when_both():  # called by both completions; the second one finishes
            with once:
                if not (state.get("acquired") and state.get("moved")) or state.get("checked"):
                    return
                state["checked"] = True
            try:
                self._check_written(line, state)
            except Exception as exc:  # frames missing: those written are recorded
                if not done.done:
                    done.set_exception(exc)
                return
            if not done.done:
                done.set_finished()

        def fail(exc: BaseException) -> None:  # before the move started: both fail
            for st in (kicked, done):
                if not st.done:
                    st.set_exception(exc)

        def fail_line(exc: BaseException) -> None:  # the line itself
            with once:
                if done.done or state.get("checked"):
                    return
                state["checked"] = True
            self._keep_partial(line, state)  # the frames that reached the file stay recorded
            done.set_exception(exc)

        def on_captured(value=None, **kwargs):  # HDF1:NumCaptured_RBV monitor
            if value is not None:
                state["captured"] = max(int(value), state.get("captured", 0))

        def on_meta(*, connected=None, **kwargs):  # the IOC died during the line
            if connected is False and not done.done:
                fail_line(det.ioc_error(DisconnectedError(
                    f"{det.cam.acquire.pvname} disconnected during the fly line")))

        def timed_out():
            fail_line(det.ioc_error(TimeoutError(
                f"{self.name}: the line of {line['n']} frames did not end within {limit:.0f} s")))

        limit = line["n"] * line["period_s"] + det.acquire_timeout_s
        timer = threading.Timer(limit, timed_out)
        timer.daemon = True
        acquire, captured = det.cam.acquire, det.hdf1.num_captured
        subs = [(acquire, acquire.subscribe(on_meta, event_type=acquire.SUB_META, run=False)),
                (captured, captured.subscribe(on_captured, run=False))]
        done.add_callback(lambda st: (timer.cancel(), [sig.unsubscribe(cid) for sig, cid in subs]))

        def acquired(*args, **kwargs):
            state["acquired"] = True
            threading.Thread(target=lambda: _guarded(finish_when_both, fail_line), daemon=True).start()

        def moved(status):
            if status.success:
                state["moved"] = True
                threading.Thread(target=lambda: _guarded(finish_when_both, fail_line), daemon=True).start()
            else:
                fail_line(FlyLineError(f"{self.name}: the {self.motor.name} move of the line failed: "
                                  f"{status.exception()}"))

        def run():
            # the Resource (and any Datum) ophyd's file-store mixin made at stage: the frames of
            # a fly line are described by this flyer's StreamResource/StreamDatum, and left in
            # the detector's cache they would come out of the next step scan's collect
            for _ in det.collect_asset_docs():
                pass
            with ioc_guard(det):
                state["first"] = int(det.hdf1.num_captured.get(use_monitor=False))
                state["captured"] = max(state["first"], state.get("captured", 0))
                det._check_series()
                det.cam.acquire.put(1, use_complete=True, callback=acquired)
                t_end = time.monotonic() + ARM_TIMEOUT_S
                while det.cam.detector_state.get(use_monitor=False, as_string=True) != "Acquire":
                    if time.monotonic() > t_end:
                        raise FlyLineError(f"{det.name}: not armed {ARM_TIMEOUT_S:g} s after "
                                           f"{det.cam.acquire.pvname} = 1 (DetectorState_RBV "
                                           f"{det.cam.detector_state.get(as_string=True)!r})")
                    time.sleep(0.002)
            for status in line["after"]:  # the turnaround (armed meanwhile)
                try:
                    status.wait(TURNAROUND_TIMEOUT_S)
                except Exception as exc:
                    try:  # disarmed: no later motion of the line's motor may trigger it
                        det.cam.acquire.put(0)
                    except Exception:  # (its IOC may be what failed)
                        pass
                    raise FlyLineError(f"{self.name}: the move before the line failed, the line was "
                                       f"not started ({status!r}): {exc!r}") from exc
            self.motor.set(line["stop"]).add_callback(moved)
            timer.start()
            kicked.set_finished()

        threading.Thread(target=lambda: _guarded(run, fail), daemon=True,
                         name=f"{self.name}-kickoff").start()
        return kicked

    def complete(self) -> Status:
        if self._complete is None:
            raise RuntimeError(f"{self.name}: complete() before kickoff()")
        return self._complete

    def _keep_partial(self, line: dict[str, Any], state: dict[str, Any]) -> None:
        """A line that failed (IOC died, frames missing): record the frames that reached the
        file, the first ones of the line: as many as the file holds when it is readable here
        (a frame written just before the IOC died may not have reached ``NumCaptured_RBV``),
        else as many as ``NumCaptured_RBV``'s last update said."""
        first = state.get("first")
        if first is not None:
            written = max(int(state.get("captured", first)), _frames_in_file(self.detector._series_path))
            self._record(line, first, written)

    def _check_written(self, line: dict[str, Any], state: dict[str, Any]) -> None:
        """Record the line's frames; raise :class:`FlyLineError` if the plugin's count says
        some did not reach the file (those that did are recorded all the same)."""
        det, first = self.detector, state["first"]
        with ioc_guard(det):
            n_file = int(det.hdf1.num_captured.get(use_monitor=False))
        if n_file >= first + line["n"]:
            self._record(line, first, n_file)
        else:
            state["captured"] = max(int(state.get("captured", first)), n_file)
            self._keep_partial(line, state)
            raise FlyLineError(
                f"{det.name}: the line wrote {n_file - first} of its {line['n']} frames to "
                f"{det._series_path} (HDF1:NumCaptured_RBV {n_file}; WriteMessage "
                f"{det._write_message()!r})")

    def _record(self, line: dict[str, Any], first: int, written: int) -> None:
        """Queue for collect the line's first ``written - first`` frames (all ``n`` at most)
        with their rows; the line is then done."""
        k = min(written - first, line["n"])
        if k > 0:
            rows = line["rows"] if k == line["n"] else {key: v[:k] for key, v in line["rows"].items()}
            with self._lock:
                self._collected.append((first, first + k, rows))
        self._line = None

    # ------------------------------------------------------------------ documents
    def describe_collect(self) -> dict[str, dict]:
        det = self.detector
        self._shape = None
        rows, cols = self._frame_shape()
        keys: dict[str, dict] = {
            det.image_key: {"source": f"PV:{det.prefix}HDF1:FullFileName_RBV", "dtype": "array",
                            "shape": [rows, cols], "dtype_numpy": det.dtype.str,
                            "external": "STREAM:"},
        }
        for key, kind in self.row_keys.items():
            keys[key] = {"source": f"{self.name}:{key}", "dtype": kind, "shape": [],
                         "dtype_numpy": "<i8" if kind == "integer" else "<f8"}
        return keys

    def collect_asset_docs(self) -> Iterator[tuple[str, dict]]:
        det = self.detector
        with self._lock:
            lines, self._collected = self._collected, []
        self._pages = lines
        path = det._series_path
        for start, stop, _ in lines:
            if self._resource is None or self._resource[0] != path:
                bundle = compose_stream_resource(
                    mimetype="application/x-hdf5", uri=f"file://localhost{path}",
                    data_key=det.image_key,
                    parameters={"dataset": "/entry/data/data", "swmr": True,
                                "chunk_shape": [1, *self._frame_shape()]})
                self._resource = (path, bundle)
                yield "stream_resource", bundle.stream_resource_doc
            yield "stream_datum", self._resource[1].compose_stream_datum(
                indices={"start": start, "stop": stop})

    def collect_pages(self) -> Iterator[dict]:
        lines, self._pages = self._pages, []
        for _, _, rows in lines:
            n = len(next(iter(rows.values())))
            now = time.time()
            yield {"data": {k: [_plain(v) for v in vals] for k, vals in rows.items()},
                   "timestamps": {k: [now] * n for k in rows}}

    def _frame_shape(self) -> list[int]:
        if self._shape is None:  # (read by describe_collect: a dead IOC is not asked again)
            det = self.detector
            with ioc_guard(det):
                self._shape = [int(det.cam.array_size.array_size_y.get()),
                               int(det.cam.array_size.array_size_x.get())]
        return self._shape


def _frames_in_file(path: str | None, dataset: str = "/entry/data/data") -> int:
    """Frames in the detector's HDF5 file, when it is readable from here; else 0."""
    if not path or not os.path.isfile(path):
        return 0
    try:
        import h5py

        with h5py.File(path, "r", swmr=True, locking=False) as f:
            return int(f[dataset].shape[0])
    except (OSError, KeyError, ValueError):
        return 0


def _plain(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _guarded(fn, fail) -> None:
    try:
        fn()
    except Exception as exc:  # reported through the statuses, never lost in a thread
        fail(exc)
