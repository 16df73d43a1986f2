"""Benchmark: ``strainstream import`` of a document export (classic Resource/Datum run).

Run:  python benchmarks/bench_import_export.py [--frames N] [--size 2048]

Writes one operando-like run of N size² uint16 frames the way ophyd v1 + areaDetector record it,
once as AD_HDF5 (one file) and once as AD_TIFF (one file per frame), serialises each with
suitcase-jsonl, then times the import into an embedded tiled server: reading the export,
checking every referenced file (area-detector-handlers' file lists, HDF5 shapes), the
Resource/Datum -> StreamResource/StreamDatum conversion and the TiledWriter requests. Frames
are referenced in place, never copied or read, so the cost is per event, not per pixel.
Prints one JSON object (frames/s per spec).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from event_model import compose_run


def _run(spec: str, root: Path, n: int, size: int) -> list[tuple[str, dict]]:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 4000, (size, size), dtype=np.uint16)
    bundle = compose_run(metadata={"experiment": "frame_series", "plan_name": "count"})
    docs = [("start", bundle.start_doc)]
    desc = bundle.compose_descriptor(name="primary", data_keys={
        "det_image": {"source": "PV:det", "dtype": "array", "shape": [1, size, size],
                      "external": "FILESTORE:", "dtype_numpy": "<u2"}}, object_keys={"det": ["det_image"]})
    docs.append(("descriptor", desc.descriptor_doc))
    if spec == "AD_HDF5":
        path = root / "det_000.h5"
        with h5py.File(path, "w") as f:
            ds = f.create_dataset("/entry/data/data", (n, size, size), dtype=np.uint16)
            for k in range(n):
                ds[k] = frame
        res = bundle.compose_resource(spec=spec, root=str(root), resource_path=path.name,
                                      resource_kwargs={"frame_per_point": 1})
    else:
        import tifffile

        for k in range(n):
            tifffile.imwrite(root / f"det_{k:06d}.tiff", frame)
        res = bundle.compose_resource(spec=spec, root=str(root), resource_path="",
                                      resource_kwargs={"template": "%s%s_%6.6d.tiff", "filename": "det",
                                                       "frame_per_point": 1})
    docs.append(("resource", res.resource_doc))
    for k in range(n):
        datum = res.compose_datum(datum_kwargs={"point_number": k})
        docs.append(("datum", datum))
        docs.append(("event", desc.compose_event(data={"det_image": datum["datum_id"]},
                                                 timestamps={"det_image": time.time()},
                                                 filled={"det_image": False})))
    docs.append(("stop", bundle.compose_stop()))
    return docs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=1, help="events per table append")
    args = ap.parse_args()

    from suitcase.jsonl import Serializer

    from strainstream.archives.exports import read_export
    from strainstream.archives.importer import ImportOptions, prepare_run, write_run
    from strainstream.server import TiledServer

    out = {"frames": args.frames, "frame_shape": [args.size, args.size], "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frames_dirs = {spec: tmp / spec for spec in ("AD_HDF5", "AD_TIFF")}
        exports = {}
        for spec, d in frames_dirs.items():
            d.mkdir()
            docs = _run(spec, d, args.frames, args.size)
            with Serializer(str(tmp / f"export_{spec}")) as s:
                for name, doc in docs:
                    s(name, doc)
            (exports[spec],) = (tmp / f"export_{spec}").glob("*.jsonl")
        with TiledServer(tmp / "data", readable_storage=[str(d) for d in frames_dirs.values()]) as server:
            client = server.client()
            for spec, path in exports.items():
                t0 = time.perf_counter()
                run = prepare_run(read_export(path), ImportOptions(source=str(path)))
                t1 = time.perf_counter()
                write_run(client, run, batch_size=args.batch_size)
                t2 = time.perf_counter()
                out[spec] = {"frames_per_s": round(args.frames / (t2 - t0), 1),
                             "prepare_s": round(t1 - t0, 3), "write_s": round(t2 - t1, 3)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
