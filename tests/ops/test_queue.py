"""bluesky-queueserver with the strainstream profile: real Redis, RE Manager, IOCs and tiled."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytestmark = [pytest.mark.system, pytest.mark.slow]


def _cli(*args: str, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "strainstream.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _port_open(addr: str) -> bool:
    host, port = addr.removeprefix("tcp://").removeprefix("redis://").rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


def _calibration(shape: int) -> dict:
    from strainstream.sim.xrd_frames import DetectorGeometry, XRDFrameSimulator

    geo = DetectorGeometry.binned(2048 // shape)
    sim = XRDFrameSimulator(geo)
    inst = 2 * np.pi / geo.wavelength_A * np.radians(sim.instrument_fwhm_2theta_deg)
    return json.loads(json.dumps(dict(geo.to_dict(), instrument_fwhm_A_inv=float(inst))))


@pytest.fixture
def queue_up(tiled_server, sim_beamline, tmp_path):
    """`strainstream queue up` (Redis + RE Manager) as a subprocess; killed at the end."""
    ports = ",".join(f"{n}={p}" for n, p in sim_beamline.ports.items())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EPICS_CA", "EPICS_CAS"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "strainstream.cli", "queue", "up", "--data-dir",
         str(tiled_server.data_dir), "--beamline-ports", ports, "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not lines:
            assert proc.poll() is None, f"queue up exited: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "queue up printed nothing in 120 s"
            time.sleep(0.1)
        yield proc, json.loads(lines[0]), lines
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_queue_runs_profile_plans_into_tiled(queue_up, tiled_server, sim_devices):
    from bluesky_queueserver_api import BPlan
    from bluesky_queueserver_api.zmq import REManagerAPI

    proc, info, out_lines = queue_up
    data_dir = tiled_server.data_dir
    assert _port_open(info["control_addr"]) and _port_open(info["redis_addr"])
    assert info["tiled_uri"] == tiled_server.uri

    status = _cli("queue", "status", "--data-dir", str(data_dir), "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["manager_state"] == "idle"

    cyc = sim_devices["cycler"]
    cyc.reset_cell().wait(10)
    cyc.accel.put(600.0, wait=True)  # the IOC's default: a charge in ~7 s
    api = REManagerAPI(zmq_control_addr=info["control_addr"], zmq_info_addr=info["info_addr"])
    try:
        api.user_group = "beamline"
        api.environment_open()
        api.wait_for_idle(timeout=180)
        assert api.status()["worker_environment_exists"], "RE environment did not open"
        shape = int(sim_devices["xrd"].cam.array_size.array_size_y.get())
        api.item_add(BPlan("count", ["xrd"], num=3, md={"sample": "queued count"}))
        api.item_add(BPlan("operando_xrd", "xrd", "cycler", calibration=_calibration(shape),
                           rate_mA_g=200.0, frame_interval_s=0.2, max_frames=4, beam="beam",
                           md={"sample": "queued operando"}))
        # the adaptive charge: its budget as plain parameters, the profile's live results bound
        api.item_add(BPlan("adaptive_operando_xrd", "xrd", "cycler", calibration=_calibration(shape),
                           frames=4, min_interval_s=0.3, watch_s=0.3, expected_capacity_mAh_g=220.0,
                           triggers={"dqdv_onset": 3.0}, beam="beam", md={"sample": "queued adaptive"}))
        # a plan the observer group may not run, and a device the profile does not have
        api.user_group = "observer"
        with pytest.raises(Exception, match="not in the list of allowed plans"):
            api.item_add(BPlan("count", ["xrd"], num=1))
        api.user_group = "beamline"
        with pytest.raises(Exception, match="no_such_detector"):
            api.item_add(BPlan("find_bragg", "no_such_detector", "es"))
        assert api.status()["items_in_queue"] == 3

        api.queue_start()
        api.wait_for_idle(timeout=180)
        history = api.history_get()["items"]
        api.environment_close()
        api.wait_for_idle(timeout=60)
    finally:
        api.close()
        cyc.stop_cmd.put(1, wait=True)
        cyc.reset_cell().wait(10)

    assert [h["name"] for h in history] == ["count", "operando_xrd", "adaptive_operando_xrd"]
    assert [h["result"]["exit_status"] for h in history] == ["completed"] * 3, history
    root = tiled_server.client()
    (count_uid,) = history[0]["result"]["run_uids"]
    (operando_uid,) = history[1]["result"]["run_uids"]
    (adaptive_uid,) = history[2]["result"]["run_uids"]
    run = root[adaptive_uid]
    start = run.metadata["start"]
    assert start["plan_name"] == "adaptive_operando_xrd" and start["experiment"] == "operando_xrd"
    assert start["adaptive_sampling"]["budget"]["frames"] == 4 and start["sample"] == "queued adaptive"
    assert start["adaptive_sampling"]["triggers"]["dqdv_onset"] == 3.0  # the queued trigger setting
    frames = len(set(run["primary"]["seq_num"].read().tolist()))
    decisions = run["optimization"].read()
    assert 1 <= frames <= 4 and int(decisions["frame"].values.sum()) == frames
    assert all(isinstance(r, str) and r for r in decisions["reason"].values)
    assert run.metadata["stop"]["exit_status"] == "success"

    run = root[count_uid]
    start = run.metadata["start"]
    assert start["plan_name"] == "count" and start["sample"] == "queued count"
    assert len(set(run["primary"]["seq_num"].read().tolist())) == 3
    frames = run["primary"]["xrd_image"].read()  # the IOC's HDF5 file, read through tiled
    assert frames.shape == (3, shape, shape) and float(frames.max()) > 0

    run = root[operando_uid]
    start = run.metadata["start"]
    assert start["plan_name"] == "operando_xrd" and start["experiment"] == "operando_xrd"
    assert start["sample"] == "queued operando"
    assert start["calibration"]["wavelength_A"] == pytest.approx(0.1665)
    seq = run["primary"]["seq_num"].read().tolist()
    assert sorted(set(seq)) == list(range(1, 5))  # max_frames=4, cell far from 4.5 V
    volts = run["primary"]["cycler_voltage_V"].read()
    assert np.all(np.diff(volts) >= -1e-6) and 2.5 < volts[0] < 4.5
    assert run.metadata["stop"]["exit_status"] == "success"

    # SIGTERM stops RE Manager and Redis; the key was never printed or logged
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(60) == 143  # 128 + SIGTERM
    assert not _port_open(info["control_addr"]) and not _port_open(info["redis_addr"])
    assert not (data_dir / "queueserver" / "qserver.json").exists()
    log = (data_dir / "logs" / "queueserver.log").read_text()
    assert "RE Environment is ready" in log
    assert tiled_server.api_key not in log and tiled_server.api_key not in "".join(out_lines)


def test_queue_cli_errors_are_one_line(tmp_path):
    r = _cli("queue")
    assert r.returncode == 2 and "up" in r.stderr
    r = _cli("queue", "up")
    assert r.returncode == 2
    assert r.stderr.strip() == ("strainstream queue: error: --data-dir is required (where the "
                                "queue keeps its Redis and logs)")
    r = _cli("queue", "up", "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "no tiled server is running" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = _cli("queue", "up", "--data-dir", str(tmp_path), "--uri", "http://127.0.0.1:9/api/v1",
             "--api-key", "k", "--redis", "redis://127.0.0.1:9")
    assert r.returncode == 2
    assert "no Redis answers at 127.0.0.1:9" in r.stderr and "Traceback" not in r.stderr
    r = _cli("queue", "status", "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "no queue server is running" in r.stderr
    r = _cli("queue", "up", "--data-dir", str(tmp_path), "--uri", "http://127.0.0.1:9/api/v1",
             "--api-key", "k", "--beamline-ports", "ring=5064")
    assert r.returncode == 2 and "--ports wants name=port" in r.stderr
