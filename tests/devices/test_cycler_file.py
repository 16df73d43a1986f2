"""The cycler: the IOC's PV table (docs/cycler-ioc.md) and the potentiostat file follower.

Synthetic export files whose values are exactly known: an EC-Lab text export (.mpt, CRLF,
cp1252 header, decimal comma), CSV tables, and an EC-Lab .mpr binary laid out the way galvani
reads it. Files grow line by line while the device reads them, partial last lines included.
"""

from __future__ import annotations

import builtins
import copy
import os
import re
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from strainstream.devices.cycler_file import (
    CyclerFileFollower,
    PotentiostatFileError,
    PotentiostatFileNotReady,
    cycler_file,
)
from strainstream.errors import StrainstreamError

ROOT = Path(__file__).resolve().parents[2]
MASS_MG = 8.0
#: the readings the IOC cycler device records as described by the running IOC (dtype, units;
#: test_follower_describes_its_readings_like_the_ioc_device checks them against the IOC)
IOC_DESCRIPTORS = {
    "cycler_voltage_V": ("number", ""), "cycler_current_mA": ("number", ""),
    "cycler_current_mA_g": ("number", ""), "cycler_capacity_mAh_g": ("number", ""),
    "cycler_cycle": ("integer", ""), "cycler_time_s": ("number", ""),
}


@pytest.fixture(autouse=True)
def _ophyd_tempdir(tmp_path, monkeypatch):
    # importing ophyd.sim (the RunEngine test, mock devices) leaves a temporary directory
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


# ----------------------------------------------------------------------------- IOC PV table
_TYPE = {"PvpropertyDouble": "double", "PvpropertyDoubleRO": "double",
         "PvpropertyInteger": "long", "PvpropertyIntegerRO": "long",
         "PvpropertyEnum": "enum", "PvpropertyEnumRO": "enum",
         "PvpropertyChar": "string", "PvpropertyCharRO": "string"}
_UNIT_SUFFIX = (("_mAh_g", "mAh/g"), ("_mA_g", "mA/g"), ("_mA", "mA"), ("_mg", "mg"),
                ("_V", "V"), ("_s", "s"))


def _doc_table() -> dict[str, dict[str, str]]:
    rows = {}
    for line in (ROOT / "docs" / "cycler-ioc.md").read_text().splitlines():
        m = re.match(r"^\| `(CYC:[^`]+)` \| ([^|]+) \| ([^|]+) \| ([^|]+) \| (.+) \|$", line)
        if m:
            pv, typ, units, access, meaning = (g.strip() for g in m.groups())
            assert pv not in rows, f"{pv} listed twice"
            rows[pv] = {"type": typ, "units": units, "access": access, "meaning": meaning}
    return rows


def test_cycler_ioc_pv_table_lists_every_pv_of_the_ioc():
    from strainstream.devices.ioc.cycler import build

    ioc = build("SS:", xrd_shape=256)  # the pvdb that --list-pvs prints
    assert all(pv.startswith(("SS:CYC:", "SS:XRD:")) for pv in ioc.pvdb), \
        "the cycler IOC serves a PV group the docs do not know"
    served = {pv[len("SS:"):]: inst for pv, inst in ioc.pvdb.items() if pv.startswith("SS:CYC:")}
    table = _doc_table()
    assert sorted(set(served) - set(table)) == [], "PVs served but not in docs/cycler-ioc.md"
    assert sorted(set(table) - set(served)) == [], "PVs in docs/cycler-ioc.md the IOC does not serve"
    for pv, inst in served.items():
        row = table[pv]
        assert row["type"] == _TYPE[type(inst).__name__], pv
        assert row["access"] == ("R" if inst.pvspec.read_only else "R/W"), pv
        assert row["meaning"], pv
        unit = next((u for sfx, u in _UNIT_SUFFIX if pv.endswith(sfx)), None)
        if unit is not None:
            assert row["units"] == unit, pv


def test_cycler_ioc_list_pvs_command_matches_the_table():
    import subprocess

    out = subprocess.run([sys.executable, "-m", "strainstream.devices.ioc", "cycler", "--prefix",
                          "SS:", "--port", "0", "--list-pvs"], capture_output=True, text=True,
                         check=True, timeout=120)
    listed = {line[len("SS:"):] for line in out.stdout.split() if line.startswith("SS:CYC:")}
    assert listed == set(_doc_table())


# ----------------------------------------------------------------------------- file writers
def _mpt_header(columns: list[str]) -> str:
    """A realistic EC-Lab GCPL export header (CRLF line ends), 'Nb header lines' counted."""
    body = [
        "",
        "Galvanostatic Cycling with Potential Limitation",
        "",
        "Run on channel : 3 (SN 12345)",
        "User : beamline",
        "Ewe ctrl range : min = 0,00 V, max = 5,00 V",
        "Safety Limits :",
        "\tEwe min = 2,5 V",
        "\tEwe max = 4,8 V",
        "Acquisition started on : 01/15/2026 10:00:00.000",
        "Saved on :",
        "\tFile : cell7_C03.mpr",
        "\tDirectory : D:\\data\\operando\\",
        "Device : VMP-300 (SN 0815)",
        "EC-Lab for windows v11.50 (software)",
        "Electrode surface area : 1,130 cm²",
        "Characteristic mass : 8,000 mg",
        "Cycle Definition : Charge/Discharge alternance",
        "Ns                  0",
        "Set I/C             I",
        "Is                  160,000",
        "unit Is             µA",
        "EM (V)              4,500",
        "",
    ]
    n = len(body) + 3  # magic line, 'Nb header lines', column names
    lines = ["EC-Lab ASCII FILE", f"Nb header lines : {n}", *body, "\t".join(columns)]
    return "\r\n".join(lines) + "\r\n"


MPT_COLUMNS = ["mode", "ox/red", "error", "control changes", "Ns changes", "counter inc.", "Ns",
               "time/s", "control/V/mA", "Ewe/V", "<I>/mA", "dQ/mA.h", "(Q-Qo)/mA.h",
               "Q charge/discharge/mA.h", "half cycle", "cycle number", "P/W"]


def _mpt_line(t_s, v, i_mA, qqo_mAh, q_half, half, cycle) -> str:
    """One data line as EC-Lab writes it in a decimal-comma locale."""
    def num(x):
        return f"{x:.15E}".replace(".", ",")
    fields = ["1", "1", "0", "0", "0", "0", "0", num(t_s), num(0.16), num(v), num(i_mA), num(0.0),
              num(qqo_mAh), num(q_half), str(half), num(cycle), num(v * i_mA / 1000)]
    return "\t".join(fields) + "\r\n"


def _append(path: Path, text: str, encoding: str = "utf-8") -> None:
    with open(path, "ab") as f:
        f.write(text.encode(encoding))


def _values(dev: CyclerFileFollower) -> dict:
    return {k: v["value"] for k, v in dev.read().items()}


# ----------------------------------------------------------------------------- text exports
def test_mpt_decimal_comma_grown_line_by_line_gives_the_newest_row(tmp_path):
    path = tmp_path / "cell7_C03.mpt"
    dev = cycler_file(path, active_mass_mg=MASS_MG)
    _append(path, _mpt_header(MPT_COLUMNS)[:200], "cp1252")  # the header is being written
    with pytest.raises(PotentiostatFileNotReady, match="no column names yet"):
        dev.read()
    _append(path, _mpt_header(MPT_COLUMNS)[200:], "cp1252")
    with pytest.raises(PotentiostatFileNotReady, match="no complete data row yet"):
        dev.read()
    assert dev.format == "mpt"
    # 1.28 mA on 8 mg = 160 mA/g; 0.0256 mA·h = 3.2 mAh/g after 72 s
    rows = [(0.0, 3.5, 1.28, 0.0, 0.0, 0, 0), (36.0, 3.625, 1.28, 0.0128, 0.0128, 0, 0),
            (72.0, 3.75, 1.28, 0.0256, 0.0256, 0, 0)]
    for k, row in enumerate(rows):
        _append(path, _mpt_line(*row))
        got = _values(dev)
        assert got == {
            "cycler_voltage_V": row[1], "cycler_current_mA": row[2],
            "cycler_current_mA_g": pytest.approx(160.0, rel=1e-12),
            "cycler_capacity_mAh_g": pytest.approx(row[3] * 1000 / MASS_MG, rel=1e-12),
            "cycler_cycle": 1, "cycler_time_s": row[0],
        }, k
        assert type(got["cycler_cycle"]) is int and type(got["cycler_voltage_V"]) is float
    partial = _mpt_line(108.0, 3.875, 1.28, 0.0384, 0.0384, 0, 0)
    _append(path, partial[:40])  # EC-Lab is writing the next line
    assert _values(dev)["cycler_voltage_V"] == 3.75
    _append(path, partial[40:-1])  # all but the final "\n" (CR written, LF not yet)
    assert _values(dev)["cycler_time_s"] == 72.0
    _append(path, "\n")
    got = _values(dev)
    assert got["cycler_voltage_V"] == 3.875 and got["cycler_time_s"] == 108.0
    assert got["cycler_capacity_mAh_g"] == pytest.approx(4.8, rel=1e-12)


def test_text_is_read_incrementally_from_the_byte_offset(tmp_path, monkeypatch):
    import strainstream.devices.cycler_file as mod

    path = tmp_path / "run.csv"
    path.write_text("time/s,Ewe/V,I/mA,(Q-Qo)/mA.h,cycle number\n")
    read_bytes = []

    class Counting:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            data = self.f.read(n)
            read_bytes.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(mod, "open", lambda *a, **k: Counting(builtins.open(*a, **k)), raising=False)
    dev = cycler_file(path, active_mass_mg=MASS_MG)
    for k in range(200):
        with open(path, "a") as f:
            f.write(f"{10.0 * k},{3.5 + 0.001 * k:.3f},1.0,{k / 360:.9f},1\n")
        assert _values(dev)["cycler_time_s"] == 10.0 * k
    size = path.stat().st_size
    # every byte read once (the format sniff reads the first bytes until the first line is in)
    assert size <= sum(read_bytes) <= size + len(mod._MPR_MAGIC)


def test_csv_semicolon_decimal_comma_and_unit_conversion(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text("# cycler export\n"
                    "Test_Time(s);Voltage(V);Current(A);Capacity(mAh);Cycle_Index\n"
                    "0;3,500;0,00128;0,0;1\n"
                    "3600;3,900;0,00128;1,28;1\n", encoding="utf-8")
    got = _values(cycler_file(path, active_mass_mg=MASS_MG))
    assert got == {"cycler_time_s": 3600.0, "cycler_voltage_V": 3.9,
                   "cycler_current_mA": pytest.approx(1.28, rel=1e-12),
                   "cycler_current_mA_g": pytest.approx(160.0, rel=1e-12),
                   "cycler_capacity_mAh_g": pytest.approx(160.0, rel=1e-12), "cycler_cycle": 1}


def test_csv_with_the_data_keys_own_names(tmp_path):
    path = tmp_path / "own.csv"
    path.write_text("time_s,voltage_V,current_mA,capacity_mAh_g,cycle\n5,4.25,-0.5,12.5,3\n")
    got = _values(cycler_file(path, active_mass_mg=MASS_MG))
    assert got == {"cycler_time_s": 5.0, "cycler_voltage_V": 4.25, "cycler_current_mA": -0.5,
                   "cycler_current_mA_g": -62.5, "cycler_capacity_mAh_g": 12.5, "cycler_cycle": 3}


@pytest.mark.parametrize("with_half_cycle", [True, False])
def test_q_charge_discharge_is_summed_over_half_cycles(tmp_path, with_half_cycle):
    """EC-Lab's Q charge/discharge restarts at 0 each half cycle; the net capacity does not."""
    cols = ["time/s", "Ewe/V", "I/mA", "Q charge/discharge/mA.h"]
    cols += ["half cycle"] if with_half_cycle else ["cycle number"]
    path = tmp_path / "gcpl.mpt"
    _append(path, _mpt_header(cols))
    dev = cycler_file(path, active_mass_mg=MASS_MG)
    # charge to 0.04 mA·h, discharge 0.03 mA·h, charge again 0.01 mA·h: net 0.02 mA·h
    rows = [(0, 3.5, 1.0, 0.0, 0), (72, 4.0, 1.0, 0.02, 0), (144, 4.5, 1.0, 0.04, 0),
            (180, 4.3, -1.0, -0.01, 1), (288, 3.0, -1.0, -0.03, 1),
            (324, 3.6, 1.0, 0.01, 2)]
    expected_net = [0.0, 0.02, 0.04, 0.03, 0.01, 0.02]
    expected_cycle = [1, 1, 1, 1, 1, 2]
    for row, net, cyc in zip(rows, expected_net, expected_cycle, strict=True):
        t, v, i, q, half = row
        last = half if with_half_cycle else half // 2
        line = "\t".join(f"{x}".replace(".", ",") for x in (t, v, i, q)) + f"\t{last}\r\n"
        _append(path, line)
        got = _values(dev)
        assert got["cycler_capacity_mAh_g"] == pytest.approx(net * 1000 / MASS_MG, abs=1e-12)
        assert got["cycler_cycle"] == cyc


def test_same_row_while_the_file_does_not_grow_and_its_age(tmp_path):
    path = tmp_path / "slow.csv"
    path.write_text("time/s,Ewe/V,I/mA,(Q-Qo)/mA.h,cycle\n0,3.5,1,0,1\n60,3.6,1,0.01,1\n")
    written = time.time() - 100.0
    os.utime(path, (written, written))
    dev = cycler_file(path, active_mass_mg=MASS_MG)
    first = dev.read()
    second = dev.read()
    assert first == second  # values and timestamps
    assert first["cycler_voltage_V"] == {"value": 3.6, "timestamp": pytest.approx(written, abs=1e-3)}
    assert 100.0 <= dev.row_age_s.get() < 110.0
    assert dev.row_age_s.name not in first  # not an event key (kind omitted)
    with open(path, "a") as f:
        f.write("120,3.7,1,0.02,1\n")
    assert dev.read()["cycler_voltage_V"]["value"] == 3.7
    assert 0.0 <= dev.row_age_s.get() < 10.0


def test_a_replaced_file_is_read_from_the_start(tmp_path):
    path = tmp_path / "run.csv"
    path.write_text("time/s,Ewe/V,I/mA,(Q-Qo)/mA.h,cycle\n0,3.5,1,0,1\n60,3.6,1,0.01,1\n")
    dev = cycler_file(path, active_mass_mg=MASS_MG)
    assert _values(dev)["cycler_time_s"] == 60.0
    path.write_text("time/s,Ewe/V,I/mA,(Q-Qo)/mA.h,cycle\n5,3.4,1,0,1\n")  # shorter: a new file
    assert _values(dev)["cycler_time_s"] == 5.0


# ----------------------------------------------------------------------------- errors
def test_missing_column_names_the_file_and_the_column(tmp_path):
    path = tmp_path / "no_current.csv"
    path.write_text("time/s,Ewe/V,(Q-Qo)/mA.h,cycle number\n0,3.5,0,0\n")
    dev = cycler_file(path, active_mass_mg=MASS_MG)
    with pytest.raises(PotentiostatFileError, match=r"no_current\.csv: no current column "
                                                    r"\(accepted: I/mA, <I>/mA.*the file has: "
                                                    r"time/s, Ewe/V, \(Q-Qo\)/mA.h, cycle number") as e:
        dev.read()
    assert isinstance(e.value, StrainstreamError) and isinstance(e.value, OSError)
    assert e.value.column == "current" and e.value.path == str(path)
    # EC-Lab's Capacity/mA.h is |Q| of the half cycle, not a net capacity: refused in .mpt
    path = tmp_path / "cap.mpt"
    _append(path, _mpt_header(["time/s", "Ewe/V", "I/mA", "Capacity/mA.h", "cycle number"]))
    with pytest.raises(PotentiostatFileError, match="no capacity column") as e:
        cycler_file(path, active_mass_mg=MASS_MG).read()
    assert e.value.column == "capacity"
    # a column picked by name
    path = tmp_path / "threeel.csv"
    path.write_text("time/s,Ewe-Ece/V,Ewe/V,I/mA,(Q-Qo)/mA.h,cycle\n0,4.0,3.5,1,0,1\n")
    got = _values(cycler_file(path, active_mass_mg=MASS_MG, columns={"voltage": "Ewe-Ece/V"}))
    assert got["cycler_voltage_V"] == 4.0


def test_unreadable_rows_and_formats_are_named(tmp_path):
    path = tmp_path / "dates.csv"
    path.write_text("time/s,Ewe/V,I/mA,(Q-Qo)/mA.h,cycle\n01/15/2026 10:00:00,3.5,1,0,1\n")
    with pytest.raises(PotentiostatFileError, match=r"line 2: 'time/s' is '01/15/2026 10:00:00', "
                                                    "not a number"):
        cycler_file(path, active_mass_mg=MASS_MG).read()
    path = tmp_path / "short.csv"
    path.write_text("time/s,Ewe/V,I/mA,(Q-Qo)/mA.h,cycle\n0,3.5\n")
    with pytest.raises(PotentiostatFileError, match="line 2 has 2 fields, no 'I/mA'"):
        cycler_file(path, active_mass_mg=MASS_MG).read()
    path = tmp_path / "bad.mpt"
    path.write_text("EC-Lab ASCII FILE\r\nheader lines : many\r\n")
    with pytest.raises(PotentiostatFileError, match="without a valid 'Nb header lines : N' line"):
        cycler_file(path, active_mass_mg=MASS_MG).read()
    with pytest.raises(ValueError, match="active_mass_mg must be the positive"):
        cycler_file(path, active_mass_mg=0)


def test_missing_file_read_raises_and_trigger_waits(tmp_path):
    path = tmp_path / "later.mpt"
    dev = cycler_file(path, active_mass_mg=MASS_MG, wait_timeout_s=0.3, poll_interval_s=0.05)
    with pytest.raises(PotentiostatFileNotReady, match=f"{re.escape(str(path))}: does not exist"):
        dev.read()
    t0 = time.monotonic()
    with pytest.raises(PotentiostatFileNotReady, match=r"does not exist.*\(waited 0.3 s\)"):
        dev.trigger().wait(timeout=5)
    assert time.monotonic() - t0 >= 0.3
    # the file appears while trigger waits
    dev = cycler_file(path, active_mass_mg=MASS_MG, wait_timeout_s=10, poll_interval_s=0.05)
    status = dev.trigger()
    assert not status.done
    _append(path, _mpt_header(MPT_COLUMNS))
    time.sleep(0.2)
    assert not status.done  # a header but no row yet
    _append(path, _mpt_line(0.0, 3.5, 1.28, 0.0, 0.0, 0, 0))
    status.wait(timeout=5)
    assert status.success and _values(dev)["cycler_voltage_V"] == 3.5


# ----------------------------------------------------------------------------- as the IOC device
def test_follower_reads_like_the_ioc_cycler_device(tmp_path):
    from strainstream.devices.cycler import cycler

    path = tmp_path / "run.csv"
    path.write_text("time/s,Ewe/V,I/mA,(Q-Qo)/mA.h,cycle\n0,3.5,1,0,1\n")
    dev = cycler_file(path, active_mass_mg=MASS_MG)
    desc = dev.describe()
    assert {k: (d["dtype"], d["units"]) for k, d in desc.items()} == IOC_DESCRIPTORS
    assert all(d["shape"] == [] for d in desc.values())
    ioc_dev = cycler("SS:", mock=True)
    assert set(desc) <= set(ioc_dev.describe())  # the IOC device's keys, none of its own
    assert dev.hints == {"fields": ["cycler_voltage_V", "cycler_capacity_mAh_g"]}
    assert dev.read_configuration()["cycler_mass_mg"]["value"] == MASS_MG
    assert dev.follow_only and not getattr(ioc_dev, "follow_only", False)


@pytest.mark.system
def test_follower_describes_its_readings_like_the_ioc_device(sim_devices, tmp_path):
    ioc_desc = sim_devices["cycler"].describe()
    assert {k: (d["dtype"], d["units"]) for k, d in ioc_desc.items() if k in IOC_DESCRIPTORS} \
        == IOC_DESCRIPTORS


def _run(plan, tmp_path, on_event=None):
    from bluesky import RunEngine

    docs = []
    RE = RunEngine({})
    RE.subscribe(lambda n, d: docs.append((n, copy.deepcopy(d))))
    if on_event is not None:
        RE.subscribe(on_event, "event")
    RE(plan)
    return docs


def test_count_events_carry_the_newest_row_each_time(tmp_path):
    from bluesky.plans import count

    lines = [_mpt_line(36.0 * k, 3.5 + 0.125 * k, 1.28, 0.0128 * k, 0.0, 0, 0) for k in range(7)]
    path = tmp_path / "count.mpt"
    _append(path, _mpt_header(MPT_COLUMNS) + lines[0] + lines[1][:25])
    dev = cycler_file(path, active_mass_mg=MASS_MG)
    k = [0]

    def grow(name, doc):  # after every event: finish the partial line, start the next one
        k[0] += 1
        _append(path, lines[k[0]][25:] + lines[k[0] + 1][:25])

    docs = _run(count([dev], num=5), tmp_path, grow)
    events = [d for n, d in docs if n == "event"]
    assert [e["data"]["cycler_voltage_V"] for e in events] == [3.5, 3.625, 3.75, 3.875, 4.0]
    assert [e["data"]["cycler_time_s"] for e in events] == [0.0, 36.0, 72.0, 108.0, 144.0]
    assert [e["data"]["cycler_capacity_mAh_g"] for e in events] == pytest.approx(
        [0.0128 * n * 1000 / MASS_MG for n in range(5)], rel=1e-12)
    (desc,) = [d for n, d in docs if n == "descriptor"]
    assert {k: (v["dtype"], v["units"]) for k, v in desc["data_keys"].items()} == IOC_DESCRIPTORS


def test_operando_plan_follows_the_file_and_stops_at_the_voltage_limit(tmp_path):
    from strainstream.devices.detectors import sim_frame_detector
    from strainstream.plans.xrd import operando_xrd

    path = tmp_path / "cell.csv"
    path.write_text("time/s;Ewe/V;<I>/mA;(Q-Qo)/mA.h;cycle number\n0;3,5;1,6;0;0\n")
    dev = cycler_file(path, active_mass_mg=MASS_MG)
    det = sim_frame_detector("xrd", tmp_path / "frames", frame_shape=(16, 16))
    k = [0]

    def grow(name, doc):
        k[0] += 1
        with open(path, "a") as f:
            f.write(f"{60 * k[0]};{3.5 + 0.25 * k[0]:.2f};1,6;{0.0267 * k[0]:.4f};0\n".replace(".", ","))

    docs = _run(operando_xrd(det, dev, calibration={"wavelength_A": 0.1665}, rate_mA_g=200.0,
                             v_max_V=4.5, frame_interval_s=0.0, max_frames=50), tmp_path, grow)
    start = docs[0][1]
    assert start["cycler_control"] == "follow" and start["mass_mg"] == MASS_MG
    events = [d for n, d in docs if n == "event"]
    # rows 3.5, 3.75, ..., 4.5 V: the event that records 4.5 V is the last
    assert [e["data"]["cycler_voltage_V"] for e in events] == [3.5, 3.75, 4.0, 4.25, 4.5]
    assert [e["data"]["cycler_time_s"] for e in events] == [0.0, 60.0, 120.0, 180.0, 240.0]
    assert [e["data"]["cycler_cycle"] for e in events] == [1] * 5
    assert [e["data"]["cycler_current_mA_g"] for e in events] == pytest.approx([200.0] * 5)
    assert events[-1]["data"]["cycler_capacity_mAh_g"] == pytest.approx(0.1068 * 1000 / MASS_MG)
    (desc,) = [d for n, d in docs if n == "descriptor"]
    assert "xrd_image" in desc["data_keys"] and docs[-1][1]["exit_status"] == "success"
    assert sum(n == "stream_datum" for n, _ in docs) == len(events)
    # the cycler readings reach the analysis exactly as the IOC's do
    from types import SimpleNamespace

    from strainstream.callbacks.xrd import OperandoXRDCallback
    from strainstream.rundesc import XRDKeys

    start = docs[0][1]  # the plan names the follower's keys in its run description
    assert start["xrd_keys"] == {"image": None, "voltage": "cycler_voltage_V", "current": "cycler_current_mA",
                                 "capacity": "cycler_capacity_mAh_g", "time": "cycler_time_s"}
    row = OperandoXRDCallback._echem(SimpleNamespace(keys=XRDKeys.from_start(start)), events[2]["data"])
    assert row == {"voltage_V": 4.0, "current_mA": 1.6, "capacity_mAh_g": pytest.approx(6.675),
                   "cell_time_s": 120.0}


def test_operando_plan_refuses_to_command_a_file_follower(tmp_path):
    from strainstream.devices.detectors import sim_frame_detector
    from strainstream.plans.xrd import operando_xrd

    dev = cycler_file(tmp_path / "x.mpt", active_mass_mg=MASS_MG)
    det = sim_frame_detector("xrd", tmp_path / "frames", frame_shape=(16, 16))
    with pytest.raises(ValueError, match=r"cv_hold commands the cycler, and cycler can only be read"):
        list(operando_xrd(det, dev, calibration={"wavelength_A": 0.1665}, cv_hold=True))


# ----------------------------------------------------------------------------- .mpr (galvani)
_MPR_MAGIC = b"BIO-LOGIC MODULAR FILE\x1a".ljust(48) + b"\x00\x00\x00\x00"


def _mpr_bytes(columns: list[tuple[int, str]], rows: list[tuple]) -> bytes:
    """An EC-Lab .mpr laid out as galvani reads it: settings + data module (version 2).

    ``columns``: (EC-Lab column ID, numpy dtype); ID 1 is the flags byte (mode).
    """
    def module(short: bytes, long: bytes, data: bytes) -> bytes:
        hdr = short.ljust(10) + long.ljust(25) + struct.pack("<II", len(data), 2 if short == b"VMP data" else 0)
        return b"MODULE" + hdr + b"01/15/26" + data

    arr = np.array(rows, dtype=[(f"c{cid}", dt) for cid, dt in columns])
    head = struct.pack("<IB", len(rows), len(columns))
    head += struct.pack(f"<{len(columns)}H", *(cid for cid, _ in columns))
    return (_MPR_MAGIC + module(b"VMP Set", b"VMP settings", b"")
            + module(b"VMP data", b"VMP data", head.ljust(405, b"\x00") + arr.tobytes()))


def test_mpr_newest_row_with_galvani(tmp_path):
    pytest.importorskip("galvani", reason="galvani (strainstream[biologic]) reads .mpr files")
    # time/s, Ewe/V (f4), I/mA (f4), (Q-Qo)/mA.h, cycle number: values exact in float32
    cols = [(1, "u1"), (4, "<f8"), (6, "<f4"), (8, "<f4"), (13, "<f8"), (24, "<f8")]
    rows = [(1, 0.0, 3.5, 1.25, 0.0, 0.0), (1, 36.0, 3.625, 1.25, 0.0125, 0.0),
            (1, 72.0, 3.75, 1.25, 0.025, 0.0), (1, 108.0, 3.875, 1.25, 0.0375, 1.0)]
    path = tmp_path / "cell.mpr"
    dev = cycler_file(path, active_mass_mg=MASS_MG)
    path.write_bytes(_mpr_bytes(cols, rows[:2]))
    got = _values(dev)
    assert dev.format == "mpr"
    assert got == {"cycler_voltage_V": 3.625, "cycler_current_mA": 1.25,
                   "cycler_current_mA_g": 156.25, "cycler_capacity_mAh_g": 1.5625,
                   "cycler_cycle": 1, "cycler_time_s": 36.0}
    full = _mpr_bytes(cols, rows)
    path.write_bytes(full[:-7])  # EC-Lab is writing: the last record is incomplete
    assert _values(dev)["cycler_time_s"] == 36.0  # the newest row galvani could read
    path.write_bytes(full)
    got = _values(dev)
    assert got["cycler_time_s"] == 108.0 and got["cycler_cycle"] == 2
    assert got["cycler_capacity_mAh_g"] == pytest.approx(4.6875, rel=1e-12)
    # Q charge/discharge summed over half cycles; cycle from the half-cycle index
    cols = [(1, "u1"), (4, "<f8"), (6, "<f4"), (8, "<f4"), (211, "<f8"), (212, "<u4")]
    rows = [(1, 0.0, 3.5, 1.0, 0.0, 0), (1, 144.0, 4.5, 1.0, 0.04, 0),
            (1, 288.0, 3.0, -1.0, -0.03, 1), (1, 324.0, 3.6, 1.0, 0.01, 2)]
    path = tmp_path / "gcpl.mpr"
    path.write_bytes(_mpr_bytes(cols, rows))
    got = _values(cycler_file(path, active_mass_mg=MASS_MG))
    assert got["cycler_capacity_mAh_g"] == pytest.approx(0.02 * 1000 / MASS_MG, rel=1e-12)
    assert got["cycler_cycle"] == 2


def test_mpr_without_galvani_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "cell.mpr"
    path.write_bytes(_MPR_MAGIC)
    monkeypatch.setitem(sys.modules, "galvani", None)
    monkeypatch.setitem(sys.modules, "galvani.BioLogic", None)
    with pytest.raises(PotentiostatFileError, match=r"cell\.mpr: reading EC-Lab \.mpr files needs "
                                                    r"galvani \(pip install 'strainstream\[biologic\]'\)"):
        cycler_file(path, active_mass_mg=MASS_MG).read()


def test_operando_plan_still_commands_the_ioc_cycler(tmp_path):
    """The follow_only path leaves the IOC cycler's: set-points, start, and rest at the end."""
    from strainstream.devices.cycler import cycler
    from strainstream.devices.detectors import sim_frame_detector
    from strainstream.plans.xrd import operando_xrd

    cyc = cycler("SS:", mock=True)
    cyc.running.sim_put(0)  # the cycler reports a finished charge: one frame
    cyc.voltage_V.sim_put(4.5)
    puts = []
    for sig in (cyc.mode, cyc.current_sp_mA_g, cyc.v_max_V, cyc.start_cmd, cyc.stop_cmd):
        sig.subscribe(lambda value, obj, **kw: puts.append((obj.attr_name, value)), run=False)
    det = sim_frame_detector("xrd", tmp_path / "frames", frame_shape=(16, 16))
    docs = _run(operando_xrd(det, cyc, calibration={"wavelength_A": 0.1665}, rate_mA_g=150.0,
                             v_max_V=4.4, mass_mg=10.0, frame_interval_s=0.0), tmp_path)
    assert docs[0][1]["cycler_control"] == "command"
    assert ("current_sp_mA_g", 150.0) in puts and ("v_max_V", 4.4) in puts
    assert [p for p in puts if p[0] in ("start_cmd", "stop_cmd")] == [("start_cmd", 1), ("stop_cmd", 1)]
    assert sum(n == "event" for n, _ in docs) == 1 and docs[-1][1]["exit_status"] == "success"
