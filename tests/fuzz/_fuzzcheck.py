"""Corrupt a recorded run's documents and check what the analysis callbacks make of them.

A *mutation* is a plain tuple ``(kind, *params)`` (hypothesis draws them; regression
examples spell them out). :func:`apply_mutations` applies a list of them to a copy of a
base run and returns the documents plus *hints*: words (keys, file names, seq_nums) a clear
error message about that corruption may name. :func:`check_run` feeds the documents to the
run's analyses (built by :func:`strainstream.callbacks.router.make_callbacks`, each with a
:class:`MemorySink`) and asserts the fuzz properties:

- no exception, except :class:`strainstream.callbacks.base.RunDocumentError` raised on the
  start, a descriptor or a stream resource, whose message names one of the hints (then the
  run is abandoned, as the worker does);
- every row has exactly the declared columns with the declared Python types (int64 in range),
  no ±inf anywhere, the analysis' key results finite in unflagged rows, a message in flagged
  rows, one row per seq_num;
- after the stop document: the sink is complete, every event with a usable seq_num has its
  row, the summary and the published arrays are JSON/array-safe.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from strainstream.callbacks.base import RunDocumentError
from strainstream.callbacks.router import make_callbacks
from strainstream.callbacks.sinks import MemorySink, _json_safe

Docs = list[tuple[str, dict[str, Any]]]

#: values that must never crash an analysis, wherever they appear in a document
GARBAGE: list[Any] = [None, "abc", "", -1, 0, 3.5, -1e308, 1e308, math.nan, math.inf, -math.inf,
                      [], {}, [1.0, 2.0], {"a": 1}, True, 10**30, -(10**30), [[1, 2], [3]]]

#: per analysis: columns that must be finite in a row that is not flagged
REQUIRED_FINITE = {
    "frame_stats": ("mean", "std", "max", "total", "centroid_row", "centroid_col"),
    "operando_xrd": ("a_A", "c_A", "volume_A3", "rwp"),
    "sxdm": ("theta_deg", "total_counts", "max_counts"),
    "txm_xanes": ("image_mean", "image_max"),
}
#: per analysis: int columns that must be non-negative in a row that is not flagged
REQUIRED_INDEX = {"sxdm": ("itheta", "iy", "ix"), "operando_xrd": ("n_phases",)}

#: top-level start-document keys each experiment's analysis reads
START_KEYS = {
    "frame_series": ["analysis_parameters"],
    "operando_xrd": ["calibration", "analysis_parameters"],
    "sxdm": ["energy_keV", "distance_m", "pixel_size_um", "delta_deg", "gamma_deg", "cen_row",
             "cen_col", "step_nm", "theta_deg", "raster", "sxdm_keys", "analysis_parameters"],
    "txm_xanes": ["energies_eV", "roles", "repeats", "txm_keys", "analysis_parameters"],
}
#: analysis parameters each analysis reads (start["analysis_parameters"][name][param])
PARAMETERS = {
    "frame_stats": ["saturation"],
    "operando_xrd": ["phases", "npt", "q_range_A_inv", "saturation_level", "instrument_fwhm_A_inv"],
    "sxdm": ["threshold_counts", "mask_fraction", "min_counts", "register", "d_ref_A", "background",
             "border_px", "detect_hot_pixels", "theta_tolerance_deg"],
    "txm_xanes": ["min_edge_jump", "bandwidth_eV", "pre_edge_eV", "post_edge_eV", "bins", "register",
                  "reference_energy_eV", "magnification", "dark_counts", "max_dark_fraction", "preview"],
}
ANALYSIS_OF = {"frame_series": "frame_stats", "operando_xrd": "operando_xrd", "sxdm": "sxdm",
               "txm_xanes": "txm_xanes"}

FILE_KINDS = ("missing", "directory", "empty", "garbage", "truncated", "no_dataset", "group",
              "ndim1", "ndim2", "ndim4", "int8", "uint16", "bool", "complex", "string", "compound",
              "huge", "few_frames", "nan_frame", "inf_frame", "huge_values", "negative", "zeros",
              "http_uri", "relative_uri")


# -- building the corrupted run ------------------------------------------------------------
def _frames_of(docs: Docs) -> tuple[np.ndarray, str]:
    res = next(d for n, d in docs if n == "stream_resource")
    path = res["uri"].removeprefix("file://localhost")
    with h5py.File(path, "r", locking=False) as f:
        return np.asarray(f[res["parameters"]["dataset"]][()]), res["parameters"]["dataset"]


def _write_h5(path: Path, dataset: str, data: np.ndarray | None = None, **kw) -> None:
    with h5py.File(path, "w") as f:
        if data is None:
            f.create_dataset(dataset, **kw)
        else:
            f.create_dataset(dataset, data=data, **kw)


def make_file(kind: str, docs: Docs, where: Path, index: int) -> tuple[str, list[str]]:
    """A detector file of the given corruption; returns (uri, hints)."""
    frames, dataset = _frames_of(docs)
    path = where / f"det_{kind}.h5"
    n = frames.shape[0]
    i = index % n
    if kind == "missing":
        return f"file://localhost{path}", [path.name]
    if kind == "directory":
        path.mkdir(exist_ok=True)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(index).bytes(4096))
    elif kind == "truncated":
        _write_h5(path, dataset, frames)
        size = path.stat().st_size
        with open(path, "r+b") as fh:
            fh.truncate(max(1, (size * (index % 9 + 1)) // 10))
    elif kind == "no_dataset":
        _write_h5(path, "/entry/other", frames)
    elif kind == "group":
        with h5py.File(path, "w") as f:
            f.create_group(dataset)
    elif kind == "ndim1":
        _write_h5(path, dataset, frames.reshape(n, -1)[:, 0])
    elif kind == "ndim2":
        _write_h5(path, dataset, frames.reshape(n, -1))
    elif kind == "ndim4":
        _write_h5(path, dataset, frames[:, None])
    elif kind in ("int8", "uint16", "bool"):
        _write_h5(path, dataset, frames.astype(kind))
    elif kind == "complex":
        _write_h5(path, dataset, frames.astype(np.complex128) * (1 + 1j))
    elif kind == "string":
        _write_h5(path, dataset, np.array([b"frame"] * n, dtype="S5"))
    elif kind == "compound":
        dt = np.dtype([("a", "<f4"), ("b", "<i2")])
        _write_h5(path, dataset, np.zeros(frames.shape, dtype=dt))
    elif kind == "huge":  # declared 50000² float64 frames (20 GB each), nothing stored
        _write_h5(path, dataset, shape=(n, 50_000, 50_000), dtype="<f8", chunks=(1, 64, 64))
    elif kind == "few_frames":
        _write_h5(path, dataset, frames[: i])
    else:
        data = frames.astype(np.float64)
        value = {"nan_frame": math.nan, "inf_frame": math.inf, "huge_values": 1e308,
                 "negative": -1e6, "zeros": 0.0}.get(kind)
        if value is None:  # uri kinds
            uri = {"http_uri": "http://127.0.0.1:9/detector.h5", "relative_uri": "det.h5"}[kind]
            return uri, [uri]
        data[i] = value
        _write_h5(path, dataset, data)
    return f"file://localhost{path}", [path.name, "frame", "detector"]


def _event_positions(docs: Docs, descriptor_uid: str | None = None) -> list[int]:
    return [k for k, (n, d) in enumerate(docs) if n == "event"]


def _set_path(obj: dict, path: list[str], value: Any) -> None:
    for p in path[:-1]:
        if not isinstance(obj.get(p), dict):
            obj[p] = {}
        obj = obj[p]
    obj[path[-1]] = value


def _del_path(obj: dict, path: list[str]) -> None:
    for p in path[:-1]:
        obj = obj.get(p)
        if not isinstance(obj, dict):
            return
    obj.pop(path[-1], None)


def apply_mutations(base: Docs, experiment: str, mutations: list[tuple], where: Path) -> tuple[Docs, list[str]]:
    """A corrupted copy of ``base`` and the hint words of its corruptions."""
    docs = copy.deepcopy(base)
    hints: list[str] = []
    if any(m[0] == "file" for m in mutations) and any(m[0] == "resource_set" for m in mutations):
        # a corrupted file under a corrupted resource: the file kind is what is tested
        mutations = [m for m in mutations if m[0] != "resource_set"]
    for m in mutations:
        kind, *p = m
        events = _event_positions(docs)
        if kind == "start_del":
            (path,) = p
            _del_path(docs[0][1], path.split("."))
            hints += path.split(".")
        elif kind == "start_set":
            path, value = p
            _set_path(docs[0][1], path.split("."), copy.deepcopy(value))
            hints += path.split(".")
        elif kind == "param_set":
            param, value = p
            name = ANALYSIS_OF[experiment]
            ap = docs[0][1].setdefault("analysis_parameters", {})
            if not isinstance(ap, dict):
                ap = docs[0][1]["analysis_parameters"] = {}
            if not isinstance(ap.get(name), dict):
                ap[name] = {}
            ap[name][param] = copy.deepcopy(value)
            hints += [param, "analysis_parameters"]
        elif kind == "descriptor_set":  # a descriptor field or a frame data key's field
            field, value = p
            desc = next(d for n, d in docs if n == "descriptor")
            if field in ("data_keys", "name"):
                desc[field] = copy.deepcopy(value)
            elif isinstance(desc.get("data_keys"), dict):
                fks = [k for k, v in desc["data_keys"].items()
                       if isinstance(v, dict) and v.get("source", "").startswith(("sim:", "SIM:"))
                       and v.get("dtype") == "array" or k.endswith("_image")]
                for fk in fks[:1]:
                    if isinstance(desc["data_keys"][fk], dict):
                        desc["data_keys"][fk][field] = copy.deepcopy(value)
            hints += [field, "descriptor"]
        elif kind == "event_data" and events:
            j, key_index, value = p
            ev = docs[events[j % len(events)]][1]
            if not isinstance(ev.get("data"), dict):
                continue
            keys = sorted(ev["data"])
            if keys:
                ev["data"][keys[key_index % len(keys)]] = copy.deepcopy(value)
        elif kind == "event_del_key" and events:
            j, key_index = p
            ev = docs[events[j % len(events)]][1]
            if not isinstance(ev.get("data"), dict):
                continue
            keys = sorted(ev["data"])
            if keys:
                del ev["data"][keys[key_index % len(keys)]]
        elif kind == "event_field" and events:  # seq_num, time, data, descriptor
            j, field, value = p
            ev = docs[events[j % len(events)]][1]
            if value == "<delete>":
                ev.pop(field, None)
            else:
                ev[field] = copy.deepcopy(value)
            hints += [field, "seq_num"]
        elif kind == "event_seq" and events:  # gap / duplicate / reorder
            j, k, how = p
            a, b = events[j % len(events)], events[k % len(events)]
            if how == "drop":
                del docs[a]
            elif how == "duplicate":
                docs.insert(b, (docs[a][0], copy.deepcopy(docs[a][1])))
            elif how == "swap":
                docs[a], docs[b] = docs[b], docs[a]
            elif how == "same_seq":
                docs[b][1]["seq_num"] = docs[a][1]["seq_num"]
            elif how == "to_end":
                docs.insert(len(docs) - 1, docs.pop(a))
        elif kind == "file":
            fkind, index = p
            where.mkdir(parents=True, exist_ok=True)
            uri, h = make_file(fkind, base, where, index)
            for n, d in docs:
                if n == "stream_resource":
                    d["uri"] = uri
            hints += h
        elif kind == "resource_set":
            field, value = p
            for n, d in docs:
                if n == "stream_resource":
                    if field == "dataset" and isinstance(d.get("parameters"), dict):
                        d["parameters"]["dataset"] = copy.deepcopy(value)
                    else:
                        d[field] = copy.deepcopy(value)
            hints += [field, "StreamResource", "stream_resource"]
        elif kind == "datum":
            j, how, value = p
            pos = [k for k, (n, _) in enumerate(docs) if n == "stream_datum"]
            if not pos:
                continue
            a = pos[j % len(pos)]
            d = docs[a][1]
            if how == "drop":
                del docs[a]
            elif how == "duplicate":
                docs.insert(a, ("stream_datum", copy.deepcopy(d)))
            elif how == "unknown_resource":
                d["stream_resource"] = "no-such-resource"
            elif how == "to_end":
                docs.insert(len(docs) - 1, docs.pop(a))
            else:  # seq_nums / indices: start, stop
                field, end = how.split(".")
                if isinstance(d.get(field), dict):
                    d[field][end] = copy.deepcopy(value)
            hints += ["StreamDatum", "stream_datum", "seq_num"]
        elif kind == "no_stop":
            if docs[-1][0] == "stop":
                docs.pop()
        elif kind == "stop_set":
            field, value = p
            if docs[-1][0] == "stop":
                docs[-1][1][field] = copy.deepcopy(value)
    return docs, hints


# -- checking ----------------------------------------------------------------------------
def _usable_seq(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | np.integer):
        return int(value) if -(2**63) <= value < 2**63 else None
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return None


def _check_rows(cb, analysis: str) -> None:
    columns = cb.all_columns()
    assert cb.sink.columns == columns
    seen = set()
    for row in cb.sink.rows:
        assert set(row) == set(columns), f"row columns {sorted(set(row) ^ set(columns))} differ"
        for col, kind in columns.items():
            v = row[col]
            if kind == "float64":
                assert isinstance(v, float), (col, v)
                assert not math.isinf(v), f"{col} = {v} written (seq_num {row['seq_num']})"
            elif kind == "int64":
                assert isinstance(v, int) and not isinstance(v, bool), (col, v)
                assert -(2**63) <= v < 2**63, (col, v)
            elif kind == "bool":
                assert isinstance(v, bool), (col, v)
            else:
                assert isinstance(v, str), (col, v)
        assert row["seq_num"] not in seen, f"two rows for seq_num {row['seq_num']}"
        seen.add(row["seq_num"])
        if row["flag"]:
            assert row["message"], f"flagged row {row['seq_num']} ({row['flag']}) without a message"
        else:
            for col in REQUIRED_FINITE.get(analysis, ()):
                assert math.isfinite(row[col]), f"unflagged row {row['seq_num']}: {col} = {row[col]}"
            for col in REQUIRED_INDEX.get(analysis, ()):
                assert row[col] >= 0, f"unflagged row {row['seq_num']}: {col} = {row[col]}"
    for name, arr in cb.sink.arrays.items():
        assert isinstance(arr, np.ndarray) and arr.dtype.kind in "biuf", (name, type(arr))
        if arr.dtype.kind == "f":
            assert not np.isinf(arr).any(), f"published array {name} holds inf"
    json.dumps(_json_safe(cb.sink.arrays_metadata), allow_nan=False)


def check_run(docs: Docs, hints: list[str]) -> dict[str, Any]:
    """Feed ``docs`` to the run's analyses and assert the fuzz properties; returns a report."""
    start = docs[0][1]
    report: dict[str, Any] = {"error": None}
    try:
        callbacks = make_callbacks(start, lambda name: MemorySink())
    except RunDocumentError as exc:
        _assert_clear(exc, "start", hints)
        report["error"] = str(exc)
        return report
    assert callbacks, "no analysis for the run"
    primary = set()
    abandoned = False
    for name, doc in docs:
        if name == "descriptor" and doc.get("name", "primary") == "primary":
            primary.add(doc.get("uid"))
        for cb in callbacks:
            try:
                cb(name, doc)
            except RunDocumentError as exc:
                assert name in ("start", "descriptor", "stream_resource"), (
                    f"RunDocumentError on a {name} document: {exc}")
                _assert_clear(exc, name, hints)
                report["error"] = str(exc)
                abandoned = True
        if abandoned:
            break
    for cb in callbacks:
        _check_rows(cb, cb.name)
    stopped = docs[-1][0] == "stop"
    if abandoned or not stopped:
        return report
    valid = {s for n, d in docs if n == "event" and isinstance(d.get("descriptor"), str)
             and d["descriptor"] in primary
             and (s := _usable_seq(d.get("seq_num"))) is not None}
    for cb in callbacks:
        assert cb.sink.status == "complete"
        got = {r["seq_num"] for r in cb.sink.rows}
        # events whose descriptor is bad may be left out; every row is a real event
        assert got <= valid or not valid, f"rows for seq_nums {sorted(got - valid)} that no event has"
        if isinstance(next((d for n, d in docs if n == "descriptor"), {}).get("data_keys"), dict):
            assert valid <= got, f"events {sorted(valid - got)} got no row"
        json.dumps(_json_safe(cb.sink.summary), allow_nan=False)
        report.setdefault("flags", {})[cb.name] = sorted({r["flag"] for r in cb.sink.rows})
    return report


def _assert_clear(exc: Exception, doc_name: str, hints: list[str]) -> None:
    msg = str(exc)
    assert "\n" not in msg.strip(), f"multi-line error: {msg!r}"
    assert any(h and str(h) in msg for h in hints), (
        f"error on the {doc_name} document does not name the problem ({hints}): {msg}")


def file_uri_path(uri: str) -> str:
    return os.fspath(uri.removeprefix("file://localhost"))
