"""White-line search window and mixed energy grids (known answers from the noiseless model).

Real TXM scans are coarse below and above the edge and fine (1 eV) across it; thin voxels
at particle rims can carry a post-edge bump higher than their white line. Neither may
fail the whole map or put a voxel's "white line" 30 eV away into the statistics.
"""

from __future__ import annotations

import numpy as np
import pytest

from strainstream import xanes
from strainstream.sim.txm_images import ni_k_edge_absorbance, true_whiteline_eV

#: FXI-style grid: 5 eV pre-edge, 1 eV across edge and white line, 10 eV post-edge
MIXED = np.r_[np.arange(8300.0, 8336.0, 5.0), np.arange(8336.0, 8366.0, 1.0), np.arange(8370.0, 8401.0, 10.0)]


def _stack(energies, soc):
    """(n, 1, m) absorbance of m voxels of states of charge ``soc`` (noiseless)."""
    return ni_k_edge_absorbance(energies[:, None], np.asarray(soc)[None, :])[:, None, :]


def test_mixed_grid_recovers_the_white_line():
    soc = np.linspace(0.0, 1.0, 9)
    res = xanes.analyse_whiteline(MIXED, _stack(MIXED, soc))
    truth = true_whiteline_eV(soc)
    assert res.mask.all()
    # 1-eV sampling across the line, noiseless: the local cubic is within 0.1 eV of the truth
    np.testing.assert_allclose(res.whiteline_eV[0], truth, atol=0.1)


def test_post_edge_bump_is_not_the_white_line():
    soc = np.full(6, 0.5)
    a = _stack(MIXED, soc)
    k = int(np.flatnonzero(MIXED == 8362.0)[0])
    a[k - 1:k + 2, 0, 2] += np.array([0.4, 1.0, 0.4])  # a rim voxel's bump 11 eV above its white line
    truth = float(true_whiteline_eV(0.5))
    res = xanes.analyse_whiteline(MIXED, a)
    ok = res.mask[0]
    assert ok[[0, 1, 3, 4, 5]].all()
    np.testing.assert_allclose(res.whiteline_eV[0][ok], truth, atol=0.1)  # the bumped voxel too, or masked
    assert res.stats.std_eV < 0.05  # no 11-eV outlier in the statistics
    # without the search window the bump is taken for the white line
    wide = xanes.analyse_whiteline(MIXED, a, search_eV=None)
    assert not (wide.mask[0, 2] and abs(wide.whiteline_eV[0, 2] - truth) < 0.1)


def test_search_window_must_be_positive():
    with pytest.raises(xanes.XanesInputError, match="search_eV"):
        xanes.analyse_whiteline(MIXED, _stack(MIXED, [0.5] * 3), search_eV=0.0)
