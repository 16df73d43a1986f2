"""`strainstream console`: the profile's namespace in IPython, non-interactive modes."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest


def _console(*args: str, env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "strainstream.cli", "console", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def console_env(tmp_path, sim_beamline):
    """The session beamline's CA environment, a private IPython directory, no stray key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRAINSTREAM_")}
    env.update(sim_beamline.client_env())
    env["IPYTHONDIR"] = str(tmp_path / "ipython")
    env["TMPDIR"] = str(tmp_path)
    return env


@pytest.mark.system
@pytest.mark.slow
def test_console_runs_a_plan_into_tiled(tiled_server, console_env, tmp_path):
    code = ("uids = RE(count([xrd], 3, md={'sample': 'from the console'}))\n"
            "print('UIDS', *uids)\n"
            "print('NAMES', sorted(k for k in ('RE', 'db', 'xrd', 'cycler', 'es', 'sxdm', 'txm', "
            "'beam', 'operando_xrd', 'sxdm_map', 'find_bragg', 'txm_xanes', 'suspenders') "
            "if k in globals()))")
    r = _console("--data-dir", str(tiled_server.data_dir), "-c", code, env=console_env)
    assert r.returncode == 0, r.stdout + r.stderr
    (uid,) = [line.split()[1:] for line in r.stdout.splitlines() if line.startswith("UIDS")][0]
    names = [line for line in r.stdout.splitlines() if line.startswith("NAMES")][0]
    for name in ("RE", "db", "xrd", "cycler", "es", "beam", "operando_xrd", "txm_xanes",
                 "suspenders"):
        assert f"'{name}'" in names
    assert re.search(r"\|\s+seq_num\s+\|\s+time\s+\|", r.stdout)  # BestEffortCallback table
    assert "success after 3 points" in r.stderr  # the progress printer
    assert tiled_server.api_key not in r.stdout + r.stderr

    run = tiled_server.client()[uid]
    assert run.metadata["start"]["plan_name"] == "count"
    assert run.metadata["start"]["sample"] == "from the console"
    assert len(set(run["primary"]["seq_num"].read().tolist())) == 3
    assert run["primary"]["xrd_image"].read().shape[0] == 3  # frames in DATA_DIR/detectors

    # --execute FILE: same namespace; an exception gives exit code 1 and its traceback
    script = tmp_path / "bad.py"
    script.write_text("assert db is not None\nraise RuntimeError('stopped on purpose')\n")
    r = _console("--data-dir", str(tiled_server.data_dir), "--no-table", "--execute",
                 str(script), env=console_env)
    assert r.returncode == 1
    assert "stopped on purpose" in r.stdout + r.stderr


def test_console_errors_are_one_line(tmp_path):
    env = dict(os.environ, IPYTHONDIR=str(tmp_path / "ipython"))
    env.pop("STRAINSTREAM_URI", None)
    r = _console("--data-dir", str(tmp_path / "missing"), "-c", "1", env=env, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("strainstream console: error: data directory")
    assert len(r.stderr.strip().splitlines()) == 1
    r = _console("-c", "1", env=env, timeout=60)
    assert r.returncode == 2 and "no tiled server to store the runs" in r.stderr
    r = _console("--execute", str(tmp_path / "nope.py"), env=env, timeout=60)
    assert r.returncode == 2 and "no such file" in r.stderr
    r = _console("--uri", "http://127.0.0.1:9/api/v1", "-c", "1", env=env, timeout=60)
    assert r.returncode == 2 and "no API key" in r.stderr
    r = _console("--offline", "--figures", "-c", "1", env=env, timeout=60)
    assert r.returncode == 2 and "--figures needs a tiled server" in r.stderr
