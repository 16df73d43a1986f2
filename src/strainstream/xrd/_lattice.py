"""Reflection lists and d-spacings for R-3m layered oxides (hexagonal setting) and fcc Al.

Conventions (DESIGN.md): Q = 2π/d in Å⁻¹; hexagonal d-spacing
1/d² = 4(h²+hk+k²)/(3a²) + l²/c²; volume V = (√3/2)a²c.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Lattice parameter of the Al current collector (fcc, room temperature), Å.
AL_A_A = 4.0495

#: Scherrer / Williamson–Hall constant K used throughout.
SCHERRER_K = 0.9


@dataclass(frozen=True)
class ReflectionSet:
    """Distinct-d reflections of a hexagonal R-3m lattice.

    Attributes
    ----------
    hkl : ndarray, shape (n, 3), int
        One representative (h, k, l) per distinct d-spacing.
    m_hk : ndarray, shape (n,), float
        h² + hk + k² (same for all members of the group).
    l2 : ndarray, shape (n,), float
        l² of the group.
    """

    hkl: np.ndarray
    m_hk: np.ndarray
    l2: np.ndarray

    def __len__(self) -> int:
        return int(self.hkl.shape[0])

    def q_A_inv(self, a_A: float, c_A: float) -> np.ndarray:
        """Peak positions Q = 2π/d, shape (n,), Å⁻¹, for lattice a, c (Å)."""
        return 2.0 * np.pi * np.sqrt(4.0 * self.m_hk / (3.0 * a_A**2) + self.l2 / c_A**2)

    def dq_dac(self, a_A: float, c_A: float) -> tuple[np.ndarray, np.ndarray]:
        """Derivatives ∂Q/∂a and ∂Q/∂c of the peak positions, shape (n,) each, Å⁻²."""
        q = self.q_A_inv(a_A, c_A)
        # Q = 2π sqrt(s); dQ = 2π ds / (2 sqrt(s)) = (2π)² ds / (2 Q)
        k = (2.0 * np.pi) ** 2 / (2.0 * q)
        dq_da = k * (-8.0 * self.m_hk / (3.0 * a_A**3))
        dq_dc = k * (-2.0 * self.l2 / c_A**3)
        return dq_da, dq_dc

    def labels(self) -> list[str]:
        """Reflection labels such as ``"003"``, ``"104"`` or ``"1 0 10"``, one per group."""
        return ["".join(str(int(v)) for v in row) if np.all(np.abs(row) < 10)
                else " ".join(str(int(v)) for v in row) for row in self.hkl]


def r3m_reflections(a_A: float, c_A: float, q_max_A_inv: float) -> ReflectionSet:
    """Distinct-d reflections of R-3m (obverse hexagonal setting) up to a maximum Q.

    Reflection condition −h + k + l = 3n. Reflections that share h²+hk+k² and |l| have the
    same d-spacing and are grouped into one entry.

    Parameters
    ----------
    a_A, c_A : float
        Hexagonal lattice parameters, Å.
    q_max_A_inv : float
        Largest Q to include, Å⁻¹.

    Returns
    -------
    ReflectionSet
        Sorted by increasing Q.
    """
    if not (a_A > 0 and c_A > 0 and q_max_A_inv > 0):
        raise ValueError("r3m_reflections needs positive a_A, c_A and q_max_A_inv")
    d_min = 2.0 * np.pi / q_max_A_inv
    hmax = int(np.ceil(2.0 * a_A / (np.sqrt(3.0) * d_min))) + 1
    lmax = int(np.ceil(c_A / d_min)) + 1
    h, k, ll = np.meshgrid(
        np.arange(-hmax, hmax + 1),
        np.arange(-hmax, hmax + 1),
        np.arange(0, lmax + 1),
        indexing="ij",
    )
    h, k, ll = h.ravel(), k.ravel(), ll.ravel()
    allowed = ((-h + k + ll) % 3 == 0) | ((-h + k - ll) % 3 == 0)
    m = h * h + h * k + k * k
    keep = allowed & ~((m == 0) & (ll == 0))
    m, ll, h, k = m[keep], ll[keep], h[keep], k[keep]
    inv_d2 = 4.0 * m / (3.0 * a_A**2) + ll.astype(float) ** 2 / c_A**2
    keep = inv_d2 <= 1.0 / d_min**2
    m, ll, h, k = m[keep], ll[keep], h[keep], k[keep]
    keys = m.astype(np.int64) * 100000 + ll
    _, first = np.unique(keys, return_index=True)
    # choose a representative with h >= 0, k >= ... prefer non-negative indices for labels
    rep_h, rep_k = [], []
    for key in keys[first]:
        sel = keys == key
        hh, kk = h[sel], k[sel]
        order = np.lexsort((-kk, -hh))  # prefer the largest h, then the largest k
        good = (hh[order] >= 0) & (kk[order] >= 0)
        j = order[np.argmax(good)] if good.any() else order[0]
        rep_h.append(hh[j])
        rep_k.append(kk[j])
    hkl = np.column_stack([rep_h, rep_k, ll[first]]).astype(int)
    m_hk = m[first].astype(float)
    l2 = ll[first].astype(float) ** 2
    q = 2.0 * np.pi * np.sqrt(4.0 * m_hk / (3.0 * a_A**2) + l2 / c_A**2)
    order = np.argsort(q, kind="stable")
    return ReflectionSet(hkl=hkl[order], m_hk=m_hk[order], l2=l2[order])


def fcc_q_A_inv(a_A: float, q_max_A_inv: float) -> tuple[np.ndarray, np.ndarray]:
    """Distinct reflections of an fcc lattice (h, k, l all odd or all even) up to q_max.

    Parameters
    ----------
    a_A : float
        Cubic lattice parameter, Å.
    q_max_A_inv : float
        Largest Q, Å⁻¹.

    Returns
    -------
    n2 : ndarray, shape (n,)
        h² + k² + l² of each distinct reflection.
    q_A_inv : ndarray, shape (n,)
        Q = 2π sqrt(n2)/a, Å⁻¹, increasing.
    """
    nmax = int(np.ceil(q_max_A_inv * a_A / (2.0 * np.pi))) + 1
    h, k, ll = np.meshgrid(*(np.arange(0, nmax + 1),) * 3, indexing="ij")
    par = h % 2 + k % 2 + ll % 2
    ok = (par == 0) | (par == 3)
    n2 = np.unique((h * h + k * k + ll * ll)[ok])
    n2 = n2[n2 > 0].astype(float)
    q = 2.0 * np.pi * np.sqrt(n2) / a_A
    keep = q <= q_max_A_inv
    return n2[keep], q[keep]


def hex_volume_A3(a_A: float, c_A: float, a_err_A: float = 0.0, c_err_A: float = 0.0,
                  cov_ac: float = 0.0) -> tuple[float, float]:
    """Hexagonal cell volume V = (√3/2)a²c and its propagated standard uncertainty.

    Parameters
    ----------
    a_A, c_A : float
        Lattice parameters, Å.
    a_err_A, c_err_A : float
        Standard uncertainties of a and c, Å.
    cov_ac : float
        Covariance of a and c, Å².

    Returns
    -------
    volume_A3, volume_err_A3 : float
    """
    v = np.sqrt(3.0) / 2.0 * a_A**2 * c_A
    dv_da = np.sqrt(3.0) * a_A * c_A
    dv_dc = np.sqrt(3.0) / 2.0 * a_A**2
    var = dv_da**2 * a_err_A**2 + dv_dc**2 * c_err_A**2 + 2.0 * dv_da * dv_dc * cov_ac
    return float(v), float(np.sqrt(max(var, 0.0)))


def lorentz_polarisation(q_A_inv: np.ndarray, wavelength_A: float) -> np.ndarray:
    """Powder Lorentz-polarisation factor (1 + cos²2θ)/(sin²θ cosθ) at Q, shape like q."""
    s = np.clip(np.asarray(q_A_inv, dtype=float) * wavelength_A / (4.0 * np.pi), 1e-9, 1.0)
    cos_t = np.sqrt(1.0 - s * s)
    cos_2t = 1.0 - 2.0 * s * s
    return (1.0 + cos_2t**2) / (s * s * cos_t)


#: laboratory Cu Kα1 and Kα2 wavelengths, Å (Hölzer et al. 1997), and the Kα2/Kα1 ratio
CU_KALPHA1_A = 1.540593
CU_KALPHA2_A = 1.544414
KALPHA2_RATIO = 0.5


def strip_kalpha2(two_theta_deg, intensity, wavelength1_A=CU_KALPHA1_A,
                  wavelength2_A=CU_KALPHA2_A, ratio=KALPHA2_RATIO):
    """Remove the Kα2 component of a laboratory pattern (Rachinger correction).

    A Kα1 line at 2θ' puts its Kα2 replica at 2θ with sin θ = (λ2/λ1) sin θ'; walking up in
    2θ, I1(2θ) = I(2θ) − ratio·I1(2θ'), with I1 interpolated at the already corrected 2θ'.
    The result is the pattern of the single wavelength λ1, to be refined with λ1.

    Parameters
    ----------
    two_theta_deg : ndarray, shape (n,)
        Increasing 2θ, degrees.
    intensity : ndarray, shape (n,)
        Measured intensity (Kα1 + Kα2).
    wavelength1_A, wavelength2_A : float
        Kα1 and Kα2 wavelengths, Å (default Cu).
    ratio : float
        I(Kα2)/I(Kα1) (default 0.5).

    Returns
    -------
    ndarray, shape (n,)
        Kα1-only intensity.
    """
    tth = np.asarray(two_theta_deg, dtype=float)
    y = np.asarray(intensity, dtype=float)
    if tth.shape != y.shape or tth.ndim != 1 or not np.all(np.diff(tth) > 0):
        raise ValueError("two_theta_deg and intensity must be 1-D of equal length, 2θ increasing")
    if not (0 < wavelength1_A < wavelength2_A and 0 <= ratio < 1):
        raise ValueError("need 0 < wavelength1_A < wavelength2_A and 0 ≤ ratio < 1")
    s = np.sin(np.radians(tth) / 2) * (wavelength1_A / wavelength2_A)
    src = 2 * np.degrees(np.arcsin(np.clip(s, 0, 1)))  # 2θ' whose Kα2 falls at each 2θ
    out = y.copy()
    j = np.searchsorted(tth, src) - 1  # src[i] lies in [tth[j], tth[j+1]), j + 1 <= i
    for i in range(tth.size):
        k = j[i]
        if k < 0:
            continue
        if k + 1 >= i:  # shift below one step: interpolate with the uncorrected point
            t = (src[i] - tth[k]) / (tth[k + 1] - tth[k])
            out[i] = (y[i] - ratio * (1 - t) * out[k]) / (1 + ratio * t)
        else:
            t = (src[i] - tth[k]) / (tth[k + 1] - tth[k])
            out[i] = y[i] - ratio * ((1 - t) * out[k] + t * out[k + 1])
    return out
