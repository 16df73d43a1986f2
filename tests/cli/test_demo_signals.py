"""Ctrl-C, SIGTERM and SIGHUP stop ``strainstream demo`` cleanly (#21 point 1).

The run in progress is closed with ``exit_status="abort"`` (and analysed as far as it got),
the command exits 128 + the signal (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP) with one line, no process of its tree survives, and what earlier
runs stored is unchanged.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

CLI = [sys.executable, "-m", "strainstream.cli"]

pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(400)]


def _cli(*args, timeout=240):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def _processes_mentioning(text: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()[1:] if text in line and "ps -eo" not in line]


def _interrupt_when(argv, data_dir, sig, ready):
    """Start ``demo ARGV``, send ``sig`` once a stderr line satisfies ``ready``; (rc, s, stderr)."""
    proc = subprocess.Popen([*CLI, "demo", *argv, "--data-dir", str(data_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if ready(line):
                break
        assert proc.poll() is None, "".join(lines)
        proc.send_signal(sig)
        t0 = time.monotonic()
        _, rest = proc.communicate(timeout=60)
        return proc.returncode, time.monotonic() - t0, "".join(lines) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


_STORED = """
import json, sys
from strainstream.callbacks.sinks import read_results
from strainstream.cli.runs import run_summary
from strainstream.client import open_offline
root = open_offline(sys.argv[1])
runs = {u: run_summary(root, u) for u in root if u != "derived"}
print(json.dumps({"runs": runs, "results": read_results(root, sys.argv[2])}, sort_keys=True, default=str))
"""


def _stored(data_dir, uid):
    """(summaries of every run, the stored results of ``uid``): what `strainstream runs --json`
    and `results UID --json` print (tests/cli covers those commands), read in one child
    process instead of two CLI calls (each pays the tiled server stack's import); a child,
    as the catalog opened in-process would keep the DuckDB table file locked for the demo."""
    r = subprocess.run([sys.executable, "-c", _STORED, str(data_dir), uid],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    return out["runs"], json.dumps(out["results"], sort_keys=True)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A data directory holding one finished run whose stored results must not change."""
    d = tmp_path_factory.mktemp("signals") / "data"
    r = _cli("demo", "--experiment", "frame_series", "--data-dir", str(d), "--frames", "4",
             "--delay", "0.05", "--json")
    assert r.returncode == 0, r.stderr
    uid = json.loads(r.stdout)["uid"]
    runs, before = _stored(d, uid)
    return d, uid, before, set(runs)


def _check_clean_stop(data_dir, rc, elapsed, err, code, earlier, known):
    """Clean stop; returns the runs the interrupted demo stored ({uid: summary})."""
    assert rc == code, err
    assert elapsed < 15, f"{elapsed:.1f} s to stop"
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("strainstream demo: interrupted"), err
    time.sleep(1.0)
    assert not _processes_mentioning(str(data_dir)), _processes_mentioning(str(data_dir))
    uid, before = earlier
    runs, after = _stored(data_dir, uid)
    assert after == before  # what the earlier run stored is unchanged
    new = {u: r for u, r in runs.items() if u not in known}
    known.update(new)
    return new


def test_ctrl_c_during_the_charge_aborts_the_run_and_stops_everything(data_dir):
    d, uid, before, known = data_dir
    rc, elapsed, err = _interrupt_when(
        ["--frame-size", "256", "--duration", "60", "--interval", "1"], d, signal.SIGINT,
        lambda line: "[operando_xrd" in line and " 3 points" in line)
    runs = _check_clean_stop(d, rc, elapsed, err, 130, (uid, before), known)
    (operando,) = [r for r in runs.values() if r["experiment"] == "operando_xrd"]
    assert operando["status"] == "aborted" and operando["events_recorded"] >= 3
    (calibration,) = [r for r in runs.values() if r["experiment"] == "calibration"]
    assert calibration["status"] == "complete"


def test_ctrl_c_during_an_sxdm_map_aborts_the_map_and_stops_everything(data_dir):
    d, uid, before, known = data_dir
    rc, elapsed, err = _interrupt_when(
        ["--experiment", "sxdm", "--raster", "8", "--angles", "9"], d, signal.SIGINT,
        lambda line: "[sxdm" in line and " 10/576 " in line)
    (new,) = _check_clean_stop(d, rc, elapsed, err, 130, (uid, before), known).values()
    assert new["experiment"] == "sxdm"
    assert new["status"] == "aborted" and 10 <= new["events_recorded"] < 576


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_stop_the_demo_like_ctrl_c(data_dir, sig):
    d, uid, before, known = data_dir
    rc, elapsed, err = _interrupt_when(
        ["--experiment", "frame_series", "--frames", "1000", "--delay", "0.1"], d, sig,
        lambda line: "[frame_series" in line and " 3/1000 " in line)
    (new,) = _check_clean_stop(d, rc, elapsed, err, 128 + sig, (uid, before), known).values()
    assert new["status"] == "aborted" and 3 <= new["events_recorded"] < 1000
