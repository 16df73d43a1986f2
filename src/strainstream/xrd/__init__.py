"""Operando XRD analysis core: calibration, integration, layered-oxide refinement.

- :func:`calibrate` — CeO2 (pyFAI calibrant) geometry calibration → geometry dict / PONI
- :func:`refine_calibrant_lattice` — cubic calibrant (CeO2, LaB6, Si) lattice parameter from I(Q)
- :func:`instrument_fwhm` — instrumental FWHM(Q) from the calibrant frame → InstrumentWidth
  (Caglioti U, V, W and η; :meth:`InstrumentWidth.instrument_function` is what the
  calibration carries and :func:`refine_pattern` evaluates per peak, ``instrument=``)
- :class:`Integrator` — pinned pyFAI azimuthal integration of frames to I(Q), built once
- :func:`refine_pattern` — Pawley-style whole-pattern refinement of R-3m phase(s)
- :class:`SequentialRefiner` — frame-to-frame refinement with automatic re-seeding
- :func:`detect_003_split` — (003) H2/H3 splitting test

Conventions: Q in Å⁻¹, Williamson–Hall microstrain ε with FWHM and K = 0.9 (DESIGN.md);
ε is reported, not GSAS-II "mustrain" (= 4ε·10⁶).
"""

from ._calibrant_lattice import CalibrantLattice, refine_calibrant_lattice
from ._calibrate import calibrate, find_beam_centre, pixel_two_theta_rad
from ._errors import FrameError, PatternError
from ._geometry import (
    GEOMETRY_KEYS,
    geometry_from_pyfai,
    geometry_to_poni,
    load_poni,
    make_azimuthal_integrator,
    make_detector,
    save_poni,
    validate_geometry,
)
from ._instrument import WIDTH_MODELS, InstrumentWidth, instrument_fwhm
from ._integrate import DEFAULT_METHOD, Integrator, MaskReport
from ._lattice import (
    AL_A_A,
    CU_KALPHA1_A,
    CU_KALPHA2_A,
    SCHERRER_K,
    hex_volume_A3,
    r3m_reflections,
    strip_kalpha2,
)
from ._phases import (
    WINDOW_003_A_INV,
    Seed,
    Split003,
    detect_003_split,
    find_003,
    seed_lattice,
)
from ._refine import PhaseResult, RefinementResult, refine_pattern
from ._sequential import SequentialRefiner
from ._twotheta import refine_two_theta_pattern

__all__ = [
    "AL_A_A",
    "CU_KALPHA1_A",
    "CU_KALPHA2_A",
    "CalibrantLattice",
    "DEFAULT_METHOD",
    "GEOMETRY_KEYS",
    "SCHERRER_K",
    "WIDTH_MODELS",
    "WINDOW_003_A_INV",
    "FrameError",
    "InstrumentWidth",
    "Integrator",
    "MaskReport",
    "PatternError",
    "PhaseResult",
    "RefinementResult",
    "Seed",
    "SequentialRefiner",
    "Split003",
    "calibrate",
    "detect_003_split",
    "find_003",
    "find_beam_centre",
    "geometry_from_pyfai",
    "geometry_to_poni",
    "hex_volume_A3",
    "instrument_fwhm",
    "load_poni",
    "make_azimuthal_integrator",
    "make_detector",
    "pixel_two_theta_rad",
    "r3m_reflections",
    "refine_calibrant_lattice",
    "refine_pattern",
    "refine_two_theta_pattern",
    "save_poni",
    "seed_lattice",
    "strip_kalpha2",
    "validate_geometry",
]
