"""strainstream.tiled_serve initialises the catalog in the server's own process.

tiled's ``init_if_not_exists: true`` starts ``python -m tiled catalog init`` (a second tiled
import: 2–3 s of every server start). The server's configuration leaves it off and
:func:`init_catalogs` does the same work before the server starts: a new catalog gets
tiled's tables and its alembic stamp, an existing one is left alone.
"""

from __future__ import annotations

import sqlite3

from strainstream.supervisor import find_free_port
from strainstream.tiled_serve import init_catalogs
from strainstream.tiledconfig import write_config


def _tables(path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_init_catalogs_makes_a_new_catalog_once(tmp_path):
    import yaml

    config = write_config(tmp_path, port=find_free_port(), api_key="k" * 32, catalog_ready=True)
    args = yaml.safe_load(config.read_text())["trees"][0]["args"]
    assert args["init_if_not_exists"] is False
    db = tmp_path / "catalog.db"
    assert not db.exists()
    made = init_catalogs(str(config))
    assert made == [f"sqlite+aiosqlite:///{db}"]
    tables = _tables(db)
    assert {"nodes", "data_sources", "assets", "alembic_version"} <= tables, tables
    with sqlite3.connect(db) as con:
        (stamp,) = con.execute("SELECT version_num FROM alembic_version").fetchone()
    assert stamp
    assert init_catalogs(str(config)) == []  # already there: left alone
    # the default (a config for stock `tiled serve`) still asks tiled to initialise
    plain = write_config(tmp_path / "plain", port=find_free_port(), api_key="k" * 32)
    assert yaml.safe_load(plain.read_text())["trees"][0]["args"]["init_if_not_exists"] is True
