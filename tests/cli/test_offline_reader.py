"""The direct reader of an embedded data directory (issue #16 item 5: ``results``/``runs``/``plot``
of a finished run without tiled's server stack) gives exactly what tiled gives.

- a synthetic catalog written through tiled (tables with nulls, strings, booleans, several
  appends and datasets sharing one SQL table; zarr arrays with chunks, NaN, fill, bool, uint8)
  reads the same through :mod:`strainstream.offline_reader` as through tiled;
- ``strainstream runs | results | plot`` print (and draw) the same with the direct reader as
  with today's path (the reader disabled: tiled opened in-process) on demo data directories;
- what the reader does not know falls back, a DuckDB file locked by a writer is never waited
  on or held, and ``results`` imports no tiled, pandas, bluesky or matplotlib;
- with a server running on the data directory the commands read it over HTTP without
  ``tiled.client`` (:func:`strainstream.offline_reader.open_server`) and print (and draw)
  the same as through ``tiled.client``; its Arrow decoder reads what pyarrow reads.
"""

from __future__ import annotations

import contextlib
import filecmp
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import strainstream.offline_reader as offline_reader
from strainstream.results_doc import _json_safe

CLI = [sys.executable, "-m", "strainstream.cli"]

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]

_MAKE_CATALOG = textwrap.dedent('''
    import sys

    import dask.array as da
    import numpy as np
    import pyarrow as pa

    from strainstream.client import open_offline
    from strainstream.tiledconfig import write_config

    d = sys.argv[1]
    write_config(d, port=1, api_key="unused")
    root = open_offline(d)
    run = root.create_container(key="run-b", metadata={"start": {"uid": "run-b", "series": "s1", "n": 2}})
    root.create_container(key="run-a", metadata={"start": {"uid": "run-a", "series": "s2"}})
    schema = pa.schema([("seq_num", pa.int64()), ("Voltage_V", pa.float64()), ("n", pa.int64()),
                        ("flag", pa.string()), ("ok", pa.bool_()), ("maybe", pa.bool_())])
    rows1 = [{"seq_num": 2, "Voltage_V": 3.5, "n": 1, "flag": "", "ok": True, "maybe": None},
             {"seq_num": 1, "Voltage_V": float("nan"), "n": None, "flag": None, "ok": False, "maybe": True}]
    rows2 = [{"seq_num": 3, "Voltage_V": None, "n": 7, "flag": "x", "ok": True, "maybe": False},
             {"seq_num": 2, "Voltage_V": 9.0, "n": 8, "flag": "dup", "ok": False, "maybe": None}]
    t = run.create_appendable_table(schema=schema, key="t", metadata={"status": "complete", "version": "2"})
    t.append_partition(0, pa.Table.from_pylist(rows1, schema=schema))
    t.append_partition(0, pa.Table.from_pylist(rows2, schema=schema))
    other = run.create_appendable_table(schema=schema, key="other")  # the same SQL table, another dataset
    other.append_partition(0, pa.Table.from_pylist(rows2, schema=schema))
    ints = pa.schema([("seq_num", pa.int64()), ("count", pa.int64()), ("x", pa.float64())])
    t3 = run.create_appendable_table(schema=ints, key="ints")
    t3.append_partition(0, pa.Table.from_pylist([{"seq_num": 5, "count": 4, "x": 1e-300}], schema=ints))
    run.create_appendable_table(schema=schema, key="empty")
    box = run.create_container(key="box", metadata={"a": 1, "nested": {"b": [1, 2.5]}})
    x = np.arange(35.0).reshape(5, 7)
    x[1, 2] = np.nan
    box.write_array(x, key="plain")
    box.write_array(da.from_array(x, chunks=(2, 3)), key="chunked")
    box.write_array(np.array([[True, False, True]]), key="flags")
    box.write_array(np.arange(6, dtype=np.uint8), key="u8")
    box.write_array(np.zeros((3, 2)), key="zeros")
    box.write_array(np.arange(4, dtype=np.int64), key="i64")
''')


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    d = tmp_path_factory.mktemp("offline") / "data"
    r = subprocess.run([sys.executable, "-c", _MAKE_CATALOG, str(d)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return d


def _rows_json(frame) -> str:
    """The rows as the results document has them (keys sorted: tiled reads a subset of the
    columns in set order)."""
    rows = frame.to_dict(orient="records")
    rows = [{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in r.items()} for r in rows]
    return json.dumps(_json_safe(rows), allow_nan=False, sort_keys=True)


_TILED_SIDE = textwrap.dedent('''
    import json, sys

    import numpy as np

    from strainstream.client import open_offline
    from test_offline_reader import WANTED, _rows_json

    tiled = open_offline(sys.argv[1])
    run = tiled["run-b"]
    tables = {}
    for key, cols in WANTED.items():
        try:
            rows = _rows_json(run[key].read(columns=cols))
        except Exception:  # tiled: an appendable table without a partition has no rows
            rows = "[]"
        some = _rows_json(run[key].read(columns=["seq_num", "n"])) if key in ("t", "other") else None
        tables[key] = [list(run[key].columns), rows, some]
    np.savez(sys.argv[2], **{k: run["box"][k].read() for k in run["box"]})
    print(json.dumps({"root": list(tiled), "md": {k: dict(tiled[k].metadata) for k in tiled},
                      "run": list(run), "tables": tables, "box_md": dict(run["box"].metadata),
                      "arrays": list(run["box"])}))
''')

#: the columns each table of the synthetic catalog is compared on (all but the boolean with
#: missing values, which goes through tiled: see the test)
_NO_MAYBE = ["seq_num", "Voltage_V", "n", "flag", "ok"]
WANTED = {"t": _NO_MAYBE, "other": _NO_MAYBE, "empty": _NO_MAYBE, "ints": None}



def _plots_agree(uid: str, data_dir: str, prefix, monkeypatch) -> None:
    """``plot`` through the light reader and through tiled writes the same PNGs (byte for byte)."""
    pngs = {}
    for direct in (True, False):
        out_dir = prefix.parent / f"{prefix.name}_{direct}"
        out_dir.mkdir()
        rc, out, err = _main(["plot", uid, "--data-dir", data_dir, "--out", f"{out_dir}/"], direct, monkeypatch)
        assert rc == 0, err
        pngs[direct] = out.split()
    assert [p.split("/")[-1] for p in pngs[True]] == [p.split("/")[-1] for p in pngs[False]]
    for a, b in zip(pngs[True], pngs[False], strict=True):
        assert filecmp.cmp(a, b, shallow=False), (a, b)

def test_the_direct_reader_reads_what_tiled_reads(synthetic, tmp_path):
    # tiled in another process: in this one it would hold the DuckDB file for the other tests
    r = subprocess.run([sys.executable, "-c", _TILED_SIDE, str(synthetic), str(tmp_path / "arrays.npz")],
                       capture_output=True, text=True, timeout=300, cwd=str(Path(__file__).parent))
    assert r.returncode == 0, r.stderr
    tiled = json.loads(r.stdout.strip().splitlines()[-1])
    ref_arrays = np.load(tmp_path / "arrays.npz")
    with offline_reader.open_catalog(synthetic) as root, root.reading():
        # booleans with a missing value come through tiled as strings: the reader leaves them to tiled
        with pytest.raises(offline_reader.Unsupported, match="'maybe'"):
            root["run-b"]["t"].read()
        assert isinstance(root.failed, offline_reader.Unsupported)
    with offline_reader.open_catalog(synthetic) as root, root.reading():
        run = root["run-b"]
        assert list(root) == tiled["root"] == ["run-b", "run-a"]  # the catalog's order, not sorted
        assert {k: dict(root[k].metadata) for k in root} == tiled["md"]
        assert list(run) == tiled["run"]
        for key, cols in WANTED.items():
            columns, rows, some = tiled["tables"][key]
            assert list(run[key].columns) == columns, key
            assert _rows_json(run[key].read(columns=cols)) == rows, key
            if some is not None:
                assert _rows_json(run[key].read(columns=["seq_num", "n"])) == some, key
        assert '"n": 7.0' in tiled["tables"]["t"][1]  # integers with a missing value: floats
        assert '"count": 4,' in tiled["tables"]["ints"][1]  # integers stay integers without
        assert dict(run["box"].metadata) == tiled["box_md"]
        assert list(run["box"]) == tiled["arrays"]
        for key in run["box"]:
            arr, ref = run["box"][key].read(), ref_arrays[key]
            assert arr.dtype == ref.dtype and arr.shape == ref.shape, key
            assert np.array_equal(arr, ref, equal_nan=True), key
        assert [k for k, _ in root.search(_eq("start.series", "s1")).items()] == ["run-b"]
        assert root.failed is None


def test_the_server_reader_reads_what_the_direct_reader_reads(synthetic):
    """The same catalog read over HTTP (:func:`offline_reader.open_server`) and from its files
    (which the test above compares with tiled): tables with nulls, NaN, strings, several
    appends and datasets; zarr arrays; metadata; the catalog's order; search."""
    from strainstream.server import TiledServer

    def snapshot(root):
        run = root["run-b"]
        tables = {key: [list(run[key].columns), _rows_json(run[key].read(columns=cols))]
                  for key, cols in WANTED.items() if key != "empty"}
        some = _rows_json(run["t"].read(columns=["seq_num", "n"]))
        doc = {"root": list(root), "md": {k: dict(root[k].metadata) for k in root}, "run": list(run),
               "tables": tables, "some": some, "box_md": dict(run["box"].metadata), "box": list(run["box"]),
               "search": [k for k, _ in root.search(_eq("start.series", "s1")).items()],
               "has": ["run-a" in root, "nothing" in root, "t" in run]}
        return doc, {k: run["box"][k].read() for k in run["box"]}

    with offline_reader.open_catalog(synthetic) as root, root.reading():
        ref, ref_arrays = snapshot(root)
        assert root.failed is None
    with TiledServer(synthetic) as server:
        with offline_reader.open_server(server.uri, server.api_key) as root:
            got, arrays = snapshot(root)
            assert root.failed is None
            assert got == ref
            assert list(arrays) == list(ref_arrays)
            for key, ref_array in ref_arrays.items():
                assert arrays[key].dtype == ref_array.dtype and arrays[key].shape == ref_array.shape, key
                assert np.array_equal(arrays[key], ref_array, equal_nan=True), key
            with pytest.raises(KeyError):
                root["nothing"]
            # an appendable table without rows: no rows, its columns (as tiled.client reads it over HTTP)
            empty = root["run-b"]["empty"].read()
            assert len(empty) == 0 and empty.to_dict() == [] and empty.columns == _NO_MAYBE + ["maybe"]
            assert root.failed is None
        with pytest.raises(offline_reader.Unsupported):  # a refused key: tiled.client words it
            offline_reader.open_server(server.uri, "0" * 48)
        with pytest.raises(offline_reader.Unsupported):
            offline_reader.open_server(server.uri, None)


def _eq(key, value):
    from tiled.queries import Key

    return Key(key) == value


def test_the_results_reader_is_the_sinks_reader():
    """``results_doc`` is the sinks' reader without the callbacks' imports: one copy."""
    import strainstream.callbacks.sinks as sinks
    import strainstream.results_doc as results_doc

    for name in ("DERIVED", "ARRAYS_SUFFIX", "read_results", "results_document"):
        assert getattr(sinks, name) is getattr(results_doc, name), name


def test_the_reader_knows_tileds_catalog_revision():
    from tiled.catalog.core import REQUIRED_REVISION

    assert REQUIRED_REVISION in offline_reader.KNOWN_CATALOG_REVISIONS


def test_unknown_layouts_are_refused(tmp_path, synthetic):
    with pytest.raises(offline_reader.Unsupported):
        offline_reader.open_catalog(tmp_path)  # no tiled.yml
    (tmp_path / "tiled.yml").write_text("trees: [{path: /, tree: catalog}]\n")  # YAML, not JSON
    with pytest.raises(offline_reader.Unsupported):
        offline_reader.open_catalog(tmp_path)
    config = json.loads((synthetic / "tiled.yml").read_text())
    config["trees"][0]["args"]["uri"] = "postgresql+asyncpg://u@h/db"
    (tmp_path / "tiled.yml").write_text(json.dumps(config))
    with pytest.raises(offline_reader.Unsupported):
        offline_reader.open_catalog(tmp_path)


def test_a_locked_duckdb_file_falls_back_and_is_never_held(synthetic):
    tables = synthetic / "tables.duckdb"
    hold = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time, duckdb
        con = duckdb.connect({str(tables)!r})  # a writer, as a running server holds it
        print("locked", flush=True)
        sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert hold.stdout.readline().strip() == "locked"
        with offline_reader.open_catalog(synthetic) as root:
            assert list(root) == ["run-b", "run-a"]  # the catalog itself reads
            with pytest.raises(offline_reader.Unsupported, match="read-only"):
                root["run-b"]["t"].read()
            assert isinstance(root.failed, offline_reader.Unsupported)
    finally:
        hold.stdin.close()
        hold.wait(timeout=30)
    # after a read, outside reading(), the file is closed: a writer can open it at once
    with offline_reader.open_catalog(synthetic) as root:
        assert len(root["run-b"]["ints"].read()) == 1
        r = subprocess.run([sys.executable, "-c", f"import duckdb; duckdb.connect({str(tables)!r}).close()"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr


# -- the commands: direct reader vs today's path on demo data directories --------------------

def _cli(*args, timeout=120):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo_dirs(tmp_path_factory, frame_series_demo):
    d = tmp_path_factory.mktemp("sxdm") / "data"
    r = _cli("demo", "--experiment", "sxdm", "--data-dir", str(d), "--raster", "4", "--angles", "3", "--json",
             timeout=400)
    assert r.returncode == 0, r.stderr
    return [frame_series_demo, (d, json.loads(r.stdout))]


def _main(argv, direct: bool, monkeypatch) -> tuple[int, str, str]:
    """``strainstream ARGV`` in this process, with the direct reader or with it disabled."""
    from strainstream.cli import main

    with monkeypatch.context() as m:
        if not direct:
            def refuse(*args, **kwargs):
                raise offline_reader.Unsupported("disabled by the test")

            m.setattr(offline_reader, "open_catalog", refuse)
            m.setattr(offline_reader, "open_server", refuse)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_commands_print_the_same_as_through_tiled(demo_dirs, monkeypatch, tmp_path):
    for d, summary in demo_dirs:
        d = str(d)
        for argv in (["runs", "--data-dir", d, "--json"], ["runs", "--data-dir", d],
                     ["runs", "--data-dir", d, "--experiment", "sxdm", "--limit", "1", "--json"]):
            assert _main(argv, True, monkeypatch) == _main(argv, False, monkeypatch), argv
        uid = summary["uid"]
        for argv in (["results", uid, "--data-dir", d, "--json"], ["results", uid[:8], "--data-dir", d],
                     ["results", "ffffffffff", "--data-dir", d], ["results", uid[:4], "--data-dir", d]):
            assert _main(argv, True, monkeypatch) == _main(argv, False, monkeypatch), argv
        rc, out, _ = _main(["results", uid, "--data-dir", d, "--json"], True, monkeypatch)
        doc = json.loads(out)
        assert rc == 0 and doc["uid"] == uid and doc["analyses"]
        if summary["experiment"] == "sxdm":
            assert doc["analyses"]["sxdm"]["arrays"]  # maps read from zarr
        _plots_agree(uid, d, tmp_path / uid[:8], monkeypatch)


#: what ``results`` and ``runs`` of a finished run must not import (tiled's client or server
#: stack, the data libraries it pulls in, the control layer, the figures, the other
#: sub-commands' modules)
_HEAVY = ("tiled", "pandas", "pyarrow", "httpx", "bluesky", "bluesky_tiled_plugins", "ophyd", "matplotlib",
          "event_model", "dask", "zarr", "xarray", "strainstream.deploy", "strainstream.cli.beamline",
          "strainstream.callbacks")


def _assert_light(argv) -> None:
    code = textwrap.dedent(f"""
        import sys
        from strainstream.cli import main
        rc = main({argv!r})
        heavy = {_HEAVY!r}
        print(sorted(h for h in heavy if h in sys.modules), file=sys.stderr)
        sys.exit(rc)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "[]", (argv, r.stderr)


def test_results_and_runs_import_no_server_stack(demo_dirs):
    d, summary = demo_dirs[0]
    for argv in (["results", summary["uid"], "--data-dir", str(d), "--json"], ["runs", "--data-dir", str(d)]):
        _assert_light(argv)


def test_through_a_running_server(demo_dirs, monkeypatch, tmp_path):
    """With a server on the data directory: the same output over HTTP as through tiled.client,
    every node read by the light reader (no fall-back), and no tiled/pandas/pyarrow imported."""
    from strainstream.client import running_server
    from strainstream.server import TiledServer

    opened = []
    real_open = offline_reader.open_server

    def spy(*args, **kwargs):
        root = real_open(*args, **kwargs)
        opened.append(root)
        return root

    for d, summary in demo_dirs:
        uid = summary["uid"]
        with TiledServer(d):
            assert running_server(d) is not None
            d = str(d)
            argvs = [["runs", "--data-dir", d, "--json"], ["runs", "--data-dir", d],
                     ["results", uid, "--data-dir", d, "--json"], ["results", uid[:8], "--data-dir", d],
                     ["results", "ffffffffff", "--data-dir", d], ["results", uid[:4], "--data-dir", d]]
            for argv in argvs:
                opened.clear()
                with monkeypatch.context() as m:
                    m.setattr(offline_reader, "open_server", spy)
                    direct = _main(argv, True, monkeypatch)
                assert opened and all(root.failed is None for root in opened), (argv, [r.failed for r in opened])
                assert direct == _main(argv, False, monkeypatch), argv
            rc, out, _ = _main(["results", uid, "--data-dir", d, "--json"], True, monkeypatch)
            assert rc == 0 and json.loads(out)["analyses"]
            if summary["experiment"] == "sxdm":
                assert json.loads(out)["analyses"]["sxdm"]["arrays"]  # maps read as bytes over HTTP
            _plots_agree(uid, d, tmp_path / f"server_{uid[:8]}", monkeypatch)
            if summary["experiment"] != "sxdm":
                for argv in (["results", uid, "--data-dir", d, "--json"], ["runs", "--data-dir", d]):
                    _assert_light(argv)


def test_the_plot_arrays_reader_is_the_sinks_reader(demo_dirs):
    """``plot`` reads arrays through results_doc (no event_model): the same as the sinks' reader."""
    from strainstream.callbacks.sinks import read_arrays
    from strainstream.results_doc import read_arrays as light

    d, summary = demo_dirs[1]
    with offline_reader.open_catalog(d) as root, root.reading():
        arrays, md = light(root, summary["uid"], "sxdm")
        ref_arrays, ref_md = read_arrays(root, summary["uid"], "sxdm")
        assert arrays and md == ref_md and list(arrays) == list(ref_arrays)
        for k in arrays:
            assert np.array_equal(arrays[k], ref_arrays[k], equal_nan=True), k
        assert light(root, summary["uid"], "nothing") == read_arrays(root, summary["uid"], "nothing") == ({}, {})


def test_arrow_files_read_as_pyarrow_reads_them():
    """The Arrow IPC decoder of the HTTP reader against pyarrow: every integer width, float32/64
    (NaN, inf, -0.0), (large) strings, booleans, nulls, several record batches, empty tables."""
    import math
    import random

    import pyarrow as pa

    rng = random.Random(16)

    def table(n, nulls):
        def value(v):
            return None if nulls and rng.random() < 0.3 else v

        cols = {}
        for t in (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()):
            lo, hi = ((0, 2 ** t.bit_width - 1) if pa.types.is_unsigned_integer(t)
                      else (-2 ** (t.bit_width - 1), 2 ** (t.bit_width - 1) - 1))
            cols[str(t)] = pa.array([value(rng.choice([lo, hi, 0, rng.randint(lo, hi)])) for _ in range(n)], type=t)
        cols["f32"] = pa.array([value(rng.random() * 1e3) for _ in range(n)], type=pa.float32())
        cols["f64"] = pa.array([value(rng.choice([rng.random(), math.nan, math.inf, -0.0, 1e-300]))
                                for _ in range(n)], type=pa.float64())
        cols["s"] = pa.array([value(rng.choice(["", "é", "abc", "x" * 50])) for _ in range(n)], type=pa.string())
        cols["ls"] = pa.array([value(rng.choice(["", "Ω", "abc"])) for _ in range(n)], type=pa.large_string())
        cols["b"] = pa.array([value(rng.random() < 0.5) for _ in range(n)], type=pa.bool_())
        return pa.table(cols)

    def same(a, b):
        if isinstance(a, float) and isinstance(b, float):
            return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
        return type(a) is type(b) and a == b

    for n in (0, 1, 8, 9, 53):
        for nulls in (False, True):
            for batches in (1, 3):
                sink = io.BytesIO()
                parts = [table(n, nulls) for _ in range(batches)]
                with pa.ipc.new_file(sink, parts[0].schema) as writer:
                    for part in parts:
                        writer.write_table(part)
                ref = pa.ipc.open_file(sink.getvalue()).read_all()
                got = offline_reader._read_arrow_file(sink.getvalue())
                assert list(got) == ref.column_names
                for name in ref.column_names:
                    kind, values, null_count = got[name]
                    assert null_count == ref.column(name).null_count, name
                    expected = ref.column(name).to_pylist()
                    assert len(values) == len(expected) and all(map(same, values, expected)), (name, n, nulls)
    # what it does not decode is Unsupported (the reader then goes through tiled.client)
    for unknown in (pa.table({"t": pa.array([1], type=pa.timestamp("s"))}),
                    pa.table({"d": pa.array(["a", "b"]).dictionary_encode()}),
                    pa.table({"l": pa.array([[1, 2]])})):
        sink = io.BytesIO()
        with pa.ipc.new_file(sink, unknown.schema) as writer:
            writer.write_table(unknown)
        with pytest.raises(offline_reader.Unsupported):
            offline_reader._read_arrow_file(sink.getvalue())
    sink = io.BytesIO()
    with pa.ipc.new_file(sink, parts[0].schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(parts[0])
    with pytest.raises(offline_reader.Unsupported):
        offline_reader._read_arrow_file(sink.getvalue())
    with pytest.raises(offline_reader.Unsupported):
        offline_reader._read_arrow_file(b"not arrow")
