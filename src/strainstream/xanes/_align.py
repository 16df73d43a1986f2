"""Image alignment across energies: zone-plate magnification and sub-pixel registration.

Order of operations for a TXM-XANES stack: flat/dark normalisation in the detector frame
(:func:`absorbance_from_counts`), then :func:`correct_magnification` (the zone-plate
magnification changes with energy), then :func:`register_stack` (sample/optics drift), then
per-voxel analysis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ._errors import XanesInputError

__all__ = [
    "HC_EV_A",
    "ZonePlateOptics",
    "zone_plate_optics",
    "correct_magnification",
    "phase_correlation_shift",
    "shift_image",
    "Registration",
    "register_stack",
]

#: h c in eV Å (CODATA 2018): wavelength_A = HC_EV_A / energy_eV.
HC_EV_A = 12398.419843320026


@dataclass(frozen=True)
class ZonePlateOptics:
    """Zone-plate imaging geometry at each energy (thin-lens equation).

    Attributes
    ----------
    energy_eV, focal_length_m, sample_to_zp_m, zp_to_detector_m, magnification :
        numpy.ndarray, shape (n,)
    """

    energy_eV: np.ndarray
    focal_length_m: np.ndarray
    sample_to_zp_m: np.ndarray
    zp_to_detector_m: np.ndarray
    magnification: np.ndarray


def zone_plate_optics(
    energy_eV: np.ndarray | float,
    *,
    zp_diameter_um: float = 244.0,
    outer_zone_width_nm: float = 30.0,
    sample_to_detector_m: float = 1.0,
) -> ZonePlateOptics:
    """Focus position and magnification of a Fresnel zone plate versus energy.

    The focal length is ``f = D dr / lambda`` (proportional to energy). With a fixed
    sample-to-detector distance ``L`` the zone plate is moved to focus:
    ``1/p + 1/q = 1/f``, ``p + q = L``, so ``p = (L - sqrt(L^2 - 4 f L)) / 2`` and the
    magnification ``M = q / p`` falls by about ``dE/E`` as the energy rises.

    Parameters
    ----------
    energy_eV : float or array_like, shape (n,)
        Photon energy in eV.
    zp_diameter_um : float
        Zone-plate diameter in micrometres.
    outer_zone_width_nm : float
        Outermost zone width in nanometres.
    sample_to_detector_m : float
        Sample-to-detector distance in metres (must exceed 4 f).

    Returns
    -------
    ZonePlateOptics
        Arrays of shape (n,) (or 0-d for a scalar energy).
    """
    e = np.asarray(energy_eV, dtype=np.float64)
    if np.any(~np.isfinite(e)) or np.any(e <= 0):
        raise XanesInputError("energy_eV must be finite and positive")
    lam_m = HC_EV_A / e * 1e-10
    f = zp_diameter_um * 1e-6 * outer_zone_width_nm * 1e-9 / lam_m
    big_l = float(sample_to_detector_m)
    disc = big_l * big_l - 4.0 * f * big_l
    if np.any(disc <= 0):
        raise XanesInputError(
            f"sample_to_detector_m = {big_l} m is shorter than 4 f = {4 * float(np.max(f)):.3g} m; "
            "no real image"
        )
    p = 0.5 * (big_l - np.sqrt(disc))
    q = big_l - p
    return ZonePlateOptics(e, f, p, q, q / p)


def _nan_aware(image: np.ndarray, fn, **kwargs) -> np.ndarray:
    """Apply a linear resampling ``fn`` to an image with NaNs, propagating them."""
    bad = ~np.isfinite(image)
    if not bad.any():
        return fn(image, **kwargs)
    out = fn(np.where(bad, 0.0, image), **kwargs)
    spread = fn(bad.astype(np.float64), **{**kwargs, "order": 1})
    out[spread > 1e-3] = np.nan
    return out


def correct_magnification(
    stack: np.ndarray,
    magnification: np.ndarray,
    *,
    reference_magnification: float | None = None,
    center_yx: tuple[float, float] | None = None,
    order: int = 3,
) -> np.ndarray:
    """Rescale each image of a stack to a common (reference) magnification.

    Image ``i`` was recorded at magnification ``M_i``; the output pixel at ``o`` (relative to
    the optical axis ``c``) takes the input value at ``c + (M_i / M_ref) (o - c)``.

    Parameters
    ----------
    stack : array_like, shape (n, ny, nx)
        Images (absorbance, or counts) in the detector frame.
    magnification : array_like, shape (n,)
        Magnification of each image (e.g. :func:`zone_plate_optics`), or relative factors.
    reference_magnification : float, optional
        Target magnification; default the median of ``magnification``.
    center_yx : (float, float), optional
        Optical axis on the detector, pixels; default the image centre.
    order : int
        Spline order of the interpolation (scipy.ndimage).

    Returns
    -------
    numpy.ndarray, shape (n, ny, nx), float64
        Rescaled images; outside the field of view the nearest edge value is used. NaNs are
        propagated to the pixels they influence.
    """
    a = np.asarray(stack, dtype=np.float64)
    m = np.asarray(magnification, dtype=np.float64)
    if a.ndim != 3:
        raise XanesInputError(f"stack must have shape (n, ny, nx), got {a.shape}")
    if m.shape != (a.shape[0],):
        raise XanesInputError(
            f"magnification has shape {m.shape} but the stack has {a.shape[0]} images"
        )
    if np.any(~np.isfinite(m)) or np.any(m <= 0):
        raise XanesInputError("magnification must be finite and positive")
    m_ref = float(np.median(m)) if reference_magnification is None else reference_magnification
    ny, nx = a.shape[1:]
    c = np.array([(ny - 1) / 2.0, (nx - 1) / 2.0] if center_yx is None else center_yx)
    out = np.empty_like(a)
    for i in range(a.shape[0]):  # loop over energies (images), not voxels
        s = m[i] / m_ref
        if abs(s - 1.0) < 1e-12:
            out[i] = a[i]
            continue
        out[i] = _nan_aware(
            a[i],
            ndimage.affine_transform,
            matrix=np.array([s, s]),
            offset=c - s * c,
            order=order,
            mode="nearest",
        )
    return out


def _tukey(n: int, alpha: float = 0.25) -> np.ndarray:
    """Tukey (tapered cosine) window of length n."""
    x = np.linspace(0.0, 1.0, n)
    w = np.ones(n)
    edge = alpha / 2.0
    lo = x < edge
    hi = x > 1.0 - edge
    w[lo] = 0.5 * (1.0 + np.cos(np.pi * (x[lo] / edge - 1.0)))
    w[hi] = 0.5 * (1.0 + np.cos(np.pi * ((x[hi] - 1.0) / edge + 1.0)))
    return w


def phase_correlation_shift(
    reference: np.ndarray,
    moving: np.ndarray,
    *,
    upsample_factor: int = 50,
    lowpass_sigma_px: float | None = 2.0,
    window: bool = True,
) -> np.ndarray:
    """Sub-pixel translation between two images by phase correlation with upsampling.

    The images are windowed and whitened here; the integer peak of the phase correlation and
    its refinement on a grid of ``1 / upsample_factor`` pixel in a 1.5-pixel neighbourhood by
    a matrix-multiply DFT (Guizar-Sicairos, Thurman & Fienup, Opt. Lett. 33, 156 (2008)) are
    scikit-image's ``phase_cross_correlation``.

    Parameters
    ----------
    reference, moving : array_like, shape (ny, nx)
        Images; NaNs are replaced by the image mean.
    upsample_factor : int
        Sub-pixel precision is ``1 / upsample_factor`` pixel.
    lowpass_sigma_px : float or None
        If given, the normalised cross-power spectrum is weighted by the transfer function
        of a Gaussian of this real-space width (pixels), which suppresses the noise that
        pure phase correlation amplifies at high spatial frequencies.
    window : bool
        Multiply both images by a Tukey window (cosine taper over 12.5 % of each edge)
        before the FFT, so that the periodic wrap-around of the image borders does not
        create a spurious zero-shift peak.

    Returns
    -------
    numpy.ndarray, shape (2,)
        ``(dy, dx)`` in pixels such that ``shift_image(moving, (dy, dx))`` aligns ``moving``
        with ``reference``; ``(0, 0)`` if either image is constant.
    """
    r = np.asarray(reference, dtype=np.float64)
    m = np.asarray(moving, dtype=np.float64)
    if r.ndim != 2 or r.shape != m.shape:
        raise XanesInputError(
            f"reference and moving must be 2-D images of the same shape, got {r.shape} and "
            f"{m.shape}"
        )
    r = np.where(np.isfinite(r), r, np.nanmean(r) if np.isfinite(r).any() else 0.0)
    m = np.where(np.isfinite(m), m, np.nanmean(m) if np.isfinite(m).any() else 0.0)
    if np.ptp(r) == 0 or np.ptp(m) == 0:  # a constant image: no translation to measure
        return np.zeros(2)
    win = 1.0
    if window:
        win = _tukey(r.shape[0])[:, None] * _tukey(r.shape[1])[None, :]
    fr = np.fft.fft2((r - r.mean()) * win)
    fm = np.fft.fft2((m - m.mean()) * win)
    # whitened spectra, each weighted by the square root of the low-pass transfer function G:
    # their cross-power spectrum is G F_r F_m* / |F_r F_m|, passed to skimage in Fourier space
    floor = 10 * np.sqrt(np.finfo(np.float64).eps)  # per factor: 100 eps for the product
    fr /= np.maximum(np.abs(fr), floor)
    fm /= np.maximum(np.abs(fm), floor)
    if lowpass_sigma_px:
        ky = np.fft.fftfreq(r.shape[0])[:, None]
        kx = np.fft.fftfreq(r.shape[1])[None, :]
        sqrt_g = np.exp(-((np.pi * lowpass_sigma_px) ** 2) * (ky**2 + kx**2))
        fr *= sqrt_g
        fm *= sqrt_g
    from skimage.registration import phase_cross_correlation

    shift, _, _ = phase_cross_correlation(
        fr, fm, space="fourier", upsample_factor=max(int(upsample_factor), 1), normalization=None
    )
    return np.asarray(shift, dtype=np.float64)


def shift_image(image: np.ndarray, shift_yx: np.ndarray, *, order: int = 3) -> np.ndarray:
    """Translate an image by a sub-pixel shift (spline interpolation, edge values extended).

    Parameters
    ----------
    image : array_like, shape (ny, nx)
    shift_yx : array_like, shape (2,)
        ``(dy, dx)`` in pixels; positive moves the content towards larger indices.
    order : int
        Spline order.

    Returns
    -------
    numpy.ndarray, shape (ny, nx), float64 (NaNs propagated).
    """
    a = np.asarray(image, dtype=np.float64)
    return _nan_aware(a, ndimage.shift, shift=tuple(np.asarray(shift_yx, float)), order=order,
                      mode="nearest")


@dataclass(frozen=True)
class Registration:
    """Result of :func:`register_stack`.

    Attributes
    ----------
    aligned : numpy.ndarray, shape (n, ny, nx)
        Images shifted onto the reference image.
    shifts_px : numpy.ndarray, shape (n, 2)
        ``(dy, dx)`` applied to each image, pixels (zero for the reference).
    reference_index : int
    """

    aligned: np.ndarray
    shifts_px: np.ndarray
    reference_index: int


def register_stack(
    stack: np.ndarray,
    *,
    reference_index: int | None = None,
    upsample_factor: int = 50,
    lowpass_sigma_px: float | None = 2.0,
    order: int = 3,
) -> Registration:
    """Register every image of an energy stack onto one reference image (sub-pixel).

    Each image is registered directly to the reference (no chaining, so errors do not
    accumulate). Phase correlation uses only the Fourier phase, so the contrast change of
    the particle across the edge does not bias the shift.

    Parameters
    ----------
    stack : array_like, shape (n, ny, nx)
        Absorbance images (after magnification correction).
    reference_index : int, optional
        Image to register to; default the image with the largest standard deviation
        (highest contrast, usually at the white line).
    upsample_factor : int
        Sub-pixel precision ``1 / upsample_factor`` pixel.
    lowpass_sigma_px : float or None
        See :func:`phase_correlation_shift`.
    order : int
        Spline order used to apply the shifts.

    Returns
    -------
    Registration
    """
    a = np.asarray(stack, dtype=np.float64)
    if a.ndim != 3:
        raise XanesInputError(f"stack must have shape (n, ny, nx), got {a.shape}")
    n = a.shape[0]
    if reference_index is None:
        with np.errstate(invalid="ignore"):
            stds = np.array([np.nanstd(a[i]) if np.isfinite(a[i]).any() else -1.0
                             for i in range(n)])
        reference_index = int(np.argmax(stds))
    if not 0 <= reference_index < n:
        raise XanesInputError(f"reference_index {reference_index} outside 0..{n - 1}")
    ref = a[reference_index]
    shifts = np.zeros((n, 2))
    aligned = np.empty_like(a)
    for i in range(n):  # loop over energies (images), not voxels
        if i == reference_index:
            aligned[i] = a[i]
            continue
        shifts[i] = phase_correlation_shift(
            ref, a[i], upsample_factor=upsample_factor, lowpass_sigma_px=lowpass_sigma_px
        )
        aligned[i] = shift_image(a[i], shifts[i], order=order)
    return Registration(aligned, shifts, reference_index)
