"""Area detectors whose frames go to HDF5 files that the documents reference.

:class:`IOCAreaDetector` is an areaDetector IOC (real, or the simulated ones of
:mod:`strainstream.devices.ioc`) driven through ophyd's stock classes: the detector's HDF5
plugin writes the file, the run records a Resource and one Datum per frame
(:mod:`strainstream.asset_docs` turns them into StreamResource/StreamDatum for tiled).
Factories: :func:`ioc_detector`, :func:`sim_controls` (the simulated IOCs' extra controls).

:class:`SimFrameDetector` is an in-process simulated area detector (no IOC): on every trigger
it asks a frame source for the next image, appends it to the series' HDF5 file and emits one
StreamDatum per frame (after a StreamResource for the file), through :class:`StreamedFrames`.
The frame data never travels through Channel Access or inside event documents.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from event_model import StreamRange, compose_stream_resource
from ophyd import Component, Device, EpicsSignal, EpicsSignalRO, Signal
from ophyd.areadetector import ADComponent, AreaDetector, HDF5Plugin, SingleTrigger
from ophyd.areadetector.cam import AreaDetectorCam
from ophyd.areadetector.filestore_mixins import FileStoreHDF5IterativeWrite
from ophyd.device import Staged
from ophyd.status import DeviceStatus, Status
from ophyd.utils.errors import DisconnectedError, InvalidState

from strainstream.errors import StrainstreamError

from ._hdf5 import DATASET, DataDirError, H5FrameWriter
from ._ioc import IOCDevice, IOCNotAnswering, existing_signals, ioc_guard, mock_device, read_text

__all__ = [
    "DataDirError",
    "FrameSource",
    "IOCAreaDetector",
    "SeriesLost",
    "SimFrameDetector",
    "StreamedFrames",
    "HDF5PluginWithFileStore",
    "SimControls",
    "XRDSimControls",
    "ioc_detector",
    "sim_controls",
    "sim_frame_detector",
]

#: how long stage() re-reads a FullFileName_RBV that is not a file in FilePath (s)
FILE_NAME_SETTLE_S = 1.0
#: guards the frame bookkeeping between a trigger's completion thread and RunEngine.pause
_FRAMES_LOCK = threading.RLock()

FrameSource = Callable[[int], np.ndarray]
"""Callable returning frame number ``i`` (0-based within the series) as a 2-D array."""


class StreamedFrames:
    """Mixin: StreamResource/StreamDatum bookkeeping for frames written to one HDF5 file.

    Used by the in-process :class:`SimFrameDetector`: one StreamResource per file (emitted
    with the first frame), one StreamDatum per frame, ``describe()`` entry ``<name>_image``
    marked ``external``.

    Frames that end up in no event are cut from the file before the next frame, so event k
    stays frame k-1 for every reader (tiled included). A frame is "abandoned" when the
    RunEngine suspends or pauses (:meth:`pause`) while it is

    - being taken (trigger in flight),
    - taken but not yet read (``_pending``), or
    - read but its event not yet saved: the RunEngine caches the asset documents of an open
      event bundle and drops them on a rewind; it fills in a StreamDatum's ``descriptor``
      (in place) only when it saves the event, so a datum still without one was never
      emitted. The StreamResource of an unsaved first frame is likewise emitted again.
    """

    _bundle = None
    _pending: list[int]
    _resource_emitted = False
    _rewind_to: int | None = None
    _in_flight: int | None = None
    _generation = 0

    @property
    def image_key(self) -> str:
        return f"{self.name}_image"

    def _new_resource(self, uri: str, frame_shape: tuple[int, int]) -> None:
        self._bundle = compose_stream_resource(
            mimetype="application/x-hdf5",
            uri=uri,
            data_key=self.image_key,
            parameters={"dataset": DATASET, "chunk_shape": [1, *frame_shape], "swmr": True},
        )
        self._resource_emitted = False
        self._pending = []
        self._collected: list[tuple[int, dict]] = []
        self._rewind_to = None
        self._in_flight = None

    def _frame_written(self, index: int) -> None:
        self._pending.append(index)

    def _abandon(self, index: int) -> None:
        self._rewind_to = index if self._rewind_to is None else min(self._rewind_to, index)

    def pause(self) -> None:
        """Called by the RunEngine when it suspends or pauses: frames that belong to no saved
        event (in flight, not yet read, or read into an event the rewind drops) are cut
        from the file before the next frame; the rewind takes them again."""
        with _FRAMES_LOCK:
            self._generation += 1  # a trigger still in flight no longer counts its frame
            if self._in_flight is not None:
                self._abandon(self._in_flight)
                self._in_flight = None
            for index in self._pending:
                self._abandon(index)
            self._pending = []
        collected = getattr(self, "_collected", [])
        unsaved = [index for index, doc in collected if not doc["descriptor"]]
        for index in unsaved:
            self._abandon(index)
        self._collected = []
        if self._bundle is not None and not self._bundle.stream_resource_doc.get("run_start"):
            self._resource_emitted = False  # its first event was dropped: emit it again

    def resume(self) -> None:
        """Called by the RunEngine on resume; the re-take happens at the next trigger."""

    def _abandoned_from(self) -> int | None:
        """Index from which the file must be cut before the next frame (set by :meth:`pause`)."""
        first, self._rewind_to = self._rewind_to, None
        return first

    def _image_description(self, source: str, shape, dtype: np.dtype) -> dict:
        return {
            self.image_key: {
                "source": source,
                "shape": [int(n) for n in shape],
                "dtype": "array",
                "dtype_numpy": np.dtype(dtype).str,
                "external": "STREAM:",
            }
        }

    def collect_asset_docs(self) -> Iterator[tuple[str, dict]]:
        if self._bundle is None:
            return
        if not self._resource_emitted and self._pending:
            self._resource_emitted = True
            yield "stream_resource", self._bundle.stream_resource_doc
        # forget datums the RunEngine has saved (it set their descriptor)
        self._collected = [(i, d) for i, d in getattr(self, "_collected", []) if not d["descriptor"]]
        with _FRAMES_LOCK:
            pending, self._pending = self._pending, []
        for index in pending:
            doc = self._bundle.compose_stream_datum(
                indices=StreamRange(start=index, stop=index + 1),
                seq_nums=StreamRange(start=0, stop=0),
            )
            self._collected.append((index, doc))
            yield "stream_datum", doc


class SimFrameDetector(StreamedFrames, Device):
    """A simulated area detector writing one SWMR HDF5 file per staged series.

    Parameters
    ----------
    frame_source : callable
        ``frame_source(i) -> ndarray (rows, cols)`` gives the i-th frame of the series.
    frame_shape : (rows, cols)
        Shape of the frames.
    write_dir : path
        Directory where the files are written; it must be readable by the tiled server.
    dtype : str
        Stored dtype.
    """

    frame_count = Component(Signal, value=0, kind="normal")
    file_name = Component(Signal, value="", kind="config")
    exposure_s = Component(Signal, value=0.1, kind="config")

    def __init__(
        self,
        *,
        name: str,
        frame_source: FrameSource,
        frame_shape: tuple[int, int],
        write_dir: str | os.PathLike,
        dtype: str = "float32",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self._frame_source = frame_source
        self._frame_shape = tuple(int(n) for n in frame_shape)
        self._write_dir = Path(write_dir)
        self._dtype = np.dtype(dtype)
        self._writer: H5FrameWriter | None = None
        self._pending: list[int] = []

    @property
    def write_dir(self) -> Path:
        """Directory of the HDF5 files (this process writes them)."""
        return self._write_dir

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self._frame_shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def stage(self):
        self._writer = H5FrameWriter(
            self._write_dir / f"{self.name}_{uuid.uuid4().hex[:12]}.h5", self._frame_shape, self._dtype
        )
        self._new_resource(self._writer.uri, self._frame_shape)
        self.file_name.put(str(self._writer.path))
        self.frame_count.put(0)
        return super().stage()

    def unstage(self):
        try:
            return super().unstage()
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    def trigger(self) -> Status:
        if self._writer is None:
            raise RuntimeError(f"{self.name}: trigger() before stage(); the plan must stage the detector")
        status = Status(obj=self, timeout=None)
        try:
            abandoned = self._abandoned_from()
            if abandoned is not None:
                self._writer.rewind(abandoned)
            frame = np.asarray(self._frame_source(self._writer.count))
            index = self._writer.append(frame)
        except Exception as exc:  # reported through the status, so the RunEngine names it
            status.set_exception(exc)
            return status
        self._frame_written(index)
        self.frame_count.put(self._writer.count)
        status.set_finished()
        return status

    def describe(self) -> dict[str, dict]:
        desc = super().describe()
        desc.update(self._image_description(f"sim:{self.name}", self._frame_shape, self._dtype))
        return desc


def sim_frame_detector(
    name: str,
    write_dir: str | os.PathLike,
    frame_source: FrameSource | None = None,
    frame_shape: tuple[int, int] = (512, 512),
    seed: int = 0,
) -> SimFrameDetector:
    """Factory: a simulated area detector (default source: noisy powder rings)."""
    if frame_source is None:
        frame_source = powder_ring_source(frame_shape, seed=seed)
    return SimFrameDetector(
        name=name, frame_source=frame_source, frame_shape=frame_shape, write_dir=write_dir
    )


def powder_ring_source(frame_shape: tuple[int, int], seed: int = 0) -> FrameSource:
    """A cheap placeholder frame source: Gaussian rings whose radius drifts with frame number.

    Deterministic for a given seed and frame index (Poisson noise seeded per frame).
    """
    rows, cols = frame_shape
    r = np.hypot(*np.meshgrid(np.arange(rows) - rows / 2, np.arange(cols) - cols / 2, indexing="ij"))
    scale = min(rows, cols) / 2

    def source(i: int) -> np.ndarray:
        rng = np.random.default_rng([seed, i])
        radius = (0.30 + 0.002 * i) * scale
        lam = 50 + 400 * np.exp(-0.5 * ((r - radius) / 2.0) ** 2) + 200 * np.exp(
            -0.5 * ((r - 1.6 * radius) / 2.5) ** 2
        )
        return rng.poisson(lam).astype(np.float32)

    return source


# --------------------------------------------------------------------------- IOC-backed
class SeriesLost(StrainstreamError, RuntimeError):
    """The detector IOC lost the series file of the running acquisition (it restarted)."""


class HDF5PluginWithFileStore(HDF5Plugin, FileStoreHDF5IterativeWrite):
    """ophyd's HDF5 file plugin with its file-store mixin: one Resource (spec ``AD_HDF5``) per
    file and one Datum (``point_number``) per frame, as every ophyd beamline profile has it.

    While the detector is built its lazy signals do not wait for their PVs (the mixins touch
    some): a detector whose IOC is down can still be constructed (see
    :class:`IOCAreaDetector`)."""

    lazy_wait_for_connection = False


class DetectorCam(AreaDetectorCam):
    """ophyd's generic areaDetector driver (``cam1:``); built without waiting for the IOC."""

    lazy_wait_for_connection = False


def _force_unstaged(device) -> None:
    """Mark ``device`` and every instantiated sub-device unstaged (their settings could not be
    restored: the IOC is gone; the next stage() sets them again)."""
    if hasattr(device, "_staged"):
        device._staged = Staged.no
        device._original_vals.clear()
    for sub in getattr(device, "_signals", {}).values():
        if hasattr(sub, "_signals"):
            _force_unstaged(sub)


class IOCAreaDetector(IOCDevice, SingleTrigger, AreaDetector):
    """An areaDetector (driver ``cam1:``, HDF5 file plugin ``hdf1`` at ``HDF1:``).

    Built from ophyd's stock parts only — :class:`ophyd.areadetector.AreaDetector`,
    :class:`~ophyd.areadetector.SingleTrigger`, :class:`~ophyd.areadetector.HDF5Plugin` and
    :class:`~ophyd.areadetector.filestore_mixins.FileStoreHDF5IterativeWrite` — so it drives a
    real areaDetector IOC (PerkinElmer, Eiger, Merlin, ADSimDetector) exactly as it drives the
    simulated ones. What it adds is failure handling:

    - ``stage()`` points ``HDF1:FilePath`` at ``write_dir`` (client-side pre-flight:
      :func:`strainstream.plans._common` checks ``FilePathExists_RBV`` and free space), opens
      the file (``Capture``) and fails with the plugin's ``WriteMessage`` instead of waiting
      forever when the IOC cannot open it;
    - ``trigger()`` puts ``cam1:Acquire`` = 1 with completion (the busy record completes when
      the frame is taken and, blocking callbacks, written), then checks ``NumCaptured_RBV``:
      a frame the plugin did not write is an error, not a silent shift of every later frame;
      a disconnection or an acquisition that never ends raises
      :class:`~strainstream.devices._ioc.IOCNotAnswering`; an IOC that restarted (its
      ``FullFileName_RBV`` is no longer our file) raises :class:`SeriesLost`.

    Frames are referenced by their own Datum (``point_number`` = frame index in the file), so
    a frame taken for an event the RunEngine drops on a suspension is simply never referenced:
    no frame is cut from the file and no project-only PV is needed.
    """

    _default_read_attrs = ("hdf1",)
    lazy_wait_for_connection = False  # while building; see __init__
    cam = ADComponent(DetectorCam, "cam1:")
    hdf1 = ADComponent(HDF5PluginWithFileStore, "HDF1:", write_path_template="/")

    def __init__(self, prefix: str = "", *, name: str, dtype: str = "uint32",
                 write_dir: str | os.PathLike | None = None, acquire_timeout_s: float = 60.0,
                 **kwargs: Any) -> None:
        super().__init__(prefix, name=name, **kwargs)
        # built without waiting for PVs (the IOC may be down); from now on a lazy signal
        # touched for the first time waits for its PV, as ophyd's default has it, and
        # wait_for_connection() also waits for the ones touched while building
        parts = (self, self.cam, self.hdf1)
        self._built_signals = existing_signals(self)
        for part in parts:
            part.lazy_wait_for_connection = True
        self._dtype = np.dtype(dtype)
        self._write_dir = None if write_dir is None else Path(write_dir).resolve()
        if self._write_dir is not None:
            self.hdf1.write_path_template = str(self._write_dir) + "/"
        self._series_path: str | None = None
        self._frames_referenced = 0
        self.acquire_timeout_s = float(acquire_timeout_s)

    def _repr_info(self):
        # ophyd's repr lists the read/configuration attributes, creating every lazy signal
        # (waiting for its PV): bluesky logs each message with its object, so a log line naming
        # the detector after its IOC died raised ophyd's TimeoutError inside the RunEngine,
        # which then ended the run without its stop document. Prefix and name only.
        yield ("prefix", self.prefix)
        yield ("name", self.name)

    def wait_for_connection(self, all_signals=False, timeout=2.0):
        super().wait_for_connection(all_signals=all_signals, timeout=timeout)
        try:
            for sig in self._built_signals:
                sig.wait_for_connection(timeout=timeout)
        except TimeoutError as exc:
            raise self.ioc_error(exc) from exc

    @property
    def write_dir(self) -> Path | None:
        """Directory the IOC is told to write to (None: the plugin's own ``FilePath``)."""
        return self._write_dir

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def image_key(self) -> str:
        return self._image_name

    @property
    def file_name(self):
        """``HDF1:FullFileName_RBV``: the file being (or last) written."""
        return self.hdf1.full_file_name

    def _bound_stage_writes(self) -> None:
        # ophyd waits for a staged setting's read-back without a bound; a plugin that cannot
        # open its file never shows Capture_RBV = Capture: fail after acquire_timeout_s instead
        for dev in (self, self.cam, self.hdf1):
            for key in dev.stage_sigs:
                sig = getattr(dev, key) if isinstance(key, str) else key
                if getattr(sig, "_write_timeout", 0) is None:
                    sig._write_timeout = self.acquire_timeout_s
        for sig in (self.hdf1.capture, self.hdf1.file_path, self.hdf1.file_name,
                    self.hdf1.file_number):
            sig._write_timeout = self.acquire_timeout_s

    def stage(self):
        with ioc_guard(self):
            if self._write_dir is None:
                self.hdf1.write_path_template = read_text(self.hdf1.file_path) or "/"
            else:
                self._write_dir.mkdir(parents=True, exist_ok=True)
            self._bound_stage_writes()
            try:
                staged = super().stage()
            except (TimeoutError, OSError) as exc:
                message = self._write_message()
                if isinstance(exc, OSError) and "does not exist on IOC" in str(exc):
                    raise DataDirError(f"{self.name}: the IOC cannot see {read_text(self.hdf1.file_path)} "
                                       f"({self.prefix}HDF1:FilePathExists_RBV = No)") from exc
                if message:
                    raise DataDirError(f"{self.name}: the IOC could not open its HDF5 file: "
                                       f"{message} ({self.prefix}HDF1:WriteMessage)") from exc
                raise
            path = self._opened_file_name()
            if int(self.hdf1.capture.get(use_monitor=False)) != 1 or not path:
                message = self._write_message()
                self.unstage()
                raise DataDirError(f"{self.name}: the IOC opened no file ({self.prefix}HDF1:"
                                   f"WriteMessage: {message!r})")
        self._series_path = path
        self._frames_referenced = 0
        return staged

    def _opened_file_name(self) -> str:
        """``FullFileName_RBV`` of the file just opened, read whole. It must be a file in
        ``FilePath``: a read that gives less (a CHAR waveform cut to the length pyepics last
        saw, or a concurrent get of the same channel that pyepics merged with ours: ``'/'``
        was seen) is read again, for at most ``FILE_NAME_SETTLE_S``."""
        directory = read_text(self.hdf1.file_path)
        deadline = time.monotonic() + FILE_NAME_SETTLE_S
        while True:
            path = read_text(self.hdf1.full_file_name)
            if (path.startswith(directory) and len(path) > len(directory)) or time.monotonic() > deadline:
                return path
            time.sleep(0.01)

    def _write_message(self) -> str:
        with contextlib.suppress(Exception):
            return read_text(self.hdf1.write_message)
        return ""

    def unstage(self):
        try:
            if not self.cam.acquire.connected:  # the IOC is gone: nothing can be put back
                # (ophyd would try, and fail in its set threads with a raw TimeoutError that
                # replaces the run's own error and can keep the RunEngine from its stop document)
                raise self.ioc_error(DisconnectedError(f"{self.cam.acquire.pvname} is disconnected; "
                                                       "the detector's settings were not put back"))
            with ioc_guard(self):
                return super().unstage()
        except IOCNotAnswering:
            # the IOC died: its settings cannot be restored now; the next stage() sets them
            # all again, so a run after the IOC is back must not find us "partially staged"
            _force_unstaged(self)
            raise
        finally:
            self._series_path = None

    def trigger(self) -> DeviceStatus:
        if self._series_path is None:
            raise RuntimeError(f"{self.name}: trigger() before stage(); the plan must stage the detector")
        acquire = self.cam.acquire
        if not acquire.connected:  # the IOC is gone: fail now, named, instead of in the put
            raise self.ioc_error(DisconnectedError(f"{acquire.pvname} is disconnected"))
        self._check_series()
        status = DeviceStatus(self, timeout=self.acquire_timeout_s + 5.0)
        index = self._frames_referenced  # == the Datum's point_number
        self._frames_referenced += 1
        self.generate_datum(self._image_name, time.time(), {})

        def check():  # outside the CA callback thread: CA gets are allowed here
            try:
                n = int(self.hdf1.num_captured.get(use_monitor=False))
                if n < index + 1:
                    raise RuntimeError(
                        f"{self.name}: the IOC did not write frame {index} to {self._series_path} "
                        f"(HDF1:NumCaptured_RBV = {n}; WriteMessage {self._write_message()!r})")
            except Exception as exc:  # reported through the status
                if isinstance(exc, (TimeoutError, DisconnectedError)):
                    exc = self.ioc_error(exc)
                with contextlib.suppress(InvalidState):
                    status.set_exception(exc)
                return
            with contextlib.suppress(InvalidState):
                status.set_finished()

        def put_done(*args, **kwargs):  # the busy record completed: frame taken and written
            threading.Thread(target=check, daemon=True).start()

        def timed_out():
            if not status.done:
                with contextlib.suppress(InvalidState):
                    status.set_exception(self.ioc_error(TimeoutError(
                        f"{acquire.pvname} put did not complete within {self.acquire_timeout_s:g} s")))

        def on_meta(*, connected=None, **kwargs):  # the IOC died while we wait
            if connected is False and not status.done:
                with contextlib.suppress(InvalidState):
                    status.set_exception(self.ioc_error(DisconnectedError(
                        f"{acquire.pvname} disconnected during the acquisition")))

        timer = threading.Timer(self.acquire_timeout_s, timed_out)
        timer.daemon = True
        cid = acquire.subscribe(on_meta, event_type=acquire.SUB_META, run=False)
        status.add_callback(lambda st: (timer.cancel(), acquire.unsubscribe(cid)))
        timer.start()
        with ioc_guard(self):
            acquire.put(1, use_complete=True, callback=put_done)
        return status

    def _check_series(self) -> None:
        """Raise :class:`SeriesLost` when the IOC no longer writes our file (it restarted):
        a new frame would go to a file no Resource names."""
        with ioc_guard(self):
            path = read_text(self.hdf1.full_file_name)
            capturing = int(self.hdf1.capture.get(use_monitor=False)) == 1
        if path != self._series_path or not capturing:
            raise SeriesLost(
                f"{self.name}: the {self.ioc_name} IOC at {self.ioc_address or '?'} no longer writes "
                f"{self._series_path} (restarted? it reports {path or 'no open file'!r}"
                f"{'' if capturing else ', capture off'}); the frames recorded so far stay in "
                f"that file, but this run cannot continue in it: start a new run for the rest "
                f"(e.g. md={{'continues': <uid>}})")

    def describe(self) -> dict[str, dict]:
        desc = super().describe()
        if self._image_name not in desc:  # before the first trigger of a series
            with ioc_guard(self):
                desc[self._image_name] = self.make_data_key()
        return desc


class SimControls(IOCDevice):
    """Simulation controls of a simulated detector IOC (``<detector prefix>SIM:``); a real
    detector has none of them and no plan needs them.

    ``noise`` (1: counting noise, 0: expected counts), ``seed``; the beam gate of every
    simulated detector: ``beam_gate`` 1 makes the frames see the beam IOC's photons (none
    while the ring current is below ``beam_min_mA`` or the shutter is not Open; the put
    completes once the IOC follows the beam), ``beam_on`` 1 while photons reach the detector.
    Without photons the XRD and SXDM detectors record zeros, the TXM camera its dark current.
    """

    noise = Component(EpicsSignal, "Noise", kind="config")
    seed = Component(EpicsSignal, "Seed", kind="config")
    beam_gate = Component(EpicsSignal, "BeamGate", kind="config")
    beam_min_mA = Component(EpicsSignal, "BeamMin_mA", kind="config")
    beam_on = Component(EpicsSignalRO, "BeamOn_RBV", kind="omitted")


class XRDSimControls(SimControls):
    """``sample``: what is in the beam (``cell`` | ``CeO2``), and the beam gate of
    :class:`SimControls`."""

    sample = Component(EpicsSignal, "Sample", string=True, kind="config")


#: detector name -> (PV suffix after the beamline prefix, stored dtype, IOC name)
IOC_DETECTORS = {
    "xrd": ("XRD:", "uint16", "cycler"),
    "sxdm": ("SXDM:", "uint32", "endstation"),
    "txm": ("TXM:", "float32", "endstation"),
}


def ioc_detector(kind: str, prefix: str = "SS:", *, name: str | None = None,
                 write_dir: str | os.PathLike | None = None, ioc_address: str | None = None,
                 mock: bool = False) -> IOCAreaDetector:
    """Factory: an areaDetector of the simulated beamline; no connection is made here.

    Parameters
    ----------
    kind : {"xrd", "sxdm", "txm"}
        Operando XRD (cycler IOC), SXDM pixel detector or TXM camera (endstation IOC).
    prefix : str
        Beamline PV prefix (``SS:``); the detector's prefix is ``<prefix>XRD:`` etc. (driver
        ``<prefix>XRD:cam1:``, HDF5 plugin ``<prefix>XRD:HDF1:``).
    name : str, optional
        ophyd name (default ``kind``); the frame data key is ``<name>_image``.
    write_dir : path, optional
        Directory the IOC writes to (default: the plugin's ``FilePath``); must be readable
        by the tiled server / analysis worker.
    ioc_address : str, optional
        ``host:port`` of the serving IOC, for error messages.
    mock : bool
        A fake (no CA) device for unit tests.
    """
    if kind not in IOC_DETECTORS:
        raise ValueError(f"unknown detector kind {kind!r}; choose one of {sorted(IOC_DETECTORS)}")
    suffix, dtype, ioc_name = IOC_DETECTORS[kind]
    kw = dict(name=name or kind, dtype=dtype, write_dir=write_dir, ioc_name=ioc_name,
              ioc_address=ioc_address)
    if mock:
        return mock_device(IOCAreaDetector, prefix + suffix, **kw)
    return IOCAreaDetector(prefix + suffix, **kw)


def sim_controls(kind: str, prefix: str = "SS:", *, name: str | None = None,
                 ioc_address: str | None = None, mock: bool = False) -> SimControls:
    """Factory: the simulation controls (``<prefix>XRD:SIM:`` ...) of a simulated detector."""
    if kind not in IOC_DETECTORS:
        raise ValueError(f"unknown detector kind {kind!r}; choose one of {sorted(IOC_DETECTORS)}")
    suffix, _, ioc_name = IOC_DETECTORS[kind]
    cls = XRDSimControls if kind == "xrd" else SimControls
    kw = dict(name=name or f"{kind}_sim", ioc_name=ioc_name, ioc_address=ioc_address)
    if mock:
        return mock_device(cls, prefix + suffix + "SIM:", **kw)
    return cls(prefix + suffix + "SIM:", **kw)
