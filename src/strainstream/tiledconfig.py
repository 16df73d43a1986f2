"""``DIR/tiled.yml``: the configuration of the embedded tiled server (no secrets in it).

The server runs in tiled's multi-user mode with API keys only (see :mod:`strainstream.auth`),
a catalog (SQLite ``DIR/catalog.db`` or PostgreSQL), appendable tables (DuckDB or
PostgreSQL), the detectors' directory as readable storage, and a streaming cache (memory or
Redis). ``deploy/tiled/*.yml`` are the hand-kept copies for deployments; a test checks that
they have the shape written here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from strainstream.auth import AUTH_PROVIDER, auth_db_uri_for
from strainstream.datadir import (
    archive_roots,
    catalog_path,
    detector_dir,
    make_layout,
    storage_dir,
    tables_path,
    tiled_config_path,
)
from strainstream.errors import ServerError

__all__ = ["write_config"]


def write_config(
    data_dir: str | os.PathLike,
    *,
    port: int,
    api_key: str,
    cache_uri: str = "memory",
    readable_storage: list[str] | None = None,
    catalog_uri: str | None = None,
    auth_db_uri: str | None = None,
    tables_uri: str | None = None,
    catalog_ready: bool = False,
) -> Path:
    """Write ``DIR/tiled.yml`` for an embedded server and create the directory layout.

    No key is written into the file: tiled looks API keys up (hashed) in the authentication
    database, which :class:`strainstream.server.TiledServer` initialises before it starts the server.

    Parameters
    ----------
    data_dir : path
        The data directory (created if missing).
    port : int
        TCP port on 127.0.0.1.
    api_key : str
        Only used to check that one is set.
    cache_uri : str
        Streaming cache: ``"memory"`` (embedded default) or ``"redis://127.0.0.1:PORT"``.
    readable_storage : list of str, optional
        Extra directories the server may read detector files from.
    catalog_uri : str, optional
        SQLAlchemy URI of the catalog database, e.g. ``postgresql+asyncpg://USER@HOST:PORT/DB``.
        None (default) keeps the embedded SQLite file ``DIR/catalog.db``.
    auth_db_uri : str, optional
        SQLAlchemy URI of tiled's authentication database (principals, hashed API keys).
        None (default): SQLite ``DIR/authn.db``. Name passwords as ``${ENV_VAR}``: tiled and
        :class:`strainstream.server.TiledServer` expand them, so the file holds no secret.
    tables_uri : str, optional
        Where appendable tables (event rows, derived results) are stored: an ADBC URI,
        ``postgresql://USER@HOST:PORT/DB?passfile=FILE`` in the scale-out profile. None
        (default) keeps the embedded DuckDB file ``DIR/tables.duckdb``. tiled shares one
        DuckDB connection between all its threads; under concurrent appends from several
        writers and workers that connection fails ("No active transaction") or stalls, so
        several writers should use PostgreSQL.
    catalog_ready : bool
        The server is started through :mod:`strainstream.tiled_serve`, which initialises the
        catalog database in its own process: the file then says ``init_if_not_exists: false``
        and tiled starts no ``tiled catalog init`` process (2–3 s of every start).
    """
    if not api_key:
        raise ServerError("an API key is required: writes to the server must be authenticated")
    root = make_layout(data_dir)
    # detector files, folders of imported archives (strainstream import), and what was asked
    readable = [str(detector_dir(root)), *archive_roots(root)]
    readable += [str(Path(p).resolve()) for p in readable_storage or [] if str(Path(p).resolve()) not in readable]
    config = {
        "authentication": {
            # multi-user mode: API keys with scopes, kept hashed in the database below.
            # The provider has no users, so nobody can log in with a password.
            "providers": [
                {
                    "provider": AUTH_PROVIDER,
                    "authenticator": "tiled.authenticators:DictionaryAuthenticator",
                    "args": {"users_to_passwords": {}},
                }
            ],
            "allow_anonymous_access": False,
        },
        "database": {"uri": auth_db_uri_for(root, auth_db_uri), "init_if_not_exists": False},
        "trees": [
            {
                "path": "/",
                "tree": "catalog",
                "args": {
                    "uri": catalog_uri or f"sqlite:///{catalog_path(root)}",
                    "init_if_not_exists": not catalog_ready,
                    "writable_storage": [str(storage_dir(root)),
                                         tables_uri or f"duckdb:///{tables_path(root)}"],
                    "readable_storage": readable,
                },
            }
        ],
        "streaming_cache": {"uri": cache_uri, "data_ttl": 3600, "seq_ttl": 3600},
        "media_types": {
            "BlueskyRun": {
                "application/json-seq": "bluesky_tiled_plugins.exporters:json_seq_exporter"
            }
        },
        "uvicorn": {"host": "127.0.0.1", "port": int(port)},
    }
    path = tiled_config_path(root)
    # JSON is valid YAML; this keeps the writer dependency-free.
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path
