"""Beamtime folders -> one operando XRD run (strainstream.archives.folder).

The folder is built with the field's own writers from the forward models: frames of a
charging SC-NM91 coin cell (strainstream.sim) written by fabio (TifImage, EdfImage,
CbfImage), a PONI written by pyFAI, an EC-Lab-style .mpt log and a CSV log of the same
simulated charge. The documents go through the real XRD analysis (replay_documents) and the
lattice must come back within the tolerances of the native-run test
(tests/callbacks/test_xrd_callback.py: a ±5e-4 Å, c ±5e-3 Å for one phase; both c ±0.01 Å
in the two-phase window).
"""

from __future__ import annotations

import copy
import datetime as dt
import os
from pathlib import Path
from zoneinfo import ZoneInfo

import h5py
import numpy as np
import pytest
from event_model import DocumentNames, schema_validators

from strainstream.archives.cyclerlog import CyclerLogRangeError, PotentiostatFileError
from strainstream.archives.folder import FolderImportError, folder_run, frame_time
from strainstream.replay import replay_documents
from strainstream.sim.cell import CoinCell
from strainstream.sim.xrd_frames import DetectorGeometry, XRDFrameSimulator
from strainstream.xrd import load_poni

TZ = "Europe/Berlin"
START = dt.datetime(2026, 1, 15, 10, 0, 0)  # naive local time of the beamline (TZ)
T0 = START.replace(tzinfo=ZoneInfo(TZ)).timestamp()
MASS_MG = 10.0
LOG_STEP_S = 20.0
FRAME_ROWS = [2, 6, 10, 14, 18, 22, 26, 31]  # log rows at which a frame was taken


def _ctime(t_s: float) -> str:
    return dt.datetime.fromtimestamp(t_s, ZoneInfo(TZ)).replace(tzinfo=None).ctime()


def _mpt(path: Path, rows: list[tuple[float, ...]]) -> None:
    header = ["", "Galvanostatic Cycling with Potential Limitation", "",
              f"Acquisition started on : {START:%m/%d/%Y %H:%M:%S}.000", "Characteristic mass : 10,000 mg", ""]
    cols = ["mode", "time/s", "Ewe/V", "<I>/mA", "(Q-Qo)/mA.h", "cycle number"]
    lines = ["EC-Lab ASCII FILE", f"Nb header lines : {len(header) + 3}", *header, "\t".join(cols)]
    lines += ["\t".join(f"{v:.15E}".replace(".", ",") for v in (1, *r, 0)) for r in rows]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("cp1252"))


@pytest.fixture(scope="module")
def charge():
    """A simulated 1000 mA/g charge logged every 20 s; frames (512²) at FRAME_ROWS."""
    geo = DetectorGeometry.binned(4)
    sim = XRDFrameSimulator(geo)
    cell = CoinCell("SC-NM91", MASS_MG)
    cell.set_mode("CC", current_mA_g=1000.0, v_limit_V=4.6)
    rows, frames = [], []
    for k in range(FRAME_ROWS[-1] + 3):
        rb = cell.readbacks()
        rows.append((rb["time_s"], rb["voltage_V"], rb["current_mA"], rb["capacity_mAh_g"] * MASS_MG / 1000))
        if k in FRAME_ROWS:
            frames.append({"t": T0 + rb["time_s"], "image": sim.cell_frame(cell, seed=k).image,
                           "phases": cell.lattice(), "readbacks": rb})
        cell.step(LOG_STEP_S)
    inst = 2 * np.pi / geo.wavelength_A * np.radians(sim.instrument_fwhm_2theta_deg)
    return {"geo": geo, "rows": rows, "frames": frames, "inst_fwhm": inst}


def _poni(path: Path, geo: DetectorGeometry) -> Path:
    from pyFAI.detectors import Detector
    from pyFAI.geometry import Geometry

    p = geo.pixel_size_um * 1e-6
    Geometry(dist=geo.distance_m, poni1=geo.poni1_m, poni2=geo.poni2_m, rot1=geo.rot1_rad, rot2=geo.rot2_rad,
             rot3=geo.rot3_rad, detector=Detector(pixel1=p, pixel2=p, max_shape=geo.shape),
             wavelength=geo.wavelength_A * 1e-10).save(str(path))
    return path


def _write_tif(path: Path, image: np.ndarray, t_s: float) -> None:
    """fabio's TifImage writes the TIFF DateTime tag from time.ctime() (the time of writing).

    With an empty header fabio 2026.6 misplaces the Software and DateTime strings (the
    4-byte ImageDescription is stored inline, the offsets count it): give it a header.
    """
    import fabio.tifimage

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fabio.tifimage.time, "ctime", lambda *a: _ctime(t_s))
        fabio.tifimage.TifImage(data=image, header={"detector": "XRD1621", "exposure_s": "1.0"}).write(str(path))


@pytest.fixture(scope="module")
def tif_folder(charge, tmp_path_factory):
    root = tmp_path_factory.mktemp("beamtime")
    frames = root / "frames"
    frames.mkdir()
    for k, fr in enumerate(charge["frames"]):
        _write_tif(frames / f"cell7_{k:05d}.tif", fr["image"], fr["t"])
    (frames / "notes.txt").write_text("not a frame")
    _mpt(root / "cell7_C03.mpt", charge["rows"])
    geometry = dict(load_poni(_poni(root / "calib.poni", charge["geo"])), instrument_fwhm_A_inv=charge["inst_fwhm"])
    return root, geometry


@pytest.fixture(scope="module")
def tif_run(tif_folder, tmp_path_factory):
    root, geometry = tif_folder
    out = tmp_path_factory.mktemp("stacks")
    docs = list(folder_run(root, frames_glob="frames/*.tif", geometry=geometry, out_dir=out,
                           cycler_log=root / "cell7_C03.mpt", material="SC-NM91", mass_mg=MASS_MG,
                           timezone=TZ))
    return docs, out


def _analyse(docs):
    (cb,) = replay_documents(copy.deepcopy(docs), docs[0][1])
    return cb.sink.rows


def _check_lattice(rows, frames):
    """The assertions of tests/callbacks/test_xrd_callback.py::test_lattice_matches_the_simulated_cell."""
    assert [r["flag"] for r in rows] == [""] * len(frames)
    for row, fr in zip(rows, frames, strict=True):
        phases = fr["phases"]
        major = max(phases, key=lambda p: p.fraction)
        if len(phases) == 1:
            assert row["n_phases"] == 1
            assert row["a_A"] == pytest.approx(major.a_A, abs=5e-4)
            assert row["c_A"] == pytest.approx(major.c_A, abs=5e-3)
        else:
            assert row["n_phases"] == 2
            assert sorted([row["c_A"], row["c_A_2"]]) == pytest.approx(sorted(p.c_A for p in phases), abs=0.01)


# ----------------------------------------------------------------------------- documents
def test_documents_are_a_valid_operando_xrd_run(tif_run, charge, tif_folder):
    docs, out = tif_run
    names = [n for n, _ in docs]
    n = len(charge["frames"])
    assert names == ["start", "descriptor", "stream_resource"] + ["stream_datum", "event"] * n + ["stop"]
    for name, doc in docs:
        schema_validators[DocumentNames[name]].validate(doc)
    start, desc, res = docs[0][1], docs[1][1], docs[2][1]
    assert start["experiment"] == "operando_xrd" and start["material"] == "SC-NM91"
    assert start["mass_mg"] == MASS_MG and start["detectors"] == ["xrd"]
    assert start["calibration"]["wavelength_A"] == pytest.approx(charge["geo"].wavelength_A, rel=1e-12)
    assert start["calibration"]["shape"] == [512, 512] and start["time"] == charge["frames"][0]["t"]
    imp = start["imported_from"]
    assert imp["n_frames"] == n and imp["time_keys"] == ["date"] and imp["frames_outside_log"] == 0
    assert imp["cycler_log_format"] == "mpt" and imp["cycler_start_from"] == "header"
    assert desc["data_keys"]["xrd_image"] == {"source": f"FILE:{tif_folder[0]}", "dtype": "array",
                                              "dtype_numpy": "<u2", "shape": [512, 512], "external": "STREAM:"}
    assert set(desc["data_keys"]) == {"xrd_image", "xrd_frame_file", "cycler_voltage_V", "cycler_current_mA",
                                      "cycler_current_mA_g", "cycler_capacity_mAh", "cycler_capacity_mAh_g",
                                      "cycler_time_s", "cycler_in_range"}
    assert res["mimetype"] == "application/x-hdf5" and res["data_key"] == "xrd_image"
    assert res["parameters"] == {"dataset": "/entry/data/data", "chunk_shape": [1, 512, 512], "swmr": True}
    stack = Path(res["uri"].removeprefix("file://localhost"))
    assert stack.parent == out and stack.name == f"folder-{start['uid']}.h5"
    events = [d for nm, d in docs if nm == "event"]
    datums = [d for nm, d in docs if nm == "stream_datum"]
    assert [e["seq_num"] for e in events] == list(range(1, n + 1))
    assert [(d["seq_nums"]["start"], d["indices"]["start"]) for d in datums] == [(k + 1, k) for k in range(n)]
    assert [e["time"] for e in events] == [fr["t"] for fr in charge["frames"]]
    assert events[0]["data"]["xrd_frame_file"] == "frames/cell7_00000.tif"
    with h5py.File(stack, "r") as f:  # the frames, copied bit for bit in time order
        for k, fr in enumerate(charge["frames"]):
            np.testing.assert_array_equal(f["/entry/data/data"][k], fr["image"])
    # the cycler readings at the frame times are the log's rows (frames were taken at rows)
    for e, fr in zip(events, charge["frames"], strict=True):
        rb = fr["readbacks"]
        assert e["data"]["cycler_voltage_V"] == pytest.approx(rb["voltage_V"], rel=1e-13)
        assert e["data"]["cycler_capacity_mAh_g"] == pytest.approx(rb["capacity_mAh_g"], rel=1e-12, abs=1e-12)
        assert e["data"]["cycler_time_s"] == pytest.approx(rb["time_s"], abs=1e-9)
        assert e["data"]["cycler_in_range"] is True
    assert docs[-1][1]["exit_status"] == "success" and docs[-1][1]["num_events"] == {"primary": n}


def test_xrd_analysis_recovers_the_simulated_lattice(tif_run, charge):
    rows = _analyse(tif_run[0])
    _check_lattice(rows, charge["frames"])
    for row, fr in zip(rows, charge["frames"], strict=True):  # the cycler columns beside a, c
        assert row["voltage_V"] == pytest.approx(fr["readbacks"]["voltage_V"], rel=1e-13)
        assert row["cell_time_s"] == pytest.approx(fr["readbacks"]["time_s"], abs=1e-9)


def test_native_run_of_the_same_frames_gives_the_same_lattice(tif_run, charge, tmp_path, monkeypatch):
    import tempfile

    from bluesky import RunEngine
    from ophyd import Signal

    from strainstream.devices.detectors import sim_frame_detector
    from strainstream.plans.frames import frame_series

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # ophyd.sim leaves a temp dir
    imported = _analyse(tif_run[0])
    volt = Signal(name="cycler_voltage_V", value=0.0)

    def source(i):
        volt.put(charge["frames"][i]["readbacks"]["voltage_V"])
        return charge["frames"][i]["image"]

    det = sim_frame_detector("xrd", tmp_path / "native", frame_source=source, frame_shape=(512, 512))
    docs = []
    RE = RunEngine({})
    RE.subscribe(lambda n, d: docs.append((n, copy.deepcopy(d))))
    RE(frame_series([det, volt], num=len(charge["frames"]),
                    md={"experiment": "operando_xrd", "calibration": tif_run[0][0][1]["calibration"]}))
    native = _analyse(docs)
    for a, b in zip(native, imported, strict=True):
        assert (a["a_A"], a["c_A"], a["n_phases"]) == (b["a_A"], b["c_A"], b["n_phases"])


@pytest.mark.parametrize("fmt", ["edf", "cbf"])
def test_edf_and_cbf_frames_with_a_csv_log(fmt, charge, tmp_path):
    from fabio.cbfimage import CbfImage
    from fabio.edfimage import EdfImage

    picked = charge["frames"][::3]  # 3 frames
    for k, fr in enumerate(picked):
        image = fr["image"].astype(np.int32)
        local = dt.datetime.fromtimestamp(fr["t"], ZoneInfo(TZ)).replace(tzinfo=None)
        if fmt == "edf":
            EdfImage(data=image, header={"time": local.ctime()}).write(str(tmp_path / f"f_{k:03d}.edf"))
        else:
            contents = (f"# Detector: PILATUS3 2M, S/N 24-0118\r\n# {local.isoformat(timespec='milliseconds')}"
                        "\r\n# Exposure_time 1.0000000 s")
            CbfImage(data=image, header={"_array_data.header_contents": contents,
                                         "_array_data.header_convention": "PILATUS_1.2"}).write(
                str(tmp_path / f"f_{k:03d}.cbf"))
    # the log as a cycler program's CSV export: absolute UTC time column, amperes, decimal comma
    lines = ["Timestamp;Voltage (V);Current (A);Capacity (mAh)"]
    for t, v, i, q in charge["rows"]:
        stamp = dt.datetime.fromtimestamp(T0 + t, dt.UTC).isoformat()
        lines.append(f"{stamp};{v!r};{i / 1000!r};{q!r}".replace(".", ","))
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    geometry = dict(load_poni(_poni(tmp_path / "calib.poni", charge["geo"])),
                    instrument_fwhm_A_inv=charge["inst_fwhm"])
    docs = list(folder_run(tmp_path, frames_glob=f"*.{fmt}", geometry=geometry, out_dir=tmp_path / "out",
                           cycler_log=tmp_path / "log.csv", mass_mg=MASS_MG, timezone=TZ))
    start = docs[0][1]
    assert start["imported_from"]["time_keys"] == (["time"] if fmt == "edf" else ["CBF header date line"])
    assert start["imported_from"]["cycler_start_from"] == "column 'Timestamp'"
    events = [d for n, d in docs if n == "event"]
    assert [e["time"] for e in events] == [fr["t"] for fr in picked]
    assert [e["data"]["cycler_voltage_V"] for e in events] == pytest.approx(
        [fr["readbacks"]["voltage_V"] for fr in picked], rel=1e-13)
    _check_lattice(_analyse(docs), picked)


# ----------------------------------------------------------------------------- uid, times
def _small_folder(root: Path, n: int = 4, shape=(32, 40), fmt: str = "tif") -> list[float]:
    """n small TIFF frames with header times T0 + 10 k s; returns those times."""
    root.mkdir(parents=True, exist_ok=True)
    times = []
    for k in range(n):
        image = np.full(shape, k, np.uint16)
        _write_tif(root / f"img_{k:03d}.{fmt}", image, T0 + 10.0 * k)
        times.append(T0 + 10.0 * k)
    return times


GEOM = {"distance_m": 1.0, "poni1_m": 0.003, "poni2_m": 0.004, "rot1": 0.0, "rot2": 0.0, "rot3": 0.0,
        "wavelength_A": 0.1665, "pixel_size_um": 200.0}


def _run(root, **kw):
    kw.setdefault("frames_glob", "*.tif")
    kw.setdefault("geometry", GEOM)
    kw.setdefault("out_dir", root / "out")
    kw.setdefault("timezone", TZ)
    return list(folder_run(root, **kw))


def test_uid_is_deterministic_and_the_stack_is_reused(tmp_path):
    _small_folder(tmp_path / "f")
    first = _run(tmp_path / "f")
    stack = Path(first[2][1]["uri"].removeprefix("file://localhost"))
    written = stack.stat().st_mtime_ns
    again = _run(tmp_path / "f")
    assert again == first  # every document, uids included
    assert stack.stat().st_mtime_ns == written and sorted(os.listdir(stack.parent)) == [stack.name]
    assert _run(tmp_path / "f", out_dir=tmp_path / "elsewhere")[0][1]["uid"] == first[0][1]["uid"]
    assert _run(tmp_path / "f", time_source="mtime")[0][1]["uid"] != first[0][1]["uid"]
    assert _run(tmp_path / "f", md={"sample": "x"})[0][1]["uid"] != first[0][1]["uid"]
    os.utime(tmp_path / "f" / "img_001.tif", ns=(1, 1))  # a file changed: another run
    assert _run(tmp_path / "f")[0][1]["uid"] != first[0][1]["uid"]


def test_header_or_mtime_times_and_sorting_by_time(tmp_path):
    times = _small_folder(tmp_path)
    mtimes = [T0 + 1000.0 - 100.0 * k for k in range(4)]  # reversed order of the header times
    for k, t in enumerate(mtimes):
        os.utime(tmp_path / f"img_{k:03d}.tif", (t, t))
    by_header = [d for n, d in _run(tmp_path) if n == "event"]
    assert [e["time"] for e in by_header] == times
    assert [e["data"]["xrd_frame_file"] for e in by_header] == [f"img_{k:03d}.tif" for k in range(4)]
    docs = _run(tmp_path, time_source="mtime")
    by_mtime = [d for n, d in docs if n == "event"]
    assert [e["time"] for e in by_mtime] == pytest.approx(sorted(mtimes), abs=1e-6)
    assert [e["data"]["xrd_frame_file"] for e in by_mtime] == [f"img_{k:03d}.tif" for k in (3, 2, 1, 0)]
    stack = docs[2][1]["uri"].removeprefix("file://localhost")
    with h5py.File(stack, "r") as f:  # the stack is in event (time) order
        assert [int(f["/entry/data/data"][k][0, 0]) for k in range(4)] == [3, 2, 1, 0]
    assert frame_time(tmp_path / "img_002.tif", timezone=TZ) == times[2]
    # fabio's TIFF writer stores ctime; the TIFF standard form is read too
    from fabio.TiffIO import TiffIO

    with TiffIO(str(tmp_path / "std.tif"), mode="w") as tif:
        tif.writeImage(np.zeros((32, 40), np.uint16), date="2026:01:15 10:00:07")
    assert frame_time(tmp_path / "std.tif", timezone=TZ) == T0 + 7


def test_hdf5_frames_with_areadetector_timestamps(tmp_path):
    stack = np.arange(3 * 32 * 40, dtype=np.float32).reshape(3, 32, 40)
    with h5py.File(tmp_path / "scan_000.h5", "w") as f:
        f["/entry/data/data"] = stack
        f["/entry/instrument/NDAttributes/NDArrayEpicsTSSec"] = np.array([1, 2, 3]) + int(T0 - 631152000)
        f["/entry/instrument/NDAttributes/NDArrayEpicsTSnSec"] = np.array([0, 500_000_000, 0])
    with h5py.File(tmp_path / "scan_001.h5", "w") as f:
        f["/entry/other/image"] = stack[0] + 1000
        f["/entry/start_time"] = "2026-01-15T10:00:09"
    docs = _run(tmp_path, frames_glob="*.h5")
    events = [d for n, d in docs if n == "event"]
    assert [e["time"] for e in events] == [T0 + 1, T0 + 2.5, T0 + 3, T0 + 9]
    assert [e["data"]["xrd_frame_file"] for e in events] == ["scan_000.h5", "scan_000.h5::1", "scan_000.h5::2",
                                                           "scan_001.h5"]
    assert docs[1][1]["data_keys"]["xrd_image"]["dtype_numpy"] == "<f4"
    with pytest.raises(FolderImportError, match=r"scan_000\.h5: holds 3 frames and one modification time"):
        _run(tmp_path, frames_glob="*.h5", time_source="mtime")


# ----------------------------------------------------------------------------- the log
def _csv_log(path: Path, t_from: float, t_to: float) -> None:
    lines = ["DateTime,Ewe/V,I/mA,(Q-Qo)/mA.h"]
    for t in t_from + 5.0 * np.arange(round((t_to - t_from) / 5.0) + 1):
        lines.append(f"{dt.datetime.fromtimestamp(t, dt.UTC).isoformat()},{3.5 + (t - T0) / 1000},1.0,"
                     f"{(t - t_from) / 3600}")
    path.write_text("\n".join(lines) + "\n")


def test_frames_partly_outside_the_log_are_flagged_and_counted(tmp_path):
    _small_folder(tmp_path)  # frames at T0 + 0, 10, 20, 30 s
    _csv_log(tmp_path / "log.csv", T0 + 5.0, T0 + 20.0)
    docs = _run(tmp_path, cycler_log=tmp_path / "log.csv")
    events = [d for n, d in docs if n == "event"]
    assert [e["data"]["cycler_in_range"] for e in events] == [False, True, True, False]
    assert np.isnan(events[0]["data"]["cycler_voltage_V"]) and events[1]["data"]["cycler_voltage_V"] == 3.51
    assert docs[0][1]["imported_from"]["frames_outside_log"] == 2
    assert docs[-1][1]["reason"] == "2 of 4 frames outside the cycler log's time range (readings NaN, " \
                                    "cycler_in_range false)"
    assert "cycler_capacity_mAh_g" not in events[1]["data"]  # no mass given


def test_a_log_that_does_not_overlap_the_frames_is_an_error(tmp_path):
    _small_folder(tmp_path)
    _csv_log(tmp_path / "log.csv", T0 + 7200.0, T0 + 7300.0)  # e.g. a timezone mix-up
    with pytest.raises(CyclerLogRangeError, match=r"log\.csv covers .* and the times asked for span .* 7170 s "
                                                  r"before it: check the frames' time source"):
        _run(tmp_path, cycler_log=tmp_path / "log.csv")
    (tmp_path / "odd.csv").write_text("DateTime,U/V,I/mA,(Q-Qo)/mA.h\n2026-01-15T09:00:00Z,3.5,1,0\n")
    with pytest.raises(PotentiostatFileError, match=r"no voltage column .* --field voltage=HEADER\); the file "
                                                    r"has: U/V, I/mA, \(Q-Qo\)/mA.h"):
        _run(tmp_path, cycler_log=tmp_path / "odd.csv")


# ----------------------------------------------------------------------------- bad frames
def test_bad_frames_are_named(tmp_path):
    _small_folder(tmp_path / "shape")
    _write_tif(tmp_path / "shape" / "img_009.tif", np.zeros((32, 41), np.uint16), T0 + 90)
    with pytest.raises(FolderImportError, match=r"img_009\.tif: frame of shape 32×41, the first "
                                                r"\(img_000\.tif\) is 32×40"):
        _run(tmp_path / "shape")
    assert not (tmp_path / "shape" / "out").exists() or not any((tmp_path / "shape" / "out").iterdir())

    _small_folder(tmp_path / "junk")
    (tmp_path / "junk" / "img_005.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(FolderImportError, match=r"img_005\.tif: cannot be read as a detector image"):
        _run(tmp_path / "junk")

    from fabio.edfimage import EdfImage

    (tmp_path / "nohdr").mkdir()
    EdfImage(data=np.zeros((32, 40), np.int32)).write(str(tmp_path / "nohdr" / "a.edf"))
    with pytest.raises(FolderImportError, match=r"a\.edf: has no time in its header .* use time_source='mtime'"):
        _run(tmp_path / "nohdr", frames_glob="*.edf")
    assert len(_run(tmp_path / "nohdr", frames_glob="*.edf", time_source="mtime")) == 6

    with pytest.raises(FolderImportError, match=r"no file matches '\*\.cbf' \(the folder holds a\.edf"):
        _run(tmp_path / "nohdr", frames_glob="*.cbf")
    with pytest.raises(FolderImportError, match=r"frames are 32×40 pixels and the geometry \(PONI\) is for a "
                                                r"2048×2048 detector"):
        _run(tmp_path / "shape", frames_glob="img_00[0-3].tif", geometry=dict(GEOM, shape=[2048, 2048]))
    with pytest.raises(FolderImportError, match="geometry must be a dict with wavelength_A"):
        _run(tmp_path / "shape", geometry={k: v for k, v in GEOM.items() if k != "wavelength_A"})
    with pytest.raises(ValueError, match="time_source must be 'header' or 'mtime'"):
        _run(tmp_path / "shape", time_source="exif")


# ----------------------------------------------------------------------------- the command
@pytest.mark.system
@pytest.mark.timeout(600)
def test_import_command_builds_and_analyses_the_folder_run(tif_folder, charge, tmp_path):
    """``strainstream import FOLDER --frames --poni --cycler --analyse``: one operando run,
    its lattice as the simulator's, the same uid (a no-op) when imported again."""
    import json
    import subprocess
    import sys

    root, geometry = tif_folder
    data = tmp_path / "data"
    cli = [sys.executable, "-m", "strainstream.cli", "import", str(root), "--frames", "frames/*.tif",
           "--poni", str(root / "calib.poni"), "--cycler", str(root / "cell7_C03.mpt"),
           "--mass-mg", str(MASS_MG), "--material", "SC-NM91", "--timezone", TZ,
           "--data-dir", str(data), "--json"]
    r = subprocess.run([*cli, "--analyse"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (run,) = json.loads(r.stdout)["runs"]
    assert run["events"] == len(charge["frames"]) and run["status"] == "imported"
    assert run["analyses"]["operando_xrd"]["status"] == "done"
    res = subprocess.run([sys.executable, "-m", "strainstream.cli", "results", run["uid"], "--data-dir",
                          str(data), "--json"], capture_output=True, text=True, timeout=120)
    cols = json.loads(res.stdout)["analyses"]["operando_xrd"]["columns"]
    # the PONI file holds no instrumental width: microstrain is not checked, a and c are
    for k, fr in enumerate(charge["frames"]):
        phases = fr["phases"]
        if len(phases) == 1:
            assert cols["a_A"][k] == pytest.approx(phases[0].a_A, abs=5e-4)
            assert cols["c_A"][k] == pytest.approx(phases[0].c_A, abs=5e-3)
        assert cols["voltage_V"][k] == pytest.approx(fr["readbacks"]["voltage_V"], rel=1e-9)
    again = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    (run2,) = json.loads(again.stdout)["runs"]
    assert (run2["uid"], run2["status"]) == (run["uid"], "present")
    # options of a folder import refused without --frames; a folder without frames: one line
    bad = subprocess.run([*cli[:5], "--cycler", "x.mpt", "--data-dir", str(data)], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("strainstream import: error: --cycler belongs to a beamtime folder "
                                  "import (with --frames)")
