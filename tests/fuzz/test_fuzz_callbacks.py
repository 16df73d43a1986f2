"""Property-based fuzzing of the analysis callbacks with corrupted document streams.

Each test records one small real run (the real plan on simulated devices), then hypothesis
corrupts copies of its documents and detector file — start metadata and analysis parameters
missing or of the wrong type, descriptors with wrong shapes/dtypes, events with NaN/inf/huge/
garbage values, missing keys, seq_num gaps/duplicates/reordering, StreamResources pointing at
missing/truncated/garbage HDF5 files, datasets of the wrong shape or dtype (int8, complex,
bool, strings, records, 1-D/2-D/4-D) or declaring 20 GB frames, broken StreamDatums, no stop —
and feeds them to the run's analyses through :func:`strainstream.callbacks.router.make_callbacks`
with a :class:`~strainstream.callbacks.sinks.MemorySink`. The properties checked are in
``_fuzzcheck.check_run``: the only exception is a ``RunDocumentError`` on the start/descriptor
naming the problem; every event gets exactly one well-typed row, flagged (with a message) when
it could not be analysed; nothing non-finite is written as a good value.

The ``@example`` cases are the bugs the fuzzing found (each failed before its fix).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
from _fuzzcheck import apply_mutations, check_run
from _strategies import fuzz, mutations
from hypothesis import example, given

pytestmark = pytest.mark.filterwarnings(
    # numpy's "Mean of empty slice" / "invalid value" on garbage frames is expected noise
    "ignore::RuntimeWarning",
)


def _check(base, experiment: str, muts: list[tuple]) -> None:
    with tempfile.TemporaryDirectory() as where:
        docs, hints = apply_mutations(base, experiment, muts, Path(where))
        check_run(docs, hints)


@pytest.fixture(scope="module")
def frame_series_docs(tmp_path_factory):
    from _fuzzdocs import frame_series_run

    docs = frame_series_run(tmp_path_factory.mktemp("frames"))
    docs[0][1]["experiment"] = "frame_series"
    return docs


@pytest.fixture(scope="module")
def sxdm_docs(tmp_path_factory):
    from _fuzzdocs import sxdm_run

    return sxdm_run(tmp_path_factory.mktemp("sxdm"))


@pytest.fixture(scope="module")
def txm_docs(tmp_path_factory):
    from _fuzzdocs import txm_run

    return txm_run(tmp_path_factory.mktemp("txm"))


@pytest.fixture(scope="module")
def xrd_docs(tmp_path_factory):
    from _fuzzdocs import operando_xrd_run

    return operando_xrd_run(tmp_path_factory.mktemp("xrd"), num=2)


def test_uncorrupted_runs_are_analysed_without_flags(frame_series_docs, sxdm_docs, txm_docs):
    """The base runs themselves pass the properties with no flagged row (the fuzz baseline)."""
    for docs, experiment in ((frame_series_docs, "frame_series"), (sxdm_docs, "sxdm"),
                             (txm_docs, "txm_xanes")):
        with tempfile.TemporaryDirectory() as where:
            docs2, hints = apply_mutations(docs, experiment, [], Path(where))
            report = check_run(docs2, hints)
        assert report["error"] is None
        assert all(flags == [""] for flags in report["flags"].values()), report


@fuzz(150)
@given(muts=mutations("frame_series"))
@example(muts=[("descriptor_set", "external", None)])  # no frame key: bare ValueError
@example(muts=[("start_set", "analysis_parameters", math.inf)])  # router: AttributeError
@example(muts=[("param_set", "saturation", "abc")])  # numpy UFuncTypeError per event
@example(muts=[("param_set", "saturation", [1.0, 2.0])])  # broadcast ValueError per event
@example(muts=[("event_field", 0, "descriptor", {"a": 1})])  # unhashable descriptor: TypeError
@example(muts=[("file", "huge_values", 0)])  # total = inf written as a good value
@example(muts=[("file", "huge", 0)])  # 20 GB frame declared: must be refused, not allocated
@example(muts=[("file", "complex", 0)])  # ComplexWarning, imaginary part silently dropped
@example(muts=[("file", "compound", 0)])  # record dtype: TypeError in astype
@example(muts=[("datum", 0, "unknown_resource", None)])  # FrameUnavailable raised by the callback
@example(muts=[("datum", 1, "seq_nums.stop", "abc")])  # int('abc'): ValueError
@example(muts=[("event_field", 0, "seq_num", None)])  # int(None): TypeError
@example(muts=[("event_field", 0, "time", "<delete>")])  # KeyError 'time'
@example(muts=[("event_field", 1, "data", None)])
@example(muts=[("resource_set", "uri", None)])  # urlparse(None)
@example(muts=[("resource_set", "dataset", [1.0, 2.0])])  # h5py: TypeError
def test_frame_stats_callback_survives_corrupted_runs(frame_series_docs, muts):
    _check(frame_series_docs, "frame_series", muts)


@fuzz(60)
@given(muts=mutations("sxdm"))
@example(muts=[("param_set", "threshold_counts", None)])  # TypeError per raster line
@example(muts=[("param_set", "background", math.nan)])  # KeyError nan in the threshold table
@example(muts=[("param_set", "border_px", None)])  # message did not name border_px
@example(muts=[("param_set", "mask_fraction", "")])
@example(muts=[("param_set", "theta_tolerance_deg", None)])
@example(muts=[("start_set", "raster.nx", 10**9)])  # 10⁹-point raster: refused, not allocated
@example(muts=[("start_set", "raster.ny", 10**30)])
@example(muts=[("start_set", "step_nm", "abc")])
@example(muts=[("start_set", "sxdm_keys.theta", {"a": 1})])  # unhashable key name
@example(muts=[("event_field", 0, "seq_num", None)])  # int(None): TypeError
@example(muts=[("event_field", 45, "descriptor", "<delete>")])  # KeyError 'descriptor'
@example(muts=[("event_data", 0, 4, [[1, 2], [3]])])  # θ a list: float() TypeError
@example(muts=[("datum", 81, "seq_nums.stop", "abc")])  # FrameUnavailable raised
@example(muts=[("file", "negative", 193)])  # NaN background: KeyError in the threshold table
def test_sxdm_callback_survives_corrupted_runs(sxdm_docs, muts):
    _check(sxdm_docs, "sxdm", muts)


@fuzz(60)
@given(muts=mutations("txm_xanes"))
@example(muts=[("event_field", 0, "seq_num", None)])  # int(None): TypeError
@example(muts=[("event_field", 0, "seq_num", math.inf)])  # OverflowError
@example(muts=[("param_set", "min_edge_jump", None)])  # TypeError at the stop
@example(muts=[("param_set", "bins", [])])
@example(muts=[("param_set", "bins", -1)])  # numpy ValueError at the stop
@example(muts=[("param_set", "pre_edge_eV", "")])  # IndexError in the normalisation
@example(muts=[("param_set", "post_edge_eV", 0)])  # 'int' object is not iterable
@example(muts=[("start_set", "txm_keys", [[1, 2], [3]])])  # message did not name txm_keys
@example(muts=[("start_set", "txm_keys.frames", -1e308)])  # bare ValueError per event
@example(muts=[("start_set", "txm_keys.role", {"a": 1})])  # unhashable: TypeError per event
@example(muts=[("start_set", "roles.sample", "")])  # message did not name roles
@example(muts=[("start_set", "energies_eV", "abc")])  # message did not name energies_eV
@example(muts=[("event_data", 3, 10, 1e308)])  # energy index 10^308 → int64 overflow in the row
@example(muts=[("file", "uint16", 0), ("event_data", 5, 11, -1)])  # repeat −1
def test_xanes_callback_survives_corrupted_runs(txm_docs, muts):
    _check(txm_docs, "txm_xanes", muts)


@pytest.mark.slow
@fuzz(25)
@given(muts=mutations("operando_xrd", max_size=2))
@example(muts=[("event_data", 0, 0, None)])  # cycler reading None: float(None) TypeError
@example(muts=[("descriptor_set", "external", {})])  # no frame key: bare ValueError
@example(muts=[("start_set", "calibration.poni1_m", 1e308)])  # np.interp on an empty pattern
@example(muts=[("start_set", "calibration.rot1", [1.0, 2.0])])  # message did not name rot1
@example(muts=[("start_set", "calibration.distance_m", {})])
@example(muts=[("start_set", "calibration", "abc")])  # message did not name calibration
@example(muts=[("param_set", "q_range_A_inv", -(10**30))])  # 'int' object is not iterable
@example(muts=[("param_set", "npt", "abc")])
def test_operando_xrd_callback_survives_corrupted_runs(xrd_docs, muts):
    _check(xrd_docs, "operando_xrd", muts)


@fuzz(60)
@given(muts=mutations("frame_series"))
@example(muts=[("start_set", "num_points", "abc")])  # TypeError in the time-left estimate
@example(muts=[("event_field", 0, "data", None)])  # None.items()
def test_progress_printer_never_stops_a_run(frame_series_docs, muts):
    import io

    from strainstream.callbacks.progress import ProgressPrinter

    with tempfile.TemporaryDirectory() as where:
        docs, _ = apply_mutations(frame_series_docs, "frame_series", muts, Path(where))
    out = io.StringIO()
    printer = ProgressPrinter(stream=out)
    for name, doc in docs:
        printer(name, doc)
    count = {n: sum(1 for name, _ in docs if name == n) for n in ("start", "event", "stop")}
    assert len(out.getvalue().splitlines()) == sum(count.values())
