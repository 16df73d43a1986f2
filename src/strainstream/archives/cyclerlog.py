"""A whole potentiostat log read at once, and its readings interpolated at given times.

:func:`read_cycler_log` reads the log of a finished measurement — EC-Lab's text export
(``.mpt``), its binary file (``.mpr``, through the optional ``galvani``), or a CSV/text table —
into a :class:`CyclerLog`: cell time, voltage, current and net capacity per row, and the
absolute (epoch) time of every row. :meth:`CyclerLog.at` interpolates the readings at the
times of detector frames (:func:`strainstream.archives.folder.folder_run`).

The column recognition (names, units, decimal commas, EC-Lab's per-half-cycle charge) is the
one of the live follower :class:`strainstream.devices.cycler_file.CyclerFileFollower`: the
pure parsing pieces live here and the follower imports them.

This module imports numpy and the standard library only (galvani when an ``.mpr`` is read).
"""

from __future__ import annotations

import datetime as _dt
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from strainstream.errors import StrainstreamError

__all__ = [
    "CyclerLog",
    "CyclerLogRangeError",
    "PotentiostatFileError",
    "parse_timestamp",
    "read_cycler_log",
]

# ----------------------------------------------------------------------------------------------
# shared with devices/cycler_file.py (the live follower): formats and column recognition
# ----------------------------------------------------------------------------------------------
_MPT_MAGIC = ("EC-Lab ASCII FILE", "BT-Lab ASCII FILE")
_MPR_MAGIC = b"BIO-LOGIC MODULAR FILE"
_NB_HEADER_RE = re.compile(r"Nb header lines\s*:\s*(\d+)\s*$")
_UNIT_RE = re.compile(r"^(?P<q>.+?)\s*(?:/\s*(?P<u1>[^/()]+)|\(\s*(?P<u2>[^()]+?)\s*\))\s*$")

#: quantity -> normalised column names (without the unit), the first found in this order wins
_NAMES: dict[str, tuple[str, ...]] = {
    "time": ("time", "test time", "total time", "elapsed time"),
    "voltage": ("ewe", "<ewe>", "ecell", "<ecell>", "voltage", "cell voltage", "potential"),
    "current": ("i", "<i>", "current"),
    "capacity_net": ("(q-qo)", "q-qo"),
    "capacity_half": ("q charge/discharge",),
    # CSV only (EC-Lab's Capacity/mA.h is |Q| of the half cycle, not the net charge)
    "capacity_csv": ("capacity", "net capacity", "specific capacity"),
    "cycle": ("cycle number", "cycle", "cycle index", "cycle no", "cycle id"),
    "half_cycle": ("half cycle",),
}
#: the data keys' own column names (a CSV written by hand or by our tools)
_OWN_NAMES = {"time_s": ("time", "s"), "voltage_v": ("voltage", "v"), "current_ma": ("current", "ma"),
              "capacity_mah": ("capacity_csv", "mah"), "capacity_mah_g": ("capacity_csv", "mah/g"),
              "cycle": ("cycle", "")}
#: quantity kind -> unit -> factor to the canonical unit (s, V, mA, mA·h); "mah/g" is specific
_UNITS = {
    "time": {"s": 1.0, "min": 60.0, "h": 3600.0},
    "voltage": {"v": 1.0, "mv": 1e-3},
    "current": {"ma": 1.0, "a": 1e3, "ua": 1e-3},
    "capacity": {"mah": 1.0, "ma.h": 1.0, "ah": 1e3, "a.h": 1e3, "c": 1.0 / 3.6, "mah/g": 1.0},
    "cycle": {"": 1.0},
}
_REQUIRED = ("time", "voltage", "current", "capacity", "cycle")
_ACCEPTED = {"time": "time/s", "voltage": "Ewe/V, <Ewe>/V, Ecell/V, Voltage (V)",
             "current": "I/mA, <I>/mA, Current (mA)",
             "capacity": "(Q-Qo)/mA.h, (Q-Qo)/C, Q charge/discharge/mA.h",
             "cycle": "cycle number, half cycle, cycle, Cycle_Index"}


class PotentiostatFileError(StrainstreamError, OSError):
    """A potentiostat export file cannot be used: unknown format, missing column, bad row.

    ``path`` is the file, ``column`` the missing/bad quantity or column when there is one.
    """

    def __init__(self, path: str | os.PathLike, message: str, *, column: str | None = None) -> None:
        self.path, self.column, self.detail = str(path), column, message
        super().__init__(f"potentiostat file {self.path}: {message}")


@dataclass(frozen=True)
class _Column:
    index: int | str  # text: field index; mpr: galvani field name
    header: str
    factor: float


class _HalfCycleSum:
    """Net charge from EC-Lab's ``Q charge/discharge`` (reset to 0 at every half cycle)."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.prev: tuple[float, float | None] | None = None

    def feed(self, q: float, half_cycle: float | None) -> float:
        if self.prev is not None:
            prev_q, prev_hc = self.prev
            new = half_cycle != prev_hc if half_cycle is not None else abs(q) < abs(prev_q)
            if new:
                self.offset += prev_q
        self.prev = (q, half_cycle)
        return self.offset + q


def _normalise(name: str) -> str:
    return " ".join(name.strip().strip('"').lower().replace("µ", "u").replace("μ", "u")
                    .replace("_", " ").split())


def _split_unit(header: str) -> tuple[str, str | None]:
    """``"Ewe/V"`` -> ``("ewe", "v")``; ``"cycle number"`` -> ``("cycle number", None)``."""
    raw = header.strip().strip('"')
    own = raw.lower()
    if own in _OWN_NAMES:
        return own, None
    m = _UNIT_RE.match(raw)
    if m is None:
        return _normalise(raw), None
    unit = (m.group("u1") or m.group("u2")).strip().lower().replace("µ", "u").replace("μ", "u")
    return _normalise(m.group("q")), unit.replace(" ", "")


def _kind(quantity: str) -> str:
    return "capacity" if quantity.startswith("capacity") else quantity


def _resolve_columns(path: str | os.PathLike, headers: list[str], fmt: str,
                     overrides: dict[str, str] | None = None, *,
                     required: tuple[str, ...] = _REQUIRED,
                     hint: str = "or columns={{{q!r}: HEADER}}") -> tuple[dict[str, _Column], dict]:
    """Map the file's column headers to the quantities to read.

    Returns ``(columns, info)``: ``columns`` has the ``required`` quantities (of ``time,
    voltage, current, capacity, cycle``), the others found, and optionally ``half_cycle``;
    ``info`` says how capacity and cycle are interpreted (``capacity_from`` = ``net`` |
    ``half`` | ``specific``, ``cycle_offset``). ``hint`` (formatted with ``q``, the missing
    quantity) says how to name a column by hand.

    Raises
    ------
    PotentiostatFileError
        Naming the file, the quantity without a usable column, the accepted names and the
        columns the file has.
    """
    found: dict[str, tuple[int, int, _Column, str]] = {}  # quantity -> (priority, idx, col, unit)
    for idx, header in enumerate(headers):
        name, unit = _split_unit(header)
        if name in _OWN_NAMES:
            quantity, own_unit = _OWN_NAMES[name]
            cands = [(quantity, -1, own_unit)]
        else:
            cands = [(q, names.index(name), unit) for q, names in _NAMES.items() if name in names]
        for quantity, prio, u in cands:
            if quantity == "capacity_csv" and fmt != "csv":
                continue
            kind = _kind(quantity)
            units = _UNITS.get(kind)
            if units is not None and (u or "") not in units:
                continue  # e.g. "Ewe/kV", "time/date": not a unit we convert
            factor = units[u or ""] if units is not None else 1.0
            best = found.get(quantity)
            if best is None or prio < best[0]:
                found[quantity] = (prio, idx, _Column(idx, header.strip(), factor), u or "")
    for quantity, header in (overrides or {}).items():
        if quantity not in _REQUIRED:
            raise ValueError(f"columns: unknown quantity {quantity!r}; choose from {', '.join(_REQUIRED)}")
        if header not in [h.strip() for h in headers]:
            raise PotentiostatFileError(path, f"column {header!r} given for {quantity} is not in the "
                                        f"file (columns: {', '.join(headers)})", column=header)
        idx = [h.strip() for h in headers].index(header)
        _, unit = _split_unit(header)
        units = _UNITS[quantity]
        if (unit or "") not in units:
            raise PotentiostatFileError(path, f"column {header!r} given for {quantity}: unit "
                                        f"{unit!r} not understood (use one of "
                                        f"{', '.join(u for u in units if u)})", column=header)
        key = "capacity_net" if quantity == "capacity" else quantity
        if quantity == "capacity":
            for q in ("capacity_half", "capacity_csv"):
                found.pop(q, None)
        found[key] = (-2, idx, _Column(idx, header, units[unit or ""]), unit or "")

    cols: dict[str, _Column] = {}
    info: dict[str, Any] = {}
    for quantity in ("time", "voltage", "current", "cycle", "half_cycle"):
        if quantity in found:
            cols[quantity] = found[quantity][2]
    for quantity, how in (("capacity_net", "net"), ("capacity_csv", "net"), ("capacity_half", "half")):
        if quantity in found:
            cols["capacity"] = found[quantity][2]
            info["capacity_from"] = "specific" if found[quantity][3] == "mah/g" else how
            break
    if "cycle" not in cols and "half_cycle" in cols:  # EC-Lab: 2 half cycles (charge, discharge)
        cols["cycle"] = cols["half_cycle"]
        info["cycle_from_half_cycle"] = True
    missing = [q for q in required if q not in cols]
    if missing:
        q = missing[0]
        accepted = _ACCEPTED[q] + (", Capacity (mAh), capacity_mAh_g" if q == "capacity" and fmt == "csv"
                                   else "")
        raise PotentiostatFileError(
            path, f"no {q} column (accepted: {accepted}; {hint.format(q=q)}); the file "
            f"has: {', '.join(h.strip() for h in headers)}", column=q)
    if "cycle" in cols:
        cycle_name, _ = _split_unit(cols["cycle"].header)
        # EC-Lab's names (also in a CSV saved by EC-Lab) count from 0; the IOC's cycle from 1
        info["cycle_offset"] = 1 if cycle_name in ("cycle number", "half cycle") else 0
    return cols, info


def _load_mpr(path: str | os.PathLike, content: bytes):
    """galvani's ``MPRfile`` of an EC-Lab ``.mpr`` file's bytes.

    Raises
    ------
    PotentiostatFileError
        galvani is not installed (says what to install), or it does not know a column ID.
    ValueError, OSError, AssertionError, IndexError
        galvani's own errors for an incomplete or damaged file (the caller decides).
    """
    try:
        from galvani.BioLogic import MPRfile
    except ImportError:
        raise PotentiostatFileError(
            path, "reading EC-Lab .mpr files needs galvani (pip install "
            "'strainstream[biologic]'), or follow EC-Lab's text export (.mpt) instead") from None
    try:
        return MPRfile(io.BytesIO(content))
    except NotImplementedError as exc:  # a column ID galvani does not know
        raise PotentiostatFileError(path, f"galvani cannot read this .mpr: {exc}; follow "
                                    "EC-Lab's text export (.mpt) instead") from None


# ----------------------------------------------------------------------------------------------
# absolute times
# ----------------------------------------------------------------------------------------------
_DATE_FORMATS = (
    "%m/%d/%Y %H:%M:%S.%f", "%m/%d/%Y %H:%M:%S",  # EC-Lab ("Acquisition started on")
    "%Y:%m:%d %H:%M:%S", "%Y:%m:%d %H:%M:%S.%f",  # TIFF DateTime tag (306)
    "%a %b %d %H:%M:%S %Y",  # ctime: EDF 'time'/'date', fabio's TIFF writer
    "%Y/%b/%d %H:%M:%S.%f", "%Y/%b/%d %H:%M:%S",  # older Pilatus CBF headers
    "%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M:%S.%f",
)


def parse_timestamp(text: str | float | int | _dt.datetime, timezone: str | None = None) -> float:
    """Absolute time (epoch seconds) of a date/time text, an epoch number or a datetime.

    Parameters
    ----------
    text : str, float or datetime
        ISO 8601 (``2026-01-15T10:00:05.123``, ``2026-01-15 10:00:05``, with or without an
        offset), EC-Lab's ``01/15/2026 10:00:00.000`` (month first), the TIFF tag's
        ``2026:01:15 10:00:05``, ctime ``Thu Jan 15 10:00:05 2026``, Pilatus'
        ``2026/Jan/15 10:00:05.123``, ``15.01.2026 10:00:05``; or epoch seconds (a number,
        or a text of one > 1e8).
    timezone : str, optional
        IANA zone (``"Europe/Berlin"``) of times without an offset; default: this machine's
        local zone. Frames and a cycler log whose times are both naive are aligned whatever
        the zone (both are read in the same one).

    Returns
    -------
    float
        Seconds since 1970-01-01 UTC.

    Raises
    ------
    ValueError
        A text in none of these forms.
    """
    if isinstance(text, _dt.datetime):
        when = text
    elif isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    else:
        s = " ".join(str(text).strip().strip('"').split())
        try:
            value = float(s)
        except ValueError:
            value = None
        if value is not None:
            if math.isfinite(value) and value > 1e8:
                return value
            raise ValueError(f"{text!r} is not a date/time (a number must be epoch seconds > 1e8)")
        try:
            when = _dt.datetime.fromisoformat(s)
        except ValueError:
            when = None
        for fmt in _DATE_FORMATS if when is None else ():
            try:
                when = _dt.datetime.strptime(s, fmt)
                break
            except ValueError:
                continue
        if when is None:
            raise ValueError(f"{text!r} is not a date/time this reader knows (ISO 8601 "
                             "'2026-01-15T10:00:05', EC-Lab '01/15/2026 10:00:05', TIFF "
                             "'2026:01:15 10:00:05', ctime 'Thu Jan 15 10:00:05 2026', or epoch s)")
    if when.tzinfo is None and timezone:
        from zoneinfo import ZoneInfo

        when = when.replace(tzinfo=ZoneInfo(timezone))
    return when.timestamp()  # naive: this machine's local zone


def _iso(epoch_s: float) -> str:
    return _dt.datetime.fromtimestamp(epoch_s, _dt.UTC).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------------------
# the whole log
# ----------------------------------------------------------------------------------------------
#: normalised names of an absolute date/time column (CSV exports)
_DATETIME_NAMES = ("datetime", "date time", "date/time", "timestamp", "time stamp", "absolute time",
                   "abs time", "systime", "system time", "real time", "date")
_LOG_QUANTITIES = ("time", "voltage", "current", "capacity", "datetime")


#: how to name a column by hand (``str.format``-ed with ``q``, the quantity)
_FIELD_HINT = "name the column with columns={{{q!r}: HEADER}}, on the command line --field {q}=HEADER"


class CyclerLogRangeError(StrainstreamError, ValueError):
    """The times asked for are all outside the cycler log's time range."""


@dataclass(frozen=True)
class CyclerLog:
    """A potentiostat log, one entry per row, in canonical units.

    Attributes
    ----------
    path : str
        The file read.
    format : str
        ``"mpt"``, ``"mpr"`` or ``"csv"``.
    epoch_s : ndarray, shape (n,)
        Absolute time of each row, s since 1970 UTC (non-decreasing).
    time_s : ndarray, shape (n,)
        Cell time of each row, s since the start of the measurement (the file's time column;
        ``epoch_s - epoch_s[0]`` when the file has only absolute times).
    voltage_V, current_mA : ndarray, shape (n,)
        Cell voltage (V) and current (mA, + = charge).
    capacity_mAh : ndarray, shape (n,) or None
        Net charge since the start (mA·h, charge +); None when the file gives only a
        specific capacity.
    capacity_mAh_g : ndarray, shape (n,) or None
        Net specific charge (mAh/g): the file's, or ``capacity_mAh`` / ``mass_mg``; None
        without either.
    mass_mg : float or None
        Active mass (mg) used for the specific values.
    columns : dict
        Quantity -> the file's column header it was read from.
    start_from : str
        Where the absolute time came from (``"header"``, ``"start option"``,
        ``"column 'DateTime'"``).
    """

    path: str
    format: str
    epoch_s: np.ndarray
    time_s: np.ndarray
    voltage_V: np.ndarray
    current_mA: np.ndarray
    capacity_mAh: np.ndarray | None
    capacity_mAh_g: np.ndarray | None
    mass_mg: float | None = None
    columns: dict[str, str] = field(default_factory=dict)
    start_from: str = ""

    def __len__(self) -> int:
        return int(self.epoch_s.size)

    @property
    def span_s(self) -> tuple[float, float]:
        """First and last row's absolute time (epoch s)."""
        return float(self.epoch_s[0]), float(self.epoch_s[-1])

    def at(self, times: np.ndarray | list[float] | float) -> dict[str, np.ndarray]:
        """The readings linearly interpolated at absolute times.

        Parameters
        ----------
        times : array_like, shape (m,)
            Epoch seconds (e.g. detector frame times).

        Returns
        -------
        dict of ndarray, each shape (m,)
            ``voltage_V``, ``current_mA``, ``time_s`` (cell time), ``capacity_mAh`` and/or
            ``capacity_mAh_g`` (those the log has), float64; and ``in_range`` (bool).
            Times **partially** outside ``[epoch_s[0], epoch_s[-1]]`` are flagged, not
            refused: their readings are NaN and ``in_range`` is False (no extrapolation).

        Raises
        ------
        CyclerLogRangeError
            When **no** time is inside the log's range (or none is finite): the message
            gives both ranges and their offset.
        """
        t = np.atleast_1d(np.asarray(times, dtype=float))
        lo, hi = self.span_s
        inside = np.isfinite(t) & (t >= lo) & (t <= hi)
        if t.size and not inside.any():
            finite = t[np.isfinite(t)]
            if finite.size:
                offset = (finite.min() - hi) if finite.min() > hi else (finite.max() - lo)
                span = (f"the times asked for span {_iso(finite.min())} .. {_iso(finite.max())} "
                        f"UTC, {abs(offset):.0f} s {'after' if offset > 0 else 'before'} it")
            else:
                span = "no time asked for is finite"
            raise CyclerLogRangeError(
                f"cycler log {self.path} covers {_iso(lo)} .. {_iso(hi)} UTC and {span}: check "
                "the frames' time source (file header or mtime), the timezone of naive times, "
                "or the log's start time")
        out: dict[str, np.ndarray] = {}
        series = {"voltage_V": self.voltage_V, "current_mA": self.current_mA, "time_s": self.time_s,
                  "capacity_mAh": self.capacity_mAh, "capacity_mAh_g": self.capacity_mAh_g}
        for key, values in series.items():
            if values is None:
                continue
            out[key] = np.where(inside, np.interp(t, self.epoch_s, values), np.nan)
        out["in_range"] = inside
        return out


def read_cycler_log(path: str | os.PathLike, *, columns: dict[str, str] | None = None,
                    start: str | float | _dt.datetime | None = None, mass_mg: float | None = None,
                    timezone: str | None = None, encoding: str | None = None) -> CyclerLog:
    """Read a whole potentiostat log: EC-Lab ``.mpt``/``.mpr`` or a CSV/text table.

    Formats (from the content; ``.mpr`` also by suffix) and columns are those of the live
    follower (:mod:`strainstream.devices.cycler_file`): time ``time/s`` (also min, h),
    voltage ``Ewe/V``, ``<Ewe>/V``, ``Ecell/V``, ``Voltage (V)``; current ``I/mA``,
    ``<I>/mA``, ``Current (A)``; capacity ``(Q-Qo)/mA.h`` (also C, A.h), else EC-Lab's
    ``Q charge/discharge/mA.h`` summed over the half cycles, and in CSV files ``Capacity
    (mAh)`` or ``capacity_mAh_g``. Decimal commas are accepted in tab/``;``-separated files.

    The absolute time of the rows, in this order of precedence:

    1. ``start`` (the time of cell time 0) when given;
    2. an absolute date/time column (``DateTime``, ``Timestamp``, ``Absolute time``,
       ``Date``..., or ``columns={"datetime": HEADER}``): ISO 8601, ``MM/DD/YYYY hh:mm:ss``
       or epoch seconds (see :func:`parse_timestamp`);
    3. the ``.mpt`` header's ``Acquisition started on : MM/DD/YYYY hh:mm:ss.sss``, or the
       ``.mpr``'s log-module timestamp (galvani's ``MPRfile.timestamp``).

    Parameters
    ----------
    path : str or path-like
        The log file.
    columns : dict, optional
        Our quantity -> the file's column header, for columns not recognised by name:
        ``time`` (with a unit: ``/s``, ``/min``, ``/h``), ``voltage``, ``current``,
        ``capacity``, ``datetime`` (absolute time, no unit).
    start : str, float or datetime, optional
        Absolute time of cell time 0 (overrides the file's); text as
        :func:`parse_timestamp`, or epoch seconds.
    mass_mg : float, optional
        Active mass (mg, > 0) for ``capacity_mAh_g``.
    timezone : str, optional
        IANA zone of naive times (file header, date column, ``start``); default local.
    encoding : str, optional
        Of a text file (default UTF-8, else Windows-1252 as EC-Lab writes its headers).

    Returns
    -------
    CyclerLog

    Raises
    ------
    PotentiostatFileError
        Missing/unreadable file, unknown format, a quantity without a column (one message
        naming the accepted names, the file's columns and how to name one: ``columns=`` /
        ``--field``), a row that does not parse, no absolute time, time going backwards,
        no data rows, galvani missing for ``.mpr``.
    ValueError
        ``columns`` names an unknown quantity; ``mass_mg`` not > 0.
    """
    path = Path(path)
    overrides = dict(columns or {})
    unknown = sorted(set(overrides) - set(_LOG_QUANTITIES))
    if unknown:
        raise ValueError(f"columns: unknown quantity {unknown[0]!r}; choose from {', '.join(_LOG_QUANTITIES)}")
    if mass_mg is not None and not (math.isfinite(float(mass_mg)) and float(mass_mg) > 0):
        raise ValueError(f"mass_mg must be the positive active mass in mg, got {mass_mg!r}")
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise PotentiostatFileError(path, f"cannot be read: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".mpr" or content.startswith(_MPR_MAGIC):
        table = _mpr_table(path, content)
    else:
        table = _text_table(path, content, encoding)
    return _build(path, table, overrides, start, mass_mg, timezone)


@dataclass
class _Table:
    fmt: str
    headers: list[str]
    values: dict[str, list[Any]]  # header -> raw values (str for text, numbers for mpr)
    linenos: list[int]  # file line of each row (text) or row number (mpr)
    header_start: float | _dt.datetime | None  # the file's own start time
    comma_decimals: bool = False


def _decode(raw: bytes, encoding: str | None) -> str:
    if encoding:
        return raw.decode(encoding)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def _text_table(path: Path, content: bytes, encoding: str | None) -> _Table:
    lines = _decode(content, encoding).splitlines()
    if lines:
        lines[0] = lines[0].lstrip("\ufeff")
    header_start = None
    if lines and lines[0].strip().startswith(_MPT_MAGIC):
        m = _NB_HEADER_RE.search(lines[1]) if len(lines) > 1 else None
        if m is None or int(m.group(1)) < 3:
            raise PotentiostatFileError(path, "EC-Lab text export without a valid 'Nb header lines : N' "
                                        f"line (line 2 is {lines[1] if len(lines) > 1 else ''!r})")
        n = int(m.group(1))
        if len(lines) < n:
            raise PotentiostatFileError(path, f"EC-Lab text export ends inside its {n}-line header")
        for line in lines[: n - 1]:
            key, _, value = line.partition(":")
            if key.strip().lower() == "acquisition started on" and value.strip():
                header_start = value.strip()
        fmt, delimiter, head_idx = "mpt", "\t", n - 1
    else:
        head_idx = next((i for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith("#")),
                        None)
        if head_idx is None:
            raise PotentiostatFileError(path, "is empty: no line names the columns")
        line = lines[head_idx]
        fmt, delimiter = "csv", "\t" if "\t" in line else ";" if ";" in line else ","
    headers = [h.strip().strip('"') for h in lines[head_idx].split(delimiter)]
    rows, linenos = [], []
    for i in range(head_idx + 1, len(lines)):
        if lines[i].strip():
            rows.append(lines[i].split(delimiter))
            linenos.append(i + 1)
    values: dict[str, list[Any]] = {h: [] for h in headers}
    for fields, lineno in zip(rows, linenos, strict=True):
        if len(fields) < len(headers):
            raise PotentiostatFileError(path, f"line {lineno} has {len(fields)} fields, the header "
                                        f"{len(headers)} ({', '.join(headers)})")
        for h, f in zip(headers, fields, strict=False):
            values[h].append(f.strip().strip('"'))
    return _Table(fmt, headers, values, linenos, header_start, comma_decimals=delimiter != ",")


def _mpr_table(path: Path, content: bytes) -> _Table:
    try:
        mpr = _load_mpr(path, content)
    except (ValueError, OSError, AssertionError, IndexError) as exc:
        raise PotentiostatFileError(path, f"galvani cannot read it ({exc}): an incomplete or "
                                    "damaged .mpr; use EC-Lab's text export (.mpt)") from None
    data = mpr.data
    headers = list(data.dtype.names or ())
    values = {h: data[h].astype(float).tolist() for h in headers}
    return _Table("mpr", headers, values, list(range(1, len(data) + 1)), getattr(mpr, "timestamp", None))


def _numbers(path: Path, table: _Table, header: str) -> np.ndarray:
    raw = table.values[header]
    if table.fmt == "mpr":
        return np.asarray(raw, dtype=float)
    out = np.empty(len(raw))
    for k, text in enumerate(raw):
        try:
            out[k] = float(text.replace(",", ".") if table.comma_decimals else text)
        except ValueError:
            raise PotentiostatFileError(
                path, f"line {table.linenos[k]}: {header!r} is {text!r}, not a number (export "
                "times in seconds and numbers without thousands separators)", column=header) from None
    return out


def _datetime_column(table: _Table, override: str | None, path: Path) -> str | None:
    if override is not None:
        if override not in table.headers:
            raise PotentiostatFileError(path, f"column {override!r} given for datetime is not in the "
                                        f"file (columns: {', '.join(table.headers)})", column=override)
        return override
    if table.fmt == "mpr":
        return None
    for h in table.headers:
        if _normalise(h) in _DATETIME_NAMES:
            return h
    return None


def _build(path: Path, table: _Table, overrides: dict[str, str], start: Any, mass_mg: float | None,
           timezone: str | None) -> CyclerLog:
    if not table.linenos:
        raise PotentiostatFileError(path, "has no data rows (only its header)")
    dt_col = _datetime_column(table, overrides.pop("datetime", None), path)
    headers = [h for h in table.headers if h != dt_col]
    required = ("voltage", "current", "capacity") if dt_col is not None else ("time", "voltage", "current",
                                                                              "capacity")
    cols, info = _resolve_columns(path, headers, table.fmt, overrides, required=required,
                                  hint=_FIELD_HINT)
    names = {q: c.header for q, c in cols.items()}
    epoch = None
    start_from = ""
    if dt_col is not None:
        epoch = np.empty(len(table.linenos))
        for k, text in enumerate(table.values[dt_col]):
            try:
                epoch[k] = parse_timestamp(text, timezone)
            except ValueError as exc:
                raise PotentiostatFileError(path, f"line {table.linenos[k]}: {dt_col!r}: {exc}",
                                            column=dt_col) from None
        start_from = f"column {dt_col!r}"
        names["datetime"] = dt_col
    if "time" in cols:
        time_s = _numbers(path, table, cols["time"].header) * cols["time"].factor
    else:
        assert epoch is not None
        time_s = epoch - epoch[0]
    if start is not None:
        try:
            t0 = parse_timestamp(start, timezone)
        except ValueError as exc:
            raise ValueError(f"start: {exc}") from None
        epoch, start_from = t0 + time_s, "start option"
    elif epoch is None:
        if table.header_start is None:
            where = {"mpt": "its header has no 'Acquisition started on' line",
                     "mpr": "galvani found no log-module timestamp",
                     "csv": "it has no absolute date/time column"}[table.fmt]
            raise PotentiostatFileError(
                path, f"has no absolute time ({where}): give the start of cell time 0 (start=..., "
                "ISO 8601 or epoch s), or name a date/time column with columns={'datetime': HEADER} "
                "(on the command line --field datetime=HEADER)", column="time")
        try:
            t0 = parse_timestamp(table.header_start, timezone)
        except ValueError as exc:
            raise PotentiostatFileError(path, f"start time in the header: {exc}") from None
        epoch, start_from = t0 + time_s, "header"
    bad = np.flatnonzero(~np.isfinite(epoch) | (np.diff(epoch, prepend=epoch[0]) < 0))
    if bad.size:
        k = int(bad[0])
        raise PotentiostatFileError(path, f"line {table.linenos[k]}: time goes backwards or is not a "
                                    "number (logs of several files joined? read them one by one)")
    voltage = _numbers(path, table, cols["voltage"].header) * cols["voltage"].factor
    current = _numbers(path, table, cols["current"].header) * cols["current"].factor
    q = _numbers(path, table, cols["capacity"].header)
    if info["capacity_from"] == "half":
        summer = _HalfCycleSum()
        hc = _numbers(path, table, cols["half_cycle"].header) if "half_cycle" in cols else None
        q = np.array([summer.feed(float(v), None if hc is None else float(hc[k])) for k, v in enumerate(q)])
    q = q * cols["capacity"].factor
    cap_mAh, cap_g = (None, q) if info["capacity_from"] == "specific" else (q, None)
    mass = None if mass_mg is None else float(mass_mg)
    if cap_g is None and mass is not None:
        cap_g = cap_mAh * 1000.0 / mass
    names = {k: v for k, v in names.items() if k in _LOG_QUANTITIES}
    return CyclerLog(str(path), table.fmt, epoch, time_s, voltage, current, cap_mAh, cap_g, mass, names,
                     start_from)
