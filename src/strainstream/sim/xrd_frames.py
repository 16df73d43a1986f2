"""Area-detector frames of a charging coin cell (and of a CeO2 calibrant), forward model.

Geometry comes from pyFAI: a :class:`DetectorGeometry` (PONI parameters, pixel size,
wavelength) builds one ``AzimuthalIntegrator``; the Q of every pixel centre, the solid angle
and (optionally) the polarisation factor are computed once per geometry by
:class:`XRDFrameSimulator` and reused for every frame.

The 1-D model I(Q) (the "truth" a frame is drawn from) is

    I(Q) = Σ_phases Σ_hkl A_hkl · pV(Q − Q_hkl; w_hkl, η) + B(Q)

* Q_hkl from the hexagonal d-spacing 1/d² = 4(h²+hk+k²)/(3a²) + l²/c² (layered R-3m
  phases) or the cubic one (Al, CeO2); Q = 2π/d.
* A_hkl = scale · fraction · Σ|F_hkl|² · L(θ) / V_cell with structure factors from the atomic
  positions (Cromer–Mann form factors, overall B), Lorentz factor L = 1/(sin²θ cosθ); the
  multiplicity is included by summing |F|² over all (hkl) with the same d.
* pV is a unit-area pseudo-Voigt with mixing η (``peak_eta``, default 0.4) and full width at half maximum (Å⁻¹)

      w = sqrt(w_sample² + w_inst²),   w_sample = 2πK/D + 2εQ  (K = 0.9),
      w_inst = (2π/λ)·cosθ·Δ2θ_inst   (Δ2θ_inst in radians, default 0.02°, or Caglioti's
                                     Δ2θ_inst² = U tan²θ + V tanθ + W)

  w_sample is the Williamson–Hall FWHM of DESIGN.md written in Q (β_2θ cosθ/(Kλ) = 1/D +
  4ε sinθ/(Kλ) with ΔQ = (2π/λ)cosθ·β_2θ), i.e. β is the FWHM and the instrumental breadth
  is removed in quadrature. Peaks are evaluated over ±30 w (tails beyond are cut).
* B(Q) is a smooth background: constant + low-Q air/beam-stop scatter + two broad amorphous
  humps (electrolyte/separator ≈1.6 Å⁻¹, cell parts ≈3.0 Å⁻¹).

A frame holds, for every pixel, I(Q_pixel) (linear interpolation of the 1-D model sampled on
a uniform grid of step ``q_step_A_inv``) times the relative solid angle (1 at the PONI, as in
pyFAI's ``solidAngleArray``) and, if requested, the polarisation factor; then counting noise:
exact Poisson below 30 expected counts and its normal approximation N(μ, μ) rounded above
(``exact_poisson=True`` for exact Poisson everywhere, about 2× slower); then saturation and the
dead/hot pixel map. pyFAI ``integrate1d(..., unit="q_A^-1", correctSolidAngle=True)`` of a
noise-free frame therefore returns I(Q).

Rebuilding the geometry in the analysis: ``DetectorGeometry.from_dict(frame.geometry)
.integrator()``, or ``write_poni(path)`` then ``pyFAI.load(path)``, or by hand
``AzimuthalIntegrator(dist=distance_m, poni1=poni1_m, poni2=poni2_m, rot1=rot1_rad, ...,
detector=Detector(pixel1=p, pixel2=p, max_shape=shape), wavelength=wavelength_A*1e-10)``
with p = pixel_size_um·1e-6 (pyFAI's default detector orientation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import _crystal
from .cell import LatticePhase

__all__ = [
    "AL_A_A",
    "CEO2_A_A",
    "DetectorGeometry",
    "PeakList",
    "SimulatedFrame",
    "XRDFrameSimulator",
    "layered_peak_positions",
    "q_to_two_theta_deg",
    "two_theta_deg_to_q",
]

AL_A_A = _crystal.AL_A_A
CEO2_A_A = _crystal.CEO2_A_A
K_SCHERRER = 0.9
PV_ETA = 0.4
_WINDOW_FWHM = 30.0


def q_to_two_theta_deg(q_A_inv: np.ndarray | float, wavelength_A: float) -> np.ndarray | float:
    """Scattering angle 2θ (degrees) of momentum transfer Q (Å⁻¹): Q = 4π sinθ/λ."""
    return np.degrees(2.0 * np.arcsin(np.asarray(q_A_inv) * wavelength_A / (4.0 * np.pi)))


def two_theta_deg_to_q(two_theta_deg: np.ndarray | float, wavelength_A: float) -> np.ndarray | float:
    """Momentum transfer Q (Å⁻¹) of scattering angle 2θ (degrees)."""
    return 4.0 * np.pi * np.sin(np.radians(np.asarray(two_theta_deg)) / 2.0) / wavelength_A


def layered_peak_positions(
    a_A: float, c_A: float, wavelength_A: float, hkl: Sequence[Sequence[int]]
) -> dict[str, np.ndarray]:
    """Exact positions of layered (hexagonal R-3m) reflections.

    Parameters
    ----------
    a_A, c_A : float
        Lattice parameters (Å).
    wavelength_A : float
        X-ray wavelength (Å).
    hkl : sequence of (h, k, l), length n

    Returns
    -------
    dict with ``d_A``, ``q_A_inv``, ``two_theta_deg`` (each shape (n,)).
    """
    q = _crystal.hexagonal_q_A_inv(np.asarray(hkl, dtype=float), a_A, c_A)
    return {"d_A": 2 * np.pi / q, "q_A_inv": q, "two_theta_deg": q_to_two_theta_deg(q, wavelength_A)}


@dataclass(frozen=True)
class DetectorGeometry:
    """Flat-panel detector geometry in pyFAI's PONI convention.

    Parameters
    ----------
    distance_m : float
        Sample–PONI distance (m).
    poni1_m, poni2_m : float or None
        PONI coordinates along detector rows (slow, dim 1) and columns (fast, dim 2) in m,
        measured from the detector corner; None puts the PONI at the detector centre.
    rot1_rad, rot2_rad, rot3_rad : float
        pyFAI detector rotations (radians).
    wavelength_A : float
        X-ray wavelength (Å).
    pixel_size_um : float
        Square pixel size (µm).
    shape : (int, int)
        Detector (rows, columns).
    """

    distance_m: float = 1.0
    poni1_m: float | None = 0.20437
    poni2_m: float | None = 0.20562
    rot1_rad: float = 0.0
    rot2_rad: float = 0.0
    rot3_rad: float = 0.0
    wavelength_A: float = 0.1665
    pixel_size_um: float = 200.0
    shape: tuple[int, int] = (2048, 2048)

    def __post_init__(self) -> None:
        if len(self.shape) != 2 or min(self.shape) < 8:
            raise ValueError(f"shape must be (rows, cols) with at least 8 pixels each, got {self.shape}")
        for name in ("distance_m", "wavelength_A", "pixel_size_um"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        if self.poni1_m is None:
            object.__setattr__(self, "poni1_m", self.shape[0] * self.pixel_size_um * 1e-6 / 2)
        if self.poni2_m is None:
            object.__setattr__(self, "poni2_m", self.shape[1] * self.pixel_size_um * 1e-6 / 2)
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))

    @classmethod
    def binned(cls, binning: int, **kwargs) -> DetectorGeometry:
        """The default 2048² / 200 µm detector binned by ``binning`` (e.g. 4 → 512², 800 µm).

        The field of view, PONI and Q range stay those of the full detector; ``kwargs``
        override other fields (distance_m, wavelength_A, rotations, poni).
        """
        if int(binning) < 1 or 2048 % int(binning):
            raise ValueError(f"binning must be a divisor of 2048, got {binning!r}")
        b = int(binning)
        kwargs.setdefault("shape", (2048 // b, 2048 // b))
        kwargs.setdefault("pixel_size_um", 200.0 * b)
        return cls(**kwargs)

    def to_dict(self) -> dict:
        """JSON-serialisable description (lengths in m, angles in rad, λ in Å, pixel in µm).

        The keys are those of the analysis' geometry dict (``strainstream.xrd.GEOMETRY_KEYS``:
        pyFAI rotations ``rot1``..``rot3`` in radians), so a simulated detector's geometry
        can be recorded in run metadata and used by the analysis as is.
        """
        return {
            "distance_m": self.distance_m,
            "poni1_m": self.poni1_m,
            "poni2_m": self.poni2_m,
            "rot1": self.rot1_rad,
            "rot2": self.rot2_rad,
            "rot3": self.rot3_rad,
            "wavelength_A": self.wavelength_A,
            "pixel_size_um": self.pixel_size_um,
            "shape": list(self.shape),
        }

    @classmethod
    def from_dict(cls, d: dict) -> DetectorGeometry:
        """Inverse of :meth:`to_dict` (``rot1``/``rot2``/``rot3`` accepted for rot*_rad)."""
        d = dict(d)
        for i in (1, 2, 3):
            if f"rot{i}" in d:
                d[f"rot{i}_rad"] = d.pop(f"rot{i}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown geometry keys {sorted(unknown)}; expected {sorted(known)}")
        if "shape" in d:
            d["shape"] = tuple(d["shape"])
        return cls(**d)

    def write_poni(self, path) -> None:
        """Write this geometry as a pyFAI PONI file (overwrites ``path``); read it back with
        ``pyFAI.load(path)``."""
        import os

        if os.path.exists(path):
            os.remove(path)  # pyFAI appends to an existing file
        self.integrator().save(str(path))

    def integrator(self):
        """A pyFAI ``AzimuthalIntegrator`` for this geometry (generic detector, default
        orientation, pixel1 = pixel2 = pixel_size_um, max_shape = shape)."""
        from pyFAI.detectors import Detector
        from pyFAI.integrator.azimuthal import AzimuthalIntegrator

        p = self.pixel_size_um * 1e-6
        det = Detector(pixel1=p, pixel2=p, max_shape=self.shape)
        return AzimuthalIntegrator(
            dist=self.distance_m, poni1=self.poni1_m, poni2=self.poni2_m,
            rot1=self.rot1_rad, rot2=self.rot2_rad, rot3=self.rot3_rad,
            detector=det, wavelength=self.wavelength_A * 1e-10,
        )


@dataclass
class SimulatedFrame:
    """One simulated detector frame and the 1-D model it was drawn from.

    Attributes
    ----------
    image : ndarray, shape geometry.shape, uint16 (uint32 if saturation > 65535)
        Counts.
    q_A_inv : ndarray, shape (m,)
        Uniform Q grid of the 1-D model (Å⁻¹).
    intensity : ndarray, shape (m,)
        Model I(Q): expected counts per pixel of unit relative solid angle, no noise.
    geometry : dict
        :meth:`DetectorGeometry.to_dict`.
    phases : list of dict
        The layered phases (a_A, c_A, fraction, microstrain, size_nm, ...) or the calibrant.
    mask : ndarray of bool, shape geometry.shape
        True for defective (dead or hot) pixels.
    """

    image: np.ndarray
    q_A_inv: np.ndarray
    intensity: np.ndarray
    geometry: dict
    phases: list[dict]
    mask: np.ndarray
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PeakList:
    """Peaks of one phase in the 1-D model.

    Attributes
    ----------
    q : ndarray, shape (n,)
        Peak positions Q (Å⁻¹).
    area : ndarray, shape (n,)
        Integrated intensity of each peak (counts·Å⁻¹ per unit-solid-angle pixel).
    fwhm : ndarray, shape (n,)
        Total FWHM in Q (Å⁻¹), sample and instrument combined in quadrature.
    """

    q: np.ndarray
    area: np.ndarray
    fwhm: np.ndarray


class XRDFrameSimulator:
    """Frame generator for one detector geometry (build once, call per frame).

    Parameters
    ----------
    geometry : DetectorGeometry or dict or None
        Detector geometry (default :class:`DetectorGeometry()`: 2048², 200 µm, 1 m,
        λ = 0.1665 Å, PONI near the centre).
    q_step_A_inv : float
        Step of the 1-D model grid (Å⁻¹).
    instrument_fwhm_2theta_deg : float
        Instrumental (Gaussian-added-in-quadrature) FWHM in 2θ (degrees), the same at all
        angles (ignored when ``instrument_caglioti_deg2`` is given).
    instrument_caglioti_deg2 : (float, float, float), optional
        Caglioti (U, V, W) in deg²: instrumental FWHM Δ2θ² = U tan²θ + V tanθ + W (a broad,
        angle-dependent instrument such as a 17-BM-like set-up).
    peak_eta : float
        Pseudo-Voigt mixing η of every peak (default 0.4).
    polarization_factor : float or None
        pyFAI polarisation factor applied to frames (None: no polarisation effect).
    dead_pixel_fraction, hot_pixel_fraction : float
        Fractions of defective pixels (a fixed map drawn from ``defect_seed``).
    defect_seed : int
        Seed of the defect map (the same for all frames of this simulator).
    saturation_counts : int
        Counts are clipped to this value; hot pixels read it.
    """

    def __init__(
        self,
        geometry: DetectorGeometry | dict | None = None,
        *,
        q_step_A_inv: float = 5e-4,
        instrument_fwhm_2theta_deg: float = 0.02,
        instrument_caglioti_deg2: tuple[float, float, float] | None = None,
        peak_eta: float = PV_ETA,
        polarization_factor: float | None = None,
        dead_pixel_fraction: float = 0.0,
        hot_pixel_fraction: float = 0.0,
        defect_seed: int = 12345,
        saturation_counts: int = 65535,
    ) -> None:
        if geometry is None:
            geometry = DetectorGeometry()
        elif isinstance(geometry, dict):
            geometry = DetectorGeometry.from_dict(geometry)
        elif not isinstance(geometry, DetectorGeometry):
            raise ValueError("geometry must be a DetectorGeometry, a geometry dict or None")
        if not (0 < q_step_A_inv < 0.01):
            raise ValueError("q_step_A_inv must be in (0, 0.01) Å⁻¹")
        if not (instrument_fwhm_2theta_deg > 0):
            raise ValueError("instrument_fwhm_2theta_deg must be > 0 degrees")
        if instrument_caglioti_deg2 is not None:
            u, v, w = (float(x) for x in instrument_caglioti_deg2)
            t = np.linspace(0.0, 1.0, 201)  # tanθ up to 45°
            if not (w > 0 and np.all(u * t * t + v * t + w > 0)):
                raise ValueError(f"instrument_caglioti_deg2 (U, V, W) = {instrument_caglioti_deg2!r}"
                                 " gives a non-positive FWHM² for 2θ ≤ 90°")
            instrument_caglioti_deg2 = (u, v, w)
        if not (0.0 <= peak_eta <= 1.0):
            raise ValueError(f"peak_eta must be in [0, 1], got {peak_eta!r}")
        for name, v in (("dead_pixel_fraction", dead_pixel_fraction),
                        ("hot_pixel_fraction", hot_pixel_fraction)):
            if not (0.0 <= v < 0.5):
                raise ValueError(f"{name} must be in [0, 0.5), got {v!r}")
        if int(saturation_counts) < 1:
            raise ValueError("saturation_counts must be >= 1")
        self.geometry = geometry
        self.wavelength_A = geometry.wavelength_A
        self.instrument_fwhm_2theta_deg = float(instrument_fwhm_2theta_deg)
        self.instrument_caglioti_deg2 = instrument_caglioti_deg2
        self.peak_eta = float(peak_eta)
        self.saturation_counts = int(saturation_counts)
        self.ai = geometry.integrator()
        q_pix = self.ai.array_from_unit(shape=geometry.shape, typ="center", unit="q_A^-1",
                                        scale=True)
        q_pix = np.ascontiguousarray(q_pix, dtype=np.float64)
        self.q_pixel_A_inv = q_pix
        self.q_max_A_inv = float(q_pix.max()) * 1.01 + 0.05
        self.q_step_A_inv = float(q_step_A_inv)
        n = int(math.ceil(self.q_max_A_inv / self.q_step_A_inv)) + 2
        self.q_A_inv = np.arange(n) * self.q_step_A_inv
        weight = np.asarray(self.ai.solidAngleArray(geometry.shape), dtype=np.float64)
        if polarization_factor is not None:
            weight = weight * np.asarray(
                self.ai.polarization(geometry.shape, factor=float(polarization_factor)),
                dtype=np.float64,
            )
        pos = q_pix / self.q_step_A_inv
        i0 = np.floor(pos).astype(np.intp)
        frac = pos - i0
        self._i0 = i0.ravel()
        self._w1 = (frac * weight).ravel()
        self._w0 = ((1.0 - frac) * weight).ravel()
        self.pixel_weight = weight
        rng = np.random.default_rng(defect_seed)
        u = rng.random(geometry.shape)
        self.dead_mask = u < dead_pixel_fraction
        self.hot_mask = (u >= dead_pixel_fraction) & (u < dead_pixel_fraction + hot_pixel_fraction)
        self.defect_mask = self.dead_mask | self.hot_mask
        self._dtype = np.uint16 if self.saturation_counts <= 65535 else np.uint32

    # ------------------------------------------------------------------ 1-D model
    def _width(self, q: np.ndarray, size_nm: float, microstrain: float) -> np.ndarray:
        sample = 2 * np.pi * K_SCHERRER / (size_nm * 10.0) + 2.0 * microstrain * q
        inst = self.instrument_fwhm_A_inv(q)
        return np.sqrt(sample**2 + inst**2)

    def instrument_fwhm_2theta_deg_at(self, q: np.ndarray) -> np.ndarray:
        """Instrumental FWHM in 2θ (degrees) at Q (Å⁻¹): constant or Caglioti's law."""
        q = np.asarray(q, dtype=float)
        if self.instrument_caglioti_deg2 is None:
            return np.full(q.shape, self.instrument_fwhm_2theta_deg)
        u, v, w = self.instrument_caglioti_deg2
        t = np.tan(np.arcsin(q * self.wavelength_A / (4 * np.pi)))
        return np.sqrt(u * t * t + v * t + w)

    def instrument_fwhm_A_inv(self, q: np.ndarray) -> np.ndarray:
        """Instrumental FWHM in Q (Å⁻¹) at Q: (2π/λ)·cosθ·Δ2θ (Δ2θ in radians)."""
        q = np.asarray(q, dtype=float)
        cos_t = np.sqrt(1.0 - (q * self.wavelength_A / (4 * np.pi)) ** 2)
        return (2 * np.pi / self.wavelength_A) * cos_t * np.radians(
            self.instrument_fwhm_2theta_deg_at(q))

    def _lorentz(self, q: np.ndarray) -> np.ndarray:
        sin_t = q * self.wavelength_A / (4 * np.pi)
        return 1.0 / (sin_t**2 * np.sqrt(1.0 - sin_t**2))

    def _peaks(self, refl: _crystal.ReflectionList, weight: float, v_cell: float,
               size_nm: float, microstrain: float) -> PeakList:
        q = refl.q_A_inv
        area = weight * refl.f2_sum * self._lorentz(q) / v_cell
        return PeakList(q, area, self._width(q, size_nm, microstrain))

    def layered_peaks(self, phase: LatticePhase | dict, transition_metals: dict[str, float],
                      scale: float = 1.0) -> PeakList:
        """Peaks (Q, area, FWHM) of one layered phase up to the detector's largest Q.

        Parameters
        ----------
        phase : LatticePhase or dict
            a_A, c_A (Å), fraction, microstrain (ε), size_nm, optional li_occupancy.
        transition_metals : dict
            3a-site occupancy, e.g. ``{"Ni": 0.9, "Co": 0.1}``.
        scale : float
            Intensity scale.

        Returns
        -------
        PeakList
        """
        ph = _phase_dict(phase)
        _check_phase(ph)
        refl = _crystal.layered_reflections(
            ph["a_A"], ph["c_A"], self.q_max_A_inv, transition_metals,
            li_occupancy=ph.get("li_occupancy", 1.0),
        )
        v_cell = math.sqrt(3) / 2 * ph["a_A"] ** 2 * ph["c_A"]
        return self._peaks(refl, scale * ph["fraction"], v_cell, ph["size_nm"], ph["microstrain"])

    def _render(self, peaks: list[PeakList]) -> np.ndarray:
        """Sum of unit-area pseudo-Voigt peaks on the model grid (vectorised over peaks)."""
        grid = self.q_A_inv
        out = np.zeros_like(grid)
        if not peaks:
            return out
        q = np.concatenate([p.q for p in peaks])
        area = np.concatenate([p.area for p in peaks])
        w = np.concatenate([p.fwhm for p in peaks])
        half = np.ceil(_WINDOW_FWHM * w / self.q_step_A_inv).astype(np.intp)
        # group peaks by window length to keep the (peaks × window) blocks rectangular
        for hw in np.unique(np.minimum(half, 20000)):
            sel = half == hw
            centre = np.rint(q[sel] / self.q_step_A_inv).astype(np.intp)
            idx = centre[:, None] + np.arange(-hw, hw + 1)[None, :]
            valid = (idx >= 0) & (idx < grid.size)
            idxc = np.clip(idx, 0, grid.size - 1)
            x = grid[idxc] - q[sel][:, None]
            ww = w[sel][:, None]
            hwhm = ww / 2
            lor = (hwhm / np.pi) / (x * x + hwhm * hwhm)
            sig = ww / (2 * math.sqrt(2 * math.log(2)))
            gau = np.exp(-0.5 * (x / sig) ** 2) / (sig * math.sqrt(2 * math.pi))
            val = area[sel][:, None] * (self.peak_eta * lor + (1 - self.peak_eta) * gau)
            out += np.bincount(idxc[valid], weights=val[valid], minlength=grid.size)
        return out

    def background(self, q_A_inv: np.ndarray, level: float = 1.0) -> np.ndarray:
        """Smooth background B(Q) in counts per unit-solid-angle pixel (``level`` scales it).

        Parameters
        ----------
        q_A_inv : ndarray, any shape
        level : float

        Returns
        -------
        ndarray, same shape
        """
        q = np.asarray(q_A_inv, dtype=float)
        b = (
            120.0
            + 400.0 * np.exp(-q / 0.35)
            + 260.0 * np.exp(-0.5 * ((q - 1.6) / 0.45) ** 2)
            + 110.0 * np.exp(-0.5 * ((q - 3.0) / 0.9) ** 2)
            - 4.0 * q
        )
        return level * np.maximum(b, 20.0)

    def profile(
        self,
        phases: Sequence[LatticePhase | dict],
        *,
        transition_metals: dict[str, float] | None = None,
        scale: float = 1.0,
        al_scale: float = 0.35,
        al_a_A: float = AL_A_A,
        background_level: float = 1.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The 1-D model I(Q) of the cell: layered phases + Al current collector + background.

        Parameters
        ----------
        phases : sequence of LatticePhase or dict
            Each with a_A, c_A (Å), fraction, microstrain (ε), size_nm and optionally
            li_occupancy (default 1).
        transition_metals : dict, optional
            3a-site occupancy (default {"Ni": 0.9, "Co": 0.1}).
        scale : float
            Overall intensity scale (1 gives a pristine (003) peak of ≈2·10⁴ counts).
        al_scale : float
            Al ring intensity relative to the cathode (0 disables Al).
        al_a_A : float
            Al lattice constant (Å).
        background_level : float
            Multiplier of :meth:`background`.

        Returns
        -------
        q_A_inv : ndarray, shape (m,)
            Uniform grid, Å⁻¹.
        intensity : ndarray, shape (m,)
            Expected counts per pixel of unit relative solid angle.
        """
        tm = transition_metals or {"Ni": 0.9, "Co": 0.1}
        if not phases:
            raise ValueError("phases is empty: give at least one layered phase")
        peaks = [self.layered_peaks(p, tm, scale * _LAYERED_SCALE) for p in phases]
        if al_scale > 0:
            refl = _crystal.aluminium_reflections(self.q_max_A_inv, al_a_A)
            peaks.append(self._peaks(refl, scale * al_scale * _LAYERED_SCALE * _AL_NORM,
                                     al_a_A**3, 1000.0, 1e-4))
        return self.q_A_inv, self._render(peaks) + self.background(self.q_A_inv,
                                                                    background_level * scale)

    def ceo2_profile(self, *, scale: float = 1.0, size_nm: float = 300.0,
                     background_level: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
        """1-D model of the CeO2 calibrant (NIST SRM 674b, a = 5.4116 Å) + background.

        Returns
        -------
        q_A_inv, intensity : ndarray, shape (m,)
        """
        refl = _crystal.ceo2_reflections(self.q_max_A_inv)
        peaks = [self._peaks(refl, scale * _CEO2_SCALE, CEO2_A_A**3, size_nm, 0.0)]
        return self.q_A_inv, self._render(peaks) + self.background(self.q_A_inv,
                                                                    background_level * scale)

    # ------------------------------------------------------------------ 2-D frames
    def expected_image(self, intensity: np.ndarray) -> np.ndarray:
        """Noise-free expected counts per pixel from a 1-D model on :attr:`q_A_inv`.

        Parameters
        ----------
        intensity : ndarray, shape (m,) (same grid as :attr:`q_A_inv`)

        Returns
        -------
        ndarray, shape geometry.shape, float64
        """
        intensity = np.asarray(intensity, dtype=np.float64)
        if intensity.shape != self.q_A_inv.shape:
            raise ValueError(
                f"intensity must be sampled on the simulator grid, shape {self.q_A_inv.shape}, "
                f"got {intensity.shape}"
            )
        if not np.all(np.isfinite(intensity)):
            raise ValueError("intensity contains NaN or inf")
        if np.any(intensity < 0):
            raise ValueError("intensity must be >= 0 (expected counts); got negative values")
        ext = np.append(intensity, intensity[-1])
        mu = ext[self._i0] * self._w0
        mu += ext[self._i0 + 1] * self._w1
        return mu.reshape(self.geometry.shape)

    def draw(self, intensity: np.ndarray, *, seed: int | None = 0, noise: bool = True,
             exact_poisson: bool = False) -> np.ndarray:
        """Counts image drawn from a 1-D model (noise, saturation, defect map).

        Parameters
        ----------
        intensity : ndarray, shape (m,)
            1-D model on :attr:`q_A_inv`.
        seed : int or None
            Seed of the counting noise (same seed → same image).
        noise : bool
            False returns the rounded expected counts.
        exact_poisson : bool
            Exact Poisson for every pixel instead of the normal approximation above 30.

        Returns
        -------
        ndarray, shape geometry.shape, uint16 (uint32 if saturation_counts > 65535)
        """
        return self._draw_expected(self.expected_image(intensity), seed=seed, noise=noise,
                                   exact_poisson=exact_poisson)

    def _draw_expected(self, mu: np.ndarray, *, seed: int | None = 0, noise: bool = True,
                       exact_poisson: bool = False) -> np.ndarray:
        """Counts image from expected counts ``mu`` (geometry.shape); see :meth:`draw`."""
        mu = np.asarray(mu, dtype=np.float64).ravel()
        if noise:
            rng = np.random.default_rng(seed)
            if exact_poisson:
                counts = rng.poisson(mu).astype(np.float64)
            else:
                counts = mu + np.sqrt(mu) * rng.standard_normal(mu.size)
                low = mu < 30.0
                if np.any(low):
                    counts[low] = rng.poisson(mu[low])
                np.rint(counts, out=counts)
        else:
            counts = np.rint(mu)
        np.clip(counts, 0, self.saturation_counts, out=counts)
        img = counts.astype(self._dtype).reshape(self.geometry.shape)
        img[self.dead_mask] = 0
        img[self.hot_mask] = self.saturation_counts
        return img

    def frame(
        self,
        phases: Sequence[LatticePhase | dict],
        *,
        seed: int | None = 0,
        noise: bool = True,
        exact_poisson: bool = False,
        **profile_kwargs,
    ) -> SimulatedFrame:
        """Simulated frame of the coin cell for the given layered phase(s).

        Parameters
        ----------
        phases : sequence of LatticePhase or dict
            E.g. ``CoinCell.lattice()``.
        seed, noise, exact_poisson
            See :meth:`draw`.
        **profile_kwargs
            Passed to :meth:`profile` (transition_metals, scale, al_scale, al_a_A,
            background_level).

        Returns
        -------
        SimulatedFrame
        """
        q, inten = self.profile(phases, **profile_kwargs)
        img = self.draw(inten, seed=seed, noise=noise, exact_poisson=exact_poisson)
        return SimulatedFrame(img, q, inten, self.geometry.to_dict(),
                              [_phase_dict(p) for p in phases], self.defect_mask,
                              {"kind": "cell", "seed": seed, "noise": noise})

    def cell_frame(self, cell, *, seed: int | None = 0, noise: bool = True,
                   **profile_kwargs) -> SimulatedFrame:
        """Frame of a :class:`~strainstream.sim.cell.CoinCell` in its present state.

        Uses ``cell.lattice()`` and the preset's transition-metal site occupancy; the
        frame's ``metadata`` records the cell readbacks (voltage, capacity, soc, ...).

        Returns
        -------
        SimulatedFrame
        """
        profile_kwargs.setdefault("transition_metals", dict(cell.preset.transition_metals))
        fr = self.frame(cell.lattice(), seed=seed, noise=noise, **profile_kwargs)
        fr.metadata.update(cell.readbacks())
        fr.metadata["preset"] = cell.preset.name
        return fr

    def sector_frame(self, phases_per_sector: Sequence[Sequence[LatticePhase | dict]], *,
                     seed: int | None = 0, noise: bool = True,
                     **profile_kwargs) -> SimulatedFrame:
        """Frame whose lattice differs by azimuthal sector (strain anisotropy, texture check).

        The azimuth χ (pyFAI's χ of every pixel centre, −180° to 180°) is cut into
        ``n = len(phases_per_sector)`` equal sectors, sector k covering
        [−180° + k·360°/n, −180° + (k+1)·360°/n); the pixels of sector k are drawn from the
        profile of ``phases_per_sector[k]``.

        Parameters
        ----------
        phases_per_sector : sequence (n,) of sequences of LatticePhase or dict
            Layered phase(s) seen in each sector.
        seed, noise
            See :meth:`draw`.
        **profile_kwargs
            Passed to :meth:`profile`.

        Returns
        -------
        SimulatedFrame
            ``phases`` and ``intensity`` are the first sector's; ``metadata["sector_phases"]``
            holds every sector's phases.
        """
        n = len(phases_per_sector)
        if n < 1:
            raise ValueError("phases_per_sector is empty: give the phases of every sector")
        chi = np.asarray(self.ai.center_array(self.geometry.shape, unit="chi_deg", scale=True),
                         dtype=float)
        sector = np.clip(((chi + 180.0) * n / 360.0).astype(np.intp), 0, n - 1)
        mu = np.zeros(self.geometry.shape)
        first = None
        for k, phases in enumerate(phases_per_sector):
            _, inten = self.profile(phases, **profile_kwargs)
            first = inten if first is None else first
            sel = sector == k
            mu[sel] = self.expected_image(inten)[sel]
        img = self._draw_expected(mu, seed=seed, noise=noise)
        return SimulatedFrame(img, self.q_A_inv, first, self.geometry.to_dict(),
                              [_phase_dict(p) for p in phases_per_sector[0]], self.defect_mask,
                              {"kind": "cell_sectors", "seed": seed, "noise": noise,
                               "sector_phases": [[_phase_dict(p) for p in ph]
                                                 for ph in phases_per_sector]})

    def ceo2_frame(self, *, seed: int | None = 0, noise: bool = True, **kwargs) -> SimulatedFrame:
        """Simulated CeO2 (NIST SRM 674b) calibrant frame; kwargs go to :meth:`ceo2_profile`.

        Returns
        -------
        SimulatedFrame
        """
        q, inten = self.ceo2_profile(**kwargs)
        img = self.draw(inten, seed=seed, noise=noise)
        return SimulatedFrame(img, q, inten, self.geometry.to_dict(),
                              [{"name": "CeO2", "a_A": CEO2_A_A, "fraction": 1.0}],
                              self.defect_mask, {"kind": "CeO2", "seed": seed, "noise": noise})


def _phase_dict(phase: LatticePhase | dict) -> dict:
    if isinstance(phase, LatticePhase):
        return {
            "name": phase.name, "a_A": phase.a_A, "c_A": phase.c_A, "fraction": phase.fraction,
            "microstrain": phase.microstrain, "size_nm": phase.size_nm,
            "li_occupancy": phase.li_occupancy, "volume_A3": phase.volume_A3,
        }
    if isinstance(phase, dict):
        d = dict(phase)
        d.setdefault("fraction", 1.0)
        d.setdefault("li_occupancy", 1.0)
        return d
    raise ValueError(f"a phase must be a LatticePhase or a dict, got {type(phase).__name__}")


def _check_phase(ph: dict) -> None:
    for key in ("a_A", "c_A", "size_nm", "microstrain", "fraction"):
        if key not in ph:
            raise ValueError(f"phase is missing {key!r}; need a_A, c_A, fraction, microstrain, size_nm")
        v = float(ph[key])
        if not math.isfinite(v):
            raise ValueError(f"phase {key} is not finite: {v!r}")
    if ph["a_A"] <= 0 or ph["c_A"] <= 0 or ph["size_nm"] <= 0:
        raise ValueError("phase a_A, c_A and size_nm must be positive")
    if ph["microstrain"] < 0 or not (0 <= ph["fraction"] <= 1):
        raise ValueError("phase microstrain must be >= 0 and fraction in [0, 1]")


# Intensity normalisation constants: the pristine NC91 (003) peak height is ≈2·10⁴ counts at
# scale = 1 with the default geometry/instrument; Al(111) area = al_scale × the pristine
# NC91 (003) area; CeO2 (111) peak height ≈3·10⁴ counts.
_LAYERED_SCALE = 1.0e-3
_AL_NORM = 3.289
_CEO2_SCALE = 1.83e-4
