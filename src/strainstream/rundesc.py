"""Which data keys of a run hold what an analysis needs: one typed description per technique.

Plans write the description into the start document (``xrd_keys``, ``sxdm_keys``,
``txm_keys``); the analyses read it back with :func:`keys_from_start`. Runs recorded
elsewhere carry other keys: ``strainstream import --field NAME=KEY`` (and the same options of
replay and reprocess) rewrite the description with :func:`apply_fields`, and the start
document keeps what was supplied, so a replay reproduces it.

- :class:`XRDKeys` (operando XRD): ``image`` (the detector frames; None: the run's one
  external key) and the cycler readings ``voltage`` (V), ``current`` (mA), ``capacity``
  (mAh/g), ``time`` (s). Unset readings are found by suffix (``*_voltage_V`` ...) as before.
- :class:`SXDMKeys`: ``frames``, ``theta``, ``x``, ``y``, the raster indices ``itheta``,
  ``iy``, ``ix`` and ``fluorescence``.
- :class:`TXMKeys`: ``frames``, ``energy``, ``zp_z``, ``det_z``, ``sample_inout``, ``role``,
  ``ienergy``, ``repeat``, ``shutter``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

__all__ = ["DESCRIPTIONS", "SXDMKeys", "TXMKeys", "XRDKeys", "apply_fields", "apply_overrides",
           "field_names", "keys_from_start"]


@dataclass(frozen=True)
class _Keys:
    #: start-document key of the description
    START_KEY: ClassVar[str] = ""
    #: fields that must name a data key (never None)
    REQUIRED: ClassVar[tuple[str, ...]] = ()

    def to_start(self) -> dict[str, str | None]:
        """The description as the start document stores it."""
        return asdict(self)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_start(cls, start: dict[str, Any]):
        """The description of a start document (defaults where it names nothing);
        ValueError naming the key when a value is not a data-key name."""
        given = start.get(cls.START_KEY) or {}
        if not isinstance(given, dict):
            raise ValueError(f"{cls.START_KEY!r} must map roles to event keys, got {given!r}")
        known = {k: v for k, v in given.items() if k in cls.names()}
        for k, v in known.items():
            if not (isinstance(v, str) and v) and not (v is None and k not in cls.REQUIRED):
                raise ValueError(f"{cls.START_KEY}.{k} must be an event key name, got {v!r}")
        return cls(**known)


@dataclass(frozen=True)
class XRDKeys(_Keys):
    """Operando XRD: the detector frames and the cycler readings."""

    START_KEY: ClassVar[str] = "xrd_keys"

    image: str | None = None
    voltage: str | None = None
    current: str | None = None
    capacity: str | None = None
    time: str | None = None

    #: the suffix that finds a reading when the description names no key (runs before it)
    SUFFIXES: ClassVar[dict[str, str]] = {"voltage": "voltage_V", "current": "current_mA",
                                          "capacity": "capacity_mAh_g", "time": "time_s"}

    def reading_key(self, name: str, data_keys) -> str | None:
        """The data key of reading ``name`` among ``data_keys`` (timestamp columns already
        left out by the caller): the named one, else the shortest key ending in its suffix
        (``cycler_voltage_V``); None when the run has none."""
        named = getattr(self, name)
        if named is not None:
            return named if named in data_keys else None
        suffix = self.SUFFIXES[name]
        found = sorted((len(k), k) for k in data_keys
                       if isinstance(k, str) and k.endswith(suffix))
        return found[0][1] if found else None


@dataclass(frozen=True)
class SXDMKeys(_Keys):
    """SXDM raster x rocking: frames, motor positions and the plan's raster indices."""

    START_KEY: ClassVar[str] = "sxdm_keys"

    frames: str | None = None
    theta: str = "es_theta"
    x: str = "es_sample_x"
    y: str = "es_sample_y"
    itheta: str = "sxdm_itheta"
    iy: str = "sxdm_iy"
    ix: str = "sxdm_ix"
    fluorescence: str | None = None


@dataclass(frozen=True)
class TXMKeys(_Keys):
    """TXM-XANES: camera frames, motors and the plan's role/energy/repeat signals."""

    START_KEY: ClassVar[str] = "txm_keys"
    REQUIRED: ClassVar[tuple[str, ...]] = ("frames",)

    frames: str = "txm_image"
    energy: str = "es_energy"
    zp_z: str = "es_zp_z"
    det_z: str = "es_det_z"
    sample_inout: str = "es_sample_inout"
    role: str = "txm_role"
    ienergy: str = "txm_ienergy"
    repeat: str = "txm_repeat"
    shutter: str | None = None


#: experiment -> its description
DESCRIPTIONS: dict[str, type[_Keys]] = {"operando_xrd": XRDKeys, "sxdm": SXDMKeys, "txm_xanes": TXMKeys}


def field_names(experiment: str) -> tuple[str, ...]:
    """The names ``--field`` accepts for ``experiment``."""
    return DESCRIPTIONS[experiment].names()


def keys_from_start(start: dict[str, Any]):
    """The description of a run (by its ``experiment``); ValueError for a bad one."""
    return DESCRIPTIONS[start["experiment"]].from_start(start)


def apply_fields(start: dict[str, Any], fields_map: dict[str, str]) -> dict[str, Any]:
    """``start`` with its description's keys replaced by ``fields_map`` (NAME -> data key);
    ValueError naming an unknown name. Returns the (new) start document."""
    if not fields_map:
        return start
    cls = DESCRIPTIONS.get(start.get("experiment"))
    if cls is None:
        raise ValueError(f"--field: experiment {start.get('experiment')!r} has no run description "
                         f"(choose --experiment {' | '.join(DESCRIPTIONS)})")
    unknown = sorted(set(fields_map) - set(cls.names()))
    if unknown:
        raise ValueError(f"--field {', '.join(unknown)}: not an input of {start['experiment']} "
                         f"(its inputs: {', '.join(cls.names())})")
    current = cls.from_start(start).to_start()
    return {**start, cls.START_KEY: {**current, **fields_map}}


def apply_overrides(start: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """``start`` as the user says to analyse it: ``overrides`` may hold ``experiment``,
    ``calibration`` (a geometry dict merged over the recorded one) and ``fields`` (see
    :func:`apply_fields`); what was supplied is kept under ``strainstream_overrides``.
    ValueError for an unknown field."""
    if not overrides:
        return start
    out = dict(start)
    if overrides.get("experiment"):
        if out.get("experiment") not in (None, overrides["experiment"]):
            out.setdefault("experiment_recorded", out["experiment"])
        out["experiment"] = overrides["experiment"]
    if overrides.get("calibration"):
        out["calibration"] = {**(out.get("calibration") or {}), **overrides["calibration"]}
        if out["calibration"].get("wavelength_A") is not None:
            out["wavelength_A"] = out["calibration"]["wavelength_A"]
    out = apply_fields(out, dict(overrides.get("fields") or {}))
    out["strainstream_overrides"] = {k: v for k, v in overrides.items() if v}
    return out
