"""Crystallography helpers shared by the simulated XRD forward models.

X-ray atomic form factors (Cromer–Mann, International Tables Vol. C Table 6.1.1.4, neutral
atoms), structure factors from explicit unit-cell contents, and reflection lists (Q, |F|²
summed over all (hkl) with the same d-spacing, so multiplicity is implicit) for

* the layered R-3m oxide LiMO2 (hexagonal setting, M = Ni0.9Co0.1 or Ni0.9Mn0.1, Ni on 3a
  (0,0,0), Li on 3b (0,0,1/2), O on 6c (0,0,±z)); Li content follows the state of charge,
* fcc aluminium (Fm-3m, the current collector),
* CeO2 fluorite (Fm-3m, the NIST SRM 674b calibrant).

Everything here is private to :mod:`strainstream.sim`; units: Å, Å⁻¹, degrees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Cromer–Mann coefficients a1, b1, a2, b2, a3, b3, a4, b4, c (f0 at s = sinθ/λ in Å⁻¹):
# f0(s) = Σ a_i exp(-b_i s²) + c. International Tables for Crystallography Vol. C, 6.1.1.4.
_CROMER_MANN: dict[str, tuple[float, ...]] = {
    "Li": (1.1282, 3.9546, 0.7508, 1.0524, 0.6175, 85.3905, 0.4653, 168.261, 0.0377),
    "O": (3.0485, 13.2771, 2.2868, 5.7011, 1.5463, 0.3239, 0.867, 32.9089, 0.2508),
    "Al": (6.4202, 3.0387, 1.9002, 0.7426, 1.5936, 31.5472, 1.9646, 85.0886, 1.1151),
    "Mn": (11.2819, 5.3409, 7.3573, 0.3432, 3.0193, 17.8674, 2.2441, 83.7543, 1.0896),
    "Co": (12.2841, 4.2791, 7.3409, 0.2784, 4.0034, 13.5359, 2.3488, 71.1692, 1.0118),
    "Ni": (12.8376, 3.8785, 7.292, 0.2565, 4.4438, 12.1763, 2.38, 66.3421, 1.0341),
    "Ce": (21.1671, 2.81219, 19.7695, 0.226836, 11.8513, 17.6083, 3.33049, 127.113, 1.86264),
}

#: Lattice constant of CeO2 NIST SRM 674b (Å) and of aluminium at room temperature (Å).
CEO2_A_A = 5.4116
AL_A_A = 4.0495


def form_factor(element: str, s_A_inv: np.ndarray) -> np.ndarray:
    """Atomic X-ray form factor f0 (electrons) of a neutral atom.

    Parameters
    ----------
    element : str
        Element symbol, one of Li, O, Al, Mn, Co, Ni, Ce.
    s_A_inv : ndarray, any shape
        sinθ/λ = Q/(4π) in Å⁻¹.

    Returns
    -------
    ndarray, same shape as ``s_A_inv``
    """
    try:
        coeff = _CROMER_MANN[element]
    except KeyError:
        raise ValueError(
            f"no form factor for element {element!r}; known: {sorted(_CROMER_MANN)}"
        ) from None
    s2 = np.asarray(s_A_inv, dtype=float) ** 2
    f = np.full_like(s2, coeff[8])
    for i in range(4):
        f += coeff[2 * i] * np.exp(-coeff[2 * i + 1] * s2)
    return f


@dataclass(frozen=True)
class ReflectionList:
    """Powder reflections of one phase, equal d-spacings merged.

    Attributes
    ----------
    hkl : ndarray, shape (n, 3), int
        One representative (h, k, l) per reflection group (preferring non-negative indices,
        e.g. (0, 0, 3), (0, 1, 2), (1, 0, 4), (1, 1, 0)).
    q_A_inv : ndarray, shape (n,)
        Q = 2π/d of each group, ascending.
    f2_sum : ndarray, shape (n,)
        Σ |F|² over all (hkl) of the group (multiplicity included), electrons².
    """

    hkl: np.ndarray
    q_A_inv: np.ndarray
    f2_sum: np.ndarray


def hexagonal_q_A_inv(hkl: np.ndarray, a_A: float, c_A: float) -> np.ndarray:
    """Q = 2π/d for hexagonal (hkl): 1/d² = 4(h²+hk+k²)/(3a²) + l²/c².

    Parameters
    ----------
    hkl : ndarray, shape (..., 3)
    a_A, c_A : float
        Hexagonal lattice parameters (Å).

    Returns
    -------
    ndarray, shape (...)
        Q in Å⁻¹.
    """
    hkl = np.asarray(hkl, dtype=float)
    h, k, ll = hkl[..., 0], hkl[..., 1], hkl[..., 2]
    inv_d2 = 4.0 * (h * h + h * k + k * k) / (3.0 * a_A**2) + ll * ll / c_A**2
    return 2.0 * np.pi * np.sqrt(inv_d2)


def cubic_q_A_inv(hkl: np.ndarray, a_A: float) -> np.ndarray:
    """Q = 2π/d = 2π·sqrt(h²+k²+l²)/a for a cubic lattice (Å⁻¹); ``hkl`` shape (..., 3)."""
    hkl = np.asarray(hkl, dtype=float)
    return 2.0 * np.pi * np.sqrt(np.sum(hkl * hkl, axis=-1)) / a_A


def _hkl_box(hmax: int, kmax: int, lmax: int) -> np.ndarray:
    h, k, ll = np.meshgrid(
        np.arange(-hmax, hmax + 1),
        np.arange(-kmax, kmax + 1),
        np.arange(-lmax, lmax + 1),
        indexing="ij",
    )
    hkl = np.stack([h.ravel(), k.ravel(), ll.ravel()], axis=1)
    return hkl[np.any(hkl != 0, axis=1)]


def _structure_factor_sq(
    hkl: np.ndarray,
    q_A_inv: np.ndarray,
    sites: list[tuple[dict[str, float], np.ndarray]],
    b_iso_A2: float,
) -> np.ndarray:
    """|F(hkl)|² for sites given as (composition {element: occupancy}, fractional xyz (m, 3))."""
    s = q_A_inv / (4.0 * np.pi)
    f_total = np.zeros(hkl.shape[0], dtype=complex)
    for composition, xyz in sites:
        f_site = np.zeros_like(s)
        for element, occ in composition.items():
            if occ:
                f_site += occ * form_factor(element, s)
        phase = np.exp(2j * np.pi * (hkl.astype(float) @ np.asarray(xyz, dtype=float).T))
        f_total += f_site * phase.sum(axis=1)
    debye_waller = np.exp(-2.0 * b_iso_A2 * s * s)
    return (np.abs(f_total) ** 2) * debye_waller


def _merge(hkl: np.ndarray, q: np.ndarray, f2: np.ndarray, q_max: float) -> ReflectionList:
    keep = (q <= q_max) & (f2 > 1e-6 * max(float(f2.max()), 1e-300))
    hkl, q, f2 = hkl[keep], q[keep], f2[keep]
    key = np.round(q, 9)
    uniq, inverse = np.unique(key, return_inverse=True)
    f2_sum = np.bincount(inverse, weights=f2, minlength=uniq.size)
    q_sum = np.bincount(inverse, weights=q, minlength=uniq.size)
    count = np.bincount(inverse, minlength=uniq.size)
    # representative hkl: prefer members with all indices >= 0, then the lexically largest
    nonneg = np.all(hkl >= 0, axis=1)
    order = np.lexsort((hkl[:, 2], hkl[:, 1], hkl[:, 0], nonneg, inverse))
    last = np.r_[np.nonzero(np.diff(inverse[order]))[0], order.size - 1]
    rep = hkl[order[last]]
    return ReflectionList(hkl=rep, q_A_inv=q_sum / count, f2_sum=f2_sum)


_R_CENTRING = np.array([[0.0, 0.0, 0.0], [2 / 3, 1 / 3, 1 / 3], [1 / 3, 2 / 3, 2 / 3]])
_F_CENTRING = np.array([[0.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]])


def layered_reflections(
    a_A: float,
    c_A: float,
    q_max_A_inv: float,
    transition_metals: dict[str, float],
    li_occupancy: float = 1.0,
    oxygen_z: float = 0.2585,
    b_iso_A2: float = 0.5,
) -> ReflectionList:
    """Reflections of a layered R-3m LiMO2 phase (hexagonal setting).

    Parameters
    ----------
    a_A, c_A : float
        Lattice parameters (Å).
    q_max_A_inv : float
        Largest Q kept (Å⁻¹).
    transition_metals : dict
        Occupancy of the 3a site, e.g. ``{"Ni": 0.9, "Co": 0.1}``.
    li_occupancy : float
        Li occupancy of the 3b site (1 − x for Li₁₋ₓMO₂).
    oxygen_z : float
        Oxygen 6c coordinate.
    b_iso_A2 : float
        Overall isotropic Debye–Waller factor B (Å²).

    Returns
    -------
    ReflectionList
    """
    hmax = int(np.ceil(a_A * q_max_A_inv / (2 * np.pi) * 1.2)) + 1
    lmax = int(np.ceil(c_A * q_max_A_inv / (2 * np.pi))) + 1
    hkl = _hkl_box(hmax, hmax, lmax)
    hkl = hkl[(-hkl[:, 0] + hkl[:, 1] + hkl[:, 2]) % 3 == 0]  # R-centring condition
    q = hexagonal_q_A_inv(hkl, a_A, c_A)
    sel = q <= q_max_A_inv
    hkl, q = hkl[sel], q[sel]
    tm = _R_CENTRING
    li = _R_CENTRING + np.array([0.0, 0.0, 0.5])
    ox = np.concatenate([_R_CENTRING + [0, 0, oxygen_z], _R_CENTRING - [0, 0, oxygen_z]]) % 1.0
    sites = [(dict(transition_metals), tm), ({"Li": li_occupancy}, li), ({"O": 1.0}, ox)]
    f2 = _structure_factor_sq(hkl, q, sites, b_iso_A2)
    return _merge(hkl, q, f2, q_max_A_inv)


def fcc_reflections(
    a_A: float,
    q_max_A_inv: float,
    basis: list[tuple[str, tuple[float, float, float]]],
    b_iso_A2: float = 0.5,
) -> ReflectionList:
    """Reflections of a face-centred cubic structure (Fm-3m) with the given basis.

    Parameters
    ----------
    a_A : float
        Cubic lattice constant (Å).
    q_max_A_inv : float
        Largest Q kept (Å⁻¹).
    basis : list of (element, (x, y, z))
        Atoms of the primitive basis; each is repeated by the four F-centring translations.
        Aluminium: ``[("Al", (0, 0, 0))]``; CeO2: ``[("Ce", (0,0,0)), ("O", (¼,¼,¼)),
        ("O", (¾,¾,¾))]``.
    b_iso_A2 : float
        Overall Debye–Waller B (Å²).

    Returns
    -------
    ReflectionList
    """
    hmax = int(np.ceil(a_A * q_max_A_inv / (2 * np.pi))) + 1
    hkl = _hkl_box(hmax, hmax, hmax)
    q = cubic_q_A_inv(hkl, a_A)
    sel = q <= q_max_A_inv
    hkl, q = hkl[sel], q[sel]
    sites = [
        ({element: 1.0}, (_F_CENTRING + np.asarray(xyz)) % 1.0) for element, xyz in basis
    ]
    f2 = _structure_factor_sq(hkl, q, sites, b_iso_A2)
    return _merge(hkl, q, f2, q_max_A_inv)


def aluminium_reflections(q_max_A_inv: float, a_A: float = AL_A_A) -> ReflectionList:
    """Reflections of fcc Al (a = 4.0495 Å by default) up to ``q_max_A_inv`` (Å⁻¹)."""
    return fcc_reflections(a_A, q_max_A_inv, [("Al", (0.0, 0.0, 0.0))], b_iso_A2=0.8)


def ceo2_reflections(q_max_A_inv: float, a_A: float = CEO2_A_A) -> ReflectionList:
    """Reflections of fluorite CeO2 (a = 5.4116 Å, NIST SRM 674b) up to ``q_max_A_inv``."""
    basis = [("Ce", (0.0, 0.0, 0.0)), ("O", (0.25, 0.25, 0.25)), ("O", (0.75, 0.75, 0.75))]
    return fcc_reflections(a_A, q_max_A_inv, basis, b_iso_A2=0.4)
