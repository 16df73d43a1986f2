"""The beamline profile: the one place that defines the RunEngine, the devices and the plans.

``strainstream console`` and the bluesky-queueserver startup code
(``deploy/queueserver/startup/00-strainstream.py``) both call :func:`build_namespace`, so an
IPython user and a queued plan see the very same objects:

=================  ===========================================================================
``RE``             RunEngine streaming every document to tiled
                   (:func:`strainstream.session.make_session`), with progress lines and a
                   BestEffortCallback table (plots off: no screen at a queue server)
``db``             the tiled client of the catalog (``None`` without a server)
``session``        the :class:`strainstream.session.Session` (``RE``, ``writer``, ``client``)
``bec``            the BestEffortCallback (``None`` with ``table=False``)
devices            ``cycler``, ``xrd`` (cycler IOC); ``es``, ``sxdm``, ``txm`` (endstation
                   IOC); ``beam`` (beam IOC) — ophyd devices, connected on first use
plans              ``operando_xrd``, ``adaptive_operando_xrd``, ``sxdm_map``, ``find_bragg``, ``txm_xanes``,
                   ``frame_series`` and the basics ``count``, ``scan``, ``rel_scan``,
                   ``list_scan``, ``mv``
``suspenders``     beam suspenders (ring current, shutter) for ``RE.install_suspender``;
                   the strainstream plans install their own when given ``beam=beam``
``bp``, ``bps``    ``bluesky.plans`` and ``bluesky.plan_stubs``
=================  ===========================================================================

Configuration comes from :class:`ProfileConfig` (arguments) or :meth:`ProfileConfig.from_env`
(environment: ``STRAINSTREAM_URI``, ``STRAINSTREAM_API_KEY``, ``STRAINSTREAM_PREFIX``,
``STRAINSTREAM_DETECTOR_DIR``, ``STRAINSTREAM_SPOOL_DIR``, ``STRAINSTREAM_IOCS``,
``STRAINSTREAM_TABLE``, ``STRAINSTREAM_PROGRESS``). Channel Access finds the IOCs through the usual EPICS variables
(``EPICS_CA_ADDR_LIST`` ...; :meth:`strainstream.beamline.Beamline.client_env` gives them for
the simulated beamline). Nothing here names a host or a port.

The strainstream plans type their device parameters ``bluesky.protocols.Readable`` (and use
postponed annotations); the queue server needs evaluated types to validate parameters and to
turn device names into devices, so :func:`plans` wraps each plan in a generator function with
the same name, docstring and behaviour whose signature holds the evaluated annotations (and
whose queue-server annotation lists the profile's device names).
"""

from __future__ import annotations

import functools
import inspect
import time
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEVICE_NAMES", "PLAN_NAMES", "ProfileConfig", "build_namespace", "connect_devices",
           "make_devices", "plans", "summary"]

#: devices of the (simulated) profile, by the IOC serving them: strainstream.beamlines.sim
DEVICE_NAMES: dict[str, tuple[str, ...]] = {
    "cycler": ("cycler", "xrd", "xrd_sim"),
    "endstation": ("es", "sxdm", "txm", "sxdm_sim", "txm_sim"),
    "beam": ("beam",),
}
#: plans of the profile: strainstream's experiments, then bluesky basics
PLAN_NAMES = ("operando_xrd", "adaptive_operando_xrd", "operando_cycling", "operando_gitt", "rate_series",
              "sxdm_map", "find_bragg", "txm_xanes", "frame_series", "count", "scan", "rel_scan", "list_scan",
              "mv")



@dataclass(frozen=True)
class ProfileConfig:
    """What the profile needs to know; every field has an environment variable.

    Parameters
    ----------
    uri : str, optional
        tiled API URI (``STRAINSTREAM_URI``). ``None``: no TiledWriter (documents go nowhere
        but the table), e.g. to list plans and devices without a server.
    api_key : str, optional
        Key with write access (``STRAINSTREAM_API_KEY``).
    prefix : str
        Beamline PV prefix (``STRAINSTREAM_PREFIX``, default ``SS:``).
    detector_dir : str, optional
        Where the detector IOCs write their HDF5 files (``STRAINSTREAM_DETECTOR_DIR``); it
        must be readable storage of the tiled server (``DATA_DIR/detectors`` for
        ``strainstream serve``). ``None``: each IOC's own ``--write-dir``.
    iocs : tuple of str
        Which IOCs' devices to create (``STRAINSTREAM_IOCS``, comma-separated; default all).
    table : bool
        Subscribe a BestEffortCallback table, plots off (``STRAINSTREAM_TABLE``).
    progress : bool
        Subscribe the progress printer (``STRAINSTREAM_PROGRESS``).
    spool_dir : str, optional
        Where the RunEngine's writer spools documents until tiled has them
        (``STRAINSTREAM_SPOOL_DIR``; default :func:`strainstream.session.default_spool_dir`).
    metadata : mapping
        Added to ``RE.md`` (every start document).
    figures : bool
        Subscribe :class:`strainstream.callbacks.plots.live.LiveFigures`: a matplotlib window
        per analysis of the running run, redrawn as the worker stores results (the console
        turns it on when there is a display; needs ``uri``).
    """

    uri: str | None = None
    api_key: str | None = None
    prefix: str = "SS:"
    detector_dir: str | None = None
    iocs: tuple[str, ...] = tuple(DEVICE_NAMES)
    table: bool = True
    progress: bool = True
    spool_dir: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    figures: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ProfileConfig:
        """The configuration given by ``STRAINSTREAM_*`` variables (this process's by default)
        and the configuration file (:func:`strainstream.config.load_config`).

        ``overrides`` (non-``None`` values) win over the environment.
        """
        from strainstream.config import load_config

        fields = set(_config_fields())
        config = load_config(environ=environ, **{k: v for k, v in overrides.items() if k in fields})
        return cls.from_config(config, **{k: v for k, v in overrides.items() if k not in fields})

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> ProfileConfig:
        """The profile's part of a :class:`strainstream.config.Config`; ``overrides``
        (non-``None`` values) win."""
        values: dict[str, Any] = {
            "uri": config.uri, "api_key": config.api_key, "prefix": config.prefix,
            "detector_dir": config.detector_dir, "iocs": tuple(config.iocs), "table": config.table,
            "progress": config.progress, "spool_dir": config.spool_dir,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def __post_init__(self) -> None:
        unknown = set(self.iocs) - set(DEVICE_NAMES)
        if unknown:
            raise ValueError(f"unknown IOC(s) {sorted(unknown)} in the profile; choose from "
                             f"{list(DEVICE_NAMES)}")
        if self.uri and not self.api_key:
            raise ValueError(f"no API key for the tiled server at {self.uri}: set "
                             "STRAINSTREAM_API_KEY or pass --api-key")

    def env(self) -> dict[str, str]:
        """The ``STRAINSTREAM_*`` variables that reproduce this configuration in a subprocess."""
        out = {"STRAINSTREAM_PREFIX": self.prefix, "STRAINSTREAM_IOCS": ",".join(self.iocs),
               "STRAINSTREAM_TABLE": "1" if self.table else "0",
               "STRAINSTREAM_PROGRESS": "1" if self.progress else "0"}
        if self.uri:
            out["STRAINSTREAM_URI"] = self.uri
        if self.api_key:
            out["STRAINSTREAM_API_KEY"] = self.api_key
        if self.detector_dir:
            out["STRAINSTREAM_DETECTOR_DIR"] = str(self.detector_dir)
        if self.spool_dir:
            out["STRAINSTREAM_SPOOL_DIR"] = str(self.spool_dir)
        return out


def _config_fields() -> tuple[str, ...]:
    """The fields of :class:`strainstream.config.Config`."""
    from strainstream.config import Config

    return tuple(Config.model_fields)


# ------------------------------------------------------------------------------- plans
def _queue_ready(plan: Callable[..., Any]) -> Callable[..., Any]:
    """``plan`` as a generator function whose signature holds evaluated annotations.

    The plans type their device parameters ``bluesky.protocols.Readable``. The queue server
    reads plan parameters with :func:`inspect.signature`, where postponed (string)
    annotations would stay string literals: here each annotation is evaluated, and the
    ``Readable`` parameters get an enum of the profile's device names (bluesky-queueserver's
    parameter annotation), so a queued item naming an unknown device is refused when it is
    added and the names become the device objects when it runs.
    """
    from bluesky.protocols import Readable

    hints = typing.get_type_hints(plan)
    sig = inspect.signature(plan)
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()]
    all_devices = [n for names in DEVICE_NAMES.values() for n in names]
    custom = {}
    for p in params:
        if p.annotation is Readable or p.annotation == (Readable | None):
            kind = "Device" if p.annotation is Readable else "typing.Optional[Device]"
            custom[p.name] = {"annotation": kind, "devices": {"Device": all_devices}}

    @functools.wraps(plan)
    def wrapper(*args: Any, **kwargs: Any):
        return (yield from plan(*args, **kwargs))

    wrapper.__signature__ = sig.replace(parameters=params,  # type: ignore[attr-defined]
                                        return_annotation=inspect.Signature.empty)
    # read by bluesky-queueserver (what its parameter_annotation_decorator sets)
    wrapper._custom_parameter_annotation_ = {"parameters": custom}  # type: ignore[attr-defined]
    return wrapper


def plans(client=None) -> dict[str, Callable[..., Any]]:
    """The plans of the profile, by name (see :data:`PLAN_NAMES`).

    ``client`` (the profile's tiled client, ``db``) feeds ``adaptive_operando_xrd`` the live
    analysis' results (:class:`strainstream.callbacks.live_results.LiveResults`); without it
    that plan decides from the cycler alone.
    """
    fixed = _plans()
    return {name: _queue_ready(_with_live_results(client)) if name == "adaptive_operando_xrd" else fixed[name]
            for name in PLAN_NAMES}


@functools.cache
def _plans() -> dict[str, Callable[..., Any]]:
    """The profile's plans that need nothing of the session (made once)."""
    import bluesky.plan_stubs as bps
    import bluesky.plans as bp

    from strainstream.plans.electrochem import operando_cycling, operando_gitt, rate_series
    from strainstream.plans.frames import frame_series
    from strainstream.plans.sxdm import find_bragg, sxdm_map
    from strainstream.plans.xanes import txm_xanes
    from strainstream.plans.xrd import operando_xrd

    ours = {f.__name__: _queue_ready(f)
            for f in (operando_xrd, operando_cycling, operando_gitt, rate_series, sxdm_map, find_bragg,
                      txm_xanes, frame_series)}
    basics = {"count": bp.count, "scan": bp.scan, "rel_scan": bp.rel_scan,
              "list_scan": bp.list_scan, "mv": bps.mv}
    return {**ours, **basics}


def _with_live_results(client) -> Callable[..., Any]:
    """``adaptive_operando_xrd`` with the live results of ``client`` bound, and without the
    parameters a queued item cannot carry (``agent``, ``results``: objects)."""
    from strainstream.plans.adaptive import adaptive_operando_xrd

    @functools.wraps(adaptive_operando_xrd)
    def plan(*args: Any, **kwargs: Any):
        live = None
        if client is not None:
            from strainstream.callbacks.live_results import LiveResults

            live = LiveResults(client)
        try:
            return (yield from adaptive_operando_xrd(*args, results=live, **kwargs))
        finally:
            if live is not None:
                live.close()

    sig = inspect.signature(adaptive_operando_xrd)
    plan.__signature__ = sig.replace(parameters=[  # type: ignore[attr-defined]
        p for name, p in sig.parameters.items() if name not in ("agent", "results")])
    plan.__annotations__ = {k: v for k, v in adaptive_operando_xrd.__annotations__.items()
                            if k not in ("agent", "results")}
    return plan


# ----------------------------------------------------------------------------- devices
def make_devices(config: ProfileConfig) -> dict[str, Any]:
    """The beamline's ophyd devices (not connected: ophyd connects on first use).

    Keys as in :data:`DEVICE_NAMES` for the IOCs in ``config.iocs``; the detectors write to
    ``config.detector_dir``.
    """
    from strainstream.beamlines import make_devices as profile_devices

    return profile_devices("sim", iocs=config.iocs, prefix=config.prefix,
                           write_dir=config.detector_dir)


def connect_devices(ns: Mapping[str, Any], timeout_s: float = 10.0) -> list[str]:
    """Wait up to ``timeout_s`` in all for the devices of ``ns`` to connect.

    Returns the names of those that did not (their IOC is down or unreachable); they connect
    later by themselves when their IOC answers. Nothing is raised: one dead IOC must not
    keep the console or the queue from using the others.
    """
    deadline = time.monotonic() + timeout_s
    missing = []
    for name in (n for names in DEVICE_NAMES.values() for n in names if n in ns):
        try:
            ns[name].wait_for_connection(timeout=max(0.1, deadline - time.monotonic()))
        except Exception:  # ophyd raises TimeoutError, or a device-specific error naming the IOC
            missing.append(name)
    return missing


# --------------------------------------------------------------------------- namespace
def _run_engine(config: ProfileConfig):
    """A Session: RunEngine + TiledWriter (+ progress) from make_session, or a bare RunEngine."""
    from strainstream.session import Session, make_session

    if config.uri:
        return make_session(config.uri, config.api_key or "", progress=config.progress,
                            spool_dir=config.spool_dir)
    from bluesky import RunEngine

    RE = RunEngine({}, call_returns_result=False)
    if config.progress:
        from strainstream.callbacks.progress import ProgressPrinter

        RE.subscribe(ProgressPrinter())
    return Session(RE=RE, writer=None, client=None)


def build_namespace(config: ProfileConfig | None = None) -> dict[str, Any]:
    """The profile's namespace: ``RE``, ``db``, ``session``, ``bec``, devices, plans, ...

    Parameters
    ----------
    config : ProfileConfig, optional
        Default :meth:`ProfileConfig.from_env`.

    Returns
    -------
    dict
        Names -> objects, for ``IPython.start_ipython(user_ns=...)`` or the globals of the
        queue server's startup script. Building it connects to tiled (when ``config.uri`` is
        set) but not to the IOCs.
    """
    import bluesky.plan_stubs as bps
    import bluesky.plans as bp

    from strainstream.plans._common import beam_suspenders

    config = config or ProfileConfig.from_env()
    session = _run_engine(config)
    RE = session.RE
    RE.md.update(dict(config.metadata))
    bec = None
    if config.table:
        import matplotlib

        from strainstream.config import environment_value

        if not environment_value("DISPLAY") and not environment_value("MPLBACKEND"):
            matplotlib.use("Agg")  # no screen: BestEffortCallback must never open a window
        from bluesky.callbacks.best_effort import BestEffortCallback

        bec = BestEffortCallback()
        bec.disable_plots()
        RE.subscribe(bec)
    if config.figures and session.client is not None:
        from strainstream.callbacks.plots.live import LiveFigures

        RE.subscribe(LiveFigures(session.client))
    devices = make_devices(config)
    ns: dict[str, Any] = {"RE": RE, "db": session.client, "session": session, "bec": bec,
                          "bp": bp, "bps": bps}
    ns.update(devices)
    ns.update(plans(session.client))
    ns["suspenders"] = beam_suspenders(devices["beam"]) if "beam" in devices else []
    return ns


def summary(ns: Mapping[str, Any]) -> str:
    """A few lines naming the RunEngine's destination, the devices and the plans of ``ns``."""
    devices = [n for names in DEVICE_NAMES.values() for n in names if n in ns]
    db = ns.get("db")
    where = getattr(getattr(db, "context", None), "api_uri", None) if db is not None else None
    lines = [
        f"RE      RunEngine -> {'tiled ' + str(where) if where else 'no tiled server (documents not stored)'}",
        "devices " + ", ".join(devices),
        "plans   " + ", ".join(n for n in PLAN_NAMES if n in ns),
        "also    db (tiled client), bec, suspenders, bp, bps; help(operando_xrd) for a plan",
    ]
    return "\n".join(lines)

