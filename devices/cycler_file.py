"""ophyd device that follows a potentiostat's live export file (no EPICS).

Potentiostats are usually not EPICS devices: EC-Lab (BioLogic), and most cycler software,
write the measurement to a file that grows while the cell runs. :class:`CyclerFileFollower`
reads that file and, on every ``trigger``/``read``, gives its **newest complete row** under
the same data keys, dtypes and units as the cycler IOC's device
(:class:`strainstream.devices.cycler.Cycler`) records in every event:

==========================  =======  ====================================================
data key                    dtype    meaning (unit in the name; ``units`` is ``""`` as on
                                     the IOC)
==========================  =======  ====================================================
``<name>_voltage_V``        number   cell voltage, V (``Ewe/V`` ...)
``<name>_current_mA``       number   current, mA, + = charge (``I/mA``, ``<I>/mA`` ...)
``<name>_current_mA_g``     number   current per gram of active material, mA/g
``<name>_capacity_mAh_g``   number   net specific charge since the start of the file,
                                     mAh/g (charge +, discharge −), as the IOC's
``<name>_cycle``            integer  cycle number, the first is 1 (EC-Lab's 0-based
                                     ``cycle number`` + 1)
``<name>_time_s``           number   time since the start of the experiment, s
==========================  =======  ====================================================

The IOC's ``soc``, ``charge_capacity_mAh_g`` and ``mode_rbv`` are not recorded: a file does not
know the practical capacity, and the other two are not in every export. Configuration:
``<name>_mass_mg`` (active mass, mg) and ``<name>_file_path``. ``row_age_s`` (kind omitted,
``bps.rd(dev.row_age_s)``) is the age of the newest row: seconds since the file was
modified when that row was first read, so a plan can warn about a potentiostat that stopped
writing. Reading timestamps are the same file modification time.

Formats (detected from the content):

* **EC-Lab text export** (``.mpt``): ``EC-Lab ASCII FILE`` / ``BT-Lab ASCII FILE``, then
  ``Nb header lines : N``; line N holds the tab-separated column names, data follow.
* **CSV / text table**: the first line that is not empty and does not start with ``#``
  names the columns; delimiter tab, ``;`` or ``,`` (from that line).
* **EC-Lab binary** (``.mpr``, by its magic bytes or suffix): read with ``galvani``
  (``pip install 'strainstream[biologic]'``). galvani parses whole files only, so the file is
  re-read when its size or modification time changed (text exports are read incrementally).

Decimal commas (European locales) are accepted in tab- and ``;``-separated files. Columns are
recognised by quantity and unit, ``name/unit`` or ``name (unit)``: time ``time/s`` (also min,
h); voltage ``Ewe/V``, ``<Ewe>/V``, ``Ecell/V``, ``Voltage (V)`` (also mV); current ``I/mA``,
``<I>/mA``, ``Current (A)`` (also A, µA); capacity ``(Q-Qo)/mA.h`` (also ``(Q-Qo)/C``, A.h),
else EC-Lab's per-half-cycle ``Q charge/discharge/mA.h`` summed over the half cycles (a new
half cycle is seen from the ``half cycle`` column, or else when |Q| falls), and in CSV files a
net ``Capacity (mAh)`` or ``capacity_mAh_g``; cycle ``cycle number`` (EC-Lab, 0-based),
``cycle``, ``Cycle_Index``, else EC-Lab's ``half cycle`` // 2 (a cycle is a charge and a
discharge). The data keys' own names (``time_s``, ``voltage_V``,
``current_mA``, ``capacity_mAh`` or ``capacity_mAh_g``, ``cycle``) are accepted too.
``columns={"voltage": "Ewe-Ece/V"}`` picks a column by its header instead.

Text files are read incrementally: the byte offset of the first unread byte is kept, and a
poll reads only what was appended since (a last line without its newline is left for the next
poll: the potentiostat is still writing it). A file that shrank or was replaced is read again
from the start.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ophyd import Component as Cpt
from ophyd import Device, Kind
from ophyd.signal import Signal, SignalRO
from ophyd.status import DeviceStatus

# the pure parsing pieces are shared with the whole-log reader of archived measurements
from strainstream.archives.cyclerlog import (
    _MPR_MAGIC,
    _MPT_MAGIC,
    _NB_HEADER_RE,
    PotentiostatFileError,
    _Column,
    _HalfCycleSum,
    _load_mpr,
    _resolve_columns,
)

__all__ = [
    "CyclerFileFollower",
    "CyclerRow",
    "PotentiostatFileError",
    "PotentiostatFileNotReady",
    "cycler_file",
]

log = logging.getLogger(__name__)

_BLOCK_BYTES = 8 << 20  # text read per chunk while catching up with a long file


class PotentiostatFileNotReady(PotentiostatFileError):
    """The file does not exist yet, or holds no complete data row yet (``trigger`` waits)."""


@dataclass(frozen=True)
class CyclerRow:
    """The newest complete row of the file, in the data keys' units.

    ``seen_at`` is the file's modification time (epoch s) when the row was first read.
    """

    time_s: float
    voltage_V: float
    current_mA: float
    capacity_mAh_g: float
    cycle: int
    seen_at: float


class _RowSignal(SignalRO):
    """Read-only signal set from the file's newest row; describes itself like the IOC's PV."""

    def __init__(self, *args: Any, dtype: str = "number", precision: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._dtype, self._precision = dtype, precision

    def _update(self, value: Any, timestamp: float) -> None:
        Signal.put(self, value, timestamp=timestamp, force=True)

    def describe(self) -> dict[str, dict[str, Any]]:
        root = self.root if isinstance(self.root, CyclerFileFollower) else None
        if root is None:
            source = f"SIM:{self.name}"
        elif self.kind & Kind.config:
            source = f"ARG:{self.attr_name}"  # given to the constructor
        else:
            source = f"FILE:{root.path}"
        desc = {"source": source, "dtype": self._dtype, "shape": [], "units": ""}
        if self._precision is not None:
            desc["precision"] = self._precision
        return {self.name: desc}


class CyclerFileFollower(Device):
    """The newest row of a potentiostat's growing export file, read like the cycler IOC.

    Parameters
    ----------
    path : str or path-like
        The export file (``.mpt``/CSV text, or ``.mpr`` with galvani installed). It may not
        exist yet when the device is made.
    active_mass_mg : float
        Active-material mass, mg (> 0): ``mA·h`` -> ``mAh/g`` and ``mA`` -> ``mA/g``.
    wait_timeout_s : float
        ``trigger`` waits this long for the file to exist and hold a first complete row
        (polling every ``poll_interval_s``); ``read`` never waits.
    poll_interval_s : float
        Poll period while ``trigger`` waits, s.
    columns : dict, optional
        Quantity -> header, to pick a column by name (``{"voltage": "Ewe-Ece/V"}``).
        Quantities: time, voltage, current, capacity, cycle.
    cycle_offset : int, optional
        Added to the file's cycle number (default: 1 for EC-Lab's 0-based ``cycle number`` and
        ``half cycle`` columns, else 0) so that the first cycle is 1 as on the IOC.
    encoding : str, optional
        Of a text file (default: UTF-8, else Windows-1252 as EC-Lab writes its headers).
    name : str
        Device name, the data-key prefix (``cycler`` as the IOC device).

    Notes
    -----
    ``follow_only`` is True: a plan must not command it (no set-points, no start/stop);
    :func:`strainstream.plans.xrd.operando_xrd` then only records it.
    """

    #: plans: this cycler can only be read, not commanded
    follow_only = True

    voltage_V = Cpt(_RowSignal, dtype="number", precision=5, kind="hinted")
    current_mA = Cpt(_RowSignal, dtype="number", precision=5, kind="normal")
    current_mA_g = Cpt(_RowSignal, dtype="number", precision=4, kind="normal")
    capacity_mAh_g = Cpt(_RowSignal, dtype="number", precision=4, kind="hinted")
    cycle = Cpt(_RowSignal, dtype="integer", kind="normal")
    time_s = Cpt(_RowSignal, dtype="number", precision=1, kind="normal")
    mass_mg = Cpt(_RowSignal, dtype="number", precision=3, kind="config")
    file_path = Cpt(_RowSignal, dtype="string", kind="config")
    row_age_s = Cpt(_RowSignal, dtype="number", precision=1, kind="omitted")

    def __init__(self, path: str | os.PathLike, *, active_mass_mg: float,
                 wait_timeout_s: float = 60.0, poll_interval_s: float = 0.5,
                 columns: dict[str, str] | None = None, cycle_offset: int | None = None,
                 encoding: str | None = None, name: str = "cycler", **kwargs: Any) -> None:
        mass = float(active_mass_mg)
        if not (math.isfinite(mass) and mass > 0):
            raise ValueError(f"active_mass_mg must be the positive active-material mass in mg, "
                             f"got {active_mass_mg!r}")
        if not (wait_timeout_s >= 0 and poll_interval_s > 0):
            raise ValueError("wait_timeout_s must be >= 0 and poll_interval_s > 0")
        self.path = Path(path)
        self.active_mass_mg = mass
        self.wait_timeout_s, self.poll_interval_s = float(wait_timeout_s), float(poll_interval_s)
        self._overrides = dict(columns or {})
        self._cycle_offset_arg = cycle_offset
        self._encoding = encoding
        self._lock = threading.RLock()
        self._timers: set[threading.Timer] = set()
        super().__init__("", name=name, **kwargs)
        now = time.time()
        self.mass_mg._update(mass, now)
        self.file_path._update(str(self.path), now)
        self._restart()

    # ------------------------------------------------------------------ state
    def _restart(self) -> None:
        """Forget everything read: the next poll reads the file from its first byte."""
        self._fmt: str | None = None
        self._offset = 0
        self._lineno = 0
        self._ident: tuple[int, int] | None = None
        self._header_lines: int | None = None
        self._delimiter = "\t"
        self._cols: dict[str, _Column] | None = None
        self._headers: list[str] = []
        self._info: dict[str, Any] = {}
        self._halfsum: _HalfCycleSum | None = None
        self._mpr_seen: tuple[int, int] | None = None
        self._mpr_rows = 0
        self.row: CyclerRow | None = None

    @property
    def format(self) -> str | None:
        """``"mpt"``, ``"csv"`` or ``"mpr"`` once the file has been seen."""
        return self._fmt

    @property
    def row_age(self) -> float | None:
        """Seconds since the newest row was written (file modification time), or None."""
        return None if self.row is None else max(0.0, time.time() - self.row.seen_at)

    # ------------------------------------------------------------------ ophyd
    def read(self):
        """The newest complete row (polls the file once; never waits).

        Raises
        ------
        PotentiostatFileNotReady
            The file does not exist or has no complete data row yet.
        PotentiostatFileError
            Unknown format, a missing column, a row that does not parse.
        """
        self.poll()
        return super().read()

    def trigger(self) -> DeviceStatus:
        """Done at once when the file has a complete row; else polls until ``wait_timeout_s``."""
        status = DeviceStatus(self)
        self._attempt(status, time.monotonic() + self.wait_timeout_s)
        return status

    def _attempt(self, status: DeviceStatus, deadline: float) -> None:
        try:
            self.poll()
        except PotentiostatFileNotReady as exc:
            if time.monotonic() >= deadline or status.done:
                if not status.done:
                    status.set_exception(PotentiostatFileNotReady(
                        self.path, f"{exc.detail} (waited {self.wait_timeout_s:g} s)"))
                return
            timer = threading.Timer(self.poll_interval_s, self._retry, (status, deadline))
            timer.daemon = True
            with self._lock:
                self._timers.add(timer)
            timer.start()
            return
        except Exception as exc:  # a named error for the plan; the status carries it
            status.set_exception(exc)
            return
        status.set_finished()

    def _retry(self, status: DeviceStatus, deadline: float) -> None:
        with self._lock:
            self._timers.discard(threading.current_thread())  # type: ignore[arg-type]
        if not status.done:
            self._attempt(status, deadline)

    def stop(self, *, success: bool = False) -> None:
        with self._lock:
            timers, self._timers = self._timers, set()
        for t in timers:
            t.cancel()
        super().stop(success=success)

    # ------------------------------------------------------------------ polling
    def poll(self) -> CyclerRow:
        """Read what was appended since the last poll; return (and publish) the newest row.

        Raises :class:`PotentiostatFileNotReady` / :class:`PotentiostatFileError` (see
        :meth:`read`).
        """
        with self._lock:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                raise PotentiostatFileNotReady(
                    self.path, "does not exist (yet): start the potentiostat's recording to this "
                    "file, or give the path it writes to") from None
            except OSError as exc:
                raise PotentiostatFileError(self.path, f"cannot be read: {exc.strerror or exc}") from None
            if self._fmt is None:
                self._fmt = self._detect()
            if self._fmt == "mpr":
                self._poll_mpr(st)
            else:
                ident = (st.st_dev, st.st_ino)
                if self._ident is not None and (ident != self._ident or st.st_size < self._offset):
                    log.warning("%s was replaced or truncated: reading it again from the start",
                                self.path)
                    self._restart()
                    self._fmt = self._detect()
                self._ident = ident
                self._poll_text(st)
            if self.row is None:
                what = "no column names yet" if self._cols is None else "no complete data row yet"
                raise PotentiostatFileNotReady(self.path, f"{what} (the potentiostat has not "
                                               "written one)")
            self.row_age_s._update(self.row_age, time.time())
            return self.row

    def _detect(self) -> str | None:
        if self.path.suffix.lower() == ".mpr":
            return "mpr"
        with open(self.path, "rb") as f:
            head = f.read(len(_MPR_MAGIC))
        if head.startswith(_MPR_MAGIC):
            return "mpr"
        return None  # text: decided by the first complete line

    def _publish(self, row: CyclerRow) -> None:
        self.row = row
        ts = row.seen_at
        self.voltage_V._update(row.voltage_V, ts)
        self.current_mA._update(row.current_mA, ts)
        self.current_mA_g._update(row.current_mA * 1000.0 / self.active_mass_mg, ts)
        self.capacity_mAh_g._update(row.capacity_mAh_g, ts)
        self.cycle._update(row.cycle, ts)
        self.time_s._update(row.time_s, ts)

    # -- text
    def _poll_text(self, st: os.stat_result) -> None:
        if st.st_size <= self._offset:
            return
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            remaining = st.st_size - self._offset
            while remaining > 0:
                block = f.read(min(remaining, _BLOCK_BYTES))
                if not block:
                    break
                remaining -= len(block)
                end = block.rfind(b"\n")
                if end < 0:
                    if len(block) == _BLOCK_BYTES:  # one line longer than a block: not a table
                        raise PotentiostatFileError(self.path, f"line {self._lineno + 1} is longer "
                                                    f"than {_BLOCK_BYTES} bytes: not a text table")
                    break  # a partial last line: the potentiostat is still writing it
                try:
                    self._consume(block[: end + 1].split(b"\n")[:-1], st.st_mtime)
                except PotentiostatFileError:
                    self._restart()  # a consistent state: the next poll reads from the start
                    raise
                self._offset += end + 1
                if end + 1 < len(block):  # the rest of the block: re-read from the new offset
                    f.seek(self._offset)
                    remaining = st.st_size - self._offset

    def _decode(self, raw: bytes) -> str:
        if self._encoding:
            return raw.decode(self._encoding)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("cp1252", errors="replace")

    def _consume(self, lines: list[bytes], mtime: float) -> None:
        i = 0
        while self._cols is None and i < len(lines):  # header block
            self._header_line(self._decode(lines[i].rstrip(b"\r")))
            i += 1
        if self._cols is None or i >= len(lines):
            return
        data = lines[i:]
        first_line = self._lineno + 1
        self._lineno += len(data)
        if self._halfsum is not None:  # every row feeds the half-cycle sum
            last = None
            for k, raw in enumerate(data):
                if raw.strip():
                    last = self._parse_row(raw, first_line + k, accumulate=True)
            if last is not None:
                self._publish(self._make_row(last, mtime))
            return
        for k in range(len(data) - 1, -1, -1):  # only the newest row matters
            if data[k].strip():
                self._publish(self._make_row(self._parse_row(data[k], first_line + k), mtime))
                return

    def _header_line(self, line: str) -> None:
        self._lineno += 1
        n = self._lineno
        if n == 1:
            line = line.lstrip("\ufeff")  # a byte-order mark (CSV saved by a spreadsheet)
        if self._fmt is None:
            if line.strip().startswith(_MPT_MAGIC):
                self._fmt = "mpt"
                return
            self._fmt = "csv"
        if self._fmt == "mpt":
            if n == 2:
                m = _NB_HEADER_RE.search(line)
                if m is None or int(m.group(1)) < 3:
                    raise PotentiostatFileError(self.path, f"EC-Lab text export without a valid "
                                                f"'Nb header lines : N' line (line 2 is {line!r})")
                self._header_lines = int(m.group(1))
            elif self._header_lines is not None and n == self._header_lines:
                self._set_columns(line.split("\t"))
            return
        # csv: the first line that is not empty and not a comment names the columns
        if not line.strip() or line.lstrip().startswith("#"):
            return
        self._delimiter = "\t" if "\t" in line else ";" if ";" in line else ","
        self._set_columns(line.split(self._delimiter))

    def _set_columns(self, headers: list[str]) -> None:
        cols, info = _resolve_columns(self.path, headers, self._fmt or "csv", self._overrides)
        if self._cycle_offset_arg is not None:
            info["cycle_offset"] = int(self._cycle_offset_arg)
        self._cols, self._info, self._headers = cols, info, [h.strip() for h in headers]
        self._halfsum = _HalfCycleSum() if info["capacity_from"] == "half" else None
        log.info("%s (%s): columns %s, capacity from %s", self.path, self._fmt,
                 {q: c.header for q, c in cols.items()}, info["capacity_from"])

    def _parse_row(self, raw: bytes, lineno: int, *, accumulate: bool = False) -> dict[str, float]:
        """The row's values in the file's units (capacity summed over half cycles if needed)."""
        assert self._cols is not None
        fields = self._decode(raw.rstrip(b"\r")).split(self._delimiter)
        comma = self._delimiter != ","  # decimal commas only where they cannot be the delimiter
        out: dict[str, float] = {}
        for q, col in self._cols.items():
            if col.index >= len(fields):  # type: ignore[operator]
                raise PotentiostatFileError(
                    self.path, f"line {lineno} has {len(fields)} fields, no {col.header!r} "
                    f"(column {int(col.index) + 1} of {len(self._headers)})", column=col.header)
            text = fields[col.index].strip().strip('"')  # type: ignore[index]
            try:
                out[q] = float(text.replace(",", ".") if comma else text)
            except ValueError:
                raise PotentiostatFileError(
                    self.path, f"line {lineno}: {col.header!r} is {text!r}, not a number (export "
                    "times in seconds and numbers without thousands separators)",
                    column=col.header) from None
        if accumulate and self._halfsum is not None:
            out["capacity"] = self._halfsum.feed(out["capacity"], out.get("half_cycle"))
        return out

    def _make_row(self, v: dict[str, float], seen_at: float) -> CyclerRow:
        c = self._cols
        assert c is not None
        cap = v["capacity"] * c["capacity"].factor
        if self._info["capacity_from"] != "specific":
            cap = cap * 1000.0 / self.active_mass_mg  # mA·h -> mAh/g
        cycle = v["cycle"]
        if not math.isfinite(cycle):
            raise PotentiostatFileError(self.path, f"cycle {cycle!r} is not a number", column="cycle")
        if self._info.get("cycle_from_half_cycle"):
            cycle = cycle // 2
        return CyclerRow(time_s=v["time"] * c["time"].factor,
                         voltage_V=v["voltage"] * c["voltage"].factor,
                         current_mA=v["current"] * c["current"].factor,
                         capacity_mAh_g=cap,
                         cycle=int(round(cycle)) + int(self._info["cycle_offset"]),
                         seen_at=seen_at)

    # -- mpr
    def _poll_mpr(self, st: os.stat_result) -> None:
        seen = (st.st_size, st.st_mtime_ns)
        if seen == self._mpr_seen:
            return
        with open(self.path, "rb") as f:
            content = f.read()
        try:
            data = _load_mpr(self.path, content).data
        except PotentiostatFileError:
            raise  # galvani missing, or a column it does not know
        except (ValueError, OSError, AssertionError, IndexError) as exc:
            # EC-Lab writes the file while we read it: an incomplete module is usual
            if self.row is None:
                raise PotentiostatFileNotReady(self.path, f"galvani cannot read it yet: {exc}") from None
            log.debug("%s: galvani cannot read it now (%s); keeping the newest row", self.path, exc)
            return
        self._mpr_seen = seen
        if self._cols is None:
            self._set_columns(list(data.dtype.names or ()))
        n = len(data)
        if n < self._mpr_rows:  # a new file under the same name
            log.warning("%s lost rows (a new file?): reading it again from the start", self.path)
            self._restart()
            self._fmt = "mpr"
            self._poll_mpr(st)
            return
        if n == self._mpr_rows:
            return
        cols = self._cols
        assert cols is not None
        values = {q: float(data[-1][self._headers[c.index]]) for q, c in cols.items()}  # type: ignore[index]
        if self._halfsum is not None:
            q_name = self._headers[cols["capacity"].index]  # type: ignore[index]
            hc = cols.get("half_cycle")
            hc_name = self._headers[hc.index] if hc is not None else None  # type: ignore[index]
            for rec in data[self._mpr_rows:]:
                net = self._halfsum.feed(float(rec[q_name]),
                                         float(rec[hc_name]) if hc_name is not None else None)
            values["capacity"] = net
        self._mpr_rows = n
        self._publish(self._make_row(values, st.st_mtime))


def cycler_file(path: str | os.PathLike, *, active_mass_mg: float, name: str = "cycler",
                **kwargs: Any) -> CyclerFileFollower:
    """Factory: a cycler that follows a potentiostat's export file (no connection, no IOC).

    See :class:`CyclerFileFollower` for ``wait_timeout_s``, ``poll_interval_s``, ``columns``,
    ``cycle_offset`` and ``encoding``.
    """
    return CyclerFileFollower(path, active_mass_mg=active_mass_mg, name=name, **kwargs)
