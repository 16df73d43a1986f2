"""``strainstream plot`` and the ``--plot`` option of ``sxdm map`` / ``xanes whiteline``: where
the PNGs go (the data directory or ``--out``, never the current directory) and what is printed.

The data directory is made in process (tiled catalog opened in process, a ``frame_series``
run written by bluesky's TiledWriter, its ``frame_stats`` stored by the analysis callback)
plus synthetic ``operando_xrd`` and ``sxdm`` results of known values stored with the same
:class:`~strainstream.callbacks.sinks.TiledSink` the worker uses.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from _plot_synth import operando_xrd_entry, png_size, run_cli, sxdm_arrays, sxdm_entry

pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning")]

START_MD = {"material": "SC-NM91", "sample": "coin cell 7", "rate_mA_g": 200.0}



def _store(root, uid: str, name: str, entry: dict, arrays: dict | None = None) -> None:
    from strainstream.callbacks.sinks import TiledSink

    cols = entry["columns"]
    kinds = {k: "string" if isinstance(v[0], str) else "float64" for k, v in cols.items()}
    sink = TiledSink(root, uid, name)
    sink.begin({"version": "1"}, kinds)
    sink.append([{k: cols[k][i] for k in cols} for i in range(len(next(iter(cols.values()))))])
    if arrays:
        sink.put_arrays({k: np.asarray(v) for k, v in arrays.items()})
    sink.finish(entry["summary"])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter

    from strainstream.callbacks.router import make_callbacks
    from strainstream.callbacks.sinks import TiledSink
    from strainstream.client import open_offline
    from strainstream.datadir import detector_dir
    from strainstream.devices.detectors import sim_frame_detector
    from strainstream.plans.frames import frame_series
    from strainstream.supervisor import find_free_port
    from strainstream.tiledconfig import write_config

    d = tmp_path_factory.mktemp("plot") / "data"
    write_config(d, port=find_free_port(), api_key="k" * 32)
    root = open_offline(d)
    docs = []
    RE = RunEngine({})
    RE.subscribe(TiledWriter(root, batch_size=1))
    RE.subscribe(lambda n, doc: docs.append((n, copy.deepcopy(doc))))
    det = sim_frame_detector("det", detector_dir(d), frame_shape=(24, 20))
    (uid,) = RE(frame_series([det], num=3, md=START_MD))
    for cb in make_callbacks(docs[0][1], lambda name: TiledSink(root, uid, name)):
        for name, doc in docs:
            cb(name, doc)
    _store(root, uid, "operando_xrd", operando_xrd_entry(n=40))
    arrays = sxdm_arrays()
    _store(root, uid, "sxdm", sxdm_entry(arrays), arrays)
    return d, uid


def test_plot_writes_every_analysis_into_the_data_directory(data_dir, tmp_path, monkeypatch):
    d, uid = data_dir
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    code, out, err = run_cli(["plot", uid[:8], "--data-dir", str(d), "--dpi", "40"])
    assert code == 0, err
    expected = [str(d / "figures" / f"{uid[:8]}_{name}.png") for name in ("frame_stats", "operando_xrd", "sxdm")]
    assert sorted(out.split()) == sorted(expected)  # the written paths, one a line
    assert list(cwd.iterdir()) == []  # nothing in the current directory
    assert png_size(expected[1]) == (round(17 * 40), round(9 * 40))  # the XRD figure, 17 × 9 in
    assert sorted(p.name for p in (d / "figures").iterdir()) == sorted(Path(p).name for p in expected)
    # --out FILE with --analysis: that file only (--out DIR: see test_figure_path_rules)
    one = tmp_path / "xrd.png"
    code, out, err = run_cli(["plot", uid, "--data-dir", str(d), "--analysis", "operando_xrd",
                              "--out", str(one), "--dpi", "30"])
    assert code == 0 and out.split() == [str(one)] and png_size(one)[0] == 17 * 30, err
    assert list(cwd.iterdir()) == []


def test_a_figure_drawn_from_the_same_results_is_reused(data_dir, tmp_path):
    """The PNG holds the digest of what it was drawn from (figure_key): the same results at
    the same resolution are not drawn again; other results, another resolution, or a PNG
    without the digest are."""
    from strainstream.callbacks.plots import figure_key, png_key

    d, uid = data_dir
    out = tmp_path / "fs.png"
    args = ["plot", uid, "--data-dir", str(d), "--analysis", "frame_stats", "--out", str(out), "--dpi", "30"]
    code, printed, err = run_cli(args)
    assert code == 0 and printed.split() == [str(out)], err
    key, drawn = png_key(out), out.stat().st_mtime_ns
    assert key and len(key) == 64
    code, printed, err = run_cli(args)
    assert code == 0 and printed.split() == [str(out)] and out.stat().st_mtime_ns == drawn, err
    code, printed, err = run_cli(args[:-1] + ["31"])
    assert code == 0 and png_key(out) not in (None, key), err
    out.write_bytes(b"\x89PNG\r\n\x1a\n")  # a PNG without the digest (or a damaged one)
    code, printed, err = run_cli(args)
    assert code == 0 and png_key(out) == key, err
    # the digest follows the results, the resolution and the arrays
    entry = {"columns": {"mean": [1.0, 2.0]}, "summary": {}, "status": "complete"}
    k = figure_key("frame_stats", entry, dpi=30)
    assert k == figure_key("frame_stats", copy.deepcopy(entry), dpi=30)
    assert k != figure_key("frame_stats", {**entry, "status": "running"}, dpi=30)
    assert k != figure_key("frame_stats", entry, dpi=31)
    assert figure_key("sxdm", entry, arrays={"m": np.zeros(3)}) != figure_key("sxdm", entry, arrays={"m": np.ones(3)})


def test_figure_path_rules(tmp_path):
    from strainstream.cli.runs import figure_path
    from strainstream.errors import StrainstreamError

    d = tmp_path / "data"
    d.mkdir()
    assert figure_path(None, str(d), "0123456789", "sxdm", False) == str(d / "figures" / "01234567_sxdm.png")
    with pytest.raises(StrainstreamError, match="pass --out"):
        figure_path(None, str(tmp_path / "missing"), "0123456789", "sxdm", False)
    assert figure_path("a/b.png", None, "0123456789", "sxdm", True) == "a/b_sxdm.png"
    assert figure_path("a/b.png", None, "0123456789", "sxdm", False) == "a/b.png"
    assert figure_path(str(d), None, "0123456789", "sxdm", True) == str(d / "01234567_sxdm.png")


# ---------------------------------------------------------------- file commands: --plot


@pytest.fixture(scope="module")
def sxdm_file(tmp_path_factory):
    from strainstream.sim.sxdm_frames import particle_preset, simulate_sxdm

    sim = simulate_sxdm(particle_preset(ny=8, nx=8, seed=6), shape=(32, 32), n_theta=11,
                        theta_range_deg=1.2, seed=8)
    path = tmp_path_factory.mktemp("sxdm") / "scan.h5"
    sim.write(path)
    return path


def test_sxdm_map_plot_lands_beside_the_maps(sxdm_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "res" / "maps.h5"
    out.parent.mkdir()
    code, stdout, err = run_cli(["sxdm", "map", str(sxdm_file), "--out", str(out), "--plot"])
    assert code == 0, err
    png = out.parent / "maps_sxdm_map.png"
    assert f"figure written to {png}" in stdout.splitlines()
    assert png_size(png) == (17 * 110, 8 * 110)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]
    # JSON mode: the path in the one JSON object; --plot PNG given explicitly
    code, stdout, err = run_cli(["sxdm", "map", str(sxdm_file), "--json", "--plot", str(tmp_path / "f.png")])
    assert code == 0, err
    assert json.loads(stdout)["plot"] == str(tmp_path / "f.png") and (tmp_path / "f.png").exists()
    # --plot swallowing the input file name is an error on one line, not a PNG named .h5
    code, _, err = run_cli(["sxdm", "map", "--plot", str(sxdm_file)])
    assert code == 2 and "--plot" in err and len(err.strip().splitlines()) == 1


def test_xanes_whiteline_plot_beside_the_input(tmp_path, monkeypatch):
    from strainstream.sim import txm_images as T

    scan = T.simulate_txm_scan(sample=T.particle_sample((48, 48), voxel_size_um=0.1), seed=3)
    (tmp_path / "data").mkdir()
    src = T.write_txm_file(tmp_path / "data" / "stack.h5", scan)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    code, stdout, err = run_cli(["xanes", "whiteline", str(src), "--plot", "--json"])
    assert code == 0, err
    summary = json.loads(stdout)
    png = tmp_path / "data" / "stack_whiteline.png"
    assert summary["plot"] == str(png) and png_size(png)[0] == 17 * 110
    assert list(cwd.iterdir()) == []
