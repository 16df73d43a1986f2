"""SXDM callback: known-answer maps from simulated frames, per-angle publishing, and
bit-identical replay and resume (in-process RunEngine, no server, no IOC).

The frames come from the independent forward model :mod:`strainstream.sim.sxdm_frames`
(charged SC-NM91 particle, Poisson noise, background, an 8 nm/angle drift random walk) served
by an in-process simulated detector whose frame depends on where the (soft) motors are, the
run being the real :func:`strainstream.plans.sxdm.sxdm_map` plan.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from bluesky import RunEngine

from strainstream.callbacks.sinks import MemorySink
from strainstream.callbacks.sxdm import MAP_KEYS, SXDMCallback
from strainstream.devices.detectors import sim_frame_detector
from strainstream.devices.testing import SimStage
from strainstream.plans.sxdm import DETECTOR_GEOMETRY_KEYS, sxdm_map
from strainstream.sim.sxdm_frames import particle_preset, simulate_sxdm

NY, NX, N_THETA = 10, 10, 21
STAT_KEYS = ("d_mean_A", "strain_std", "strain_range", "tilt_xy_std_deg", "tilt_xz_std_deg",
             "strain_tilt_correlation", "n_pixels")


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    sim = simulate_sxdm(particle_preset("SC-NM91", "charged", ny=NY, nx=NX, seed=2), shape=(32, 32),
                        n_theta=N_THETA, theta_range_deg=1.2, seed=4)
    es = SimStage(name="es")
    es.energy.set(sim.metadata["energy_keV"] * 1000.0)
    step_um = sim.metadata["step_nm"] / 1000.0

    def source(_):  # the frame at the motors' position (raster point (iy, ix) at (iy, ix)·step)
        it = int(np.argmin(np.abs(sim.theta_deg - es.theta.position)))
        iy, ix = round(es.sample_y.position / step_um), round(es.sample_x.position / step_um)
        return sim.frame_at(it, iy, ix)

    det = sim_frame_detector("sxdm", tmp_path_factory.mktemp("sxdm"), frame_source=source,
                             frame_shape=sim.shape)
    docs = []
    RE = RunEngine({})
    RE.subscribe(lambda n, d: docs.append((n, copy.deepcopy(d))))
    RE(sxdm_map(det, es, theta_center_deg=float(sim.theta_deg[N_THETA // 2]), theta_half_range_deg=0.6,
                n_theta=N_THETA, x_center_um=(NX - 1) / 2 * step_um,
                y_center_um=(NY - 1) / 2 * step_um, nx=NX, ny=NY, step_nm=sim.metadata["step_nm"],
                geometry={k: sim.metadata[k] for k in DETECTOR_GEOMETRY_KEYS}))
    return sim, docs


class _RecordingSink(MemorySink):
    def __init__(self):
        super().__init__()
        self.published = []

    def put_arrays(self, arrays, metadata=None):
        super().put_arrays(arrays, metadata)
        self.published.append(dict(metadata or {}))


def _feed(docs, sink=None, parameters=None):
    sink = sink if sink is not None else _RecordingSink()
    cb = SXDMCallback(sink, parameters=parameters)
    for name, doc in docs:
        cb(name, doc)
    return sink


def _replay_order(docs):
    """Like ``run.documents()`` from the catalog: stream resources/datums after the events."""
    assets = [(n, d) for n, d in docs if n in ("stream_resource", "stream_datum")]
    rest = [(n, d) for n, d in docs if n not in ("stream_resource", "stream_datum")]
    return rest[:-1] + assets + rest[-1:]


@pytest.fixture(scope="module")
def live(scan):
    return _feed(scan[1])


def test_rows_hold_theta_raster_indices_and_counts(scan, live):
    sim, docs = scan
    start = docs[0][1]
    assert start["experiment"] == "sxdm" and start["num_points"] == N_THETA * NY * NX
    assert np.allclose(start["theta_deg"], sim.theta_deg, atol=1e-6)
    rows = live.rows
    assert len(rows) == N_THETA * NY * NX and all(r["flag"] == "" for r in rows)
    first_line = rows[NX:2 * NX]  # snake: the second line runs backwards
    assert [r["ix"] for r in first_line] == list(range(NX - 1, -1, -1))
    assert {r["itheta"] for r in rows} == set(range(N_THETA))
    assert rows[-1]["iy"] == NY - 1 and rows[0]["theta_deg"] == pytest.approx(sim.theta_deg[0], abs=1e-6)
    it, iy, ix = (rows[123][k] for k in ("itheta", "iy", "ix"))
    assert rows[123]["total_counts"] == float(sim.frame_at(it, iy, ix).sum())


def test_maps_match_the_simulated_particle(scan, live):
    sim, _ = scan
    truth = sim.truth()
    a = live.arrays
    assert set(MAP_KEYS) <= set(a) and a["strain"].shape == (NY, NX)
    inside = a["mask"] & (truth["weight"] > 0.5)
    assert inside.sum() >= 30
    d_rel = (a["d_spacing_A"] - truth["d_spacing_A"]) / truth["d_spacing_A"]
    rms = {k: float(np.sqrt(np.mean(v[inside] ** 2))) for k, v in {
        "d": d_rel, "txy": a["tilt_xy_deg"] - truth["tilt_xy_deg"],
        "txz": a["tilt_xz_deg"] - truth["tilt_xz_deg"]}.items()}
    # issue 6 goals: 2e-4 and 0.005 deg; this coarse 10x10, 21-angle scan reaches them too
    assert rms["d"] <= 2e-4, rms
    assert rms["txy"] <= 0.005 and rms["txz"] <= 0.005, rms
    assert np.isnan(a["strain"][~a["mask"]]).all() and np.isfinite(a["strain"][a["mask"]]).all()
    s = live.summary
    assert set(STAT_KEYS) <= set(s) and s["n_pixels"] == int(a["mask"].sum())
    t = truth["d_spacing_A"][a["mask"]]
    assert s["d_mean_A"] == pytest.approx(t.mean(), rel=1e-4)
    assert s["strain_std"] == pytest.approx((t / t.mean() - 1).std(), rel=0.15)
    assert s["strain_tilt_correlation"] < -0.3  # anticorrelated, as in the forward model
    assert s["n_frames"] == N_THETA * NY * NX and s["exit_status"] == "success"


def test_maps_are_published_after_every_rocking_angle(live):
    pub = live.published
    assert [p["angles_done"] for p in pub] == list(range(1, N_THETA + 1)) + [N_THETA]
    assert [p["final"] for p in pub] == [False] * N_THETA + [True]
    assert pub[0]["n_frames"] == NY * NX and pub[-1]["n_frames"] == N_THETA * NY * NX
    assert len(pub[3]["theta_deg_done"]) == 4


def _assert_identical(a, b):
    assert a.rows == b.rows
    assert set(a.arrays) == set(b.arrays)
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k], err_msg=k)
    sa, sb = dict(a.summary), dict(b.summary)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k] == sb[k] or (sa[k] != sa[k] and sb[k] != sb[k]), k  # NaN == NaN here


def test_replay_order_is_bit_identical(scan, live):
    _assert_identical(_feed(_replay_order(scan[1])), live)


def test_worker_style_batches_are_bit_identical(scan, live):
    """The live worker commits whatever arrived together as one batch (sizes vary)."""
    sink = _RecordingSink()
    cb = SXDMCallback(sink)
    docs, k, rng = scan[1], 0, np.random.default_rng(3)
    while k < len(docs):
        n = int(rng.integers(1, 90))
        with cb.batch():
            for name, doc in docs[k:k + n]:
                cb(name, doc)
        k += n
    _assert_identical(sink, live)


@pytest.mark.parametrize("n_committed", [1, 537, N_THETA * NY * NX - 3])
def test_resumed_worker_is_bit_identical(scan, live, n_committed):
    """A worker killed after ``n_committed`` rows (mid-line, mid-angle) rebuilds the maps from
    the committed events' frames and gives the same rows, maps and statistics."""
    resumed = _RecordingSink()
    resumed.rows = [dict(r) for r in live.rows[:n_committed]]
    _feed(scan[1], resumed)
    _assert_identical(resumed, live)


def test_flagged_events_and_missing_geometry(scan):
    sim, docs = scan
    docs = list(docs)
    events = {d["seq_num"]: k for k, (n, d) in enumerate(docs) if n == "event"}
    # one event off the planned θ, one whose raster point is unknown: both flagged and left
    # out of the maps; the angles still complete (maps published per angle) and the run maps
    ev = copy.deepcopy(docs[events[250]][1])
    ev["data"]["es_theta"] += 0.01
    docs[events[250]] = ("event", ev)
    ev = copy.deepcopy(docs[events[1234]][1])
    for k in ("sxdm_iy", "sxdm_ix"):
        del ev["data"][k]
    ev["data"]["es_sample_x"] = 1e3
    docs[events[1234]] = ("event", ev)
    sink = _feed(docs)
    bad = [(r["seq_num"], r["flag"]) for r in sink.rows if r["flag"]]
    assert bad == [(250, "theta_off_plan"), (1234, "outside_raster")]
    assert sink.summary["n_pixels"] > 30 and sink.summary["frames_flagged"] == 2
    assert [p["angles_done"] for p in sink.published] == list(range(1, N_THETA + 1)) + [N_THETA]
    start = dict(docs[0][1])
    del start["distance_m"]
    with pytest.raises(ValueError, match="distance_m"):
        _feed([("start", start)])


def test_run_without_frames_summarises_to_nan(scan):
    docs = [(n, d) for n, d in scan[1] if n in ("start", "descriptor", "stop")]
    sink = _feed(docs)
    assert sink.rows == [] and sink.arrays == {}
    s = sink.summary
    assert s["n_pixels"] == 0 and np.isnan(s["strain_std"]) and "no frames" in s["message"]


def test_raster_indices_from_positions_alone(scan, live):
    """Without the index signals the documented position → index mapping gives the same maps."""
    docs = []
    for n, d in scan[1]:
        if n == "start":
            d = dict(d, sxdm_keys={k: v for k, v in d["sxdm_keys"].items() if k not in ("iy", "ix", "itheta")})
        elif n == "event":
            d = dict(d, data={k: v for k, v in d["data"].items() if not k.startswith("sxdm_i")})
        docs.append((n, d))
    _assert_identical(_feed(docs), live)


def test_figure_has_four_maps_and_the_histogram(scan, live):
    from strainstream.callbacks.plots import figure_for
    from strainstream.callbacks.plots.sxdm import sxdm_figure

    entry = live.as_dict()
    fig = sxdm_figure(entry, arrays=live.arrays)
    titles = [ax.get_title() for ax in fig.axes]
    for t in ("intensity", "strain", "θxy", "θxz", "strain histogram"):
        assert any(t in x for x in titles), (t, titles)
    strain_ax = next(ax for ax in fig.axes if ax.get_title().startswith("strain Δd/d"))
    lo, hi = strain_ax.images[0].get_clim()
    assert lo == pytest.approx(-hi)  # diverging scale centred on 0
    # without the arrays (e.g. the results entry alone): the rocking curve, no failure
    fig2 = figure_for("sxdm", entry)
    assert any("rocking" in ax.get_title() for ax in fig2.axes)
