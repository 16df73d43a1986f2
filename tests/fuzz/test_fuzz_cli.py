"""Property-based fuzzing of the analysis CLIs (``strainstream xrd|sxdm|xanes``) with garbage files.

Each example writes a small valid input (simulated SXDM scan, TXM stack, XRD pattern, CeO2
frame), corrupts it (datasets deleted or replaced by groups/scalars, wrong ndim, int8/bool/
complex/string/record dtypes, NaN/inf/1e308/negative values, axes truncated, 50000² frames or
10⁹-long axes declared in the file but never stored, wrong or missing geometry attributes,
truncated/garbage/empty files, a directory where the file should be) and garbage options,
then runs ``strainstream.cli.main(argv)`` in process (a few runs also as a subprocess).

Properties (:func:`assert_clean`): exit code 0 or 2; on 2, exactly one stderr line
``strainstream <cmd>: error: ...`` (other lines only ``strainstream <cmd>: warning: ...``), never
a traceback; an ``--out`` file is either absent or complete (opens, holds every output
dataset), no temporary file is left next to it.

The ``@example`` cases are the bugs the fuzzing found (each failed before its fix).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from _fuzzfiles import (
    ATTR_VALUES,
    DATASET_KINDS,
    FILE_KINDS,
    corrupt_attr,
    corrupt_file,
    corrupt_spec,
    sxdm_spec,
    txm_spec,
    write_spec,
    xrd_pattern_text,
)
from _strategies import fuzz
from hypothesis import example, given
from hypothesis import strategies as st

from strainstream.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

SXDM_OUT = ("intensity", "mask", "d_spacing_A", "strain", "tilt_xy_deg", "tilt_xz_deg", "flags")
XANES_OUT = ("whiteline_eV", "mask", "flags", "edge_jump", "histogram_counts")


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``strainstream.cli.main(argv)`` in process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse --help / usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def assert_clean(code: int, err: str, prog: str) -> None:
    assert "Traceback" not in err, err
    assert code in (0, 2), f"exit code {code}; stderr: {err}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(f"{prog}: error: ")]
    others = [ln for ln in lines if not ln.startswith((f"{prog}: error: ", f"{prog}: warning: "))]
    assert not others, f"stray stderr lines: {others}"
    if code == 2:
        assert len(errors) == 1, f"expected one error line, got: {err!r}"
        assert len(errors[0]) > len(prog) + 12, errors[0]
    else:
        assert not errors, err


def assert_out_complete(out: Path, kind: str) -> None:
    """An output file left behind is complete; no temporary files next to it."""
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(out.name) and p != out]
    assert not leftovers, f"temporary files left: {leftovers}"
    if not out.exists():
        return
    if kind == "json":
        json.loads(out.read_text())
        return
    with h5py.File(out, "r") as f:
        for name in {"sxdm": SXDM_OUT, "xanes": XANES_OUT}[kind]:
            assert name in f, f"{out.name} lacks {name}"
            f[name][()]


# -- sxdm map ------------------------------------------------------------------------------
SXDM_ATTRS = ("energy_keV", "distance_m", "pixel_size_um", "delta_deg", "gamma_deg", "cen_row",
              "cen_col", "step_nm")
number_text = st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e308", "abc", "5", "0.5"])


@functools.cache
def sxdm_base():
    return sxdm_spec()


sxdm_corruption = st.one_of(
    st.tuples(st.just("dataset"), st.sampled_from(DATASET_KINDS), st.sampled_from(["frames", "theta_deg"]),
              st.integers(0, 100)),
    st.tuples(st.just("attr"), st.sampled_from(SXDM_ATTRS), st.sampled_from([*ATTR_VALUES, "<delete>"])),
    st.tuples(st.just("file"), st.sampled_from(FILE_KINDS), st.integers(0, 100)),
)
sxdm_options = st.lists(st.sampled_from([
    ("--background",), ("--threshold",), ("--d-ref",), ("--max-chunk-mb",), ("--refine", None),
    ("--no-register", None), ("--json", None)]), max_size=3, unique=True)


def _write_corrupted(path: Path, spec, corruptions) -> None:
    file_kinds = []
    for c in corruptions:
        if c[0] == "dataset":
            spec = corrupt_spec(spec, c[1], c[2], c[3])
        elif c[0] == "attr":
            spec = corrupt_attr(spec, c[1], c[2])
        else:
            file_kinds.append(c)
    write_spec(path, spec)
    for _, kind, arg in file_kinds[:1]:
        corrupt_file(path, kind, arg)


def _options(opts, values) -> list[str]:
    argv = []
    for opt, value in zip(opts, values, strict=False):
        argv += [opt[0]] if len(opt) == 2 else [opt[0], value]
    return argv


@fuzz(60)
@given(corruptions=st.lists(sxdm_corruption, min_size=1, max_size=3), opts=sxdm_options,
       values=st.lists(number_text, min_size=3, max_size=3))
@example(corruptions=[("dataset", "nan_all", "theta_deg", 0)], opts=[], values=[])
@example(corruptions=[("dataset", "huge_shape", "frames", 0)], opts=[], values=[])  # 20 GB/line read
@example(corruptions=[("dataset", "huge_axis0", "frames", 0)], opts=[], values=[])
@example(corruptions=[("dataset", "complex", "frames", 0)], opts=[], values=[])
@example(corruptions=[("dataset", "string", "frames", 0)], opts=[], values=[])
@example(corruptions=[("dataset", "compound", "frames", 0)], opts=[], values=[])
@example(corruptions=[("dataset", "group", "theta_deg", 0)], opts=[], values=[])
@example(corruptions=[("attr", "distance_m", "abc")], opts=[], values=[])
@example(corruptions=[("attr", "pixel_size_um", [1.0, 2.0, 3.0])], opts=[], values=[])
@example(corruptions=[("attr", "energy_keV", math.inf)], opts=[], values=[])
@example(corruptions=[("file", "directory", 0)], opts=[], values=[])
@example(corruptions=[("file", "truncated", 3)], opts=[], values=[])
@example(corruptions=[("dataset", "zeros", "frames", 0)], opts=[("--background",)], values=["nan"])
@example(corruptions=[("dataset", "zeros", "frames", 0)], opts=[("--threshold",)], values=["inf"])
@example(corruptions=[("dataset", "zeros", "frames", 0)], opts=[("--max-chunk-mb",)], values=["nan"])
@example(corruptions=[("dataset", "zeros", "frames", 0)], opts=[("--d-ref",)], values=["-1"])
def test_sxdm_map_on_garbage_files(corruptions, opts, values):
    with tempfile.TemporaryDirectory() as d:
        src, out = Path(d) / "scan.h5", Path(d) / "maps.h5"
        _write_corrupted(src, sxdm_base(), corruptions)
        code, _, err = run_cli(["sxdm", "map", str(src), "--out", str(out), *_options(opts, values)])
        assert_clean(code, err, "strainstream sxdm")
        assert_out_complete(out, "sxdm")


# -- xanes whiteline ---------------------------------------------------------------------------
@functools.cache
def txm_base():
    return txm_spec()


xanes_corruption = st.one_of(
    st.tuples(st.just("dataset"), st.sampled_from(DATASET_KINDS),
              st.sampled_from(["energies_eV", "stack", "flats", "darks", "magnification"]),
              st.integers(0, 100)),
    st.tuples(st.just("file"), st.sampled_from(FILE_KINDS), st.integers(0, 100)),
)
xanes_options = st.lists(st.sampled_from([
    ("--bins",), ("--bandwidth-eV",), ("--min-edge-jump",), ("--register",), ("--edge-energy", None),
    ("--json", None)]), max_size=3, unique=True)


@fuzz(60)
@given(corruptions=st.lists(xanes_corruption, min_size=1, max_size=3), opts=xanes_options,
       values=st.lists(st.sampled_from(["nan", "inf", "-1", "0", "1e308", "abc", "5", "yes", "no"]),
                       min_size=3, max_size=3))
@example(corruptions=[("dataset", "huge_shape", "stack", 0)], opts=[], values=[])  # 20 GB × n read
@example(corruptions=[("dataset", "huge_axis0", "energies_eV", 0)], opts=[], values=[])
@example(corruptions=[("dataset", "complex", "stack", 0)], opts=[], values=[])
@example(corruptions=[("dataset", "string", "energies_eV", 0)], opts=[], values=[])
@example(corruptions=[("dataset", "compound", "flats", 0)], opts=[], values=[])
@example(corruptions=[("dataset", "group", "stack", 0)], opts=[], values=[])
@example(corruptions=[("dataset", "flatten", "darks", 0)], opts=[], values=[])
@example(corruptions=[("dataset", "scalar", "magnification", 0)], opts=[], values=[])
@example(corruptions=[("dataset", "nan_all", "stack", 0)], opts=[], values=[])
@example(corruptions=[("dataset", "zeros", "flats", 0)], opts=[], values=[])
@example(corruptions=[("dataset", "zeros", "darks", 0)], opts=[("--bins",)], values=["abc"])
@example(corruptions=[("dataset", "zeros", "darks", 0)], opts=[("--bins",)], values=["0"])
@example(corruptions=[("dataset", "zeros", "darks", 0)], opts=[("--bandwidth-eV",)], values=["nan"])
def test_xanes_whiteline_on_garbage_files(corruptions, opts, values):
    with tempfile.TemporaryDirectory() as d:
        src, out = Path(d) / "stack.h5", Path(d) / "wl.h5"
        _write_corrupted(src, txm_base(), corruptions)
        code, _, err = run_cli(["xanes", "whiteline", str(src), "--out", str(out), *_options(opts, values)])
        assert_clean(code, err, "strainstream xanes")
        assert_out_complete(out, "xanes")


# -- xrd refine --------------------------------------------------------------------------------
@functools.cache
def pattern_text():
    return xrd_pattern_text()


line_garbage = st.sampled_from(["nan nan", "inf 1", "1 inf", "1e308 1e308", "abc def", "1", "1 2 3",
                                "-1 -1", "0 0", "\x00\x01", "1,2", "# comment", "", "1e-320 5"])
refine_options = st.lists(st.sampled_from([("--wavelength",), ("--q-min",), ("--q-max",),
                                           ("--instrument-fwhm",), ("--x",), ("--phases",),
                                           ("--json", None)]), max_size=3, unique=True)


@fuzz(40)
@given(edits=st.lists(st.tuples(st.integers(0, 1499), line_garbage), max_size=6),
       head=st.sampled_from([None, 0, 5, 20, 200]), blob=st.one_of(st.none(), st.binary(max_size=300)),
       opts=refine_options,
       values=st.lists(st.sampled_from(["nan", "inf", "-1", "0", "1e308", "0.1665", "two_theta_deg",
                                        "q", "2", "auto", "abc"]), min_size=3, max_size=3))
@example(edits=[], head=None, blob=None, opts=[("--wavelength",)], values=["nan"])
@example(edits=[], head=None, blob=None, opts=[("--wavelength",)], values=["inf"])
@example(edits=[], head=None, blob=None, opts=[("--q-min",), ("--q-max",)], values=["5", "1"])
@example(edits=[], head=None, blob=None, opts=[("--instrument-fwhm",)], values=["nan"])
@example(edits=[], head=None, blob=None, opts=[("--x",)], values=["two_theta_deg"])
@example(edits=[(k, "nan nan") for k in range(0, 1500, 3)], head=None, blob=None, opts=[], values=[])
@example(edits=[(7, "1e308 1e308")], head=None, blob=None, opts=[], values=[])
@example(edits=[], head=None, blob=b"\xff\xfe\x00garbage", opts=[], values=[])
@example(edits=[], head=200, blob=None, opts=[], values=[])  # one reflection: numpy ValueError
def test_xrd_refine_on_garbage_patterns(edits, head, blob, opts, values):
    lines = pattern_text().splitlines()
    for k, text in edits:
        lines[k % len(lines)] = text
    if head is not None:
        lines = lines[:head]
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "pattern.xy"
        if blob is not None:
            src.write_bytes(blob)
        else:
            src.write_text("\n".join(lines) + "\n", encoding="utf-8")
        code, out, err = run_cli(["xrd", "refine", str(src), *_options(opts, values)])
        assert_clean(code, err, "strainstream xrd")
        if code == 0 and "--json" in _options(opts, values):
            res = json.loads(out)
            assert all(math.isfinite(p["c_A"]) for p in res["phases"])


# -- xrd calibrate ------------------------------------------------------------------------------
@functools.cache
def ceo2():
    from strainstream.sim.xrd_frames import DetectorGeometry, XRDFrameSimulator

    geo = DetectorGeometry.binned(16)
    frame = XRDFrameSimulator(geo).ceo2_frame(seed=1).image
    approx = dict(geo.to_dict())
    approx["distance_m"] *= 1.01
    return {"datasets": {"entry/data/data": frame[None].astype(np.float32)}, "attrs": {}}, approx


APPROX_KEYS = ("distance_m", "poni1_m", "poni2_m", "rot1", "rot2", "rot3", "wavelength_A",
               "pixel_size_um", "shape")
calib_corruption = st.one_of(
    st.tuples(st.just("dataset"), st.sampled_from(DATASET_KINDS), st.just("entry/data/data"),
              st.integers(0, 100)),
    st.tuples(st.just("file"), st.sampled_from(FILE_KINDS), st.integers(0, 100)),
    st.tuples(st.just("approx"), st.sampled_from(APPROX_KEYS),
              st.sampled_from([*ATTR_VALUES, None, "<delete>", [0, 0], [10**9, 10**9], {}])),
)


@fuzz(25)
@given(corruptions=st.lists(calib_corruption, min_size=1, max_size=2),
       index=st.sampled_from([None, "0", "-1", "5", "-100"]), npy=st.booleans())
@example(corruptions=[("dataset", "huge_shape", "entry/data/data", 0)], index=None, npy=False)
@example(corruptions=[("dataset", "huge_shape", "entry/data/data", 0)], index=None, npy=True)
@example(corruptions=[("dataset", "complex", "entry/data/data", 0)], index=None, npy=False)
@example(corruptions=[("dataset", "string", "entry/data/data", 0)], index=None, npy=False)
@example(corruptions=[("dataset", "compound", "entry/data/data", 0)], index=None, npy=True)
@example(corruptions=[("dataset", "nan_all", "entry/data/data", 0)], index=None, npy=False)
@example(corruptions=[("approx", "shape", [10**9, 10**9])], index=None, npy=False)
@example(corruptions=[("approx", "distance_m", math.nan)], index=None, npy=False)
@example(corruptions=[("approx", "pixel_size_um", {})], index=None, npy=False)
@example(corruptions=[("file", "garbage", 1)], index=None, npy=True)
@example(corruptions=[("file", "empty", 1)], index=None, npy=True)  # EOFError from np.load
def test_xrd_calibrate_on_garbage_frames(corruptions, index, npy):
    spec, approx = ceo2()
    approx = dict(approx)
    for c in corruptions:
        if c[0] == "approx":
            if c[2] == "<delete>":
                approx.pop(c[1], None)
            else:
                approx[c[1]] = c[2]
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / ("frame.npy" if npy else "frame.h5")
        geo, out = Path(d) / "approx.json", Path(d) / "geometry.json"
        geo.write_text(json.dumps(approx))  # NaN/inf as the non-standard tokens Python writes
        data_corr = [c for c in corruptions if c[0] != "approx"]
        if npy:
            spec2 = spec
            for c in data_corr:
                if c[0] == "dataset":
                    spec2 = corrupt_spec(spec2, c[1], c[2], c[3])
            arr = spec2["datasets"].get("entry/data/data")
            if isinstance(arr, tuple):  # a huge declared .npy: header only, data never written
                with open(src, "wb") as fh:
                    np.lib.format.write_array_header_1_0(
                        fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(arr[2])),
                             "fortran_order": False, "shape": tuple(arr[1][-2:])})
            elif isinstance(arr, np.ndarray):
                np.save(src, arr)
            else:
                src.write_bytes(b"")
            for c in [c for c in data_corr if c[0] == "file"][:1]:
                corrupt_file(src, c[1], c[2])
        else:
            _write_corrupted(src, spec, data_corr)
        argv = ["xrd", "calibrate", str(src), "--approx", str(geo), "--out", str(out), "--no-width"]
        if index is not None:
            argv += ["--index", index]
        code, _, err = run_cli(argv)
        assert_clean(code, err, "strainstream xrd")
        if code == 2:
            assert not out.exists(), "geometry written although calibrate failed"
        assert_out_complete(out, "json")


# -- a few subprocess runs: what a user sees ------------------------------------------------------
@pytest.mark.parametrize("cmd", [
    ["sxdm", "map", "{garbage}"], ["xanes", "whiteline", "{garbage}"],
    ["xrd", "calibrate", "{garbage}", "--approx", "{garbage}"], ["xrd", "refine", "{garbage}"],
    ["sxdm", "map", "{dir}"], ["xanes", "whiteline", "{dir}"], ["xrd", "refine", "{dir}"],
])
def test_cli_subprocess_one_line_error(tmp_path, cmd):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(np.random.default_rng(0).bytes(1000))
    argv = [a.format(garbage=garbage, dir=tmp_path) for a in cmd]
    env = dict(os.environ, PYTHONWARNINGS="default")
    res = subprocess.run([sys.executable, "-m", "strainstream.cli", *argv], capture_output=True,
                         text=True, timeout=240, env=env)
    assert res.returncode == 2, res.stderr
    prog = f"strainstream {cmd[0]}"
    assert_clean(res.returncode, res.stderr, prog)
