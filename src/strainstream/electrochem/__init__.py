"""strainstream.electrochem: capacity, state of charge, dQ/dV and GITT diffusivity.

Pure numpy/scipy. Current is positive on charge; capacities in mAh/g, times in s, voltages
in V, particle radii in cm and diffusivities in cm²/s.
"""

from ._core import (
    ElectrochemInputError,
    GITTPulse,
    GITTResult,
    HalfCycle,
    cumulative_capacity_mAh_g,
    cycling_metrics,
    dqdv,
    frames_after_rests,
    gitt_diffusivity,
    gitt_diffusivity_cm2_s,
    half_cycles,
    mean_voltage_V,
    split_gitt_pulses,
    state_of_charge,
)

__all__ = [
    "ElectrochemInputError",
    "GITTPulse",
    "GITTResult",
    "HalfCycle",
    "cumulative_capacity_mAh_g",
    "cycling_metrics",
    "dqdv",
    "frames_after_rests",
    "gitt_diffusivity",
    "gitt_diffusivity_cm2_s",
    "half_cycles",
    "mean_voltage_V",
    "split_gitt_pulses",
    "state_of_charge",
]
