"""SXDM files: chunked reading of FILE.h5 (larger than memory) and writing MAPS.h5."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import SXDMError
from ._geometry import SXDMGeometry
from ._mapper import StrainMapper, SXDMMaps, compute_statistics

MAP_DATASETS = ("intensity", "mask", "d_spacing_A", "strain", "tilt_xy_deg", "tilt_xz_deg")


@dataclass(frozen=True)
class SXDMFileInfo:
    """Header of an SXDM file.

    Attributes
    ----------
    geometry : SXDMGeometry
    theta_deg : ndarray, shape (n_theta,)
        Rocking angles as stored, degrees.
    raster_shape : (ny, nx)
    frame_shape : (rows, cols)
    dtype : numpy dtype of the frames
    attrs : dict
        All root attributes.
    """

    geometry: SXDMGeometry
    theta_deg: np.ndarray
    raster_shape: tuple[int, int]
    frame_shape: tuple[int, int]
    dtype: np.dtype
    attrs: dict[str, Any]


@dataclass(frozen=True)
class SXDMChunk:
    """Frames of one rocking angle and a block of raster lines.

    Attributes
    ----------
    theta_deg : float
        Rocking angle, degrees.
    iy, ix : ndarray of int, shape (n,)
        Raster indices of each frame.
    frames : ndarray, shape (n, rows, cols)
        Counts.
    """

    theta_deg: float
    iy: np.ndarray
    ix: np.ndarray
    frames: np.ndarray


def read_sxdm_info(path: str | os.PathLike) -> SXDMFileInfo:
    """Read and validate the header of FILE.h5 (no frames are loaded).

    Raises
    ------
    SXDMError
        Missing ``frames``/``theta_deg`` datasets, wrong ranks, a theta count that disagrees
        with the frames, non-finite or repeated angles, missing geometry attributes.
    """
    import h5py

    if not os.path.exists(path):
        raise SXDMError(f"no such file: {os.fspath(path)}")
    if not os.path.isfile(path):
        raise SXDMError(f"{os.fspath(path)} is not a file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise SXDMError(f"cannot open {os.fspath(path)} as HDF5: {exc}") from exc
    with f:
        for name in ("frames", "theta_deg"):
            if not isinstance(f.get(name), h5py.Dataset):
                raise SXDMError(f"{os.fspath(path)} has no '{name}' dataset (expected the SXDM FILE.h5 layout)")
        ds, th = f["frames"], f["theta_deg"]
        if ds.ndim != 5:
            raise SXDMError(f"'frames' must be (n_theta, ny, nx, rows, cols), got shape {ds.shape}")
        _check_frames_header(ds.shape, ds.dtype)
        if th.dtype.kind not in "iuf" or th.size != ds.shape[0]:
            raise SXDMError(
                f"'frames' has {ds.shape[0]} rocking angles but 'theta_deg' has {th.size} values "
                f"(dtype {th.dtype}): the frame count disagrees with the recorded angles"
            )
        theta = np.asarray(th[()], dtype=np.float64).ravel()
        if theta.size != ds.shape[0]:
            raise SXDMError(
                f"'frames' has {ds.shape[0]} rocking angles but 'theta_deg' has {theta.size} values: "
                "the frame count disagrees with the recorded angles"
            )
        if not np.all(np.isfinite(theta)):
            raise SXDMError("'theta_deg' contains non-finite values")
        if np.unique(theta).size != theta.size:
            raise SXDMError("'theta_deg' has repeated angles")
        attrs = {k: v for k, v in f.attrs.items()}
        geometry = SXDMGeometry.from_metadata(attrs)
        return SXDMFileInfo(
            geometry=geometry,
            theta_deg=theta,
            raster_shape=(int(ds.shape[1]), int(ds.shape[2])),
            frame_shape=(int(ds.shape[3]), int(ds.shape[4])),
            dtype=ds.dtype,
            attrs=attrs,
        )


#: largest single frame (bytes as float64) and raster line (bytes as stored) read at once
MAX_FRAME_BYTES = 1 << 30
MAX_LINE_BYTES = 2 << 30


def _check_frames_header(shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse non-numeric frames and declared sizes that cannot be read, before reading."""
    if dtype.kind not in "biuf":
        raise SXDMError(f"'frames' has dtype {dtype}; detector counts must be integers or floats")
    n_theta, ny, nx, rows, cols = (int(n) for n in shape)
    if min(shape) < 1:
        raise SXDMError(f"'frames' is empty (shape {tuple(shape)})")
    if rows * cols * 8 > MAX_FRAME_BYTES or nx * rows * cols * dtype.itemsize > MAX_LINE_BYTES:
        raise SXDMError(f"'frames' declares frames of {rows}×{cols} pixels in raster lines of {nx}: "
                        f"too large to read (limit {MAX_FRAME_BYTES >> 30} GiB per frame, "
                        f"{MAX_LINE_BYTES >> 30} GiB per line)")


def read_sxdm_file(path: str | os.PathLike, *, max_chunk_mb: float = 256.0) -> Iterator[SXDMChunk]:
    """Iterate over FILE.h5 in chunks of whole raster lines of one rocking angle.

    Parameters
    ----------
    path : path-like
        SXDM file (layout of issue 6).
    max_chunk_mb : float
        Upper bound of one chunk's size in memory (at least one raster line is read).

    Yields
    ------
    SXDMChunk
        Frames (n, rows, cols) with their angle and raster indices.
    """
    import h5py

    info = read_sxdm_info(path)
    ny, nx = info.raster_shape
    rows, cols = info.frame_shape
    line_mb = nx * rows * cols * info.dtype.itemsize / 1e6
    lines = int(max(1, min(ny, max_chunk_mb // max(line_mb, 1e-9))))
    with h5py.File(path, "r") as f:
        ds = f["frames"]
        for i, th in enumerate(info.theta_deg):
            for y0 in range(0, ny, lines):
                y1 = min(ny, y0 + lines)
                block = ds[i, y0:y1]  # (ly, nx, rows, cols)
                iy, ix = np.meshgrid(np.arange(y0, y1), np.arange(nx), indexing="ij")
                yield SXDMChunk(float(th), iy.ravel(), ix.ravel(), block.reshape(-1, rows, cols))


def map_file(
    path: str | os.PathLike, *, max_chunk_mb: float = 256.0, refine: bool = False, **options: Any
) -> SXDMMaps:
    """Strain/rotation maps of an SXDM file, read in chunks.

    Parameters
    ----------
    path : path-like
        SXDM file (layout of issue 6).
    max_chunk_mb : float
        Memory bound of one read chunk.
    refine : bool
        Finish with the Gaussian refinement on projections (:meth:`StrainMapper.refine`; keeps
        n_theta × ny × nx × (rows + cols) float32 projections in memory).
    **options
        Passed to :class:`StrainMapper` (``background``, ``threshold_counts``, ``d_ref_A``, ...).

    Returns
    -------
    SXDMMaps
    """
    info = read_sxdm_info(path)
    if refine:
        options["keep_projections"] = True
    mapper = StrainMapper(
        info.geometry, info.raster_shape, frame_shape=info.frame_shape, theta_deg=info.theta_deg, **options
    )
    for ch in read_sxdm_file(path, max_chunk_mb=max_chunk_mb):
        mapper.add_frames(ch.theta_deg, ch.iy, ch.ix, ch.frames)
    maps = mapper.maps()
    return mapper.refine(maps) if refine else maps


def write_maps(path: str | os.PathLike, maps: SXDMMaps) -> None:
    """Write MAPS.h5: datasets ``intensity, mask, d_spacing_A, strain, tilt_xy_deg, tilt_xz_deg``
    (ny, nx; NaN outside the mask) plus ``q_sample_A_inv`` (ny, nx, 3), ``q_cov_A_inv2``
    (ny, nx, 3, 3), ``flags``, ``shifts_px``, ``theta_deg`` (and ``strain_ref`` with a d_ref), and
    the particle statistics as root attributes (when the mask is not empty).
    """

    path = os.fspath(path)
    tmp = f"{path}.part-{os.getpid()}"
    try:
        _write_maps(tmp, maps)
        os.replace(tmp, path)  # never a half-written MAPS.h5
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_maps(path: str, maps: SXDMMaps) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        for name in MAP_DATASETS:
            f.create_dataset(name, data=getattr(maps, name))
        if maps.strain_ref is not None:
            f.create_dataset("strain_ref", data=maps.strain_ref)
            f.attrs["d_ref_A"] = maps.d_ref_A
        f.create_dataset("q_sample_A_inv", data=maps.q_sample_A_inv)
        f.create_dataset("q_cov_A_inv2", data=maps.q_cov_A_inv2)
        f.create_dataset("flags", data=maps.flags)
        f.create_dataset("shifts_px", data=maps.shifts_px)
        f.create_dataset("theta_deg", data=maps.theta_deg)
        f.attrs["n_frames"] = maps.n_frames
        if maps.mask.any():
            for k, v in compute_statistics(maps).to_dict().items():
                f.attrs[k] = v
