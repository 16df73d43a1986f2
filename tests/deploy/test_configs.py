"""The example tiled configs in deploy/tiled/ serve for real (scale-out against PostgreSQL + Redis)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from strainstream.auth import WRITER_KEY_NOTE, bootstrap_auth
from strainstream.services import Redis
from strainstream.supervisor import find_free_port

pytestmark = pytest.mark.system

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "tiled"


def test_example_configs_hold_no_secret_and_no_literal_path():
    for name in ("embedded.yml", "scaleout.yml"):
        text = (DEPLOY / name).read_text()
        cfg = yaml.safe_load(text)
        assert cfg["authentication"]["allow_anonymous_access"] is False
        assert cfg["uvicorn"]["host"] == "127.0.0.1"
        assert "single_user_api_key" not in text and "api_key:" not in text
        for secret in cfg["authentication"].get("secret_keys", []):
            assert secret.startswith("${"), secret
        args = cfg["trees"][0]["args"]
        for path in [*args["writable_storage"], *args["readable_storage"]]:
            if not path.startswith("postgresql://"):
                assert "${STRAINSTREAM_DATA_DIR}" in path, path
    scale = yaml.safe_load((DEPLOY / "scaleout.yml").read_text())
    for uri in (scale["database"]["uri"], scale["trees"][0]["args"]["uri"]):
        assert uri.startswith("postgresql+asyncpg://strainstream@${STRAINSTREAM_PG_HOST}:")
        assert uri.endswith("?passfile=${STRAINSTREAM_PGPASSFILE}")  # no password in the URI
    (tables,) = [u for u in scale["trees"][0]["args"]["writable_storage"] if u.startswith("postgresql")]
    assert tables.startswith("postgresql://${STRAINSTREAM_PG_HOST}:") and "@" not in tables
    assert tables.endswith("?user=strainstream&passfile=${STRAINSTREAM_PGPASSFILE}")
    assert scale["streaming_cache"]["uri"] == "${STRAINSTREAM_REDIS_URL}"


@pytest.mark.slow
def test_scaleout_example_config_serves_from_postgres_and_redis(postgres_service, tmp_path):
    pg = postgres_service
    for db in ("strainstream", "strainstream_auth", "strainstream_tables"):
        pg.drop_database(db)
        pg.create_database(db)
    key = secrets.token_hex(24)
    bootstrap_auth(pg.passfile_uri("strainstream_auth"), [(key, "writer", WRITER_KEY_NOTE)])
    port = find_free_port()
    data = tmp_path / "data"
    (data / "detectors").mkdir(parents=True)
    with Redis(tmp_path / "redis") as redis:
        env = dict(os.environ, STRAINSTREAM_DATA_DIR=str(data), STRAINSTREAM_PG_HOST="127.0.0.1",
                   STRAINSTREAM_PG_PORT=str(pg.port), STRAINSTREAM_PGPASSFILE=str(pg.passfile),
                   STRAINSTREAM_REDIS_URL=redis.url,
                   STRAINSTREAM_TILED_SECRET_KEY=secrets.token_hex(32))
        tiled = Path(sys.executable).with_name("tiled")
        log = open(tmp_path / "tiled.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [str(tiled), "serve", "config", "--scalable", "--port", str(port), str(DEPLOY / "scaleout.yml")],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None, (tmp_path / "tiled.log").read_text()[-3000:]
                try:
                    if httpx.get(f"{base}/healthz", timeout=2, trust_env=False).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "tiled did not start"
                time.sleep(0.2)
            from tiled.client import from_uri

            assert httpx.get(f"{base}/api/v1/metadata/", trust_env=False).status_code == 401
            client = from_uri(f"{base}/api/v1", api_key=key)
            client.create_container("made-by-test", metadata={"profile": "scaleout"})
            assert client["made-by-test"].metadata["profile"] == "scaleout"
            # it is in PostgreSQL, and the node was announced through Redis
            rows = pg.query("SELECT key FROM nodes WHERE key = 'made-by-test'", database="strainstream")
            assert len(rows) == 1
            # appendable tables land in the tables database
            import pyarrow as pa

            schema = pa.schema([("seq_num", pa.int64()), ("mean", pa.float64())])
            table = client.create_appendable_table(schema=schema, key="rows")
            for i in (1, 2):
                table.append_partition(0, pa.Table.from_pylist([{"seq_num": i, "mean": i / 4}], schema=schema))
            assert client["rows"].read()["mean"].tolist() == [0.25, 0.5]
            stored = pg.query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
                              database="strainstream_tables")
            assert stored, "no table in strainstream_tables"
            import redis as redis_py

            r = redis_py.Redis.from_url(redis.url)
            try:
                assert any(k.startswith(b"sequence:") for k in r.keys("*"))
            finally:
                r.close()
            assert pg.password not in (tmp_path / "tiled.log").read_text()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            for db in ("strainstream", "strainstream_auth", "strainstream_tables"):
                pg.drop_database(db)
