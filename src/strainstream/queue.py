"""``strainstream queue``: bluesky-queueserver for this beamline, from the strainstream profile.

``strainstream queue up --data-dir DIR`` starts a private Redis (:class:`strainstream.services.Redis`)
and RE Manager (``start-re-manager``) with the startup code of ``deploy/queueserver/startup``
(:func:`strainstream.profile.build_namespace`: the devices and plans of ``strainstream console``),
the permissions of ``deploy/queueserver/user_group_permissions.yaml``, and its ZeroMQ control
and info sockets on free loopback ports; it prints the addresses and keeps everything running
until Ctrl-C or SIGTERM. ``strainstream queue status`` asks the manager for its state;
``strainstream queue plans`` writes the list of plans and devices the queue offers
(``existing_plans_and_devices.yaml``). Queue plans with ``qserver -a ADDRESS ...`` or
:class:`bluesky_queueserver_api.zmq.REManagerAPI`.

State in ``DIR/queueserver/``::

    redis/                           Redis append-only file (queue and history survive restarts)
    existing_plans_and_devices.yaml  what the queue offers (updated when the environment opens)
    qserver.json                     control/info addresses and pid of the running manager

Logs in ``DIR/logs/queueserver.log``. The API key is passed in the manager's environment and
never printed or written here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from strainstream.config import process_environment
from strainstream.errors import StrainstreamError
from strainstream.supervisor import Supervisor

__all__ = ["DEPLOY_DIR", "QueueServer", "QueueServerError", "read_state", "state_file",
           "write_existing_plans"]

#: deploy/queueserver of this source tree
DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "queueserver"


class QueueServerError(StrainstreamError, RuntimeError):
    """RE Manager or its Redis cannot be started or reached. The message says what to do."""


def _state_dir(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir).resolve() / "queueserver"


def state_file(data_dir: str | os.PathLike) -> Path:
    return _state_dir(data_dir) / "qserver.json"


def _deploy_file(name: str, given: str | os.PathLike | None) -> Path:
    path = Path(given) if given else DEPLOY_DIR / name
    if not path.exists():
        raise QueueServerError(
            f"{path} does not exist; pass the path of the deploy/queueserver/{name} of a "
            "strainstream source tree")
    return path.resolve()


class QueueServer:
    """Redis + RE Manager subprocesses on 127.0.0.1 running the strainstream profile.

    Parameters
    ----------
    data_dir : path
        strainstream data directory; state goes to ``DIR/queueserver``, the log to
        ``DIR/logs/queueserver.log``.
    profile_env : mapping
        ``STRAINSTREAM_*`` variables for the profile in RE Manager's worker
        (:meth:`strainstream.profile.ProfileConfig.env`).
    epics_env : mapping, optional
        Channel Access client variables (``EPICS_CA_ADDR_LIST`` ...) for the worker; by
        default those of this process are inherited.
    startup_dir, permissions, existing_plans : path, optional
        Default: ``deploy/queueserver/startup``, ``.../user_group_permissions.yaml`` and
        ``.../existing_plans_and_devices.yaml`` of this source tree.
    redis_url : str, optional
        Use this Redis (``redis://host:port`` or ``host:port``) instead of starting one.
    control_port, info_port : int, optional
        ZeroMQ ports on 127.0.0.1 (free ones by default).
    """

    def __init__(self, data_dir: str | os.PathLike, profile_env: Mapping[str, str], *,
                 epics_env: Mapping[str, str] | None = None,
                 startup_dir: str | os.PathLike | None = None,
                 permissions: str | os.PathLike | None = None,
                 existing_plans: str | os.PathLike | None = None,
                 redis_url: str | None = None, control_port: int | None = None,
                 info_port: int | None = None) -> None:
        from strainstream.supervisor import find_free_port

        self.data_dir = Path(data_dir).resolve()
        self.profile_env = dict(profile_env)
        self.epics_env = dict(epics_env or {})
        self.startup_dir = _deploy_file("startup", startup_dir)
        self.permissions = _deploy_file("user_group_permissions.yaml", permissions)
        self.existing_plans_src = _deploy_file("existing_plans_and_devices.yaml", existing_plans)
        self.redis_url = redis_url
        self.control_port = control_port or find_free_port()
        self.info_port = info_port or find_free_port()
        while self.info_port == self.control_port:
            self.info_port = find_free_port()
        self.redis: Any = None
        self.supervisor = Supervisor("RE Manager", self.log_path, stop_timeout_s=15.0,
                                     error=QueueServerError)

    @property
    def process(self) -> subprocess.Popen | None:
        """RE Manager's process (``None`` when not started or stopped)."""
        return self.supervisor.process

    # ------------------------------------------------------------------ addresses
    @property
    def control_addr(self) -> str:
        return f"tcp://127.0.0.1:{self.control_port}"

    @property
    def info_addr(self) -> str:
        return f"tcp://127.0.0.1:{self.info_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "logs" / "queueserver.log"

    @property
    def redis_addr(self) -> str:
        """``host:port`` of the Redis in use (RE Manager's ``--redis-addr``)."""
        url = self.redis.url if self.redis is not None else (self.redis_url or "")
        return url.removeprefix("redis://").rstrip("/")

    def api(self, **kwargs: Any):
        """A :class:`bluesky_queueserver_api.zmq.REManagerAPI` connected to this manager."""
        from bluesky_queueserver_api.zmq import REManagerAPI

        return REManagerAPI(zmq_control_addr=self.control_addr, zmq_info_addr=self.info_addr,
                            **kwargs)

    # ------------------------------------------------------------------ lifecycle
    def command(self) -> list[str]:
        """The ``start-re-manager`` command line."""
        exe = Path(sys.executable).with_name("start-re-manager")
        state = _state_dir(self.data_dir)
        return [
            str(exe) if exe.exists() else "start-re-manager",
            "--startup-dir", str(self.startup_dir),
            "--user-group-permissions", str(self.permissions),
            "--user-group-permissions-reload", "ON_STARTUP",
            "--existing-plans-devices", str(state / "existing_plans_and_devices.yaml"),
            "--update-existing-plans-devices", "ENVIRONMENT_OPEN",
            "--redis-addr", self.redis_addr,
            "--redis-name-prefix", "strainstream",
            "--zmq-control-addr", f"tcp://127.0.0.1:{self.control_port}",
            "--zmq-info-addr", f"tcp://127.0.0.1:{self.info_port}",
            "--zmq-publish-console", "ON",
            "--use-ipython-kernel", "OFF",
        ]

    def start(self, timeout_s: float = 60.0) -> QueueServer:
        """Start Redis (unless ``redis_url``) and RE Manager; wait until the manager answers."""
        state = _state_dir(self.data_dir)
        state.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # the queue offers the committed list until the environment opens and refreshes it
        shutil.copyfile(self.existing_plans_src, state / "existing_plans_and_devices.yaml")
        try:
            if self.redis_url is None:
                from strainstream.services import Redis

                self.redis = Redis(state / "redis").start(timeout_s=timeout_s)
            else:
                _check_redis(self.redis_addr)
            env = process_environment({**self.epics_env, **self.profile_env, "PYTHONUNBUFFERED": "1"})
            self.supervisor.start(self.command(), env=env, cwd=state)
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        state_file(self.data_dir).write_text(json.dumps(
            {"control_addr": self.control_addr, "info_addr": self.info_addr,
             "redis_addr": self.redis_addr, "pid": self.process.pid}))
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        api = self.api(timeout_recv=1.0, timeout_send=0.5)

        def answers() -> bool:
            try:
                api.status()
                return True
            except Exception:  # not answering yet (timeouts, refused connections)
                return False

        try:
            self.supervisor.wait_ready(answers, timeout_s=timeout_s, interval_s=0.2,
                                       waiting_for=f"answer at {self.control_addr}")
        finally:
            api.close()

    @property
    def running(self) -> bool:
        return self.supervisor.running

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop RE Manager and its worker (SIGTERM, SIGKILL after ``timeout_s``), then Redis."""
        pid = self.supervisor.pid
        if self.supervisor.process is not None:
            # the manager's worker and watchdog children live in its process group: all stopped
            self.supervisor.stop(timeout_s)
            info = read_state(self.data_dir)
            if info is not None and info.get("pid") == pid:
                with contextlib.suppress(FileNotFoundError):
                    state_file(self.data_dir).unlink()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def __enter__(self) -> QueueServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _check_redis(addr: str) -> None:
    """Raise :class:`QueueServerError` unless a Redis answers PING at ``host:port[/db]``."""
    import socket

    hostport = addr.split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port or 6379)), timeout=2.0) as s:
            s.sendall(b"PING\r\n")
            ok = s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except (OSError, ValueError):
        ok = False
    if not ok:
        raise QueueServerError(f"no Redis answers at {addr}; start one or leave out --redis "
                               "(`queue up` then starts its own)")


def read_state(data_dir: str | os.PathLike) -> dict[str, Any] | None:
    try:
        return json.loads(state_file(data_dir).read_text())
    except (OSError, ValueError):
        return None


def write_existing_plans(path: str | os.PathLike, config: Any = None) -> dict[str, list[str]]:
    """Write the plans and devices the queue offers (``existing_plans_and_devices.yaml``).

    The profile is built without a tiled server (``config.uri`` ignored) and without
    connecting to the IOCs. Returns ``{"plans": [...], "devices": [...]}``.
    """
    import dataclasses

    from bluesky_queueserver.manager.profile_ops import (
        existing_plans_and_devices_from_nspace,
        save_existing_plans_and_devices,
    )

    from strainstream.profile import ProfileConfig, build_namespace

    config = dataclasses.replace(config or ProfileConfig(), uri=None, api_key=None,
                                 progress=False, table=False)
    ns = build_namespace(config)
    plans, devices, _, _ = existing_plans_and_devices_from_nspace(nspace=ns)
    path = Path(path).resolve()
    save_existing_plans_and_devices(existing_plans=plans, existing_devices=devices,
                                    file_dir=str(path.parent), file_name=path.name, overwrite=True)
    return {"plans": sorted(plans), "devices": sorted(devices)}
