"""Frame-to-frame (sequential) refinement with automatic re-seeding."""

from __future__ import annotations

import math

import numpy as np

from ._errors import PatternError
from ._phases import detect_003_split
from ._refine import RefinementResult, refine_pattern


class SequentialRefiner:
    """Refine a series of patterns, each starting from the previous result.

    A fit started from the previous frame is accepted unless it looks wrong: its Rwp grew
    by more than ``rwp_jump`` relative to the previous frame, the solver did not converge,
    or (when Rwp grew by more than 10 %) the refined (003) position(s) miss the (003)
    peak(s) found by a peak search by more than one FWHM. Then the frame is refitted from a fresh peak search (as after a beam
    interruption, when the lattice has moved far) and the better of the two fits is kept
    (flag ``"reseeded"``).

    Parameters
    ----------
    wavelength_A : float
        Wavelength, Å.
    phases : {"auto", 1, 2}
        As in :func:`refine_pattern`.
    rwp_jump : float
        Relative Rwp increase that triggers re-seeding (default 0.5 = +50 %).
    **refine_kwargs
        Passed to :func:`refine_pattern` (``al``, ``q_range_A_inv``,
        ``instrument_fwhm_A_inv``...).
    """

    def __init__(self, wavelength_A, phases="auto", rwp_jump=0.5, **refine_kwargs):
        self.wavelength_A = float(wavelength_A)
        self.phases = phases
        self.rwp_jump = float(rwp_jump)
        self.kwargs = refine_kwargs
        #: the result the next frame starts from: a RefinementResult, or its ``to_dict()``
        #: form (e.g. rebuilt from a stored result row, so a resumed series seeds exactly as
        #: the original one did); None starts from a peak search
        self.previous: RefinementResult | dict | None = None
        self.n_reseeded = 0

    def reset(self) -> None:
        """Forget the previous result (the next frame starts from a peak search)."""
        self.previous = None

    def _looks_wrong(self, res: RefinementResult, q, y, sigma) -> bool:
        prev = self.previous
        prev_rwp = prev.rwp if isinstance(prev, RefinementResult) else float(prev["rwp"])
        if not res.converged or any(f.startswith("at_bound") for f in res.flags):
            return True
        if res.rwp > (1.0 + self.rwp_jump) * prev_rwp:
            return True
        if res.rwp <= 1.1 * prev_rwp:
            return False  # as good as the previous frame: no (003) cross-check needed
        try:
            split = detect_003_split(q, y, sigma)
        except PatternError:
            return True
        fitted = np.array([6 * np.pi / p.c_A for p in res.phases])
        for q0, w0 in zip(split.q_A_inv, split.fwhm_A_inv, strict=True):
            if np.min(np.abs(fitted - q0)) > max(w0, 0.005):
                return True
        return False

    def refine(self, q_A_inv, intensity, sigma=None) -> RefinementResult:
        """Refine one pattern (see :func:`refine_pattern` for shapes and units).

        Returns
        -------
        RefinementResult
            Flags include ``"reseeded"`` when the frame had to be refitted from a peak search.

        Raises
        ------
        PatternError
            As :func:`refine_pattern`; the previous result is kept so the series can go on.
        """
        kw = dict(self.kwargs)
        if self.previous is None:
            res = refine_pattern(q_A_inv, intensity, self.wavelength_A, phases=self.phases,
                                 sigma=sigma, **kw)
        else:
            res = refine_pattern(q_A_inv, intensity, self.wavelength_A, phases=self.phases,
                                 sigma=sigma, start=self.previous, **kw)
            q = np.asarray(q_A_inv, dtype=float)
            y = np.asarray(intensity, dtype=float)
            ok = np.isfinite(y) & np.isfinite(q)
            s = None if sigma is None else np.asarray(sigma, dtype=float)
            if s is not None:
                ok &= np.isfinite(s) & (s > 0)
            if self._looks_wrong(res, q[ok], y[ok], None if s is None else s[ok]):
                fresh = refine_pattern(q_A_inv, intensity, self.wavelength_A,
                                       phases=self.phases, sigma=sigma, **kw)
                if fresh.rwp < res.rwp or not math.isfinite(res.rwp):
                    res = fresh
                from dataclasses import replace

                res = replace(res, flags=tuple(res.flags) + ("reseeded",))
                self.n_reseeded += 1
        self.previous = res
        return res
