"""Options of the commands that build the beamline profile (``console``, ``queue up``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import add_server_options, config_from_args, data_dir_of, resolve_server

__all__ = ["add_profile_options", "profile_from_args"]


def add_profile_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``strainstream console`` and ``strainstream queue up``."""
    add_server_options(p, data_dir_default=None, data_dir_help=(
        "strainstream data directory: its running server (--uri), API key, DIR/detectors for the "
        "detector files, DIR/spool for the writer's spool"))
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
    """``(ProfileConfig, EPICS client env)`` from the options of :func:`add_profile_options`.

    Raises :class:`strainstream.errors.ServerError` / ``ValueError`` with a one-line message.
    """
    from strainstream.beamline import client_env, parse_ports
    from strainstream.datadir import detector_dir
    from strainstream.errors import ServerError
    from strainstream.profile import ProfileConfig

    config = config_from_args(args, detector_dir=args.detector_dir, prefix=args.prefix,
                              iocs=args.iocs or None,
                              table=False if args.no_table else None,
                              progress=False if args.no_progress else None)
    data_dir = data_dir_of(args, config)
    uri = key = None
    if config.uri or data_dir:
        target = resolve_server(args, need_server=True)
        uri, key = target.uri, target.api_key
        if key is None:
            raise ServerError(f"no API key for {uri}: pass --api-key or set $STRAINSTREAM_API_KEY")
    det = config.detector_dir
    if det is None and data_dir:
        det = str(detector_dir(data_dir))
    spool = str(Path(data_dir).resolve() / "spool") if data_dir else config.spool_dir
    profile = ProfileConfig.from_config(config, uri=uri, api_key=key, detector_dir=det,
                                        spool_dir=spool)
    epics: dict[str, str] = {}
    if args.beamline_ports:
        epics = client_env(parse_ports(args.beamline_ports).values())
    return profile, epics
