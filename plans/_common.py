"""What every strainstream plan shares: beam suspenders, run metadata, the pre-flight check."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.suspenders import SuspenderBase, SuspendFloor, SuspendWhenChanged
from bluesky.utils import MsgGenerator

import strainstream
from strainstream.devices._hdf5 import DataDirError, format_bytes, writable_dir_free_bytes

__all__ = ["DataDirError", "SuspendWhenDisconnected", "base_metadata", "beam_guarded", "beam_suspenders", "cell_run", "open_shutter",
           "preflight"]

#: room the data directory must have beyond the frames themselves (HDF5 overhead, metadata)
SPACE_MARGIN = 1.2


class _PatientSuspender:
    """Mixin: a trip seen while the RunEngine's loop is busy still suspends the plan.

    bluesky's ``SuspenderBase.__call__`` (on ophyd's callback thread) gives the loop 0.1 s to
    create its asyncio event and otherwise raises "Could not create the suspender event": the
    trip is then lost (frames taken behind a closed shutter) and a traceback is printed. This
    retries for up to ``_EVENT_TRIES`` × 0.1 s, and if the event appeared only after bluesky
    gave up (its handle ran late), requests the suspension itself.
    """

    _EVENT_TRIES = 50

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        for _ in range(self._EVENT_TRIES):
            had_event = self._ev is not None
            try:
                return super().__call__(*args, **kwargs)
            except RuntimeError as exc:
                if "suspender event" not in str(exc):
                    raise
            if not had_event and self._ev is not None:  # made late: bluesky skipped the request
                self._request_late_suspend()
                return None
        raise RuntimeError(f"{type(self).__name__}: the RunEngine's loop did not answer for "
                           f"{self._EVENT_TRIES * 0.1:.0f} s; the plan could not be suspended")

    def _request_late_suspend(self) -> None:
        RE = self.RE
        if RE is None or self._ev is None or not RE.state.is_running:
            return
        RE._loop.call_soon_threadsafe(lambda: RE.request_suspend(
            self._ev.wait, pre_plan=self._pre_plan, post_plan=self._post_plan,
            justification=self._get_justification()))


class PatientSuspendFloor(_PatientSuspender, SuspendFloor):
    """``SuspendFloor`` that does not lose a trip to a busy RunEngine loop."""


class PatientSuspendWhenChanged(_PatientSuspender, SuspendWhenChanged):
    """``SuspendWhenChanged`` that does not lose a trip to a busy RunEngine loop."""


class SuspendWhenDisconnected(_PatientSuspender, SuspenderBase):
    """Suspend while the IOC serving ``signal`` does not answer; resume once it is back.

    Watches the signal's connection (ophyd ``SUB_META``), not its value: a killed or
    restarting IOC suspends the plan (the interrupted point is re-taken after the rewind),
    and pyepics' reconnection to the restarted IOC (same port) resumes it.

    Parameters
    ----------
    signal : ophyd EPICS signal
        Any PV of the IOC to watch (e.g. ``beam.ring_current_mA``).
    ioc_name : str
        For the suspension message.
    sleep : float
        Wait after the reconnection before resuming, s.
    """

    def __init__(self, signal: Any, *, ioc_name: str = "IOC", sleep: float = 1.0, **kwargs: Any) -> None:
        pv = getattr(signal, "pvname", signal.name)
        kwargs.setdefault("tripped_message", f"{ioc_name} IOC not answering ({pv} disconnected)")
        super().__init__(signal, sleep=sleep, **kwargs)

    def install(self, RE, *, event_type=None):
        super().install(RE, event_type=self._sig.SUB_META)

    def __call__(self, *args: Any, connected: bool | None = None, **kwargs: Any) -> None:
        if connected is not None:
            super().__call__(bool(connected))

    def _should_suspend(self, value: bool) -> bool:
        return not value

    def _should_resume(self, value: bool) -> bool:
        return bool(value)

    def _get_justification(self) -> str:
        return self._tripped_message if self.tripped else ""


def beam_suspenders(beam: Any, *, min_ring_current_mA: float = 50.0,
                    resume_ring_current_mA: float | None = None, sleep_s: float = 1.0) -> list:
    """Suspenders that pause a plan while the beam is not usable.

    - storage-ring current below ``min_ring_current_mA`` (resume above
      ``resume_ring_current_mA``, default 1.5× the floor, then wait ``sleep_s``);
    - photon shutter not ``Open``;
    - the beam IOC not answering (ring current and shutter unknown): resumes when it is
      back, and then also waits for the shutter, which a restarted IOC reports closed.

    Parameters
    ----------
    beam : Beam device
        Has ``ring_current_mA`` and ``shutter.status`` (see :mod:`strainstream.devices.beam`).
    """
    resume = resume_ring_current_mA if resume_ring_current_mA is not None else 1.5 * min_ring_current_mA
    out = [
        PatientSuspendFloor(beam.ring_current_mA, min_ring_current_mA, resume_thresh=resume, sleep=sleep_s,
                     tripped_message=(f"storage-ring current below {min_ring_current_mA} mA: the run "
                                      f"resumes by itself above {resume:g} mA (beam back from the "
                                      "machine); Ctrl-C then abort to stop instead")),
        PatientSuspendWhenChanged(beam.shutter.status, expected_value=getattr(beam.shutter, "open_status", "Open"), allow_resume=True,
                           sleep=sleep_s, tripped_message=(
                               "photon shutter closed: the run resumes by itself once it is open "
                               f"again (open it: {getattr(beam.shutter, 'name', 'the shutter')}"
                               ".open(), or the hutch's search and shutter permit)")),
    ]
    if hasattr(beam.ring_current_mA, "pvname"):  # an EPICS signal (mock devices have none)
        out.append(SuspendWhenDisconnected(beam.ring_current_mA, sleep=sleep_s,
                                           ioc_name=getattr(beam, "ioc_name", "beam")))
    return out


def ad_frame_shape(detector: Any) -> MsgGenerator:
    """Rows/cols of an areaDetector's frames (``cam1:ArraySizeY_RBV``/``X_RBV``; generator)."""
    rows = yield from bps.rd(detector.cam.array_size.array_size_y)
    cols = yield from bps.rd(detector.cam.array_size.array_size_x)
    return int(rows), int(cols)


def _free_bytes(where: str, path: Any) -> int:
    """Free bytes of the (created, probed) data directory; its problem named after ``where``."""
    try:
        return writable_dir_free_bytes(path)
    except DataDirError as exc:
        raise DataDirError(f"{where}: data directory {exc}") from None


def preflight(detectors: Sequence[Any], n_frames: int, *, margin: float = SPACE_MARGIN) -> MsgGenerator:
    """Refuse a run whose detectors cannot write ``n_frames`` frames; use before ``open_run``.

    For every detector with a data directory (``write_dir``): the directory must exist or be
    creatable, really accept a file (a probe file is written: permission bits are not
    trusted) and have ``n_frames × frame bytes × margin`` free. For an areaDetector the
    directory is shared with the IOC host: it is checked here as above, then set as the HDF5
    plugin's ``FilePath`` and the plugin must report it exists (``FilePathExists_RBV``).
    Nothing is emitted, so a refused plan leaves no run behind.

    Parameters
    ----------
    detectors : sequence of devices
        Devices without a data directory are skipped.
    n_frames : int
        Frames the run will write (per detector).
    margin : float
        Factor on the frame bytes (HDF5 overhead, per-frame attributes).

    Raises
    ------
    DataDirError
        ``xrd (cycler IOC): data directory /path is not writable (...)``, or ``... needs
        3.2 GB for 400 frames of 2048x2048 uint16, 0.4 GB free``.
    """
    for det in detectors:
        if not hasattr(det, "write_dir"):
            continue
        if hasattr(det, "hdf1"):  # an areaDetector: its HDF5 plugin writes the files
            where = f"{det.name} ({getattr(det, 'ioc_name', 'detector')} IOC)"
            plugin = det.hdf1
            if det.write_dir is not None:
                path = str(det.write_dir).rstrip("/") + "/"
            else:
                path = str((yield from bps.rd(plugin.file_path)))
            free = _free_bytes(where, path)  # shared directory: created and probed here
            # ... and the IOC must see it too (another host may mount it elsewhere, or not)
            yield from bps.abs_set(plugin.file_path, path, wait=True)
            exists = (yield from bps.rd(plugin.file_path_exists))
            if exists in (0, "No"):
                raise DataDirError(f"{where}: data directory {path} does not exist on the IOC host "
                                   f"({det.prefix}HDF1:FilePathExists_RBV = No)")
            shape = yield from ad_frame_shape(det)
        else:
            where, path = det.name, str(det.write_dir)
            free = _free_bytes(where, det.write_dir)
            shape = tuple(det.frame_shape)
        frame_bytes = int(np.prod(shape)) * np.dtype(det.dtype).itemsize
        need = float(n_frames) * frame_bytes * margin
        if need > free:
            raise DataDirError(
                f"{where}: data directory {str(path).rstrip('/') or '/'} needs {format_bytes(need)} for {n_frames} frames "
                f"of {'x'.join(map(str, shape))} {np.dtype(det.dtype).name}, "
                f"{format_bytes(free)} free")


def base_metadata(experiment: str, md: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """Start-document metadata common to all strainstream runs.

    ``experiment`` routes the run to its analyses (see strainstream.callbacks.router);
    ``strainstream_version`` records the software; ``fields`` and ``md`` are added (``md``
    wins, so a user can override anything but the experiment).
    """
    out: dict[str, Any] = {"strainstream_version": strainstream.__version__, **fields}
    out.update(md or {})
    out["experiment"] = experiment
    return out


def open_shutter(beam: Any) -> MsgGenerator:
    """Open the photon shutter, then read its status afresh (generator).

    Call it before the beam suspenders subscribe: a suspender's first callback gets the
    signal's cached value, which may still be the "Closed" read before the shutter opened
    (a spurious suspension, or bluesky's "Could not create the suspender event" when the
    callback thread cannot reach the busy RunEngine loop)."""
    yield from bps.mv(beam.shutter, "open")
    yield from bps.rd(beam.shutter.status)


def beam_guarded(plan: MsgGenerator, beam: Any, *, min_ring_current_mA: float = 50.0) -> MsgGenerator:
    """``plan`` (e.g. one frame) under the beam suspenders, or as it is without ``beam``.

    For runs whose beam matters only while a frame is taken (GITT: the cell's pulses and
    rests go on whatever the beam does, and a suspension there would stop the cycler
    record and stretch the pulse): a frame due while the beam is unusable waits for it."""
    if beam is None:
        return (yield from plan)
    return (yield from bpp.suspend_wrapper(plan, beam_suspenders(beam, min_ring_current_mA=min_ring_current_mA)))


_open_shutter = open_shutter  # cell_run's argument of the same name hides the function


def cell_run(body: MsgGenerator, detector: Any, cycler: Any, *, beam: Any = None,
             open_shutter: bool = True, min_ring_current_mA: float = 50.0,
             stop_cell: bool = True, suspend: bool = True) -> MsgGenerator:
    """Run ``body`` (a run on the cycler's cell) with ``detector`` staged, the cell set to rest
    whatever ends it (unless ``stop_cell`` is False: a follow-only cycler) and, with ``beam``,
    the beam suspenders over the whole run unless ``suspend`` is False (the body then guards
    its frames itself, see :func:`beam_guarded`) — the shutter opened first unless
    ``open_shutter`` is False."""
    def finish():
        if stop_cell:
            yield from bps.mv(cycler.stop_cmd, 1)  # the cell rests whatever ended the run

    plan = bpp.finalize_wrapper(bpp.stage_wrapper(body, [detector]), finish())
    if beam is not None:
        if suspend:
            plan = bpp.suspend_wrapper(plan, beam_suspenders(beam, min_ring_current_mA=min_ring_current_mA))
        if open_shutter:  # before the suspenders watch it, or the closed shutter suspends the run
            yield from _open_shutter(beam)
    return (yield from plan)
