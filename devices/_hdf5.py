"""Detector-side HDF5 writing: one SWMR file per acquisition series.

Used by the in-process simulated detector and by the caproto detector IOCs, so that the
file layout (``/entry/data/data``, frames along axis 0, one chunk per frame) is defined once.
Readers (the analysis worker, the tiled server) open the file with ``swmr=True`` while it
grows.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

import h5py
import numpy as np

from strainstream.errors import StrainstreamError

__all__ = ["ATTRIBUTES", "DATASET", "DataDirError", "H5FrameWriter", "format_bytes",
           "writable_dir_free_bytes"]

DATASET = "/entry/data/data"
ATTRIBUTES = "/entry/instrument/NDAttributes"


class DataDirError(StrainstreamError, OSError):
    """A detector's data directory is missing, not a directory, not writable or too full."""


def format_bytes(n: float) -> str:
    """``3.2 GB`` style (decimal units)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"  # pragma: no cover


def writable_dir_free_bytes(path: str | os.PathLike) -> int:
    """Create ``path`` if needed, prove it writable by writing a probe file; return free bytes.

    Permission bits are not trusted (root ignores them; read-only mounts do not show in
    them): a probe file is really created and removed.

    Raises
    ------
    DataDirError
        ``<path> is not a directory`` / ``cannot be created`` / ``is not writable``.
    """
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise DataDirError(f"{d} is not a directory")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(f"{d} cannot be created ({exc.strerror or exc})") from exc
    probe = d / f".strainstream-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
    except OSError as exc:
        raise DataDirError(f"{d} is not writable ({exc.strerror or exc})") from exc
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return int(shutil.disk_usage(d).free)


class H5FrameWriter:
    """Append 2-D frames to ``/entry/data/data`` of one HDF5 file in SWMR mode.

    Parameters
    ----------
    path : path
        File to create (parent directories are created). An existing file is an error:
        nothing already recorded is overwritten.
    frame_shape : (rows, cols)
        Shape of every frame.
    dtype : numpy dtype
        Stored dtype (e.g. ``uint32`` counts or ``float32``).
    scalar_keys : sequence of str
        Names of per-frame scalars (float64) stored next to the frames in
        ``/entry/instrument/NDAttributes/<key>`` (shape (n_frames,)), e.g. the simulated state
        each frame was computed from. Fixed at creation: SWMR cannot add datasets later.
    """

    def __init__(self, path: str | os.PathLike, frame_shape: tuple[int, int], dtype="float32",
                 scalar_keys: tuple[str, ...] | list[str] = ()):
        self.path = Path(path).resolve()
        self.frame_shape = tuple(int(n) for n in frame_shape)
        if len(self.frame_shape) != 2 or min(self.frame_shape) < 1:
            raise ValueError(f"frame_shape must be (rows, cols) of positive ints, got {frame_shape}")
        self.dtype = np.dtype(dtype)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            raise FileExistsError(f"detector file {self.path} exists; refusing to overwrite it")
        # no HDF5 file locking: SWMR readers (worker, tiled) may live in this same process
        self._file = h5py.File(self.path, "w", libver="latest", locking=False)
        self._file.create_dataset(
            DATASET,
            shape=(0, *self.frame_shape),
            maxshape=(None, *self.frame_shape),
            chunks=(1, *self.frame_shape),
            dtype=self.dtype,
        )
        self.scalar_keys = tuple(str(k) for k in scalar_keys)
        self._scalars = {}
        for key in self.scalar_keys:
            self._scalars[key] = self._file.create_dataset(
                f"{ATTRIBUTES}/{key}", shape=(0,), maxshape=(None,), chunks=(1024,),
                dtype="float64", fillvalue=np.nan,
            )
        self._file.swmr_mode = True
        self._ds = self._file[DATASET]
        self.count = 0

    @property
    def uri(self) -> str:
        """``file://localhost/...`` URI of the file, as StreamResource documents carry it."""
        return f"file://localhost{self.path}"

    def append(self, frame: np.ndarray, scalars: dict[str, float] | None = None) -> int:
        """Write one frame (and its per-frame scalars, NaN when missing); return its index."""
        frame = np.asarray(frame)
        if frame.shape != self.frame_shape:
            raise ValueError(
                f"frame shape {frame.shape} does not match the detector's {self.frame_shape}"
            )
        scalars = scalars or {}
        unknown = set(scalars) - set(self._scalars)
        if unknown:
            raise ValueError(f"unknown per-frame scalars {sorted(unknown)}; declared: "
                             f"{list(self.scalar_keys)}")
        index = self.count
        self._ds.resize(index + 1, axis=0)
        self._ds[index] = frame.astype(self.dtype, copy=False)
        if self._scalars:
            for key, ds in self._scalars.items():
                ds.resize(index + 1, axis=0)
                ds[index] = float(scalars.get(key, np.nan))
                ds.flush()
        self._ds.flush()
        self.count += 1
        return index

    def append_many(self, frames: list[np.ndarray], scalars: list[dict[str, float]] | None = None) -> int:
        """Write several frames (one resize and one flush per dataset, as a detector's HDF5
        plugin flushing every N frames does); return the index of the first."""
        n = len(frames)
        scalars = scalars if scalars is not None else [{}] * n
        if len(scalars) != n:
            raise ValueError(f"{n} frames but {len(scalars)} sets of per-frame scalars")
        for frame in frames:
            if np.shape(frame) != self.frame_shape:
                raise ValueError(f"frame shape {np.shape(frame)} does not match the detector's "
                                 f"{self.frame_shape}")
        unknown = set().union(*scalars) - set(self._scalars) if scalars else set()
        if unknown:
            raise ValueError(f"unknown per-frame scalars {sorted(unknown)}; declared: "
                             f"{list(self.scalar_keys)}")
        first = self.count
        if n == 0:
            return first
        self._ds.resize(first + n, axis=0)
        self._ds[first:first + n] = np.stack([np.asarray(f) for f in frames]).astype(self.dtype, copy=False)
        for key, ds in self._scalars.items():
            ds.resize(first + n, axis=0)
            ds[first:first + n] = np.array([float(sc.get(key, np.nan)) for sc in scalars])
            ds.flush()
        self._ds.flush()
        self.count += n
        return first

    def rewind(self, count: int) -> None:
        """Drop the frames from index ``count`` on; the next :meth:`append` writes at ``count``.

        Used when frames were taken but never recorded (a RunEngine rewind after a beam-loss
        suspension re-takes them): the file must hold exactly the recorded frames, in order,
        because readers (tiled) map event k to frame k-1.
        """
        count = int(count)
        if not 0 <= count <= self.count:
            raise ValueError(f"cannot rewind to frame {count}: the file holds {self.count} frames")
        if count == self.count:
            return
        self._ds.resize(count, axis=0)
        for ds in self._scalars.values():
            ds.resize(count, axis=0)
            ds.flush()
        self._ds.flush()
        self.count = count

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> H5FrameWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
