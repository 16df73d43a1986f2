"""AnalysisCallback.restore: a worker restarted mid-run rebuilds what its analysis accumulates
from the events an earlier pass committed, and the final arrays equal an uninterrupted pass
bit for bit (no server: in-process RunEngine, simulated detectors, memory sinks).

A restart is simulated as the worker does it: the first pass is dropped after ``n`` committed
rows (no stop document), a fresh callback whose sink holds those rows is fed the run from its
first document — live order, or replay order (StreamResource/StreamDatum after the events, so
every event is held until its frame is resolvable).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from bluesky import RunEngine

from strainstream.callbacks.framestats import FrameStatsCallback
from strainstream.callbacks.sinks import MemorySink
from strainstream.callbacks.sxdm import SXDMCallback
from strainstream.callbacks.xanes import XANESCallback
from strainstream.devices.detectors import sim_frame_detector
from strainstream.devices.testing import SimBeam, SimStage
from strainstream.plans.frames import frame_series
from strainstream.plans.sxdm import DETECTOR_GEOMETRY_KEYS, sxdm_map
from strainstream.plans.xanes import txm_xanes
from strainstream.sim import txm_images as T
from strainstream.sim.sxdm_frames import particle_preset, simulate_sxdm

NY, NX, N_THETA = 5, 6, 7  # 210 frames


class _RecordingSink(MemorySink):
    """A memory sink that also records what this pass appended."""

    def __init__(self, committed=()):
        super().__init__()
        self.rows = [dict(r) for r in committed]
        self.appended = []

    def append(self, rows):
        self.appended.extend(dict(r) for r in rows)
        super().append(rows)


def _record():
    out = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: out.append((name, copy.deepcopy(doc))))
    return RE, out


def _replay_order(docs):
    """Like ``run.documents()`` from the catalog: stream resources/datums after the events."""
    assets = [(n, d) for n, d in docs if n in ("stream_resource", "stream_datum")]
    rest = [(n, d) for n, d in docs if n not in ("stream_resource", "stream_datum")]
    return rest[:-1] + assets + rest[-1:]


def _frame_key(docs):
    (desc,) = [d for n, d in docs if n == "descriptor"]
    (key,) = [k for k, dk in desc["data_keys"].items() if dk.get("external") == "STREAM:"]
    return key


def _feed(cls, docs, sink, parameters=None):
    cb = cls(sink, parameters=parameters)
    for name, doc in docs:
        cb(name, doc)
    return cb


def _killed_after(cls, docs, n_committed, parameters=None):
    """Rows a first pass committed before it was killed (after ``n_committed`` rows)."""
    sink = MemorySink()
    cb = cls(sink, parameters=parameters)
    for name, doc in docs:
        if name == "stop":
            break
        cb(name, doc)
        if len(sink.rows) >= n_committed:
            break
    assert len(sink.rows) == n_committed
    return sink.rows


def _spy_restore(monkeypatch, cls, key):
    """Record (seq_num, frame resolvable) of every restore call; the hook still runs."""
    calls, original = [], cls.restore

    def spy(self, event, row):
        seq = int(event["seq_num"])
        assert row["seq_num"] == seq
        calls.append((seq, self.frames.available(key, seq)))
        return original(self, event, row)

    monkeypatch.setattr(cls, "restore", spy)
    return calls


def _assert_resume_identical(monkeypatch, cls, docs, live, n, parameters=None):
    committed = _killed_after(cls, docs, n, parameters)
    assert committed == live.rows[:n]
    calls = _spy_restore(monkeypatch, cls, _frame_key(docs))
    for order in (docs, _replay_order(docs)):
        calls.clear()
        resumed = _RecordingSink(committed)
        _feed(cls, order, resumed, parameters)
        # every committed event restored once, in seq_num order, with its frame resolvable
        assert calls == [(seq, True) for seq in range(1, n + 1)]
        assert resumed.appended == live.rows[n:]  # each row committed exactly once
        assert resumed.rows == live.rows
        np.testing.assert_equal(resumed.summary, live.summary)  # NaN == NaN, exact otherwise
        assert resumed.arrays.keys() == live.arrays.keys() and live.arrays
        for k, v in live.arrays.items():
            assert resumed.arrays[k].dtype == v.dtype, k
            assert np.array_equal(resumed.arrays[k], v, equal_nan=True), k


# -- SXDM: strain/rotation maps accumulated over raster lines and rocking angles ----------------
@pytest.fixture(scope="module")
def sxdm_docs(tmp_path_factory):
    sim = simulate_sxdm(particle_preset("SC-NM91", "charged", ny=NY, nx=NX, seed=2), shape=(24, 24),
                        n_theta=N_THETA, theta_range_deg=1.2, seed=4)
    es = SimStage(name="es")
    es.energy.set(sim.metadata["energy_keV"] * 1000.0)
    step_um = sim.metadata["step_nm"] / 1000.0

    def source(_):
        it = int(np.argmin(np.abs(sim.theta_deg - es.theta.position)))
        iy, ix = round(es.sample_y.position / step_um), round(es.sample_x.position / step_um)
        return sim.frame_at(it, iy, ix)

    det = sim_frame_detector("sxdm", tmp_path_factory.mktemp("sxdm"), frame_source=source,
                             frame_shape=sim.shape)
    RE, docs = _record()
    RE(sxdm_map(det, es, theta_center_deg=float(sim.theta_deg[N_THETA // 2]), theta_half_range_deg=0.6,
                n_theta=N_THETA, x_center_um=(NX - 1) / 2 * step_um, y_center_um=(NY - 1) / 2 * step_um,
                nx=NX, ny=NY, step_nm=sim.metadata["step_nm"],
                geometry={k: sim.metadata[k] for k in DETECTOR_GEOMETRY_KEYS}))
    return docs


@pytest.mark.parametrize("n_committed", [1, 2 * NX * NY + 8, N_THETA * NY * NX - 1])
def test_sxdm_maps_after_a_restart_equal_the_uninterrupted_pass(monkeypatch, sxdm_docs, n_committed):
    """Killed after the first frame, mid-line in the third angle, one frame before the end."""
    live = _feed(SXDMCallback, sxdm_docs, MemorySink()).sink
    assert live.summary["n_pixels"] > 0 and np.isfinite(live.arrays["strain"]).any()
    _assert_resume_identical(monkeypatch, SXDMCallback, sxdm_docs, live, n_committed)


# -- TXM-XANES: image stacks accumulated over energies and repeats -----------------------------
@pytest.fixture(scope="module")
def xanes_docs(tmp_path_factory):
    scan = T.simulate_txm_scan(sample=T.particle_sample((32, 32), voxel_size_um=0.4), seed=1,
                               drift_px_rms=0.3)
    es, beam = SimStage(name="es"), SimBeam(name="beam")

    def source(i):
        if beam.shutter.status.get() != "Open":
            return scan.darks + np.random.default_rng([7, i]).normal(0.0, 2.0, scan.darks.shape)
        ie = int(np.argmin(np.abs(scan.energies_eV - es.energy.position)))
        return (scan.flats if abs(es.sample_inout.position) >= 0.5 else scan.stack)[ie]

    cam = sim_frame_detector("txm", tmp_path_factory.mktemp("txm"), frame_source=source,
                             frame_shape=scan.stack.shape[1:])
    RE, docs = _record()
    RE(txm_xanes(cam, es, energies_eV=scan.energies_eV, beam=beam, n_darks=2, repeats=2))
    return docs


@pytest.mark.parametrize("n_committed", [1, 2 + 2 * 9 + 1, 2 + 2 * 21 + 5])
def test_xanes_maps_after_a_restart_equal_the_uninterrupted_pass(monkeypatch, xanes_docs, n_committed):
    """Killed among the darks, mid-way through repeat 0 (sample image without its flat), in repeat 1."""
    live = _feed(XANESCallback, xanes_docs, MemorySink()).sink
    assert live.arrays["whiteline_eV_series"].shape == (2, 32, 32) and live.arrays["mask"].any()
    _assert_resume_identical(monkeypatch, XANESCallback, xanes_docs, live, n_committed)


# -- per-event analyses: committed events are neither restored nor read ----------------------
@pytest.fixture(scope="module")
def frame_docs(tmp_path_factory):
    RE, docs = _record()
    det = sim_frame_detector("det", tmp_path_factory.mktemp("det"), frame_shape=(16, 20))
    RE(frame_series([det], num=6))
    return docs


@pytest.mark.parametrize("replay", [False, True])
def test_per_event_analysis_neither_restores_nor_reads_committed_events(frame_docs, replay):
    full = _feed(FrameStatsCallback, frame_docs, MemorySink()).sink
    resumed = _RecordingSink(full.rows[:4])
    cb = FrameStatsCallback(resumed)
    restored = []
    cb.restore = lambda event, row: restored.append(event["seq_num"])  # any call the base made
    reads, read = [], cb.frames.read
    cb.frames.read = lambda key, seq: reads.append(seq) or read(key, seq)
    order = _replay_order(frame_docs) if replay else frame_docs
    events = [(n, d) for n, d in frame_docs if n == "event"]
    for name, doc in order[:-1] + events + order[-1:]:  # every event twice
        cb(name, doc)
    assert restored == []  # the default hook is not even called
    assert reads == [5, 6]  # no frame of a committed event is resolved or read
    assert resumed.appended == full.rows[4:]
    assert resumed.summary == full.summary


class _Accumulating(FrameStatsCallback):
    """A per-event analysis that also accumulates the frame sum of every event it sees."""

    def on_start(self, doc):
        super().on_start(doc)
        self.seen, self.total = [], None

    def _add(self, what, seq, frame):
        self.seen.append((what, seq))
        self.total = frame.astype(np.float64) if self.total is None else self.total + frame

    def analyse(self, event, frames):
        (frame,) = frames.values()
        self._add("analyse", int(event["seq_num"]), frame)
        return super().analyse(event, frames)

    def restore(self, event, row):
        (frame,) = self.committed_frames(int(event["seq_num"])).values()
        self._add("restore", int(event["seq_num"]), frame)


@pytest.mark.parametrize("replay", [False, True])
def test_restore_then_analyse_in_seq_order_each_once(frame_docs, replay):
    """Committed events are restored (not analysed), new ones analysed, in seq_num order, once
    each even when documents repeat; the accumulated sum equals the uninterrupted pass's."""
    whole = _feed(_Accumulating, frame_docs, MemorySink())
    resumed = _RecordingSink(whole.sink.rows[:3])
    order = _replay_order(frame_docs) if replay else frame_docs
    events = [(n, d) for n, d in frame_docs if n == "event"]
    cb = _feed(_Accumulating, order[:-1] + events + order[-1:], resumed)
    assert cb.seen == [("restore", 1), ("restore", 2), ("restore", 3),
                       ("analyse", 4), ("analyse", 5), ("analyse", 6)]
    assert np.array_equal(cb.total, whole.total)
    assert resumed.appended == whole.sink.rows[3:]
