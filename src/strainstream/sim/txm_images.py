"""TXM-XANES forward model: Ni K-edge absorbance of cathode particles -> transmission images.

A particle set with a state-of-charge (SOC) map and a projected-thickness map is imaged by a
full-field transmission X-ray microscope across the Ni K edge (default 8340-8360 eV in 1-eV
steps):

* Lineshape (edge-normalised absorbance, jump 1): an arctan edge at ~8345 eV plus a
  pseudo-Voigt white line at ~8350 eV (normalised height ~1.6), both shifting to higher
  energy with Ni valence, by ``whiteline_shift_eV`` (default +1.5 eV) from pristine (SOC 0,
  Ni3+) to charged (SOC 1, ~Ni4+); the white line also weakens slightly on charge.
* Absorbance per voxel ``A(E) = t [mu_bg (E / 8345 eV)^-3 + dmu mu_norm(E; SOC)]`` with the
  Ni K-edge jump ``dmu`` ~0.10 /um and the non-resonant background ``mu_bg`` ~0.017 /um of
  LiNiO2 (4.8 g/cm3).
* Images: ``I = Poisson(flat(E) T) + dark + read noise`` with ``T = exp(-A)`` after sample
  drift (sub-pixel, per energy), the zone-plate magnification at that energy (fixed
  sample-detector distance, zone plate moved to focus) and a defocus blur (Gaussian whose
  width grows with ``|z_zp - z_focus(E)|``) when the zone plate does not follow the focus.
  Flat fields have beam structure that changes with energy and their own counting noise.

The exact truth is returned with every scan: the noiseless absorbance in the sample frame,
SOC, thickness, edge jump, the drift and magnification applied, and the white-line energy of
every voxel as the maximum of its noiseless spectrum (found numerically: with the edge step
under the peak, the maximum is *not* the pseudo-Voigt centre).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from strainstream.xanes import zone_plate_optics

__all__ = [
    "DEFAULT_ENERGIES_EV",
    "NiKEdgeLineshape",
    "ni_k_edge_absorbance",
    "true_whiteline_eV",
    "TXMSample",
    "particle_sample",
    "TXMScan",
    "simulate_txm_scan",
    "write_txm_file",
]

#: Default scan: 8340-8360 eV in 1-eV steps (21 energies).
DEFAULT_ENERGIES_EV = np.arange(8340.0, 8360.5, 1.0)

_E_REF = 8345.0  # eV, reference for the E^-3 background


@dataclass(frozen=True)
class NiKEdgeLineshape:
    """Edge-normalised Ni K-edge lineshape parameters (all energies in eV).

    Attributes
    ----------
    edge_eV : float
        Arctan edge centre at SOC 0 (pristine).
    edge_width_eV : float
        Arctan half width (HWHM of the derivative).
    whiteline_eV : float
        Pseudo-Voigt centre of the white line at SOC 0.
    whiteline_fwhm_eV : float
    whiteline_height : float
        Peak height above the step, in units of the edge jump, at SOC 0.
    lorentz_fraction : float
        Pseudo-Voigt mixing (0 Gaussian, 1 Lorentzian).
    whiteline_shift_eV, edge_shift_eV : float
        Shift of white line / edge from SOC 0 to SOC 1 (linear in SOC).
    height_change : float
        Relative change of the white-line height from SOC 0 to SOC 1.
    """

    edge_eV: float = 8345.0
    edge_width_eV: float = 1.2
    whiteline_eV: float = 8350.0
    whiteline_fwhm_eV: float = 5.0
    whiteline_height: float = 0.6
    lorentz_fraction: float = 0.5
    whiteline_shift_eV: float = 1.5
    edge_shift_eV: float = 1.5
    height_change: float = -0.1


def _lineshape_terms(
    energy_eV: np.ndarray, soc: np.ndarray, ls: NiKEdgeLineshape, deriv: int
) -> np.ndarray:
    """Normalised lineshape (deriv=0) or its first/second energy derivative."""
    xe = energy_eV - (ls.edge_eV + ls.edge_shift_eV * soc)
    xw = energy_eV - (ls.whiteline_eV + ls.whiteline_shift_eV * soc)
    gam = ls.edge_width_eV
    h = ls.whiteline_height * (1.0 + ls.height_change * soc)
    a = 4.0 * np.log(2.0) / ls.whiteline_fwhm_eV**2
    b = 4.0 / ls.whiteline_fwhm_eV**2
    eta = ls.lorentz_fraction
    g = np.exp(-a * xw * xw)
    lor = 1.0 / (1.0 + b * xw * xw)
    if deriv == 0:
        step = 0.5 + np.arctan(xe / gam) / np.pi
        peak = (1 - eta) * g + eta * lor
    elif deriv == 1:
        step = gam / (np.pi * (gam * gam + xe * xe))
        peak = (1 - eta) * (-2 * a * xw * g) + eta * (-2 * b * xw * lor * lor)
    else:
        step = -2 * xe * gam / (np.pi * (gam * gam + xe * xe) ** 2)
        peak = (1 - eta) * (4 * a * a * xw * xw - 2 * a) * g + eta * (
            6 * b * b * xw * xw - 2 * b
        ) * lor**3
    return step + h * peak


def ni_k_edge_absorbance(
    energy_eV: np.ndarray,
    soc: np.ndarray | float,
    *,
    lineshape: NiKEdgeLineshape | None = None,
    background_ratio: float = 0.0,
) -> np.ndarray:
    """Edge-normalised Ni K-edge absorbance (edge jump 1) for a state of charge.

    Parameters
    ----------
    energy_eV : array_like
        Photon energies in eV; broadcast against ``soc``.
    soc : float or array_like
        State of charge, 0 (pristine, Ni3+) to 1 (charged, ~Ni4+).
    lineshape : NiKEdgeLineshape, optional
    background_ratio : float
        Non-resonant background / edge jump; adds ``background_ratio (E / 8345)^-3``.

    Returns
    -------
    numpy.ndarray
        Broadcast shape of ``energy_eV`` and ``soc``; dimensionless.
    """
    ls = lineshape or NiKEdgeLineshape()
    e = np.asarray(energy_eV, dtype=np.float64)
    s = np.asarray(soc, dtype=np.float64)
    return background_ratio * (e / _E_REF) ** -3 + _lineshape_terms(e, s, ls, 0)


def true_whiteline_eV(
    soc: np.ndarray | float,
    *,
    lineshape: NiKEdgeLineshape | None = None,
    background_ratio: float = 0.0,
    chunk: int = 16384,
) -> np.ndarray:
    """Exact white-line energy: the maximum of the noiseless spectrum, per SOC value.

    A 0.05-eV grid search around the white line followed by Newton iterations on the
    analytic derivative (converged to < 1e-9 eV).

    Parameters
    ----------
    soc : float or array_like, any shape
        State of charge.
    lineshape : NiKEdgeLineshape, optional
    background_ratio : float
        As in :func:`ni_k_edge_absorbance`.
    chunk : int
        Values processed at a time.

    Returns
    -------
    numpy.ndarray, same shape as ``soc``
        White-line energy in eV (NaN where ``soc`` is NaN).
    """
    ls = lineshape or NiKEdgeLineshape()
    s = np.asarray(soc, dtype=np.float64)
    flat = s.reshape(-1)
    out = np.full(flat.shape, np.nan)
    good = np.flatnonzero(np.isfinite(flat))
    grid = np.arange(-4.0, 6.0, 0.05)
    for c0 in range(0, good.size, chunk):
        idx = good[c0 : c0 + chunk]
        sc = flat[idx]
        centre = ls.whiteline_eV + ls.whiteline_shift_eV * sc
        eg = centre[:, None] + grid[None, :]
        vals = ni_k_edge_absorbance(eg, sc[:, None], lineshape=ls,
                                    background_ratio=background_ratio)
        x = eg[np.arange(idx.size), np.argmax(vals, axis=1)]
        for _ in range(30):
            d1 = _lineshape_terms(x, sc, ls, 1) - 3 * background_ratio * (x / _E_REF) ** -4 / _E_REF
            d2 = _lineshape_terms(x, sc, ls, 2) + 12 * background_ratio * (
                x / _E_REF
            ) ** -5 / _E_REF**2
            dx = np.clip(-d1 / d2, -0.05, 0.05)
            x = x + dx
            if np.all(np.abs(dx) < 1e-11):
                break
        out[idx] = x
    return out.reshape(s.shape)


@dataclass(frozen=True)
class TXMSample:
    """A particle set in the sample frame.

    Attributes
    ----------
    soc : numpy.ndarray, shape (ny, nx)
        State of charge (0-1) per voxel column; NaN outside the particles.
    thickness_um : numpy.ndarray, shape (ny, nx)
        Projected thickness of cathode material, micrometres (0 outside).
    voxel_size_um : float
    """

    soc: np.ndarray
    thickness_um: np.ndarray
    voxel_size_um: float

    @property
    def material(self) -> np.ndarray:
        """Boolean map of voxels with material, shape (ny, nx)."""
        return self.thickness_um > 0


def particle_sample(
    shape: tuple[int, int] = (128, 128),
    *,
    particles: list[tuple[float, float, float, float]] | None = None,
    voxel_size_um: float = 0.04,
    shell_contrast: float = 0.3,
    roughness: float = 0.05,
    seed: int = 0,
) -> TXMSample:
    """Spherical particles with a core-shell state-of-charge map.

    Charging delithiates the surface first, so the SOC rises from core to shell:
    ``soc = soc_mean + shell_contrast (r/R - 0.5)`` plus smooth random heterogeneity of rms
    ``roughness``, clipped to 0-1.

    Parameters
    ----------
    shape : (int, int)
        Image shape (ny, nx).
    particles : list of (cy_px, cx_px, radius_px, soc_mean), optional
        Default: two particles, radius 0.38 and 0.22 of the image size, SOC 0.3 and 0.75.
    voxel_size_um : float
        Voxel size in micrometres (40 nm at FXI).
    shell_contrast, roughness : float
    seed : int

    Returns
    -------
    TXMSample
    """
    ny, nx = shape
    if particles is None:
        s = min(ny, nx)
        particles = [
            (0.45 * ny, 0.42 * nx, 0.30 * s, 0.3),
            (0.72 * ny, 0.76 * nx, 0.18 * s, 0.75),
        ]
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    thick = np.zeros(shape)
    soc = np.full(shape, np.nan)
    for cy, cx, r, soc_mean in particles:
        rr = np.hypot(yy - cy, xx - cx)
        inside = rr < r
        chord = 2.0 * np.sqrt(np.clip(r * r - rr * rr, 0.0, None)) * voxel_size_um
        thick = np.maximum(thick, chord)
        soc = np.where(inside, soc_mean + shell_contrast * (rr / r - 0.5), soc)
    rng = np.random.default_rng(seed)
    rough = ndimage.gaussian_filter(rng.standard_normal(shape), 4.0)
    rough *= roughness / max(float(rough.std()), 1e-12)
    soc = np.clip(soc + rough, 0.0, 1.0)
    soc[thick <= 0] = np.nan
    return TXMSample(soc=soc, thickness_um=thick, voxel_size_um=voxel_size_um)


@dataclass(frozen=True)
class TXMScan:
    """A simulated TXM-XANES energy scan with its exact truth.

    Attributes
    ----------
    energies_eV : (n,)
    stack : (n, ny, nx) raw sample images, counts
    flats : (n, ny, nx) flat fields (sample out) at each energy, counts
    darks : (ny, nx) averaged dark image, counts
    absorbance_true : (n, ny, nx)
        Noiseless absorbance in the sample frame (reference magnification, no drift or blur).
    sample : TXMSample
    whiteline_true_eV : (ny, nx)
        Maximum of each voxel's noiseless spectrum, eV; NaN outside the material.
    edge_jump_true : (ny, nx)
        ``dmu * t`` (absorbance units).
    drift_px : (n, 2)
        Sample drift ``(dy, dx)`` applied at each energy (content moved by +drift), pixels.
    magnification : (n,)
        Zone-plate magnification of each image.
    reference_magnification : float
        Magnification of the sample frame (median of ``magnification``).
    zp_position_m, focus_position_m : (n,)
        Sample-to-zone-plate distance used and needed for focus, metres.
    defocus_sigma_px : (n,)
        Gaussian blur applied to each image, pixels.
    lineshape : NiKEdgeLineshape
    background_ratio : float
    """

    energies_eV: np.ndarray
    stack: np.ndarray
    flats: np.ndarray
    darks: np.ndarray
    absorbance_true: np.ndarray
    sample: TXMSample
    whiteline_true_eV: np.ndarray
    edge_jump_true: np.ndarray
    drift_px: np.ndarray
    magnification: np.ndarray
    reference_magnification: float
    zp_position_m: np.ndarray
    focus_position_m: np.ndarray
    defocus_sigma_px: np.ndarray
    lineshape: NiKEdgeLineshape = field(default_factory=NiKEdgeLineshape)
    background_ratio: float = 0.0


def _flat_structure(shape: tuple[int, int], energy_eV: float, rng_phase: np.ndarray) -> np.ndarray:
    """Relative flat-field illumination (mean ~1) with structure that changes with energy."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    cy, cx = (ny - 1) / 2 + 0.05 * ny, (nx - 1) / 2 - 0.03 * nx
    env = np.exp(-(((yy - cy) / (1.2 * ny)) ** 2 + ((xx - cx) / (1.0 * nx)) ** 2))
    de = energy_eV - _E_REF
    ripple = 0.04 * np.sin(2 * np.pi * (0.9 * xx + 0.4 * yy) / 23.0 + 0.35 * de + rng_phase[0])
    ripple += 0.03 * np.sin(2 * np.pi * (0.2 * xx - 1.0 * yy) / 11.0 - 0.22 * de + rng_phase[1])
    return env * (1.0 + ripple)


def simulate_txm_scan(
    energies_eV: np.ndarray | None = None,
    *,
    sample: TXMSample | None = None,
    lineshape: NiKEdgeLineshape | None = None,
    jump_per_um: float = 0.10,
    background_per_um: float = 0.017,
    flat_counts: float = 2.0e4,
    dark_counts: float = 100.0,
    read_noise_counts: float = 2.0,
    n_dark_frames: int = 10,
    drift_px_rms: float = 0.4,
    zp_follows_focus: bool = True,
    zp_position_m: float | None = None,
    zp_diameter_um: float = 244.0,
    outer_zone_width_nm: float = 30.0,
    sample_to_detector_m: float = 1.0,
    magnification_changes: bool = True,
    noise: bool = True,
    seed: int = 0,
) -> TXMScan:
    """Simulate a TXM-XANES scan: raw images, flats and darks, with exact truth.

    Parameters
    ----------
    energies_eV : array_like, shape (n,), optional
        Default 8340-8360 eV in 1-eV steps.
    sample : TXMSample, optional
        Default :func:`particle_sample` ``()`` (128 x 128, 40-nm voxels).
    lineshape : NiKEdgeLineshape, optional
    jump_per_um, background_per_um : float
        Ni K-edge jump and non-resonant background of the cathode, per micrometre.
    flat_counts : float
        Mean flat-field counts per pixel (sets the counting noise).
    dark_counts, read_noise_counts : float
        Dark offset and Gaussian read noise per frame, counts.
    n_dark_frames : int
        Dark frames averaged into ``darks``.
    drift_px_rms : float
        RMS of the random-walk sample drift per energy step, pixels (0: no drift).
    zp_follows_focus : bool
        If True the zone plate is moved to the focus at each energy; if False it stays at
        ``zp_position_m`` (default: the focus of the middle energy) and images are blurred.
    zp_position_m : float, optional
        Fixed sample-to-zone-plate distance when not following focus, metres.
    zp_diameter_um, outer_zone_width_nm, sample_to_detector_m : float
        Zone-plate optics (see :func:`strainstream.xanes.zone_plate_optics`).
    magnification_changes : bool
        Apply the energy-dependent magnification (fixed detector distance).
    noise : bool
        Poisson counting noise and read noise (False: exact expected counts).
    seed : int

    Returns
    -------
    TXMScan
    """
    e = DEFAULT_ENERGIES_EV.copy() if energies_eV is None else np.asarray(energies_eV, float)
    smp = sample or particle_sample()
    ls = lineshape or NiKEdgeLineshape()
    rng = np.random.default_rng(seed)
    ny, nx = smp.thickness_um.shape
    n = e.size
    t = smp.thickness_um
    soc0 = np.where(np.isfinite(smp.soc), smp.soc, 0.0)
    bg_ratio = background_per_um / jump_per_um
    mu = ni_k_edge_absorbance(e[:, None, None], soc0[None], lineshape=ls,
                              background_ratio=bg_ratio)
    absorb = jump_per_um * t[None] * mu  # (n, ny, nx); zero outside the material
    wl_true = np.where(smp.material, true_whiteline_eV(soc0, lineshape=ls,
                                                       background_ratio=bg_ratio), np.nan)

    optics = zone_plate_optics(e, zp_diameter_um=zp_diameter_um,
                               outer_zone_width_nm=outer_zone_width_nm,
                               sample_to_detector_m=sample_to_detector_m)
    focus = optics.sample_to_zp_m
    if zp_follows_focus:
        zp = focus.copy()
        mag = optics.magnification.copy()
    else:
        zfix = float(focus[n // 2] if zp_position_m is None else zp_position_m)
        zp = np.full(n, zfix)
        # fixed zone plate and detector: magnification q/p of the nominal positions
        mag = (sample_to_detector_m - zp) / zp
    if not magnification_changes:
        mag = np.full(n, float(np.median(mag)))
    m_ref = float(np.median(mag))
    # defocus: geometric blur radius |dz| * NA, NA = D / (2 p); sigma ~ radius / 2
    na = zp_diameter_um * 1e-6 / (2.0 * focus)
    sigma_px = 0.5 * np.abs(zp - focus) * na / (smp.voxel_size_um * 1e-6)

    if drift_px_rms > 0:
        drift = np.cumsum(rng.normal(0.0, drift_px_rms, size=(n, 2)), axis=0)
        drift -= drift[n // 2]
    else:
        drift = np.zeros((n, 2))

    phase = rng.uniform(0, 2 * np.pi, size=2)
    c = np.array([(ny - 1) / 2.0, (nx - 1) / 2.0])
    dark_true = dark_counts + 3.0 * np.sin(np.linspace(0, 3 * np.pi, nx))[None, :] * np.ones((ny, 1))
    stack = np.empty((n, ny, nx))
    flats = np.empty((n, ny, nx))
    for i in range(n):  # loop over energies (images), not voxels
        img = absorb[i]
        if np.any(drift[i] != 0):
            img = ndimage.shift(img, drift[i], order=3, mode="nearest")
        trans = np.exp(-img)
        s = m_ref / mag[i]
        if abs(s - 1.0) > 1e-12:
            trans = ndimage.affine_transform(trans, np.array([s, s]), offset=c - s * c,
                                             order=3, mode="nearest")
        if sigma_px[i] > 0.05:
            trans = ndimage.gaussian_filter(trans, sigma_px[i], mode="nearest")
        flat_mean = flat_counts * _flat_structure((ny, nx), e[i], phase)
        if noise:
            stack[i] = rng.poisson(flat_mean * trans) + dark_true + rng.normal(
                0.0, read_noise_counts, (ny, nx))
            flats[i] = rng.poisson(flat_mean) + dark_true + rng.normal(
                0.0, read_noise_counts, (ny, nx))
        else:
            stack[i] = flat_mean * trans + dark_true
            flats[i] = flat_mean + dark_true
    if noise:
        darks = dark_true + rng.normal(0.0, read_noise_counts / np.sqrt(n_dark_frames), (ny, nx))
    else:
        darks = dark_true.copy()
    return TXMScan(
        energies_eV=e,
        stack=stack,
        flats=flats,
        darks=darks,
        absorbance_true=absorb,
        sample=smp,
        whiteline_true_eV=wl_true,
        edge_jump_true=jump_per_um * t,
        drift_px=drift,
        magnification=mag,
        reference_magnification=m_ref,
        zp_position_m=zp,
        focus_position_m=focus,
        defocus_sigma_px=sigma_px,
        lineshape=ls,
        background_ratio=bg_ratio,
    )


def write_txm_file(
    path: str | Path,
    scan: TXMScan,
    *,
    raw: bool = True,
    include_truth: bool = True,
) -> Path:
    """Write a scan in the layout read by ``strainstream xanes whiteline``.

    Datasets: ``energies_eV`` (n,); ``stack`` (n, ny, nx) raw counts with ``flats``
    (n, ny, nx) and ``darks`` (ny, nx) if ``raw``, otherwise ``stack`` is the noiseless
    sample-frame absorbance; ``magnification`` (n,) when raw. With ``include_truth`` a
    group ``truth`` holds ``whiteline_eV``, ``soc``, ``thickness_um``, ``drift_px``.

    Parameters
    ----------
    path : str or Path
    scan : TXMScan
    raw : bool
    include_truth : bool

    Returns
    -------
    Path
    """
    import h5py

    p = Path(path)
    with h5py.File(p, "w") as f:
        f["energies_eV"] = scan.energies_eV
        if raw:
            f["stack"] = scan.stack
            f["flats"] = scan.flats
            f["darks"] = scan.darks
            f["magnification"] = scan.magnification
        else:
            f["stack"] = scan.absorbance_true
        f.attrs["voxel_size_um"] = scan.sample.voxel_size_um
        if include_truth:
            g = f.create_group("truth")
            g["whiteline_eV"] = scan.whiteline_true_eV
            g["soc"] = scan.sample.soc
            g["thickness_um"] = scan.sample.thickness_um
            g["drift_px"] = scan.drift_px
    return p
