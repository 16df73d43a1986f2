"""Benchmark: import throughput of a beamtime folder (strainstream.archives.folder.folder_run).

Run:  python benchmarks/bench_import_folder.py [--frames N] [--size 2048] [--repeat R] [--dir DIR]

Writes N simulated coin-cell frames (uint16, size² pixels) once as fabio TIFFs (DateTime tag)
and once as single-frame HDF5 files (/entry/data/data + /entry/start_time), plus an EC-Lab
.mpt log, then times ``list(folder_run(...))`` end to end (read every file, copy it into the
HDF5 stack, interpolate the log, compose and validate the documents) from a cold start (no
stack yet) and, separately, the re-import of the same folder (stack reused). Prints one JSON
object: frames/s and MB/s of frame data, median of R repeats. The page cache is warm (the
files were just written): this is the CPU/copy cost, not the cost of a cold network disk.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import h5py  # noqa: E402
import numpy as np  # noqa: E402

from strainstream.archives.folder import folder_run  # noqa: E402
from strainstream.sim.xrd_frames import DetectorGeometry  # noqa: E402

START = dt.datetime(2026, 1, 15, 10, 0, 0)


def _frames(n: int, size: int) -> list[np.ndarray]:
    """Frames with realistic counts (a few distinct simulated patterns, recycled)."""
    from strainstream.sim.cell import CoinCell
    from strainstream.sim.xrd_frames import XRDFrameSimulator

    sim = XRDFrameSimulator(DetectorGeometry.binned(2048 // size))
    base = [sim.cell_frame(CoinCell("SC-NM91", 10.0, soc=s), seed=k).image
            for k, s in enumerate((0.1, 0.4, 0.7))]
    return [base[k % len(base)] for k in range(n)]


def _write_tiffs(folder: Path, frames: list[np.ndarray]) -> None:
    from fabio.TiffIO import TiffIO

    for k, image in enumerate(frames):
        stamp = (START + dt.timedelta(seconds=10 * k)).strftime("%Y:%m:%d %H:%M:%S")
        with TiffIO(str(folder / f"frame_{k:05d}.tif"), mode="w") as tif:
            tif.writeImage(image, software="bench", date=stamp)


def _write_h5(folder: Path, frames: list[np.ndarray]) -> None:
    for k, image in enumerate(frames):
        with h5py.File(folder / f"frame_{k:05d}.h5", "w") as f:
            f.create_dataset("/entry/data/data", data=image, chunks=image.shape)
            f["/entry/start_time"] = (START + dt.timedelta(seconds=10 * k)).isoformat()


def _write_log(path: Path, n: int) -> None:
    head = ["", f"Acquisition started on : {START:%m/%d/%Y %H:%M:%S}.000", ""]
    lines = ["EC-Lab ASCII FILE", f"Nb header lines : {len(head) + 3}", *head,
             "time/s\tEwe/V\t<I>/mA\t(Q-Qo)/mA.h"]
    lines += [f"{t}\t{3.5 + t * 1e-4}\t1.0\t{t / 3600}" for t in range(0, 10 * n + 10, 5)]
    path.write_text("\n".join(lines) + "\n")


def _time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-import-", dir=args.dir))
    geo = DetectorGeometry.binned(2048 // args.size).to_dict()
    frames = _frames(args.frames, args.size)
    mb = sum(f.nbytes for f in frames) / 1e6
    out: dict = {"frames": args.frames, "shape": [args.size, args.size], "dtype": str(frames[0].dtype),
                 "frame_MB": round(frames[0].nbytes / 1e6, 3), "repeat": args.repeat}
    try:
        _write_log(work / "cell.mpt", args.frames)
        for fmt, writer, pattern in (("tiff", _write_tiffs, "*.tif"), ("hdf5", _write_h5, "*.h5")):
            folder = work / fmt
            folder.mkdir()
            writer(folder, frames)
            stacks = work / f"stacks-{fmt}"

            def run(folder=folder, pattern=pattern, stacks=stacks):
                docs = list(folder_run(folder, frames_glob=pattern, geometry=geo, out_dir=stacks,
                                       cycler_log=work / "cell.mpt", mass_mg=10.0))
                assert sum(n == "event" for n, _ in docs) == args.frames

            def cold(run=run, stacks=stacks):
                shutil.rmtree(stacks, ignore_errors=True)
                run()

            t_cold = _time(cold, args.repeat)
            t_warm = _time(run, args.repeat)  # the stack exists: reused, not rewritten
            out[fmt] = {"import_frames_per_s": round(args.frames / t_cold, 2),
                        "import_MB_per_s": round(mb / t_cold, 1),
                        "reimport_frames_per_s": round(args.frames / t_warm, 2),
                        "import_s": round(t_cold, 3)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
