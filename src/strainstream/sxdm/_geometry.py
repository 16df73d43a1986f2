"""SXDM diffraction geometry: detector pixel + rocking angle -> sample-frame Q (Å⁻¹).

Conventions (issue 6, DESIGN.md):

- Lab frame: +y along the beam, +z up, +x = y × z. k = 2π/λ, λ[Å] = 12.398419843/E[keV].
- Rocking: a sample-frame vector v is ``v_lab = Rmz(θ)·v``, Rmz a right-handed rotation about
  −z (``Rmz(θ)·x̂ = (cos θ, −sin θ, 0)``); sample and lab frames coincide at θ = 0.
- Detector arm n̂ = (sin δ cos γ, cos δ cos γ, sin γ). Column index grows along
  e_col = (cos δ, −sin δ, 0), row index along e_row = (sin δ sin γ, cos δ sin γ, −cos γ).
  Pixel (r, c) sits at P = D·n̂ + (c − cen_col)·p·e_col + (r − cen_row)·p·e_row;
  Q_lab = k(P/|P| − ŷ); Q_sample = Rmz(θ)ᵀ·Q_lab.
- The reflection's nominal direction is +x in the sample frame: d = 2π/|Q|,
  θxy = atan2(Q_y, Q_x), θxz = atan2(Q_z, Q_x) (degrees).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._errors import SXDMMetadataError

HC_KEV_A = 12.398419843  # λ[Å]·E[keV]

#: Root attributes / metadata keys the geometry needs.
GEOMETRY_KEYS = (
    "energy_keV",
    "distance_m",
    "pixel_size_um",
    "delta_deg",
    "gamma_deg",
    "step_nm",
    "hkl",
    "cen_row",
    "cen_col",
)


def rocking_matrix(theta_deg: float | np.ndarray) -> np.ndarray:
    """Rocking rotation Rmz(θ): right-handed rotation about −z.

    Parameters
    ----------
    theta_deg : float or ndarray, shape (n,)
        Rocking angle(s), degrees.

    Returns
    -------
    ndarray, shape (3, 3) or (n, 3, 3)
        ``v_lab = R @ v_sample``; ``R @ x̂ = (cos θ, −sin θ, 0)``.
    """
    t = np.deg2rad(np.asarray(theta_deg, dtype=np.float64))
    c, s = np.cos(t), np.sin(t)
    z, o = np.zeros_like(t), np.ones_like(t)
    m = np.stack([np.stack([c, s, z], -1), np.stack([-s, c, z], -1), np.stack([z, z, o], -1)], -2)
    return m


def q_to_d_and_tilts(q_sample_A_inv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """d-spacing and the two rotations from sample-frame Q vectors.

    Parameters
    ----------
    q_sample_A_inv : ndarray, shape (..., 3)
        Q in the sample frame, Å⁻¹.

    Returns
    -------
    d_spacing_A : ndarray, shape (...)
        d = 2π/|Q|, Å.
    tilt_xy_deg, tilt_xz_deg : ndarray, shape (...)
        atan2(Q_y, Q_x) and atan2(Q_z, Q_x), degrees.
    """
    q = np.asarray(q_sample_A_inv, dtype=np.float64)
    if q.shape[-1:] != (3,):
        raise ValueError(f"Q vectors must have a last axis of length 3, got shape {q.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        d = 2.0 * np.pi / np.linalg.norm(q, axis=-1)
    txy = np.rad2deg(np.arctan2(q[..., 1], q[..., 0]))
    txz = np.rad2deg(np.arctan2(q[..., 2], q[..., 0]))
    return d, txy, txz


@dataclass(frozen=True)
class SXDMGeometry:
    """Detector/beam geometry of an SXDM measurement (one geometry class for files and live runs).

    Attributes
    ----------
    energy_keV : float
        Photon energy, keV.
    distance_m : float
        Sample–detector distance along the detector arm, m.
    pixel_size_um : float
        Detector pixel pitch, µm (square pixels).
    delta_deg, gamma_deg : float
        Detector arm angles (δ horizontal towards +x, γ elevation), degrees.
    cen_row, cen_col : float
        Pixel (stored-frame coordinates, may be fractional) hit by the ray along the arm n̂.
    step_nm : float
        Raster step, nm.
    hkl : tuple of int
        The reflection, e.g. (0, 0, 3); informational.
    """

    energy_keV: float
    distance_m: float
    pixel_size_um: float
    delta_deg: float
    gamma_deg: float
    cen_row: float
    cen_col: float
    step_nm: float = 50.0
    hkl: tuple[int, ...] = field(default=(0, 0, 3))

    def __post_init__(self) -> None:
        for name in ("energy_keV", "distance_m", "pixel_size_um", "step_nm"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise SXDMMetadataError(f"geometry: {name} must be a positive finite number, got {v!r}")
        for name in ("delta_deg", "gamma_deg", "cen_row", "cen_col"):
            v = getattr(self, name)
            if not np.isfinite(v):
                raise SXDMMetadataError(f"geometry: {name} must be finite, got {v!r}")

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_metadata(cls, md: Mapping[str, Any]) -> SXDMGeometry:
        """Build from a metadata dict or HDF5 root attributes (``h5py.File(...).attrs``).

        Parameters
        ----------
        md : mapping
            Must hold ``energy_keV, distance_m, pixel_size_um, delta_deg, gamma_deg, step_nm,
            hkl, cen_row, cen_col``.

        Raises
        ------
        SXDMMetadataError
            If keys are missing or values are not numbers.
        """
        missing = [k for k in GEOMETRY_KEYS if k not in md]
        if missing:
            raise SXDMMetadataError(
                f"missing SXDM geometry metadata: {', '.join(missing)} "
                f"(needed: {', '.join(GEOMETRY_KEYS)}); add them as root attributes / metadata"
            )
        vals: dict[str, Any] = {}
        for k in GEOMETRY_KEYS:
            if k == "hkl":
                continue
            try:
                vals[k] = float(np.asarray(md[k]).reshape(()))
            except (TypeError, ValueError) as exc:
                raise SXDMMetadataError(f"metadata {k!r} must be one number, got {md[k]!r}") from exc
        vals["hkl"] = _parse_hkl(md["hkl"])
        return cls(**vals)

    def to_metadata(self) -> dict[str, Any]:
        """Metadata dict with the :data:`GEOMETRY_KEYS` (inverse of :meth:`from_metadata`)."""
        return {
            "energy_keV": self.energy_keV,
            "distance_m": self.distance_m,
            "pixel_size_um": self.pixel_size_um,
            "delta_deg": self.delta_deg,
            "gamma_deg": self.gamma_deg,
            "step_nm": self.step_nm,
            "hkl": np.asarray(self.hkl, dtype=np.int64),
            "cen_row": self.cen_row,
            "cen_col": self.cen_col,
        }

    # ----------------------------------------------------------------- derived quantities
    @property
    def wavelength_A(self) -> float:
        """Wavelength λ = 12.398419843/E[keV], Å."""
        return HC_KEV_A / self.energy_keV

    @property
    def k_A_inv(self) -> float:
        """Wave number k = 2π/λ, Å⁻¹."""
        return 2.0 * np.pi / self.wavelength_A

    def arm_vectors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit vectors (n̂, e_col, e_row) of the detector arm, lab frame, each shape (3,)."""
        d, g = np.deg2rad(self.delta_deg), np.deg2rad(self.gamma_deg)
        n = np.array([np.sin(d) * np.cos(g), np.cos(d) * np.cos(g), np.sin(g)])
        e_col = np.array([np.cos(d), -np.sin(d), 0.0])
        e_row = np.array([np.sin(d) * np.sin(g), np.cos(d) * np.sin(g), -np.cos(g)])
        return n, e_col, e_row

    def q_lab(self, rows: np.ndarray | float, cols: np.ndarray | float) -> np.ndarray:
        """Lab-frame Q of detector positions (fractional pixel coordinates allowed).

        Parameters
        ----------
        rows, cols : ndarray or float (broadcastable)
            Row and column pixel coordinates in the stored frame.

        Returns
        -------
        ndarray, shape (broadcast shape, 3)
            Q_lab = k(P/|P| − ŷ), Å⁻¹.
        """
        n, e_col, e_row = self.arm_vectors()
        p_m = self.pixel_size_um * 1e-6
        r = np.asarray(rows, dtype=np.float64)[..., None]
        c = np.asarray(cols, dtype=np.float64)[..., None]
        pos = self.distance_m * n + (c - self.cen_col) * p_m * e_col + (r - self.cen_row) * p_m * e_row
        kf = pos / np.linalg.norm(pos, axis=-1, keepdims=True)
        return self.k_A_inv * (kf - np.array([0.0, 1.0, 0.0]))

    def pixel_q_lab(self, shape: tuple[int, int]) -> np.ndarray:
        """Lab-frame Q of every pixel of a (rows, cols) frame, shape (rows, cols, 3), Å⁻¹."""
        rows, cols = _check_shape(shape)
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        return self.q_lab(r, c)

    def pixel_q_vectors(self, theta_deg: float, shape: tuple[int, int]) -> np.ndarray:
        """Sample-frame Q of every detector pixel at one rocking angle.

        Parameters
        ----------
        theta_deg : float
            Rocking angle θ, degrees.
        shape : (rows, cols)
            Frame shape (stored frame, may be a crop; ``cen_row/cen_col`` refer to it).

        Returns
        -------
        ndarray, shape (rows, cols, 3)
            Q_sample = Rmz(θ)ᵀ·Q_lab, Å⁻¹.
        """
        q = self.pixel_q_lab(shape)
        return q @ rocking_matrix(float(theta_deg))  # (Rᵀ q)ᵢ = Σ_j R_ji q_j

    def bragg_angle_deg(self, d_spacing_A: float) -> float:
        """Bragg angle θ_B = asin(λ/2d) for a d-spacing (Å), degrees."""
        s = self.wavelength_A / (2.0 * d_spacing_A)
        if not 0 < s < 1:
            raise ValueError(f"no Bragg reflection for d = {d_spacing_A} Å at λ = {self.wavelength_A} Å")
        return float(np.rad2deg(np.arcsin(s)))


def pixel_q_vectors(geometry: SXDMGeometry, theta_deg: float, shape: tuple[int, int]) -> np.ndarray:
    """Sample-frame Q (Å⁻¹) of all pixels at rocking angle ``theta_deg``; shape (rows, cols, 3).

    Functional form of :meth:`SXDMGeometry.pixel_q_vectors`.
    """
    return geometry.pixel_q_vectors(theta_deg, shape)


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"detector frame shape must be (rows, cols) with positive sizes, got {shape}")
    return int(shape[0]), int(shape[1])


def _parse_hkl(value: Any) -> tuple[int, ...]:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        s = value.strip().strip("()[]").replace(",", " ").split()
        if len(s) == 1 and s[0].lstrip("-").isdigit() and len(s[0]) == 3:
            s = list(s[0])
        try:
            return tuple(int(x) for x in s)
        except ValueError as exc:
            raise SXDMMetadataError(f"metadata 'hkl' not understood: {value!r}; use e.g. [0, 0, 3]") from exc
    try:
        return tuple(int(x) for x in np.asarray(value).ravel())
    except (TypeError, ValueError) as exc:
        raise SXDMMetadataError(f"metadata 'hkl' not understood: {value!r}; use e.g. [0, 0, 3]") from exc
