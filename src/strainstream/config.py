"""strainstream's configuration: one object, loaded from a file and ``STRAINSTREAM_*`` variables.

Every setting the glue layer needs (where the data directory and the tiled server are, the
keys, the beamline prefix and IOCs, the spool, the worker shard, the Dask scheduler, the
simulated IOCs' socket options) is a field of :class:`Config`. Modules receive a
:class:`Config` (or values taken from one); only this module reads the process environment,
and only this module changes it (:func:`apply_environment`, for libraries such as pyepics
and caproto that read their settings from it).

Where a value comes from, strongest first:

1. keyword overrides (what a command-line option gave; ``None`` means "not given"),
2. ``STRAINSTREAM_<FIELD>`` environment variables (``STRAINSTREAM_API_KEY``,
   ``STRAINSTREAM_IOCS=cycler,beam``, ``STRAINSTREAM_TABLE=0`` ...),
3. the configuration file: ``--config FILE`` or ``$STRAINSTREAM_CONFIG`` (YAML or JSON,
   field names as keys; unknown keys are refused),
4. the defaults below.

Variables named ``STRAINSTREAM_*`` that are not fields (``STRAINSTREAM_PG_HOST``,
``STRAINSTREAM_REDIS_URL`` ... are placeholders the deployment's tiled configuration expands,
see ``deploy/tiled/``) are ignored here.

The JSON schema of the file is :func:`json_schema` (``strainstream config schema``; a copy is
kept in ``docs/config.schema.json`` and a test checks that it is current).

This module imports pydantic and yaml only, so the analysis core and the IOCs may use it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from strainstream.errors import StrainstreamError

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "Config",
    "ConfigError",
    "apply_environment",
    "json_schema",
    "load_config",
    "process_environment",
]

ENV_PREFIX = "STRAINSTREAM_"
#: the variable naming a configuration file
CONFIG_ENV = "STRAINSTREAM_CONFIG"
#: the IOCs of the simulated beamline, in start order
IOC_NAMES = ("cycler", "endstation", "beam")


class ConfigError(StrainstreamError, ValueError):
    """The configuration file or a ``STRAINSTREAM_*`` variable holds a value that is not allowed."""


class Config(BaseModel):
    """The settings of one strainstream process (command, worker, console, IOC).

    Keys (``api_key``, ``admin_key``) are never shown in ``repr``, ``strainstream config
    show`` or a log.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # -- where the data and the server are
    data_dir: str = Field("strainstream-data", description=(
        "Data directory: catalog, tables, detector files, keys, logs (`strainstream serve`)."))
    uri: str | None = Field(None, description=(
        "tiled API URI of a running server, e.g. http://127.0.0.1:8000/api/v1; "
        "default: the server of data_dir, else the catalog opened in-process."))
    api_key: str | None = Field(None, repr=False, description=(
        "Writer API key (hexadecimal, >= 32 digits); default DATA_DIR/.api_key."))
    admin_key: str | None = Field(None, repr=False, description=(
        "Key-management API key; default DATA_DIR/.admin_key."))
    # -- the beamline (profile)
    prefix: str = Field("SS:", description="Beamline PV prefix of the profile's devices.")
    iocs: tuple[str, ...] = Field(IOC_NAMES, description=(
        "Which IOCs' devices the profile creates (environment: comma-separated)."))
    detector_dir: str | None = Field(None, description=(
        "Where the detector IOCs write HDF5 (readable storage of the tiled server); "
        "default: DATA_DIR/detectors, else each IOC's own --write-dir."))
    table: bool = Field(True, description="Console/queue server: print a BestEffortCallback table.")
    progress: bool = Field(True, description="Console/queue server: print scan progress lines.")
    spool_dir: str | None = Field(None, description=(
        "Where the RunEngine's writer spools documents until tiled has them; default: "
        "the user's state directory (…/strainstream/spool)."))
    # -- workers and batch reprocessing
    worker_shard: str | None = Field(None, description=(
        "I/N: a worker follows only shard I of N of the runs (0 <= I < N)."))
    dask_scheduler: str | None = Field(None, description=(
        "Address of a Dask scheduler for `strainstream reprocess` (default: a LocalCluster)."))
    ca_connection_timeout_s: float = Field(5.0, gt=0.0, le=300.0, description=(
        "How long an ophyd EPICS signal waits for its channel to connect before the IOC is "
        "named as not answering (ophyd's default is 1 s: areaDetector signals connect lazily, "
        "at their first use in a plan, and a loaded machine can take longer)."))
    # -- the simulated IOCs
    ioc_nodelay: bool = Field(True, description=(
        "Simulated IOCs set TCP_NODELAY on client sockets (off only for the benchmark)."))
    ioc_monitor_flush_s: float = Field(0.02, ge=0.0, le=1.0, description=(
        "Simulated IOCs: pause before a put completes so the last monitor update arrives first."))
    ioc_monitor_batch_s: float = Field(0.001, gt=0.0, le=0.1, description=(
        "Simulated IOCs: how long caproto holds a monitor update for more to batch with it "
        "(caproto's default is 10 ms, doubled while updates keep coming; EPICS rsrv sends at once)."))

    @field_validator("iocs", mode="before")
    @classmethod
    def _split_iocs(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = tuple(s.strip() for s in value.split(",") if s.strip())
        return value

    @field_validator("iocs")
    @classmethod
    def _known_iocs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(IOC_NAMES))
        if unknown:
            raise ValueError(f"unknown IOC(s) {unknown}; choose from {list(IOC_NAMES)}")
        return value

    @field_validator("worker_shard")
    @classmethod
    def _shard_form(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            i, n = (int(part) for part in value.split("/"))
        except ValueError:
            raise ValueError(f"worker_shard must be I/N (e.g. 0/4), got {value!r}") from None
        if not (n >= 1 and 0 <= i < n):
            raise ValueError(f"worker_shard {value!r}: need 0 <= I < N")
        return value

    def shard(self) -> tuple[int, int] | None:
        """:attr:`worker_shard` as ``(i, n)``, or ``None`` for all runs."""
        if self.worker_shard is None:
            return None
        i, n = (int(p) for p in self.worker_shard.split("/"))
        return i, n

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` (``None`` values are ignored), validated again."""
        values = self.model_dump()
        values.update({k: v for k, v in changes.items() if v is not None})
        return _validated(values, "the given options")

    def environment(self) -> dict[str, str]:
        """The ``STRAINSTREAM_*`` variables that reproduce this configuration in a subprocess
        (fields equal to their default are left out)."""
        out: dict[str, str] = {}
        defaults = Config.model_construct()
        for name in Config.model_fields:
            value = getattr(self, name)
            if value is None or value == getattr(defaults, name, None):
                continue
            if isinstance(value, bool):
                text = "1" if value else "0"
            elif isinstance(value, tuple):
                text = ",".join(value)
            else:
                text = str(value)
            out[ENV_PREFIX + name.upper()] = text
        return out

    def redacted(self) -> dict[str, Any]:
        """The settings as plain data with keys replaced by ``"<set>"``."""
        out = self.model_dump(mode="json")
        for name in ("api_key", "admin_key"):
            if out.get(name):
                out[name] = "<set>"
        return out


def _validated(values: Mapping[str, Any], where: str) -> Config:
    try:
        return Config.model_validate(dict(values))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '?'}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors())
        raise ConfigError(f"invalid configuration in {where}: {problems}") from None


def _read_file(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # yaml/json syntax errors of many kinds
        raise ConfigError(f"configuration file {path} is not valid YAML/JSON: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {path} must hold a mapping of settings, "
                          f"not {type(data).__name__}")
    return data


def _from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in Config.model_fields:
        value = environ.get(ENV_PREFIX + name.upper())
        if value is not None and value != "":
            out[name] = value
    return out


def load_config(path: str | os.PathLike | None = None, *, environ: Mapping[str, str] | None = None,
                **overrides: Any) -> Config:
    """The configuration of this process.

    Parameters
    ----------
    path : path, optional
        Configuration file (YAML, or JSON by suffix); default ``$STRAINSTREAM_CONFIG`` if set.
    environ : mapping, optional
        The environment to read ``STRAINSTREAM_*`` from (default: this process's).
    **overrides
        Field values that win over file and environment; ``None`` means "not given".

    Raises
    ------
    ConfigError
        A value is not allowed; the message names the field and the source.
    """
    env = os.environ if environ is None else environ
    path = path or env.get(CONFIG_ENV) or None
    values: dict[str, Any] = {}
    where = []
    if path:
        values.update(_read_file(path))
        where.append(str(path))
    from_env = _from_environ(env)
    if from_env:
        where.append("the environment (" + ", ".join(ENV_PREFIX + k.upper() for k in from_env) + ")")
    values.update(from_env)
    given = {k: v for k, v in overrides.items() if v is not None}
    if given:
        where.append("the command line")
    values.update(given)
    return _validated(values, " / ".join(where) or "the defaults")


def json_schema() -> dict[str, Any]:
    """The JSON schema of the configuration file (and of the ``STRAINSTREAM_*`` variables)."""
    schema = Config.model_json_schema()
    schema["title"] = "strainstream configuration"
    schema["description"] = (
        "Settings of strainstream processes. File: --config FILE or $STRAINSTREAM_CONFIG "
        "(YAML or JSON). Each field can also be set as STRAINSTREAM_<FIELD> (upper case).")
    return schema


def process_environment(extra: Mapping[str, str] | None = None, *, drop: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment for a child process: this process's, without ``drop``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra or {})
    return env


def environment_value(name: str) -> str | None:
    """A variable of this process's environment that belongs to another library (EPICS, a
    display), for code that must report or compare it; ``None`` when unset."""
    return os.environ.get(name)


def apply_environment(values: Mapping[str, str | None]) -> dict[str, str | None]:
    """Set (or, for ``None``, remove) variables in this process's environment, for libraries
    that read their settings from it (pyepics/caproto's ``EPICS_*``). Returns the previous
    values, so the caller can restore them with another call."""
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    return old
