"""Where things live in a strainstream data directory (the one place that knows the layout).

Layout of a data directory (everything strainstream keeps lives here)::

    DIR/tiled.yml          the tiled server configuration (:func:`strainstream.tiledconfig.write_config`; no secrets)
    DIR/catalog.db         SQLite catalog (metadata, structure, data sources)
    DIR/authn.db           tiled's authentication database: principals and *hashed* API keys
    DIR/data/              tiled-managed array storage (zarr)
    DIR/tables.duckdb      appendable tables (event rows, derived results); the scale-out
                           profile keeps them in PostgreSQL instead (``tables_uri``)
    DIR/detectors/         HDF5 files written by the detectors (readable storage)
    DIR/.api_key           the writer API key (mode 0600) unless one is given
    DIR/.admin_key         the key-management API key (mode 0600) unless one is given
    DIR/server.json        URI and pid of the running server (removed on stop)
    DIR/logs/              server, worker and IOC logs

This module imports only the standard library and :mod:`strainstream.errors`.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "ADMIN_KEY_FILE",
    "API_KEY_FILE",
    "admin_key_path",
    "api_key_path",
    "auth_db_path",
    "catalog_path",
    "detector_dir",
    "logs_dir",
    "make_layout",
    "server_json_path",
    "storage_dir",
    "tables_path",
    "tiled_config_path",
]

#: file names of the two key files (relative to the data directory)
API_KEY_FILE, ADMIN_KEY_FILE = ".api_key", ".admin_key"


def _root(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir).resolve()


def detector_dir(data_dir: str | os.PathLike) -> Path:
    """Directory where detectors write HDF5 files (tiled reads it as external storage)."""
    return _root(data_dir) / "detectors"


def logs_dir(data_dir: str | os.PathLike) -> Path:
    """Directory of the server, worker and IOC logs."""
    return _root(data_dir) / "logs"


def storage_dir(data_dir: str | os.PathLike) -> Path:
    """tiled-managed array storage (zarr)."""
    return _root(data_dir) / "data"


def tiled_config_path(data_dir: str | os.PathLike) -> Path:
    """``DIR/tiled.yml``, the server configuration."""
    return _root(data_dir) / "tiled.yml"


def catalog_path(data_dir: str | os.PathLike) -> Path:
    """``DIR/catalog.db``, the embedded SQLite catalog."""
    return _root(data_dir) / "catalog.db"


def tables_path(data_dir: str | os.PathLike) -> Path:
    """``DIR/tables.duckdb``, the embedded appendable tables."""
    return _root(data_dir) / "tables.duckdb"


def auth_db_path(data_dir: str | os.PathLike) -> Path:
    """``DIR/authn.db``, tiled's embedded authentication database."""
    return _root(data_dir) / "authn.db"


def server_json_path(data_dir: str | os.PathLike) -> Path:
    """``DIR/server.json``: URI and pid of the running server."""
    return _root(data_dir) / "server.json"


def api_key_path(data_dir: str | os.PathLike) -> Path:
    """``DIR/.api_key`` (not resolved: messages show the directory as the user gave it)."""
    return Path(data_dir) / API_KEY_FILE


def admin_key_path(data_dir: str | os.PathLike) -> Path:
    """``DIR/.admin_key`` (not resolved, like :func:`api_key_path`)."""
    return Path(data_dir) / ADMIN_KEY_FILE


def archive_roots_path(data_dir: str | os.PathLike) -> Path:
    """``DIR/archive_roots.json``: folders outside ``DIR`` holding frames of imported runs."""
    return _root(data_dir) / "archive_roots.json"


def archive_roots(data_dir: str | os.PathLike) -> list[str]:
    """The folders imported runs reference frames in (tiled may read them)."""
    import json

    path = archive_roots_path(data_dir)
    if not path.is_file():
        return []
    return [str(p) for p in json.loads(path.read_text())]


def add_archive_roots(data_dir: str | os.PathLike, folders) -> list[str]:
    """Remember ``folders`` as :func:`archive_roots` (the server serving ``DIR`` must be
    restarted to read frames in a folder it did not know); returns the new ones (folders
    under a known root or inside ``DIR`` are not new)."""
    import json

    known = archive_roots(data_dir)
    inside = _root(data_dir).resolve()

    def covered(path: Path) -> bool:  # under a known root or the data directory (detectors/)
        return any(path == Path(k) or Path(k) in path.parents for k in known) or inside in path.parents

    new = sorted({str(p) for p in (Path(f).resolve() for f in folders) if not covered(p)})
    if new:
        archive_roots_path(data_dir).write_text(json.dumps(known + new, indent=1))
    return new


def make_layout(data_dir: str | os.PathLike) -> Path:
    """Create the data directory and its ``data/``, ``detectors/`` and ``logs/``; return it resolved."""
    root = _root(data_dir)
    for sub in (storage_dir(root), detector_dir(root), logs_dir(root)):
        sub.mkdir(parents=True, exist_ok=True)
    return root
