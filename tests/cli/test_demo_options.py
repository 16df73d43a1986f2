"""Every ``strainstream demo`` option is checked before anything starts (#21 point 2).

Each out-of-range value ends the command with one line naming the option, the value and
what is allowed, exit code 2, before a data directory, server, IOC or worker exists.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

BAD = [
    (["--rate", "0"], "--rate", "(0, 5000] mA/g"),
    (["--rate", "-1"], "--rate", "(0, 5000] mA/g"),
    (["--rate", "nan"], "--rate", "(0, 5000] mA/g"),
    (["--duration", "-1"], "--duration", "[5, 86400] s"),
    (["--duration", "inf"], "--duration", "[5, 86400] s"),
    (["--interval", "0"], "--interval", "[0.05, 3600] s"),
    (["--interval", "100", "--duration", "60"], "--interval 100 s must be shorter than --duration 60 s", ""),
    (["--frame-size", "7"], "--frame-size", "2048, 1024, 512, 256, 128"),
    (["--frame-size", "4096"], "--frame-size", "2048, 1024, 512, 256, 128"),
    (["--frames", "0"], "--frames", "[1, 100000]"),
    (["--frames", "2.5"], "--frames", "not an integer"),
    (["--delay", "-0.1"], "--delay", "[0, 3600] s"),
    (["--experiment", "sxdm_map"], "--experiment", "invalid choice"),
    (["--experiment", "sxdm", "--raster", "3"], "--raster", "[4, 32]"),
    (["--experiment", "sxdm", "--raster", "64"], "--raster", "[4, 32]"),
    (["--experiment", "sxdm", "--angles", "2"], "--angles", "[3, 101]"),
    (["--experiment", "txm_xanes", "--energies", "4"], "--energies", "[5, 201]"),
    (["--data-dir", "/proc/nope"], "--data-dir /proc/nope: cannot create it", ""),
]


@pytest.mark.parametrize(("argv", "names", "allowed"), BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_out_of_range_demo_option_is_one_line_and_starts_nothing(tmp_path, argv, names, allowed):
    data = tmp_path / "data"
    if "--data-dir" not in argv:
        argv = [*argv, "--data-dir", str(data)]
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "strainstream.cli", "demo", *argv], capture_output=True,
                       text=True, timeout=60)
    elapsed = time.monotonic() - t0
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("strainstream demo: error: "), r.stderr
    assert names in lines[0] and allowed in lines[0], lines[0]
    assert r.stdout == ""
    assert not data.exists(), "the data directory was created although an option was wrong"
    # nothing was started: refused while parsing, far below the seconds a server start takes
    assert elapsed < 10, f"{elapsed:.1f} s to refuse an option"


def test_the_parser_offers_exactly_the_demo_experiments():
    from strainstream.cli.demo import EXPERIMENTS as offered
    from strainstream.demo import EXPERIMENTS

    assert offered == EXPERIMENTS
