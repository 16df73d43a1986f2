"""Shared fixtures: real tiled servers and workers as subprocesses on loopback ports.

Deployment profiles
-------------------
``tiled_server`` runs in one of two profiles, chosen by the ``profile`` fixture:

- ``embedded``: SQLite catalog and DuckDB tables in the data dir + in-memory streaming cache
  (the default);
- ``scaleout``: PostgreSQL catalog, authentication database and tables (fresh databases in
  the session's one cluster) + Redis streaming cache (the session's one ``redis-server``, a fresh
  db index, flushed).

Tests in :data:`SCALEOUT_MODULES`, and tests marked ``@pytest.mark.profiles``, that use
``tiled_server`` run once per profile in ``$STRAINSTREAM_TEST_PROFILES`` (comma-separated,
default ``embedded,scaleout``). Without redis-server / PostgreSQL binaries the scaleout cases
are skipped with the reason, except under ``CI=true`` where they fail (CI installs them).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

PROFILES = ("embedded", "scaleout")
#: test modules (relative to tests/) whose tiled_server tests run in every profile
SCALEOUT_MODULES = frozenset({"system/test_data_path.py", "system/test_sinks.py"})
#: Redis db indices handed to tiled servers (db 0 stays for other users: queue server, ...)
_REDIS_DBS = itertools.cycle(range(1, 16))


#: IOC ports of this pytest process's simulated beamline (:func:`sim_beamline`), chosen at
#: start-up with the Channel Access client environment set for them: pyepics fixes its address
#: list when its context is created, which any test making an EPICS device does (e.g. the mock
#: profile devices of tests/devices/test_profiles.py), whether or not the beamline runs yet
SIM_IOC_PORTS: dict[str, int] = {}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "profiles: run this test's tiled_server in every deployment profile"
    )
    from strainstream.beamline import client_env
    from strainstream.config import IOC_NAMES, apply_environment
    from strainstream.supervisor import find_free_port

    while len(set(SIM_IOC_PORTS.values())) < len(IOC_NAMES):
        SIM_IOC_PORTS.update({name: find_free_port(udp=True) for name in IOC_NAMES})
    apply_environment(client_env(SIM_IOC_PORTS.values()))


def _selected_profiles() -> list[str]:
    raw = os.environ.get("STRAINSTREAM_TEST_PROFILES", ",".join(PROFILES))
    chosen = [p.strip() for p in raw.split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(PROFILES))
    if unknown or not chosen:
        raise pytest.UsageError(
            f"STRAINSTREAM_TEST_PROFILES={raw!r}: choose from {', '.join(PROFILES)}"
        )
    return chosen


def pytest_generate_tests(metafunc):
    if "tiled_server" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        if "profile" in str(mark.args[0]):
            return  # the test chooses its profiles itself
    rel = Path(str(metafunc.definition.path)).resolve().relative_to(Path(__file__).resolve().parent)
    if rel.as_posix() in SCALEOUT_MODULES or metafunc.definition.get_closest_marker("profiles"):
        metafunc.parametrize("profile", _selected_profiles(), indirect=True)


@pytest.fixture
def profile(request) -> str:
    """Deployment profile of ``tiled_server``: ``embedded`` unless the test is parametrized."""
    return getattr(request, "param", "embedded")


def _require_scaleout_binaries() -> None:
    """Skip (fail under CI=true) when redis-server or PostgreSQL is not installed."""
    from strainstream.services import ServiceError, find_postgres_bin, find_redis_server

    try:
        find_redis_server()
        find_postgres_bin()
    except ServiceError as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"scale-out services missing in CI: {exc}", pytrace=False)
        pytest.skip(f"scale-out services not installed: {exc}")


@pytest.fixture(scope="session")
def redis_service(tmp_path_factory):
    """One real ``redis-server`` on 127.0.0.1 for the whole session (``.url``, ``.port``).

    Db 0 is free for tests (e.g. a queue server); ``tiled_server`` uses dbs 1-15, flushed
    before each use. Pub/sub channels are not per db, so do not run two scaleout tiled
    servers at the same time against it.
    """
    _require_scaleout_binaries()
    from strainstream.services import Redis

    with Redis(tmp_path_factory.mktemp("redis")) as redis:
        yield redis


@pytest.fixture(scope="session")
def postgres_service():
    """One real PostgreSQL cluster on 127.0.0.1 for the whole session.

    ``postgres_service.create_database(name)`` returns a SQLAlchemy URI. The cluster runs
    without fsync (throw-away data). When we are root the server runs as the ``postgres``
    user, so its directory is made under the system temp dir (pytest's are private).
    """
    _require_scaleout_binaries()
    from strainstream.services import Postgres

    root = Path(tempfile.mkdtemp(prefix="strainstream-test-pg-"))
    os.chmod(root, 0o711)
    settings = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
    try:
        with Postgres(root / "pg", settings=settings) as pg:
            yield pg
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _flushed_redis_db(redis_service) -> str:
    import redis

    db = next(_REDIS_DBS)
    with contextlib.closing(redis.Redis(port=redis_service.port, host="127.0.0.1", db=db)) as r:
        r.flushdb()
    return f"{redis_service.url}/{db}"


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory):
    # keep the user's key/URI out of the tests
    for var in ("STRAINSTREAM_API_KEY", "STRAINSTREAM_URI"):
        os.environ.pop(var, None)
    yield


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def tiled_server(request, data_dir, profile):
    """A real tiled server on a free port, in the deployment ``profile`` (embedded by default).

    embedded: SQLite catalog, DuckDB tables, memory streaming cache. scaleout: fresh PostgreSQL
    databases for the catalog, the authentication data and the tables (password read from the
    cluster's 0600 passfile) + a flushed Redis db.
    """
    from strainstream.server import TiledServer

    kwargs = {}
    if profile == "scaleout":
        _require_scaleout_binaries()
        pg = request.getfixturevalue("postgres_service")
        redis_service = request.getfixturevalue("redis_service")
        name = f"t_{uuid.uuid4().hex[:16]}"
        for db in (name, f"{name}_auth", f"{name}_tables"):
            pg.create_database(db)
        kwargs = {  # no password in tiled.yml or its log: asyncpg/libpq read the passfile
            "catalog_uri": pg.passfile_uri(name),
            "auth_db_uri": pg.passfile_uri(f"{name}_auth"),
            "tables_uri": pg.tables_uri(f"{name}_tables"),
            "cache_uri": _flushed_redis_db(redis_service),
        }
    with TiledServer(data_dir, **kwargs) as server:
        server.profile = profile
        yield server
    if profile == "scaleout":
        for db in (name, f"{name}_auth", f"{name}_tables"):
            with contextlib.suppress(Exception):
                pg.drop_database(db)


@pytest.fixture
def worker_factory(tiled_server):
    """Start ``strainstream worker`` subprocesses against ``tiled_server``; all are stopped at the end."""
    from strainstream.workerproc import WorkerProcess

    started = []

    def start(**kwargs):
        w = WorkerProcess(tiled_server.uri, tiled_server.api_key, tiled_server.data_dir, **kwargs).start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


#: frame sizes of the shared simulated beamline (small: fast tests)
BEAMLINE_SHAPES = {"xrd_shape": 256, "sxdm_shape": 32, "txm_shape": 64}


@pytest.fixture(scope="session")
def sim_beamline(tmp_path_factory):
    """The simulated beamline (cycler, endstation and beam IOCs) shared by the whole session.

    pyepics reads the CA address list once per process, when its context is created, so one
    pytest process talks to one set of IOC ports: every test that uses Channel Access must
    use this fixture (never start a second Beamline in-process). Tests that kill/restart an
    IOC must restart it on the same port (``Beamline.restart``).
    """
    from strainstream.beamline import Beamline

    d = tmp_path_factory.mktemp("sim_beamline")
    with Beamline(d / "detectors", log_dir=d / "logs", startup_timeout_s=90, ports=SIM_IOC_PORTS,
                  **BEAMLINE_SHAPES) as bl:
        yield bl


@pytest.fixture(scope="session")
def sim_devices(sim_beamline):
    """Connected ophyd devices of :func:`sim_beamline` (keys: cycler, xrd, es, sxdm, txm, beam)."""
    devices = sim_beamline.devices()
    for dev in devices.values():
        dev.wait_for_connection(timeout=20)
    return devices
