"""Operando XRD callback on simulated frames of a charging SC-NM91 cell (no server)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from bluesky import RunEngine
from ophyd import Signal

from strainstream.callbacks.sinks import MemorySink
from strainstream.callbacks.xrd import OperandoXRDCallback
from strainstream.devices.detectors import sim_frame_detector
from strainstream.plans.frames import frame_series
from strainstream.sim.cell import CoinCell
from strainstream.sim.xrd_frames import DetectorGeometry, XRDFrameSimulator

# state of charge of each frame: H1/H2 solid solution, then the H2/H3 two-phase window
SOCS = [0.05, 0.45, 0.78, 0.84, 0.95]


@pytest.fixture(scope="module")
def run_docs(tmp_path_factory):
    geo = DetectorGeometry.binned(4)  # 512² with the full detector's Q range
    sim = XRDFrameSimulator(geo)
    volt = Signal(name="cycler_voltage_V", value=0.0)
    cap = Signal(name="cycler_capacity_mAh_g", value=0.0)
    truth = []

    def source(i):
        cell = CoinCell("SC-NM91", 10.0, soc=SOCS[i])
        volt.put(cell.voltage_V)
        cap.put(cell.capacity_mAh_g)
        truth.append(cell.lattice())
        return sim.cell_frame(cell, seed=i).image

    det = sim_frame_detector("det", tmp_path_factory.mktemp("xrd"), frame_source=source, frame_shape=geo.shape)
    docs = []
    RE = RunEngine({})
    RE.subscribe(lambda n, d: docs.append((n, copy.deepcopy(d))))
    # the calibration carries the instrumental FWHM in Q of the simulated instrument (0.02° 2θ
    # at the (003) angle); a calibrant fit measures it at the beamline
    inst = 2 * np.pi / geo.wavelength_A * np.radians(sim.instrument_fwhm_2theta_deg)
    calibration = dict(geo.to_dict(), instrument_fwhm_A_inv=inst)
    RE(frame_series([det, volt, cap], num=len(SOCS),
                    md={"experiment": "operando_xrd", "calibration": calibration}))
    return docs, truth


def _feed(docs, sink=None):
    sink = sink or MemorySink()
    cb = OperandoXRDCallback(sink)
    for name, doc in docs:
        cb(name, doc)
    return sink


@pytest.fixture(scope="module")
def live(run_docs):
    return _feed(run_docs[0])


def test_lattice_matches_the_simulated_cell(run_docs, live):
    _, truth = run_docs
    assert [r["flag"] for r in live.rows] == [""] * len(SOCS)
    for row, phases in zip(live.rows, truth, strict=True):
        major = max(phases, key=lambda p: p.fraction)
        if len(phases) == 1:
            assert row["n_phases"] == 1
            assert row["a_A"] == pytest.approx(major.a_A, abs=5e-4)
            assert row["c_A"] == pytest.approx(major.c_A, abs=5e-3)
            assert row["microstrain"] == pytest.approx(major.microstrain, rel=0.15)
        else:
            assert row["n_phases"] == 2
            cs = sorted([row["c_A"], row["c_A_2"]])
            assert cs == pytest.approx(sorted(p.c_A for p in phases), abs=0.01)
            assert row["delta_c_A"] == pytest.approx(abs(phases[0].c_A - phases[1].c_A), abs=0.02)
        assert np.isfinite(row["voltage_V"]) and np.isfinite(row["i003_30"])


def test_summary_reports_contraction_and_split(live):
    s = live.summary
    assert s["frames_refined"] == len(SOCS)
    assert s["max_delta_c_A"] > 0.5
    assert 3.0 < s["c_contraction_pct"] < 7.0


def test_resumed_pass_is_bit_identical(run_docs, live):
    """A worker restarted after 2 committed frames seeds from the stored row: same bits."""
    resumed = MemorySink()
    resumed.rows = [dict(r) for r in live.rows[:2]]
    _feed(run_docs[0], resumed)
    assert resumed.rows == live.rows
    assert resumed.summary == live.summary


def test_missing_calibration_is_a_clear_error(run_docs):
    docs = [(n, dict(d, calibration=None) if n == "start" else d) for n, d in run_docs[0]]
    with pytest.raises(ValueError, match="no 'calibration' geometry"):
        _feed(docs)
