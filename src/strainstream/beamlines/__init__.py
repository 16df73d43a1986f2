"""Beamline profiles: one module per beamline, one typed factory per device.

A profile module (``strainstream.beamlines.<name>``) defines

- ``PREFIX``: the default PV prefix that its factories put in front of their records (``""``
  when every factory names its full PVs);
- ``IOCS``: ``{ioc or service name: (device names...)}`` — which devices answer together (an
  IOC, a detector server, a file); the simulated profile's names are the IOCs that
  :class:`strainstream.beamline.Beamline` starts;
- one factory per device, ``def xrd(ctx: Context) -> IOCAreaDetector``, registered in
  ``DEVICES = {"xrd": xrd, ...}``. A factory only constructs (no Channel Access traffic): the
  device connects on first use.

:func:`make_devices` builds a profile's devices (all, or those of some IOCs), with
``mock=True`` as disconnected fake-signal devices (``ophyd.sim.make_fake_device``) for
construction and plan-validation tests. :func:`device_table` lists name, dotted class and PV
prefix of each device. ``sim`` (the default) is the simulated beamline of this package; the
two others are examples of real beamline layouts (PV names in their facilities' styles).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from strainstream.errors import UsageError

__all__ = ["PROFILES", "Context", "device_parts", "device_table", "load", "make_devices",
           "names_by_ioc"]

#: shipped profiles (module names); ``sim`` is the default
PROFILES = ("sim", "aps_11idc", "nsls2_hxn_fxi")


@dataclass(frozen=True)
class Context:
    """What a device factory may use.

    Parameters
    ----------
    prefix : str
        PV prefix (the profile's ``PREFIX`` unless overridden).
    write_dir : path, optional
        Detector data directory (shared with the detector IOC hosts).
    addresses : mapping
        ``{ioc name: "host:port"}`` for error messages (the simulated beamline's).
    mock : bool
        Disconnected fake-signal devices.
    """

    prefix: str = ""
    write_dir: str | Path | None = None
    addresses: Mapping[str, str] = field(default_factory=dict)
    mock: bool = False

    def address(self, ioc: str) -> str | None:
        return self.addresses.get(ioc)


def load(name: str = "sim") -> ModuleType:
    """The profile module ``strainstream.beamlines.<name>``, or else the importable module
    ``name`` (e.g. ``mybeamline`` on ``PYTHONPATH``) that follows the same layout."""
    candidates = [name] if "." in name else [f"strainstream.beamlines.{name}", name]
    prof = None
    for module in candidates:
        try:
            prof = importlib.import_module(module)
            break
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    if prof is None:
        raise UsageError(f"no beamline profile {name!r}; shipped: {', '.join(PROFILES)} "
                         "(or the name of an importable module, e.g. mybeamline)")
    for attr in ("PREFIX", "IOCS", "DEVICES"):
        if not hasattr(prof, attr):
            raise UsageError(f"beamline profile {prof.__name__} defines no {attr}")
    return prof


def names_by_ioc(profile: str | ModuleType = "sim") -> dict[str, tuple[str, ...]]:
    """``{ioc: device names}`` of a profile."""
    prof = load(profile) if isinstance(profile, str) else profile
    return {k: tuple(v) for k, v in prof.IOCS.items()}


def make_devices(profile: str | ModuleType = "sim", *, iocs: Iterable[str] | None = None,
                 prefix: str | None = None, write_dir: str | Path | None = None,
                 addresses: Mapping[str, str] | None = None, mock: bool = False,
                 only: Iterable[str] | None = None) -> dict[str, Any]:
    """The devices of ``profile`` (not connected), by name.

    ``iocs`` restricts to the devices of those IOCs, ``only`` to those names. Real (not mock)
    devices' signals get the configuration's ``ca_connection_timeout_s`` to connect.
    """
    prof = load(profile) if isinstance(profile, str) else profile
    ctx = Context(prefix=prof.PREFIX if prefix is None else prefix, write_dir=write_dir,
                  addresses=dict(addresses or {}), mock=mock)
    groups = names_by_ioc(prof)
    unknown = set(iocs or ()) - set(groups)
    if unknown:
        raise UsageError(f"unknown IOC(s) {sorted(unknown)} in profile {prof.__name__}; "
                         f"choose from {list(groups)}")
    wanted = [n for ioc, names in groups.items() if iocs is None or ioc in set(iocs) for n in names]
    if only is not None:
        wanted = [n for n in wanted if n in set(only)]
    factories: Mapping[str, Callable[[Context], Any]] = prof.DEVICES
    if not mock:  # before the first CA client context: no "caRepeater couldn't be located"
        from strainstream.carepeater import ensure_repeater
        from strainstream.config import load_config
        from strainstream.devices._ioc import set_connection_timeout

        ensure_repeater()
        set_connection_timeout(load_config().ca_connection_timeout_s)
    return {name: factories[name](ctx) for name in wanted}


def device_parts(devices: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``(name, device)`` for each device, containers of motors expanded to their motors (what
    a user passes a prefix to)."""
    from ophyd import EpicsMotor

    parts = []
    for name, dev in devices.items():
        motors = []
        if not isinstance(dev, EpicsMotor) and hasattr(dev, "component_names"):
            motors = [c for c in dev.component_names
                      if isinstance(getattr(type(dev), c).cls, type)
                      and issubclass(getattr(type(dev), c).cls, EpicsMotor)]
        parts.extend([(m, getattr(dev, m)) for m in motors] or [(name, dev)])
    return parts


def device_table(devices: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``[{"name", "class", "prefix"}]`` for :func:`device_parts` of ``devices``; a mock
    device is named by the class it fakes."""
    rows = []
    for name, part in device_parts(devices):
        cls = type(part)
        if getattr(cls, "__module__", "").startswith("ophyd.sim"):
            cls = cls.__mro__[1]
        rows.append({"name": name, "class": f"{cls.__module__}.{cls.__qualname__}",
                     "prefix": part.prefix})
    return rows
