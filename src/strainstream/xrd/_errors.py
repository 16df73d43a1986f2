"""Exceptions of the XRD analysis core."""

from __future__ import annotations


class FrameError(ValueError):
    """A detector frame cannot be integrated (wrong shape, blank, all-NaN, saturated...).

    Attributes
    ----------
    reason : str
        Short machine-readable reason: ``"shape"``, ``"all_nan"``, ``"blank"``,
        ``"saturated"``, ``"masked"`` or ``"dtype"``.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class PatternError(ValueError):
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
