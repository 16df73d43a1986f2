"""Access control on a real tiled server: writer key, read-only viewer keys, anonymous refusals.

Every refusal is checked by its HTTP status; every refused operation is also done with the
writer key (it must succeed), so a test cannot pass because the operation is broken.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest

from strainstream.auth import READ_ONLY_SCOPES
from strainstream.callbacks.sinks import DERIVED, read_results
from strainstream.client import connect, open_offline
from strainstream.datadir import detector_dir
from strainstream.demo import wait_for_results
from strainstream.devices.detectors import sim_frame_detector
from strainstream.errors import ServerError
from strainstream.keys import KeyAdmin
from strainstream.plans.frames import frame_series
from strainstream.server import TiledServer
from strainstream.session import make_session

pytestmark = pytest.mark.system

CLI = [sys.executable, "-m", "strainstream.cli"]
NEW_CONTAINER = {"data": {"type": "node", "attributes": {
    "structure_family": "container", "metadata": {}, "specs": [], "data_sources": []}}}


def _status(fn) -> int:
    """Run a tiled client call that must fail; return the HTTP status it failed with."""
    with pytest.raises(httpx.HTTPStatusError) as info:
        fn()
    return info.value.response.status_code


def _header(key: str) -> dict[str, str]:
    return {"Authorization": f"Apikey {key}"}


def _cli(*args, env=None, timeout=120):
    base = {k: v for k, v in os.environ.items() if k not in ("STRAINSTREAM_API_KEY", "STRAINSTREAM_ADMIN_KEY")}
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout,
                          env=dict(base, **(env or {})))


def _mode(path) -> int:
    return stat.S_IMODE(Path(path).stat().st_mode)


def _assert_no_key_in_logs(data_dir: Path, keys: list[str]) -> None:
    """No key (nor its first half) in any log: tiled's, the worker's."""
    logs = [p for p in (data_dir / "logs").rglob("*") if p.is_file()]
    assert any(p.name == "tiled.log" for p in logs)
    for path in logs:
        text = path.read_text(errors="replace")
        for key in keys:
            assert key[: len(key) // 2] not in text, f"a key is in {path.name}"


def _rows(*n: int) -> pa.Table:
    return pa.table({"n": pa.array(n, pa.int64())})


def _wait(pred, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture
def analysed_run(tiled_server, worker_factory):
    """A 4-frame run written with the writer key and analysed by a worker: (uid, results)."""
    worker_factory()
    session = make_session(tiled_server.uri, tiled_server.api_key, progress=False)
    det = sim_frame_detector("det", detector_dir(tiled_server.data_dir), frame_shape=(32, 24))
    (uid,) = session.RE(frame_series([det], num=4, delay_s=0.02))
    results = wait_for_results(tiled_server.client(), uid, 4, timeout_s=120)
    return uid, results


@pytest.mark.slow
def test_read_only_key_reads_runs_and_results_but_every_write_is_refused(tiled_server, analysed_run):
    uid, results = analysed_run
    admin = KeyAdmin(tiled_server.uri, tiled_server.admin_key)
    made = admin.create(read_only=True, note="beamline screen")
    assert sorted(made["scopes"]) == sorted(READ_ONLY_SCOPES)
    ro_key = made["secret"]
    writer = tiled_server.client()
    viewer = connect(tiled_server.uri, ro_key)

    # reads: the raw run (metadata, frames) and the derived results, equal to the writer's view
    assert viewer[uid].metadata["start"]["uid"] == uid
    frames = viewer[uid]["primary"]["det_image"].read()
    assert frames.shape == (4, 32, 24)
    np.testing.assert_array_equal(frames, writer[uid]["primary"]["det_image"].read())
    assert read_results(viewer, uid) == results == read_results(writer, uid)

    # probes made by the writer: an array and an appendable table
    probe = writer.create_container("acl-probe", metadata={"owner": "writer"})
    probe.write_array(np.zeros(4), key="arr")
    table = probe.create_appendable_table(pa.schema([("n", pa.int64())]), key="tab")
    table.append_partition(0, _rows(1))
    n_results = len(writer[DERIVED][uid]["frame_stats"].read())
    v_probe = viewer["acl-probe"]
    extra = _rows(2)

    # every write with the read-only key: HTTP 401, nothing changed
    assert _status(lambda: viewer.create_container("by-viewer")) == 401
    assert _status(lambda: viewer[uid].update_metadata({"tampered": True})) == 401
    assert _status(lambda: v_probe.update_metadata({"owner": "viewer"})) == 401
    assert _status(lambda: v_probe["arr"].write(np.ones(4))) == 401
    assert _status(lambda: v_probe["tab"].append_partition(0, extra)) == 401
    assert _status(lambda: viewer[DERIVED][uid]["frame_stats"].append_partition(0, extra)) == 401
    assert _status(lambda: v_probe.delete_contents("arr", recursive=True)) == 401
    assert _status(lambda: viewer.context.admin.list_principals()) == 401  # no key management
    r = httpx.post(f"{tiled_server.uri}/metadata/", json=NEW_CONTAINER, headers=_header(ro_key), trust_env=False)
    assert r.status_code == 401
    assert "by-viewer" not in writer and "tampered" not in writer[uid].metadata
    assert writer["acl-probe"].metadata["owner"] == "writer"
    np.testing.assert_array_equal(writer["acl-probe"]["arr"].read(), np.zeros(4))
    assert table.read()["n"].tolist() == [1]
    assert len(writer[DERIVED][uid]["frame_stats"].read()) == n_results

    # a key the viewer mints itself (as tiled's websocket client does) is read-only too
    minted = viewer.context.create_api_key(note="minted by a viewer")
    r = httpx.post(f"{tiled_server.uri}/metadata/", json=NEW_CONTAINER, headers=_header(minted["secret"]),
                   trust_env=False)
    assert r.status_code == 401
    viewer.context.revoke_api_key(minted["first_eight"])

    # the same operations with the writer key succeed
    writer.create_container("by-writer")
    writer["acl-probe"].update_metadata({"owner": "writer", "checked": True})
    writer["acl-probe"]["arr"].write(np.ones(4))
    table.append_partition(0, extra)
    assert "by-writer" in writer and writer["acl-probe"].metadata["checked"] is True
    np.testing.assert_array_equal(writer["acl-probe"]["arr"].read(), np.ones(4))
    assert table.read()["n"].tolist() == [1, 2]

    # anonymous and wrong keys: refused, reads included
    base = tiled_server.uri
    for headers in ({}, _header("00" * 24), _header("not-hex")):
        assert httpx.get(f"{base}/metadata/{uid}", headers=headers, trust_env=False).status_code == 401
        assert httpx.post(f"{base}/metadata/", json=NEW_CONTAINER, headers=headers, trust_env=False).status_code == 401
        r = httpx.patch(f"{base}/metadata/{uid}", json={"metadata": {"x": 1}}, headers=headers, trust_env=False)
        assert r.status_code == 401

    # a revoked read-only key stops working
    admin.revoke(made["first_eight"])
    assert httpx.get(f"{base}/metadata/{uid}", headers=_header(ro_key), trust_env=False).status_code == 401

    # after all this (a run written, analysed by a worker, read, keys minted): no key logged
    assert any("worker" in p.name for p in (tiled_server.data_dir / "logs").iterdir())
    _assert_no_key_in_logs(tiled_server.data_dir, [tiled_server.api_key, tiled_server.admin_key, ro_key,
                                                   minted["secret"]])


def test_read_only_key_follows_live_data(tiled_server):
    """A viewer subscribes (websocket) with a read-only key and sees new nodes and rows."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect as ws_connect

    ro_key = KeyAdmin(tiled_server.uri, tiled_server.admin_key).create(read_only=True)["secret"]
    writer = tiled_server.client()
    viewer = connect(tiled_server.uri, ro_key)
    created: list[str] = []
    rows: list[int] = []
    lock = threading.Lock()

    def on_child(update):
        with lock:
            created.append(update.key)

    def on_rows(update):
        with lock:
            rows.extend(update.data()["n"].tolist())

    sub = viewer.subscribe()
    sub.child_created.add_callback(on_child)
    sub.start_in_thread()
    try:
        writer.create_container("live")
        assert _wait(lambda: "live" in created), created
        table = writer["live"].create_appendable_table(pa.schema([("n", pa.int64())]), key="t")
        tsub = viewer["live"]["t"].subscribe()
        tsub.new_data.add_callback(on_rows)
        tsub.start_in_thread(0)
        try:
            for i in range(3):
                table.append_partition(0, _rows(i))
            assert _wait(lambda: sorted(rows) == [0, 1, 2]), rows
        finally:
            tsub.disconnect()
    finally:
        sub.disconnect()

    # the websocket without a valid key: closed with tiled's authentication failure code
    ws = tiled_server.uri.replace("http://", "ws://") + "/stream/single/live"
    for message in ({"type": "auth", "api_key": "00" * 24}, {"type": "auth"}):
        with ws_connect(ws) as conn:
            conn.send(json.dumps(message))
            with pytest.raises(ConnectionClosed) as info:
                conn.recv(timeout=30)
        assert info.value.rcvd is not None and info.value.rcvd.code == 4003, info.value
    _assert_no_key_in_logs(tiled_server.data_dir, [tiled_server.api_key, tiled_server.admin_key, ro_key])


def test_keys_command_files_and_cli_errors(tiled_server):
    d = tiled_server.data_dir
    srv = ["--uri", tiled_server.uri]
    env = {"STRAINSTREAM_ADMIN_KEY": tiled_server.admin_key}
    out = d / "viewer.key"
    r = _cli("keys", "create", "--read-only", "--note", "screen", "--out", str(out), *srv, env=env)
    assert r.returncode == 0, r.stderr
    key = out.read_text().strip()
    assert _mode(out) == 0o600 and key not in r.stdout + r.stderr and key[:8] in r.stdout
    # without --out the key alone is on stdout
    r = _cli("keys", "create", "--read-only", *srv, env=env)
    assert r.returncode == 0, r.stderr
    printed = r.stdout.strip()
    assert len(bytes.fromhex(printed)) >= 32 and printed not in r.stderr
    # --data-dir finds the running server and its .admin_key
    r = _cli("keys", "list", "--json", "--data-dir", str(d))
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    by_first = {k["first_eight"]: k for k in listed}
    assert by_first[key[:8]]["kind"] == "read-only" and by_first[key[:8]]["note"] == "screen"
    assert by_first[printed[:8]]["kind"] == "read-only"
    assert by_first[tiled_server.api_key[:8]]["kind"] == "read-write"
    for secret in (key, printed, tiled_server.api_key, tiled_server.admin_key):
        assert secret not in r.stdout  # list shows no secret
    # the read-only key works for the CLI's reads and is refused where it would write
    r = _cli("results", "0123456789", *srv, "--api-key", key)
    assert r.returncode == 2 and r.stderr.strip().endswith("no run with uid '0123456789' in the catalog")
    # one-line errors: missing key, wrong key, writer key used as admin key, revoked key
    r = _cli("results", "0123456789", *srv, "--data-dir", str(d / "none"))
    assert r.returncode == 2 and "no API key" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli("results", "0123456789", *srv, "--api-key", "ab" * 24)
    assert r.returncode == 2 and "refused the API key" in r.stderr and "Traceback" not in r.stderr
    r = _cli("keys", "list", *srv, "--admin-key", tiled_server.api_key)
    assert r.returncode == 2 and r.stderr.startswith("strainstream keys: error: ") and "refused the admin key" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = _cli("keys", "revoke", key[:8], *srv, env=env)
    assert r.returncode == 0 and "revoked read-only key" in r.stdout
    r = _cli("results", "0123456789", *srv, "--api-key", key)
    assert r.returncode == 2 and "refused the API key" in r.stderr
    r = _cli("keys", "revoke", tiled_server.api_key[:8], *srv, env=env)
    assert r.returncode == 2 and "the server's own" in r.stderr
    r = _cli("keys", "create", "--read-only", "--out", str(out), *srv, env=env)
    assert r.returncode == 2 and "not overwriting" in r.stderr
    r = _cli("keys", "list", "--data-dir", str(d / "none"))
    assert r.returncode == 2 and "does not exist" in r.stderr

    # key files are private; tiled.yml holds no secret
    for name in (".api_key", ".admin_key", "authn.db"):
        assert _mode(d / name) == 0o600, name
    config = (d / "tiled.yml").read_text()
    for secret in (tiled_server.api_key, tiled_server.admin_key, key, printed):
        assert secret not in config
    parsed = json.loads(config)
    assert parsed["authentication"]["allow_anonymous_access"] is False
    assert "single_user_api_key" not in parsed["authentication"]
    assert "secret_keys" not in parsed["authentication"]


@pytest.mark.slow
def test_keys_from_environment_restart_and_offline(tmp_path, monkeypatch):
    """$STRAINSTREAM_API_KEY is the writer key; a new key revokes the old; offline needs none."""
    d = tmp_path / "srv"
    first, second = "1f" * 24, "2e" * 24
    monkeypatch.setenv("STRAINSTREAM_API_KEY", first)
    monkeypatch.delenv("STRAINSTREAM_ADMIN_KEY", raising=False)
    with TiledServer(d) as server:
        assert server.api_key == first and not (d / ".api_key").exists()
        assert _mode(d / ".admin_key") == 0o600
        server.client().create_container("kept", metadata={"n": 1})
        # the server process does not carry the keys in its environment
        environ = Path(f"/proc/{server.process.pid}/environ").read_bytes()
        assert first.encode() not in environ and server.admin_key.encode() not in environ
    monkeypatch.setenv("STRAINSTREAM_API_KEY", second)
    with TiledServer(d) as server:
        base = server.uri
        assert httpx.get(f"{base}/metadata/kept", headers=_header(second), trust_env=False).status_code == 200
        assert httpx.get(f"{base}/metadata/kept", headers=_header(first), trust_env=False).status_code == 401
    # offline: no server, no key file, no key in the environment
    monkeypatch.delenv("STRAINSTREAM_API_KEY")
    root = open_offline(d)
    assert root["kept"].metadata["n"] == 1
    # keys tiled cannot use are refused before anything starts
    with pytest.raises(ServerError, match="hexadecimal"):
        TiledServer(tmp_path / "other", api_key="not-a-hex-key")
    with pytest.raises(ServerError, match="differ"):
        TiledServer(tmp_path / "other", api_key=first, admin_key=first)
