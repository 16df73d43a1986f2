"""``strainstream xanes whiteline`` end to end, and bad input at the API and CLI."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from strainstream import xanes
from strainstream.cli.xanes import main
from strainstream.sim import txm_images as T

E = T.DEFAULT_ENERGIES_EV


@pytest.fixture(scope="module")
def scan() -> T.TXMScan:
    # 96 x 96 voxels of 80 nm: two particles 4.6 and 2.8 um across, drift and the
    # zone-plate magnification change on, counting noise on
    sample = T.particle_sample((96, 96), voxel_size_um=0.08)
    return T.simulate_txm_scan(sample=sample, drift_px_rms=0.4, seed=11)


def _run(capsys, argv):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_raw_counts_end_to_end(tmp_path, scan, capsys):
    src = T.write_txm_file(tmp_path / "scan.h5", scan)
    out = tmp_path / "wl.h5"
    code, stdout, stderr = _run(capsys, ["whiteline", str(src), "--out", str(out), "--json"])
    assert code == 0, stderr
    summary = json.loads(stdout)  # exactly one JSON object on stdout
    for key in ("whiteline_mean_eV", "whiteline_std_eV", "n_voxels", "n_masked",
                "edge_jump_median"):
        assert key in summary
    assert summary["input"] == "raw counts" and summary["registered"] is True
    with h5py.File(out) as f:
        wl = f["whiteline_eV"][()]
        mask = f["mask"][()]
    assert wl.shape == mask.shape == (96, 96)
    assert mask.dtype == bool
    assert np.isnan(wl[~mask]).all() and np.isfinite(wl[mask]).all()
    assert summary["n_voxels"] == int(mask.sum())
    # the mask covers the particles: most material voxels, no vacuum voxel far from them
    material = scan.sample.material
    assert mask[material].mean() > 0.8
    assert not mask[~material].any() or mask[~material].sum() < 0.02 * mask.sum()
    # known answer: mean WL over the mask vs the exact maxima of the same voxels
    truth = scan.whiteline_true_eV
    both = mask & material
    assert summary["whiteline_mean_eV"] == pytest.approx(np.mean(truth[both]), abs=0.05)
    # per-voxel errors (registration, magnification, noise): median abs error < 0.15 eV
    assert np.median(np.abs(wl[both] - truth[both])) < 0.15


def test_cli_absorbance_input_and_text_output(tmp_path, scan, capsys):
    src = T.write_txm_file(tmp_path / "abs.h5", scan, raw=False)
    code, stdout, stderr = _run(capsys, ["whiteline", str(src), "--edge-energy"])
    assert code == 0, stderr
    assert "white line: mean" in stdout and "masked:" in stdout
    code, stdout, _ = _run(capsys, ["whiteline", str(src), "--json", "--edge-energy"])
    summary = json.loads(stdout)
    assert summary["input"] == "absorbance" and summary["registered"] is False
    truth = scan.whiteline_true_eV[scan.sample.thickness_um >= 1.0]
    # noiseless absorbance: only the estimator bias (~+0.02 eV) remains
    assert summary["whiteline_mean_eV"] - np.mean(truth) == pytest.approx(0.02, abs=0.02)
    assert 8345.0 < summary["edge_energy_mean_eV"] < 8348.0


def _write(path, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f[k] = v
    return str(path)


def _absorbance(e=E, shape=(6, 7), seed=0):
    soc = np.random.default_rng(seed).uniform(0, 1, shape)
    return 0.5 * T.ni_k_edge_absorbance(np.asarray(e)[:, None, None], soc[None])


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("non_monotonic", "strictly increasing"),
        ("missing_flat", "flat field is missing"),
        ("shape", "disagrees with the 21 energies"),
        ("below_edge", "misses the absorption edge"),
        ("no_whiteline", "misses the white line"),
        ("short_above", "fit half-window of the end"),
        ("no_darks", "darks missing"),
        ("no_stack", "missing dataset"),
        ("all_nan", "every voxel has NaN"),
    ],
)
def test_cli_bad_input_gives_one_line_error(tmp_path, capsys, case, match):
    a = _absorbance()
    p = tmp_path / f"{case}.h5"
    if case == "non_monotonic":
        e = E.copy()
        e[[4, 5]] = e[[5, 4]]
        _write(p, energies_eV=e, stack=a)
    elif case == "missing_flat":
        counts = 1e4 * np.exp(-a) + 100
        _write(p, energies_eV=E, stack=counts, flats=np.full((20, 6, 7), 1e4 + 100),
               darks=np.full((6, 7), 100.0))
    elif case == "shape":
        _write(p, energies_eV=E, stack=a[:20])
    elif case == "below_edge":
        e = np.arange(8300.0, 8321.0)
        _write(p, energies_eV=e, stack=_absorbance(e))
    elif case == "no_whiteline":
        e = np.arange(8335.0, 8349.0)
        _write(p, energies_eV=e, stack=_absorbance(e))
    elif case == "short_above":
        e = np.arange(8338.0, 8354.0)
        _write(p, energies_eV=e, stack=_absorbance(e))
    elif case == "no_darks":
        _write(p, energies_eV=E, stack=a, flats=a)
    elif case == "no_stack":
        _write(p, energies_eV=E)
    elif case == "all_nan":
        _write(p, energies_eV=E, stack=np.full_like(a, np.nan))
    code, stdout, stderr = _run(capsys, ["whiteline", str(p), "--json"])
    assert code == 2
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("strainstream xanes: error: ")
    assert match in lines[0]
    assert "Traceback" not in stderr


def test_cli_missing_file(tmp_path, capsys):
    code, _, stderr = _run(capsys, ["whiteline", str(tmp_path / "nope.h5")])
    assert code == 2 and "no such file" in stderr


def test_api_bad_input_errors_are_value_errors():
    a = _absorbance()
    with pytest.raises(ValueError, match="strictly increasing"):
        xanes.whiteline_map(E[::-1], a)
    with pytest.raises(xanes.XanesInputError, match="disagrees"):
        xanes.whiteline_map(E, a[:, :, :, None][:-1])
    e = np.arange(8352.0, 8373.0)  # starts above the edge: the edge is missed
    with pytest.raises(xanes.EnergyRangeError):
        xanes.whiteline_map(e, _absorbance(e))
    with pytest.raises(xanes.EnergyRangeError, match="no voxel has an edge jump"):
        xanes.whiteline_map(E, 0.01 * a)
