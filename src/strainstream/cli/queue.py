"""``strainstream queue up | status | plans``: bluesky-queueserver with the beamline profile.

The queue server itself is :class:`strainstream.queue.QueueServer`.
"""

from __future__ import annotations

import json
import sys

from ._common import CommandError, Parser, add_server_options, stop_requested
from ._profile import add_profile_options, profile_from_args

__all__ = ["register"]

PROG = "strainstream queue"


def register(commands) -> None:
    """Add ``queue up | status | plans`` to the sub-command parsers ``commands``."""
    p = commands.add_parser("queue", help="bluesky-queueserver for this beamline: up | status | plans "
                                          "(Redis started for you)")
    p.set_defaults(group_parser=p)
    sub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)

    up = sub.add_parser("up", help="start Redis + RE Manager with the strainstream profile until Ctrl-C",
                        description=(
                            "Start Redis and RE Manager with the strainstream profile until Ctrl-C/SIGTERM. "
                            "The profile's RunEngine writes to the tiled server of --data-dir (or --uri)."))
    add_profile_options(up)
    up.add_argument("--startup-dir", default=None, help="default: deploy/queueserver/startup")
    up.add_argument("--permissions", default=None,
                    help="default: deploy/queueserver/user_group_permissions.yaml")
    up.add_argument("--redis", default=None, metavar="URL",
                    help="use this Redis instead of starting one (redis://127.0.0.1:PORT)")
    up.add_argument("--control-port", type=int, default=None, help="ZeroMQ control port (free)")
    up.add_argument("--info-port", type=int, default=None, help="ZeroMQ info port (free)")
    up.add_argument("--open", action="store_true", help="open the RE environment once up")
    up.add_argument("--json", action="store_true", help="print the addresses as one JSON object")
    up.set_defaults(func=cmd_up, reports=(ValueError,))

    st = sub.add_parser("status", help="ask RE Manager for its state",
                        description="Ask RE Manager for its state.")
    add_server_options(st, data_dir_default=None, uri=False, api_key=False,
                       data_dir_help="the --data-dir of `strainstream queue up`")
    st.add_argument("--control-addr", default=None, help="e.g. tcp://127.0.0.1:60615")
    st.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for an answer")
    st.add_argument("--json", action="store_true", help="the full status as one JSON object")
    st.set_defaults(func=cmd_status)

    pl = sub.add_parser("plans", help="write existing_plans_and_devices.yaml from the profile",
                        description=("Write the plans and devices the queue offers "
                                     "(existing_plans_and_devices.yaml) from the profile, without a "
                                     "server or IOCs."))
    pl.add_argument("--out", default=None,
                    help="output file (default: deploy/queueserver/existing_plans_and_devices.yaml)")
    pl.add_argument("--prefix", default=None, help="beamline PV prefix (default: SS:)")
    pl.set_defaults(func=cmd_plans, reports=(ValueError,))


def cmd_up(args) -> int:
    from strainstream.queue import QueueServer, QueueServerError

    from ._common import data_dir_of

    data_dir = data_dir_of(args)
    if not data_dir:
        raise CommandError("--data-dir is required (where the queue keeps its Redis and logs)")
    config, epics = profile_from_args(args)
    if config.uri is None:
        raise CommandError("no tiled server: pass --uri or the --data-dir of a running "
                           "`strainstream serve`")
    qs = QueueServer(data_dir, config.env(), epics_env=epics, startup_dir=args.startup_dir,
                     permissions=args.permissions, redis_url=args.redis,
                     control_port=args.control_port, info_port=args.info_port)
    with stop_requested() as done:
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
        finally:
            qs.stop()
    return done.exit_code("queue up")


def cmd_status(args) -> int:
    from strainstream.queue import QueueServerError, read_state, state_file

    from ._common import data_dir_of

    addr = args.control_addr
    if addr is None:
        data_dir = data_dir_of(args)
        if not data_dir:
            raise QueueServerError("pass --data-dir (of `strainstream queue up`) or --control-addr")
        info = read_state(data_dir)
        if info is None:
            raise QueueServerError(f"no queue server is running for {data_dir} "
                                   f"(no {state_file(data_dir)})")
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


def cmd_plans(args) -> int:
    from strainstream.profile import ProfileConfig
    from strainstream.queue import DEPLOY_DIR, write_existing_plans

    out = args.out or str(DEPLOY_DIR / "existing_plans_and_devices.yaml")
    names = write_existing_plans(out, ProfileConfig.from_env(prefix=args.prefix))
    print(f"{out}: plans {', '.join(names['plans'])}; devices {', '.join(names['devices'])}")
    return 0
