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
