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

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["DEPLOY_DIR", "QueueServer", "QueueServerError", "main", "write_existing_plans"]

#: deploy/queueserver of this source tree
DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "queueserver"
PROG = "strainstream queue"


class QueueServerError(RuntimeError):
    """RE Manager or its Redis cannot be started or reached. The message says what to do."""


def _state_dir(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir).resolve() / "queueserver"


def _state_file(data_dir: str | os.PathLike) -> Path:
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
        from strainstream.server import find_free_port

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
        self.process: subprocess.Popen | None = None

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
            env = dict(os.environ)
            env.update(self.epics_env)
            env.update(self.profile_env)
            env["PYTHONUNBUFFERED"] = "1"
            log = open(self.log_path, "ab")  # noqa: SIM115 (owned by the child)
            try:
                self.process = subprocess.Popen(
                    self.command(), env=env, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True, cwd=state)
            finally:
                log.close()
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        _state_file(self.data_dir).write_text(json.dumps(
            {"control_addr": self.control_addr, "info_addr": self.info_addr,
             "redis_addr": self.redis_addr, "pid": self.process.pid}))
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        api = self.api(timeout_recv=1.0, timeout_send=0.5)
        try:
            while True:
                if self.process is None or self.process.poll() is not None:
                    code = None if self.process is None else self.process.returncode
                    raise QueueServerError(
                        f"RE Manager exited with code {code} during start-up; see {self.log_path}")
                try:
                    api.status()
                    return
                except Exception:  # not answering yet (timeouts, refused connections)
                    pass
                if time.monotonic() > deadline:
                    raise QueueServerError(
                        f"RE Manager did not answer at {self.control_addr} within {timeout_s:.0f} s; "
                        f"see {self.log_path}")
                time.sleep(0.2)
        finally:
            api.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop RE Manager and its worker (SIGTERM, SIGKILL after ``timeout_s``), then Redis."""
        proc, self.process = self.process, None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout_s)
            # the manager's worker and watchdog children live in the same process group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            info = _read_state(self.data_dir)
            if info is not None and info.get("pid") == proc.pid:
                with contextlib.suppress(FileNotFoundError):
                    _state_file(self.data_dir).unlink()
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


def _read_state(data_dir: str | os.PathLike) -> dict[str, Any] | None:
    try:
        return json.loads(_state_file(data_dir).read_text())
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


# ----------------------------------------------------------------------------- CLI
def add_profile_args(p: argparse.ArgumentParser) -> None:
    """Options shared by ``strainstream console`` and ``strainstream queue up``."""
    p.add_argument("--data-dir", default=None,
                   help="strainstream data directory: its running server (--uri), API key, "
                        "DIR/detectors for the detector files, DIR/spool for the writer's spool")
    p.add_argument("--uri", default=None, help="tiled API URI (default: $STRAINSTREAM_URI, else "
                                                "the server running on --data-dir)")
    p.add_argument("--api-key", default=None,
                   help="API key (default: $STRAINSTREAM_API_KEY, else DATA_DIR/.api_key)")
    p.add_argument("--detector-dir", default=None,
                   help="where the detectors write HDF5 (default: $STRAINSTREAM_DETECTOR_DIR, "
                        "else DATA_DIR/detectors)")
    p.add_argument("--prefix", default=None, help="beamline PV prefix (default: SS:)")
    p.add_argument("--beamline-ports", default=None, metavar="NAME=PORT,...",
                   help="CA server ports of the IOCs on 127.0.0.1, e.g. cycler=5064,endstation="
                        "5066,beam=5068 (default: the EPICS_CA_* environment)")
    p.add_argument("--iocs", default=None, help="comma-separated subset of cycler,endstation,beam")
    p.add_argument("--no-table", action="store_true", help="no BestEffortCallback table")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")


def profile_from_args(args: argparse.Namespace) -> tuple[Any, dict[str, str]]:
    """``(ProfileConfig, EPICS client env)`` from the options of :func:`add_profile_args`.

    Raises :class:`strainstream.server.ServerError` / ``ValueError`` with a one-line message.
    """
    from strainstream.beamline import _parse_ports, client_env
    from strainstream.profile import ProfileConfig
    from strainstream.server import ServerError, api_key_for, detector_dir, running_server

    uri = args.uri or os.environ.get("STRAINSTREAM_URI")
    key = args.api_key
    if args.data_dir:
        if not os.path.isdir(args.data_dir):
            raise ServerError(f"data directory {args.data_dir!r} does not exist")
        if uri is None:
            info = running_server(args.data_dir)
            if info is None:
                raise ServerError(
                    f"no tiled server is running for {args.data_dir}; start one with "
                    f"`strainstream serve --data-dir {args.data_dir}` or pass --uri")
            uri = info.uri
        if uri is not None:
            key = api_key_for(args.data_dir, key, create=False)
    elif uri is not None:
        key = key or os.environ.get("STRAINSTREAM_API_KEY")
        if not key:
            raise ServerError(f"no API key for {uri}: pass --api-key or set $STRAINSTREAM_API_KEY")
    det = args.detector_dir or os.environ.get("STRAINSTREAM_DETECTOR_DIR")
    if det is None and args.data_dir:
        det = str(detector_dir(args.data_dir))
    iocs = tuple(s for s in args.iocs.split(",") if s) if args.iocs else None
    spool = str(Path(args.data_dir).resolve() / "spool") if args.data_dir else None
    config = ProfileConfig.from_env(
        uri=uri, api_key=key, prefix=args.prefix, detector_dir=det, iocs=iocs, spool_dir=spool,
        table=False if args.no_table else None, progress=False if args.no_progress else None)
    epics: dict[str, str] = {}
    if args.beamline_ports:
        ports = _parse_ports(args.beamline_ports)
        epics = client_env(ports.values())
    return config, epics


def _up(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog=f"{PROG} up", description=(
        "Start Redis and RE Manager with the strainstream profile until Ctrl-C/SIGTERM. The "
        "profile's RunEngine writes to the tiled server of --data-dir (or --uri)."))
    add_profile_args(ap)
    ap.add_argument("--startup-dir", default=None, help="default: deploy/queueserver/startup")
    ap.add_argument("--permissions", default=None,
                    help="default: deploy/queueserver/user_group_permissions.yaml")
    ap.add_argument("--redis", default=None, metavar="URL",
                    help="use this Redis instead of starting one (redis://127.0.0.1:PORT)")
    ap.add_argument("--control-port", type=int, default=None, help="ZeroMQ control port (free)")
    ap.add_argument("--info-port", type=int, default=None, help="ZeroMQ info port (free)")
    ap.add_argument("--open", action="store_true", help="open the RE environment once up")
    ap.add_argument("--json", action="store_true", help="print the addresses as one JSON object")
    args = ap.parse_args(argv)
    if not args.data_dir:
        raise QueueServerError("--data-dir is required (where the queue keeps its Redis and logs)")
    config, epics = profile_from_args(args)
    if config.uri is None:
        raise QueueServerError("no tiled server: pass --uri or the --data-dir of a running "
                               "`strainstream serve`")
    qs = QueueServer(args.data_dir, config.env(), epics_env=epics, startup_dir=args.startup_dir,
                     permissions=args.permissions, redis_url=args.redis,
                     control_port=args.control_port, info_port=args.info_port)
    done = threading.Event()
    previous = {s: signal.signal(s, lambda *a: done.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        qs.start()
        if args.open:
            api = qs.api()
            try:
                api.environment_open()
                api.wait_for_idle(timeout=300)
                if not api.status()["worker_environment_exists"]:
                    raise QueueServerError(f"the RE environment did not open; see {qs.log_path}")
            finally:
                api.close()
        info = {"control_addr": qs.control_addr, "info_addr": qs.info_addr,
                "redis_addr": qs.redis_addr, "tiled_uri": config.uri, "log": str(qs.log_path)}
        if args.json:
            print(json.dumps(info), flush=True)
        else:
            print(f"RE Manager   control {qs.control_addr}   info {qs.info_addr}\n"
                  f"Redis        {qs.redis_addr}\n"
                  f"tiled        {config.uri}\n"
                  f"log          {qs.log_path}\n"
                  f"try: qserver -a {qs.control_addr} environment open\n"
                  f"     qserver -a {qs.control_addr} queue add plan "
                  "'{\"name\": \"count\", \"args\": [[\"xrd\"]], \"kwargs\": {\"num\": 3}}'\n"
                  f"     qserver -a {qs.control_addr} queue start\n"
                  "Ctrl-C stops RE Manager and Redis.", flush=True)
        while not done.wait(0.5):
            if not qs.running:
                print(f"{PROG}: error: RE Manager exited; see {qs.log_path}", file=sys.stderr)
                return 1
        return 0
    finally:
        qs.stop()
        for s, h in previous.items():
            signal.signal(s, h)


def _status(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog=f"{PROG} status", description="Ask RE Manager for its state.")
    ap.add_argument("--data-dir", default=None, help="the --data-dir of `strainstream queue up`")
    ap.add_argument("--control-addr", default=None, help="e.g. tcp://127.0.0.1:60615")
    ap.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for an answer")
    ap.add_argument("--json", action="store_true", help="the full status as one JSON object")
    args = ap.parse_args(argv)
    addr = args.control_addr
    if addr is None:
        if not args.data_dir:
            raise QueueServerError("pass --data-dir (of `strainstream queue up`) or --control-addr")
        info = _read_state(args.data_dir)
        if info is None:
            raise QueueServerError(f"no queue server is running for {args.data_dir} "
                                   f"(no {_state_file(args.data_dir)})")
        addr = info["control_addr"]
    from bluesky_queueserver_api.zmq import REManagerAPI

    api = REManagerAPI(zmq_control_addr=addr, timeout_recv=args.timeout)
    try:
        status = api.status()
    except Exception as exc:
        raise QueueServerError(f"RE Manager at {addr} does not answer ({type(exc).__name__})") from None
    finally:
        api.close()
    if args.json:
        print(json.dumps(status, default=str))
        return 0
    keys = ("manager_state", "worker_environment_exists", "worker_environment_state", "re_state",
            "items_in_queue", "items_in_history", "running_item_uid", "queue_stop_pending")
    print(f"RE Manager at {addr}")
    for k in keys:
        print(f"  {k:<27} {status.get(k)}")
    return 0


def _plans(argv: list[str]) -> int:
    from strainstream.profile import ProfileConfig

    ap = argparse.ArgumentParser(prog=f"{PROG} plans", description=(
        "Write the plans and devices the queue offers (existing_plans_and_devices.yaml) from "
        "the profile, without a server or IOCs."))
    ap.add_argument("--out", default=str(DEPLOY_DIR / "existing_plans_and_devices.yaml"),
                    help="output file (default: deploy/queueserver/existing_plans_and_devices.yaml)")
    ap.add_argument("--prefix", default=None, help="beamline PV prefix (default: SS:)")
    args = ap.parse_args(argv)
    names = write_existing_plans(args.out, ProfileConfig.from_env(prefix=args.prefix))
    print(f"{args.out}: plans {', '.join(names['plans'])}; devices {', '.join(names['devices'])}")
    return 0


COMMANDS = {"up": _up, "status": _status, "plans": _plans}


def main(argv: list[str] | None = None) -> int:
    """``strainstream queue up|status|plans ...``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: {PROG} {{up,status,plans}} [options]  (see `{PROG} up -h`)\n"
              "  up      start Redis + RE Manager with the strainstream profile until Ctrl-C\n"
              "  status  ask RE Manager for its state\n"
              "  plans   write existing_plans_and_devices.yaml from the profile",
              file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        return int(COMMANDS[argv[0]](argv[1:]) or 0)
    except (QueueServerError, ValueError) as exc:
        print(f"{PROG}: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
