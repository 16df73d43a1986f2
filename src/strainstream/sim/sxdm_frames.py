"""SXDM forward model: one strained, rotated particle → 5-D nano-diffraction frames.

An explicit kinematic model written independently of :mod:`strainstream.sxdm` (it shares
only the documented conventions of issue 6, not code):

- Real space: a particle on a raster of ``(ny, nx)`` points (``step_nm`` apart). Its d-spacing
  and lattice rotations are smooth random fields (sums of a few plane waves with wavelengths
  of 7–14 raster steps) with the magnitudes of REFERENCE.md: charged SC-NM91 Δd/d standard
  deviation 0.0018, SC-NC91 3× smaller; strain and rotation anticorrelated (ρ = −0.7).
  The diffracting weight is the particle's thickness times its outline blurred by the beam
  (Gaussian, FWHM 30 nm); the fields vary over ≥ 350 nm, so the strain seen by the 30 nm beam
  is the field at the beam centre.
- Reciprocal space: at raster point x the (003) peak is a 3-D Gaussian centred on
  Q_true(x) = |Q|(d(x)) · direction(θxy(x), θxz(x)) in the sample frame, with widths
  ``sigma_par`` along x̂ (the nominal reflection direction) and ``sigma_perp`` across.
- Detector: each pixel's Q at rocking angle θ is computed from the arm rotation
  A = Rz(−δ)·Rx(γ) applied to the pixel's position on an un-rotated detector that faces the
  beam (columns along +x, rows along −z), k_f = k·P/|P|, Q_lab = k_f − k ŷ, and
  Q_sample = Rz(+θ)·Q_lab (the inverse of the rocking rotation about −z).
- Counts: ``peak_max_counts × weight × exp(−½ ΔᵀΣ⁻¹Δ) + background``, Poisson noise;
  optional hot and dead detector pixels; sample drift between rocking angles (a random walk,
  zero at ``reference_index``, the raster positions of the truth maps).

Files: :func:`write_sxdm_file` writes the issue's FILE.h5 layout (``frames`` (n_theta, ny, nx,
rows, cols) counts, ``theta_deg``, geometry root attributes).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation
from scipy.special import erfc

__all__ = [
    "SXDMParticle",
    "SXDMSimulation",
    "particle_preset",
    "simulate_sxdm",
    "write_sxdm_file",
]

HC_KEV_A = 12.398419843
_PRESETS = {
    # material: (strain std of charged state, tilt std deg of charged state)
    "SC-NM91": (0.0018, 0.040),
    "SC-NC91": (0.0018 / 3.0, 0.040 / 3.0),
}
_STATE_FACTOR = {"pristine": 0.25, "charged": 1.0, "cycled": 3.3 / 3.0}
_STATE_C_A = {"pristine": 14.20, "charged": 13.70, "cycled": 13.72}


@dataclass(frozen=True)
class SXDMParticle:
    """A particle with smooth strain and rotation fields on a raster.

    Attributes
    ----------
    ny, nx : int
        Raster size (points).
    step_nm : float
        Raster step, nm.
    d_mean_A : float
        Mean (003) d-spacing, Å (the strain field has zero mean over the particle).
    strain_std : float
        Standard deviation of Δd/d over the particle (on the raster).
    tilt_std_deg : float
        Standard deviation of each rotation θxy, θxz, degrees.
    rho : float
        Correlation coefficient between strain and each rotation (negative: anticorrelated).
    tilt_mean_deg : (float, float)
        Mean θxy, θxz, degrees.
    semi_axes_px : (float, float)
        Ellipse semi-axes (y, x) of the particle outline, raster steps.
    beam_fwhm_nm : float
        Beam FWHM, nm (blurs the outline).
    seed : int
        Seed of the random fields.
    """

    ny: int = 32
    nx: int = 32
    step_nm: float = 50.0
    d_mean_A: float = 13.70 / 3.0
    strain_std: float = 0.0018
    tilt_std_deg: float = 0.040
    rho: float = -0.7
    tilt_mean_deg: tuple[float, float] = (0.0, 0.0)
    semi_axes_px: tuple[float, float] | None = None
    beam_fwhm_nm: float = 30.0
    seed: int = 0
    _modes: dict = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.ny < 4 or self.nx < 4:
            raise ValueError(f"raster must be at least 4×4, got {self.ny}×{self.nx}")
        rng = np.random.default_rng(self.seed)
        modes = {}
        for name in ("g1", "g2", "g3"):
            n_modes = 6
            wl = rng.uniform(7.0, 14.0, n_modes)  # wavelength, raster steps
            ang = rng.uniform(0, np.pi, n_modes)
            kv = np.stack([np.sin(ang), np.cos(ang)], -1) / wl[:, None]  # cycles/step (y, x)
            modes[name] = (kv, rng.uniform(0, 2 * np.pi, n_modes), rng.normal(1.0, 0.3, n_modes))
        object.__setattr__(self, "_modes", modes)
        # normalise each field to zero mean / unit std over the particle on the raster
        y, x = np.meshgrid(np.arange(self.ny, dtype=float), np.arange(self.nx, dtype=float), indexing="ij")
        w = self.weight(y, x)
        inside = w > 0.5 * w.max()
        norms = {}
        for name in modes:
            g = self._raw(name, y, x)[inside]
            norms[name] = (g.mean(), g.std())
        object.__setattr__(self, "_norms", norms)

    # --------------------------------------------------------------- fields
    def _raw(self, name: str, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        kv, ph, amp = self._modes[name]
        arg = 2 * np.pi * (y[..., None] * kv[:, 0] + x[..., None] * kv[:, 1]) + ph
        return (amp * np.cos(arg)).sum(-1)

    def _g(self, name: str, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        m, s = self._norms[name]  # type: ignore[attr-defined]
        return (self._raw(name, y, x) - m) / s

    def weight(self, y_px: np.ndarray, x_px: np.ndarray) -> np.ndarray:
        """Diffracting weight (thickness × beam-blurred outline) at raster coordinates, 0..1."""
        ay, ax = self.semi_axes_px or (0.36 * self.ny, 0.36 * self.nx)
        cy, cx = (self.ny - 1) / 2.0, (self.nx - 1) / 2.0
        rr = np.hypot((np.asarray(y_px) - cy) / ay, (np.asarray(x_px) - cx) / ax)
        sd_px = (rr - 1.0) * np.sqrt(ay * ax)  # ≈ signed distance to the outline, steps
        sig_px = self.beam_fwhm_nm / 2.3548 / self.step_nm
        edge = 0.5 * erfc(sd_px / (np.sqrt(2.0) * sig_px))
        thick = np.clip(1.0 - 0.5 * rr**2, 0.3, None)
        return edge * thick

    def fields(self, y_px: np.ndarray, x_px: np.ndarray) -> dict[str, np.ndarray]:
        """True fields at raster coordinates (any shape; fractional allowed).

        Returns
        -------
        dict
            ``strain`` (Δd/d vs ``d_mean_A``), ``d_spacing_A`` (Å), ``tilt_xy_deg``,
            ``tilt_xz_deg`` (degrees), ``weight`` (0..1), ``q_sample_A_inv`` (..., 3) (Å⁻¹).
        """
        y = np.asarray(y_px, dtype=float)
        x = np.asarray(x_px, dtype=float)
        g1, g2, g3 = self._g("g1", y, x), self._g("g2", y, x), self._g("g3", y, x)
        c = np.sqrt(1.0 - self.rho**2)
        strain = self.strain_std * g1
        txy = self.tilt_mean_deg[0] + self.tilt_std_deg * (self.rho * g1 + c * g2)
        txz = self.tilt_mean_deg[1] + self.tilt_std_deg * (self.rho * g1 + c * g3)
        d = self.d_mean_A * (1.0 + strain)
        qmag = 2 * np.pi / d
        ty, tz = np.tan(np.deg2rad(txy)), np.tan(np.deg2rad(txz))
        qx = qmag / np.sqrt(1.0 + ty**2 + tz**2)
        q = np.stack([qx, qx * ty, qx * tz], -1)
        return {
            "strain": strain,
            "d_spacing_A": d,
            "tilt_xy_deg": txy,
            "tilt_xz_deg": txz,
            "weight": self.weight(y, x),
            "q_sample_A_inv": q,
        }

    def truth(self) -> dict[str, np.ndarray]:
        """True fields on the raster grid (no drift); each (ny, nx) (``q_sample_A_inv`` (ny, nx, 3))."""
        y, x = np.meshgrid(np.arange(self.ny, dtype=float), np.arange(self.nx, dtype=float), indexing="ij")
        return self.fields(y, x)


def particle_preset(
    material: str = "SC-NM91", state: str = "charged", *, ny: int = 32, nx: int = 32, seed: int = 0
) -> SXDMParticle:
    """A particle with REFERENCE.md magnitudes.

    Parameters
    ----------
    material : {"SC-NM91", "SC-NC91"}
        Charged SC-NM91 has Δd/d std 0.0018, SC-NC91 3× less.
    state : {"pristine", "charged", "cycled"}
        Scales the heterogeneity (pristine 0.25×, cycled 1.1× charged) and sets c (Å):
        14.20, 13.70, 13.72 → d(003) = c/3.
    ny, nx : int
        Raster size.
    seed : int
        Random-field seed.
    """
    if material not in _PRESETS:
        raise ValueError(f"unknown material {material!r}; choose one of {sorted(_PRESETS)}")
    if state not in _STATE_FACTOR:
        raise ValueError(f"unknown state {state!r}; choose one of {sorted(_STATE_FACTOR)}")
    s, t = _PRESETS[material]
    f = _STATE_FACTOR[state]
    return SXDMParticle(
        ny=ny, nx=nx, d_mean_A=_STATE_C_A[state] / 3.0, strain_std=s * f, tilt_std_deg=t * f, seed=seed
    )


@dataclass
class SXDMSimulation:
    """A simulated SXDM scan; frames are generated angle by angle on demand.

    Attributes
    ----------
    particle : SXDMParticle
    theta_deg : ndarray, shape (n_theta,)
        Absolute rocking angles, degrees.
    metadata : dict
        Geometry root attributes (``energy_keV, distance_m, pixel_size_um, delta_deg, gamma_deg,
        step_nm, hkl, cen_row, cen_col``).
    shape : (rows, cols)
        Detector frame shape (a crop).
    drift_px : ndarray, shape (n_theta, 2)
        Sample drift (dy, dx) in raster steps at each angle: the beam at raster point (iy, ix)
        hits particle coordinates (iy + dy, ix + dx). Zero at ``reference_index``.
    reference_index : int
        Rocking-angle index whose raster positions define the truth maps.
    """

    particle: SXDMParticle
    theta_deg: np.ndarray
    metadata: dict[str, Any]
    shape: tuple[int, int]
    drift_px: np.ndarray
    reference_index: int
    peak_max_counts: float
    background_counts: float
    sigma_par_A_inv: float
    sigma_perp_A_inv: float
    hot_pixels: tuple[tuple[int, int], ...] = ()
    hot_counts: float = 5000.0
    dead_pixels: tuple[tuple[int, int], ...] = ()
    noise: bool = True
    seed: int = 1

    @property
    def n_theta(self) -> int:
        return len(self.theta_deg)

    def pixel_q_sample(self, theta_deg: float) -> np.ndarray:
        """Sample-frame Q of every detector pixel at ``theta_deg``, shape (rows, cols, 3), Å⁻¹."""
        md = self.metadata
        k = 2 * np.pi / (HC_KEV_A / md["energy_keV"])
        p = md["pixel_size_um"] * 1e-6
        rows, cols = self.shape
        r, c = np.meshgrid(np.arange(rows, dtype=float), np.arange(cols, dtype=float), indexing="ij")
        # un-rotated detector facing the beam at distance D: columns along +x, rows along −z
        local = np.stack([(c - md["cen_col"]) * p, np.full_like(r, md["distance_m"]), -(r - md["cen_row"]) * p], -1)
        arm = Rotation.from_euler("z", -md["delta_deg"], degrees=True) * Rotation.from_euler(
            "x", md["gamma_deg"], degrees=True
        )
        pos = arm.apply(local.reshape(-1, 3))
        kf = k * pos / np.linalg.norm(pos, axis=1, keepdims=True)
        q_lab = kf - np.array([0.0, k, 0.0])
        q_s = Rotation.from_euler("z", theta_deg, degrees=True).apply(q_lab)
        return q_s.reshape(rows, cols, 3)

    def expected_line(self, index: int, iy: int) -> np.ndarray:
        """Noise-free expected counts of raster line ``iy`` at rocking-angle ``index``.

        Returns
        -------
        ndarray, shape (nx, rows, cols)
            Counts per pixel per frame.
        """
        pt = self.particle
        dy, dx = self.drift_px[index]
        y = np.full(pt.nx, iy + dy)
        x = np.arange(pt.nx) + dx
        f = pt.fields(y, x)
        mu = f["q_sample_A_inv"]
        w = f["weight"]
        q = self._pixel_q_cached(index).reshape(-1, 3)
        qref = np.array([2 * np.pi / pt.d_mean_A, 0.0, 0.0])
        prec = np.array([self.sigma_par_A_inv, self.sigma_perp_A_inv, self.sigma_perp_A_inv]) ** -2.0
        qr, mr = q - qref, mu - qref
        # −½ΔᵀPΔ = −½(qᵀPq − 2μᵀPq + μᵀPμ), P diagonal in the sample frame
        e = (mr * prec) @ qr.T
        e *= 2.0
        e -= (qr**2 * prec).sum(1)
        e -= (mr**2 * prec).sum(1)[:, None]
        e *= 0.5
        np.exp(e, out=e)
        e *= (self.peak_max_counts * w)[:, None]
        e += self.background_counts
        return e.reshape(pt.nx, *self.shape)

    def _pixel_q_cached(self, index: int) -> np.ndarray:
        cache = self.__dict__.setdefault("_q_cache", {})
        if index not in cache:
            cache.clear()
            cache[index] = self.pixel_q_sample(float(self.theta_deg[index]))
        return cache[index]

    def expected_frames(self, index: int) -> np.ndarray:
        """Noise-free expected counts at rocking-angle ``index``, shape (ny, nx, rows, cols)."""
        return np.stack([self.expected_line(index, iy) for iy in range(self.particle.ny)])

    def line_at(self, index: int, iy: int) -> np.ndarray:
        """Counts of raster line ``iy`` at rocking-angle ``index`` (Poisson noise, hot/dead
        pixels; reproducible per (seed, index, iy)), uint32, shape (nx, rows, cols)."""
        lam = self.expected_line(index, iy)
        rng = np.random.default_rng([self.seed, index, iy])
        counts = rng.poisson(lam).astype(np.uint32) if self.noise else np.rint(lam).astype(np.uint32)
        for r, c in self.hot_pixels:
            counts[:, r, c] = rng.poisson(self.hot_counts, counts.shape[0])
        for r, c in self.dead_pixels:
            counts[:, r, c] = 0
        return counts

    def frame_at(self, index: int, iy: int, ix: int) -> np.ndarray:
        """One detector frame (rows, cols), uint32, identical to ``frames_at(index)[iy, ix]``.

        The last raster line is cached, so frames requested in raster order cost one line
        computation per line (for a simulated detector serving frames one by one).
        """
        key = (index, iy)
        cached = self.__dict__.get("_line_cache")
        if cached is None or cached[0] != key:
            cached = (key, self.line_at(index, iy))
            self.__dict__["_line_cache"] = cached
        return cached[1][ix].copy()

    def frames_at(self, index: int) -> np.ndarray:
        """Counts at rocking-angle ``index`` (Poisson noise, hot/dead pixels), uint32, (ny, nx, rows, cols)."""
        return np.stack([self.line_at(index, iy) for iy in range(self.particle.ny)])

    def all_frames(self) -> np.ndarray:
        """All frames, uint32, shape (n_theta, ny, nx, rows, cols) (for small simulations)."""
        return np.stack([self.frames_at(i) for i in range(self.n_theta)])

    def truth(self) -> dict[str, np.ndarray]:
        """True maps on the raster of ``reference_index`` (see :meth:`SXDMParticle.fields`)."""
        return self.particle.truth()

    def write(self, path: str | os.PathLike) -> None:
        """Write the scan to ``path`` in the FILE.h5 layout, one rocking angle at a time."""
        write_sxdm_file(
            path,
            (self.frames_at(i) for i in range(self.n_theta)),
            self.theta_deg,
            self.metadata,
            frame_shape=(self.particle.ny, self.particle.nx, *self.shape),
        )


def simulate_sxdm(
    particle: SXDMParticle | None = None,
    *,
    energy_keV: float = 10.0,
    distance_m: float = 0.5,
    pixel_size_um: float = 55.0,
    shape: tuple[int, int] = (64, 64),
    cen: tuple[float, float] | None = None,
    gamma_deg: float = 0.0,
    n_theta: int = 41,
    theta_range_deg: float = 2.0,
    theta_offset_deg: float = 0.0,
    peak_max_counts: float = 200.0,
    background_counts: float = 0.2,
    sigma_par_A_inv: float = 1.5e-3,
    sigma_perp_A_inv: float = 2.5e-3,
    drift_step_nm: float = 8.0,
    hot_pixels: Iterable[tuple[int, int]] = (),
    dead_pixels: Iterable[tuple[int, int]] = (),
    noise: bool = True,
    seed: int = 1,
) -> SXDMSimulation:
    """Set up a simulated SXDM scan around the (003) Bragg angle.

    Parameters
    ----------
    particle : SXDMParticle, optional
        Default: :func:`particle_preset` ("SC-NM91", "charged").
    energy_keV, distance_m, pixel_size_um : float
        Photon energy (keV), sample–detector distance (m), pixel pitch (µm).
    shape : (rows, cols)
        Detector crop shape (e.g. (256, 256) for the full pixel array).
    cen : (row, col), optional
        Pixel hit by the arm direction; default the crop centre plus a fractional offset.
    gamma_deg : float
        Detector elevation; δ is set to 2θ_B of ``particle.d_mean_A`` (with γ = 0 the nominal
        peak sits at ``cen``).
    n_theta, theta_range_deg, theta_offset_deg : int, float, float
        ``n_theta`` rocking angles over ±``theta_range_deg``/2 around θ_B + offset (degrees).
    peak_max_counts, background_counts : float
        Expected counts in the brightest voxel of a full-weight point, and background per pixel
        per frame.
    sigma_par_A_inv, sigma_perp_A_inv : float
        Gaussian peak widths along x̂ and across, Å⁻¹.
    drift_step_nm : float
        Standard deviation of the drift random-walk step between consecutive angles, nm.
    hot_pixels, dead_pixels : iterable of (row, col)
        Detector defects (hot: Poisson(5000) counts; dead: 0).
    noise : bool
        Poisson noise on/off.
    seed : int
        Seed for drift and noise.

    Returns
    -------
    SXDMSimulation
    """
    pt = particle or particle_preset()
    lam = HC_KEV_A / energy_keV
    s = lam / (2 * pt.d_mean_A)
    if not 0 < s < 1:
        raise ValueError(f"(003) d = {pt.d_mean_A} Å is not reachable at {energy_keV} keV")
    theta_b = float(np.rad2deg(np.arcsin(s)))
    rows, cols = shape
    if cen is None:
        cen = ((rows - 1) / 2 + 0.3, (cols - 1) / 2 - 0.2)
    theta = theta_b + theta_offset_deg + np.linspace(-theta_range_deg / 2, theta_range_deg / 2, n_theta)
    ref = n_theta // 2
    rng = np.random.default_rng([seed, 999_999])
    steps = rng.normal(0.0, drift_step_nm / pt.step_nm, (n_theta, 2))
    drift = np.cumsum(steps, axis=0)
    drift -= drift[ref]
    # with γ ≠ 0 the arm leaves the horizontal plane; δ solves |Q| = 2k sin θ_B for the arm ray
    g = np.deg2rad(gamma_deg)
    cos2t = np.cos(2 * np.deg2rad(theta_b))
    cosd = np.clip(cos2t / np.cos(g), -1, 1)
    delta = float(np.rad2deg(np.arccos(cosd)))
    md = {
        "energy_keV": float(energy_keV),
        "distance_m": float(distance_m),
        "pixel_size_um": float(pixel_size_um),
        "delta_deg": delta,
        "gamma_deg": float(gamma_deg),
        "step_nm": float(pt.step_nm),
        "hkl": np.array([0, 0, 3]),
        "cen_row": float(cen[0]),
        "cen_col": float(cen[1]),
    }
    return SXDMSimulation(
        particle=pt,
        theta_deg=theta,
        metadata=md,
        shape=(int(rows), int(cols)),
        drift_px=drift,
        reference_index=ref,
        peak_max_counts=float(peak_max_counts),
        background_counts=float(background_counts),
        sigma_par_A_inv=float(sigma_par_A_inv),
        sigma_perp_A_inv=float(sigma_perp_A_inv),
        hot_pixels=tuple(tuple(map(int, p)) for p in hot_pixels),
        dead_pixels=tuple(tuple(map(int, p)) for p in dead_pixels),
        noise=noise,
        seed=seed,
    )


def write_sxdm_file(
    path: str | os.PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    theta_deg: np.ndarray,
    metadata: Mapping[str, Any],
    *,
    frame_shape: tuple[int, int, int, int] | None = None,
    dtype: Any = np.uint32,
) -> None:
    """Write an SXDM scan in the FILE.h5 layout of issue 6.

    Parameters
    ----------
    path : path-like
        Output HDF5 file (overwritten).
    frames : ndarray (n_theta, ny, nx, rows, cols) or iterable of (ny, nx, rows, cols) arrays
        Counts per rocking angle (an iterable is written angle by angle: files larger than
        memory).
    theta_deg : ndarray, shape (n_theta,)
        Absolute rocking angles, degrees.
    metadata : mapping
        Geometry root attributes (``energy_keV, distance_m, pixel_size_um, delta_deg,
        gamma_deg, step_nm, hkl, cen_row, cen_col``) and any extra scalar attributes.
    frame_shape : (ny, nx, rows, cols), optional
        Needed when ``frames`` is an iterator.
    dtype : numpy dtype
        Stored count type.
    """
    import h5py

    theta = np.asarray(theta_deg, dtype=np.float64)
    if isinstance(frames, np.ndarray):
        if frames.ndim != 5 or frames.shape[0] != theta.size:
            raise ValueError(f"frames must be (n_theta={theta.size}, ny, nx, rows, cols), got {frames.shape}")
        frame_shape = frames.shape[1:]
        it: Iterable[np.ndarray] = iter(frames)
    else:
        if frame_shape is None:
            raise ValueError("frame_shape=(ny, nx, rows, cols) is required when frames is an iterator")
        it = frames
    ny, nx, rows, cols = frame_shape
    with h5py.File(path, "w") as f:
        for k, v in metadata.items():
            f.attrs[k] = v
        f.create_dataset("theta_deg", data=theta)
        ds = f.create_dataset(
            "frames", shape=(theta.size, ny, nx, rows, cols), dtype=dtype, chunks=(1, 1, nx, rows, cols)
        )
        n = 0
        for i, fr in enumerate(it):
            if i >= theta.size:
                raise ValueError(f"more rocking angles of frames than theta_deg entries ({theta.size})")
            if fr.shape != (ny, nx, rows, cols):
                raise ValueError(f"frames at angle {i} have shape {fr.shape}, expected {(ny, nx, rows, cols)}")
            ds[i] = fr
            n += 1
        if n != theta.size:
            raise ValueError(f"got frames for {n} rocking angles but {theta.size} theta_deg entries")
