"""How clients find and open the catalog: ``DIR/server.json``, a tiled client, or in-process.

- :func:`running_server` reads ``DIR/server.json`` (written by
  :class:`strainstream.server.TiledServer` with :func:`record_server`) and checks that its
  process is alive;
- :func:`connect` opens a tiled client with an API key, turning connection and
  authentication failures into one-line :class:`~strainstream.datadir.ServerError` messages;
- :func:`open_offline` opens the catalog in-process without a server and without a key:
  whoever can read the data directory's files can read the data anyway. It builds tiled's
  server app (seconds of imports), so the read-only commands (``runs``, ``results``,
  ``plot``) first read the files directly with :mod:`strainstream.offline_reader` and come
  here only when that reader does not recognise the directory
  (:func:`strainstream.cli.runs.read_catalog`).

Nothing here imports tiled at module level.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from strainstream.auth import API_KEY_ENV
from strainstream.datadir import server_json_path, tiled_config_path
from strainstream.errors import ServerError

__all__ = ["ServerInfo", "connect", "forget_server", "open_offline", "record_server", "running_server"]


@dataclass(frozen=True)
class ServerInfo:
    """Where a running server listens (the content of ``DIR/server.json``)."""

    uri: str
    port: int
    pid: int | None
    data_dir: str


def record_server(info: ServerInfo) -> Path:
    """Write ``info`` to ``DIR/server.json`` of ``info.data_dir``; return the file."""
    path = server_json_path(info.data_dir)
    path.write_text(json.dumps(asdict(info)))
    return path


def running_server(data_dir: str | os.PathLike) -> ServerInfo | None:
    """Return the server recorded in ``DIR/server.json`` if its process is alive, else None."""
    path = server_json_path(data_dir)
    if not path.exists():
        return None
    try:
        info = ServerInfo(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None
    if info.pid is not None:
        try:
            os.kill(info.pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
    return info


def forget_server(data_dir: str | os.PathLike, pid: int | None) -> None:
    """Remove ``DIR/server.json`` unless it names a live server other than ``pid``."""
    info = running_server(data_dir)
    if info is None or info.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            server_json_path(data_dir).unlink()


def plain_structure_clients():
    """tiled's client classes per structure family, without the classes libraries register for
    specs (bluesky-tiled-plugins' ``BlueskyRun``, ``BlueskyEventStream``, ...).

    A run is then a plain container whose streams, tables and arrays the worker reads
    directly, and the process never imports the spec classes: ``BlueskyRun`` pulls in xarray,
    dask, sparse and numba (1.9 s and ≈ 1,500 modules, measured), which a worker used to pay
    on its first run."""
    from tiled.client.container import DEFAULT_STRUCTURE_CLIENT_DISPATCH, Container
    from tiled.utils import OneShotCachedMap

    Container.discover_clients_from_entrypoints()  # idempotent; tells the spec names apart
    specs = set(Container.STRUCTURE_CLIENTS_FROM_ENTRYPOINTS)
    default = DEFAULT_STRUCTURE_CLIENT_DISPATCH["numpy"]
    return OneShotCachedMap({name: (lambda name=name: default[name])
                             for name in default if name not in specs})


def connect(uri: str, api_key: str | None, *, plain: bool = False):
    """Connect a tiled client; turn connection and auth failures into a :class:`ServerError`.

    ``plain``: nodes are tiled's plain classes whatever their specs (:func:`plain_structure_clients`).
    """
    import httpx
    from tiled.client import from_uri

    if not api_key:
        raise ServerError(
            f"no API key for the tiled server at {uri}: pass --api-key or set ${API_KEY_ENV} "
            "(a read-only key from `strainstream keys create --read-only` is enough to read)"
        )
    try:
        if plain:
            return from_uri(uri, api_key=api_key, structure_clients=plain_structure_clients())
        return from_uri(uri, api_key=api_key)
    except httpx.ConnectError:
        raise ServerError(
            f"cannot reach the tiled server at {uri}: is it running? "
            "Start one with `strainstream serve --data-dir DIR`"
        ) from None
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code in (401, 403):
            raise ServerError(
                f"the tiled server at {uri} refused the API key (HTTP {exc.response.status_code}); "
                f"pass the right --api-key or set ${API_KEY_ENV}"
            ) from None
        raise ServerError(f"the tiled server at {uri} answered HTTP {exc.response.status_code}") from None


def _sqlite_exists(uri: Any) -> bool:
    """Whether ``uri`` is a ``sqlite:///PATH`` database whose file exists."""
    if not isinstance(uri, str) or not uri.startswith("sqlite"):
        return False
    path = uri.split(":///", 1)[-1]
    return bool(path) and Path(path).is_file()


def open_offline(data_dir: str | os.PathLike):
    """Open the catalog in ``DIR`` in-process, without a running server (read-only use).

    Uses the ``DIR/tiled.yml`` the server was started with, minus its authentication: no key
    is needed, as whoever reads the directory's files can read the data anyway (and the
    authentication database, possibly on another host, is neither needed nor touched).
    """
    root = Path(data_dir).resolve()
    config_path = tiled_config_path(root)
    if not config_path.exists():
        raise ServerError(
            f"{root} holds no strainstream data (no tiled.yml); "
            "pass the --data-dir used by `strainstream demo` or `strainstream serve`"
        )
    import io
    import logging
    import warnings

    from tiled.client import Context, from_context
    from tiled.config import Authentication, parse_configs
    from tiled.server.app import build_app_from_config

    api_key = secrets.token_hex(32)  # in-process only, dies with this client
    logging.getLogger("tiled.server.app").setLevel(logging.WARNING)  # it sets INFO on import
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), \
            contextlib.redirect_stdout(io.StringIO()):
        # tiled announces itself and starlette warns about its test client: not for users
        warnings.simplefilter("ignore")
        try:
            config = parse_configs(config_path)
            config.authentication = Authentication(single_user_api_key=api_key,
                                                   allow_anonymous_access=False)
            config.database = None
            for tree in config.trees:  # an existing SQLite catalog: no `tiled catalog init` subprocess
                args = getattr(tree, "args", None)
                if isinstance(args, dict) and args.get("init_if_not_exists") and _sqlite_exists(args.get("uri")):
                    args["init_if_not_exists"] = False
            app = build_app_from_config(config)
            context = Context.from_app(app, api_key=api_key)
            return from_context(context)
        except Exception as exc:  # a damaged data directory: say which, in one line
            detail = " ".join(str(exc).split())[:300]
            raise ServerError(
                f"cannot open the catalog in {root}: {type(exc).__name__}: {detail}"
            ) from exc
