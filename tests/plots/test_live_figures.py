"""LiveFigures: the console's live windows, fed off the RunEngine's thread, drawn on it."""

from __future__ import annotations

import threading
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from _plot_synth import XRD_START, operando_xrd_entry  # noqa: E402

import strainstream.callbacks.sinks as sinks  # noqa: E402
import strainstream.results_doc as results_doc  # noqa: E402
from strainstream.callbacks.plots.live import LiveFigures  # noqa: E402
from strainstream.callbacks.plots.xrd import VOLTAGE_LABEL  # noqa: E402

UID = XRD_START.get("uid", "0123456789abcdef0123")


@pytest.fixture
def stored(monkeypatch):
    """What the 'worker' has stored so far; the readers record the thread they ran on."""
    state = {"entry": None, "threads": set()}

    def read_results(root, uid):
        state["threads"].add(threading.current_thread().name)
        if state["entry"] is None:
            raise KeyError(uid)  # no results yet
        return {"uid": uid, "analyses": {"operando_xrd": state["entry"]}}

    monkeypatch.setattr(sinks, "read_results", read_results)
    monkeypatch.setattr(results_doc, "read_arrays", lambda root, uid, name: ({}, {}))  # figure_arrays'
    yield state
    plt.close("all")


def _wait(cond, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cond()


def _n_points(fig):
    """Points of the voltage profile (one per stored row)."""
    ax = next(ax for ax in fig.axes if ax.get_ylabel() == VOLTAGE_LABEL and ax.get_lines())
    return len(ax.get_lines()[0].get_xdata())


def test_windows_grow_with_the_results_and_stop_when_complete(stored):
    live = LiveFigures(object(), interval_s=0.02)
    start = dict(XRD_START, uid=UID)
    live("start", start)
    live("event", {"seq_num": 1})
    assert live.figures == {}  # nothing stored yet: no empty window
    partial = operando_xrd_entry(n=12)
    partial.update(status="running")
    stored["entry"] = partial
    _wait(lambda: live._fetched is not None)
    time.sleep(0.03)
    live("event", {"seq_num": 2})
    fig = live.figures["operando_xrd"]
    assert fig.get_label() == f"operando_xrd {UID[:8]}" and fig.axes
    assert _n_points(fig) == 12 and not live.complete
    stored["entry"] = operando_xrd_entry(n=30)  # the worker caught up: complete
    gen = live._fetched[0]
    _wait(lambda: live._fetched[0] > gen)
    live("stop", {"exit_status": "success", "run_start": UID})
    assert live.complete and _n_points(live.figures["operando_xrd"]) == 30
    assert live.figures["operando_xrd"] is fig  # the same window, redrawn
    # tiled was read on the follower's thread only, never on the RunEngine's
    assert stored["threads"] and threading.current_thread().name not in stored["threads"]
    assert live._wake.is_set()  # stopped following


def test_a_new_run_gets_new_windows(stored):
    live = LiveFigures(object(), interval_s=0.02)
    stored["entry"] = operando_xrd_entry(n=10)
    live("start", dict(XRD_START, uid="a" * 20))
    _wait(lambda: live._fetched is not None)
    live("stop", {"exit_status": "success"})
    first = live.figures["operando_xrd"]
    live("start", dict(XRD_START, uid="b" * 20))
    assert live.figures == {}  # the first run's windows stay as they are, not reused
    _wait(lambda: live._fetched is not None)
    live.draw()
    assert live.figures["operando_xrd"] is not first
    assert live.figures["operando_xrd"].get_label() == "operando_xrd bbbbbbbb"
    live._stop_following()
