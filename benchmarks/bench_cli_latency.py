"""Command-line latency on a finished run: ``results``, ``plot``, ``runs`` (issue #16 item 5).

Wall time of whole ``strainstream`` processes (interpreter start included, as a user sees it)
on one finished run, in both modes:

- ``offline`` — ``--data-dir DIR`` with no server running (the catalog files are read);
- ``server``  — the same directory with a tiled server running on it (``strainstream.server.
                TiledServer``, which records ``DIR/server.json``): the commands find it and
                read over HTTP.

Each command is timed twice (three times with ``--before``): ``direct`` (today's path: :mod:`strainstream.offline_reader`'s
light readers) and ``tiled`` (those readers disabled, as before issue #16 item 5: tiled's
in-process server app offline, ``tiled.client`` with a server). The references, timed in the
same run and interleaved with the commands, are ``python -c pass`` and ``python -c "import
tiled.client"``; every figure is also given as a ratio to them, so runs on machines of
different speed or load compare. A warm-up pass runs every command once first (the first
``plot`` draws the PNG; later ones find it drawn from the same results and reuse it: each
reader has its own ``--out`` folder, as the figure code of another tree draws it again).

    python benchmarks/bench_cli_latency.py [--data-dir DIR --uid UID] [--repeat 5] [--json]
                                           [--experiment operando_xrd|frame_series] [--before TREE]

``--before TREE`` also times the commands of another strainstream (reader ``before``): TREE
holds a ``strainstream`` package laid out as installed (``src/strainstream`` with
``callbacks``, ``plans``, ``devices`` copied into it), put first on PYTHONPATH — e.g. the
commit before issue #16 item 5:

    git archive 16073cc src callbacks plans devices | tar -x -C /tmp/before
    mkdir /tmp/before/tree && cp -r /tmp/before/src/strainstream /tmp/before/tree/ && for p in \
        callbacks plans devices; do cp -r /tmp/before/$p /tmp/before/tree/strainstream/$p; done

Without ``--data-dir`` a small demo makes the run first (operando_xrd: 256² frames over 25 s,
≈40-50 analysed events, about 80 s; frame_series: 53 frames, about 30 s) in a temporary
directory. ``--json`` prints one JSON object: ``load_avg`` (before/after), ``cpu_count``,
``rows`` (the run's analysed events), ``repeat``, ``before`` (TREE or null), ``reference`` (median seconds of the two
references) and ``commands``: one entry per command, mode and reader with ``median_s``,
``min_s``, ``ratio_to_python`` and ``ratio_to_import_tiled_client``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

#: ``strainstream ARGV`` with the light readers refused: the path through tiled
_THROUGH_TILED = """
import sys
import strainstream.offline_reader as reader

def refuse(*args, **kwargs):
    raise reader.Unsupported("disabled by bench_cli_latency")

reader.open_catalog = reader.open_server = refuse
from strainstream.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _wall(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return elapsed


def make_run(experiment: str, data_dir: str) -> str:
    """A finished demo run in ``data_dir``; its uid."""
    cli = [sys.executable, "-m", "strainstream.cli", "demo", "--data-dir", data_dir, "--json"]
    if experiment == "frame_series":
        cli += ["--experiment", "frame_series", "--frames", "53", "--delay", "0.05"]
    else:
        cli += ["--frame-size", "256", "--duration", "25", "--interval", "0.45"]
    r = subprocess.run(cli, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise SystemExit(f"demo failed: {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout)["uid"]


def commands(uid: str, data_dir: str, figures: str) -> list[tuple[str, list[str]]]:
    """(name, argv) of the timed commands; ``plot`` writes into ``figures``."""
    return [
        ("results --json", ["results", uid, "--data-dir", data_dir, "--json"]),
        ("results", ["results", uid[:8], "--data-dir", data_dir]),
        ("plot", ["plot", uid, "--data-dir", data_dir, "--out", figures + os.sep]),
        ("runs", ["runs", "--data-dir", data_dir]),
    ]


def measure(uid: str, data_dir: str, repeat: int, mode: str, env: dict[str, str],
            before: str | None = None) -> list[dict]:
    """Median wall times of the commands with the direct and the tiled reader (and the
    ``before`` tree's), and of the references, interleaved (one round = every command once)."""
    refs = {"python": [sys.executable, "-c", "pass"],
            "import_tiled_client": [sys.executable, "-c", "import tiled.client"]}
    readers = ("direct", "tiled") + (("before",) if before else ())
    figures = tempfile.mkdtemp(prefix="bench_cli_figures_")  # one PNG folder per reader: another
    for reader in readers:                                    # tree's figure code redraws the PNG
        os.makedirs(os.path.join(figures, reader))
    cases = [(name, reader, ([sys.executable, "-c", _THROUGH_TILED, *argv] if reader == "tiled"
                             else [sys.executable, "-m", "strainstream.cli", *argv]))
             for reader in readers
             for name, argv in commands(uid, data_dir, os.path.join(figures, reader))]
    before_env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (before, env.get("PYTHONPATH")) if p)}

    def env_of(reader: str) -> dict[str, str]:
        return before_env if reader == "before" else env

    for _, reader, cmd in cases:  # warm-up: the first plot draws the PNG, caches fill
        _wall(cmd, env_of(reader))
    names = [name for name, _ in commands(uid, data_dir, figures)]
    times: dict[tuple[str, str], list[float]] = {(n, r): [] for n in names for r in readers}
    ref_times: dict[str, list[float]] = {k: [] for k in refs}
    for _ in range(repeat):
        for key, cmd in refs.items():
            ref_times[key].append(_wall(cmd, env))
        for name, reader, cmd in cases:
            times[(name, reader)].append(_wall(cmd, env_of(reader)))
    shutil.rmtree(figures, ignore_errors=True)
    ref = {k: statistics.median(v) for k, v in ref_times.items()}
    out = [{"mode": mode, "command": "python -c pass", "reader": "-", "median_s": ref["python"],
            "min_s": min(ref_times["python"])},
           {"mode": mode, "command": "python -c 'import tiled.client'", "reader": "-",
            "median_s": ref["import_tiled_client"], "min_s": min(ref_times["import_tiled_client"])}]
    out += [{"mode": mode, "command": f"strainstream {name}", "reader": reader,
             "median_s": statistics.median(v), "min_s": min(v)} for (name, reader), v in times.items()]
    for entry in out:
        entry["ratio_to_python"] = round(entry["median_s"] / ref["python"], 2)
        entry["ratio_to_import_tiled_client"] = round(entry["median_s"] / ref["import_tiled_client"], 2)
        entry["median_s"], entry["min_s"] = round(entry["median_s"], 3), round(entry["min_s"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None, help="data directory of a finished run (default: make one)")
    p.add_argument("--uid", default=None, help="the run in --data-dir (default: its newest)")
    p.add_argument("--experiment", choices=("operando_xrd", "frame_series"), default="operando_xrd",
                   help="the demo that makes the run without --data-dir")
    p.add_argument("--repeat", type=int, default=5, help="timed rounds (default 5)")
    p.add_argument("--modes", default="offline,server", help="offline,server (default both)")
    p.add_argument("--before", default=None, metavar="TREE",
                   help="also time the strainstream package in TREE (first on PYTHONPATH)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = p.parse_args(argv)
    if args.before:
        args.before = os.path.abspath(args.before)
        if not os.path.isfile(os.path.join(args.before, "strainstream", "cli", "__init__.py")):
            raise SystemExit(f"--before {args.before}: no strainstream/cli/__init__.py in it")

    from strainstream.client import running_server
    from strainstream.server import TiledServer

    # the commands must see no configuration of this shell: only the data directory
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRAINSTREAM_")}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_cli_") as tmp:
        data_dir = os.path.abspath(args.data_dir or os.path.join(tmp, "data"))
        uid = args.uid
        if args.data_dir is None:
            uid = make_run(args.experiment, data_dir)
        if running_server(data_dir) is not None:
            raise SystemExit(f"a server is running on {data_dir}: stop it (the offline mode needs none)")
        from strainstream.offline_reader import open_catalog
        from strainstream.results_doc import read_results

        with open_catalog(data_dir) as root, root.reading():
            if uid is None:
                uid = [k for k in root if k != "derived"][-1]
            uid = root[uid].metadata["start"]["uid"] if uid in root else uid
            rows = {name: entry["n_rows"] for name, entry in read_results(root, uid)["analyses"].items()}
        results: list[dict] = []
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        if "offline" in modes:
            results += measure(uid, data_dir, args.repeat, "offline", env, args.before)
        if "server" in modes:
            with TiledServer(data_dir):
                results += measure(uid, data_dir, args.repeat, "server", env, args.before)
    doc = {"uid": uid, "rows": rows, "repeat": args.repeat, "before": args.before, "cpu_count": os.cpu_count(),
           "load_avg": {"before": [round(x, 2) for x in load_before],
                        "after": [round(x, 2) for x in os.getloadavg()]},
           "reference": {e["mode"] + ":" + ("python" if "pass" in e["command"] else "import_tiled_client"):
                         e["median_s"] for e in results if e["reader"] == "-"},
           "commands": results}
    if args.json:
        print(json.dumps(doc))
        return 0
    print(f"run {uid} ({rows}), {args.repeat} rounds, load {doc['load_avg']['before']} -> "
          f"{doc['load_avg']['after']}, {os.cpu_count()} CPUs")
    print(f"{'mode':8} {'command':38} {'reader':7} {'median s':>9} {'min s':>7} {'/python':>8} {'/tiled.client':>13}")
    for e in results:
        print(f"{e['mode']:8} {e['command']:38} {e['reader']:7} {e['median_s']:9.3f} {e['min_s']:7.3f} "
              f"{e['ratio_to_python']:8.2f} {e['ratio_to_import_tiled_client']:13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
