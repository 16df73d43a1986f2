"""``strainstream runs`` lists what a data directory holds; uid prefixes say what is wrong (#21)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "strainstream.cli"]

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]


def _cli(*args, timeout=120):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo_dir(frame_series_demo):
    return frame_series_demo


def test_runs_lists_the_demo_run_with_its_counts(demo_dir):
    d, summary = demo_dir
    r = _cli("runs", "--data-dir", str(d), "--json")
    assert r.returncode == 0, r.stderr
    (run,) = json.loads(r.stdout)
    assert run["uid"] == summary["uid"]
    assert run["experiment"] == "frame_series" and run["material"] == "simulated powder rings"
    assert run["status"] == "complete"
    assert run["events_recorded"] == summary["events_recorded"] == 5
    assert run["events_analysed"] == 5
    assert run["analyses"] == {"frame_stats": {"status": "complete", "events_analysed": 5}}
    table = _cli("runs", "--data-dir", str(d)).stdout.splitlines()
    assert table[0].split() == ["UID", "TIME", "EXPERIMENT", "MATERIAL", "STATUS", "EVENTS", "ANALYSED"]
    assert table[1].startswith(summary["uid"][:8]) and table[1].split()[-3:] == ["complete", "5", "5"]
    none = _cli("runs", "--data-dir", str(d), "--experiment", "sxdm", "--json")
    assert none.returncode == 0 and json.loads(none.stdout) == []


def test_uid_prefixes_too_short_or_unknown_are_explained(demo_dir):
    d, summary = demo_dir
    short = _cli("results", summary["uid"][:4], "--data-dir", str(d))
    assert short.returncode == 2 and "needs at least 6 characters" in short.stderr
    assert len(short.stderr.strip().splitlines()) == 1
    ok = _cli("results", summary["uid"][:6], "--data-dir", str(d), "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["uid"] == summary["uid"]
    unknown = _cli("results", "ffffffffff", "--data-dir", str(d))
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == "strainstream results: error: no run with uid 'ffffffffff' in the catalog"


def test_a_reader_that_stops_early_ends_the_command_quietly(demo_dir):
    """`strainstream results UID --json | head -c 20`: the pipe closes before the document is
    written; the command ends with 141 (as a shell tool killed by SIGPIPE) and no traceback."""
    d, summary = demo_dir
    p = subprocess.Popen([*CLI, "results", summary["uid"], "--data-dir", str(d), "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before anything was written
    err = p.stderr.read().decode()
    assert p.wait(120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
