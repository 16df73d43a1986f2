"""Exceptions raised by :mod:`strainstream.xanes` for bad input."""

from __future__ import annotations

import numpy as np

from strainstream.errors import StrainstreamError

__all__ = ["XanesInputError", "EnergyRangeError", "check_energies"]


class XanesInputError(StrainstreamError, ValueError):
    """Bad TXM-XANES input: wrong shapes, non-monotonic energies, a missing flat field..."""


class EnergyRangeError(XanesInputError):
    """The energy range does not contain the absorption edge and white line."""


def check_energies(energies_eV: object, *, min_points: int = 2) -> np.ndarray:
    """Validate an energy axis and return it as a float64 array.

    Parameters
    ----------
    energies_eV : array_like, shape (n,)
        Photon energies in eV, strictly increasing.
    min_points : int
        Minimum number of energies required.

    Returns
    -------
    numpy.ndarray, shape (n,), float64

    Raises
    ------
    XanesInputError
        If the axis is not 1-D, has non-finite values, too few points, or is not strictly
        increasing (the message names the first offending position).
    """
    e = np.asarray(energies_eV, dtype=np.float64)
    if e.ndim != 1:
        raise XanesInputError(f"energies_eV must be 1-D, got shape {e.shape}")
    if e.size < min_points:
        raise XanesInputError(
            f"need at least {min_points} energies, got {e.size}; scan more energies across the edge"
        )
    if not np.all(np.isfinite(e)):
        raise XanesInputError("energies_eV contains NaN or inf; every energy must be a number")
    d = np.diff(e)
    if np.any(d <= 0):
        i = int(np.flatnonzero(d <= 0)[0])
        raise XanesInputError(
            "energies_eV must be strictly increasing (monotonic): "
            f"energy[{i}] = {e[i]:.3f} eV is followed by energy[{i + 1}] = {e[i + 1]:.3f} eV; "
            "sort the energies together with their images"
        )
    return e
