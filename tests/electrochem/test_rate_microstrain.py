"""Rate-dependent microstrain of the simulated cell (#18: "microstrain rises fastest at high rate
and high state of charge for NM91").

Known answer: under a constant current the surface-minus-bulk state of charge of a sphere
settles at Fick's u·r_p²/(15·D) (u = I/(3600·Q) the bulk soc rate), and the cell adds
κ·(|dln c/dsoc| + |dln a/dsoc|)·Δsoc to the open-circuit microstrain (module docstring of
:mod:`strainstream.sim.cell`). The lattice slope is taken here from the open-circuit path.
"""

from __future__ import annotations

import numpy as np
import pytest

from strainstream.sim.cell import CoinCell, lattice_at_soc, preset

RATES = (20.0, 100.0, 200.0)


def _charged(name: str, rate: float, soc: float) -> CoinCell:
    cell = CoinCell(name, 10.0)
    cell.set_mode("CC", current_mA_g=rate)
    cell.step(soc * cell.practical_capacity_mAh_g / rate * 3600.0)
    assert cell.soc == pytest.approx(soc, abs=1e-12)
    return cell


def _lattice_slope(name: str, soc: float, h: float = 1e-3) -> float:
    """|dln c/dsoc| + |dln a/dsoc| of the fraction-weighted open-circuit lattice (central difference)."""
    def weighted(s):
        phases = lattice_at_soc(name, s)
        return sum(p.c_A * p.fraction for p in phases), sum(p.a_A * p.fraction for p in phases)

    (c0, a0), (c1, a1) = weighted(soc - h), weighted(soc + h)
    return abs(np.log(c1 / c0)) / (2 * h) + abs(np.log(a1 / a0)) / (2 * h)


@pytest.mark.parametrize("name", ["SC-NM91", "SC-NC91"])
@pytest.mark.parametrize("soc", [0.3, 0.8])
def test_rate_microstrain_is_fick_gradient_times_lattice_slope(name, soc):
    p = preset(name)
    tau_d = (p.particle_radius_um * 1e-4) ** 2 / p.diffusivity_cm2_s
    eps_oc = lattice_at_soc(name, soc)[0].microstrain
    for rate in RATES:
        cell = _charged(name, rate, soc)
        u = rate / (3600.0 * cell.practical_capacity_mAh_g)
        # the surface gradient: Fick's steady state of a sphere under constant flux, 0.1 %
        assert cell.surface_soc - cell.soc == pytest.approx(u * tau_d / 15.0, rel=1e-3)
        expected = p.strain_rate_gain * _lattice_slope(name, soc) * u * tau_d / 15.0
        # 1 %: the finite-difference slope of the two-phase path differs slightly from the cell's
        assert cell.lattice()[0].microstrain - eps_oc == pytest.approx(expected, rel=0.01)


def test_nm91_microstrain_rises_fastest_at_high_rate_and_high_soc():
    def gain(name, soc):  # dε/d(rate), 10⁻³ per 100 mA/g, from 20 → 200 mA/g
        lo, hi = (_charged(name, r, soc).lattice()[0].microstrain for r in (20.0, 200.0))
        return (hi - lo) / 180.0 * 100.0 * 1e3

    g = {(n, s): gain(n, s) for n in ("SC-NM91", "SC-NC91") for s in (0.3, 0.8)}
    assert g["SC-NM91", 0.8] > 5 * g["SC-NM91", 0.3] > 0  # high soc: several times the low-soc rise
    assert g["SC-NM91", 0.8] > 1.5 * g["SC-NC91", 0.8]    # NM91 (slower Li diffusion, H2/H3) above NC91
