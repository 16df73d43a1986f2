"""A beamtime folder (detector images + a potentiostat log) as one operando XRD run.

:func:`folder_run` turns a folder of detector frames (TIFF, EDF, CBF through fabio; HDF5
through h5py) and, optionally, the potentiostat's log into the bluesky documents of one run
equivalent to what the ``operando_xrd`` plan records (:mod:`strainstream.plans.xrd`):

* start: ``experiment="operando_xrd"``, ``calibration`` (the geometry dict, with
  ``wavelength_A``), ``wavelength_A``, ``material``, ``mass_mg``, ``detectors=["xrd"]``,
  ``cycler_control="log"``, and ``imported_from`` (what was read and how);
* one ``primary`` descriptor: ``xrd_image`` (external ``STREAM:``, the frame shape and
  dtype), ``xrd_frame_file`` (the source file, relative to the folder), and with a log
  ``cycler_voltage_V``, ``cycler_current_mA``, ``cycler_capacity_mAh`` or/and
  ``cycler_capacity_mAh_g``, ``cycler_current_mA_g`` (with a mass), ``cycler_time_s``,
  ``cycler_in_range`` — the cycler keys the XRD analysis finds by suffix
  (:class:`strainstream.callbacks.xrd.OperandoXRDCallback`);
* one StreamResource (``application/x-hdf5``, ``dataset``/``chunk_shape``/``swmr``
  parameters as our detectors write) for ONE HDF5 stack under ``out_dir`` into which the
  frames are copied in time order (``/entry/data/data``, one chunk per frame), and one
  StreamDatum + one event per frame (event ``time`` = the frame's time);
* stop (``reason`` notes frames outside the log).

The run uid is deterministic (uuid5 of the frame files' names, sizes and modification
times, of the log's, and of the options), so a folder imported twice gives the same uid,
the same documents and the same stack file (reused when complete).
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from strainstream.errors import StrainstreamError

from .cyclerlog import CyclerLog, parse_timestamp, read_cycler_log

__all__ = ["FolderImportError", "folder_run", "frame_time"]

#: where the frames are in our stack files, as our detectors write them (devices/_hdf5.py)
DATASET = "/entry/data/data"
DETECTOR = "xrd"
IMAGE_KEY = f"{DETECTOR}_image"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://strainstream/archives/folder")
_H5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".nx5")
_EPICS_EPOCH_S = 631152000.0  # 1990-01-01 UTC: areaDetector's NDArrayEpicsTSSec origin
_PILATUS_DATE = re.compile(r"^#\s*(\d{4}[-/][0-9A-Za-z]{2,3}[-/]\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?)\s*$",
                           re.MULTILINE)


class FolderImportError(StrainstreamError, ValueError):
    """A beamtime folder cannot be imported; the message names the file and what to do.

    ``path`` is the file (or folder) concerned.
    """

    def __init__(self, path: str | os.PathLike, message: str) -> None:
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


# ----------------------------------------------------------------------------------------------
# frames and their times
# ----------------------------------------------------------------------------------------------
def _fabio_header_time(header: dict[str, Any], timezone: str | None,
                       unreadable: list[str]) -> tuple[float, str] | None:
    """(epoch s, key) from a fabio header: EDF ``time_of_day``/``time``/``date``, TIFF
    ``date`` (tag 306 DateTime), Pilatus CBF ``_array_data.header_contents`` date line.
    Keys present whose value is no date/time are appended to ``unreadable``."""
    contents = header.get("_array_data.header_contents")
    if isinstance(contents, str):
        m = _PILATUS_DATE.search(contents)
        if m:
            return parse_timestamp(m.group(1), timezone), "CBF header date line"
    tod = header.get("time_of_day")
    if tod is not None:
        try:
            value = float(str(tod).split()[0])
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value > 1e8:  # LImA: epoch seconds
            return value, "time_of_day"
    for key in ("time", "date", "DateTime"):
        text = header.get(key)
        if isinstance(text, str) and text.strip():
            try:
                return parse_timestamp(text, timezone), key
            except ValueError:
                unreadable.append(f"{key}={text.strip()!r}")
    return None


def _h5_dataset(f, path: Path):
    import h5py

    ds = f.get(DATASET)
    if isinstance(ds, h5py.Dataset):
        return ds
    found: list[h5py.Dataset] = []
    f.visititems(lambda name, obj: found.append(obj) if isinstance(obj, h5py.Dataset)
                 and obj.ndim in (2, 3) and min(obj.shape[-2:]) >= 8 else None)
    if len(found) != 1:
        raise FolderImportError(path, f"no {DATASET} and {len(found)} other 2-D/3-D datasets "
                                f"({', '.join(d.name for d in found[:5])}): cannot tell which holds "
                                "the frames; export them as one frame stack at /entry/data/data")
    return found[0]


def _h5_times(f, n: int, timezone: str | None) -> tuple[list[float], str] | None:
    import h5py

    sec = f.get("/entry/instrument/NDAttributes/NDArrayEpicsTSSec")
    nsec = f.get("/entry/instrument/NDAttributes/NDArrayEpicsTSnSec")
    if isinstance(sec, h5py.Dataset) and isinstance(nsec, h5py.Dataset) and sec.shape == nsec.shape == (n,):
        t = sec[()].astype(float) + 1e-9 * nsec[()].astype(float) + _EPICS_EPOCH_S
        return t.tolist(), "NDArrayEpicsTSSec/NDArrayEpicsTSnSec"
    start = f.get("/entry/start_time")
    if n == 1 and start is not None:
        value = start[()] if isinstance(start, h5py.Dataset) else start
        if isinstance(value, bytes | np.bytes_):
            value = value.decode()
        if isinstance(value, np.ndarray) and value.size == 1:
            value = value.item()
            value = value.decode() if isinstance(value, bytes) else value
        return [parse_timestamp(str(value), timezone)], "/entry/start_time"
    return None


def _read_file(path: Path, time_source: str, timezone: str | None) -> Iterator[tuple[np.ndarray, float, str]]:
    """The frames of one file with their times, one at a time: (frame, epoch s, how the time
    was read). The times (and the frame count) are checked before the first frame is read."""
    st = path.stat()
    times: list[float] | None = None
    unreadable: list[str] = []
    how = ""

    def check_times(n: int) -> list[float]:
        if time_source == "mtime":
            if n > 1:
                raise FolderImportError(path, f"holds {n} frames and one modification time: use "
                                        "time_source='header' (per-frame NDArrayEpicsTSSec/TSnSec)")
            return [st.st_mtime]
        if times is None:
            bad = f"; not a date/time: {', '.join(unreadable)}" if unreadable else ""
            raise FolderImportError(path, "has no time in its header (read: TIFF DateTime tag, EDF "
                                    "time_of_day/time/date, Pilatus CBF date line, HDF5 "
                                    f"NDArrayEpicsTSSec+TSnSec or /entry/start_time{bad}); use "
                                    "time_source='mtime' (the file modification time)")
        return times

    def checked(frame: np.ndarray) -> np.ndarray:
        if frame.ndim != 2:
            raise FolderImportError(path, f"holds an image of shape {frame.shape}, not a 2-D frame")
        if frame.dtype.kind not in "uif":
            raise FolderImportError(path, f"holds {frame.dtype} pixels, not detector counts")
        return frame

    try:
        if path.suffix.lower() in _H5_SUFFIXES:
            import h5py

            with h5py.File(path, "r", locking=False) as f:
                ds = _h5_dataset(f, path)
                n = 1 if ds.ndim == 2 else int(ds.shape[0])
                if time_source == "header":
                    found = _h5_times(f, n, timezone)
                    times, how = found if found is not None else (None, "")
                ts = check_times(n)
                how = "mtime" if time_source == "mtime" else how
                for i in range(n):  # one frame in memory at a time
                    yield checked(ds[()] if ds.ndim == 2 else ds[i]), float(ts[i]), how
        else:
            import fabio

            img = fabio.open(str(path))
            if getattr(img, "nframes", 1) > 1:
                raise FolderImportError(path, f"holds {img.nframes} frames; one frame per TIFF/EDF/CBF "
                                        "file is read (or give an HDF5 stack)")
            if time_source == "header":
                found = _fabio_header_time(dict(img.header), timezone, unreadable)
                if found is not None:
                    times, how = [found[0]], found[1]
            ts = check_times(1)
            yield checked(np.asarray(img.data)), float(ts[0]), "mtime" if time_source == "mtime" else how
    except FolderImportError:
        raise
    except Exception as exc:  # fabio/h5py raise many types for damaged or foreign files
        raise FolderImportError(path, f"cannot be read as a detector image ({type(exc).__name__}: "
                                f"{exc}); remove it or narrow the frames pattern") from None


def frame_time(path: str | os.PathLike, time_source: str = "header", timezone: str | None = None) -> float:
    """Time (epoch s) of a single-frame detector file: its header's, or its modification time.

    Header keys read: TIFF ``DateTime`` (tag 306: ``YYYY:MM:DD hh:mm:ss`` or fabio's ctime
    form), EDF ``time_of_day`` (epoch s, LImA), ``time``, ``date``; Pilatus CBF
    ``# 2026-01-15T10:00:05.123`` line of ``_array_data.header_contents``; HDF5
    ``/entry/instrument/NDAttributes/NDArrayEpicsTSSec`` + ``TSnSec`` (areaDetector, EPICS
    epoch) or NeXus ``/entry/start_time``. Naive times are in ``timezone`` (default local).

    Raises
    ------
    FolderImportError
        Unreadable file, or no time in its header (naming the keys tried).
    """
    return next(_read_file(Path(path), time_source, timezone))[1]


# ----------------------------------------------------------------------------------------------
# the stack
# ----------------------------------------------------------------------------------------------
def _new_stack(path: Path, shape: tuple[int, int], dtype: np.dtype, n: int):
    import h5py

    f = h5py.File(path, "w", libver="latest", locking=False)
    f.create_dataset(DATASET, shape=(n, *shape), maxshape=(None, *shape), chunks=(1, *shape), dtype=dtype)
    return f


def _stack_complete(path: Path, n: int, shape: tuple[int, int], dtype: np.dtype, uid: str) -> bool:
    import h5py

    try:
        with h5py.File(path, "r", locking=False) as f:
            ds = f.get(DATASET)
            return (isinstance(ds, h5py.Dataset) and ds.shape == (n, *shape) and ds.dtype == dtype
                    and f.attrs.get("strainstream_run_uid") == uid)
    except OSError:
        return False


@dataclass(frozen=True)
class _Entry:
    file: Path
    index: int  # frame within the file
    time: float
    how: str


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------
def _file_identity(path: Path, base: Path | None = None) -> list[Any]:
    st = path.stat()
    name = path.relative_to(base).as_posix() if base is not None else path.name
    return [name, int(st.st_size), int(st.st_mtime_ns)]


def _check_geometry(geometry: dict[str, Any], shape: tuple[int, int], first: Path) -> dict[str, Any]:
    from strainstream.xrd import validate_geometry

    if not isinstance(geometry, dict) or "wavelength_A" not in geometry:
        raise FolderImportError(first.parent, "the geometry must be a dict with wavelength_A (read "
                                "a PONI file with strainstream.xrd.load_poni; --poni FILE / --wavelength)")
    calibration = dict(geometry)
    if calibration.get("shape") is None:
        calibration["shape"] = list(shape)
    elif [int(n) for n in calibration["shape"]] != list(shape):
        raise FolderImportError(first, f"frames are {shape[0]}×{shape[1]} pixels and the geometry "
                                f"(PONI) is for a {calibration['shape'][0]}×{calibration['shape'][1]} "
                                "detector: give the PONI of these (binned/cropped) frames")
    try:
        validate_geometry(calibration)
    except ValueError as exc:
        raise FolderImportError(first.parent, f"geometry unusable: {exc}") from None
    return calibration


def folder_run(
    folder: str | os.PathLike,
    *,
    frames_glob: str,
    geometry: dict[str, Any],
    out_dir: str | os.PathLike,
    cycler_log: str | os.PathLike | CyclerLog | None = None,
    columns: dict[str, str] | None = None,
    time_source: str = "header",
    material: str | None = None,
    mass_mg: float | None = None,
    md: dict[str, Any] | None = None,
    cycler_start: str | float | None = None,
    timezone: str | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The documents of one operando XRD run built from a beamtime folder.

    Every frame file is read, checked and copied into the stack before this function
    returns: a bad file raises here, before any document exists (nothing half-written).
    The returned iterator then yields ``start``, ``descriptor``, ``stream_resource``, per
    frame ``stream_datum`` + ``event`` (seq_num 1..n in time order), ``stop``; every
    document is validated against event-model's schemas.

    Parameters
    ----------
    folder : path
        The beamtime folder.
    frames_glob : str
        Pattern of the frame files relative to ``folder`` (``"*.tif"``, ``"scan1/*.cbf"``).
        TIFF/EDF/CBF (one frame per file, through fabio) or HDF5 (``/entry/data/data``, or
        the file's only 2-D/3-D dataset; a 3-D stack gives one frame per index).
    geometry : dict
        Detector geometry with ``wavelength_A`` (e.g. :func:`strainstream.xrd.load_poni`
        of a pyFAI PONI file); ``shape`` is filled from the frames when missing and must
        equal theirs otherwise. Recorded as the run's ``calibration``.
    out_dir : path
        Directory of the stack file ``folder-<uid>.h5`` (created; an existing complete
        stack of the same run is reused, not rewritten).
    cycler_log : path or CyclerLog, optional
        The potentiostat log (:func:`strainstream.archives.cyclerlog.read_cycler_log`:
        ``.mpr``, ``.mpt``, CSV). Without it the events carry the frames only.
    columns : dict, optional
        Column map of the log (``{"voltage": "Ewe-Ece/V", "datetime": "Timestamp"}``).
    time_source : {"header", "mtime"}
        Frame times from the file header (keys: :func:`frame_time`) or the file's
        modification time. Frames are sorted by time (ties keep the file-name order).
    material : str, optional
        Cathode material, recorded in the start document.
    mass_mg : float, optional
        Active mass (mg): the log's capacity (mA·h) and current become mAh/g and mA/g.
    md : dict, optional
        Extra start-document metadata (wins over the defaults, except ``experiment``;
        ``uid`` and ``time`` are refused).
    cycler_start : str or float, optional
        Absolute time of the log's cell time 0 (``start`` of ``read_cycler_log``).
    timezone : str, optional
        IANA zone of naive header times (frames and log); default this machine's zone.

    Returns
    -------
    iterator of (name, doc)

    Raises
    ------
    FolderImportError
        No file matches; a file unreadable, without a header time (``time_source="header"``),
        of another shape or an incompatible dtype than the first frame (the file is named);
        geometry without wavelength or of another detector shape; an existing stack file
        that is not this run's.
    CyclerLogRangeError
        No frame time falls inside the log's time range (frames partially outside are
        flagged instead: NaN readings, ``cycler_in_range`` False, counted in the start
        document's ``imported_from.frames_outside_log`` and the stop's ``reason``).
    PotentiostatFileError
        The log cannot be read (see :func:`~strainstream.archives.cyclerlog.read_cycler_log`).
    ValueError
        Bad ``time_source``, ``mass_mg`` or ``md``.
    """
    import event_model

    folder = Path(folder).resolve()
    if time_source not in ("header", "mtime"):
        raise ValueError(f"time_source must be 'header' or 'mtime', got {time_source!r}")
    if mass_mg is not None and not (isinstance(mass_mg, int | float) and math.isfinite(mass_mg) and mass_mg > 0):
        raise ValueError(f"mass_mg must be the positive active mass in mg, got {mass_mg!r}")
    md = dict(md or {})
    reserved = sorted({"uid", "time"} & set(md))
    if reserved:
        raise ValueError(f"md must not set {reserved}: the run's uid and time come from the folder")
    if not folder.is_dir():
        raise FolderImportError(folder, "is not a folder")
    files = sorted(p for p in folder.glob(frames_glob) if p.is_file())
    if not files:
        present = sorted(p.name for p in folder.iterdir())[:8]
        raise FolderImportError(folder, f"no file matches {frames_glob!r} (the folder holds "
                                f"{', '.join(present) or 'nothing'}{' ...' if len(present) == 8 else ''})")

    # the log first: a missing column is reported before the frames are copied
    log: CyclerLog | None
    log_path: Path | None = None
    if cycler_log is None:
        log = None
    elif isinstance(cycler_log, CyclerLog):
        log, log_path = cycler_log, Path(cycler_log.path)
    else:
        log_path = Path(cycler_log)
        log = read_cycler_log(log_path, columns=columns, start=cycler_start, mass_mg=mass_mg,
                              timezone=timezone)
    mass = float(mass_mg) if mass_mg is not None else (log.mass_mg if log is not None else None)

    ident = {
        "frames": [_file_identity(p, folder) for p in files], "frames_glob": frames_glob,
        "geometry": geometry, "cycler_log": _file_identity(log_path) if log_path is not None else None,
        "columns": columns, "cycler_start": cycler_start, "time_source": time_source,
        "timezone": timezone, "material": material, "mass_mg": mass, "md": md,
    }
    uid = str(uuid.uuid5(_NAMESPACE, json.dumps(ident, sort_keys=True, default=str)))
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stack_path = out / f"folder-{uid}.h5"

    checked: dict[str, Any] = {}

    def check_geometry(shape: tuple[int, int], first: Path) -> None:  # before anything is written
        checked["calibration"] = _check_geometry(geometry, shape, first)

    entries, shape, dtype = _copy_frames(files, stack_path, uid, time_source, timezone, check_geometry)
    calibration = checked["calibration"]
    times = np.array([e.time for e in entries])
    readings = log.at(times) if log is not None else None  # CyclerLogRangeError if none overlap
    n_out = int((~readings["in_range"]).sum()) if readings is not None else 0

    imported = {
        "kind": "beamtime_folder", "folder": str(folder), "frames_glob": frames_glob,
        "n_frames": len(entries), "time_source": time_source,
        "time_keys": sorted({e.how for e in entries}), "timezone": timezone,
        "stack": str(stack_path),
        "cycler_log": str(log_path) if log_path is not None else None,
        "cycler_log_format": log.format if log is not None else None,
        "cycler_columns": dict(log.columns) if log is not None else None,
        "cycler_start_from": log.start_from if log is not None else None,
        "frames_outside_log": n_out,
    }
    interval = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
    start_md: dict[str, Any] = {
        "strainstream_version": _version(),
        "material": material, "mass_mg": mass, "cycler_control": "log",
        "frame_interval_s": interval, "max_frames": len(entries),
        "wavelength_A": calibration["wavelength_A"], "calibration": calibration,
        "detectors": [DETECTOR], "motors": [], "plan_name": "folder_run", "num_points": len(entries),
        "hints": {"dimensions": [[["time"], "primary"]]},
        "imported_from": imported,
        **md,
        "experiment": "operando_xrd",
    }
    return _documents(event_model, uid, start_md, entries, folder, stack_path, shape, dtype, log, log_path,
                      readings, mass, n_out)


def _version() -> str:
    import strainstream

    return str(strainstream.__version__)


def _copy_frames(files: list[Path], stack_path: Path, uid: str, time_source: str, timezone: str | None,
                 on_first: Any) -> tuple[list[_Entry], tuple[int, int], np.dtype]:
    """Read every frame (file-name order), copy it to a part file, sort by time, publish the
    stack atomically (``os.replace``); reuse an existing complete stack of the same run.
    ``on_first(shape, path)`` checks the first frame before anything is written."""
    part = stack_path.with_name(f".{stack_path.name}.part-{os.getpid()}")
    entries: list[_Entry] = []
    shape: tuple[int, int] | None = None
    dtype: np.dtype | None = None
    first: Path | None = None
    f = None
    reuse = stack_path.exists()
    try:
        for path in files:
            for k, (frame, t, how) in enumerate(_read_file(path, time_source, timezone)):
                if shape is None:
                    shape, dtype, first = tuple(frame.shape), frame.dtype, path
                    on_first(shape, path)
                    if not reuse:
                        f = _new_stack(part, shape, dtype, 0)
                elif tuple(frame.shape) != shape:
                    raise FolderImportError(path, f"frame of shape {frame.shape[0]}×{frame.shape[1]}, "
                                            f"the first ({first.name}) is {shape[0]}×{shape[1]}: all "
                                            "frames of a run must have one shape (narrow the pattern)")
                elif frame.dtype != dtype and not np.can_cast(frame.dtype, dtype, "safe"):
                    raise FolderImportError(path, f"{frame.dtype} pixels, the first frame "
                                            f"({first.name}) has {dtype}: convert them to one type")
                entries.append(_Entry(path, k, t, how))
                if f is not None:
                    ds = f[DATASET]
                    ds.resize(len(entries), axis=0)
                    ds[len(entries) - 1] = frame
        assert shape is not None and dtype is not None
        order = sorted(range(len(entries)), key=lambda i: entries[i].time)  # stable: ties by name
        if reuse:
            if not _stack_complete(stack_path, len(entries), shape, dtype, uid):
                raise FolderImportError(stack_path, "exists and is not this run's complete frame stack "
                                        "(an older import with other files?): remove it and import again")
        else:
            if order != list(range(len(entries))):  # rewrite in time order
                f.close()
                f = None
                src_part = part.with_name(part.name + "-names")
                os.replace(part, src_part)
                import h5py

                with h5py.File(src_part, "r", locking=False) as src, _new_stack(part, shape, dtype,
                                                                                 len(entries)) as dst:
                    for j, i in enumerate(order):
                        dst[DATASET][j] = src[DATASET][i]
                    dst.attrs["strainstream_run_uid"] = uid
                src_part.unlink()
            else:
                f.attrs["strainstream_run_uid"] = uid
                f.close()
                f = None
            os.replace(part, stack_path)
    finally:
        if f is not None:
            f.close()
        for p in (part, part.with_name(part.name + "-names")):
            if p.exists():
                p.unlink()
    return [entries[i] for i in order], shape, dtype


def _documents(event_model, uid, start_md, entries, folder, stack_path, shape, dtype, log, log_path,
               readings, mass, n_out) -> Iterator[tuple[str, dict[str, Any]]]:
    t0 = entries[0].time
    bundle = event_model.compose_run(uid=uid, time=t0, metadata=start_md)
    yield "start", dict(bundle.start_doc)

    def number(source: str) -> dict[str, Any]:
        return {"source": source, "dtype": "number", "shape": [], "units": ""}

    data_keys: dict[str, dict[str, Any]] = {
        IMAGE_KEY: {"source": f"FILE:{folder}", "dtype": "array", "dtype_numpy": np.dtype(dtype).str,
                    "shape": [int(n) for n in shape], "external": "STREAM:"},
        f"{DETECTOR}_frame_file": {"source": f"FILE:{folder}", "dtype": "string", "shape": []},
    }
    series: dict[str, np.ndarray] = {}
    if readings is not None:
        src = f"FILE:{log_path}"
        series["cycler_voltage_V"] = readings["voltage_V"]
        series["cycler_current_mA"] = readings["current_mA"]
        if mass is not None:
            series["cycler_current_mA_g"] = readings["current_mA"] * 1000.0 / mass
        if "capacity_mAh" in readings:
            series["cycler_capacity_mAh"] = readings["capacity_mAh"]
        if "capacity_mAh_g" in readings:
            series["cycler_capacity_mAh_g"] = readings["capacity_mAh_g"]
        series["cycler_time_s"] = readings["time_s"]
        for key in series:
            data_keys[key] = number(src)
        data_keys["cycler_in_range"] = {"source": src, "dtype": "boolean", "shape": []}
    object_keys = {DETECTOR: [IMAGE_KEY, f"{DETECTOR}_frame_file"]}
    hints = {DETECTOR: {"fields": [IMAGE_KEY]}}
    if readings is not None:
        object_keys["cycler"] = [*series, "cycler_in_range"]
        hints["cycler"] = {"fields": [k for k in ("cycler_voltage_V", "cycler_capacity_mAh_g") if k in series]}
    configuration = {}
    if mass is not None:
        configuration["cycler"] = {"data": {"cycler_mass_mg": mass}, "timestamps": {"cycler_mass_mg": t0},
                                   "data_keys": {"cycler_mass_mg": number("ARG:mass_mg")}}
    desc = bundle.compose_descriptor(name="primary", data_keys=data_keys, hints=hints, object_keys=object_keys,
                                     configuration=configuration, time=t0,
                                     uid=str(uuid.uuid5(uuid.UUID(uid), "descriptor/primary")))
    yield "descriptor", dict(desc.descriptor_doc)
    res = bundle.compose_stream_resource(
        mimetype="application/x-hdf5", uri=f"file://localhost{stack_path}", data_key=IMAGE_KEY,
        parameters={"dataset": DATASET, "chunk_shape": [1, *map(int, shape)], "swmr": True},
        uid=str(uuid.uuid5(uuid.UUID(uid), "stream_resource/" + IMAGE_KEY)))
    yield "stream_resource", dict(res.stream_resource_doc)
    for k, e in enumerate(entries):
        seq = k + 1
        datum = res.compose_stream_datum(indices=event_model.StreamRange(start=k, stop=k + 1),
                                         seq_nums=event_model.StreamRange(start=seq, stop=seq + 1),
                                         descriptor=desc.descriptor_doc)
        yield "stream_datum", dict(datum)
        data: dict[str, Any] = {f"{DETECTOR}_frame_file": e.file.relative_to(folder).as_posix()
                                + (f"::{e.index}" if e.index else "")}
        for key, values in series.items():
            data[key] = float(values[k])
        if readings is not None:
            data["cycler_in_range"] = bool(readings["in_range"][k])
        event = desc.compose_event(data=data, timestamps=dict.fromkeys(data, e.time), seq_num=seq,
                                   time=e.time, uid=str(uuid.uuid5(uuid.UUID(uid), f"event/primary/{seq}")))
        yield "event", dict(event)
    reason = (f"{n_out} of {len(entries)} frames outside the cycler log's time range (readings NaN, "
              "cycler_in_range false)") if n_out else ""
    yield "stop", dict(bundle.compose_stop(exit_status="success", reason=reason, time=entries[-1].time,
                                           uid=str(uuid.uuid5(uuid.UUID(uid), "stop"))))
