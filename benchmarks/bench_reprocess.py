"""Batch reprocessing throughput: runs/s sequentially vs on Dask with 1 and 2 worker processes.

Records N archived frame_series runs on a real tiled server (SQLite + memory cache), then
reprocesses all of them (``--force``, so every pass does the same work: delete the stored
results, replay the run from the catalog, write the results through TiledSink) three ways
in the same process:

- a plain sequential loop in this process (``strainstream reprocess --workers 0``),
- a Dask LocalCluster of 1 worker process,
- a Dask LocalCluster of 2 worker processes (``--workers 2``, the default).

Cluster start-up is timed apart from the batch (the clusters are started and warmed before
the clock starts). Every pass is checked: all runs ``done``, results equal to the replay.

    python benchmarks/bench_reprocess.py [--runs 12] [--frames 10] [--size 256] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from strainstream.callbacks.sinks import read_results
from strainstream.datadir import detector_dir
from strainstream.replay import replay_run
from strainstream.reprocess import dask_client, reprocess
from strainstream.server import TiledServer


def _warm(client) -> None:
    """Import the analysis stack in every worker before the clock starts."""
    def imports() -> None:
        import strainstream.callbacks.framestats  # noqa: F401
        import strainstream.callbacks.sinks  # noqa: F401
        import strainstream.reprocess  # noqa: F401
    client.run(imports)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--frames", type=int, default=10, help="frames per run")
    parser.add_argument("--size", type=int, default=256, help="frame rows = cols")
    parser.add_argument("--repeat", type=int, default=1, help="passes per mode (median reported)")
    args = parser.parse_args()
    # imported here: Dask's spawned workers re-import this module and need no RunEngine/ophyd
    from strainstream.devices.detectors import sim_frame_detector
    from strainstream.plans.frames import frame_series
    from strainstream.session import make_session

    with tempfile.TemporaryDirectory() as d, TiledServer(d) as server:
        session = make_session(server.uri, server.api_key, progress=False)
        det = sim_frame_detector("det", detector_dir(d), frame_shape=(args.size, args.size))
        t0 = time.perf_counter()
        uids = [session.RE(frame_series([det], num=args.frames, md={"bench": "reprocess"}))[0]
                for _ in range(args.runs)]
        print(f"recorded {args.runs} runs x {args.frames} frames of {args.size}^2 in "
              f"{time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
        root = server.client()
        truth = {u: replay_run(root[u]) for u in uids}
        reprocess(server.uri, server.api_key, uids[:1], workers=0, force=True)  # warm this process

        def timed(label: str, **kwargs) -> float:
            rates = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                outcomes = reprocess(server.uri, server.api_key, uids, force=True, run_timeout_s=300, **kwargs)
                dt = time.perf_counter() - t
                bad = [o for o in outcomes if o.status != "done"]
                assert not bad, bad
                assert all(read_results(root, u) == truth[u] for u in uids)
                rates.append(len(uids) / dt)
                inside = statistics.median(o.seconds for o in outcomes)
            rate = statistics.median(rates)
            print(f"{label:<28} {rate:6.2f} runs/s  ({len(uids) / rate:5.1f} s for {len(uids)} runs; "
                  f"median {inside:.2f} s inside one run's task)")
            return rate

        results = {"sequential (this process)": timed("sequential (this process)", workers=0)}
        for n in (1, 2):
            t = time.perf_counter()
            with dask_client(workers=n) as client:
                _warm(client)
                startup = time.perf_counter() - t
                label = f"dask LocalCluster, {n} proc"
                print(f"  cluster of {n} started and warmed in {startup:.1f} s")
                results[label] = timed(label, client=client)
        base = results["sequential (this process)"]
        print("speed-up vs sequential: " + ", ".join(f"{k}: x{v / base:.2f}" for k, v in results.items()))


if __name__ == "__main__":
    main()
