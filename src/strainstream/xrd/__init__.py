"""Operando XRD analysis core: calibration, integration, layered-oxide refinement.

Public API
----------
calibrate, geometry helpers      CeO2 geometry calibration → geometry dict / PONI
Integrator                       pinned pyFAI azimuthal integration of frames to I(Q)
refine_pattern                   Pawley-style whole-pattern refinement of R-3m phase(s)
SequentialRefiner                frame-to-frame refinement with automatic re-seeding
detect_003_split                 (003) H2/H3 splitting test
"""

from ._errors import FrameError, PatternError
from ._lattice import hex_volume_A3, r3m_reflections
from ._phases import WINDOW_003_A_INV, Split003, detect_003_split
from ._refine import PhaseResult, RefinementResult, refine_pattern

__all__ = [
    "FrameError",
    "PatternError",
    "PhaseResult",
    "RefinementResult",
    "Split003",
    "WINDOW_003_A_INV",
    "detect_003_split",
    "hex_volume_A3",
    "r3m_reflections",
    "refine_pattern",
]
