"""Garbage data directories for ``strainstream results|replay|plot`` (in process, no server).

A real data directory is made once (tiled catalog opened in process, a ``frame_series`` run
written by bluesky's TiledWriter, its ``frame_stats`` results stored by the analysis with a
TiledSink); each case copies it and breaks one thing: the tiled config, the SQLite catalog,
``server.json``, the detector files, the uid given. Property (as for the analysis CLIs): exit
code 0 or 2, on 2 exactly one ``strainstream <cmd>: error: ...`` line, never a traceback; a
``plot --out`` PNG is absent or a complete PNG.

The broken ``tiled.yml`` cases and the ``derived``/empty uids were tracebacks until
``open_offline`` and ``_get_run`` learnt to name the problem (issue 8).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_fuzz_cli import assert_clean, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::RuntimeWarning")]



@pytest.fixture(scope="module")
def real_dir(tmp_path_factory):
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

    d = tmp_path_factory.mktemp("data") / "data"
    write_config(d, port=find_free_port(), api_key="k" * 32)
    root = open_offline(d)
    docs = []
    RE = RunEngine({})
    RE.subscribe(TiledWriter(root, batch_size=1))
    RE.subscribe(lambda n, doc: docs.append((n, copy.deepcopy(doc))))
    det = sim_frame_detector("det", detector_dir(d), frame_shape=(24, 20))
    (uid,) = RE(frame_series([det], num=3))
    callbacks = make_callbacks(docs[0][1], lambda name: TiledSink(root, uid, name))
    for name, doc in docs:
        for cb in callbacks:
            cb(name, doc)
    return d, uid


def _break(d: Path, kind: str) -> None:
    rng = np.random.default_rng(abs(hash(kind)) % 2**32)
    if kind == "yml_garbage":
        (d / "tiled.yml").write_bytes(rng.bytes(500))
    elif kind == "yml_not_mapping":
        (d / "tiled.yml").write_text("[1, 2, 3]\n")
    elif kind == "yml_wrong_schema":
        (d / "tiled.yml").write_text(json.dumps({"trees": [{"path": "/", "tree": "no.such:thing"}]}))
    elif kind == "yml_directory":
        (d / "tiled.yml").unlink()
        (d / "tiled.yml").mkdir()
    elif kind == "catalog_garbage":
        (d / "catalog.db").write_bytes(rng.bytes(4096))
    elif kind == "catalog_truncated":
        with open(d / "catalog.db", "r+b") as fh:
            fh.truncate(4096)
    elif kind == "catalog_missing":
        (d / "catalog.db").unlink()
    elif kind == "server_json_garbage":
        (d / "server.json").write_bytes(rng.bytes(100))
    elif kind == "server_json_dead_server":  # a live pid (ours) but nothing listens on the port
        from strainstream.supervisor import find_free_port

        (d / "server.json").write_text(json.dumps({"uri": f"http://127.0.0.1:{find_free_port()}/api/v1",
                                                   "pid": os.getpid(), "port": 1}))
    elif kind == "detector_files_deleted":
        for p in (d / "detectors").glob("*.h5"):
            p.unlink()
    elif kind == "detector_files_truncated":
        for p in (d / "detectors").glob("*.h5"):
            with open(p, "r+b") as fh:
                fh.truncate(800)
    elif kind == "data_dir_is_file":
        shutil.rmtree(d)
        d.write_text("not a directory")


#: each case opens the catalog in process (~10 s on a loaded CI machine): a few cases per
#: command; ``_break`` knows more kinds (catalog_missing, server_json_garbage, ...)
CASES = [
    *[("results", k) for k in ("catalog_garbage", "catalog_truncated", "server_json_dead_server",
                               "data_dir_is_file")],
    ("replay", "detector_files_truncated"), ("plot", "detector_files_deleted"),
    # a broken tiled config, one kind per command (each case costs a catalog opening)
    ("results", "yml_garbage"), ("replay", "yml_not_mapping"), ("plot", "yml_wrong_schema"),
    ("results", "yml_directory"),
]


@pytest.mark.parametrize(("command", "kind"), CASES)
def test_data_commands_on_broken_data_dirs(real_dir, tmp_path, kind, command):
    src, uid = real_dir
    d = tmp_path / "data"
    shutil.copytree(src, d)
    _break(d, kind)
    out = tmp_path / "fig.png"
    extra = ["--out", str(out)] if command == "plot" else ["--json"]
    code, stdout, err = run_cli([command, uid[:8], "--data-dir", str(d), *extra])
    assert_clean(code, err, f"strainstream {command}")
    if command == "plot" and out.exists():
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if code == 0 and command != "plot":
        doc = json.loads(stdout)
        assert doc["uid"] == uid


@pytest.mark.parametrize("uid", [
    "derived", "",
    pytest.param("a" * 10_000, id="10000_chars")])
def test_results_with_garbage_uids(real_dir, uid):
    src, _ = real_dir
    code, _, err = run_cli(["results", uid, "--data-dir", str(src), "--json"])
    assert_clean(code, err, "strainstream results")
    assert code == 2
