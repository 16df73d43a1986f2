"""ProgressPrinter: points, rate, cycler readings, and the live a, c read off the RE thread."""

from __future__ import annotations

import io
import threading
import time

import pandas as pd

from strainstream.callbacks.progress import LiveLattice, ProgressPrinter


class _Table:
    """Stands in for the worker's ``derived/<uid>/operando_xrd`` table (tiled DataFrameClient)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.columns = ["seq_num", "a_A", "c_A", "c_A_2", "rwp"]
        self.reads: list[str] = []

    def read(self, columns=None):
        self.reads.append(threading.current_thread().name)
        df = pd.DataFrame(self.rows, columns=self.columns)
        return df[columns] if columns else df


class _Client:
    def __init__(self, uid: str, table: _Table) -> None:
        self._tree = {"derived": {uid: {"operando_xrd": table}}}

    def __getitem__(self, key):
        return self._tree[key]


def _wait(cond, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cond()


def _event(n, volts):
    return {"seq_num": n, "data": {"cycler_voltage_V": volts, "cycler_capacity_mAh_g": 10.0 * n}}


def test_progress_line_carries_the_latest_refined_a_and_c():
    uid = "0123456789abcdef"
    table = _Table()
    out = io.StringIO()
    lattice = LiveLattice(_Client(uid, table), period_s=0.02)
    printer = ProgressPrinter(out, lattice=lattice)
    printer("start", {"uid": uid, "experiment": "operando_xrd", "num_points": 4})
    printer("event", _event(1, 3.701))
    assert "a " not in out.getvalue().splitlines()[-1]  # nothing refined yet
    table.rows.append({"seq_num": 1, "a_A": 2.87312, "c_A": 14.1934, "c_A_2": float("nan"), "rwp": 3.0})
    _wait(lambda: lattice.latest is not None)
    printer("event", _event(2, 3.802))
    line = out.getvalue().splitlines()[-1]
    assert line.startswith("[operando_xrd 01234567] 2/4 (50 %), ")
    assert line.endswith(", V 3.802, mAh/g 20.0, a 2.8731 Å, c 14.1934 Å (event 1)")
    # two phases: the second c follows the first
    table.rows.append({"seq_num": 2, "a_A": 2.8201, "c_A": 14.4412, "c_A_2": 13.9020, "rwp": 3.0})
    _wait(lambda: lattice.latest and lattice.latest["seq_num"] == 2)
    printer("event", _event(3, 4.201))
    assert out.getvalue().splitlines()[-1].endswith("a 2.8201 Å, c 14.4412 / 13.9020 Å (event 2)")
    # the reads happen on the follower's thread, never on the caller's (the RunEngine's)
    assert table.reads and threading.current_thread().name not in table.reads
    printer("stop", {"exit_status": "success"})
    n = len(table.reads)
    time.sleep(0.1)
    assert len(table.reads) <= n + 1  # stopped following
    # the next run (another experiment) carries none of this run's lattice
    printer("start", {"uid": "w" * 16, "experiment": "txm_xanes", "num_points": 2})
    printer("event", {"seq_num": 1, "data": {"es_energy": 8350.0}})
    assert out.getvalue().splitlines()[-1].endswith("eV 8350.0")


def test_other_experiments_and_a_missing_table_leave_the_line_alone():
    out = io.StringIO()

    class _Empty:
        def __getitem__(self, key):
            raise KeyError(key)  # no derived results (no worker running)

    lattice = LiveLattice(_Empty(), period_s=0.01)
    printer = ProgressPrinter(out, lattice=lattice)
    printer("start", {"uid": "u" * 16, "experiment": "operando_xrd", "num_points": 2})
    time.sleep(0.05)
    printer("event", _event(1, 3.7))
    assert out.getvalue().splitlines()[-1].endswith("V 3.700, mAh/g 10.0")
    printer("start", {"uid": "v" * 16, "experiment": "sxdm", "num_points": 2})
    assert lattice._thread is None  # not followed
    printer("event", {"seq_num": 1, "data": {"es_theta": 9.1}})
    assert out.getvalue().splitlines()[-1].endswith("θ 9.100")
