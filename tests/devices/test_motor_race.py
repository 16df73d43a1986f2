"""ophyd's end-of-move race, closed per motor instance by ``serialize_move_completion``.

The race (ophyd 1.11 ``EpicsMotor``): the CA monitor thread finishes a move's status and only
then clears the done-subscriptions; a plan woken by the first step can subscribe its next
move's status before the clear, which then drops it, and that move never completes. The test
holds the monitor thread in exactly that window (a done-subscriber that waits for the plan's
next move) on a fake (no CA) motor, so the outcome does not depend on thread timing.
"""

from __future__ import annotations

import threading

import pytest
from ophyd import EpicsMotor
from ophyd.sim import make_fake_device
from ophyd.utils.errors import WaitTimeoutError

from strainstream.devices import motors


def _fake(m):
    m.user_setpoint.sim_set_limits((-100.0, 100.0))
    return m


def _end_move_while_the_plan_issues_the_next(m):
    """Move 1 ends on this thread while another thread, woken by it, issues move 2; returns
    move 2's status after move 2 has run on the (fake) record."""
    st1 = m.set(1.0)
    issued, statuses = threading.Event(), []

    def plan():
        st1.wait(timeout=5)
        statuses.append(m.set(2.0))
        issued.set()

    def in_the_window(**kwargs):
        # called after move 1's status finished, before ophyd clears the subscriptions:
        # the monitor thread is pre-empted here long enough for the plan to move again
        if threading.current_thread() is not plan_thread:
            issued.wait(timeout=1.0)

    m.subscribe(in_the_window, event_type=m._SUB_REQ_DONE, run=False)
    plan_thread = threading.Thread(target=plan)
    plan_thread.start()
    m._done_moving(success=True)  # move 1 ends: what EpicsMotor._move_changed calls on DMOV 0 -> 1
    # (this thread plays the CA monitor thread)
    plan_thread.join(timeout=5)
    assert statuses, "the plan's second move was not issued"
    m._done_moving(success=True)  # move 2 ends
    return st1, statuses[0]


def test_a_move_issued_as_the_previous_one_ends_completes():
    m = _fake(motors.motor("SS:", "sample_z", mock=True))
    st1, st2 = _end_move_while_the_plan_issues_the_next(m)
    assert st1.done and st1.success
    st2.wait(timeout=5)
    assert st2.done and st2.success


def test_the_race_is_real_on_an_unguarded_motor():
    """Control: the same sequence on a stock motor without the guard loses move 2."""
    m = _fake(make_fake_device(EpicsMotor)("SS:ES:sample_z", name="sample_z"))
    st1, st2 = _end_move_while_the_plan_issues_the_next(m)
    assert st1.done and st1.success
    with pytest.raises(WaitTimeoutError):
        st2.wait(timeout=1.0)
    assert not st2.done


def test_move_with_wait_waits_outside_the_lock():
    """``move(wait=True)`` returns once the end of the move arrives on another thread
    (the lock is not held while waiting: the end of the move needs it)."""
    m = _fake(motors.motor("SS:", "sample_z", mock=True))
    timer = threading.Timer(0.2, lambda: m._done_moving(success=True))
    timer.start()
    st = m.move(3.0, wait=True, timeout=5)
    timer.join()
    assert st.done and st.success and m.user_setpoint.get() == 3.0
    assert type(m) is not EpicsMotor and isinstance(m, EpicsMotor)  # a fake EpicsMotor subclass



@pytest.mark.parametrize("signals_exist", [False, True])
def test_connection_timeout_applies_to_signals_made_later(monkeypatch, signals_exist):
    """``set_connection_timeout`` sets the default ophyd reads when a signal is made (the
    lazy areaDetector ones), also once signals exist (where ophyd's ``set_defaults`` refuses).
    No real signal is made here: that would open a CA context before the tests' EPICS setup."""
    from ophyd.signal import EpicsSignalBase

    from strainstream.devices._ioc import set_connection_timeout

    attr = "_EpicsSignalBase__default_connection_timeout"
    monkeypatch.setattr(EpicsSignalBase, attr, getattr(EpicsSignalBase, attr))  # restored after
    kept = {k: getattr(EpicsSignalBase, f"_EpicsSignalBase__default_{k}")
            for k in ("timeout", "write_timeout", "auto_monitor")}
    if signals_exist:
        def refuse(*args, **kwargs):
            raise RuntimeError("The method EpicsSignalBase.set_defaults may only be called before "
                               "the first instance of EpicsSignalBase is created.")
        monkeypatch.setattr(EpicsSignalBase, "set_defaults", refuse)
    set_connection_timeout(7.5)
    assert getattr(EpicsSignalBase, attr) == 7.5
    assert kept == {k: getattr(EpicsSignalBase, f"_EpicsSignalBase__default_{k}") for k in kept}
    set_connection_timeout(7.5)  # unchanged: nothing to do
    assert getattr(EpicsSignalBase, attr) == 7.5
