"""``strainstream sxdm map`` on FILE.h5 written by the forward model."""

import json

import h5py
import numpy as np
import pytest

from strainstream.cli.sxdm import main
from strainstream.sim.sxdm_frames import particle_preset, simulate_sxdm, write_sxdm_file
from strainstream.sxdm import MAP_DATASETS, SXDMError, map_file, read_sxdm_file, read_sxdm_info

JSON_KEYS = {"d_mean_A", "strain_std", "strain_range", "tilt_xy_std_deg", "tilt_xz_std_deg",
             "strain_tilt_correlation", "n_pixels"}


@pytest.fixture(scope="module")
def sim():
    return simulate_sxdm(particle_preset(ny=12, nx=12, seed=6), shape=(36, 36), n_theta=21,
                         theta_range_deg=1.2, seed=8)


@pytest.fixture(scope="module")
def sxdm_file(sim, tmp_path_factory):
    path = tmp_path_factory.mktemp("sxdm") / "scan.h5"
    sim.write(path)
    return path


def test_chunked_reading_covers_every_frame_once(sim, sxdm_file):
    info = read_sxdm_info(sxdm_file)
    assert info.raster_shape == (12, 12) and info.frame_shape == (36, 36)
    np.testing.assert_allclose(info.theta_deg, sim.theta_deg)
    tiny_mb = 3 * 12 * 36 * 36 * 4 / 1e6  # three raster lines per chunk
    chunks = list(read_sxdm_file(sxdm_file, max_chunk_mb=tiny_mb))
    assert len(chunks) == 21 * 4
    assert all(len(c.frames) == 36 for c in chunks)
    seen = np.zeros((21, 12, 12), int)
    for c in chunks:
        i = int(np.argmin(np.abs(sim.theta_deg - c.theta_deg)))
        np.add.at(seen, (i, c.iy, c.ix), 1)
    assert np.all(seen == 1)
    np.testing.assert_array_equal(chunks[5].frames[0], sim.frames_at(1)[3, 0])


def test_cli_map_json_and_maps_file(sim, sxdm_file, tmp_path, capsys):
    out = tmp_path / "maps.h5"
    rc = main(["map", str(sxdm_file), "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert rc == 0
    stats = json.loads(captured.out)
    assert set(stats) == JSON_KEYS
    truth = sim.truth()
    with h5py.File(out, "r") as f:
        assert set(MAP_DATASETS) <= set(f)
        mask = f["mask"][()]
        for name in ("d_spacing_A", "strain", "tilt_xy_deg", "tilt_xz_deg"):
            assert f[name].shape == (12, 12)
            assert np.isnan(f[name][()][~mask]).all() and np.isfinite(f[name][()][mask]).all()
        d = f["d_spacing_A"][()]
        assert f.attrs["n_pixels"] == stats["n_pixels"] == mask.sum()
    inside = mask & (truth["weight"] > 0.5)
    rel = (d[inside] - truth["d_spacing_A"][inside]) / truth["d_spacing_A"][inside]
    assert np.sqrt(np.mean(rel**2)) < 2e-4
    assert stats["d_mean_A"] == pytest.approx(truth["d_spacing_A"][mask].mean(), rel=2e-4)
    # the Python API gives the same numbers
    maps = map_file(sxdm_file)
    np.testing.assert_allclose(maps.d_spacing_A[mask], d[mask], rtol=1e-12)
    # human-readable output; the refined maps agree with the centre of mass
    assert main(["map", str(sxdm_file), "--refine", "--d-ref", "4.6"]) == 0
    assert "d_mean" in capsys.readouterr().out
    refined = map_file(sxdm_file, refine=True)
    both = refined.mask & mask
    assert both.sum() > 0.8 * mask.sum()
    np.testing.assert_allclose(refined.d_spacing_A[both], d[both], rtol=2e-4)


def _write(path, sim, md=None, theta=None, frames=None):
    write_sxdm_file(path, frames if frames is not None else sim.all_frames()[:, :4, :4],
                    sim.theta_deg if theta is None else theta, sim.metadata if md is None else md)


def test_cli_errors_are_one_line_exit_2(sim, tmp_path, capsys):
    small = simulate_sxdm(particle_preset(ny=4, nx=4), shape=(20, 20), n_theta=3, theta_range_deg=0.2)
    md = {k: v for k, v in small.metadata.items() if k not in ("distance_m", "hkl")}
    p1 = tmp_path / "nogeom.h5"
    write_sxdm_file(p1, small.all_frames(), small.theta_deg, md)
    assert main(["map", str(p1)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("strainstream sxdm: error: missing SXDM geometry metadata")
    assert "distance_m, hkl" in err[0]
    # frame count disagreeing with the angles
    p2 = tmp_path / "count.h5"
    with h5py.File(p2, "w") as f:
        f.create_dataset("frames", data=small.all_frames())
        f.create_dataset("theta_deg", data=small.theta_deg[:2])
        for k, v in small.metadata.items():
            f.attrs[k] = v
    assert main(["map", str(p2), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "3 rocking angles but 'theta_deg' has 2" in captured.err
    with pytest.raises(SXDMError, match="no 'frames' dataset"):
        with h5py.File(tmp_path / "empty.h5", "w"):
            pass
        read_sxdm_info(tmp_path / "empty.h5")
    assert main(["map", str(tmp_path / "absent.h5")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["map"]) == 2
    assert main(["map", str(p2), "--background", "median"]) == 2
    assert "--background must be 'auto' or a number" in capsys.readouterr().err


def test_cli_theta_range_missing_the_peak(tmp_path, capsys):
    miss = simulate_sxdm(particle_preset(ny=6, nx=6), shape=(24, 24), n_theta=5,
                         theta_range_deg=0.2, theta_offset_deg=2.0)
    p = tmp_path / "miss.h5"
    miss.write(p)
    assert main(["map", str(p), "--json", "--out", str(tmp_path / "m.h5")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "error: no raster point inside the particle mask" in captured.err
    assert "misses the Bragg peak" in captured.err
    with h5py.File(tmp_path / "m.h5", "r") as f:  # the (empty) maps are still written
        assert not f["mask"][()].any()
