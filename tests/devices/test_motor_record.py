"""The endstation IOC's motor records driven by ophyd's stock ``EpicsMotor`` only.

Known answers: positions are set by the test (speeds, limits, offsets), the hard limit
switches sit 5 % of the soft range beyond the initial soft limits (sample_z: ±100 um soft,
±110 um hard), the home position of sample_z is 0. Every test leaves its motor as it found
it (the session's IOCs are shared with the plan tests).
"""

from __future__ import annotations

import threading
import time

import pytest
from ophyd import EpicsMotor, EpicsSignal, EpicsSignalRO
from ophyd.utils.errors import LimitError

from strainstream.devices.motors import serialize_move_completion
from strainstream.devices.testing import wait_for

pytestmark = pytest.mark.system

MSTA_DIRECTION, MSTA_DONE, MSTA_PLUS_LS, MSTA_MOVING, MSTA_MINUS_LS, MSTA_HOMED = (
    1 << 0, 1 << 1, 1 << 2, 1 << 10, 1 << 13, 1 << 14)


def _wait_for(pred, timeout_s=10.0, period_s=0.01):
    return wait_for(pred, timeout_s, period_s)


@pytest.fixture(scope="module")
def beamline(sim_beamline):
    """The session's simulated beamline (tests/conftest.py)."""
    return sim_beamline



def _field(motor, field, *, string=False):
    """A field of the motor record that EpicsMotor has no component for (fresh reads)."""
    sig = EpicsSignal(f"{motor.prefix}.{field}", name=f"{motor.name}_{field}", string=string)
    sig.wait_for_connection(timeout=5)
    return sig


class _Recorder:
    """Every monitor value of a signal, in order."""

    def __init__(self, signal):
        self.signal, self.values, self._lock = signal, [], threading.Lock()
        self._cid = signal.subscribe(self._cb, run=False)

    def _cb(self, value, **kwargs):
        with self._lock:
            self.values.append(value)

    def clear(self):
        with self._lock:
            self.values.clear()

    def close(self):
        self.signal.unsubscribe(self._cid)


@pytest.fixture
def sample_z(beamline):
    """Stock EpicsMotor on the sample_z record, at 0; restored afterwards. Its end-of-move
    race is closed as the product's motors have it (``serialize_move_completion``): ophyd
    wakes a move's waiter before clearing its done-subscriptions, so a move issued at once
    could lose its own and never complete (client-side; the record's DMOV is sent either way)."""
    m = serialize_move_completion(EpicsMotor(f"{beamline.prefix}ES:sample_z", name="sample_z"))
    m.wait_for_connection(timeout=10)
    spmg, setm = _field(m, "SPMG", string=True), _field(m, "SET", string=True)
    yield m
    spmg.put("Go", wait=True)
    setm.put("Use", wait=True)
    m.user_offset.put(0.0, wait=True)
    m.user_offset_dir.put(0, wait=True)
    m.high_limit_travel.put(100.0, wait=True)
    m.low_limit_travel.put(-100.0, wait=True)
    m.velocity.put(50.0, wait=True)
    assert _wait_for(lambda: m.limits == (-100.0, 100.0), 5)
    # this instance's own view of the last move's end first: a test that stopped the motor
    # through another instance (or a move it abandoned) leaves DMOV's 0 -> 1 in this one's
    # monitor queue on a loaded machine, and ophyd ends the next move at the first DMOV = 1 it
    # sees while it believes the motor moving (seen in a full run: "restored" at 1.511 um)
    assert _wait_for(lambda: not m.moving and m.motor_done_move.get() == 1, 10)
    m.set(0.0).wait(timeout=20)
    assert m.position == 0.0
    m.destroy()


def test_move_within_limits(sample_z):
    m = sample_z
    assert type(m) is EpicsMotor
    assert m.egu == "um" and m.limits == (-100.0, 100.0) and m.precision == 5
    dmov, movn, rbv = _Recorder(m.motor_done_move), _Recorder(m.motor_is_moving), _Recorder(m.user_readback)
    try:
        st = m.set(4.0)  # 80 ms at 50 um/s, 10 ms steps
        st.wait(timeout=10)
    finally:
        for r in (dmov, movn, rbv):
            r.close()
    assert st.success
    # the status ended with DMOV 0 -> 1; the last readback arrived before DMOV=1
    assert dmov.values == [0, 1]
    assert movn.values == [1, 0]
    assert m.position == 4.0 and m.user_readback.get() == 4.0
    assert m.user_readback.get(use_monitor=False) == 4.0
    assert len([v for v in rbv.values if 0.0 < v < 4.0]) >= 3
    assert m.user_setpoint.get(use_monitor=False) == 4.0
    assert m.direction_of_travel.get(use_monitor=False) == 1
    msta = int(_field(m, "MSTA").get())
    assert msta & MSTA_DONE and not msta & MSTA_MOVING and msta & MSTA_DIRECTION
    assert _field(m, "DRBV").get() == 4.0
    reading = m.read()
    assert set(reading) == {"sample_z", "sample_z_user_setpoint"}
    assert reading["sample_z"]["value"] == 4.0
    assert m.describe()["sample_z"]["units"] == "um"
    # back, negative direction
    m.set(-1.0).wait(timeout=10)
    assert m.position == -1.0 and m.direction_of_travel.get(use_monitor=False) == 0


def test_move_outside_the_soft_limits_is_refused(sample_z, beamline):
    from caproto import ErrorResponseReceived
    from caproto.sync.client import write

    from strainstream.devices.motors import motor

    m = sample_z
    lvio = _field(m, "LVIO")
    m.set(2.0).wait(timeout=10)
    # the stock class refuses before sending anything (limits = VAL's control limits)
    with pytest.raises(LimitError):
        m.set(150.0)
    # the package's factory motor names motor, target, limits and units
    named = motor(beamline.prefix, "sample_z", ioc_address=beamline.addresses["endstation"])
    named.wait_for_connection(timeout=10)
    with pytest.raises(LimitError, match=r"^sample_z: target 150 um is outside the soft limits "
                                         r"\[-100, 100\] um \(SS:ES:sample_z.HLM/.LLM\); move refused"):
        named.set(150.0)
    assert type(named) is EpicsMotor
    named.destroy()
    # a raw Channel Access put is refused by the record itself: LVIO=1, nothing moves
    with pytest.raises(ErrorResponseReceived, match=r"motor sample_z \(SS:ES:sample_z.VAL\): target "
                                                    r"-150 um is outside the soft limits \[-100, 100\] um"):
        write(f"{m.prefix}.VAL", -150.0, notify=True, timeout=5, repeater=False)
    assert lvio.get() == 1
    time.sleep(0.1)
    assert m.position == 2.0 and m.user_setpoint.get(use_monitor=False) == 2.0
    assert m.motor_done_move.get(use_monitor=False) == 1
    # widening the limit makes the target legal, and the next good move clears LVIO
    m.high_limit_travel.put(105.0, wait=True)
    assert _wait_for(lambda: m.limits == (-100.0, 105.0), 5)
    m.velocity.put(1000.0, wait=True)
    m.set(103.0).wait(timeout=10)
    assert m.position == 103.0 and lvio.get() == 0


def test_a_move_slower_than_its_timeout_is_named_slow_not_a_dead_ioc(sample_z, beamline):
    """``move(wait=True, timeout=...)`` that runs out of time while the IOC answers raises
    OperationTimeout naming the motor and where it is, not IOCNotAnswering (the IOC is up)."""
    from strainstream.devices._ioc import IOCNotAnswering, OperationTimeout
    from strainstream.devices.motors import motor

    named = motor(beamline.prefix, "sample_z", ioc_address=beamline.addresses["endstation"])
    named.wait_for_connection(timeout=10)
    velo = float(named.velocity.get())
    try:
        named.velocity.put(5.0, wait=True)  # 50 um: 10 s
        with pytest.raises(OperationTimeout, match=r"^sample_z: move did not end within its timeout "
                                                   r"\(readback [-0-9.e]+ um\); its IOC answers") as err:
            named.move(50.0, wait=True, timeout=0.3)
        assert not isinstance(err.value, IOCNotAnswering)
    finally:
        named.stop()
        assert _wait_for(lambda: named.motor_done_move.get(use_monitor=False) == 1, 10)
        named.velocity.put(velo, wait=True)
        named.destroy()


def test_zero_length_and_back_to_back_moves_complete(sample_z):
    m = sample_z
    m.set(1.0).wait(timeout=10)
    dmov = _Recorder(m.motor_done_move)
    try:
        for _ in range(10):  # zero-length moves: DMOV still goes 0 then 1
            dmov.clear()
            m.set(m.position).wait(timeout=2)
            assert m.position == 1.0
            assert _wait_for(lambda: dmov.values == [0, 1], 2), dmov.values
        # moves issued right after the previous one ended: 50 nm steps
        for k in range(1, 21):
            target = round(1.0 + 0.05 * k, 6)
            m.set(target).wait(timeout=2)
            assert m.position == pytest.approx(target, abs=1e-9)
    finally:
        dmov.close()


def test_stop_mid_move_stops_at_an_intermediate_position(sample_z):
    m = sample_z
    m.velocity.put(10.0, wait=True)
    st = m.set(90.0)  # 9 s at 10 um/s
    assert _wait_for(lambda: m.position > 1.0, 10)
    m.stop()
    st.wait(timeout=2)  # the move ends (DMOV 0 -> 1) where the stage stopped
    assert m.motor_done_move.get(use_monitor=False) == 1
    pos = m.user_readback.get(use_monitor=False)
    assert m.position == pos
    assert 1.0 < pos < 10.0
    time.sleep(0.2)
    assert m.user_readback.get(use_monitor=False) == pos  # it stays there
    assert m.user_setpoint.get(use_monitor=False) == pos  # VAL := RBV
    assert m.motor_is_moving.get(use_monitor=False) == 0


def test_spmg_stop_pause_go(sample_z):
    from caproto import ErrorResponseReceived
    from caproto.sync.client import write

    m = sample_z
    spmg = _field(m, "SPMG", string=True)
    m.velocity.put(20.0, wait=True)
    # Pause holds the move (DMOV stays 0), Go resumes it to the target
    st = m.set(10.0)
    assert _wait_for(lambda: m.position > 1.0, 5)
    spmg.put("Pause", wait=True)
    time.sleep(0.05)
    held = m.user_readback.get(use_monitor=False)
    time.sleep(0.2)
    assert m.user_readback.get(use_monitor=False) == held < 10.0
    assert m.motor_done_move.get(use_monitor=False) == 0 and not st.done
    spmg.put("Go", wait=True)
    st.wait(timeout=5)
    assert st.success and m.position == 10.0
    # Stop ends the move where it is and refuses moves until Go
    st = m.set(0.0)
    assert _wait_for(lambda: m.position < 9.0, 5)
    spmg.put("Stop", wait=True)
    st.wait(timeout=2)  # the move ends where the stage stopped
    assert m.motor_done_move.get(use_monitor=False) == 1
    stopped = m.user_readback.get(use_monitor=False)
    assert 0.0 < stopped < 9.0
    with pytest.raises(ErrorResponseReceived, match="SPMG is Stop"):
        write(f"{m.prefix}.VAL", 5.0, notify=True, timeout=5, repeater=False)
    assert m.user_readback.get(use_monitor=False) == stopped
    spmg.put("Go", wait=True)
    m.set(5.0).wait(timeout=5)
    assert m.position == 5.0


def test_limit_switches_at_the_hard_limits(sample_z):
    m = sample_z
    msta = _field(m, "MSTA")
    assert m.high_limit_switch.get() == 0 and m.low_limit_switch.get() == 0
    m.high_limit_travel.put(200.0, wait=True)
    m.low_limit_travel.put(-200.0, wait=True)
    assert _wait_for(lambda: m.limits == (-200.0, 200.0), 5)
    m.velocity.put(2000.0, wait=True)
    # the stage ends on the high limit switch at +110 um: EpicsMotor reports the move failed
    st = m.set(150.0)
    with pytest.raises(Exception):  # noqa: B017 - ophyd: the move ended on the limit switch
        st.wait(timeout=5)
    assert not st.success
    assert m.position == 110.0
    assert m.high_limit_switch.get(use_monitor=False) == 1
    assert m.low_limit_switch.get(use_monitor=False) == 0
    assert int(msta.get()) & MSTA_PLUS_LS and not int(msta.get()) & MSTA_MINUS_LS
    assert m.direction_of_travel.get(use_monitor=False) == 1
    assert m.user_setpoint.get(use_monitor=False) == 110.0
    # further out: no motion; back in: the switch clears
    with pytest.raises(Exception):  # noqa: B017
        m.set(120.0).wait(timeout=5)
    assert m.position == 110.0
    m.set(0.0).wait(timeout=5)
    assert m.high_limit_switch.get(use_monitor=False) == 0 and not int(msta.get()) & MSTA_PLUS_LS
    st = m.set(-150.0)
    with pytest.raises(Exception):  # noqa: B017
        st.wait(timeout=5)
    assert m.position == -110.0
    assert m.low_limit_switch.get(use_monitor=False) == 1 and m.high_limit_switch.get(use_monitor=False) == 0
    assert int(msta.get()) & MSTA_MINUS_LS
    assert m.direction_of_travel.get(use_monitor=False) == 0


def test_set_current_position_changes_the_offset_without_moving(sample_z):
    m = sample_z
    m.set(3.0).wait(timeout=10)
    drbv = EpicsSignalRO(f"{m.prefix}.DRBV", name="drbv")
    drbv.wait_for_connection(timeout=5)
    dmov = _Recorder(m.motor_done_move)
    try:
        m.set_current_position(15.5)
        assert _wait_for(lambda: m.position == 15.5, 5)
        time.sleep(0.1)
        assert dmov.values == []  # nothing moved
    finally:
        dmov.close()
    assert m.user_offset.get(use_monitor=False) == 12.5
    assert drbv.get(use_monitor=False) == 3.0  # the dial (the stage) stayed
    assert m.user_setpoint.get(use_monitor=False) == 15.5
    # the user limits moved with the offset (the dial limits stay)
    assert _wait_for(lambda: m.limits == (-87.5, 112.5), 5), m.limits
    assert (m.low_limit_travel.get(), m.high_limit_travel.get()) == (-87.5, 112.5)
    # moves are in user coordinates now
    m.set(20.5).wait(timeout=10)
    assert m.position == 20.5 and drbv.get(use_monitor=False) == pytest.approx(8.0, abs=1e-12)
    # the negative direction flips the user coordinate: user = -dial + OFF
    m.user_offset_dir.put(1, wait=True)
    assert _wait_for(lambda: m.position == pytest.approx(-8.0 + 12.5, abs=1e-12), 5)
    m.user_offset_dir.put(0, wait=True)
    m.set_current_position(8.0)
    assert _wait_for(lambda: m.position == 8.0 and m.limits == (-100.0, 100.0), 5)
    assert m.user_offset.get(use_monitor=False) == 0.0


def test_homing_moves_to_home_and_completes(sample_z):
    m = sample_z
    homf = _field(m, "HOMF")
    msta = _field(m, "MSTA")
    m.set(30.0).wait(timeout=10)
    st = m.home("forward", wait=False)  # 0.6 s at 50 um/s
    assert _wait_for(lambda: homf.get() == 1, 0.5)  # HOMF stays 1 while homing
    assert not st.done
    st.wait(timeout=10)
    assert st.success and m.position == 0.0
    assert int(msta.get()) & MSTA_HOMED
    assert _wait_for(lambda: homf.get() == 0, 2)
    assert m.user_setpoint.get(use_monitor=False) == 0.0
    m.set(-20.0).wait(timeout=10)
    m.home("reverse")  # waits by default
    assert m.position == 0.0


def test_missing_endstation_gives_a_named_error(beamline):
    from strainstream.devices._ioc import IOCNotAnswering
    from strainstream.devices.motors import endstation, motor

    m = motor("XX:", "theta", ioc_address="127.0.0.1:5065")
    assert type(m) is EpicsMotor and m.prefix == "XX:ES:theta"
    with pytest.raises(IOCNotAnswering, match=r"endstation IOC at 127\.0\.0\.1:5065 \(prefix XX:ES:theta\) "
                                              r"not answering: PV XX:ES:theta\.\w+ timed out"):
        m.wait_for_connection(timeout=0.5)
    es = endstation("XX:", ioc_address="127.0.0.1:5065")
    with pytest.raises(IOCNotAnswering, match=r"endstation IOC at 127\.0\.0\.1:5065 \(prefix XX:\) "
                                              r"not answering: PV XX:ES:\w+\.\w+ timed out"):
        es.wait_for_connection(timeout=0.5)
    with pytest.raises(IOCNotAnswering, match=r"\(prefix XX:\) not answering: PV XX:ES:energy\.\w+"):
        es.energy.read()
    with pytest.raises(IOCNotAnswering, match=r"PV XX:ES:energy\.\w+"):
        es.energy.set(8000.0)
