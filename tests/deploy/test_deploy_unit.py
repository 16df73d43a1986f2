"""Unit tests of strainstream.deploy without servers (supervision, argument checks)."""

from __future__ import annotations

import json
import subprocess

import pytest


class _FakeService:
    """Stands in for Redis/Postgres/TiledServer in the supervision unit test: a real ``sleep``."""

    url = "redis://127.0.0.1:1"
    port = 1

    def __init__(self) -> None:
        self.process = None
        self.starts = 0

    def start(self, timeout_s: float = 0):
        self.process = subprocess.Popen(["sleep", "60"])
        self.starts += 1
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def test_supervision_restarts_a_dead_service_then_gives_up(tmp_path):
    from strainstream.deploy import MAX_RESTARTS, DeployError, Deployment

    dep = Deployment(tmp_path, profile="scaleout", workers=0)
    dep.redis = _FakeService().start()
    messages: list[str] = []
    try:
        dep.supervise_once(log=messages.append)
        assert dep.redis.starts == 1 and messages == []  # alive: left alone
        for n in range(1, MAX_RESTARTS + 1):
            dep.redis.process.kill()
            dep.redis.process.wait()
            dep.supervise_once(log=messages.append)
            assert dep.redis.starts == n + 1 and dep.redis.process.poll() is None
            assert messages[-1] == (f"strainstream deploy: redis exited (code -9); "
                                    f"restarting ({n}/{MAX_RESTARTS})")
        assert json.loads((tmp_path / "deploy.json").read_text())["restarts"] == {"redis": MAX_RESTARTS}
        dep.redis.process.kill()
        dep.redis.process.wait()
        with pytest.raises(DeployError, match=f"redis died {MAX_RESTARTS + 1} times; giving up"):
            dep.supervise_once(log=messages.append)
    finally:
        dep.redis.stop()


def test_deployment_rejects_bad_arguments(tmp_path):
    from strainstream.deploy import DeployError, Deployment

    with pytest.raises(DeployError, match="unknown profile 'cloud'"):
        Deployment(tmp_path, profile="cloud")
    with pytest.raises(DeployError, match="--workers must be ≥ 0"):
        Deployment(tmp_path, workers=-1)
