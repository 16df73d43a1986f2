"""``strainstream beamline up | status``: the simulated beamline's IOCs (:mod:`strainstream.beamline`)."""

from __future__ import annotations

import json

from ._common import CommandError, Parser, stop_requested

__all__ = ["main", "register", "status", "up"]


def register(commands) -> None:
    """Add ``beamline up | status`` to the sub-command parsers ``commands``."""
    p = commands.add_parser("beamline", help="simulated beamline IOCs: up | status")
    p.set_defaults(group_parser=p)
    sub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)

    up = sub.add_parser("up", help="start the simulated beamline's IOCs on loopback until Ctrl-C",
                        description="Start the simulated beamline IOCs on 127.0.0.1.")
    up.add_argument("--write-dir", default="./detector-data",
                    help="directory for the detector HDF5 files (default ./detector-data)")
    up.add_argument("--prefix", default="SS:")
    up.add_argument("--ports", help="fixed ports, e.g. cycler=5064,endstation=5066,beam=5068")
    # default None: every IOC (strainstream.config.IOC_NAMES; imported by the handler, not by --help)
    up.add_argument("--iocs", default=None, help="comma-separated subset")
    up.add_argument("--xrd-shape", type=int, default=2048)
    up.add_argument("--sxdm-shape", type=int, default=64)
    up.add_argument("--txm-shape", type=int, default=128)
    up.add_argument("--preset", default="SC-NM91")
    up.add_argument("--log-dir", help="IOC logs (default: a temporary directory)")
    up.add_argument("--json", action="store_true", help="print one JSON object once up")
    up.set_defaults(func=cmd_up, reports=(ValueError,))

    st = sub.add_parser("status", help="report which PVs answer",
                        description="Read the key PVs of each simulated-beamline IOC.")
    st.add_argument("--prefix", default="SS:")
    st.add_argument("--ports", help="name=port,... (default: EPICS_CA_ADDR_LIST, all IOCs)")
    st.add_argument("--timeout", type=float, default=1.0, help="seconds per PV")
    st.add_argument("--json", action="store_true")
    st.add_argument("--beamline", default="sim",
                    help="profile whose devices are listed (strainstream.beamlines: sim, "
                         "aps_11idc, nsls2_hxn_fxi, or a module path; default sim)")
    st.set_defaults(func=cmd_status, reports=(ValueError,))


def cmd_up(args) -> int:
    """Start the IOCs, print prefixes/ports, run until Ctrl-C or SIGTERM."""
    from strainstream.beamline import Beamline, parse_ports

    bl = Beamline(args.write_dir, prefix=args.prefix, ports=parse_ports(args.ports),
                  iocs=[s for s in _iocs(args).split(",") if s], xrd_shape=args.xrd_shape,
                  sxdm_shape=args.sxdm_shape, txm_shape=args.txm_shape, preset=args.preset,
                  log_dir=args.log_dir)
    with stop_requested() as done:  # Ctrl-C, SIGTERM (a supervisor) and SIGHUP stop the IOCs
        bl.start()
        try:
            env = bl.client_env()
            if args.json:
                print(json.dumps({"addresses": bl.addresses, "prefixes": bl.pv_prefixes(),
                                  "env": env, "write_dir": str(bl.write_dir),
                                  "log_dir": str(bl.log_dir)}), flush=True)
            else:
                for name, addr in bl.addresses.items():
                    print(f"{name:<11} {addr:<16} {' '.join(bl.pv_prefixes()[name])}")
                print(f"detector files: {bl.write_dir}   IOC logs: {bl.log_dir}")
                print("client environment:")
                for k, v in env.items():
                    print(f"  export {k}='{v}'")
                print("Ctrl-C stops the IOCs.", flush=True)
            while not done.wait(0.5):
                dead = [n for n in bl.iocs if not bl.is_running(n)]
                if dead:
                    raise CommandError(f"IOC(s) {dead} exited; see {bl.log_dir}")
        finally:
            bl.__exit__(None, None, None)
    return done.exit_code("beamline up")


def _iocs(args) -> str:
    """``--iocs``, every IOC when not given."""
    from strainstream.config import IOC_NAMES

    return ",".join(IOC_NAMES) if args.iocs is None else args.iocs


def cmd_status(args) -> int:
    """Which PVs answer (exit 0 if all, 1 if some don't)."""
    from strainstream.beamline import PROBE_PVS, parse_ports, probe
    from strainstream.config import IOC_NAMES, environment_value

    ports = parse_ports(args.ports)
    if ports:
        targets = {n: [f"127.0.0.1:{p}"] for n, p in ports.items()}
    else:
        addr = (environment_value("EPICS_CA_ADDR_LIST") or "").split()
        if not addr:
            raise CommandError("give --ports or set EPICS_CA_ADDR_LIST")
        targets = {n: addr for n in IOC_NAMES}
    result = {n: probe([args.prefix + s for s in PROBE_PVS[n]], a, args.timeout)
              for n, a in targets.items()}
    ok = all(v is not None for r in result.values() for v in r.values())
    devices = _device_table(args.prefix, sorted({a for v in targets.values() for a in v}),
                            args.timeout, args.beamline)
    if args.json:
        print(json.dumps({"ok": ok, "iocs": result, "devices": devices}, default=str))
    else:
        for n, r in result.items():
            n_ok = sum(v is not None for v in r.values())
            print(f"{n:<11} {' '.join(targets[n])}: {n_ok}/{len(r)} PVs answer")
            for pv, v in r.items():
                print(f"  {pv:<32} {'NOT ANSWERING' if v is None else v}")
        print("devices:")
        for d in devices:
            print(f"  {d['name']:<14} {d['prefix']:<18} {'connected' if d['connected'] else 'NOT CONNECTED':<14}"
                  f" {d['class']}")
    return 0 if ok else 1


def _device_table(prefix: str, addresses: list[str], timeout_s: float,
                  beamline: str = "sim") -> list[dict]:
    """Every device of the ``beamline`` profile (motors one by one): name, dotted (stock)
    class, the PV prefix a user would pass to it, and whether it connects."""
    from strainstream.config import apply_environment

    if addresses:  # before pyepics creates its CA context
        apply_environment({"EPICS_CA_AUTO_ADDR_LIST": "NO", "EPICS_CA_ADDR_LIST": " ".join(addresses),
                           "EPICS_CA_MAX_ARRAY_BYTES": "100000000"})
    from strainstream.beamlines import device_parts, device_table, load, make_devices

    profile = load(beamline)
    devices = make_devices(profile, prefix=prefix if beamline == "sim" else None)
    table = []
    for row, (_, dev) in zip(device_table(devices), device_parts(devices), strict=True):
        try:
            dev.wait_for_connection(timeout=timeout_s)
            if hasattr(dev, "cam"):  # an area detector's driver and file plugin both answer
                dev.cam.acquire.wait_for_connection(timeout=timeout_s)
                dev.hdf1.capture.wait_for_connection(timeout=timeout_s)
            connected = True
        except Exception:  # any failure means "does not connect" here
            connected = False
        table.append({**row, "connected": connected})
    return table


def main(argv: list[str] | None = None) -> int:
    """``strainstream beamline ARGV...``; returns the exit code."""
    from strainstream.cli import command_main

    return command_main("beamline")(argv)


def up(argv: list[str]) -> int:
    """``strainstream beamline up ARGV...``; returns the exit code."""
    return main(["up", *argv])


def status(argv: list[str]) -> int:
    """``strainstream beamline status ARGV...``; returns the exit code (1: some PVs do not answer)."""
    return main(["status", *argv])
