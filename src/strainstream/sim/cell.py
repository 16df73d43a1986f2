"""Simulated half coin cell (Li metal | Ni-rich layered oxide) for the operando XRD beamline.

A deterministic, cheap single-particle model of a LiNi0.9Co0.1O2 (NC91) or LiNi0.9Mn0.1O2
(NM91) positive electrode, single-crystal (SC) or polycrystalline (PC):

* **State of charge** ``soc`` is the fraction of the practical charge capacity (to 4.5 V at
  open circuit) that has been extracted: 0 = pristine/fully lithiated, 1 = charged to 4.5 V.
  It follows the applied specific current exactly (mA/g of active material, positive on
  charge/delithiation): d(soc)/dt = I / (3600 · Q_practical).
* **Voltage** V = V_oc(soc_surface) + R_ohm·I + η_ct. V_oc is built from a differential
  capacity dQ/dV made of Gaussian peaks (H1→M ≈3.65 V, M→H2 ≈4.0 V, H2→H3 ≈4.2 V) on a
  baseline, integrated and inverted, so it is monotonic on 2.7–4.5 V with the H2→H3 plateau.
  soc_surface adds solid-state diffusion in a sphere of radius r_p with diffusivity D (exact
  eigen-mode solution of Fick's law under constant flux, 60 modes, exact exponential update
  for piecewise-constant current), so a current step gives a √t-like response and a rest
  gives a relaxation. Note: r_p²/D is 1100–1900 s in the presets, not ≫ the 100–400 s GITT
  fit window, so the GITT formula (semi-infinite √t regime) applied to this cell returns
  D·(planar/sphere slope)², e.g. ≈0.17·D for SC-NC91 — exactly what the finite-sphere
  solution predicts (tests/electrochem check this).
  η_ct is a first-order (RC) charge-transfer polarisation (time constant ~20 s).
* **Lattice**: a, c follow the bulk soc along smooth monotone-preserving (PCHIP) paths through
  H1 → H2 (c grows to ≈14.45 Å) → H3 (c collapses above ≈4.2 V). SC-NM91 has an H2/H3
  two-phase window (lever rule, Δc up to 0.68 Å); the others are solid solutions.
  Microstrain ε (Williamson–Hall, dimensionless, FWHM convention of DESIGN.md; GSAS-II
  mustrain = 4ε·10⁶) rises at high soc, more for NM91, and with the concentration gradient
  (hence with rate): ε = ε_oc(soc) + κ·(|dln c/dsoc| + |dln a/dsoc|)·|soc_surface − soc|, and
  under a constant current I (mA/g) the gradient settles (after ≈ r_p²/(20 D)) at Fick's
  u·r_p²/(15·D), u = I/(3600·Q_practical) — so the rate term grows linearly with the rate
  and is largest where the lattice moves fastest with soc (the H2→H3 collapse of NM91).

Contraction definitions reproduced by the presets (open-circuit path, soc 0 → 1):

    c contraction (%)      = 100 · (c_max − c(soc=1)) / c_max
    volume contraction (%) = 100 · (V_max − V(soc=1)) / V_max

with c_max, V_max the maxima along the charge (V is maximal at the pristine state here) and
soc = 1 the open-circuit state at 4.5 V. For PC-NC91 these are 6.0 % / 7.8 % and for PC-NM91
3.6 % / 5.9 % (REFERENCE.md). SC-NC91 (5.0 % / 6.8 %) and SC-NM91 (5.33 % / 7.0 %, largest
H2–H3 Δc = 0.68 Å) are illustrative choices: the reference gives no numbers for them.

Times are in seconds, currents in mA/g (specific) or mA, capacities in mAh/g, lengths in Å.
The model has no randomness: the same inputs give the same outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.optimize import brentq

__all__ = [
    "gitt_formula_diffusivity_cm2_s",
    "gitt_readings",
    "PRESETS",
    "CellPreset",
    "CoinCell",
    "LatticePhase",
    "contraction_metrics",
    "lattice_at_soc",
    "ocv_V",
    "preset",
]

_SQRT3_2 = math.sqrt(3.0) / 2.0
V_MIN_V = 2.7
V_MAX_V = 4.5
_V_PER_SOC_BEYOND = 20.0


@dataclass(frozen=True)
class LatticePhase:
    """One layered R-3m phase present in the electrode.

    Attributes
    ----------
    name : str
        "H1-H2" (solid solution before the collapse), "H2", "H3" or "layered" — a label.
    a_A, c_A : float
        Hexagonal lattice parameters (Å).
    fraction : float
        Weight fraction of the layered material in this phase (phases sum to 1).
    microstrain : float
        Williamson–Hall microstrain ε (dimensionless; FWHM_Q = 2πK/D + 2εQ).
    size_nm : float
        Crystallite (coherent domain) size D (nm).
    li_occupancy : float
        Li occupancy of the 3b site (1 − x in Li₁₋ₓMO₂), for structure factors.
    """

    name: str
    a_A: float
    c_A: float
    fraction: float
    microstrain: float
    size_nm: float
    li_occupancy: float

    @property
    def volume_A3(self) -> float:
        """Hexagonal cell volume (√3/2)·a²·c in Å³."""
        return _SQRT3_2 * self.a_A**2 * self.c_A


@dataclass(frozen=True)
class CellPreset:
    """Material/morphology parameters of a simulated cell (see module docstring)."""

    name: str
    material: str
    morphology: str
    transition_metals: dict[str, float]
    theoretical_capacity_mAh_g: float
    practical_capacity_mAh_g: float
    retention_100_cycles: float
    # open-circuit voltage: dQ/dV peaks (centre V, width V, weight) and baseline weight
    ocv_peaks: tuple[tuple[float, float, float], ...]
    ocv_baseline: float
    # lattice path (soc knots)
    a0_A: float
    a_drop_knots: tuple[tuple[float, float], ...]
    c_knots: tuple[tuple[float, float], ...]
    volume_contraction_pct: float
    two_phase: tuple[float, float, float, float, float, float] | None = None
    # microstrain
    strain0: float = 5e-4
    strain_high: float = 8e-4
    strain_high_soc: float = 0.8
    strain_two_phase: float = 0.0
    strain_rate_gain: float = 0.05
    size_nm: float = 200.0
    # kinetics
    particle_radius_um: float = 1.5
    diffusivity_cm2_s: float = 1e-11
    r_ohm_V_per_mA_g: float = 1.5e-4
    r_ct_V_per_mA_g: float = 1.0e-4
    tau_ct_s: float = 20.0
    extra: dict = field(default_factory=dict)


_OCV_NC91 = ((3.655, 0.045, 0.20), (3.76, 0.11, 0.17), (4.005, 0.03, 0.09), (4.195, 0.022, 0.16))
_OCV_NM91 = ((3.67, 0.05, 0.19), (3.78, 0.11, 0.17), (4.02, 0.032, 0.09), (4.18, 0.02, 0.15))
_A_DROP = ((0.0, 0.0), (0.25, 0.30), (0.5, 0.60), (0.7, 0.82), (0.85, 0.94), (1.0, 1.0))
_S_KNOTS = (0.0, 0.2, 0.4, 0.55, 0.66, 0.74, 0.80, 0.86, 0.93, 1.0)

PRESETS: dict[str, CellPreset] = {
    "PC-NC91": CellPreset(
        name="PC-NC91", material="NC91", morphology="PC",
        transition_metals={"Ni": 0.9, "Co": 0.1},
        theoretical_capacity_mAh_g=275.0, practical_capacity_mAh_g=245.0,
        retention_100_cycles=0.85,
        ocv_peaks=_OCV_NC91, ocv_baseline=0.30,
        a0_A=2.868, a_drop_knots=_A_DROP,
        c_knots=tuple(zip(_S_KNOTS, (14.182, 14.225, 14.32, 14.41, 14.45, 14.40, 14.15,
                                     13.80, 13.64, 14.45 * (1 - 0.060)), strict=True)),
        volume_contraction_pct=7.8,
        strain0=6e-4, strain_high=9e-4, size_nm=90.0,
        particle_radius_um=5.0, diffusivity_cm2_s=2e-10,
    ),
    "SC-NC91": CellPreset(
        name="SC-NC91", material="NC91", morphology="SC",
        transition_metals={"Ni": 0.9, "Co": 0.1},
        theoretical_capacity_mAh_g=275.0, practical_capacity_mAh_g=238.0,
        retention_100_cycles=0.892,
        ocv_peaks=_OCV_NC91, ocv_baseline=0.30,
        a0_A=2.870, a_drop_knots=_A_DROP,
        c_knots=tuple(zip(_S_KNOTS, (14.186, 14.228, 14.32, 14.405, 14.44, 14.39, 14.16,
                                     13.86, 13.75, 14.44 * (1 - 0.050)), strict=True)),
        volume_contraction_pct=6.8,
        strain0=4e-4, strain_high=7e-4, size_nm=220.0,
        particle_radius_um=1.5, diffusivity_cm2_s=2e-11,
    ),
    "PC-NM91": CellPreset(
        name="PC-NM91", material="NM91", morphology="PC",
        transition_metals={"Ni": 0.9, "Mn": 0.1},
        theoretical_capacity_mAh_g=276.0, practical_capacity_mAh_g=236.0,
        retention_100_cycles=0.70,
        ocv_peaks=_OCV_NM91, ocv_baseline=0.32,
        a0_A=2.874, a_drop_knots=_A_DROP,
        c_knots=tuple(zip(_S_KNOTS, (14.206, 14.245, 14.335, 14.415, 14.45, 14.42, 14.30,
                                     14.08, 13.97, 14.45 * (1 - 0.036)), strict=True)),
        volume_contraction_pct=5.9,
        strain0=7e-4, strain_high=1.6e-3, size_nm=80.0,
        particle_radius_um=5.0, diffusivity_cm2_s=1.5e-10,
        r_ct_V_per_mA_g=1.5e-4,
    ),
    "SC-NM91": CellPreset(
        name="SC-NM91", material="NM91", morphology="SC",
        transition_metals={"Ni": 0.9, "Mn": 0.1},
        theoretical_capacity_mAh_g=276.0, practical_capacity_mAh_g=228.0,
        retention_100_cycles=0.759,
        ocv_peaks=((3.67, 0.05, 0.19), (3.78, 0.11, 0.17), (4.02, 0.032, 0.09),
                   (4.185, 0.012, 0.15)),
        ocv_baseline=0.32,
        a0_A=2.874, a_drop_knots=_A_DROP,
        # single-phase H1→H2 path up to the two-phase window; H3 path after it
        c_knots=((0.0, 14.203), (0.2, 14.24), (0.4, 14.33), (0.55, 14.41), (0.66, 14.44),
                 (0.74, 14.45)),
        # (soc_start, soc_end, c_H2 start, c_H2 end, c_H3 start, c_H3 end)
        two_phase=(0.74, 0.88, 14.45, 14.40, 13.77, 13.74),
        volume_contraction_pct=7.0,
        strain0=5e-4, strain_high=1.5e-3, strain_two_phase=8e-4, size_nm=200.0,
        particle_radius_um=1.5, diffusivity_cm2_s=1.2e-11,
        r_ct_V_per_mA_g=1.5e-4,
        extra={"c_h3_after": ((0.88, 13.74), (0.94, 13.70), (1.0, 13.68))},
    ),
}


def preset(name: str) -> CellPreset:
    """Return the preset called ``name`` ("SC-NC91", "PC-NC91", "SC-NM91", "PC-NM91").

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones).
    """
    if isinstance(name, CellPreset):
        return name
    key = str(name).strip().upper()
    if key not in PRESETS:
        raise ValueError(f"unknown cell preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[key]


# ----------------------------------------------------------------------------------------
# open-circuit voltage


@cache
def _ocv_table(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(soc_grid, V_grid) for the preset, soc strictly increasing."""
    p = PRESETS[name]
    v = np.linspace(2.0, 4.9, 29001)
    # baseline: nearly no capacity below ~3.45 V, then a flat density up to 4.5 V
    base = p.ocv_baseline / 1.05 * (1.0 / (1.0 + np.exp(-(v - 3.52) / 0.035)))
    dens = base + 0.004  # small density everywhere: strictly monotone inverse
    for v0, w, wt in p.ocv_peaks:
        dens = dens + wt * np.exp(-0.5 * ((v - v0) / w) ** 2) / (w * math.sqrt(2 * math.pi))
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(v))])
    g_lo = np.interp(3.45, v, cum)  # pristine open-circuit voltage ≈ 3.45 V
    g_hi = np.interp(V_MAX_V, v, cum)
    soc = (cum - g_lo) / (g_hi - g_lo)
    return soc, v


def ocv_V(preset_name: str, soc: np.ndarray | float) -> np.ndarray | float:
    """Open-circuit voltage vs Li/Li⁺ (V) at state of charge ``soc`` for a preset.

    Parameters
    ----------
    preset_name : str
        Preset name.
    soc : float or ndarray, any shape
        Fraction of the practical capacity extracted (0 pristine, 1 = 4.5 V at open circuit).
        Outside the tabulated range (2.0–4.9 V) the voltage continues linearly with a steep
        slope (20 V per unit soc) and is clipped to [1.0, 5.5] V.

    Returns
    -------
    float or ndarray (same shape), volts.
    """
    s_tab, v_tab = _ocv_table(preset(preset_name).name)
    soc = np.asarray(soc, dtype=float)
    v = np.interp(soc, s_tab, v_tab)
    v = np.where(soc < s_tab[0], v_tab[0] + (soc - s_tab[0]) * _V_PER_SOC_BEYOND, v)
    v = np.where(soc > s_tab[-1], v_tab[-1] + (soc - s_tab[-1]) * _V_PER_SOC_BEYOND, v)
    v = np.clip(v, 1.0, 5.5)
    return float(v) if v.ndim == 0 else v


# ----------------------------------------------------------------------------------------
# lattice path


@cache
def _paths(name: str):
    p = PRESETS[name]
    s_c, c_c = np.array(p.c_knots).T
    c_path = PchipInterpolator(s_c, c_c, extrapolate=True)
    s_a, h_a = np.array(p.a_drop_knots).T
    h_path = PchipInterpolator(s_a, h_a, extrapolate=True)
    h3_path = None
    if p.two_phase is not None:
        s_h, c_h = np.array(p.extra["c_h3_after"]).T
        h3_path = PchipInterpolator(s_h, c_h, extrapolate=True)

    def c_mean_and_max(a_end: float) -> tuple[float, float]:
        s = np.linspace(0.0, 1.0, 4001)
        phases = _phases_raw(p, c_path, h_path, h3_path, a_end, s)
        vmax = max(float(np.max(_SQRT3_2 * a**2 * c)) for a, c, f in phases if np.any(f > 0))
        a1, c1, _ = phases[-1]
        return vmax, _SQRT3_2 * a1[-1] ** 2 * c1[-1]

    def excess(a_end: float) -> float:
        vmax, vend = c_mean_and_max(a_end)
        return 100.0 * (vmax - vend) / vmax - p.volume_contraction_pct

    a_end = brentq(excess, p.a0_A - 0.15, p.a0_A - 0.005, xtol=1e-10)
    return c_path, h_path, h3_path, a_end


def _phases_raw(p, c_path, h_path, h3_path, a_end, s):
    """Per-phase (a, c, fraction) arrays along soc array ``s`` (phases in fixed order)."""
    s = np.clip(s, 0.0, 1.0)
    a = p.a0_A - (p.a0_A - a_end) * h_path(s)
    if p.two_phase is None:
        return [(a, c_path(s), np.ones_like(s))]
    s1, s2, c2a, c2b, c3a, c3b = p.two_phase
    t = np.clip((s - s1) / (s2 - s1), 0.0, 1.0)
    f3 = np.where(s <= s1, 0.0, np.where(s >= s2, 1.0, t))
    c_h2 = np.where(s <= s1, c_path(np.minimum(s, s1)), c2a + (c2b - c2a) * t)
    c_h3 = np.where(s >= s2, h3_path(np.maximum(s, s2)), c3a + (c3b - c3a) * t)
    da = 0.002
    return [(a + da * f3, c_h2, 1.0 - f3), (a - da * (1.0 - f3), c_h3, f3)]


def _strain(p: CellPreset, s: np.ndarray, f3: np.ndarray, gradient: float) -> np.ndarray:
    high = p.strain_high / (1.0 + np.exp(-(s - p.strain_high_soc) / 0.05))
    two_phase = p.strain_two_phase * 4.0 * f3 * (1.0 - f3)
    return p.strain0 + high + two_phase + gradient


def lattice_at_soc(
    preset_name: str, soc: float, delta_surface_soc: float = 0.0
) -> list[LatticePhase]:
    """Layered phase(s) present at bulk state of charge ``soc``.

    Parameters
    ----------
    preset_name : str
        Preset name.
    soc : float
        Bulk state of charge (clipped to [0, 1] for the lattice).
    delta_surface_soc : float
        Surface-minus-bulk soc difference (concentration gradient inside the particles);
        adds the rate-dependent microstrain κ·(|dln c/dsoc| + |dln a/dsoc|)·|Δsoc|.

    Returns
    -------
    list of LatticePhase
        One phase, or two ("H2", "H3") inside the SC-NM91 two-phase window; phases with
        zero fraction are omitted.
    """
    p = preset(preset_name)
    c_path, h_path, h3_path, a_end = _paths(p.name)
    s = np.array([float(np.clip(soc, 0.0, 1.0))])
    phases = _phases_raw(p, c_path, h_path, h3_path, a_end, s)
    # gradient-induced strain from the slope of the fraction-weighted lattice path
    eps = 1e-3
    sp = np.clip(s + np.array([-eps, eps]) , 0.0, 1.0)
    ph2 = _phases_raw(p, c_path, h_path, h3_path, a_end, sp)
    c_w = sum(c * f for a, c, f in ph2)
    a_w = sum(a * f for a, c, f in ph2)
    ds = max(sp[1] - sp[0], 1e-12)
    slope = abs(np.log(c_w[1] / c_w[0])) / ds + abs(np.log(a_w[1] / a_w[0])) / ds
    gradient = p.strain_rate_gain * slope * abs(delta_surface_soc)
    f3 = phases[-1][2] if p.two_phase is not None else np.zeros(1)
    strain = float(_strain(p, s, f3, gradient)[0])
    li = float(np.clip(1.0 - s[0] * p.practical_capacity_mAh_g / p.theoretical_capacity_mAh_g,
                       0.0, 1.0))
    out = []
    names = ["layered"] if p.two_phase is None else ["H2", "H3"]
    for nm, (a, c, f) in zip(names, phases, strict=True):
        if f[0] <= 0.0:
            continue
        if p.two_phase is not None and f[0] >= 1.0:
            nm = "H2" if s[0] <= p.two_phase[0] else "H3"
        out.append(LatticePhase(nm, float(a[0]), float(c[0]), float(f[0]), strain,
                                p.size_nm, li))
    return out


def contraction_metrics(preset_name: str, n: int = 2001) -> dict[str, float]:
    """Lattice changes of a preset along the open-circuit charge path soc 0 → 1.

    Parameters
    ----------
    preset_name : str
    n : int
        Number of soc samples.

    Returns
    -------
    dict
        ``c_max_A``, ``c_end_A``, ``c_contraction_pct`` = 100(c_max − c_end)/c_max,
        ``volume_max_A3``, ``volume_end_A3``, ``volume_contraction_pct`` =
        100(V_max − V_end)/V_max, ``a0_A``, ``a_end_A``, ``max_delta_c_A`` (largest c
        difference between coexisting phases, 0 for a solid solution),
        ``two_phase_soc`` (start, end) or None.
    """
    p = preset(preset_name)
    c_path, h_path, h3_path, a_end = _paths(p.name)
    s = np.linspace(0.0, 1.0, n)
    phases = _phases_raw(p, c_path, h_path, h3_path, a_end, s)
    present = [(a[f > 0], c[f > 0]) for a, c, f in phases]
    c_max = max(float(c.max()) for a, c in present if c.size)
    v_max = max(float((_SQRT3_2 * a**2 * c).max()) for a, c in present if c.size)
    a1, c1, _ = phases[-1]
    c_end, v_end = float(c1[-1]), float(_SQRT3_2 * a1[-1] ** 2 * c1[-1])
    dmax = 0.0
    if p.two_phase is not None:
        (a2, c2, f2), (a3, c3, f3) = phases
        both = (f2 > 0) & (f3 > 0)
        if np.any(both):
            dmax = float(np.max(c2[both] - c3[both]))
    return {
        "c_max_A": c_max,
        "c_end_A": c_end,
        "c_contraction_pct": 100.0 * (c_max - c_end) / c_max,
        "volume_max_A3": v_max,
        "volume_end_A3": v_end,
        "volume_contraction_pct": 100.0 * (v_max - v_end) / v_max,
        "a0_A": p.a0_A,
        "a_end_A": float(a_end),
        "max_delta_c_A": dmax,
        "two_phase_soc": None if p.two_phase is None else (p.two_phase[0], p.two_phase[1]),
    }


# ----------------------------------------------------------------------------------------
# the cell


@cache
def _sphere_roots(n: int) -> np.ndarray:
    """First n positive roots of tan(α) = α."""
    roots = np.empty(n)
    for k in range(1, n + 1):
        lo, hi = k * math.pi + 1e-12, (k + 0.5) * math.pi - 1e-12
        roots[k - 1] = brentq(lambda x: math.sin(x) - x * math.cos(x), lo, hi, xtol=1e-14)
    return roots


_MODES = ("CC", "CV", "REST")


class CoinCell:
    """Deterministic half coin cell; see the module docstring for the model.

    Parameters
    ----------
    preset_name : str
        "SC-NC91", "PC-NC91", "SC-NM91" or "PC-NM91".
    mass_mg : float
        Active material mass (mg), > 0.
    soc : float
        Initial state of charge (default 0, pristine; the cell starts at rest and relaxed).
    max_substep_s : float
        Largest internal time step (s) used for voltage-limit detection and CV control.

    Notes
    -----
    Sign convention: positive current charges the cell (delithiates the cathode).
    ``cycle`` starts at 1 and increments when a charge starts after discharge capacity has
    been passed in the current cycle; at each new cycle the practical capacity is reduced
    by the per-cycle fade factor ``retention_100_cycles ** (1/100)``.
    """

    n_modes = 60

    def __init__(
        self,
        preset_name: str = "SC-NM91",
        mass_mg: float = 10.0,
        *,
        soc: float = 0.0,
        max_substep_s: float = 5.0,
    ) -> None:
        self.preset = preset(preset_name)
        mass_mg = float(mass_mg)
        if not (math.isfinite(mass_mg) and mass_mg > 0):
            raise ValueError(f"mass_mg must be a positive number of milligrams, got {mass_mg!r}")
        if not (math.isfinite(max_substep_s) and max_substep_s > 0):
            raise ValueError("max_substep_s must be positive (seconds)")
        self.mass_mg = mass_mg
        self.max_substep_s = float(max_substep_s)
        p = self.preset
        self._cap = p.practical_capacity_mAh_g
        self._s = float(soc)
        r_cm = p.particle_radius_um * 1e-4
        tau_d = r_cm**2 / p.diffusivity_cm2_s
        alpha = _sphere_roots(self.n_modes)
        self._lam = alpha**2 / tau_d  # 1/s
        self._g = (tau_d / 3.0) * 2.0 / alpha**2  # s (Δsoc per unit d soc/dt)
        self._g_tail = (tau_d / 3.0) * (0.2 - float(np.sum(2.0 / alpha**2)))
        self._z = np.zeros(self.n_modes)
        self._eta_ct = 0.0
        self._i = 0.0  # mA/g, current during the last sub-step
        self._mode = "REST"
        self._i_set = 0.0
        self._v_set = None
        self._v_limit = None
        self._then = "REST"
        self._i_limit = 1000.0
        self._t = 0.0
        self._q_net = 0.0
        self._q_chg = 0.0
        self._q_dis = 0.0
        self._q_step = 0.0
        self._e_net = 0.0  # mWh/g, ∫V dQ (charge +, discharge −)
        self._cycle = 1
        self._limit_hits = 0

    # ---------------------------------------------------------------- control
    def set_mode(
        self,
        mode: str,
        *,
        current_mA_g: float | None = None,
        voltage_V: float | None = None,
        v_limit_V: float | None = None,
        then: str = "rest",
    ) -> None:
        """Select the control mode.

        Parameters
        ----------
        mode : {"CC", "CV", "REST"} (case-insensitive)
            Constant current, constant voltage, or open circuit.
        current_mA_g : float
            CC: the applied specific current (mA/g, positive = charge; required).
            CV: the current compliance |I| ≤ current_mA_g (default 1000 mA/g).
        voltage_V : float
            CV: the held voltage (V; required).
        v_limit_V : float, optional
            CC only: stop when the voltage reaches this limit (≥ on charge, ≤ on discharge)
            and continue in mode ``then`` ("rest", or "cv" to hold at the limit).
        then : {"rest", "cv"}

        Raises
        ------
        ValueError
            Unknown mode, missing or non-finite set-points.
        """
        m = str(mode).strip().upper()
        if m == "OCV":
            m = "REST"
        if m not in _MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {list(_MODES)}")
        then_u = str(then).strip().upper()
        if then_u not in ("REST", "CV"):
            raise ValueError(f"then must be 'rest' or 'cv', got {then!r}")
        if m == "CC":
            if current_mA_g is None or not math.isfinite(current_mA_g):
                raise ValueError("CC mode needs a finite current_mA_g (mA/g, + = charge)")
            if v_limit_V is not None and not math.isfinite(v_limit_V):
                raise ValueError("v_limit_V must be finite (volts) or None")
            self._i_set = float(current_mA_g)
            self._v_limit = None if v_limit_V is None else float(v_limit_V)
            self._then = then_u
        elif m == "CV":
            if voltage_V is None or not math.isfinite(voltage_V):
                raise ValueError("CV mode needs a finite voltage_V (volts vs Li/Li+)")
            self._v_set = float(voltage_V)
            if current_mA_g is not None:
                if not (math.isfinite(current_mA_g) and current_mA_g > 0):
                    raise ValueError("CV current compliance current_mA_g must be > 0 (mA/g)")
                self._i_limit = float(current_mA_g)
        self._mode = m
        self._q_step = 0.0

    # ------------------------------------------------------------- dynamics
    def _advance(self, h: float, i: float, *, commit: bool) -> float:
        """Voltage at the end of a sub-step of h s at constant current i (mA/g); ``commit``:
        the state moves on and the energy ∫V dQ of the sub-step is counted (Simpson's rule on
        the voltage at its start, middle and end)."""
        counts_energy = commit and i != 0.0 and h > 0.0
        if counts_energy:
            v0 = self._advance(0.0, i, commit=False)
            v_mid = self._advance(0.5 * h, i, commit=False)
        u = i / (3600.0 * self._cap)
        e = np.exp(-self._lam * h)
        z = self._z * e + self._g * u * (1.0 - e)
        s = self._s + u * h
        ect = math.exp(-h / self.preset.tau_ct_s)
        eta = self._eta_ct * ect + self.preset.r_ct_V_per_mA_g * i * (1.0 - ect)
        s_surf = s + float(z.sum()) + self._g_tail * u
        v = float(ocv_V(self.preset.name, s_surf)) + self.preset.r_ohm_V_per_mA_g * i + eta
        if commit:
            self._z, self._s, self._eta_ct, self._i = z, s, eta, i
            dq = i * h / 3600.0
            self._q_net += dq
            if counts_energy:
                self._e_net += dq * (v0 + 4.0 * v_mid + v) / 6.0
            self._q_step += abs(dq)
            if dq > 0:
                if self._q_dis > 0:
                    self._new_cycle()
                self._q_chg += dq
            elif dq < 0:
                self._q_dis -= dq
            self._t += h
        return v

    def _new_cycle(self) -> None:
        self._cycle += 1
        self._q_chg = 0.0
        self._q_dis = 0.0
        self._cap *= self.preset.retention_100_cycles ** (1.0 / 100.0)

    def _cv_current(self, h: float) -> float:
        lim = self._i_limit

        def f(i: float) -> float:
            return self._advance(h, i, commit=False) - self._v_set

        f_hi, f_lo = f(lim), f(-lim)
        if f_hi <= 0:
            return lim
        if f_lo >= 0:
            return -lim
        return brentq(f, -lim, lim, xtol=1e-9 * lim, rtol=1e-12)

    def _limit_residual(self, h: float, i: float, sign: float) -> float:
        return sign * (self._advance(h, i, commit=False) - self._v_limit)

    def step(self, dt_s: float) -> None:
        """Advance the cell by ``dt_s`` seconds in the current mode.

        Parameters
        ----------
        dt_s : float
            Elapsed time (s), ≥ 0. Time acceleration is the caller's business.

        Raises
        ------
        ValueError
            For a negative or non-finite time step.
        """
        dt_s = float(dt_s)
        if not (math.isfinite(dt_s) and dt_s >= 0):
            raise ValueError(f"dt_s must be a finite, non-negative number of seconds, got {dt_s}")
        remaining = dt_s
        while remaining > 0:
            h = min(remaining, self.max_substep_s)
            if self._mode == "REST":
                self._advance(remaining, 0.0, commit=True)  # exact for any length
                return
            if self._mode == "CV":
                self._advance(h, self._cv_current(h), commit=True)
            else:  # CC
                i = self._i_set
                if self._v_limit is None:
                    self._advance(remaining, i, commit=True)  # exact for any length
                    return
                sign = 1.0 if i >= 0 else -1.0
                v_end = self._advance(h, i, commit=False)
                if sign * (v_end - self._v_limit) >= 0:
                    if sign * (self.voltage_V - self._v_limit) >= 0:
                        h_hit = 0.0
                    else:
                        h_hit = brentq(self._limit_residual, 0.0, h, args=(i, sign), xtol=1e-9)
                    if h_hit > 0:
                        self._advance(h_hit, i, commit=True)
                    self._limit_hits += 1
                    v_lim = self._v_limit
                    if self._then == "CV":
                        self.set_mode("CV", voltage_V=v_lim, current_mA_g=max(abs(i), 1e-9))
                    else:
                        self.set_mode("REST")
                    h = h_hit
                else:
                    self._advance(h, i, commit=True)
            remaining -= h

    # ------------------------------------------------------------ readbacks
    @property
    def voltage_V(self) -> float:
        """Cell voltage vs Li/Li⁺ (V) for the current of the last sub-step (0 at rest)."""
        i = 0.0 if self._mode == "REST" else self._i
        if self._mode == "CC":
            i = self._i_set
        u = i / (3600.0 * self._cap)
        s_surf = self._s + float(self._z.sum()) + self._g_tail * u
        return float(ocv_V(self.preset.name, s_surf)) + self.preset.r_ohm_V_per_mA_g * i + \
            self._eta_ct

    @property
    def ocv_V(self) -> float:
        """Open-circuit voltage at the bulk state of charge (V): the fully relaxed voltage."""
        return float(ocv_V(self.preset.name, self._s))

    @property
    def current_mA_g(self) -> float:
        """Specific current (mA/g, + = charge): the set-point in CC, the solved value in CV."""
        if self._mode == "REST":
            return 0.0
        return self._i_set if self._mode == "CC" else self._i

    @property
    def current_mA(self) -> float:
        """Current (mA, + = charge) = current_mA_g · mass_mg / 1000."""
        return self.current_mA_g * self.mass_mg / 1000.0

    @property
    def capacity_mAh_g(self) -> float:
        """Net specific charge extracted since the start (mAh/g; charge +, discharge −)."""
        return self._q_net

    @property
    def energy_mWh_g(self) -> float:
        """Net specific energy put into the cell since the start, ∫V dQ (mWh/g; charge +,
        discharge −), integrated inside every sub-step as a cycler's own counter does: a
        half cycle's mean voltage is its energy over its capacity, however rarely it is read."""
        return self._e_net

    @property
    def charge_capacity_mAh_g(self) -> float:
        """Charge passed on charge in the current cycle (mAh/g)."""
        return self._q_chg

    @property
    def discharge_capacity_mAh_g(self) -> float:
        """Charge passed on discharge in the current cycle (mAh/g, positive)."""
        return self._q_dis

    @property
    def step_capacity_mAh_g(self) -> float:
        """|charge| passed since the last :meth:`set_mode` (mAh/g)."""
        return self._q_step

    @property
    def soc(self) -> float:
        """Bulk state of charge (fraction of the practical capacity extracted)."""
        return self._s

    @property
    def surface_soc(self) -> float:
        """State of charge at the particle surface (bulk + diffusion gradient), the same surface
        the voltage sees: the 60 modes plus the quasi-static tail of the higher ones, so that
        under a constant current the gradient tends to Fick's exact u·r_p²/(15·D)."""
        i = 0.0 if self._mode == "REST" else (self._i_set if self._mode == "CC" else self._i)
        return self._s + float(self._z.sum()) + self._g_tail * i / (3600.0 * self._cap)

    @property
    def cycle(self) -> int:
        """Cycle number, starting at 1."""
        return self._cycle

    @property
    def time_s(self) -> float:
        """Simulated time since creation (s)."""
        return self._t

    @property
    def mode(self) -> str:
        """Current mode: "CC", "CV" or "REST"."""
        return self._mode

    @property
    def limit_hits(self) -> int:
        """Number of times a CC voltage limit has been reached."""
        return self._limit_hits

    @property
    def practical_capacity_mAh_g(self) -> float:
        """Practical capacity of the current cycle (mAh/g), reduced by fade each cycle."""
        return self._cap

    def lattice(self) -> list[LatticePhase]:
        """Layered phase(s) at the present bulk state of charge (see :func:`lattice_at_soc`)."""
        return lattice_at_soc(self.preset.name, self._s, self.surface_soc - self._s)

    def readbacks(self) -> dict[str, float]:
        """Snapshot of the cycler readbacks (V, mA, mA/g, mAh/g, soc, cycle, s, mode)."""
        return {
            "voltage_V": self.voltage_V,
            "current_mA": self.current_mA,
            "current_mA_g": self.current_mA_g,
            "capacity_mAh_g": self.capacity_mAh_g,
            "soc": self.soc,
            "cycle": self.cycle,
            "time_s": self.time_s,
            "mode": self.mode,
        }


def gitt_formula_diffusivity_cm2_s(preset_name: str, fit_window_s: tuple[float, float] = (100.0, 400.0)) -> float:
    """The D the study's GITT formula returns for a preset's cell (cm²/s): the known answer.

    The cell's particle is a finite sphere (r_p²/D ≈ 1100–1900 s, not ≫ the fit window), so
    D = 4/(9π)·(r_p/τ · ΔE_s/(dE/d√t))² fitted in ``fit_window_s`` (s after the pulse
    start; the study's 10 < √t < 20 s^½) gives D · (planar slope / sphere slope)² of the
    constant-flux surface concentration — computed here from the exact eigen-mode
    solution (3000 modes, 301 points in the window).

    Parameters
    ----------
    preset_name : str
    fit_window_s : (float, float)
        Time window of the √t fit after the pulse start (s).
    """
    p = preset(preset_name)
    tau_d = (p.particle_radius_um * 1e-4) ** 2 / p.diffusivity_cm2_s
    roots = _sphere_roots(3000)
    t = np.linspace(*fit_window_s, 301)
    sphere = t + tau_d / 3 * (0.2 - 2 * np.sum(np.exp(-np.outer(t, roots**2) / tau_d) / roots**2, axis=1))
    planar = 2 / 3 * np.sqrt(tau_d * t / math.pi)
    ratio = (np.polyfit(np.sqrt(t), planar, 1)[0] / np.polyfit(np.sqrt(t), sphere, 1)[0]) ** 2
    return float(p.diffusivity_cm2_s * ratio)


def gitt_readings(preset_name: str = "SC-NM91", *, soc: float = 0.3, n_pulses: int = 3,
                  current_mA_g: float = 20.0, pulse_s: float = 600.0, rest_s: float = 1200.0,
                  step_s: float = 20.0, mass_mg: float = 10.0) -> list[tuple[float, float, float, float]]:
    """A GITT cycler record of the simulated cell, read every ``step_s`` of cell time.

    Six readings of rest, then ``n_pulses`` × (pulse at ``current_mA_g``, rest), then the
    first reading of the next pulse (which completes the last one for a live analysis).

    Returns
    -------
    list of (cell time s, voltage V, current mA, state of charge)
    """
    cell = CoinCell(preset_name, mass_mg, soc=soc)
    rec: list[tuple[float, float, float, float]] = []

    def read(n: int) -> None:
        for _ in range(n):
            rec.append((cell.time_s, cell.voltage_V, cell.current_mA, cell.soc))
            cell.step(step_s)

    read(6)
    for _ in range(n_pulses):
        cell.set_mode("CC", current_mA_g=current_mA_g)
        read(round(pulse_s / step_s))
        cell.set_mode("rest")
        read(round(rest_s / step_s))
    cell.set_mode("CC", current_mA_g=current_mA_g)
    read(1)
    return rec
