"""Exceptions of the XRD analysis core."""

from __future__ import annotations

from strainstream.errors import StrainstreamError

# One frame-error type for the whole analysis core (reason tags used here: "shape",
# "all_nan", "blank", "saturated", "masked", "dtype").
from strainstream.framestats import FrameError

__all__ = ["FrameError", "PatternError"]


class PatternError(StrainstreamError, ValueError):
    """A 1-D pattern cannot be refined (no layered-oxide peaks, wrong wavelength, bad axes...).

    Attributes
    ----------
    reason : str
        Short machine-readable reason: ``"input"``, ``"wavelength"``, ``"no_layered_peaks"``,
        ``"not_indexed"``.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
