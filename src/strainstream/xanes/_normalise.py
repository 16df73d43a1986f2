"""Flat/dark normalisation to absorbance and per-voxel edge normalisation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._errors import EnergyRangeError, XanesInputError, check_energies

__all__ = [
    "EdgeNormalisation",
    "absorbance_from_counts",
    "edge_normalise",
    "edge_windows",
    "steepest_rise_eV",
]


def absorbance_from_counts(
    stack: np.ndarray,
    flats: np.ndarray,
    darks: np.ndarray,
    *,
    clip_ratio: float | None = None,
) -> np.ndarray:
    """Absorbance images from raw counts: ``-ln((I - dark) / (flat - dark))``.

    Each energy's image is divided by the flat field recorded at the same energy (the beam
    profile and the zone-plate illumination change with energy).

    Parameters
    ----------
    stack : array_like, shape (n, ny, nx)
        Raw sample images in detector counts, one per energy.
    flats : array_like, shape (n, ny, nx)
        Flat fields (sample out) in counts, one per energy, same order as ``stack``.
    darks : array_like, shape (ny, nx) or (n, ny, nx)
        Dark image in counts (average the dark frames first), or one dark per energy.
    clip_ratio : float, optional
        If given, transmission ratios below ``clip_ratio`` (including non-positive ones) are
        clipped to it. If None (default) non-positive or non-finite ratios are flagged as NaN,
        and the voxel is later masked by the white-line analysis.

    Returns
    -------
    numpy.ndarray, shape (n, ny, nx), float64
        Absorbance (dimensionless, natural log), NaN where flagged.

    Raises
    ------
    XanesInputError
        If the shapes disagree; the message says which array and what was expected
        (e.g. a missing flat field).
    """
    i = np.asarray(stack, dtype=np.float64)
    f = np.asarray(flats, dtype=np.float64)
    d = np.asarray(darks, dtype=np.float64)
    if i.ndim != 3:
        raise XanesInputError(f"stack must have shape (n, ny, nx), got {i.shape}")
    n = i.shape[0]
    if f.ndim != 3 or f.shape[1:] != i.shape[1:]:
        raise XanesInputError(
            f"flats must have shape (n, ny, nx) = {i.shape}, got {f.shape}; "
            "record one flat field per energy"
        )
    if f.shape[0] != n:
        raise XanesInputError(
            f"flats holds {f.shape[0]} flat field(s) but there are {n} sample images: "
            "a flat field is missing (or extra); each energy needs the flat of the same energy"
        )
    if d.shape == i.shape[1:]:
        d = d[None]
    elif d.shape != i.shape:
        raise XanesInputError(
            f"darks must have shape (ny, nx) = {i.shape[1:]} (average the dark frames) or "
            f"(n, ny, nx) = {i.shape}, got {d.shape}"
        )
    num = i - d
    den = f - d
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = num / den
    if clip_ratio is not None:
        if not clip_ratio > 0:
            raise XanesInputError(f"clip_ratio must be > 0, got {clip_ratio}")
        ratio = np.where(np.isfinite(ratio), ratio, clip_ratio)
        np.maximum(ratio, clip_ratio, out=ratio)
        return -np.log(ratio)
    good = np.isfinite(ratio) & (ratio > 0)
    out = np.full(ratio.shape, np.nan)
    np.log(ratio, out=out, where=good)
    np.negative(out, out=out, where=good)
    return out


def edge_windows(
    energies_eV: np.ndarray,
    pre_edge_eV: tuple[float, float] | None = None,
    post_edge_eV: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the pre-edge and post-edge energies.

    Parameters
    ----------
    energies_eV : numpy.ndarray, shape (n,)
        Strictly increasing energies in eV.
    pre_edge_eV, post_edge_eV : (float, float), optional
        Inclusive energy windows. Defaults: the lowest 10 % of the scanned range (at least
        two energies) for the pre-edge line, the highest 20 % (at least one energy) for the
        post-edge level. For 8340-8360 eV in 1-eV steps: 8340-8342 and 8356-8360 eV.

    Returns
    -------
    pre_idx, post_idx : numpy.ndarray of int

    Raises
    ------
    XanesInputError
        If a window holds too few energies or the windows overlap.
    """
    e = energies_eV
    span = e[-1] - e[0]
    if pre_edge_eV is None:
        pre_idx = np.flatnonzero(e <= e[0] + 0.1 * span + 1e-9)
        if pre_idx.size < 2:
            pre_idx = np.arange(min(2, e.size))
    else:
        pre_idx = np.flatnonzero((e >= pre_edge_eV[0] - 1e-9) & (e <= pre_edge_eV[1] + 1e-9))
    if post_edge_eV is None:
        post_idx = np.flatnonzero(e >= e[-1] - 0.2 * span - 1e-9)
    else:
        post_idx = np.flatnonzero((e >= post_edge_eV[0] - 1e-9) & (e <= post_edge_eV[1] + 1e-9))
    if pre_idx.size < 2:
        raise XanesInputError(
            f"pre-edge window {pre_edge_eV} eV holds {pre_idx.size} energies; the pre-edge "
            "line needs at least 2 energies below the edge"
        )
    if post_idx.size < 1:
        raise XanesInputError(
            f"post-edge window {post_edge_eV} eV holds no energy; choose a window inside "
            f"{e[0]:.1f}-{e[-1]:.1f} eV above the white line"
        )
    if pre_idx.max() >= post_idx.min():
        raise XanesInputError(
            "pre-edge and post-edge windows overlap; the pre-edge window must lie below the "
            "post-edge window"
        )
    return pre_idx, post_idx


def _finite_mean_spectrum(a2: np.ndarray) -> np.ndarray:
    """Mean over voxels of the all-finite spectra of ``a2`` (n, m); NaN if there are none."""
    good = np.all(np.isfinite(a2), axis=0)
    ng = int(good.sum())
    if ng == 0:
        return np.full(a2.shape[0], np.nan)
    return a2[:, good].sum(axis=1) / ng


def steepest_rise_eV(energies_eV: np.ndarray, spectrum: np.ndarray) -> tuple[float, int]:
    """Energy of the steepest rise of a (mean) spectrum, i.e. a rough edge position.

    Parameters
    ----------
    energies_eV : numpy.ndarray, shape (n,)
    spectrum : numpy.ndarray, shape (n,)

    Returns
    -------
    edge_eV : float
        Midpoint of the interval with the largest slope, in eV.
    interval : int
        Index ``i`` of that interval (between energies ``i`` and ``i + 1``).
    """
    slope = np.diff(spectrum) / np.diff(energies_eV)
    i = int(np.argmax(slope))
    return 0.5 * (energies_eV[i] + energies_eV[i + 1]), i


@dataclass(frozen=True)
class EdgeNormalisation:
    """Result of :func:`edge_normalise`.

    Attributes
    ----------
    normalised : numpy.ndarray, shape (n, ...)
        ``(absorbance - pre_edge_line(E)) / edge_jump``; NaN where the jump is not positive.
    edge_jump : numpy.ndarray, shape (...)
        Post-edge level minus the pre-edge line at ``edge_eV`` (absorbance units).
    pre_edge_at_edge : numpy.ndarray, shape (...)
        Pre-edge line evaluated at ``edge_eV``.
    pre_edge_slope_per_eV : numpy.ndarray, shape (...)
        Slope of the pre-edge line (absorbance per eV).
    post_edge_level : numpy.ndarray, shape (...)
        Mean absorbance over the post-edge window.
    edge_eV : float
        Energy at which the jump is evaluated.
    """

    normalised: np.ndarray
    edge_jump: np.ndarray
    pre_edge_at_edge: np.ndarray
    pre_edge_slope_per_eV: np.ndarray
    post_edge_level: np.ndarray
    edge_eV: float


def _edge_fit_matrices(
    energies_eV: np.ndarray, pre_idx: np.ndarray, post_idx: np.ndarray, edge_eV: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-inverse of the pre-edge line design and the post-edge averaging vector."""
    x = energies_eV[pre_idx] - edge_eV
    design = np.stack([np.ones_like(x), x], axis=1)  # (m, 2)
    pinv = np.linalg.pinv(design)  # (2, m): [value at edge, slope]
    avg = np.full(post_idx.size, 1.0 / post_idx.size)
    return pinv, avg


def edge_parameters(
    a2: np.ndarray,
    pinv: np.ndarray,
    avg: np.ndarray,
    pre_idx: np.ndarray,
    post_idx: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised pre-edge line and post-edge level for spectra ``a2`` of shape (n, m).

    Returns ``(pre_at_edge, slope_per_eV, post_level)``, each of shape (m,).
    """
    with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN spectra give NaN, masked later
        coef = pinv @ a2[pre_idx]  # (2, m)
        post = avg @ a2[post_idx]  # (m,)
    return coef[0], coef[1], post


def edge_normalise(
    energies_eV: np.ndarray,
    absorbance: np.ndarray,
    *,
    pre_edge_eV: tuple[float, float] | None = None,
    post_edge_eV: tuple[float, float] | None = None,
    edge_eV: float | None = None,
) -> EdgeNormalisation:
    """Edge-normalise spectra: pre-edge line, post-edge level and edge jump, per voxel.

    Parameters
    ----------
    energies_eV : array_like, shape (n,)
        Strictly increasing energies in eV.
    absorbance : array_like, shape (n, ...)
        Absorbance spectra, energy first (e.g. (n, ny, nx)).
    pre_edge_eV, post_edge_eV : (float, float), optional
        Inclusive energy windows; see :func:`edge_windows` for the defaults.
    edge_eV : float, optional
        Energy at which the pre-edge line is evaluated for the jump. Default: the steepest
        rise of the mean spectrum.

    Returns
    -------
    EdgeNormalisation
        All per-voxel arrays have the trailing shape of ``absorbance``.

    Raises
    ------
    XanesInputError
        Bad energies or shapes.
    EnergyRangeError
        If the steepest rise lies at an end of the range (the scan misses the edge).
    """
    e = check_energies(energies_eV, min_points=3)
    a = np.asarray(absorbance, dtype=np.float64)
    if a.ndim < 1 or a.shape[0] != e.size:
        raise XanesInputError(
            f"absorbance has shape {a.shape} but there are {e.size} energies; the first axis "
            "must be the energy axis"
        )
    pre_idx, post_idx = edge_windows(e, pre_edge_eV, post_edge_eV)
    a2 = a.reshape(e.size, -1)
    if edge_eV is None:
        mean = _finite_mean_spectrum(a2)
        if not np.all(np.isfinite(mean)):
            raise XanesInputError("every voxel has a NaN somewhere; nothing to normalise")
        edge_eV, i = steepest_rise_eV(e, mean)
        if i == 0 or i == e.size - 2:
            raise EnergyRangeError(
                f"the energy range {e[0]:.1f}-{e[-1]:.1f} eV misses the absorption edge "
                f"(steepest rise at the end of the range, {edge_eV:.1f} eV); scan across the edge"
            )
    pinv, avg = _edge_fit_matrices(e, pre_idx, post_idx, float(edge_eV))
    pre0, slope, post = edge_parameters(a2, pinv, avg, pre_idx, post_idx)
    jump = post - pre0
    line = pre0[None, :] + slope[None, :] * (e - edge_eV)[:, None]
    ok = jump > 0
    norm = np.full(a2.shape, np.nan)
    np.divide(a2 - line, jump[None, :], out=norm, where=ok[None, :])
    tail = a.shape[1:]
    return EdgeNormalisation(
        normalised=norm.reshape(a.shape),
        edge_jump=jump.reshape(tail),
        pre_edge_at_edge=pre0.reshape(tail),
        pre_edge_slope_per_eV=slope.reshape(tail),
        post_edge_level=post.reshape(tail),
        edge_eV=float(edge_eV),
    )
