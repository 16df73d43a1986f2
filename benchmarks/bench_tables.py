"""Appendable tables under concurrent writers: stock tiled vs strainstream's server vs PostgreSQL.

W writer threads, each with its own client, create a table and append R one-row partitions
(the live writer's and the workers' pattern: one event or one result per request), reading
their table back after every 5th append (the pattern of a worker's back-fill or a viewer).
Three servers in the same run, each on a fresh data directory:

- ``tiled``       — plain ``tiled serve config`` (the reference), DuckDB tables (tiled 0.2.20
                    shares one DuckDB connection between all request threads);
- ``strainstream``— ``python -m strainstream.tiled_serve`` (the embedded profile): DuckDB
                    with one connection per request thread;
- ``postgres``    — strainstream's server with tables in PostgreSQL (the scale-out profile;
                    skipped without the PostgreSQL binaries).

For each: appends/s, client errors, rows lost (acknowledged but absent) or stored twice,
server 500s, and whether the server stalled (a writer still blocked at the deadline).

    python benchmarks/bench_tables.py [--writers 6] [--rows 60] [--deadline 120]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pyarrow as pa

from strainstream.server import TiledServer

SCHEMA = pa.schema([("seq_num", pa.int64()), ("mean", pa.float64()), ("flag", pa.string())])


class StockTiled(TiledServer):
    serve_module = "tiled"


def run(server_cls, writers: int, rows: int, deadline_s: float, **kwargs) -> dict:
    from tiled.client import from_uri

    with tempfile.TemporaryDirectory() as d, server_cls(d, **kwargs) as server:
        errors: collections.Counter = collections.Counter()
        acked: dict[int, set[int]] = collections.defaultdict(set)
        barrier = threading.Barrier(writers)

        def write(i: int) -> None:
            client = from_uri(server.uri, api_key=server.api_key, timeout=httpx.Timeout(30.0))
            table = client.create_appendable_table(schema=SCHEMA, key=f"t{i}")
            barrier.wait(60)
            for seq in range(1, rows + 1):
                try:
                    row = {"seq_num": seq, "mean": seq / 4, "flag": ""}
                    table.append_partition(0, pa.Table.from_pylist([row], schema=SCHEMA))
                    acked[i].add(seq)
                    if seq % 5 == 0:
                        table.read()
                except Exception as exc:  # noqa: BLE001 - counted
                    errors[type(exc).__name__] += 1

        threads = [threading.Thread(target=write, args=(i,), daemon=True) for i in range(writers)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        end = time.monotonic() + deadline_s
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
        elapsed = time.perf_counter() - t0
        stalled = sum(t.is_alive() for t in threads)
        lost = doubled = 0
        if not stalled:
            root = server.client()
            for i in range(writers):
                counts = collections.Counter(root[f"t{i}"].read()["seq_num"].tolist())
                lost += sum(1 for s in acked[i] if s not in counts)
                doubled += sum(v - 1 for v in counts.values() if v > 1)
        log = (Path(d) / "logs" / "tiled.log").read_text()
        n_acked = sum(len(v) for v in acked.values())
        return {"appends": n_acked, "seconds": elapsed, "rate": n_acked / elapsed,
                "errors": dict(errors), "lost": lost if not stalled else None,
                "doubled": doubled if not stalled else None, "server_500": log.count("500 Internal"),
                "stalled_writers": stalled}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=6)
    parser.add_argument("--rows", type=int, default=60)
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds before a writer counts as stalled")
    args = parser.parse_args()
    results = {}
    results["tiled"] = run(StockTiled, args.writers, args.rows, args.deadline)
    results["strainstream"] = run(TiledServer, args.writers, args.rows, args.deadline)
    try:
        from strainstream.services import Postgres, find_postgres_bin

        find_postgres_bin()
    except Exception as exc:  # noqa: BLE001
        print(f"postgres: skipped ({exc})")
    else:
        pgdir = Path(tempfile.mkdtemp(prefix="bench-tables-pg-"))
        os.chmod(pgdir, 0o711)  # as root, PostgreSQL runs as the postgres user: it must enter
        try:
            with Postgres(pgdir / "pg") as pg:  # durable settings: what a facility would run
                pg.create_database("bench_tables")
                results["postgres"] = run(TiledServer, args.writers, args.rows, args.deadline,
                                          tables_uri=pg.tables_uri("bench_tables"))
        finally:
            shutil.rmtree(pgdir, ignore_errors=True)
    print(f"{args.writers} writers x {args.rows} one-row appends, a read every 5th:")
    for name, r in results.items():
        lost = "?" if r["lost"] is None else r["lost"]
        doubled = "?" if r["doubled"] is None else r["doubled"]
        print(f"  {name:13s} {r['appends']:5d} acknowledged in {r['seconds']:6.1f} s = {r['rate']:5.1f}/s; "
              f"client errors {sum(r['errors'].values())} {r['errors'] or ''}; lost {lost}; stored twice "
              f"{doubled}; server 500s {r['server_500']}; writers stalled {r['stalled_writers']}")
    base = results["tiled"]["rate"]
    for name in ("strainstream", "postgres"):
        if name in results and base > 0:
            print(f"  rate ratio {name}/tiled: {results[name]['rate'] / base:.2f}")


if __name__ == "__main__":
    main()
