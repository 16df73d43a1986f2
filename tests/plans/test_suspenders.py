"""The beam suspenders keep a trip that arrives while the RunEngine's loop is busy.

bluesky's suspenders give the loop 0.1 s to make their asyncio event from ophyd's callback
thread; past that the trip is dropped with "Could not create the suspender event" (seen in
CI when the shutter status callback came while the plan was opening the shutter). Known
answer: the shutter closes while a plan step holds the loop for 0.6 s; the plan must be
suspended once (its pre_plan runs once) and finish after the shutter opens again.
"""

from __future__ import annotations

import threading
import time

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky import RunEngine
from ophyd import Signal

from strainstream.plans._common import PatientSuspendWhenChanged


def _trip_while_the_loop_is_busy(cls):
    """(bluesky 1.15's own SuspendWhenChanged, run the same way, never suspends.)"""
    RE = RunEngine({})
    shutter = Signal(name="shutter", value="Open")
    suspended, docs = [], []

    def pre_plan():
        suspended.append(time.monotonic())
        yield from bps.null()

    susp = cls(shutter, expected_value="Open", allow_resume=True, sleep=0.1, pre_plan=pre_plan)

    def close_then_open():
        time.sleep(0.1)
        shutter.put("Closed")  # the loop is inside time.sleep(0.6) below
        time.sleep(1.0)
        shutter.put("Open")

    def body():
        yield from bps.open_run()
        mover = threading.Thread(target=close_then_open)
        mover.start()
        time.sleep(0.6)  # a slow plan step holding the RunEngine's loop (test only)
        for _ in range(3):
            yield from bps.sleep(0.2)
        yield from bps.close_run()
        mover.join()

    t0 = time.monotonic()
    RE(bpp.suspend_wrapper(body(), [susp]), lambda name, doc: docs.append(name))
    return suspended, time.monotonic() - t0, docs


def test_a_trip_during_a_busy_loop_suspends_the_plan():
    suspended, elapsed, docs = _trip_while_the_loop_is_busy(PatientSuspendWhenChanged)
    assert len(suspended) == 1, suspended
    assert elapsed > 1.1, f"{elapsed:.2f} s: the plan did not wait for the shutter to open"
    assert docs[0] == "start" and docs[-1] == "stop"

