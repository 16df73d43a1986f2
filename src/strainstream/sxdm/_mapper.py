"""Progressive SXDM strain/rotation mapping: :class:`StrainMapper`.

Every frame (one detector image at one rocking angle θ and raster point (iy, ix)) is reduced
at once to eleven numbers: the background-subtracted, thresholded intensity sum and its
first and second moments in lab-frame ΔQ = Q_lab − Q_lab(cen) (pixel-fixed weights, one
product with a (rows·cols, 11) weight matrix, in cache-sized chunks of 16 frames on two
worker threads), plus the intensity on the frame border. These per-angle
sums (n_theta × ny × nx × 11) are all that is kept, so maps exist after the first angles and
sharpen as angles arrive. At :meth:`StrainMapper.maps` time the per-angle intensity maps are
registered (sample drift), the per-angle sums are resampled at the drift-corrected positions,
rotated into the sample frame (Q_sample = Rmz(θ)ᵀ·Q_lab) and combined into the centre of
mass and covariance of the 3-D Bragg peak of each real-space pixel.

Centre-of-mass bias: background is subtracted (per frame from the frame border, or given),
and only voxels more than a threshold above it are kept; the default threshold is the
Poisson level that fewer than 0.5 background voxels per real-space pixel exceed over the
whole scan. The kept region is then an iso-surface of the peak, symmetric about its centre,
so the centre of mass is unbiased. Pixels whose peak touches the frame border or the θ range
ends are flagged and left out of the mask.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._errors import SXDMError
from ._geometry import SXDMGeometry, q_to_d_and_tilts, rocking_matrix
from ._registration import estimate_drift, particle_points, shift_maps

FLAG_LOW_INTENSITY = 1
FLAG_THETA_TRUNCATED = 2
FLAG_DETECTOR_TRUNCATED = 4
FLAG_INCOMPLETE = 8
FLAG_BAD_DETECTOR_VALUES = 16

_N_CH = 11  # m0, m1 (3), m2 (6: xx xy xz yy yz zz), border
_SYM = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
_CHUNK = 16  # frames per work chunk (a 256×256 float32 chunk stays in the L2/L3 cache)
_BATCH = 512  # frames inspected together (bad-pixel checks) and reduced in parallel
#: fewest raster points a particle must cover (at half its peak intensity) for the drift
#: registration (see :func:`strainstream.sxdm.estimate_drift`); smaller: no drift correction
MIN_REGISTRATION_POINTS = 9


@dataclass
class SXDMMaps:
    """Maps of one particle; every map is (ny, nx), NaN outside ``mask`` (except intensity/flags).

    Attributes
    ----------
    intensity : ndarray
        Background-subtracted integrated intensity per raster point (counts, drift-corrected).
    mask : ndarray of bool
        Particle mask (enough intensity, peak inside θ range and detector, clean detector data).
    d_spacing_A : ndarray
        d = 2π/|Q| of the peak's centre of mass, Å.
    strain : ndarray
        Δd/d relative to the particle's mean d (``d_mean_A``).
    strain_ref : ndarray or None
        Δd/d relative to ``d_ref_A`` when one was given.
    tilt_xy_deg, tilt_xz_deg : ndarray
        atan2(Q_y, Q_x), atan2(Q_z, Q_x) of the peak, degrees.
    q_sample_A_inv : ndarray, shape (ny, nx, 3)
        Peak centre of mass in the sample frame, Å⁻¹.
    q_cov_A_inv2 : ndarray, shape (ny, nx, 3, 3)
        Covariance (second central moments) of the thresholded peak, Å⁻².
    flags : ndarray of uint8
        Bit flags: 1 low intensity, 2 peak cut by the θ range, 4 peak on the detector border,
        8 not all rocking angles measured yet, 16 flagged detector values in some frames.
    d_mean_A : float
        Mean d over the mask (NaN when the mask is empty).
    d_ref_A : float or None
    theta_deg : ndarray, shape (n_theta,)
        Rocking angles in ascending order.
    shifts_px : ndarray, shape (n_theta, 2)
        Drift (dy, dx) per angle, raster steps, relative to the registration reference.
    n_frames : int
        Frames accumulated.
    messages : list of str
        Human-readable warnings (e.g. θ range missing the peak).
    """

    intensity: np.ndarray
    mask: np.ndarray
    d_spacing_A: np.ndarray
    strain: np.ndarray
    strain_ref: np.ndarray | None
    tilt_xy_deg: np.ndarray
    tilt_xz_deg: np.ndarray
    q_sample_A_inv: np.ndarray
    q_cov_A_inv2: np.ndarray
    flags: np.ndarray
    d_mean_A: float
    d_ref_A: float | None
    theta_deg: np.ndarray
    shifts_px: np.ndarray
    n_frames: int
    messages: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SXDMStatistics:
    """Particle statistics over the mask.

    Attributes
    ----------
    d_mean_A : float
        Mean d-spacing, Å.
    strain_std, strain_range : float
        Standard deviation and max − min of Δd/d.
    tilt_xy_std_deg, tilt_xz_std_deg : float
        Standard deviations of the rotations, degrees.
    strain_tilt_correlation : float
        Pearson correlation of strain with θxy (the rotation in the scattering plane).
    strain_tilt_xz_correlation : float
        Pearson correlation of strain with θxz.
    n_pixels : int
        Raster points in the mask.
    """

    d_mean_A: float
    strain_std: float
    strain_range: float
    tilt_xy_std_deg: float
    tilt_xz_std_deg: float
    strain_tilt_correlation: float
    strain_tilt_xz_correlation: float
    n_pixels: int

    JSON_KEYS = (
        "d_mean_A",
        "strain_std",
        "strain_range",
        "tilt_xy_std_deg",
        "tilt_xz_std_deg",
        "strain_tilt_correlation",
        "n_pixels",
    )

    def to_dict(self) -> dict[str, float | int]:
        """The CLI's JSON object (keys of issue 6)."""
        return {k: getattr(self, k) for k in self.JSON_KEYS}


def compute_statistics(maps: SXDMMaps) -> SXDMStatistics:
    """Statistics of a particle's maps (see :class:`SXDMStatistics`).

    Raises
    ------
    SXDMError
        If the mask is empty.
    """
    m = maps.mask
    n = int(m.sum())
    if n == 0:
        hint = f" ({'; '.join(maps.messages)})" if maps.messages else ""
        raise SXDMError(f"no raster point inside the particle mask: nothing to summarise{hint}")
    s = maps.strain[m]
    txy = maps.tilt_xy_deg[m]
    txz = maps.tilt_xz_deg[m]

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        if n < 3 or a.std() == 0 or b.std() == 0:
            return float("nan")
        return float(np.corrcoef(a, b)[0, 1])

    return SXDMStatistics(
        d_mean_A=float(maps.d_mean_A),
        strain_std=float(s.std()),
        strain_range=float(s.max() - s.min()),
        tilt_xy_std_deg=float(txy.std()),
        tilt_xz_std_deg=float(txz.std()),
        strain_tilt_correlation=corr(s, txy),
        strain_tilt_xz_correlation=corr(s, txz),
        n_pixels=n,
    )


def statistics_table(stats: Mapping[str, SXDMStatistics]) -> str:
    """A plain-text comparison table of several particles/states.

    Parameters
    ----------
    stats : mapping name -> SXDMStatistics

    Returns
    -------
    str
        One row per particle: d_mean (Å), strain std, range, tilt stds (deg), correlation, n.
    """
    head = f"{'particle':<20}{'d_mean_A':>10}{'strain_std':>12}{'range':>10}{'txy_std':>10}{'txz_std':>10}{'corr':>8}{'n':>6}"
    rows = [head]
    for name, s in stats.items():
        rows.append(
            f"{name:<20}{s.d_mean_A:>10.5f}{s.strain_std:>12.2e}{s.strain_range:>10.2e}"
            f"{s.tilt_xy_std_deg:>10.4f}{s.tilt_xz_std_deg:>10.4f}{s.strain_tilt_correlation:>8.2f}{s.n_pixels:>6d}"
        )
    return "\n".join(rows)


class StrainMapper:
    """Progressive strain/rotation maps from SXDM frames arriving in any order.

    Parameters
    ----------
    geometry : SXDMGeometry or mapping
        Geometry, or metadata / HDF5 root attributes to build it from.
    raster_shape : (ny, nx)
        Raster points.
    frame_shape : (rows, cols), optional
        Detector frame shape; taken from the first frames when omitted.
    theta_deg : array_like, shape (n_theta,), optional
        Planned rocking angles, degrees (recommended: lets progressive maps know which angles
        are still missing). Without it, angles are added as they arrive.
    background : "auto", float or ndarray (rows, cols)
        Background counts per pixel per frame; "auto" estimates it per frame as the mean of the
        outer ``border_px`` ring of the frame.
    threshold_counts : "auto" or float
        Voxels with (counts − background) ≤ threshold are dropped. "auto": the Poisson level
        exceeded by < 0.5 background voxels per raster point over the whole scan.
    mask_fraction : float
        Particle mask: integrated intensity ≥ ``mask_fraction`` × the 99th percentile.
    min_counts : float
        Minimum integrated (background-subtracted) counts for a raster point to be mapped.
    bad_pixel_mask : ndarray of bool (rows, cols), optional
        Known bad detector pixels; replaced by the mean of their valid neighbours.
    detect_hot_pixels : bool
        Find hot pixels (≥ ``hot_factor`` × their 3×3 median) and dead pixels (0 under a bright
        peak) in samples of the first 2000 frames and add them to the bad-pixel mask (frames
        accumulated before a pixel is found keep its contribution).
    register : bool
        Correct sample drift between rocking angles before combining (only when the particle
        covers at least ``MIN_REGISTRATION_POINTS`` = 9 raster points at half its peak
        intensity; a smaller one is mapped without drift correction, with a message).
    registration_reference : int, optional
        Index (in ascending θ order) of the angle whose raster positions the maps use; default
        the angle with the most intensity.
    d_ref_A : float, optional
        Reference d-spacing for ``strain_ref``.
    border_px : int
        Width of the frame border used for the background and the truncation check.
    theta_edge_fraction, border_fraction : float
        Flag a raster point when the intensity at either end of the θ range exceeds
        ``theta_edge_fraction`` of its rocking-curve maximum, or when more than
        ``border_fraction`` of its intensity lies on the frame border.
    compute_dtype : numpy dtype
        Dtype of the per-frame reduction (float32: counts < 2²⁴ exact, half the memory traffic
        of float64; the per-angle sums are kept in float64).
    n_threads : int
        Worker threads of the per-frame reduction (batches of ≥ 16 frames).
    keep_projections : bool
        Also keep each frame's row and column projections (n_theta × ny × nx × (rows + cols)
        float32, e.g. 134 MB for 41 angles, 40 × 40 points, 256 × 256 frames; :meth:`refine`
        briefly needs twice that in float64) for :meth:`refine`.
    theta_tolerance_deg : float
        Frames whose θ lies within this of a known angle belong to it (motor readback jitter).
    """

    def __init__(
        self,
        geometry: SXDMGeometry | Mapping[str, Any],
        raster_shape: tuple[int, int],
        *,
        frame_shape: tuple[int, int] | None = None,
        theta_deg: np.ndarray | None = None,
        background: str | float | np.ndarray = "auto",
        threshold_counts: str | float = "auto",
        mask_fraction: float = 0.2,
        min_counts: float = 50.0,
        bad_pixel_mask: np.ndarray | None = None,
        detect_hot_pixels: bool = True,
        hot_factor: float = 20.0,
        register: bool = True,
        registration_reference: int | None = None,
        d_ref_A: float | None = None,
        border_px: int = 2,
        theta_edge_fraction: float = 0.05,
        border_fraction: float = 0.02,
        compute_dtype: Any = np.float32,
        n_threads: int = 2,
        keep_projections: bool = False,
        theta_tolerance_deg: float = 1e-3,
    ) -> None:
        self.geometry = geometry if isinstance(geometry, SXDMGeometry) else SXDMGeometry.from_metadata(geometry)
        try:
            ny_nx = tuple(_checked("raster_shape", v, integer=True, minimum=1) for v in raster_shape)
        except TypeError:
            ny_nx = ()
        if len(ny_nx) != 2:
            raise SXDMError(f"raster_shape must be (ny, nx) with positive sizes, got {raster_shape!r}")
        self.raster_shape = (int(ny_nx[0]), int(ny_nx[1]))
        if isinstance(background, str) and background != "auto":
            raise SXDMError(f"background must be 'auto', a number or a (rows, cols) array, got {background!r}")
        if not isinstance(background, str | np.ndarray):
            background = _checked("background", background)
        self.background = background
        if isinstance(threshold_counts, str) and threshold_counts != "auto":
            raise SXDMError(f"threshold_counts must be 'auto' or a number, got {threshold_counts!r}")
        if not isinstance(threshold_counts, str):
            threshold_counts = _checked("threshold_counts", threshold_counts)
        self.threshold_counts = threshold_counts
        self.mask_fraction = _checked("mask_fraction", mask_fraction, minimum=0.0, maximum=1.0)
        self.min_counts = _checked("min_counts", min_counts)
        self.detect_hot_pixels = _checked_flag("detect_hot_pixels", detect_hot_pixels)
        self.hot_factor = _checked("hot_factor", hot_factor, minimum=0.0)
        self.register = _checked_flag("register", register)
        if registration_reference is not None:
            registration_reference = int(_checked("registration_reference", registration_reference,
                                                  integer=True, minimum=0))
        self.registration_reference = registration_reference
        self.d_ref_A = None if d_ref_A is None else _checked("d_ref_A", d_ref_A, positive=True)
        self.border_px = int(_checked("border_px", border_px, integer=True, minimum=0))
        self.theta_edge_fraction = _checked("theta_edge_fraction", theta_edge_fraction, minimum=0.0,
                                            maximum=1.0)
        self.border_fraction = _checked("border_fraction", border_fraction, minimum=0.0, maximum=1.0)
        self.compute_dtype = np.dtype(compute_dtype)
        self.n_threads = max(1, int(n_threads))
        self.keep_projections = bool(keep_projections)
        self.theta_tolerance_deg = _checked("theta_tolerance_deg", theta_tolerance_deg, minimum=0.0)
        self._proj: np.ndarray | None = None
        self._thr_cache: dict[float, float] = {}
        self._user_bad = None if bad_pixel_mask is None else np.asarray(bad_pixel_mask, dtype=bool)

        self._planned = theta_deg is not None
        self._theta: list[float] = []
        if theta_deg is not None:
            th = np.asarray(theta_deg, dtype=np.float64).ravel()
            if th.size == 0 or not np.all(np.isfinite(th)):
                raise SXDMError("theta_deg must be a non-empty array of finite angles (degrees)")
            if np.unique(th).size != th.size:
                raise SXDMError("theta_deg has repeated angles; give each rocking angle once")
            if th.size > 1 and np.diff(np.sort(th)).min() <= 2 * self.theta_tolerance_deg:
                raise SXDMError(
                    f"theta_deg has angles closer than 2 × theta_tolerance_deg ({self.theta_tolerance_deg} deg)"
                )
            self._theta = list(np.sort(th))
        ny, nx = self.raster_shape
        n_t = max(len(self._theta), 1)
        need = n_t * ny * nx * _N_CH * 8
        if need > MAX_STATE_BYTES:
            raise SXDMError(f"a {n_t} × {ny} × {nx} (angles × raster) map needs {need / 2**30:.1f} GiB "
                            f"of accumulators (limit {MAX_STATE_BYTES / 2**30:.0f} GiB): check the raster "
                            "and theta_deg metadata")
        self._sums = np.zeros((n_t, ny, nx, _N_CH))
        self._counts = np.zeros((n_t, ny, nx), dtype=np.int64)
        self._n_bad_values = np.zeros((ny, nx), dtype=np.int64)
        self.n_frames = 0
        self.frame_shape: tuple[int, int] | None = None
        self._hot_frames_checked = 0
        self._hot_acc: np.ndarray | float = 0.0  # sum of sampled raw frames not yet examined
        self._hot_acc_n = 0
        if frame_shape is not None:
            self._setup_frames(tuple(frame_shape))

    # ------------------------------------------------------------------ set-up
    def _setup_frames(self, shape: tuple[int, int]) -> None:
        rows, cols = int(shape[0]), int(shape[1])
        b = self.border_px
        if rows <= 2 * b + 2 or cols <= 2 * b + 2:
            raise SXDMError(f"detector frames of shape {shape} are too small (border_px={b})")
        self.frame_shape = (rows, cols)
        g = self.geometry
        q0 = g.q_lab(g.cen_row, g.cen_col)
        dq = g.pixel_q_lab((rows, cols)) - q0
        border = np.zeros((rows, cols), dtype=bool)
        border[:b] = border[-b:] = True
        border[:, :b] = border[:, -b:] = True
        w = np.empty((rows, cols, _N_CH))
        w[..., 0] = 1.0
        w[..., 1:4] = dq
        for j, (a, c) in enumerate(_SYM):
            w[..., 4 + j] = dq[..., a] * dq[..., c]
        w[..., 10] = border
        self._q0_lab = q0
        # (channels, pixels): one matrix-vector product per frame (see _reduce)
        self._weights = np.ascontiguousarray(w.reshape(rows * cols, _N_CH).T, dtype=self.compute_dtype)
        self._border_idx = np.flatnonzero(border.ravel())
        if isinstance(self.background, np.ndarray) or np.ndim(self.background) == 2:
            bg = np.asarray(self.background, dtype=np.float64)
            if bg.shape != (rows, cols):
                raise SXDMError(f"background image has shape {bg.shape}, frames are {(rows, cols)}")
            self._bg_image = bg.astype(self.compute_dtype)
        else:
            self._bg_image = None
        self._bad = np.zeros((rows, cols), dtype=bool)
        if self._user_bad is not None:
            if self._user_bad.shape != (rows, cols):
                raise SXDMError(f"bad_pixel_mask has shape {self._user_bad.shape}, frames are {(rows, cols)}")
            self._bad |= self._user_bad
        self._update_fill()

    def _update_fill(self) -> None:
        rows, cols = self.frame_shape  # type: ignore[misc]
        r, c = np.nonzero(self._bad)
        self._fill_dst = r * cols + c
        offs = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])
        rr = r[:, None] + offs[:, 0]
        cc = c[:, None] + offs[:, 1]
        ok = (rr >= 0) & (rr < rows) & (cc >= 0) & (cc < cols)
        rr, cc = np.clip(rr, 0, rows - 1), np.clip(cc, 0, cols - 1)
        ok &= ~self._bad[rr, cc]
        n_ok = ok.sum(1, keepdims=True)
        self._fill_src = rr * cols + cc
        self._fill_w = np.where(ok, 1.0 / np.maximum(n_ok, 1), 0.0).astype(self.compute_dtype)
        self._ring_idx = np.setdiff1d(self._border_idx, self._fill_dst)

    def state(self) -> dict[str, np.ndarray]:
        """The accumulated state as plain arrays (e.g. to checkpoint a live worker).

        Returns
        -------
        dict of ndarray
            ``theta_deg`` (n_theta,), ``sums`` (n_theta, ny, nx, 11), ``counts``,
            ``n_bad_values``, ``bad_pixel_mask``, ``n_frames`` and (if kept) ``projections``.
            :meth:`restore` on a mapper built with the same options continues from it.
        """
        if self.frame_shape is None:
            raise SXDMError("no frames added yet: nothing to save")
        st = {
            "theta_deg": np.asarray(self._theta, dtype=np.float64),
            "sums": self._sums.copy(),
            "counts": self._counts.copy(),
            "n_bad_values": self._n_bad_values.copy(),
            "bad_pixel_mask": self._bad.copy(),
            "n_frames": np.asarray(self.n_frames),
            "hot_frames_checked": np.asarray(self._hot_frames_checked),
        }
        if self._proj is not None:
            st["projections"] = self._proj.copy()
        return st

    def restore(self, state: Mapping[str, np.ndarray]) -> None:
        """Continue from :meth:`state` (same raster, frame shape and options).

        Raises
        ------
        SXDMError
            If the state does not fit this mapper.
        """
        try:
            theta = np.asarray(state["theta_deg"], dtype=np.float64)
            sums = np.asarray(state["sums"], dtype=np.float64)
            counts = np.asarray(state["counts"], dtype=np.int64)
            bad = np.asarray(state["bad_pixel_mask"], dtype=bool)
        except KeyError as exc:
            raise SXDMError(f"mapper state lacks {exc.args[0]!r}") from exc
        ny, nx = self.raster_shape
        if sums.shape != (theta.size, ny, nx, _N_CH) or counts.shape != sums.shape[:3]:
            raise SXDMError(f"mapper state of shape {sums.shape} does not fit raster {self.raster_shape}")
        if self._planned and not np.allclose(np.sort(theta), self.theta_deg):
            raise SXDMError("mapper state was accumulated on other rocking angles than theta_deg")
        if self.frame_shape is None:
            self._setup_frames(bad.shape)
        if bad.shape != self.frame_shape:
            raise SXDMError(f"mapper state is for frames {bad.shape}, this mapper has {self.frame_shape}")
        self._theta = theta.tolist()
        self._sums, self._counts = sums.copy(), counts.copy()
        self._n_bad_values = np.asarray(state["n_bad_values"], dtype=np.int64).copy()
        self._bad = bad.copy()
        self._update_fill()
        self.n_frames = int(state["n_frames"])
        self._hot_frames_checked = int(state.get("hot_frames_checked", 0))
        proj = state.get("projections")
        self._proj = None if proj is None else np.asarray(proj, dtype=np.float32).copy()

    @property
    def bad_pixel_mask(self) -> np.ndarray | None:
        """Detector pixels treated as bad so far (user mask + detected hot/dead), (rows, cols)."""
        return None if self.frame_shape is None else self._bad.copy()

    @property
    def theta_deg(self) -> np.ndarray:
        """Rocking angles known so far, ascending, degrees."""
        return np.sort(np.asarray(self._theta, dtype=np.float64))

    def _theta_index(self, th: np.ndarray) -> np.ndarray:
        known = np.asarray(self._theta, dtype=np.float64)
        idx = np.full(th.shape, -1, dtype=np.intp)
        if known.size:
            d = np.abs(th[:, None] - known[None, :])
            j = d.argmin(1)
            hit = d[np.arange(th.size), j] <= self.theta_tolerance_deg
            idx[hit] = j[hit]
        if np.any(idx < 0):
            new = _cluster(np.unique(th[idx < 0]), self.theta_tolerance_deg)
            if self._planned:
                raise SXDMError(
                    f"rocking angle(s) {new[:5].tolist()} deg are not in the planned theta_deg "
                    f"({known.min():.5f}..{known.max():.5f} deg, {known.size} angles)"
                )
            n_old = len(self._theta)
            if n_old == 0:
                self._sums = self._sums[:0]
                self._counts = self._counts[:0]
            self._theta.extend(float(t) for t in new)
            ny, nx = self.raster_shape
            self._sums = np.concatenate([self._sums, np.zeros((new.size, ny, nx, _N_CH))])
            self._counts = np.concatenate([self._counts, np.zeros((new.size, ny, nx), dtype=np.int64)])
            return self._theta_index(th)
        return idx

    # ------------------------------------------------------------------ ingestion
    def add_frames(self, theta_deg: Any, iy: Any, ix: Any, frames: np.ndarray) -> None:
        """Accumulate frames (any order, any batch size).

        Parameters
        ----------
        theta_deg : float or array_like, shape (n,)
            Rocking angle of each frame, degrees.
        iy, ix : int or array_like of int, shape (n,)
            Raster indices of each frame.
        frames : ndarray, shape (n, rows, cols) or (rows, cols)
            Detector counts. Non-finite, negative (integer types) and dtype-maximum (integer
            types: saturated / flagged) values are treated as bad.

        Raises
        ------
        SXDMError
            Mismatched counts of frames and positions, indices outside the raster, unknown
            angles, wrong frame shape.
        """
        fr = np.asarray(frames)
        if fr.ndim == 2:
            fr = fr[None]
        if fr.ndim != 3:
            raise SXDMError(f"frames must be (n, rows, cols) or (rows, cols), got shape {fr.shape}")
        if fr.dtype.kind not in "uif":
            raise SXDMError(f"frames must hold numbers, got dtype {fr.dtype}")
        n = fr.shape[0]
        th = _per_frame(theta_deg, n, "theta_deg", np.float64)
        yy = _per_frame(iy, n, "iy", np.intp)
        xx = _per_frame(ix, n, "ix", np.intp)
        if not np.all(np.isfinite(th)):
            raise SXDMError("theta_deg contains non-finite values")
        ny, nx = self.raster_shape
        if yy.size and (yy.min() < 0 or yy.max() >= ny or xx.min() < 0 or xx.max() >= nx):
            raise SXDMError(f"raster indices outside the raster (ny={ny}, nx={nx}): iy {yy.min()}..{yy.max()}, ix {xx.min()}..{xx.max()}")
        if self.frame_shape is None:
            self._setup_frames(fr.shape[1:])
        if fr.shape[1:] != self.frame_shape:
            raise SXDMError(f"frames have shape {fr.shape[1:]}, this mapper expects {self.frame_shape}")
        it = self._theta_index(th)
        for s in range(0, n, _BATCH):
            e = min(n, s + _BATCH)
            part = fr[s:e]
            invalid = self._inspect(part)
            # cache-sized work chunks, reduced in parallel (numpy and BLAS release the GIL)
            bounds = [(a, min(e - s, a + _CHUNK)) for a in range(0, e - s, _CHUNK)]
            args = [(part[a:b], None if invalid is None else invalid[a:b]) for a, b in bounds]
            if self.n_threads > 1 and len(args) > 1:
                res = list(_pool(self.n_threads).map(lambda ab: self._reduce(*ab), args))
            else:
                res = [self._reduce(*ab) for ab in args]
            m = np.concatenate([r[0] for r in res])
            nbad = None
            if any(r[1] is not None for r in res):
                nbad = np.concatenate([r[1] if r[1] is not None else np.zeros(len(r[0]), np.int64) for r in res])
            if self.keep_projections:
                proj = np.concatenate([r[2] for r in res])
                if self._proj is None or self._proj.shape[0] != self._sums.shape[0]:
                    old = self._proj
                    self._proj = np.zeros(self._sums.shape[:3] + (proj.shape[1],), dtype=np.float32)
                    if old is not None:
                        self._proj[: old.shape[0]] = old
                np.add.at(self._proj, (it[s:e], yy[s:e], xx[s:e]), proj)
            np.add.at(self._sums, (it[s:e], yy[s:e], xx[s:e]), m)
            np.add.at(self._counts, (it[s:e], yy[s:e], xx[s:e]), 1)
            if nbad is not None:
                np.add.at(self._n_bad_values, (yy[s:e], xx[s:e]), nbad)
        self.n_frames += n

    def _inspect(self, fr: np.ndarray) -> np.ndarray | None:
        """Update the bad-pixel mask from a batch (main thread); return per-value invalid flags."""
        n = fr.shape[0]
        invalid = _invalid_values(fr)
        if invalid is not None:
            inv = invalid.reshape(n, -1)
            always = inv.all(0) & (n >= 4)  # invalid in every frame: a bad detector pixel
            if always.any():
                self._bad.ravel()[always & ~self._bad.ravel()] = True
                self._update_fill()
        if self.detect_hot_pixels and self._hot_frames_checked < 2000:
            sample = fr[:: max(1, n // 32)][:32]  # frames spread over the batch
            k = len(sample)
            self._hot_acc = self._hot_acc + sample.sum(0, dtype=np.float64)
            self._hot_acc_n += k
            if self._hot_frames_checked == 0 or self._hot_acc_n >= 32:
                self._detect_hot(self._hot_acc, self._hot_acc_n)
                self._hot_acc, self._hot_acc_n = 0.0, 0
        return invalid

    def _reduce(self, fr: np.ndarray, invalid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Frames (n, rows, cols) → per-frame sums (n, 11) float64 and bad-value counts.

        Reads the mapper's state only (safe to run in worker threads).
        """
        n = fr.shape[0]
        rows, cols = self.frame_shape  # type: ignore[misc]
        raw = fr.reshape(n, rows * cols)
        nbad = None
        if invalid is not None:
            inv = invalid.reshape(n, -1) & ~self._bad.ravel()
            nbad = inv.sum(1)
        # background (per frame from the border ring, or given)
        if self._bg_image is not None:
            b = self._bg_image.reshape(1, -1)
            bmean = np.full(n, float(self._bg_image.mean()))
        elif self.background == "auto":
            ring = raw[:, self._ring_idx]
            if invalid is not None:
                ok = ~invalid.reshape(n, -1)[:, self._ring_idx]
                bmean = (ring * ok).sum(1, dtype=np.float64) / np.maximum(ok.sum(1), 1)
            else:
                bmean = ring.mean(1, dtype=np.float64)
            b = bmean.astype(self.compute_dtype)[:, None]
        else:
            bmean = np.full(n, float(self.background))  # type: ignore[arg-type]
            b = self.compute_dtype.type(self.background)
        x = _work_buffer((max(n, _CHUNK), rows * cols), self.compute_dtype)[:n]
        np.subtract(raw, b, out=x, casting="unsafe")  # convert and subtract in one pass
        if invalid is not None:
            x[invalid.reshape(n, -1)] = 0.0
        if self._fill_dst.size:  # bad detector pixels: mean of their valid neighbours
            x[:, self._fill_dst] = (x[:, self._fill_src] * self._fill_w).sum(-1)
        proj = None
        if self.keep_projections:  # background-subtracted, not thresholded
            xr = x.reshape(n, rows, cols)
            proj = np.concatenate([xr.sum(2, dtype=np.float32), xr.sum(1, dtype=np.float32)], 1)
        t = self._thresholds(bmean).astype(self.compute_dtype)[:, None]
        np.multiply(x, x > t, out=x)
        # one matrix-vector product per frame, never a matrix-matrix product over the batch:
        # BLAS gemm kernels round a row differently by its place in the block (OpenBLAS on AVX2:
        # the last 4 rows of 16), so a frame's sums would depend on its batch and live and
        # replay passes with different batching would not agree bit for bit
        m = np.empty((n, _N_CH), dtype=self.compute_dtype)
        for i in range(n):
            np.matmul(self._weights, x[i], out=m[i])
        m = m.astype(np.float64)
        if nbad is not None and not nbad.any():
            nbad = None
        return m, nbad, proj

    def _thresholds(self, bmean: np.ndarray) -> np.ndarray:
        if self.threshold_counts != "auto":
            return np.full(bmean.shape, float(self.threshold_counts))
        # Poisson level exceeded by < 0.5 background voxels per raster point over the scan;
        # tabulated on a 0.001-count grid of the background level (cheap per batch)
        # (a non-finite background -- garbage frames -- is tabulated as 0: no dict key is NaN)
        key = np.round(np.clip(np.nan_to_num(bmean, nan=0.0, posinf=1e12, neginf=0.0), 0.0, 1e12), 3)
        uniq, inv = np.unique(key, return_inverse=True)
        missing = [u for u in uniq.tolist() if u not in self._thr_cache]
        if missing:
            from scipy.stats import poisson

            rows, cols = self.frame_shape  # type: ignore[misc]
            n_vox = rows * cols * max(len(self._theta) if self._planned else 41, 1)
            mb = np.asarray(missing)
            k = np.where(mb > 0, poisson.isf(0.5 / n_vox, np.maximum(mb, 1e-9)), 0.0)
            self._thr_cache.update(zip(missing, np.maximum(k - mb, 0.5 - mb).tolist(), strict=True))
        return np.array([self._thr_cache[u] for u in uniq.tolist()])[inv.ravel()]

    def _detect_hot(self, s: np.ndarray, k: int) -> None:
        """Hot (≥ hot_factor × 3×3 median) and dead (0 where the 3×3 median is ≥ 2 counts per
        frame: Poisson probability < e⁻²ᵏ) pixels from a sum ``s`` (rows, cols) of ``k`` frames."""
        from scipy.ndimage import median_filter

        med = median_filter(s, size=3, mode="nearest")
        hot = s > self.hot_factor * (med + k)
        dead = (s == 0) & (med >= 2.0 * k)
        new = (hot | dead) & ~self._bad
        self._hot_frames_checked += k
        if new.any():
            self._bad |= new
            self._update_fill()

    # ------------------------------------------------------------------ results
    def _per_angle(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        order = np.argsort(np.asarray(self._theta))
        theta = np.asarray(self._theta)[order]
        counts = self._counts[order]
        mean = self._sums[order] / np.maximum(counts, 1)[..., None]
        return theta, counts, mean

    def drift_shifts(self) -> np.ndarray:
        """Drift (dy, dx) per rocking angle (ascending θ), raster steps, shape (n_theta, 2)."""
        theta, counts, mean = self._per_angle()
        return self._shifts(mean, counts, theta)[0]

    def _shifts(self, mean: np.ndarray, counts: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, str]:
        """Drift shifts (n_theta, 2) and a message ("" unless registration had to be skipped)."""
        m0 = mean[..., 0]
        n_t = m0.shape[0]
        totals = np.clip(m0, 0, None).sum((1, 2))
        if not self.register or n_t < 2 or totals.max() <= 0:
            return np.zeros((n_t, 2)), ""
        measured = counts.sum((1, 2)) > 0.5 * counts[0].size
        use = measured & (totals >= 0.1 * totals.max())
        if use.sum() < 2:
            return np.zeros((n_t, 2)), ""
        n_points = particle_points(m0[use])
        if n_points < MIN_REGISTRATION_POINTS:
            return np.zeros((n_t, 2)), (
                f"drift not corrected: the particle covers {n_points} raster points (at half its "
                f"peak intensity), registration needs {MIN_REGISTRATION_POINTS} (a 3 × 3 patch); "
                "map with a finer or larger raster, or give shifts_px")
        # texture: Σ I·ΔQ_z per angle (rocking is about z, so Q_z does not change with θ)
        shifts = estimate_drift(m0, theta, use, texture_maps=mean[..., 3], min_points=0)  # size checked above
        r = self.registration_reference
        if r is None:
            r = int(np.argmax(totals))
        if not 0 <= r < n_t:
            raise SXDMError(f"registration_reference {r} outside 0..{n_t - 1}")
        return shifts - shifts[r], ""

    def maps(self, shifts_px: np.ndarray | None = None) -> SXDMMaps:
        """Current maps (progressive: valid after any number of frames).

        Parameters
        ----------
        shifts_px : ndarray, shape (n_theta, 2), optional
            Drift (dy, dx) per angle (ascending θ) in raster steps, e.g. from fluorescence maps,
            instead of the registration of the intensity maps: the content of angle i at raster
            point p is taken from p + shifts_px[i].

        Returns
        -------
        SXDMMaps
            See :class:`SXDMMaps`; (ny, nx) maps, NaN outside the mask.

        Raises
        ------
        SXDMError
            If no frame was added yet.
        """
        if self.n_frames == 0:
            raise SXDMError("no frames added yet: call add_frames() first")
        ny, nx = self.raster_shape
        theta, counts, mean = self._per_angle()
        note = ""
        if shifts_px is None:
            shifts, note = self._shifts(mean, counts, theta)
        else:
            shifts = np.asarray(shifts_px, dtype=np.float64)
            if shifts.shape != (len(theta), 2) or not np.all(np.isfinite(shifts)):
                raise SXDMError(f"shifts_px must be finite with shape ({len(theta)}, 2), got {shifts.shape}")
        a = shift_maps(mean, shifts) if np.any(shifts) else mean
        rot = rocking_matrix(theta)  # (T, 3, 3)
        q0 = self._q0_lab
        p_ref = rot[len(theta) // 2].T @ q0
        av = np.einsum("tji,j->ti", rot, q0) - p_ref  # Rᵀq0 − p_ref, (T, 3)
        m0 = a[..., 0]
        m1 = np.einsum("tji,tyxj->tyxi", rot, a[..., 1:4])
        m2l = np.empty(a.shape[:3] + (3, 3))
        for j, (p, q) in enumerate(_SYM):
            m2l[..., p, q] = m2l[..., q, p] = a[..., 4 + j]
        m2 = np.einsum("tji,tyxjk,tkl->tyxil", rot, m2l, rot)
        m2 += np.einsum("tyxi,tj->tyxij", m1, av)
        m2 += np.einsum("ti,tyxj->tyxij", av, m1)
        m2 += np.einsum("tyx,ti,tj->tyxij", m0, av, av)
        m1 = m1 + m0[..., None] * av[:, None, None, :]
        s0 = m0.sum(0)
        s1 = m1.sum(0)
        s2 = m2.sum(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            mu = s1 / s0[..., None]
            cov = s2 / s0[..., None, None] - mu[..., :, None] * mu[..., None, :]
        q = p_ref + mu
        d, txy, txz = q_to_d_and_tilts(q)

        # ---- flags and mask
        flags = np.zeros((ny, nx), dtype=np.uint8)
        messages: list[str] = [note] if note else []
        pos = s0 > 0
        ref_level = np.percentile(s0[pos], 99) if pos.any() else 0.0
        low = ~pos | (s0 < self.min_counts) | (s0 < self.mask_fraction * ref_level)
        flags[low] |= FLAG_LOW_INTENSITY
        planned_missing = counts == 0
        incomplete = planned_missing.any(0)
        flags[incomplete] |= FLAG_INCOMPLETE
        with np.errstate(divide="ignore", invalid="ignore"):
            border_frac = a[..., 10].sum(0) / s0
            peak_t = m0.max(0)
            edge_t = np.maximum(np.where(counts[0] > 0, m0[0], 0), np.where(counts[-1] > 0, m0[-1], 0))
            theta_cut = (len(theta) >= 2) & (edge_t > self.theta_edge_fraction * peak_t) & ~incomplete
        det_cut = ~low & (border_frac > self.border_fraction)
        flags[theta_cut & ~low] |= FLAG_THETA_TRUNCATED
        flags[det_cut] |= FLAG_DETECTOR_TRUNCATED
        flags[self._n_bad_values > 0] |= FLAG_BAD_DETECTOR_VALUES
        mask = (flags & (FLAG_LOW_INTENSITY | FLAG_THETA_TRUNCATED | FLAG_DETECTOR_TRUNCATED | FLAG_BAD_DETECTOR_VALUES)) == 0

        bright = ~low
        if not bright.any():
            messages.append(
                f"no diffracted intensity above background (max {float(s0.max()) if s0.size else 0:.1f} counts): "
                f"the θ range {theta.min():.4f}..{theta.max():.4f} deg or the detector crop probably misses the Bragg peak"
            )
        else:
            ft = float((theta_cut & bright).sum()) / bright.sum()
            if ft > 0:
                messages.append(
                    f"{100 * ft:.0f} % of the particle has its rocking curve cut at the θ range ends "
                    f"({theta.min():.4f}..{theta.max():.4f} deg): widen or re-centre the θ range"
                )
            fd = float((det_cut & bright).sum()) / bright.sum()
            if fd > 0:
                messages.append(f"{100 * fd:.0f} % of the particle has its peak on the detector border: re-centre the detector crop")
            nb = int((self._n_bad_values > 0).sum())
            if nb:
                messages.append(f"{nb} raster points had flagged detector values (saturated/NaN/negative) and are masked")

        d_mean = float(np.mean(d[mask])) if mask.any() else float("nan")
        nan = np.full((ny, nx), np.nan)

        def masked(v: np.ndarray) -> np.ndarray:
            return np.where(mask, v, nan)

        strain = masked(d / d_mean - 1.0)
        strain_ref = masked(d / self.d_ref_A - 1.0) if self.d_ref_A else None
        return SXDMMaps(
            intensity=s0,
            mask=mask,
            d_spacing_A=masked(d),
            strain=strain,
            strain_ref=strain_ref,
            tilt_xy_deg=masked(txy),
            tilt_xz_deg=masked(txz),
            q_sample_A_inv=np.where(mask[..., None], q, np.nan),
            q_cov_A_inv2=np.where(mask[..., None, None], cov, np.nan),
            flags=flags,
            d_mean_A=d_mean,
            d_ref_A=self.d_ref_A,
            theta_deg=theta,
            shifts_px=shifts,
            n_frames=self.n_frames,
            messages=messages,
        )

    def refine(self, maps: SXDMMaps | None = None) -> SXDMMaps:
        """Final refinement for a finished scan: Gaussian fits of the peak's projections.

        The drift-corrected rocking curve, row profile and column profile of each raster point
        are fitted with 1-D Gaussians (see :func:`fit_gaussians_1d`); their centres give
        Q = Rmz(θc)ᵀ·Q_lab(rc, cc). Needs ``keep_projections=True``.

        Parameters
        ----------
        maps : SXDMMaps, optional
            Centre-of-mass maps whose drift shifts and mask to use (default :meth:`maps`).

        Returns
        -------
        SXDMMaps
            Same layout; raster points whose peak the θ range cut (flag 2) rejoin the mask when
            the rocking-curve fit finds the centre inside the θ range; failed fits leave it.
        """
        from ._refine import fit_gaussians_1d

        if not self.keep_projections or self._proj is None:
            raise SXDMError("refine() needs the frame projections: create the StrainMapper with keep_projections=True")
        base = maps if maps is not None else self.maps()
        order = np.argsort(np.asarray(self._theta))
        theta = np.asarray(self._theta)[order]
        counts = self._counts[order]
        proj = self._proj[order] / np.maximum(counts, 1)[..., None]
        proj = shift_maps(proj, base.shifts_px) if np.any(base.shifts_px) else proj.astype(np.float64)
        rows, cols = self.frame_shape  # type: ignore[misc]
        ny, nx = self.raster_shape
        rock = proj[..., :rows].sum(-1).reshape(len(theta), -1).T  # (N, T)
        prow = proj[..., :rows].sum(0).reshape(-1, rows)
        pcol = proj[..., rows:].sum(0).reshape(-1, cols)
        cand = (base.flags & (FLAG_LOW_INTENSITY | FLAG_DETECTOR_TRUNCATED)).ravel() == 0
        idx = np.flatnonzero(cand)
        tc = np.full(ny * nx, np.nan)
        rc = np.full(ny * nx, np.nan)
        cc = np.full(ny * nx, np.nan)
        ok = np.zeros(ny * nx, dtype=bool)
        if idx.size:
            _, t_c, _, _, ok_t = fit_gaussians_1d(theta, rock[idx], fit_offset=False)
            _, r_c, _, _, ok_r = fit_gaussians_1d(np.arange(rows, dtype=float), prow[idx])
            _, c_c, _, _, ok_c = fit_gaussians_1d(np.arange(cols, dtype=float), pcol[idx])
            tc[idx], rc[idx], cc[idx] = t_c, r_c, c_c
            inside_t = (t_c >= theta.min()) & (t_c <= theta.max())
            ok[idx] = ok_t & ok_r & ok_c & inside_t
        ok = ok.reshape(ny, nx)
        q_lab = self.geometry.q_lab(np.nan_to_num(rc), np.nan_to_num(cc))  # (N, 3)
        q = np.einsum("nji,nj->ni", rocking_matrix(np.nan_to_num(tc)), q_lab).reshape(ny, nx, 3)
        d, txy, txz = q_to_d_and_tilts(q)
        keep = (base.flags & (FLAG_LOW_INTENSITY | FLAG_DETECTOR_TRUNCATED | FLAG_BAD_DETECTOR_VALUES)) == 0
        mask = keep & ok
        messages = list(base.messages)
        n_fail = int((keep & ~ok & base.mask).sum())
        if n_fail:
            messages.append(f"refinement: Gaussian fits failed at {n_fail} raster points (left out of the mask)")
        d_mean = float(np.mean(d[mask])) if mask.any() else float("nan")
        nan = np.full((ny, nx), np.nan)

        def masked(v: np.ndarray) -> np.ndarray:
            return np.where(mask, v, nan)

        return SXDMMaps(
            intensity=base.intensity,
            mask=mask,
            d_spacing_A=masked(d),
            strain=masked(d / d_mean - 1.0),
            strain_ref=masked(d / self.d_ref_A - 1.0) if self.d_ref_A else None,
            tilt_xy_deg=masked(txy),
            tilt_xz_deg=masked(txz),
            q_sample_A_inv=np.where(mask[..., None], q, np.nan),
            q_cov_A_inv2=base.q_cov_A_inv2,
            flags=base.flags,
            d_mean_A=d_mean,
            d_ref_A=self.d_ref_A,
            theta_deg=theta,
            shifts_px=base.shifts_px,
            n_frames=self.n_frames,
            messages=messages,
        )

    def statistics(self, maps: SXDMMaps | None = None) -> SXDMStatistics:
        """Particle statistics (see :class:`SXDMStatistics`) of :meth:`maps` (or given maps)."""
        return compute_statistics(maps if maps is not None else self.maps())


def _cluster(values: np.ndarray, tol: float) -> np.ndarray:
    """Sorted values with runs closer than ``tol`` merged into their first member."""
    keep = np.ones(values.size, dtype=bool)
    keep[1:] = np.diff(values) > tol
    return values[keep]


def _per_frame(v: Any, n: int, name: str, dtype: Any) -> np.ndarray:
    a = np.asarray(v)
    if a.ndim == 0:
        a = np.full(n, a)
    a = a.ravel()
    if a.size != n:
        raise SXDMError(f"got {n} frames but {a.size} values of {name}: give one {name} per frame (or a scalar)")
    if np.dtype(dtype).kind == "i" and a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise SXDMError(f"{name} must be integer raster indices")
    return a.astype(dtype)


def _invalid_values(fr: np.ndarray) -> np.ndarray | None:
    """Boolean (n, rows, cols) of invalid values, or None when there are none (cheap check)."""
    k = fr.dtype.kind
    if k == "u":
        top = np.iinfo(fr.dtype).max
        if fr.max() < top:
            return None
        return fr == top
    if k == "i":
        top = np.iinfo(fr.dtype).max
        if fr.max() < top and fr.min() >= 0:
            return None
        return (fr == top) | (fr < 0)
    if np.isfinite(fr.sum(dtype=np.float64)):
        return None
    return ~np.isfinite(fr)


_POOLS: dict[int, Any] = {}
_LOCAL = threading.local()


#: largest accumulator state (bytes) a mapper allocates: a bigger declared scan is refused
MAX_STATE_BYTES = 4 << 30


def _checked(name: str, value: Any, *, integer: bool = False, minimum: float | None = None,
             maximum: float | None = None, positive: bool = False) -> float:
    """A finite number for parameter ``name`` or SXDMError naming it."""
    if (isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating)
            or not math.isfinite(value) or (integer and not float(value).is_integer())):
        raise SXDMError(f"{name} must be a finite {'integer' if integer else 'number'}, got {value!r}")
    v = float(value)
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum) or (positive and v <= 0):
        bounds = "> 0" if positive else " and ".join(
            t for t in (minimum is not None and f"≥ {minimum}", maximum is not None and f"≤ {maximum}") if t)
        raise SXDMError(f"{name} must be {bounds}, got {value!r}")
    return v


def _checked_flag(name: str, value: Any) -> bool:
    if isinstance(value, bool | np.bool_) or (isinstance(value, int | np.integer) and value in (0, 1)):
        return bool(value)
    raise SXDMError(f"{name} must be true or false, got {value!r}")


def _work_buffer(shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """A per-thread reusable work array (fresh 4 MB allocations cost page faults per call)."""
    buf = getattr(_LOCAL, "buf", None)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = np.empty(shape, dtype=dtype)
        _LOCAL.buf = buf
    return buf


def _pool(n: int) -> Any:
    """A shared thread pool (numpy releases the GIL in the per-frame reduction)."""
    if n not in _POOLS:
        from concurrent.futures import ThreadPoolExecutor

        _POOLS[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="sxdm-reduce")
    return _POOLS[n]
