"""Synthetic known-answer data for the XRD tests.

Peak positions and intensities come from pymatgen's XRDCalculator (an independent forward
model: real R-3m LiNiO2-type structure factors, multiplicities and Lorentz-polarisation);
profiles are pseudo-Voigts whose FWHM in Q follows Williamson–Hall (DESIGN.md).
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

LAMBDA_A = 0.1665
K = 0.9


@functools.lru_cache(maxsize=64)
def _pmg_peaks(kind: str, a_A: float, c_A: float, wavelength_A: float, q_max: float):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pymatgen.analysis.diffraction.xrd import XRDCalculator
        from pymatgen.core import Lattice, Structure

        if kind == "layered":
            lat = Lattice.hexagonal(a_A, c_A)
            st = Structure.from_spacegroup("R-3m", lat, ["Li", "Ni", "O"],
                                           [[0, 0, 0], [0, 0, 0.5], [0, 0, 0.2585]])
        else:
            st = Structure.from_spacegroup("Fm-3m", Lattice.cubic(a_A), ["Al"], [[0, 0, 0]])
        tt_max = 2 * np.degrees(np.arcsin(min(q_max * wavelength_A / (4 * np.pi), 1.0)))
        pat = XRDCalculator(wavelength=wavelength_A).get_pattern(
            st, scaled=False, two_theta_range=(0.5, tt_max))
    q = 4 * np.pi * np.sin(np.radians(np.asarray(pat.x)) / 2) / wavelength_A
    return q, np.asarray(pat.y, dtype=float)


def _pv(q, q0, w, eta):
    u2 = (2.0 * (q[:, None] - q0[None, :]) / w[None, :]) ** 2
    lor = (2.0 / (np.pi * w)) / (1.0 + u2)
    gau = (2.0 * np.sqrt(np.log(2) / np.pi) / w) * np.exp(-np.log(2) * u2)
    return eta * lor + (1 - eta) * gau


def synth_pattern(phases, *, q=None, wavelength_A=LAMBDA_A, eta=0.4, w_inst=0.004,
                  al_a_A=4.0495, al_scale=0.15, al_fwhm=0.006, counts_003=2.0e5,
                  background=2000.0, seed=0, noise=True):
    """Pattern with Poisson noise.

    phases: list of dicts with a_A, c_A, microstrain, size_nm, fraction (mole fraction of
    cells). Returns q, counts, sigma, truth dict.
    """
    if q is None:
        q = np.linspace(0.8, 8.0, 3000)
    qmax = float(q[-1]) + 0.3
    total = np.zeros_like(q)
    scale = None
    for ph in phases:
        qk, ik = _pmg_peaks("layered", round(ph["a_A"], 6), round(ph["c_A"], 6),
                            wavelength_A, qmax)
        if scale is None:
            scale = counts_003 / ik[0] * 0.012  # area units so that (003) peaks ≈ counts_003
        s = 2 * np.pi * K / (10 * ph["size_nm"]) + 2 * ph["microstrain"] * qk
        w = np.sqrt(w_inst**2 + s**2)
        total += ph["fraction"] * scale * (_pv(q, qk, w, eta) @ ik)
    if al_scale:
        qa, ia = _pmg_peaks("al", round(al_a_A, 6), 0.0, wavelength_A, qmax)
        w = np.sqrt(w_inst**2 + al_fwhm**2) * np.ones_like(qa)
        ia = ia / ia.max() * al_scale * counts_003 * 0.012 * 0.5
        total += _pv(q, qa, w, eta) @ ia
    x = (q - q[0]) / (q[-1] - q[0])
    bg = background * (1.0 + 0.6 * np.exp(-3 * x) + 0.3 * np.exp(-((x - 0.45) / 0.25) ** 2))
    lam = total + bg
    rng = np.random.default_rng(seed)
    y = rng.poisson(lam).astype(float) if noise else lam
    return q, y, np.sqrt(np.maximum(y, 1.0)), {"phases": phases}


def frame_geometry(shape=(1024, 1024), pixel_um=200.0, distance_m=0.5, wavelength_A=LAMBDA_A):
    """A centred, untilted flat-panel geometry dict (strainstream.xrd convention)."""
    return {"distance_m": distance_m, "poni1_m": shape[0] / 2 * pixel_um * 1e-6,
            "poni2_m": shape[1] / 2 * pixel_um * 1e-6, "rot1": 0.0, "rot2": 0.0, "rot3": 0.0,
            "wavelength_A": wavelength_A, "pixel_size_um": [pixel_um, pixel_um],
            "shape": list(shape)}


def synth_frame(phases, geometry, *, seed=0, peak_counts=3.0e4, **kw):
    """2-D frame (uint16 counts) made with pyFAI from a noise-free 1-D synthetic profile."""
    from strainstream.xrd import make_azimuthal_integrator

    q = np.linspace(0.2, 12.0, 40000)
    _, prof, _, _ = synth_pattern(phases, q=q, noise=False, counts_003=peak_counts,
                                  background=0.02 * peak_counts, **kw)
    ai = make_azimuthal_integrator(geometry)
    img = ai.calcfrom1d(q, prof, dim1_unit="q_A^-1", correctSolidAngle=True)
    rng = np.random.default_rng(seed)
    return np.minimum(rng.poisson(np.clip(img, 0, None)), 65535).astype(np.uint16)


def cos2chi_sector_lattices(phase, n: int = 8, amplitude: float = 0.002):
    """Per-sector lattices of ``phase`` whose c varies as c0·(1 + amplitude·cos 2χ) over ``n``
    equal azimuthal sectors from χ = −180° (for ``XRDFrameSimulator.sector_frame``).

    Returns (c_true, sectors): c at each sector centre (Å) and one one-phase list per sector.
    """
    centres = -180.0 + (np.arange(n) + 0.5) * 360.0 / n
    c_true = phase.c_A * (1 + amplitude * np.cos(2 * np.radians(centres)))
    sectors = [[dict(a_A=phase.a_A, c_A=c, fraction=1.0, microstrain=phase.microstrain,
                     size_nm=phase.size_nm)] for c in c_true]
    return c_true, sectors
