"""Whole potentiostat logs (EC-Lab .mpt/.mpr, CSV) and their readings at given times.

Synthetic files whose values are exactly known; times are naive local times read in an
explicit zone, so the expected epoch seconds do not depend on this machine's zone.
"""

from __future__ import annotations

import datetime as dt
import struct
import sys
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from strainstream.archives.cyclerlog import (
    CyclerLogRangeError,
    PotentiostatFileError,
    parse_timestamp,
    read_cycler_log,
)
from strainstream.errors import StrainstreamError

TZ = "Europe/Berlin"
T0 = dt.datetime(2026, 1, 15, 10, 0, 0, tzinfo=ZoneInfo(TZ)).timestamp()  # 09:00:00 UTC
MASS_MG = 8.0


def mpt_text(columns: list[str], rows: list[list[float]], started: str = "01/15/2026 10:00:00.000") -> str:
    """An EC-Lab text export (CRLF, decimal commas, 'Nb header lines' counted)."""
    body = ["", "Galvanostatic Cycling with Potential Limitation", "", "Run on channel : 3 (SN 12345)",
            f"Acquisition started on : {started}", "Saved on :", "\tFile : cell7_C03.mpr",
            "Characteristic mass : 8,000 mg", "Electrode surface area : 1,130 cm²", ""]
    n = len(body) + 3
    lines = ["EC-Lab ASCII FILE", f"Nb header lines : {n}", *body, "\t".join(columns)]
    lines += ["\t".join(f"{v:.15E}".replace(".", ",") for v in row) for row in rows]
    return "\r\n".join(lines) + "\r\n"


MPT_COLUMNS = ["mode", "time/s", "Ewe/V", "<I>/mA", "(Q-Qo)/mA.h", "cycle number"]


def _rows(n=5):
    # time, voltage, current, capacity: exact binary fractions
    return [[1, 60.0 * k, 3.5 + 0.125 * k, 1.25, 0.0125 * k, 0] for k in range(n)]


def test_mpt_header_start_decimal_comma_and_interpolation(tmp_path):
    path = tmp_path / "cell.mpt"
    path.write_bytes(mpt_text(MPT_COLUMNS, _rows()).encode("cp1252"))
    log = read_cycler_log(path, mass_mg=MASS_MG, timezone=TZ)
    assert log.format == "mpt" and log.start_from == "header" and len(log) == 5
    assert log.columns == {"time": "time/s", "voltage": "Ewe/V", "current": "<I>/mA",
                           "capacity": "(Q-Qo)/mA.h"}
    np.testing.assert_array_equal(log.epoch_s, T0 + 60.0 * np.arange(5))
    # at the rows: the rows' values; half way: the mean; capacity per gram from the mass
    got = log.at(T0 + np.array([0.0, 90.0, 240.0]))
    np.testing.assert_array_equal(got["voltage_V"], [3.5, 3.6875, 4.0])
    np.testing.assert_array_equal(got["current_mA"], [1.25] * 3)
    np.testing.assert_allclose(got["capacity_mAh"], [0.0, 0.01875, 0.05], rtol=1e-15)
    np.testing.assert_allclose(got["capacity_mAh_g"], np.array([0.0, 0.01875, 0.05]) * 1000 / MASS_MG,
                               rtol=1e-15)
    np.testing.assert_array_equal(got["time_s"], [0.0, 90.0, 240.0])
    assert got["in_range"].all()


def test_partly_outside_is_flagged_and_wholly_outside_is_an_error(tmp_path):
    path = tmp_path / "cell.mpt"
    path.write_text(mpt_text(MPT_COLUMNS, _rows()))
    log = read_cycler_log(path, timezone=TZ)
    got = log.at(T0 + np.array([-10.0, 120.0, 241.0]))
    assert got["in_range"].tolist() == [False, True, False]
    assert np.isnan(got["voltage_V"][[0, 2]]).all() and got["voltage_V"][1] == 3.75
    assert "capacity_mAh_g" not in got  # no mass, no specific capacity
    with pytest.raises(CyclerLogRangeError, match=r"covers 2026-01-15T09:00:00\+00:00 \.\. "
                                                  r"2026-01-15T09:04:00\+00:00 UTC and the times asked "
                                                  r"for span .* 3600 s after it: check the frames' time source") as e:
        log.at(T0 + 3840.0 + np.arange(3))
    assert isinstance(e.value, StrainstreamError) and isinstance(e.value, ValueError)


def test_half_cycle_charge_is_summed_to_a_net_capacity(tmp_path):
    cols = ["time/s", "Ewe/V", "I/mA", "Q charge/discharge/mA.h", "half cycle"]
    rows = [[0, 3.5, 1, 0.0, 0], [144, 4.5, 1, 0.04, 0], [288, 3.0, -1, -0.03, 1], [324, 3.6, 1, 0.01, 2]]
    path = tmp_path / "gcpl.mpt"
    path.write_text(mpt_text(cols, rows))
    log = read_cycler_log(path, timezone=TZ)
    np.testing.assert_allclose(log.capacity_mAh, [0.0, 0.04, 0.01, 0.02], atol=1e-15)


def test_csv_with_an_absolute_time_column_and_a_column_map(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text("# exported by the cycler software\n"
                    "Date_Time;Ewe-Ece/V;U_cell/V;Current (A);Capacity (mAh)\n"
                    "2026-01-15T09:00:00+00:00;0,1;3,5;0,00125;0\n"
                    "2026-01-15T09:01:00+00:00;0,1;3,625;0,00125;0,0125\n"
                    "2026-01-15T09:02:00.5+00:00;0,1;3,75;0,00125;0,025\n")
    log = read_cycler_log(path, columns={"voltage": "U_cell/V"})
    assert log.start_from == "column 'Date_Time'" and log.format == "csv"
    assert log.columns["datetime"] == "Date_Time" and log.columns["voltage"] == "U_cell/V"
    np.testing.assert_array_equal(log.epoch_s, T0 + np.array([0.0, 60.0, 120.5]))
    np.testing.assert_array_equal(log.time_s, [0.0, 60.0, 120.5])
    np.testing.assert_array_equal(log.current_mA, [1.25] * 3)  # A -> mA
    assert log.at(T0 + 30.0)["voltage_V"][0] == 3.5625


def test_csv_with_relative_time_needs_a_start(tmp_path):
    path = tmp_path / "rel.csv"
    path.write_text("time/s,Ewe/V,I/mA,(Q-Qo)/mA.h\n0,3.5,1,0\n60,3.6,1,0.01\n")
    with pytest.raises(PotentiostatFileError, match=r"rel\.csv: has no absolute time \(it has no absolute "
                                                    r"date/time column\): give the start .*start=.*"
                                                    r"--field datetime=HEADER"):
        read_cycler_log(path)
    log = read_cycler_log(path, start="2026-01-15 10:00:00", timezone=TZ)
    assert log.start_from == "start option"
    np.testing.assert_array_equal(log.epoch_s, [T0, T0 + 60.0])
    assert read_cycler_log(path, start=T0).epoch_s[1] == T0 + 60.0


def test_unknown_columns_are_one_error_naming_the_file_columns_and_the_map(tmp_path):
    path = tmp_path / "odd.csv"
    path.write_text("t/s,U/V,Strom/mA,Ladung/mA.h\n0,3.5,1,0\n")
    with pytest.raises(PotentiostatFileError, match=r"odd\.csv: no time column \(accepted: time/s; name the "
                                                    r"column with columns=\{'time': HEADER\}, on the command "
                                                    r"line --field time=HEADER\); the file has: t/s, U/V, "
                                                    r"Strom/mA, Ladung/mA.h") as e:
        read_cycler_log(path, start=T0)
    assert e.value.column == "time"
    log = read_cycler_log(path, start=T0, columns={"time": "t/s", "voltage": "U/V", "current": "Strom/mA",
                                                   "capacity": "Ladung/mA.h"})
    assert log.voltage_V.tolist() == [3.5]
    with pytest.raises(ValueError, match="columns: unknown quantity 'volts'"):
        read_cycler_log(path, columns={"volts": "U/V"})


def test_bad_rows_and_time_going_backwards_are_named(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("time/s,Ewe/V,I/mA,(Q-Qo)/mA.h\n0,3.5,1,0\n60,n/a,1,0\n")
    with pytest.raises(PotentiostatFileError, match=r"line 3: 'Ewe/V' is 'n/a', not a number"):
        read_cycler_log(path, start=T0)
    path.write_text("time/s,Ewe/V,I/mA,(Q-Qo)/mA.h\n0,3.5,1,0\n60,3.6,1,0\n30,3.7,1,0\n")
    with pytest.raises(PotentiostatFileError, match=r"line 4: time goes backwards"):
        read_cycler_log(path, start=T0)
    path.write_text("time/s,Ewe/V,I/mA,(Q-Qo)/mA.h\n")
    with pytest.raises(PotentiostatFileError, match="has no data rows"):
        read_cycler_log(path, start=T0)
    with pytest.raises(PotentiostatFileError, match=r"missing\.mpt: cannot be read"):
        read_cycler_log(tmp_path / "missing.mpt")


def test_parse_timestamp_forms():
    want = T0 + 5.25
    for text in ("2026-01-15T10:00:05.25", "01/15/2026 10:00:05.250", "2026/Jan/15 10:00:05.25"):
        assert parse_timestamp(text, TZ) == pytest.approx(want, abs=1e-6)
    assert parse_timestamp("2026:01:15 10:00:05", TZ) == T0 + 5
    assert parse_timestamp("Thu Jan 15 10:00:05 2026", TZ) == T0 + 5
    assert parse_timestamp("2026-01-15T09:00:05Z") == T0 + 5  # an offset wins over the zone
    assert parse_timestamp(str(T0)) == T0
    with pytest.raises(ValueError, match="not a date/time this reader knows"):
        parse_timestamp("yesterday")


# ----------------------------------------------------------------------------- .mpr (galvani)
_MPR_MAGIC = b"BIO-LOGIC MODULAR FILE\x1a".ljust(48) + b"\x00\x00\x00\x00"


def _mpr_bytes(columns, rows) -> bytes:
    """An EC-Lab .mpr as galvani reads it (settings + data module, version 2, no log module)."""
    def module(short: bytes, long: bytes, data: bytes) -> bytes:
        hdr = short.ljust(10) + long.ljust(25) + struct.pack("<II", len(data), 2 if short == b"VMP data" else 0)
        return b"MODULE" + hdr + b"01/15/26" + data

    arr = np.array(rows, dtype=[(f"c{cid}", t) for cid, t in columns])
    head = struct.pack("<IB", len(rows), len(columns)) + struct.pack(f"<{len(columns)}H", *(c for c, _ in columns))
    return (_MPR_MAGIC + module(b"VMP Set", b"VMP settings", b"")
            + module(b"VMP data", b"VMP data", head.ljust(405, b"\x00") + arr.tobytes()))


def test_mpr_through_galvani(tmp_path):
    pytest.importorskip("galvani", reason="galvani (strainstream[biologic]) reads .mpr files")
    cols = [(1, "u1"), (4, "<f8"), (6, "<f4"), (8, "<f4"), (13, "<f8"), (24, "<f8")]
    rows = [(1, 0.0, 3.5, 1.25, 0.0, 0.0), (1, 36.0, 3.625, 1.25, 0.0125, 0.0), (1, 72.0, 3.75, 1.25, 0.025, 0.0)]
    path = tmp_path / "cell.mpr"
    path.write_bytes(_mpr_bytes(cols, rows))
    with pytest.raises(PotentiostatFileError, match="galvani found no log-module timestamp"):
        read_cycler_log(path)
    log = read_cycler_log(path, start="2026-01-15T10:00:00", timezone=TZ, mass_mg=MASS_MG)
    assert log.format == "mpr" and log.columns["voltage"] == "Ewe/V"
    got = log.at(T0 + 54.0)
    assert got["voltage_V"][0] == 3.6875 and got["capacity_mAh_g"][0] == pytest.approx(2.34375, rel=1e-12)


def test_mpr_without_galvani_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "cell.mpr"
    path.write_bytes(_MPR_MAGIC)
    monkeypatch.setitem(sys.modules, "galvani", None)
    monkeypatch.setitem(sys.modules, "galvani.BioLogic", None)
    with pytest.raises(PotentiostatFileError, match=r"cell\.mpr: reading EC-Lab \.mpr files needs galvani "
                                                    r"\(pip install 'strainstream\[biologic\]'\)"):
        read_cycler_log(path)
