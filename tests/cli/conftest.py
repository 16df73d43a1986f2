"""Fixtures shared by the command-line tests."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.fixture(scope="session")
def frame_series_demo(tmp_path_factory):
    """``(data_dir, summary)`` of one finished ``demo --experiment frame_series`` (5 frames).

    Shared by the tests that only read it (``runs``, ``results``, ``plot --out``): one demo
    instead of one per module.
    """
    d = tmp_path_factory.mktemp("frame_series") / "data"
    r = subprocess.run([sys.executable, "-m", "strainstream.cli", "demo", "--experiment", "frame_series",
                        "--data-dir", str(d), "--frames", "5", "--delay", "0.05", "--json"],
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr
    return d, json.loads(r.stdout)
