"""Vectorised pattern model for variable-projection least squares.

Model of a 1-D pattern I(Q):

    I(Q) = Σ_k J_k Σ_j φ_j r_kj pV(Q; Q_kj, w_kj, η)          layered R-3m phase(s) j
         + Σ_m A_m pV(Q; Q_m^Al, w_m^Al, η)                    Al current collector (fcc)
         + Σ_{i<6} b_i T_i(x(Q))                               Chebyshev background

* Q_kj from a_j, c_j (hexagonal d-spacings); r_kj = LP(Q_kj)/LP(Q_k0) is the powder
  Lorentz-polarisation factor relative to the starting position (so that two phases share
  one set of structure intensities J_k and differ by the fractions φ_1 = 1 − f, φ_2 = f).
* FWHM (in Q, Å⁻¹) w = sqrt(w_inst(Q)² + s²), s = 2πK/D + 2εQ — the Williamson–Hall law of
  DESIGN.md written in Q (β = FWHM in 2θ radians ⇒ ΔQ = (2π/λ)cosθ·β = 2πK/D + 2εQ).
* pV is an area-normalised pseudo-Voigt with one mixing parameter η.

Linear parameters (J_k, A_m, b_i) are eliminated by weighted linear least squares inside the
nonlinear loop (variable projection); the Jacobian for the nonlinear parameters is the
Kaufman form −(I − P)·∂(A c)/∂θ, built from analytic peak derivatives evaluated only on
a window around every peak.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import cho_factor, cho_solve

from ._lattice import SCHERRER_K, ReflectionSet, fcc_q_A_inv, lorentz_polarisation

_G0 = 2.0 * np.sqrt(np.log(2.0) / np.pi)
_L0 = 2.0 / np.pi
_LN2 = np.log(2.0)
N_CHEB = 6
#: window half-width around each peak, in units of its FWHM
WINDOW_FWHM = 25.0
_SIZE_K = 2.0 * np.pi * SCHERRER_K / 10.0  # s contribution per (1/D in nm⁻¹), Å⁻¹


def _dlnlp_dq(q: np.ndarray, wavelength_A: float) -> np.ndarray:
    s = np.clip(q * wavelength_A / (4.0 * np.pi), 1e-9, 0.999999)
    c2 = 1.0 - 2.0 * s * s
    dln_ds = (2.0 * c2 * (-4.0 * s)) / (1.0 + c2 * c2) - 2.0 / s + s / (1.0 - s * s)
    return dln_ds * wavelength_A / (4.0 * np.pi)


@dataclass
class ParamLayout:
    """Names and bounds of the nonlinear parameter vector."""

    n_phases: int
    model_al: bool
    names: list[str] = field(default_factory=list)

    def __post_init__(self):
        names = []
        for j in range(self.n_phases):
            names += [f"a{j}", f"c{j}", f"eps{j}", f"invD{j}"]
        names.append("eta")
        if self.n_phases == 2:
            names.append("f")
        if self.model_al:
            names += ["a_al", "w_al", "eps_al"]
        self.names = names

    def index(self, name: str) -> int:
        return self.names.index(name)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = [], []
        table = {
            "a": (2.55, 3.15), "c": (12.0, 16.0), "eps": (0.0, 0.05), "invD": (0.0, 2.0),
            "eta": (0.0, 1.0), "f": (0.0, 1.0), "a_al": (4.0435, 4.0555), "w_al": (0.002, 0.03),
            "eps_al": (0.0, 0.005),
        }
        for n in self.names:
            key = n if n in table else n.rstrip("0123456789")
            lo.append(table[key][0])
            hi.append(table[key][1])
        return np.array(lo), np.array(hi)


def _pv_window(x, w, eta):
    """Pseudo-Voigt and derivatives on windows. x: (k, M) offsets Q−Q0; w: (k, 1)."""
    u = 2.0 * x / w
    u2 = u * u
    e = np.exp(-_LN2 * u2)
    g = (_G0 / w) * e
    inv1 = 1.0 / (1.0 + u2)
    lo = (_L0 / w) * inv1
    pv = eta * lo + (1.0 - eta) * g
    # derivatives wrt peak centre x0 (x = Q − x0) and wrt FWHM w
    dg_dx0 = g * (4.0 * _LN2 * u / w)
    dl_dx0 = lo * (4.0 * u * inv1 / w)
    dg_dw = (g / w) * (2.0 * _LN2 * u2 - 1.0)
    dl_dw = (lo / w) * (u2 - 1.0) * inv1
    dpv_dx0 = eta * dl_dx0 + (1.0 - eta) * dg_dx0
    dpv_dw = eta * dl_dw + (1.0 - eta) * dg_dw
    return pv, dpv_dx0, dpv_dw, lo - g


class PatternModel:
    """Variable-projection model of a pattern on a fixed Q grid.

    Parameters
    ----------
    q_A_inv : ndarray, shape (n,)
        Strictly increasing Q grid, Å⁻¹.
    intensity : ndarray, shape (n,)
        Measured intensity.
    weight : ndarray, shape (n,)
        1/σ for every point.
    wavelength_A : float
        Wavelength, Å (for the Lorentz-polarisation factor).
    reflections : ReflectionSet
        Layered reflections (shared by all layered phases).
    n_phases : int
        1 or 2 layered phases.
    model_al : bool
        Whether fcc Al peaks are part of the model.
    instrument_fwhm_A_inv : float or callable
        Instrumental FWHM in Q, added in quadrature, Å⁻¹: one value for all Q, or a
        function ``q → (w_inst(q), dw_inst/dq)`` (per-peak widths, e.g. Caglioti's law;
        see :func:`strainstream.xrd._instrument.instrument_width_function`).
    q_ref : ndarray, shape (n_refl,)
        Reference positions for the Lorentz-polarisation normalisation.
    """

    def __init__(self, q_A_inv, intensity, weight, wavelength_A, reflections: ReflectionSet,
                 n_phases, model_al, instrument_fwhm_A_inv, q_ref, ridge=1e-9):
        self.q = np.ascontiguousarray(q_A_inv, dtype=float)
        self.y = np.asarray(intensity, dtype=float)
        self.wt = np.asarray(weight, dtype=float)
        self.yw = self.y * self.wt
        self.n = self.q.size
        self.lam = float(wavelength_A)
        self.refl = reflections
        self.layout = ParamLayout(n_phases, model_al)
        self.n_phases = n_phases
        self.model_al = model_al
        if callable(instrument_fwhm_A_inv):
            self._inst = instrument_fwhm_A_inv
        else:
            w0 = float(instrument_fwhm_A_inv)
            self._inst = lambda q: (np.full(np.shape(q), w0), np.zeros(np.shape(q)))
        self.lp_ref = lorentz_polarisation(q_ref, self.lam)
        self.ridge = ridge
        qmin, qmax = self.q[0], self.q[-1]
        self.dq_min = float(np.min(np.diff(self.q))) if self.n > 1 else 1.0
        x = 2.0 * (self.q - qmin) / (qmax - qmin) - 1.0
        self.cheb = np.polynomial.chebyshev.chebvander(x, N_CHEB - 1)
        if model_al:
            self.al_n2, _ = fcc_q_A_inv(4.0495, qmax + 0.3)
        else:
            self.al_n2 = np.zeros(0)
        self.n_refl = len(reflections)
        self.n_al = self.al_n2.size
        self.n_lin = self.n_refl + self.n_al + N_CHEB
        self.q_pad = np.concatenate([self.q, [1e6]])
        self._cache_x = None
        self._state = None

    # ---------------------------------------------------------------- peak windows
    def _windows(self, centres, fwhm):
        """Index windows (k, M) into q_pad around each centre."""
        half = WINDOW_FWHM * fwhm
        lo = np.searchsorted(self.q, centres - half)
        hi = np.searchsorted(self.q, centres + half)
        m = int(max(1, np.max(hi - lo))) + 1
        idx = lo[:, None] + np.arange(m)[None, :]
        idx = np.minimum(idx, self.n)  # index n is the padding point far away
        # entries past the window end point at the padding point too
        idx = np.where(idx < hi[:, None] + 1, idx, self.n)
        return idx

    def _scatter(self, idx, vals):
        return np.bincount(idx.ravel(), weights=vals.ravel(), minlength=self.n + 1)[: self.n]

    def _peaks(self, centres, fwhm, eta):
        idx = self._windows(centres, fwhm)
        x = self.q_pad[idx] - centres[:, None]
        pv, d0, dw, dl_g = _pv_window(x, fwhm[:, None], eta)
        return idx, pv, d0, dw, dl_g

    def _dense(self, idx, vals):
        ncol = idx.shape[0]
        a = np.zeros((self.n + 1, ncol))
        a[idx, np.arange(ncol)[:, None]] = vals
        a[self.n] = 0.0
        return a[: self.n]

    # ---------------------------------------------------------------- evaluation
    def _phase_parts(self, x):
        lay = self.layout
        parts = []
        eta = x[lay.index("eta")]
        for j in range(self.n_phases):
            a, c, eps, invd = (x[lay.index(f"{p}{j}")] for p in ("a", "c", "eps", "invD"))
            qk = self.refl.q_A_inv(a, c)
            s = _SIZE_K * invd + 2.0 * eps * qk
            wi, dwi = self._inst(qk)
            w = np.sqrt(wi * wi + s * s)
            w = np.maximum(w, 0.5 * self.dq_min)
            r = lorentz_polarisation(qk, self.lam) / self.lp_ref
            dr = r * _dlnlp_dq(qk, self.lam)
            idx, pv, d0, dw, dl_g = self._peaks(qk, w, eta)
            parts.append(dict(a=a, c=c, eps=eps, invd=invd, qk=qk, s=s, w=w, r=r, dr=dr,
                              widwi=wi * dwi,
                              idx=idx, pv=pv, d0=d0, dw=dw, dl_g=dl_g))
        al = None
        if self.model_al:
            a_al, w_al, eps_al = (x[lay.index(n)] for n in ("a_al", "w_al", "eps_al"))
            qm = 2.0 * np.pi * np.sqrt(self.al_n2) / a_al
            s = w_al + 2.0 * eps_al * qm
            wi, dwi = self._inst(qm)
            w = np.maximum(np.sqrt(wi * wi + s * s), 0.5 * self.dq_min)
            idx, pv, d0, dw, dl_g = self._peaks(qm, w, eta)
            al = dict(a=a_al, qk=qm, s=s, w=w, widwi=wi * dwi, idx=idx, pv=pv, d0=d0, dw=dw,
                      dl_g=dl_g)
        return parts, al

    def fractions(self, x):
        if self.n_phases == 1:
            return np.array([1.0])
        f = x[self.layout.index("f")]
        return np.array([1.0 - f, f])

    def _solve(self, x):
        if self._cache_x is not None and np.array_equal(x, self._cache_x):
            return self._state
        parts, al = self._phase_parts(x)
        phi = self.fractions(x)
        a_lay = None
        per_phase_dense = []
        for j, p in enumerate(parts):
            dense = self._dense(p["idx"], p["pv"] * p["r"][:, None])
            per_phase_dense.append(dense)
            a_lay = phi[j] * dense if a_lay is None else a_lay + phi[j] * dense
        blocks = [a_lay]
        if al is not None:
            blocks.append(self._dense(al["idx"], al["pv"]))
        blocks.append(self.cheb)
        amat = np.hstack(blocks)
        aw = amat * self.wt[:, None]
        g = aw.T @ aw
        d = np.diag(g).copy()
        g[np.diag_indices_from(g)] += self.ridge * d + 1e-14 * d.max()
        cf = cho_factor(g, lower=False, check_finite=False)
        coef = cho_solve(cf, aw.T @ self.yw, check_finite=False)
        model = amat @ coef
        resid_w = self.yw - model * self.wt
        state = dict(parts=parts, al=al, phi=phi, amat=amat, aw=aw, cf=cf, coef=coef,
                     model=model, resid_w=resid_w, dense=per_phase_dense)
        self._cache_x = np.array(x, copy=True)
        self._state = state
        return state

    def residual(self, x):
        """Weighted residual (y − model)/σ after projecting out the linear parameters."""
        return self._solve(x)["resid_w"]

    def model_derivatives(self, x):
        """∂model/∂θ at fixed linear coefficients, shape (n, n_nonlinear)."""
        st = self._solve(x)
        lay = self.layout
        coef = st["coef"]
        jl = coef[: self.n_refl]
        out = np.zeros((self.n, len(lay.names)))
        eta_col = np.zeros(self.n)
        for j, p in enumerate(st["parts"]):
            phi = st["phi"][j]
            cj = (phi * jl * p["r"])[:, None]
            # dw/ds = s/w; w depends on Q_k via s (2εQ) and the instrumental width w_inst(Q)
            dw_ds = (p["s"] / p["w"])[:, None]
            dw_dq = ((p["s"] * 2.0 * p["eps"] + p["widwi"]) / p["w"])[:, None]
            # total derivative wrt peak position Q_k (centre shift + width + LP factor)
            dcol_dq = cj * (p["d0"] + p["dw"] * dw_dq) + \
                (phi * jl * p["dr"])[:, None] * p["pv"]
            dq_da, dq_dc = self.refl.dq_dac(p["a"], p["c"])
            idx = p["idx"]
            out[:, lay.index(f"a{j}")] = self._scatter(idx, dcol_dq * dq_da[:, None])
            out[:, lay.index(f"c{j}")] = self._scatter(idx, dcol_dq * dq_dc[:, None])
            dcol_dw = cj * p["dw"] * dw_ds
            out[:, lay.index(f"eps{j}")] = self._scatter(idx, dcol_dw * 2.0 * p["qk"][:, None])
            out[:, lay.index(f"invD{j}")] = self._scatter(idx, dcol_dw * _SIZE_K)
            eta_col += self._scatter(idx, cj * p["dl_g"])
        if self.n_phases == 2:
            out[:, lay.index("f")] = (st["dense"][1] - st["dense"][0]) @ jl
        if st["al"] is not None:
            al = st["al"]
            ca = coef[self.n_refl: self.n_refl + self.n_al][:, None]
            dw_ds = (al["s"] / al["w"])[:, None]
            dw_dq = ((al["s"] * 2.0 * x[lay.index("eps_al")] + al["widwi"]) / al["w"])[:, None]
            dcol_dq = ca * (al["d0"] + al["dw"] * dw_dq)
            dq_da = -al["qk"] / al["a"]
            idx = al["idx"]
            out[:, lay.index("a_al")] = self._scatter(idx, dcol_dq * dq_da[:, None])
            dcol_dw = ca * al["dw"] * dw_ds
            out[:, lay.index("w_al")] = self._scatter(idx, dcol_dw)
            out[:, lay.index("eps_al")] = self._scatter(idx, dcol_dw * 2.0 * al["qk"][:, None])
            eta_col += self._scatter(idx, ca * al["dl_g"])
        out[:, lay.index("eta")] = eta_col
        return out

    def jacobian(self, x):
        """Kaufman variable-projection Jacobian of :meth:`residual`, shape (n, n_nonlinear)."""
        st = self._solve(x)
        bw = self.model_derivatives(x) * self.wt[:, None]
        # (bwᵀ aw)ᵀ rather than awᵀ bw: the latter hits a slow threaded BLAS path
        proj = st["aw"] @ cho_solve(st["cf"], (bw.T @ st["aw"]).T, check_finite=False)
        return -(bw - proj)

    def al_significance(self, x):
        """z-scores (value / standard error) of the Al peak intensities, shape (n_al,)."""
        if not self.n_al:
            return np.zeros(0)
        st = self._solve(x)
        sl = slice(self.n_refl, self.n_refl + self.n_al)
        eye = np.zeros((self.n_lin, self.n_al))
        eye[sl, :] = np.eye(self.n_al)
        var = np.diag(cho_solve(st["cf"], eye, check_finite=False)[sl, :])
        r = st["resid_w"]
        chi2 = float(r @ r) / max(self.n - self.n_lin - len(x), 1)
        return st["coef"][sl] / np.sqrt(np.maximum(var * chi2, 1e-300))

    def components(self, x):
        """Model parts on the grid: dict of 'total', 'background', 'al', 'layered' (n,)."""
        st = self._solve(x)
        coef = st["coef"]
        bg = self.cheb @ coef[-N_CHEB:]
        al = np.zeros(self.n)
        if self.n_al:
            al = st["amat"][:, self.n_refl: self.n_refl + self.n_al] @ \
                coef[self.n_refl: self.n_refl + self.n_al]
        return dict(total=st["model"], background=bg, al=al,
                    layered=st["model"] - bg - al)
