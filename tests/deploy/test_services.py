"""Real redis-server and PostgreSQL processes started by strainstream.services."""

from __future__ import annotations

import asyncio
import os
import socket
import stat

import pytest

from strainstream import services
from strainstream.services import Postgres, Redis, ServiceError

pytestmark = pytest.mark.system


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill 0: look at its state
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_redis_answers_and_keeps_data_across_restart(tmp_path):
    import redis

    with Redis(tmp_path / "redis") as server:
        assert server.url == f"redis://127.0.0.1:{server.port}"
        client = redis.Redis.from_url(server.url)
        try:
            assert client.ping() is True
            client.set("strainstream:test", "kept")
            client.rpush("strainstream:list", *range(100))
            pid = server.process.pid
            server.restart()
            assert server.process.pid != pid and not _alive(pid)
            assert client.get("strainstream:test") == b"kept"
            assert client.llen("strainstream:list") == 100
            # only loopback: the server reports its bind address
            assert client.config_get("bind")["bind"] == "127.0.0.1"
            assert client.config_get("appendonly")["appendonly"] == "yes"
        finally:
            client.close()
        pid = server.process.pid
    assert server.process is None and not _alive(pid) and not _port_open(server.port)
    assert (tmp_path / "redis" / "appendonlydir").is_dir()
    server.stop()  # idempotent


def test_redis_start_is_idempotent_and_refuses_a_busy_port(tmp_path):
    with Redis(tmp_path / "a") as first:
        assert first.start() is first
        with pytest.raises(ServiceError, match=f"port {first.port} .* already in use"):
            Redis(tmp_path / "b", port=first.port).start()
        assert first.ping()


def test_missing_redis_server_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(services, "REDIS_SERVER", str(tmp_path / "no-such-redis-server"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServiceError, match=r"redis-server not found: install Debian's redis-server"):
        Redis(tmp_path).start()


def test_missing_postgres_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(services, "POSTGRES_GLOB", str(tmp_path / "*" / "bin"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServiceError, match=r"apt-get install postgresql"):
        Postgres(tmp_path).start()


def test_postgres_session_service_runs_sql(postgres_service):
    pg = postgres_service
    (row,) = pg.query("SELECT 6 * 7 AS answer, current_user AS who")
    assert row["answer"] == 42 and row["who"] == "strainstream"
    # listens on loopback only
    (row,) = pg.query("SHOW listen_addresses")
    assert row[0] == "127.0.0.1"


def test_postgres_create_database_is_idempotent_and_usable(postgres_service):
    import asyncpg

    pg = postgres_service
    name = "test_services_db"
    uri = pg.create_database(name)
    assert uri == f"postgresql+asyncpg://strainstream:{pg.password}@127.0.0.1:{pg.port}/{name}"
    assert pg.create_database(name) == uri
    assert len(pg.query("SELECT 1 FROM pg_database WHERE datname = $1", name)) == 1

    async def roundtrip():
        conn = await asyncpg.connect(uri.replace("postgresql+asyncpg", "postgresql"))
        try:
            await conn.execute("CREATE TABLE t (x int)")
            await conn.executemany("INSERT INTO t VALUES ($1)", [(i,) for i in range(10)])
            return await conn.fetchval("SELECT sum(x) FROM t"), await conn.fetchval("SELECT current_database()")
        finally:
            await conn.close()

    assert asyncio.run(roundtrip()) == (45, name)
    pg.drop_database(name)
    assert pg.query("SELECT 1 FROM pg_database WHERE datname = $1", name) == []
    with pytest.raises(ServiceError, match="not a plain identifier"):
        pg.create_database("x; DROP DATABASE postgres")


def test_postgres_needs_the_password(postgres_service):
    import asyncpg

    pg = postgres_service

    async def connect(password):
        conn = await asyncpg.connect(host="127.0.0.1", port=pg.port, user="strainstream",
                                     password=password, database="postgres", timeout=20)
        await conn.close()

    with pytest.raises(asyncpg.InvalidPasswordError):
        asyncio.run(connect("wrong"))
    with pytest.raises(asyncpg.InvalidPasswordError):
        asyncio.run(connect(""))
    asyncio.run(connect(pg.password))
    # the password lives in a 0600 file, and never in the server log
    mode = stat.S_IMODE(pg.password_file.stat().st_mode)
    assert mode == 0o600
    assert pg.password not in (pg.data_dir / "postgres.log").read_text()


def test_postgres_restart_keeps_databases_and_stop_leaves_nothing(reachable_dir):
    data = reachable_dir / "pg"
    with Postgres(data) as pg:
        pg.create_database("kept")
        pg.query("CREATE TABLE runs (uid text)", database="kept")
        pg.query("INSERT INTO runs VALUES ('abc')", database="kept")
        port, pid, password = pg.port, pg.process.pid, pg.password
    assert not _alive(pid) and not _port_open(port)
    assert not (data / "pgdata" / "postmaster.pid").exists()
    with Postgres(data, port=port) as pg:
        assert pg.password == password  # initdb ran once
        assert [r["uid"] for r in pg.query("SELECT uid FROM runs", database="kept")] == ["abc"]
        # the server's processes belong to the postgres user when we are root
        owner = os.stat(f"/proc/{pg.process.pid}").st_uid
        assert owner == (services.pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid())


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands PostgreSQL to the postgres user")
def test_postgres_data_dir_the_postgres_user_cannot_reach(reachable_dir):
    private = reachable_dir / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(ServiceError, match=r"cannot enter .*private.*mode 700"):
        Postgres(private / "pg").start()
