"""Hypothesis strategies: lists of document/file corruptions for each experiment."""

from __future__ import annotations

from _fuzzcheck import ANALYSIS_OF, FILE_KINDS, GARBAGE, PARAMETERS, START_KEYS
from hypothesis import strategies as st

garbage = st.sampled_from(GARBAGE)
idx = st.integers(min_value=0, max_value=200)

#: nested start-document keys worth corrupting on their own
SUB_KEYS = {
    "operando_xrd": ["calibration.distance_m", "calibration.wavelength_A", "calibration.shape",
                     "calibration.pixel_size_um", "calibration.poni1_m", "calibration.rot1",
                     "calibration.instrument_fwhm_A_inv"],
    "sxdm": ["raster.nx", "raster.ny", "raster.x_center_um", "raster.y_center_um",
             "sxdm_keys.theta", "sxdm_keys.itheta", "sxdm_keys.frames", "sxdm_keys.fluorescence"],
    "txm_xanes": ["roles.dark", "roles.sample", "txm_keys.role", "txm_keys.frames",
                  "txm_keys.energy", "txm_keys.ienergy", "txm_keys.zp_z"],
    "frame_series": [],
}


def mutation(experiment: str) -> st.SearchStrategy[tuple]:
    keys = START_KEYS[experiment] + SUB_KEYS[experiment]
    params = PARAMETERS[ANALYSIS_OF[experiment]]
    return st.one_of(
        st.tuples(st.just("start_del"), st.sampled_from(keys)),
        st.tuples(st.just("start_set"), st.sampled_from(keys), garbage),
        st.tuples(st.just("param_set"), st.sampled_from(params), garbage),
        st.tuples(st.just("descriptor_set"),
                  st.sampled_from(["shape", "dtype", "external", "data_keys", "name"]), garbage),
        st.tuples(st.just("event_data"), idx, idx, garbage),
        st.tuples(st.just("event_del_key"), idx, idx),
        st.tuples(st.just("event_field"), idx, st.sampled_from(["seq_num", "time", "data", "descriptor"]),
                  st.one_of(garbage, st.just("<delete>"))),
        st.tuples(st.just("event_seq"), idx, idx,
                  st.sampled_from(["drop", "duplicate", "swap", "same_seq", "to_end"])),
        st.tuples(st.just("file"), st.sampled_from(FILE_KINDS), idx),
        st.tuples(st.just("resource_set"), st.sampled_from(["uri", "dataset", "data_key", "uid"]), garbage),
        st.tuples(st.just("datum"), idx,
                  st.sampled_from(["drop", "duplicate", "unknown_resource", "to_end", "seq_nums.start",
                                   "seq_nums.stop", "indices.start"]), garbage),
        st.tuples(st.just("no_stop")),
        st.tuples(st.just("stop_set"), st.sampled_from(["exit_status", "reason"]), garbage),
    )


def mutations(experiment: str, max_size: int = 3) -> st.SearchStrategy[list[tuple]]:
    return st.lists(mutation(experiment), min_size=1, max_size=max_size)


def fuzz(max_examples: int):
    """Hypothesis settings for the fuzz tests.

    CI: reproducible (derandomized, no example database), ``max_examples`` bounded, no
    per-example deadline (the machine is shared), no too-slow health check (examples read
    HDF5 files). ``STRAINSTREAM_FUZZ_SCALE=N`` runs N times as many *random* examples (a
    deeper, non-reproducible search, e.g. nightly or before a beamtime).
    """
    import os

    from hypothesis import HealthCheck, settings

    scale = float(os.environ.get("STRAINSTREAM_FUZZ_SCALE", "0") or 0)
    return settings(max_examples=max(1, int(max_examples * (scale or 1))), deadline=None,
                    derandomize=not scale, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
