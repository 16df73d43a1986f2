"""``strainstream import`` of document exports: classic Resource/Datum runs (AD_HDF5, AD_TIFF)
exported by suitcase-jsonl / suitcase-msgpack, moved to another root, imported, analysed.

The archives are written the way a bluesky beamline writes them: event_model's
``compose_run``/``compose_resource`` (what ophyd v1's ``FileStoreHDF5IterativeWrite`` /
``FileStoreTIFFIterativeWrite`` call), frames from the forward model of a simulated SC-NM91
charge in an areaDetector-layout HDF5 file (``/entry/data/data``) or one TIFF per frame named
by areaDetector's template ``%s%s_%6.6d.tiff``, serialised by suitcase. The recorded root
(``/nsls2/data/xpd/raw``) does not exist here: ``--root-map`` points it at the copy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from event_model import compose_run

from strainstream.sim.cell import CoinCell
from strainstream.sim.xrd_frames import DetectorGeometry, XRDFrameSimulator

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]

CLI = [sys.executable, "-m", "strainstream.cli"]
OLD_ROOT = "/nsls2/data/xpd/raw"
N_FRAMES = 6
MASS_MG = 10.0


def _cli(*args, timeout=300):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def charge():
    """Six 512² frames of a 1000 mA/g charge (one phase first, H2/H3 later) and their truth."""
    geo = DetectorGeometry.binned(4)
    sim = XRDFrameSimulator(geo)
    cell = CoinCell("SC-NM91", MASS_MG)
    cell.set_mode("CC", current_mA_g=1000.0, v_limit_V=4.6)
    frames = []
    for k in range(N_FRAMES):
        rb = cell.readbacks()
        frames.append({"image": sim.cell_frame(cell, seed=k).image, "phases": cell.lattice(), "rb": rb})
        cell.step(140.0)
    inst = 2 * np.pi / geo.wavelength_A * np.radians(sim.instrument_fwhm_2theta_deg)
    geometry = {"distance_m": geo.distance_m, "poni1_m": geo.poni1_m, "poni2_m": geo.poni2_m,
                "rot1": geo.rot1_rad, "rot2": geo.rot2_rad, "rot3": geo.rot3_rad,
                "wavelength_A": geo.wavelength_A, "pixel_size_um": geo.pixel_size_um,
                "shape": list(geo.shape), "instrument_fwhm_A_inv": inst}
    return {"frames": frames, "geometry": geometry}


def _classic_run(charge, spec: str, copy_root: Path, *, stop: bool = True) -> list[tuple[str, dict]]:
    """An operando XRD run as ophyd v1 + areaDetector record it (Resource/Datum)."""
    frames = charge["frames"]
    shape = list(frames[0]["image"].shape)
    bundle = compose_run(metadata={"experiment": "operando_xrd", "plan_name": "count",
                                   "sample": "SC-NM91 coin cell 7", "calibration": charge["geometry"],
                                   "detectors": ["xrd"], "num_points": N_FRAMES})
    docs = [("start", bundle.start_doc)]
    desc = bundle.compose_descriptor(name="primary", data_keys={
        "xrd_image": {"source": "PV:XF28ID1-ES{Det:PE1}", "dtype": "array", "shape": [1, *shape],
                      "external": "FILESTORE:", "dtype_numpy": "<u2"},
        "cycler_voltage_V": {"source": "PV:cycler:Ewe", "dtype": "number", "shape": []},
        "cycler_capacity_mAh_g": {"source": "PV:cycler:Q", "dtype": "number", "shape": []},
        "cycler_current_mA": {"source": "PV:cycler:I", "dtype": "number", "shape": []},
    }, object_keys={"xrd": ["xrd_image"], "cycler": ["cycler_voltage_V", "cycler_capacity_mAh_g",
                                                     "cycler_current_mA"]})
    docs.append(("descriptor", desc.descriptor_doc))
    rel = "2026/01/15/" + ("xrd_000.h5" if spec == "AD_HDF5" else "tiff")
    local = copy_root / rel
    local.parent.mkdir(parents=True, exist_ok=True)
    if spec == "AD_HDF5":
        with h5py.File(local, "w") as f:
            f.create_dataset("/entry/data/data", data=np.stack([fr["image"] for fr in frames]))
        kwargs = {"frame_per_point": 1}
    else:
        import tifffile

        local.mkdir(exist_ok=True)
        for k, fr in enumerate(frames):
            tifffile.imwrite(local / f"xrd_{k:06d}.tiff", fr["image"])
        kwargs = {"template": "%s%s_%6.6d.tiff", "filename": "xrd", "frame_per_point": 1}
    res = bundle.compose_resource(spec=spec, root=OLD_ROOT, resource_path=rel, resource_kwargs=kwargs)
    docs.append(("resource", res.resource_doc))
    for k, fr in enumerate(frames):
        datum = res.compose_datum(datum_kwargs={"point_number": k})
        docs.append(("datum", datum))
        rb = fr["rb"]
        data = {"xrd_image": datum["datum_id"], "cycler_voltage_V": rb["voltage_V"],
                "cycler_capacity_mAh_g": rb["capacity_mAh_g"], "cycler_current_mA": rb["current_mA"]}
        docs.append(("event", desc.compose_event(data=data, timestamps={k2: 1.7e9 + k for k2 in data},
                                                 filled={"xrd_image": False})))
    if stop:
        docs.append(("stop", bundle.compose_stop()))
    return docs


def _export(docs, directory: Path, fmt: str) -> Path:
    """Serialise with the ecosystem's own writer (suitcase-jsonl / suitcase-msgpack)."""
    if fmt == "jsonl":
        from suitcase.jsonl import Serializer
    else:
        from suitcase.msgpack import Serializer
    directory.mkdir(parents=True, exist_ok=True)
    with Serializer(str(directory)) as s:
        for name, doc in docs:
            s(name, doc)
    (path,) = directory.glob(f"*.{fmt}")
    return path


def _check_lattice(columns, frames):
    """The tolerances of the native-run test (tests/callbacks/test_xrd_callback.py)."""
    assert columns["flag"] == [""] * len(frames)
    for k, fr in enumerate(frames):
        phases = fr["phases"]
        if len(phases) == 1:
            assert columns["n_phases"][k] == 1
            assert columns["a_A"][k] == pytest.approx(phases[0].a_A, abs=5e-4)
            assert columns["c_A"][k] == pytest.approx(phases[0].c_A, abs=5e-3)
        else:
            assert columns["n_phases"][k] == 2
            got = sorted([columns["c_A"][k], columns["c_A_2"][k]])
            assert got == pytest.approx(sorted(p.c_A for p in phases), abs=0.01)


@pytest.mark.parametrize("spec, fmt", [("AD_HDF5", "jsonl"), ("AD_TIFF", "msgpack")])
def test_import_of_a_classic_export_moved_to_another_root(charge, tmp_path, spec, fmt):
    copy_root = tmp_path / "moved" / "xpd"
    docs = _classic_run(charge, spec, copy_root)
    uid = docs[0][1]["uid"]
    export = _export(docs, tmp_path / "export", fmt)
    data = tmp_path / "data"

    # without the root map: one line naming the file and the option
    r = _cli("import", export, "--data-dir", data, "--json")
    assert r.returncode == 2 and not r.stdout
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("strainstream import: error: Resource ") and f"({spec})" in line
    assert f"{OLD_ROOT}/2026/01/15/" in line and f"--root-map {OLD_ROOT}=/NEW" in line

    r = _cli("import", export, "--data-dir", data, "--root-map", f"{OLD_ROOT}={copy_root}",
             "--analyse", "--json")
    assert r.returncode == 0, r.stderr
    (run,) = json.loads(r.stdout)["runs"]
    assert run["uid"] == uid and run["events"] == N_FRAMES and run["status"] == "imported"
    assert run["analyses"]["operando_xrd"]["status"] == "done"
    res = _cli("results", uid[:8], "--data-dir", data, "--json")
    assert res.returncode == 0, res.stderr
    xrd = json.loads(res.stdout)["analyses"]["operando_xrd"]
    assert xrd["n_rows"] == N_FRAMES
    _check_lattice(xrd["columns"], charge["frames"])
    # the cycler readings came through as recorded
    assert xrd["columns"]["voltage_V"] == pytest.approx([f["rb"]["voltage_V"] for f in charge["frames"]])
    # the frames stay where they are: nothing copied into the data directory
    assert not any(p.suffix in (".h5", ".tiff") for p in (data / "detectors").rglob("*"))
    # replay of the imported run equals its analysis, bit for bit
    rep = _cli("replay", uid, "--data-dir", data, "--json")
    assert rep.returncode == 0, rep.stderr
    assert rep.stdout == res.stdout

    # the same import again: a no-op
    again = _cli("import", export, "--data-dir", data, "--root-map", f"{OLD_ROOT}={copy_root}", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["runs"][0]["status"] == "present"


def test_an_export_without_stop_is_imported_as_aborted(charge, tmp_path):
    copy_root = tmp_path / "moved"
    docs = _classic_run(charge, "AD_HDF5", copy_root, stop=False)[:-4]  # died after 4 events
    export = _export(docs, tmp_path / "export", "jsonl")
    data = tmp_path / "data"
    r = _cli("import", export, "--data-dir", data, "--root-map", f"{OLD_ROOT}={copy_root}",
             "--analyse", "--json")
    assert r.returncode == 0, r.stderr
    (run,) = json.loads(r.stdout)["runs"]
    assert run["events"] == 4 and "no stop document" in run["notes"][0]
    assert "no stop document (aborted run): imported the 4 events" in r.stderr
    runs = json.loads(_cli("runs", "--data-dir", data, "--json").stdout)
    assert [x["status"] for x in runs] == ["aborted"]
    assert run["analyses"]["operando_xrd"]["rows"] == 4


def test_a_half_imported_run_resumes(charge, tmp_path):
    from bluesky_tiled_plugins import TiledWriter

    from strainstream.archives.exports import read_export
    from strainstream.archives.importer import ImportOptions, prepare_run
    from strainstream.callbacks.tiled_format import install_consolidators
    from strainstream.server import TiledServer

    copy_root = tmp_path / "moved"
    docs = _classic_run(charge, "AD_HDF5", copy_root)
    export = _export(docs, tmp_path / "export", "msgpack")
    data = tmp_path / "data"
    root_map = {OLD_ROOT: str(copy_root)}
    prepared = prepare_run(read_export(export), ImportOptions(root_map=root_map))
    install_consolidators()
    with TiledServer(data, readable_storage=[str(copy_root)]) as server:
        writer = TiledWriter(server.client(), batch_size=1)
        names = [n for n, _ in prepared.docs]
        cut = [i for i, n in enumerate(names) if n == "event"][2] + 1  # killed after event 3
        for name, doc in prepared.docs[:cut]:
            writer(name, doc)
    r = _cli("import", export, "--data-dir", data, "--root-map", f"{OLD_ROOT}={copy_root}",
             "--analyse", "--json")
    assert r.returncode == 0, r.stderr
    (run,) = json.loads(r.stdout)["runs"]
    assert run["status"] == "resumed" and run["analyses"]["operando_xrd"]["rows"] == N_FRAMES
    xrd = json.loads(_cli("results", run["uid"], "--data-dir", data, "--json").stdout)["analyses"]["operando_xrd"]
    assert xrd["columns"]["seq_num"] == list(range(1, N_FRAMES + 1))
    _check_lattice(xrd["columns"], charge["frames"])


def test_bad_exports_get_one_line_and_leave_nothing(charge, tmp_path):
    copy_root = tmp_path / "moved"
    docs = _classic_run(charge, "AD_HDF5", copy_root)
    export = _export(docs, tmp_path / "export", "jsonl")
    data = tmp_path / "data"
    lines = export.read_text().splitlines()

    def run(path, *extra):
        r = _cli("import", path, "--data-dir", data, "--root-map", f"{OLD_ROOT}={copy_root}", *extra)
        assert r.returncode == 2, r.stderr
        (line,) = r.stderr.strip().splitlines()
        return line

    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text("\n".join([*lines[:3], lines[3][:40], *lines[4:]]) + "\n")
    assert f"{corrupt}, line 4: corrupt JSON" in run(corrupt)

    other = [(n, dict(d, spec="XSP3") if n == "resource" else d) for n, d in docs]
    assert "spec 'XSP3' is not one strainstream reads" in run(_export(other, tmp_path / "xsp3", "jsonl"))

    wrong = [(n, d) for n, d in docs]
    desc = dict(wrong[1][1])
    desc["data_keys"] = dict(desc["data_keys"], xrd_image=dict(desc["data_keys"]["xrd_image"], shape=[1, 256, 256]))
    wrong[1] = ("descriptor", desc)
    line = run(_export(wrong, tmp_path / "shape", "jsonl"))
    assert "frames of 'xrd_image' are [512, 512] but the descriptor says [256, 256]" in line

    no_start = tmp_path / "nostart.jsonl"
    no_start.write_text("\n".join(lines[1:]) + "\n")
    assert "do not begin with a start document" in run(no_start)
    # nothing was written: no catalog, or an empty one
    if (data / "catalog.db").exists():
        listed = _cli("runs", "--data-dir", data, "--json")
        assert json.loads(listed.stdout) == []


def test_replay_reads_classic_resource_datum_documents_with_a_root_map(charge, tmp_path):
    """A databroker archive's document stream (Resource/Datum, as ``run.documents()`` of a
    databroker catalog yields it) goes through the same analysis as a live run."""
    from strainstream.replay import replay_documents

    copy_root = tmp_path / "moved"
    for spec in ("AD_HDF5", "AD_TIFF"):
        docs = _classic_run(charge, spec, copy_root / spec)
        (cb,) = replay_documents(docs, docs[0][1], root_map={OLD_ROOT: str(copy_root / spec)})
        rows = sorted(cb.sink.rows, key=lambda r: r["seq_num"])
        columns = {k: [r[k] for r in rows] for k in ("flag", "n_phases", "a_A", "c_A", "c_A_2")}
        _check_lattice(columns, charge["frames"])
        # without the map the frames are not there: every row flagged, none refined
        (cb,) = replay_documents(docs, docs[0][1])
        assert {r["flag"] for r in cb.sink.rows} == {"frame_unavailable"}


def _renamed_run(charge, copy_root):
    """The classic run of a beamline that calls its cycler readings ``Ewe``, ``Q`` and ``I``."""
    rename = {"cycler_voltage_V": "Ewe", "cycler_capacity_mAh_g": "Q", "cycler_current_mA": "I"}
    docs = []
    for name, doc in _classic_run(charge, "AD_HDF5", copy_root):
        if name == "descriptor":
            doc = dict(doc, data_keys={rename.get(k, k): v for k, v in doc["data_keys"].items()})
            doc["object_keys"] = {k: [rename.get(x, x) for x in v] for k, v in doc["object_keys"].items()}
        elif name == "event":
            doc = dict(doc, data={rename.get(k, k): v for k, v in doc["data"].items()},
                       timestamps={rename.get(k, k): v for k, v in doc["timestamps"].items()})
        docs.append((name, doc))
    return docs


def test_field_maps_another_beamlines_keys_onto_the_analysis_inputs(charge, tmp_path):
    """A beamline that calls its cycler readings ``Ewe`` and ``Q``: --field maps them."""
    copy_root = tmp_path / "moved"
    docs = _renamed_run(charge, copy_root)
    export = _export(docs, tmp_path / "export", "jsonl")
    volts = [f["rb"]["voltage_V"] for f in charge["frames"]]

    bad = _cli("import", export, "--data-dir", tmp_path / "d0", "--root-map", f"{OLD_ROOT}={copy_root}",
               "--field", "voltage=Ewe,potential=E")
    assert bad.returncode == 2
    assert "--field potential: not an input of operando_xrd (its inputs: image, voltage, current, " \
           "capacity, time)" in bad.stderr

    data = tmp_path / "data"
    r = _cli("import", export, "--data-dir", data, "--root-map", f"{OLD_ROOT}={copy_root}",
             "--field", "voltage=Ewe,capacity=Q", "--field", "current=I,image=xrd_image", "--analyse", "--json")
    assert r.returncode == 0, r.stderr
    uid = json.loads(r.stdout)["runs"][0]["uid"]
    res = json.loads(_cli("results", uid, "--data-dir", data, "--json").stdout)["analyses"]["operando_xrd"]
    assert res["columns"]["voltage_V"] == pytest.approx(volts)
    assert res["columns"]["capacity_mAh_g"] == pytest.approx([f["rb"]["capacity_mAh_g"] for f in charge["frames"]])
    _check_lattice(res["columns"], charge["frames"])
    # what was supplied is kept with the run and its results: replay reproduces the analysis
    supplied = res["parameters"]["import"]
    assert supplied["root_map"] == [[OLD_ROOT, str(copy_root)]] and supplied["source"] == str(export.resolve())
    assert supplied["fields"] == {"voltage": "Ewe", "capacity": "Q", "current": "I", "image": "xrd_image"}
    rep = _cli("replay", uid, "--data-dir", data, "--json")
    assert rep.stdout == _cli("results", uid, "--data-dir", data, "--json").stdout


def test_the_live_worker_analyses_an_imported_run_like_a_live_one(charge, tmp_path):
    """No --analyse: a running worker picks the imported run up from tiled's stream; its
    results equal a replay bit for bit."""
    from strainstream.datadir import add_archive_roots
    from strainstream.demo import wait_for_results
    from strainstream.server import TiledServer
    from strainstream.workerproc import WorkerProcess

    copy_root = tmp_path / "moved"
    docs = _classic_run(charge, "AD_TIFF", copy_root)
    uid = docs[0][1]["uid"]
    export = _export(docs, tmp_path / "export", "msgpack")
    data = tmp_path / "data"
    data.mkdir()
    add_archive_roots(data, [copy_root])  # known before the server starts: it may read them
    with TiledServer(data) as server, \
            WorkerProcess(server.uri, server.api_key, server.data_dir).start(timeout_s=180):
        r = _cli("import", export, "--data-dir", data, "--root-map", f"{OLD_ROOT}={copy_root}", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["runs"][0]["analyses"] == {}
        results = wait_for_results(server.client(), uid, N_FRAMES, timeout_s=180)
        assert results["analyses"]["operando_xrd"]["n_rows"] == N_FRAMES
        res = _cli("results", uid, "--data-dir", data, "--json")
        rep = _cli("replay", uid, "--data-dir", data, "--json")
    assert res.returncode == 0 and rep.returncode == 0, res.stderr + rep.stderr
    assert rep.stdout == res.stdout
    _check_lattice(json.loads(res.stdout)["analyses"]["operando_xrd"]["columns"], charge["frames"])


def test_replay_and_reprocess_take_the_same_description_options(charge, tmp_path):
    """Imported without --field: no voltages. replay/reprocess --field map them afterwards."""
    copy_root = tmp_path / "moved"
    export = _export(_renamed_run(charge, copy_root), tmp_path / "export", "jsonl")
    data = tmp_path / "data"
    r = _cli("import", export, "--data-dir", data, "--root-map", f"{OLD_ROOT}={copy_root}", "--analyse",
             "--json")
    assert r.returncode == 0, r.stderr
    uid = json.loads(r.stdout)["runs"][0]["uid"]
    volts = [f["rb"]["voltage_V"] for f in charge["frames"]]

    def columns(text):
        return json.loads(text)["analyses"]["operando_xrd"]["columns"]

    assert columns(_cli("results", uid, "--data-dir", data, "--json").stdout)["voltage_V"] == [None] * N_FRAMES
    rep = _cli("replay", uid, "--data-dir", data, "--field", "voltage=Ewe", "--json")
    assert rep.returncode == 0, rep.stderr
    assert columns(rep.stdout)["voltage_V"] == pytest.approx(volts)
    bad = _cli("replay", uid, "--data-dir", data, "--field", "volts=Ewe")
    assert bad.returncode == 2 and "--field volts: not an input of operando_xrd" in bad.stderr

    from strainstream.server import TiledServer

    with TiledServer(data) as server:  # reprocess writes through a server
        rp = _cli("reprocess", "--uid", uid, "--workers", "0", "--force", "--field", "voltage=Ewe",
                  "--uri", server.uri, "--api-key", server.api_key, "--data-dir", data, "--json")
        assert rp.returncode == 0, rp.stderr
    stored = columns(_cli("results", uid, "--data-dir", data, "--json").stdout)
    assert stored["voltage_V"] == pytest.approx(volts)
    _check_lattice(stored, charge["frames"])


def test_a_databroker_pack_folder_imports_every_run(charge, tmp_path):
    """databroker-pack's layout: ``documents/<uid>.jsonl`` per run, the detector files copied
    under ``external_files/`` (their recorded root mapped there)."""
    pack = tmp_path / "pack"
    files = pack / "external_files"
    uids = []
    for spec in ("AD_HDF5", "AD_TIFF"):
        docs = _classic_run(charge, spec, files / spec)
        docs[2][1]["root"] = f"{OLD_ROOT}/{spec}"  # each run's resource under its own root
        uids.append(docs[0][1]["uid"])
        _export(docs, pack / "documents" / spec, "jsonl")
    data = tmp_path / "data"
    r = _cli("import", pack, "--data-dir", data, "--json", "--root-map", f"{OLD_ROOT}={files}")
    assert r.returncode == 0, r.stderr
    runs = json.loads(r.stdout)["runs"]
    assert sorted(x["uid"] for x in runs) == sorted(uids)
    assert [x["status"] for x in runs] == ["imported", "imported"] and {x["events"] for x in runs} == {N_FRAMES}
    listed = json.loads(_cli("runs", "--data-dir", data, "--json").stdout)
    assert sorted(x["uid"] for x in listed) == sorted(uids)
