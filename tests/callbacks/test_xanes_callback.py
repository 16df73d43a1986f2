"""TXM-XANES live analysis: the txm_xanes plan run in process on simulated devices whose
camera returns the frames of :func:`strainstream.sim.txm_images.simulate_txm_scan` (truth
white-line map known), through :class:`XANESCallback` with in-memory sinks (no server)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from bluesky import RunEngine
from scipy import ndimage

from strainstream.callbacks.sinks import MemorySink
from strainstream.callbacks.xanes import XANESCallback
from strainstream.devices.detectors import sim_frame_detector
from strainstream.devices.testing import SimBeam, SimStage
from strainstream.plans.xanes import ROLES, focus_positions, txm_xanes
from strainstream.sim import txm_images as T


def _run(tmp, scan, params=None, shutter_works=True, **kw):
    """Run txm_xanes on fake devices whose camera serves ``scan``'s frames; return the docs."""
    es, beam = SimStage(name="es"), SimBeam(name="beam")
    energies = scan.energies_eV

    def source(i):
        if shutter_works and beam.shutter.status.get() != "Open":
            rng = np.random.default_rng([7, i])
            return scan.darks + rng.normal(0.0, 2.0, scan.darks.shape)
        ie = int(np.argmin(np.abs(energies - es.energy.position)))
        out = abs(es.sample_inout.position) >= 0.5
        return (scan.flats if out else scan.stack)[ie]

    cam = sim_frame_detector("txm", tmp, frame_source=source, frame_shape=scan.stack.shape[1:])
    docs = []
    RE = RunEngine({})
    RE.subscribe(lambda n, d: docs.append((n, copy.deepcopy(d))))
    RE(txm_xanes(cam, es, energies_eV=energies, beam=beam,
                 md={"analysis_parameters": {"txm_xanes": params or {}}}, **kw))
    return docs


def _feed(docs, sink=None):
    sink = sink if sink is not None else MemorySink()
    start = docs[0][1]
    cb = XANESCallback(sink, parameters=start["analysis_parameters"]["txm_xanes"])
    for name, doc in docs:
        cb(name, doc)
    return sink


@pytest.fixture(scope="module")
def scan():
    # 6-um-thick particles (0.2-um voxels) as in the analysis core's accuracy statement; drift
    # (up to 1.2 px) and the zone-plate magnification change with energy are in the frames
    return T.simulate_txm_scan(sample=T.particle_sample((64, 64), voxel_size_um=0.2), seed=3)


@pytest.fixture(scope="module")
def docs(scan, tmp_path_factory):
    return _run(tmp_path_factory.mktemp("txm"), scan, {"reference_energy_eV": 8350.0})


class RecordingSink(MemorySink):
    def __init__(self):
        super().__init__()
        self.published = []

    def put_arrays(self, arrays, metadata=None):
        self.published.append((sorted(arrays), dict(metadata or {})))
        super().put_arrays(arrays, metadata)


@pytest.fixture(scope="module")
def live(docs):
    return _feed(docs, RecordingSink())


def test_one_row_per_frame_with_roles_energies_and_focus(scan, docs, live):
    rows = live.rows
    assert [r["seq_num"] for r in rows] == list(range(1, 5 + 2 * 21 + 1))
    assert [r["role"] for r in rows[:7]] == ["dark"] * 5 + ["sample", "flat"]
    assert all(r["flag"] == "" for r in rows)
    samples = [r for r in rows if r["role"] == "sample"]
    np.testing.assert_allclose([r["energy_eV"] for r in samples], scan.energies_eV)
    focus = focus_positions(scan.energies_eV)
    np.testing.assert_allclose([r["zp_z_mm"] for r in samples], focus["zp_z_mm"], atol=1e-9)
    # the readback magnification is the simulator's (same optics, thin-lens equation)
    np.testing.assert_allclose([r["magnification"] for r in samples], scan.magnification, rtol=1e-7)
    flats = [r for r in rows if r["role"] == "flat"]
    # the sample absorbs: each flat (sample out) is brighter than the image of its energy
    assert all(f["image_mean"] > s["image_mean"] for f, s in zip(flats, samples, strict=True))
    assert all(r["image_mean"] < 200 for r in rows[:5])  # darks
    start = docs[0][1]
    assert start["experiment"] == "txm_xanes" and start["num_points"] == 47
    assert start["roles"] == ROLES and start["zone_plate"]["outer_zone_width_nm"] == 30.0


def test_whiteline_map_matches_the_truth(scan, live):
    """Measured (seed 3): bias +0.016 eV, RMS 0.11 eV over the particle interiors."""
    s = live.summary
    assert s["dark_source"] == "frames" and s["n_darks"] == 5
    wl, truth = live.arrays["whiteline_eV"], scan.whiteline_true_eV
    inner = ndimage.binary_erosion(np.isfinite(truth), iterations=2)
    assert live.arrays["mask"][inner].mean() > 0.98  # every interior voxel analysed
    # away from the particles, only noise above min_edge_jump = 0.1 passes (measured: 6 of 2239)
    assert live.arrays["mask"][~ndimage.binary_dilation(np.isfinite(truth), iterations=2)].mean() < 0.005
    d = (wl - truth)[inner & live.arrays["mask"]]
    assert abs(d.mean()) < 0.04
    assert np.sqrt(np.mean(d * d)) < 0.15
    # the state-of-charge contrast: large particle SOC 0.3, small one SOC 0.75 (+0.675 eV)
    big = inner & (np.hypot(*np.mgrid[0:64, 0:64] - np.array([0.45 * 64, 0.42 * 64])[:, None, None]) < 10)
    small = inner & (np.hypot(*np.mgrid[0:64, 0:64] - np.array([0.72 * 64, 0.76 * 64])[:, None, None]) < 6)
    assert np.nanmean(wl[small]) - np.nanmean(wl[big]) == pytest.approx(
        np.nanmean(truth[small]) - np.nanmean(truth[big]), abs=0.1)
    valid = live.arrays["mask"]
    assert s["n_voxels"] == int(valid.sum())
    assert s["whiteline_mean_eV"] == pytest.approx(float(np.nanmean(wl[valid])))
    assert s["whiteline_mean_eV"] == pytest.approx(float(np.nanmean(truth[valid])), abs=0.04)
    assert sum(s["histogram_counts"]) == s["n_voxels"]
    # registration recovered the simulated drift (reference 8350 eV = the simulator's)
    np.testing.assert_allclose(s["shifts_px"], -(scan.drift_px - scan.drift_px[10]), atol=0.3)
    # the edge-jump map follows the particles' thickness (the core's jump — post-edge level
    # minus pre-edge line — is ~0.8 of the simulator's dmu·t on this lineshape)
    assert np.corrcoef(live.arrays["edge_jump"][inner], scan.edge_jump_true[inner])[0, 1] > 0.95


def test_previews_while_the_scan_goes(live):
    stages = [m.get("stage") for _, m in live.published]
    assert stages[-1] == "final"
    previews = [(keys, m) for keys, m in live.published if m.get("stage") == "preview"]
    # edge contrast as soon as an energy above the pre-edge window exists (the 4th energy)
    first_jump = next(m["energies_done"] for keys, m in previews if "edge_jump" in keys)
    assert first_jump == 4
    # a running white-line map once the energies reach past the white line
    first_wl = next(m["energies_done"] for keys, m in previews if "whiteline_eV" in keys)
    assert 12 <= first_wl <= 17
    last = [m for keys, m in previews if "whiteline_eV" in keys][-1]
    assert last["whiteline_mean_eV"] == pytest.approx(live.summary["whiteline_mean_eV"], abs=0.1)


def test_figure_shows_map_histogram_and_edge_jump(live):
    from strainstream.callbacks.plots import figure_for
    from strainstream.callbacks.plots.xanes import txm_xanes_figure

    entry = live.as_dict()  # as read back from tiled: arrays only as digests
    fig = figure_for("txm_xanes", entry)
    ax_wl, ax_h = fig.axes[0], fig.axes[1]
    assert not ax_wl.images  # no map without the arrays
    assert sum(p.get_height() for p in ax_h.patches) == live.summary["n_voxels"]
    fig = txm_xanes_figure(entry, arrays=live.arrays)
    (img,) = fig.axes[0].images
    np.testing.assert_array_equal(img.get_array().filled(np.nan), live.arrays["whiteline_eV"])
    assert any("white-line energy (eV)" in ax.get_ylabel() for ax in fig.axes)  # the colour bar
    assert fig.axes[2].images  # edge-jump map


def test_replay_order_gives_identical_results(docs, live):
    """Replays deliver StreamResource/StreamDatum after the events: same numbers, same bits."""
    events = [(n, d) for n, d in docs if n not in ("stream_resource", "stream_datum", "stop")]
    assets = [(n, d) for n, d in docs if n in ("stream_resource", "stream_datum")]
    replayed = _feed(events + assets + [docs[-1]])
    assert replayed.as_dict() == live.as_dict()


@pytest.mark.parametrize("n_committed", [3, 20, 47])
def test_resumed_worker_rebuilds_from_committed_frames_bit_identically(docs, live, n_committed):
    resumed = RecordingSink()
    resumed.rows = [dict(r) for r in live.rows[:n_committed]]
    _feed(docs, resumed)
    assert resumed.as_dict() == live.as_dict()
    if n_committed == 20:  # 5 darks + energies 0-6 + the sample image of energy 7 committed
        assert resumed.published[0][1]["energies_done"] == 8  # the preview covers them all
    assert resumed.arrays.keys() == live.arrays.keys()
    for k in live.arrays:
        np.testing.assert_array_equal(resumed.arrays[k], live.arrays[k])


def test_time_series_repeats_give_one_map_per_repeat(tmp_path):
    scan = T.simulate_txm_scan(sample=T.particle_sample((32, 32), voxel_size_um=0.4), seed=1,
                               drift_px_rms=0.0)
    docs = _run(tmp_path, scan, repeats=2, n_darks=2)
    sink = _feed(docs)
    assert [r["repeat"] for r in sink.rows if r["role"] == "sample"] == [0] * 21 + [1] * 21
    series = sink.arrays["whiteline_eV_series"]
    assert series.shape == (2, 32, 32)
    # the camera serves the same frames in both repeats: identical maps
    np.testing.assert_array_equal(series[0], series[1])
    np.testing.assert_array_equal(series[1], sink.arrays["whiteline_eV"])
    assert len(sink.summary["whiteline_mean_eV_series"]) == 2


def test_darks_that_are_not_dark_are_rejected(tmp_path):
    """A camera that ignores the shutter: the 'darks' are sample images; they are not used."""
    scan = T.simulate_txm_scan(sample=T.particle_sample((32, 32), voxel_size_um=0.4), seed=2,
                               drift_px_rms=0.0, magnification_changes=False)
    sink = _feed(_run(tmp_path, scan, shutter_works=False, n_darks=2))
    s = sink.summary
    assert s["dark_source"].startswith("dark_counts parameter (dark frames rejected")
    ok = sink.arrays["mask"] & np.isfinite(scan.whiteline_true_eV)
    # the 100-count dark offset left in shifts absorbance by ~0.1 %: still within 0.1 eV
    assert abs(np.mean(sink.arrays["whiteline_eV"][ok] - scan.whiteline_true_eV[ok])) < 0.1


def test_plan_refuses_bad_arguments():
    es = SimStage(name="es")
    cam = sim_frame_detector("txm", "/nonexistent", frame_shape=(8, 8))
    with pytest.raises(ValueError, match="darks need the shutter"):
        list(txm_xanes(cam, es))
    with pytest.raises(ValueError, match="same energy twice"):
        list(txm_xanes(cam, es, energies_eV=[8340, 8341, 8340], n_darks=0))
    with pytest.raises(ValueError, match="outside the zone-plate calibration table"):
        list(txm_xanes(cam, es, n_darks=0, zone_plate={"energy_eV": [8300, 8350], "zp_z_mm": [51, 52]}))


def test_focus_positions_lens_equation_and_table():
    from strainstream.devices.ioc.endstation import zp_focus_mm

    e = np.array([8340.0, 8350.0, 8360.0])
    f = focus_positions(e)
    np.testing.assert_allclose(f["zp_z_mm"], [zp_focus_mm(x) for x in e], atol=1e-6)
    np.testing.assert_array_equal(f["det_z_mm"], 1000.0)
    assert np.all(np.diff(f["zp_z_mm"]) > 0) and np.all(np.diff(f["magnification"]) < 0)
    t = focus_positions([8345.0], {"energy_eV": [8340, 8350], "zp_z_mm": [51.0, 52.0],
                                   "det_z_mm": [990.0, 1010.0]})
    assert t["zp_z_mm"][0] == pytest.approx(51.5) and t["det_z_mm"][0] == pytest.approx(1000.0)
    assert t["magnification"][0] == pytest.approx((1000.0 - 51.5) / 51.5)


def _run_session(session, tmp, scan, params):
    es, beam = SimStage(name="es"), SimBeam(name="beam")
    energies = scan.energies_eV

    def source(i):
        if beam.shutter.status.get() != "Open":
            return scan.darks + np.random.default_rng([7, i]).normal(0.0, 2.0, scan.darks.shape)
        ie = int(np.argmin(np.abs(energies - es.energy.position)))
        return (scan.flats if abs(es.sample_inout.position) >= 0.5 else scan.stack)[ie]

    cam = sim_frame_detector("txm", tmp, frame_source=source, frame_shape=scan.stack.shape[1:])
    (uid,) = session.RE(txm_xanes(cam, es, energies_eV=energies, beam=beam, n_darks=2,
                                  md={"analysis_parameters": {"txm_xanes": params}}))
    return uid


@pytest.mark.system
def test_live_worker_through_tiled_equals_replay(tiled_server, worker_factory):
    """RunEngine -> TiledWriter -> tiled -> worker: the stored maps are those of a replay."""
    from strainstream.callbacks.sinks import read_results
    from strainstream.datadir import detector_dir
    from strainstream.demo import wait_for_results
    from strainstream.replay import replay_run
    from strainstream.session import make_session

    worker_factory()
    session = make_session(tiled_server.uri, tiled_server.api_key, progress=False)
    scan = T.simulate_txm_scan(sample=T.particle_sample((32, 32), voxel_size_um=0.4), seed=4,
                               drift_px_rms=0.3)
    uid = _run_session(session, detector_dir(tiled_server.data_dir), scan, {"reference_energy_eV": 8350.0})
    root = tiled_server.client()
    live = wait_for_results(root, uid, 44, timeout_s=60)
    entry = live["analyses"]["txm_xanes"]
    assert entry["n_rows"] == 2 + 2 * 21 and entry["summary"]["n_voxels"] > 100
    assert entry["columns"]["role"][:4] == ["dark", "dark", "sample", "flat"]
    assert entry["arrays"]["whiteline_eV"]["shape"] == [32, 32]
    assert replay_run(root[uid]) == live == read_results(root, uid)


def test_frame_retaken_after_a_beam_dump_is_the_one_analysed(tmp_path):
    import threading

    scan = T.simulate_txm_scan(sample=T.particle_sample((32, 32), voxel_size_um=0.4), seed=1,
                               drift_px_rms=0.0)
    es, beam = SimStage(name="es"), SimBeam(name="beam")
    energies = scan.energies_eV

    dumped = []

    def source(i):
        if i == 12 and not dumped:  # the beam dumps during this exposure: a frame without beam
            dumped.append(i)
            beam.ring_current_mA.put(0.0)
            threading.Timer(0.2, lambda: beam.ring_current_mA.put(400.0)).start()
            return scan.darks
        if beam.shutter.status.get() != "Open":
            return scan.darks
        ie = int(np.argmin(np.abs(energies - es.energy.position)))
        return (scan.flats if abs(es.sample_inout.position) >= 0.5 else scan.stack)[ie]

    cam = sim_frame_detector("txm", tmp_path, frame_source=source, frame_shape=(32, 32))
    docs = []
    RE = RunEngine({})
    RE.subscribe(lambda n, d: docs.append((n, copy.deepcopy(d))))
    RE(txm_xanes(cam, es, energies_eV=energies, beam=beam, n_darks=2,
                 md={"analysis_parameters": {"txm_xanes": {}}}))
    sink = _feed(docs)
    assert len(sink.rows) == 44  # the interrupted frame was taken again
    assert all(r["image_mean"] > 1000 for r in sink.rows if r["role"] != "dark")
    # the file holds exactly the recorded frames (readers such as tiled map event k -> frame k-1)
    datums = [d for n, d in docs if n == "stream_datum"]
    assert len(datums) == 44 and [d["indices"]["start"] for d in datums] == list(range(44))
    import h5py

    (path,) = tmp_path.glob("txm_*.h5")
    with h5py.File(path, "r") as f:
        assert f["/entry/data/data"].shape[0] == 44
