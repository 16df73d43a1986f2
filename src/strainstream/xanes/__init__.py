"""strainstream.xanes — TXM-XANES analysis core: absorbance, alignment, white-line maps.

Typical use on a raw energy scan (numpy arrays, energies first)::

    from strainstream import xanes
    a = xanes.absorbance_from_counts(stack, flats, darks)       # (n, ny, nx)
    a = xanes.correct_magnification(a, magnification)          # optional
    a = xanes.register_stack(a).aligned                        # sub-pixel drift
    res = xanes.analyse_whiteline(energies_eV, a)              # WhitelineResult
    res.whiteline_eV, res.mask, res.stats.mean_eV, res.stats.std_eV

``xanes.whiteline_map(energies_eV, absorbance)`` returns only the (ny, nx) map (NaN where
masked). Pure numpy/scipy; no control-system imports.
"""

from ._align import (
    HC_EV_A,
    Registration,
    ZonePlateOptics,
    correct_magnification,
    phase_correlation_shift,
    register_stack,
    shift_image,
    zone_plate_optics,
)
from ._errors import EnergyRangeError, XanesInputError
from ._normalise import EdgeNormalisation, absorbance_from_counts, edge_normalise
from ._whiteline import (
    MASK_BAD_FIT,
    MASK_NO_MATERIAL,
    MASK_NONFINITE,
    MASK_OK,
    WhitelineResult,
    WhitelineStatistics,
    analyse_whiteline,
    whiteline_map,
    whiteline_statistics,
)

__all__ = [
    "HC_EV_A",
    "MASK_BAD_FIT",
    "MASK_NONFINITE",
    "MASK_NO_MATERIAL",
    "MASK_OK",
    "EdgeNormalisation",
    "EnergyRangeError",
    "Registration",
    "WhitelineResult",
    "WhitelineStatistics",
    "XanesInputError",
    "ZonePlateOptics",
    "absorbance_from_counts",
    "analyse_whiteline",
    "correct_magnification",
    "edge_normalise",
    "phase_correlation_shift",
    "register_stack",
    "shift_image",
    "whiteline_map",
    "whiteline_statistics",
    "zone_plate_optics",
]
