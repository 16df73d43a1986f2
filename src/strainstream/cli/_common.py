"""What every sub-command shares: the parser class, server options, finding the server.

- :class:`Parser`: argparse whose usage errors become one :class:`~strainstream.errors.UsageError`
  line (``strainstream COMMAND: error: MESSAGE; usage: ...``), exit code 2.
- :func:`add_server_options`: the one definition of ``--data-dir``, ``--uri``, ``--api-key``
  (and ``--config``), with defaults from :mod:`strainstream.config`.
- :func:`resolve_server`: where the tiled server of those options is and which key to use —
  the one place that knows "``--uri``, else the server running on ``--data-dir``, else the
  catalog in ``--data-dir`` opened in-process".

Nothing here imports tiled, bluesky or numpy at module level: ``strainstream --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from strainstream.errors import StrainstreamError, UsageError

__all__ = [
    "DEFAULT_DATA_DIR",
    "CommandError",
    "Parser",
    "ServerTarget",
    "add_server_options",
    "config_from_args",
    "data_dir_of",
    "get_run",
    "number",
    "open_catalog",
    "print_json",
    "resolve_server",
    "stop_requested",
]

DEFAULT_DATA_DIR = "strainstream-data"
#: shortest uid prefix accepted for a run
MIN_UID_PREFIX = 6


class CommandError(StrainstreamError):
    """A sub-command cannot do what was asked; the message says why and what to do."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (a :class:`UsageError`)."""

    def error(self, message: str):  # noqa: D102 - argparse API
        if message.startswith("argument -"):  # names the option and the allowed values
            raise UsageError(message)
        usage = " ".join(self.format_usage().split())
        raise UsageError(f"{message} ({usage})")


def number(kind: type = float, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, unit: str = "") -> Callable[[str], float]:
    """An argparse ``type`` accepting a finite number in ``[low, high]`` (``(low, high]`` with
    ``low_open``); anything else is a one-line error naming the allowed range."""
    import math

    lo_br = "(" if low_open else "["
    allowed = (f"{lo_br}{'-inf' if low is None else f'{low:g}'}, "
               f"{'inf' if high is None else f'{high:g}'}]{(' ' + unit) if unit else ''}")

    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}; allowed {allowed}") from None
        if (not math.isfinite(value) or (low is not None and (value < low or (low_open and value == low)))
                or (high is not None and value > high)):
            raise argparse.ArgumentTypeError(f"{text} is out of range; allowed {allowed}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


class StopRequest(threading.Event):
    """Set by a stop signal; :attr:`signum` says which (``None`` until one arrived)."""

    signum: int | None = None

    def exit_code(self, command: str) -> int:
        """Say in one line that ``command`` stopped on the signal; ``128 + signum`` (130 for
        Ctrl-C, 143 for SIGTERM, 129 for SIGHUP), or 0 when no signal stopped it."""
        import signal

        if self.signum is None:
            return 0
        print(f"strainstream {command}: stopped ({signal.Signals(self.signum).name}); "
              "every service it started is stopped", file=sys.stderr, flush=True)
        return 128 + self.signum


@contextlib.contextmanager
def stop_requested(signals: tuple[int, ...] | None = None) -> Iterator[StopRequest]:
    """A :class:`StopRequest` set by SIGTERM, SIGINT or SIGHUP (or ``signals``) while the
    block runs; the previous handlers come back afterwards. Long-running commands (``serve``,
    ``queue up``, ``deploy up``, ``beamline up``) loop until it is set, shut their services
    down cleanly and exit with :meth:`StopRequest.exit_code`."""
    import signal

    done = StopRequest()
    signals = signals or (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def _handler(signum, frame):
        done.signum = signum
        done.set()

    previous = {s: signal.signal(s, _handler) for s in signals}
    try:
        yield done
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _name_value_pairs(text: str, what: str) -> dict[str, str]:
    out = {}
    for item in (p for p in text.split(",") if p.strip()):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise CommandError(f"{what} {text!r}: expected NAME=VALUE[,NAME=VALUE...]")
        out[key] = value
    return out


def add_description_options(p: argparse.ArgumentParser, experiment_help: str) -> None:
    """``--experiment``, ``--poni``, ``--wavelength``, ``--field``, ``--root-map``: how to analyse
    a run recorded elsewhere (import, replay, reprocess); see :func:`run_overrides`."""
    p.add_argument("--experiment", choices=("operando_xrd", "sxdm", "txm_xanes"), default=None,
                   help=experiment_help)
    p.add_argument("--poni", default=None, metavar="FILE", help="pyFAI geometry of the XRD detector")
    p.add_argument("--wavelength", type=number(float, low=0.01, high=10, low_open=True, unit="Å"),
                   default=None, help="X-ray wavelength in Å (overrides the PONI file's)")
    p.add_argument("--field", action="append", default=[], metavar="NAME=KEY,...",
                   help="map the analysis' inputs to the run's data keys (operando_xrd: image, "
                        "voltage, current, capacity, time; sxdm: frames, theta, x, y, itheta, iy, "
                        "ix, fluorescence; txm_xanes: frames, energy, zp_z, det_z, sample_inout, "
                        "role, ienergy, repeat, shutter) (repeatable)")
    p.add_argument("--root-map", action="append", default=[], metavar="OLD=NEW",
                   help="read detector files recorded under OLD from NEW (repeatable), like "
                        "databroker's root_map")


def root_map_of(args: argparse.Namespace) -> dict[str, str]:
    """``--root-map OLD=NEW ...`` as a dict."""
    out: dict[str, str] = {}
    for item in args.root_map:
        out.update(_name_value_pairs(item, "--root-map"))
    return out


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``{"experiment", "calibration", "fields"}`` from :func:`add_description_options`
    (empty values left out; the PONI file read, the wavelength merged into it)."""
    fields: dict[str, str] = {}
    for item in args.field:
        fields.update(_name_value_pairs(item, "--field"))
    calibration: dict[str, Any] = {}
    if args.poni is not None:
        from strainstream.xrd import load_poni

        try:
            calibration = load_poni(args.poni)
        except ValueError as exc:
            raise CommandError(f"--poni {args.poni}: {exc}") from None
    if args.wavelength is not None:
        calibration["wavelength_A"] = args.wavelength
    out = {"experiment": args.experiment, "calibration": calibration, "fields": fields}
    return {k: v for k, v in out.items() if v}


def add_server_options(p: argparse.ArgumentParser, *, data_dir_default: str | None = DEFAULT_DATA_DIR,
                       data_dir_help: str | None = None, data_dir_required: bool = False,
                       uri: bool = True, api_key: bool = True, api_key_help: str | None = None) -> None:
    """Add ``--config``, ``--data-dir`` and (optionally) ``--uri`` / ``--api-key`` to ``p``.

    Their values override ``$STRAINSTREAM_*`` and the configuration file (see
    :func:`config_from_args`); a default of ``None`` means "not given".
    """
    p.add_argument("--config", default=None, metavar="FILE",
                   help="configuration file (YAML/JSON; default $STRAINSTREAM_CONFIG)")
    p.set_defaults(_data_dir_default=data_dir_default)
    p.add_argument("--data-dir", default=None, required=data_dir_required, help=data_dir_help or (
        "strainstream data directory (default: $STRAINSTREAM_DATA_DIR, else "
        f"./{DEFAULT_DATA_DIR})" if data_dir_default else "strainstream data directory"))
    if uri:
        p.add_argument("--uri", default=None,
                       help="tiled API URI of a running server (default: $STRAINSTREAM_URI, else the "
                            "one serving --data-dir, else the catalog in --data-dir opened directly)")
    if api_key:
        p.add_argument("--api-key", default=None, help=api_key_help or (
            "API key (default: $STRAINSTREAM_API_KEY, else DATA_DIR/.api_key)"))


def config_from_args(args: argparse.Namespace, **extra: Any):
    """The :class:`~strainstream.config.Config` of a command: options over environment over file.

    ``data_dir`` is ``None`` when neither an option, the environment nor the file names one
    and the command has no default data directory.
    """
    from strainstream.config import load_config

    config = load_config(getattr(args, "config", None), data_dir=getattr(args, "data_dir", None),
                         uri=getattr(args, "uri", None), api_key=getattr(args, "api_key", None),
                         **extra)
    return config


def data_dir_of(args: argparse.Namespace, config=None) -> str | None:
    """--data-dir, else $STRAINSTREAM_DATA_DIR / the file, else the command's default."""
    if config is None:
        config = config_from_args(args)
    if getattr(args, "data_dir", None):
        return args.data_dir
    if "data_dir" in config.model_fields_set:
        return config.data_dir
    return getattr(args, "_data_dir_default", DEFAULT_DATA_DIR)


@dataclass(frozen=True)
class ServerTarget:
    """Where a command's catalog is: a server (``uri`` + ``api_key``) or a data directory."""

    uri: str | None
    api_key: str | None
    data_dir: str | None

    @property
    def offline(self) -> bool:
        """No server: the catalog in :attr:`data_dir` is opened in-process."""
        return self.uri is None


def resolve_server(args: argparse.Namespace, *, need_server: bool = False, key: str = "api",
                   why: str = "") -> ServerTarget:
    """Find the tiled server a command should talk to, and its key.

    Order: ``--uri`` (key from ``--api-key``/``$STRAINSTREAM_API_KEY``/``DATA_DIR/.api_key``),
    else the server running on ``--data-dir`` (its key file), else — unless ``need_server`` —
    the data directory itself (:attr:`ServerTarget.offline`).

    Parameters
    ----------
    key : {"api", "admin"}
        Which key to resolve: the writer/reader key or the key-management key (``--admin-key``).
    why : str
        Appended to the "no server running" message (what the server is needed for).

    Raises
    ------
    strainstream.errors.ServerError
        The data directory does not exist, or no server runs on it and one is needed.
    """
    from strainstream.auth import admin_key_for, api_key_for
    from strainstream.client import running_server
    from strainstream.errors import ServerError

    config = config_from_args(args)
    data_dir = data_dir_of(args, config)

    def key_of(directory: str | None, required: bool) -> str | None:
        if key == "admin":  # key management always needs the admin key
            given = getattr(args, "admin_key", None) or config.admin_key
            return admin_key_for(directory or ".", given, create=False)
        if config.api_key:
            return config.api_key
        if directory and os.path.exists(os.path.join(directory, ".api_key")):
            return api_key_for(directory, create=False)
        if required:
            return api_key_for(directory or ".", create=False)  # raises: names what to do
        return None

    if config.uri:
        return ServerTarget(config.uri, key_of(data_dir, required=False), data_dir)
    if not data_dir or not os.path.isdir(data_dir):
        raise ServerError(
            f"data directory {data_dir!r} does not exist; pass --data-dir DIR "
            "(the one given to `strainstream demo` or `strainstream serve`) or --uri"
        )
    info = running_server(data_dir)
    if info is not None:
        return ServerTarget(info.uri, key_of(data_dir, required=True), data_dir)
    if need_server:
        raise ServerError(
            f"no tiled server is running for {data_dir}; start one with "
            f"`strainstream serve --data-dir {data_dir}` or pass --uri{why}"
        )
    return ServerTarget(None, None, data_dir)


def open_catalog(args: argparse.Namespace, *, need_server: bool = False):
    """A tiled client for the catalog of a command's server options (see :func:`resolve_server`)."""
    from strainstream.client import connect, open_offline

    target = resolve_server(args, need_server=need_server)
    if target.offline:
        return open_offline(target.data_dir)
    return connect(target.uri, target.api_key)


def get_run(root, uid: str):
    """The run ``uid`` (or a unique prefix of 6+ characters) of the catalog ``root``."""
    from strainstream.errors import ServerError

    if not uid or uid == "derived":
        raise ServerError(f"{uid!r} is not a run uid")
    try:
        node = root[uid]
    except KeyError:
        # allow a unique prefix, as people copy the first 8 characters
        if len(uid) < MIN_UID_PREFIX:
            raise ServerError(f"no run with uid {uid!r} in the catalog; a uid prefix needs at least "
                              f"{MIN_UID_PREFIX} characters (`strainstream runs` lists the runs)") from None
        matches = [k for k in root if k.startswith(uid) and k != "derived"]
        if not matches:
            raise ServerError(f"no run with uid {uid!r} in the catalog") from None
        if len(matches) > 1:
            shown = ", ".join(sorted(matches)[:5]) + (" ..." if len(matches) > 5 else "")
            raise ServerError(f"uid prefix {uid!r} matches {len(matches)} runs ({shown}); give more "
                              "characters") from None
        node = root[matches[0]]
    if "start" not in (node.metadata or {}):
        raise ServerError(f"{uid!r} is not a run (no start document)")
    return node


def print_json(obj: Any) -> None:
    """``obj`` as one line of strict JSON (no NaN) on stdout."""
    print(json.dumps(obj, indent=None, allow_nan=False))
