"""Run tiled's server (``tiled serve ...``) with one connection per thread to DuckDB tables.

tiled 0.2.20 keeps appendable tables in a DuckDB file through a SQLAlchemy ``StaticPool``:
every request thread of the server shares one DuckDB connection, and DuckDB transactions
are per connection. Two appends or an append and a read in flight together then break each
other's transactions (``No active transaction, cannot rollback``, ``cannot commit - no
transaction is active``), an acknowledged append can be lost, and the server can stall for
good. Measured here (6 writers, 60 one-row appends each, a read every 5th append): the stock
pool hung within seconds; with a pool of separate connections, 8 writers × 150 appends:
0 errors, 0 rows lost or doubled, 14 appends/s.

DuckDB itself supports many connections to one database inside a process (MVCC; appends
never conflict), so :func:`pool_duckdb_connections` gives DuckDB storage the same
``QueuePool`` of cloned connections that tiled uses for SQLite and PostgreSQL.
:class:`strainstream.server.TiledServer` starts tiled through this module::

    python -m strainstream.tiled_serve serve config DIR/tiled.yml

PostgreSQL tables (the scale-out profile) do not need it; several tiled *processes* cannot
share a DuckDB file at all.
"""

from __future__ import annotations

import functools
import logging
import sys

__all__ = ["TESTED_TILED", "main", "pool_duckdb_connections"]

logger = logging.getLogger(__name__)

#: the tiled release whose ``tiled.storage.SQLStorage`` this module was written against
TESTED_TILED = "0.2.20"

#: connections kept per DuckDB file, and how many more under a burst
POOL_SIZE = 5
MAX_OVERFLOW = 10


def pool_duckdb_connections() -> bool:
    """Give tiled's DuckDB storage a pool of separate connections (one per concurrent request).

    Returns True when applied. Refuses (returns False, with a warning) on a tiled whose
    ``SQLStorage`` does not look like the one it was written for, rather than guess.
    """
    import sqlalchemy.pool
    import tiled
    import tiled.storage as storage

    cls = storage.SQLStorage
    current = cls.__dict__.get("_connection_pool")
    if getattr(current, "func", None) is not None and getattr(current.func, "_strainstream", False):
        return True
    if tiled.__version__ != TESTED_TILED or not isinstance(current, functools.cached_property):
        logger.warning("tiled %s: DuckDB connection pooling not applied (written for tiled %s); "
                       "concurrent appends to DuckDB tables may fail", tiled.__version__, TESTED_TILED)
        return False

    def _connection_pool(self):
        creator = self._adbc_connection.adbc_clone
        if ":memory:" in self.uri:  # an in-memory database lives in its one connection
            return sqlalchemy.pool.StaticPool(creator)
        if self.dialect == "duckdb":
            return sqlalchemy.pool.QueuePool(creator, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW)
        return current.func(self)  # SQLite, PostgreSQL: tiled's own pool (and its metrics)

    _connection_pool._strainstream = True
    prop = functools.cached_property(_connection_pool)
    prop.__set_name__(cls, "_connection_pool")
    cls._connection_pool = prop
    return True


def main(argv: list[str] | None = None) -> int:
    """``tiled`` command line (``serve config FILE`` ...) with :func:`pool_duckdb_connections`."""
    pool_duckdb_connections()
    from tiled.commandline.main import main as tiled_main

    sys.argv = ["tiled", *(sys.argv[1:] if argv is None else argv)]
    result = tiled_main()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
