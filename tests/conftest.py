"""Shared fixtures: real tiled servers and workers as subprocesses on loopback ports."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory):
    # keep the user's key/URI out of the tests
    for var in ("STRAINSTREAM_API_KEY", "STRAINSTREAM_URI"):
        os.environ.pop(var, None)
    yield


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def tiled_server(data_dir):
    """A real tiled server (SQLite catalog + memory streaming cache) on a free port."""
    from strainstream.server import TiledServer

    with TiledServer(data_dir) as server:
        yield server


@pytest.fixture
def worker_factory(tiled_server):
    """Start ``strainstream worker`` subprocesses against ``tiled_server``; all are stopped at the end."""
    from strainstream.demo import WorkerProcess

    started = []

    def start():
        w = WorkerProcess(tiled_server.uri, tiled_server.api_key, tiled_server.data_dir).start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


#: frame sizes of the shared simulated beamline (small: fast tests)
BEAMLINE_SHAPES = {"xrd_shape": 256, "sxdm_shape": 32, "txm_shape": 64}


@pytest.fixture(scope="session")
def sim_beamline(tmp_path_factory):
    """The simulated beamline (cycler, endstation and beam IOCs) shared by the whole session.

    pyepics reads the CA address list once per process, when its context is created, so one
    pytest process talks to one set of IOC ports: every test that uses Channel Access must
    use this fixture (never start a second Beamline in-process). Tests that kill/restart an
    IOC must restart it on the same port (``Beamline.restart``).
    """
    from strainstream.beamline import Beamline

    d = tmp_path_factory.mktemp("sim_beamline")
    with Beamline(d / "detectors", log_dir=d / "logs", startup_timeout_s=90, **BEAMLINE_SHAPES) as bl:
        yield bl


@pytest.fixture(scope="session")
def sim_devices(sim_beamline):
    """Connected ophyd devices of :func:`sim_beamline` (keys: cycler, xrd, es, sxdm, txm, beam)."""
    devices = sim_beamline.devices()
    for dev in devices.values():
        dev.wait_for_connection(timeout=20)
    return devices
