"""The EPICS motor record as the simulated IOCs serve it (:func:`motor_group`).

Each motor is one caproto record of type ``motor`` (``pvproperty(record="motor")``): the
record ``<prefix>ES:<motor>`` (the same channel as ``.VAL``) and all fields of
``caproto.server.records.MotorFields`` with the motor record's types (enums ``DIR``,
``SET``, ``FOFF``, ``SPMG``, ``CNEN``; string ``EGU``, ``DESC``; ...), so ophyd's stock
``EpicsMotor`` (or any motor-record client) talks to it as to a real motor record. What is
simulated:

======================  =====================================================================
fields                  behaviour
======================  =====================================================================
VAL, DVAL, RLV,         a move (user value, dial value, relative, tweak by TWV); VAL shows the
TWF, TWR                target at once and the put completes when the motion has ended
RBV, DRBV               user and dial readback, updated every 10 ms while moving at VELO (egu/s);
                        the position is exact in time (start + VELO · elapsed, no acceleration:
                        ACCL is served, not simulated), whatever the tick's jitter
DMOV, MOVN              DMOV goes 0 then 1 for every move, a zero-length one too; it stays 0
                        for at least ``MONITOR_FLUSH_S`` (and one 10 ms tick) so that clients
                        monitoring it always see the 0 (caproto batches monitor updates up to
                        10 ms); the last readback is published before DMOV returns to 1
HLM/LLM, DHLM/DLLM      soft limits, user and dial (user = dial ± OFF, swapped when DIR=Neg);
                        equal limits disable them; VAL's CA control limits follow HLM/LLM
                        (EpicsMotor's ``limits``). A target outside: LVIO=1, nothing moves,
                        the put fails with :class:`MotorError` naming motor, target, limits
HLS/LLS, MSTA, TDIR     hard limit switches (user sense) where the travel ends, a margin of
                        5 % of the soft range beyond the initial soft limits (reach them by
                        widening HLM/LLM); MSTA bits: direction, done, plus/minus limit,
                        moving, homed; TDIR the direction of travel (1 = positive dial)
STOP, SPMG              STOP stops at the current position (VAL := RBV). SPMG: Stop stops and
                        refuses moves until Go or Move; Pause holds the motion (DMOV stays 0)
                        until Go; Move makes one move, then SPMG becomes Pause
SET, FOFF, OFF, DIR     calibration: with SET=Set a put to VAL moves nothing and changes OFF
                        (FOFF=Variable) or redefines the dial position (Frozen); OFF and DIR
                        puts recompute the user values (``EpicsMotor.set_current_position``)
HOMF, HOMR              move to the home position (ignoring soft limits), set MSTA "homed";
                        the put completes at the end
VELO, HVEL              speed, home speed (egu/s; > 0); ACCL is served, not simulated
EGU, DESC, CNEN, PREC   served
======================  =====================================================================

The simulated physics (the detectors' forward models) reads :attr:`position` of the group:
the *physical* position, in the coordinates of the initial user values (dial = user = physical
at start). A calibration (SET, OFF, DIR) changes what the record reports, not where the stage
is. :meth:`next_motion` and :class:`Motion` give the exact physical position at any moment of
a motion: what a motion controller's position-compare or trajectory output knows (the
simulated endstation wires it to its detectors' external trigger input, see
:mod:`strainstream.devices.ioc.endstation`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

from caproto import AlarmSeverity, AlarmStatus, SkipWrite
from caproto.server import PVGroup, pvproperty
from caproto.server.server import PvpropertyDouble

from strainstream.errors import StrainstreamError

from ._common import MONITOR_FLUSH_S

__all__ = ["MSTA_DIRECTION", "MSTA_DONE", "MSTA_HOMED", "MSTA_MINUS_LS", "MSTA_MOVING",
           "MSTA_PLUS_LS", "Motion", "MotorError", "motor_group"]

#: motion update period, s
TICK_S = 0.01
#: DMOV stays 0 at least this long (s), so that monitoring clients see every move
DMOV_MIN_LOW_S = max(MONITOR_FLUSH_S, TICK_S)
#: hard limit switches sit this fraction of the soft range beyond the initial soft limits
HARD_LIMIT_MARGIN = 0.05

# MSTA bits (motor record "motor status", raw/dial sense)
MSTA_DIRECTION = 1 << 0  # last raw direction positive
MSTA_DONE = 1 << 1
MSTA_PLUS_LS = 1 << 2
MSTA_MOVING = 1 << 10
MSTA_MINUS_LS = 1 << 13
MSTA_HOMED = 1 << 14


class MotorError(StrainstreamError, ValueError):
    """A refused motor-record put (outside the soft limits, SPMG=Stop, bad speed, not finite)."""


class Motion:
    """The physical trajectory of one motion of a simulated motor (monotonic clock, s).

    Segments ``(t0, p0, velocity, p_end)``: from ``t0`` the stage is at ``p0 + velocity · (t -
    t0)`` until it reaches ``p_end`` (a re-aim, a speed change or a pause starts a new segment;
    the motion's end adds a resting one). :meth:`position` evaluates it at any time, also after
    the motion ended (a detector computing its frames late still gets where the stage was).
    """

    def __init__(self, t0: float, p0: float) -> None:
        self.start_time = float(t0)
        self.segments: list[tuple[float, float, float, float]] = [(float(t0), float(p0), 0.0, float(p0))]

    def add(self, t0: float, p0: float, velocity: float, p_end: float) -> None:
        self.segments.append((float(t0), float(p0), float(velocity), float(p_end)))

    def position(self, t: float) -> float:
        """Physical position at monotonic time ``t``."""
        seg = self.segments[0]
        for s in self.segments:
            if s[0] <= t:
                seg = s
            else:
                break
        t0, p0, v, p_end = seg
        if v == 0.0 or t <= t0:
            return p0
        p = p0 + v * (t - t0)
        return min(p, p_end) if v > 0 else max(p, p_end)


def _enum(channel) -> str:
    """An enum field's value as its string (caproto may hold the index before a first write)."""
    v = channel.value
    return channel.enum_strings[v] if isinstance(v, int) else str(v)


def _run_now(coro) -> None:
    """Run ``coro`` to completion synchronously; it must never suspend (caproto writes with
    no subscriber yet do not), so no event loop is needed (used while building the IOC)."""
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise RuntimeError("motor record initialisation suspended")


class _RecordValue(PvpropertyDouble):
    """``VAL`` of the simulated motor record.

    The record checks its soft limits itself (LVIO, a named error, no check in SET mode);
    caproto's generic control-limit check would refuse calibrations and name neither the
    motor nor the units, so the putter is called directly.
    """

    async def verify_value(self, value):
        return await self.putter(self, value)


def _field_putter(method: str):
    """A field putter (bound to caproto's field group) calling ``<motor group>.<method>``."""

    async def putter(fields, instance, value):
        return await getattr(fields.parent.group, method)(instance, value)

    putter.__name__ = method
    return putter


def motor_group(name: str, egu: str, value: float, llm: float, hlm: float, velo: float,
                doc: str = "", on_move: Callable[[Any, float], None] | None = None, *,
                home: float | None = None, precision: int = 5) -> type[PVGroup]:
    """A ``PVGroup`` class serving one simulated EPICS motor record.

    Use it as ``SubGroup(motor_group(...), prefix="ES:sample_x")``: the record is then
    ``<ioc prefix>ES:sample_x`` with fields ``.VAL``, ``.RBV``, ``.DMOV``, ...

    Parameters
    ----------
    name : str
        Motor name (used in error messages).
    egu : str
        Engineering units.
    value : float
        Initial position (user = dial = physical).
    llm, hlm : float
        Initial soft limits (``llm == hlm`` disables them). The hard limit switches sit
        ``HARD_LIMIT_MARGIN`` of ``hlm - llm`` beyond them (none when disabled).
    velo : float
        Speed (egu/s).
    doc : str
        Description (``DESC``).
    on_move : callable, optional
        ``on_move(group, position)`` called after every readback update (physical position).
    home : float, optional
        Home position (physical); default 0 if within the soft limits, else the nearer limit.
    precision : int
        Display precision (``PREC``) of the positions.
    """
    llm, hlm, value = float(llm), float(hlm), float(value)
    margin = HARD_LIMIT_MARGIN * (hlm - llm) if hlm > llm else math.inf
    hard_lo, hard_hi = llm - margin, hlm + margin
    if home is None:
        home = min(max(0.0, llm), hlm) if hlm > llm else 0.0
    desc = (doc or name)[:40]

    class Motor(PVGroup):
        rec = pvproperty(value=value, name="", record="motor", dtype=_RecordValue,
                         precision=precision, units=egu, upper_ctrl_limit=hlm,
                         lower_ctrl_limit=llm, upper_disp_limit=hlm, lower_disp_limit=llm,
                         doc=f"{desc} ({egu})")
        rec.fields.stop.putter(_field_putter("_put_stop"))
        rec.fields.stop_pause_move_go.putter(_field_putter("_put_spmg"))
        rec.fields.home_forward.putter(_field_putter("_put_home"))
        rec.fields.home_reverse.putter(_field_putter("_put_home"))
        rec.fields.user_high_limit.putter(_field_putter("_put_user_limit"))
        rec.fields.user_low_limit.putter(_field_putter("_put_user_limit"))
        rec.fields.dial_high_limit.putter(_field_putter("_put_dial_limit"))
        rec.fields.dial_low_limit.putter(_field_putter("_put_dial_limit"))
        rec.fields.user_offset.putter(_field_putter("_put_calibration"))
        rec.fields.user_direction.putter(_field_putter("_put_calibration"))
        rec.fields.velocity.putter(_field_putter("_put_speed"))
        rec.fields.home_velocity.putter(_field_putter("_put_speed"))
        rec.fields.dial_desired_value.putter(_field_putter("_put_dval"))
        rec.fields.relative_value.putter(_field_putter("_put_relative"))
        rec.fields.tweak_motor_forward.putter(_field_putter("_put_tweak"))
        rec.fields.tweak_motor_reverse.putter(_field_putter("_put_tweak"))

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.motor_name = name
            #: physical position (coordinates of the initial user values)
            self.position = value
            self.fields = self.rec.field_inst
            self._dial = value  # dial readback
            self._phys_minus_dial = 0.0  # changes only with a frozen-offset calibration
            self._target = value  # dial target of the motion in progress
            self._target_user: float | None = None  # its user value, when it came from VAL
            self._task: asyncio.Task | None = None
            self._done: asyncio.Event | None = None
            self._dmov_low_since = 0.0
            self._homing = False
            self._msta_flags = MSTA_DONE
            self._homed = False
            self._motion: Motion | None = None
            self._motion_waiters: list[asyncio.Future] = []
            _run_now(self._initialise())

        async def _initialise(self):
            f = self.fields
            for ch, v in ((f.engineering_units, egu), (f.description, desc),
                          (f.user_direction, "Pos"), (f.offset_freeze_switch, "Variable"),
                          (f.set_use_switch, "Use"), (f.stop_pause_move_go, "Go"),
                          (f.enable_control, "Enable"), (f.dial_high_limit, hlm),
                          (f.dial_low_limit, llm), (f.user_high_limit, hlm),
                          (f.user_low_limit, llm), (f.user_offset, 0.0), (f.velocity, float(velo)),
                          (f.home_velocity, float(velo)), (f.tweak_step_size, 1.0),
                          (f.motor_step_size, 10.0 ** -precision),
                          (f.user_readback_value, value), (f.dial_readback_value, value),
                          (f.dial_desired_value, value), (f.done_moving_to_value, 1),
                          (f.motor_is_moving, 0), (f.limit_violation, 0), (f.motor_status, MSTA_DONE),
                          (f.direction_of_travel, 0), (f.user_high_limit_switch, 0),
                          (f.user_low_limit_switch, 0), (f.at_home, 0)):
                await ch.write(v, verify_value=False)
            for ch in (f.user_readback_value, f.dial_readback_value, f.dial_desired_value,
                       f.user_high_limit, f.user_low_limit, f.dial_high_limit, f.dial_low_limit,
                       f.user_offset, f.relative_value, f.tweak_step_size, f.velocity,
                       f.home_velocity, f.seconds_to_velocity):
                await ch.write_metadata(precision=precision, units=egu if ch is not f.seconds_to_velocity else "s")

        # ------------------------------------------------------------ coordinates
        @property
        def _sign(self) -> float:
            return -1.0 if _enum(self.fields.user_direction) == "Neg" else 1.0

        def _user_of(self, dial: float) -> float:
            return self._sign * dial + float(self.fields.user_offset.value)

        def _dial_of(self, user: float) -> float:
            return (user - float(self.fields.user_offset.value)) * self._sign

        def _user_limits(self) -> tuple[float, float]:
            f = self.fields
            a, b = self._user_of(float(f.dial_low_limit.value)), self._user_of(float(f.dial_high_limit.value))
            return min(a, b), max(a, b)

        def _where(self, field: str = "VAL") -> str:
            return f"motor {name} ({self.prefix}.{field})"

        async def _publish_limits(self):
            """HLM/LLM from DHLM/DLLM, OFF, DIR; VAL's control limits first (EpicsMotor
            re-reads them when it sees HLM/LLM change).

            VAL's new limits are not published: caproto does not filter monitors by their
            mask, so the DBE_PROPERTY event would reach pyepics' DBE_VALUE|DBE_ALARM
            subscription (which a real IOC never sends it) as a value update carrying
            pyepics' cached old limits; ophyd's monitor thread could handle it after
            EpicsMotor's re-read and put the old limits back (seen in CI: ``limits`` stayed
            at the old HLM)."""
            lo, hi = self._user_limits()
            await self.rec.write_metadata(upper_ctrl_limit=hi, lower_ctrl_limit=lo,
                                          upper_disp_limit=hi, lower_disp_limit=lo,
                                          publish=False)
            await self.fields.user_high_limit.write(hi, verify_value=False)
            await self.fields.user_low_limit.write(lo, verify_value=False)

        async def _publish_user_values(self, val: float | None = None, rbv: float | None = None):
            """Recompute the user-coordinate values after a calibration change. VAL and RBV
            go first: EpicsMotor re-reads VAL's control limits when it sees HLM/LLM change,
            and a VAL monitor update handled after that would bring back pyepics' cached
            (old) limits."""
            f = self.fields
            if val is None:
                val = self._user_of(float(f.dial_desired_value.value))
            await self.rec.write(val, verify_value=False)
            await f.user_readback_value.write(self._user_of(self._dial) if rbv is None else rbv,
                                              verify_value=False)
            await self._publish_limits()
            await self._publish_switches()

        # ----------------------------------------------------------------- status
        async def _publish_msta(self, moving: bool | None = None, direction: int | None = None):
            f = self.fields
            flags = self._msta_flags
            if moving is not None:
                flags = (flags | MSTA_MOVING) & ~MSTA_DONE if moving else (flags | MSTA_DONE) & ~MSTA_MOVING
            if direction is not None:
                flags = flags | MSTA_DIRECTION if direction > 0 else flags & ~MSTA_DIRECTION
            plus, minus = self.position >= hard_hi, self.position <= hard_lo
            flags = flags | MSTA_PLUS_LS if plus else flags & ~MSTA_PLUS_LS
            flags = flags | MSTA_MINUS_LS if minus else flags & ~MSTA_MINUS_LS
            flags = flags | MSTA_HOMED if self._homed else flags & ~MSTA_HOMED
            if flags != self._msta_flags or int(f.motor_status.value) != flags:
                self._msta_flags = flags
                await f.motor_status.write(flags, verify_value=False)

        async def _publish_switches(self):
            """HLS/LLS (user sense) and the MSTA limit bits from the physical position."""
            f = self.fields
            plus, minus = int(self.position >= hard_hi), int(self.position <= hard_lo)
            hls, lls = (plus, minus) if self._sign > 0 else (minus, plus)
            if int(f.user_high_limit_switch.value) != hls:
                await f.user_high_limit_switch.write(hls, verify_value=False)
            if int(f.user_low_limit_switch.value) != lls:
                await f.user_low_limit_switch.write(lls, verify_value=False)
            await self._publish_msta()

        async def _set_dial(self, dial: float, exact_user: float | None = None):
            """Move the stage's readback to ``dial`` (publishes DRBV, RBV, switches)."""
            f = self.fields
            self._dial = dial
            self.position = dial + self._phys_minus_dial
            await f.dial_readback_value.write(dial, verify_value=False)
            user = exact_user if exact_user is not None else self._user_of(dial)
            await f.user_readback_value.write(user, verify_value=False)
            await self._publish_switches()
            if on_move is not None:
                on_move(self, self.position)

        # ----------------------------------------------------------------- motion
        def next_motion(self) -> asyncio.Future:
            """A future set to the :class:`Motion` of the next motion that starts (the
            trigger a motion controller emits when the stage starts moving)."""
            fut = asyncio.get_running_loop().create_future()
            self._motion_waiters.append(fut)
            return fut

        def _motion_started(self, motion: Motion) -> None:
            self._motion = motion
            waiters, self._motion_waiters = self._motion_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(motion)

        def _start(self, dial_target: float, target_user: float | None = None,
                   homing: bool = False) -> asyncio.Event:
            """Aim the motion at ``dial_target``; start it if idle. Returns the event set
            when the motion (possibly re-aimed later) has ended."""
            self._target, self._target_user, self._homing = dial_target, target_user, homing
            if self._task is None:
                self._done = asyncio.Event()
                self._task = asyncio.get_running_loop().create_task(self._run(self._done))
            return self._done

        async def _run(self, done: asyncio.Event):
            f = self.fields
            self._dmov_low_since = time.monotonic()
            await f.done_moving_to_value.write(0, verify_value=False)
            await self._publish_msta(moving=True)
            try:
                while True:
                    await self._travel()
                    hold = self._dmov_low_since + DMOV_MIN_LOW_S - time.monotonic()
                    if hold > 0:
                        await asyncio.sleep(hold)
                    if self._target != self._dial:
                        continue  # re-aimed while DMOV was held low
                    await f.motor_is_moving.write(0, verify_value=False)
                    if self._homing:
                        self._homed = True
                        await f.at_home.write(1, verify_value=False)
                    if self._homing or self._target_user is None:  # homed, stopped, at a limit
                        await self.rec.write(float(f.user_readback_value.value), verify_value=False)
                        await f.dial_desired_value.write(self._dial, verify_value=False)
                    await self._publish_msta(moving=False)
                    if self._target == self._dial:  # not re-aimed during these updates
                        break
                    await self._publish_msta(moving=True)
            finally:
                # no await between here and DMOV=1: a put from now on starts a new motion
                self._task = None
                self._homing = False
                await f.done_moving_to_value.write(1, verify_value=False)
                if self._msta_flags & MSTA_MOVING:  # left by an error
                    await self._publish_msta(moving=False)
                if _enum(f.stop_pause_move_go) == "Move":
                    await f.stop_pause_move_go.write("Pause", verify_value=False)
                # the put completes after the last monitor updates went out
                await asyncio.sleep(MONITOR_FLUSH_S)
                done.set()

        async def _travel(self):
            """Step toward ``self._target`` every TICK_S until there (or stopped, or at a
            limit switch); holds while SPMG is Pause."""
            f = self.fields
            moving = False
            anchor = None  # (t0, dial0, direction, speed, target): the stage is exact in time
            motion = None
            try:
                while self._dial != self._target:
                    if _enum(f.stop_pause_move_go) == "Pause":
                        if moving:
                            moving = False
                            await f.motor_is_moving.write(0, verify_value=False)
                        if anchor is not None and motion is not None:  # held where it is
                            motion.add(time.monotonic(), self.position, 0.0, self.position)
                        anchor = None
                        await asyncio.sleep(TICK_S)
                        continue
                    direction = 1 if self._target > self._dial else -1
                    if (direction > 0 and self.position >= hard_hi) or (direction < 0 and self.position <= hard_lo):
                        self._target, self._target_user = self._dial, None  # on the switch: no motion
                        break
                    if not moving:
                        moving = True
                        await f.motor_is_moving.write(1, verify_value=False)
                    if int(f.direction_of_travel.value) != int(direction > 0):
                        await f.direction_of_travel.write(int(direction > 0), verify_value=False)
                        await self._publish_msta(direction=direction)
                    speed = float((f.home_velocity if self._homing else f.velocity).value)
                    # the stage ends at the hard limit switch
                    lo, hi = hard_lo - self._phys_minus_dial, hard_hi - self._phys_minus_dial
                    end = min(max(self._target, lo), hi)
                    now = time.monotonic()
                    if anchor is None or anchor[2:] != (direction, speed, end):
                        anchor = (now, self._dial, direction, speed, end)
                        if motion is None:
                            motion = Motion(now, self.position)
                            self._motion_started(motion)
                        motion.add(now, self.position, direction * speed,
                                   end + self._phys_minus_dial)
                    t0, d0 = anchor[0], anchor[1]
                    new = d0 + direction * speed * (now - t0)
                    if (new - end) * direction >= 0:
                        new = end
                    if end != self._target and new == end:
                        self._target, self._target_user = end, None
                    arrived = new == self._target
                    await self._set_dial(new, self._target_user if arrived else None)
                    if not arrived:  # the next tick, or the arrival if it comes sooner
                        left_s = abs(end - new) / speed if speed > 0 else TICK_S
                        await asyncio.sleep(min(TICK_S, max(left_s, 1e-4)))
            finally:
                if motion is not None:  # at rest from now on (stopped, arrived, at a switch)
                    motion.add(time.monotonic(), self.position, 0.0, self.position)

        async def _stop(self):
            """Stop where the stage is now (not where the last tick left the readback: a
            detector exposing meanwhile saw it move on); the motion (if any) ends at its next
            tick."""
            f = self.fields
            motion = self._motion if self._task is not None else None
            if motion is not None:
                now = time.monotonic()
                here = motion.position(now)
                motion.add(now, here, 0.0, here)  # at rest from the stop on
                await self._set_dial(here - self._phys_minus_dial)
            self._target, self._target_user, self._homing = self._dial, None, False
            await self.rec.write(float(f.user_readback_value.value), verify_value=False)
            await f.dial_desired_value.write(self._dial, verify_value=False)

        async def _move_user(self, target: float) -> None:
            """A move to user value ``target`` (limits checked); returns when it has ended."""
            f = self.fields
            if not math.isfinite(target):
                raise MotorError(f"{self._where()}: target {target} is not a finite number")
            if _enum(f.stop_pause_move_go) == "Stop":
                raise MotorError(f"{self._where()}: SPMG is Stop, the motor does not move; "
                                 f"put Go (or Move) to {self.prefix}.SPMG first")
            lo, hi = self._user_limits()
            if lo != hi and not lo <= target <= hi:
                await f.limit_violation.write(1, verify_value=False)
                raise MotorError(f"{self._where()}: target {target:g} {egu} is outside the soft "
                                 f"limits [{lo:g}, {hi:g}] {egu}; move refused (LVIO=1)")
            if int(f.limit_violation.value):
                await f.limit_violation.write(0, verify_value=False)
            if self.rec.alarm.severity != AlarmSeverity.NO_ALARM:  # left by a refused put
                await self.rec.alarm.write(status=AlarmStatus.NO_ALARM, severity=AlarmSeverity.NO_ALARM)
            dial = self._dial_of(target)
            await self.rec.write(target, verify_value=False)  # VAL shows the target at once
            await f.dial_desired_value.write(dial, verify_value=False)
            await self._start(dial, target_user=target).wait()

        # ------------------------------------------------------------------ puts
        @rec.putter
        async def rec(self, instance, value):
            target = float(value)
            if _enum(self.fields.set_use_switch) == "Set":
                await self._calibrate(target)
            else:
                await self._move_user(target)
            return SkipWrite  # VAL was written above

        async def _calibrate(self, target: float):
            """SET mode: the current position becomes user value ``target``; nothing moves."""
            f = self.fields
            if not math.isfinite(target):
                raise MotorError(f"{self._where()}: calibration value {target} is not finite")
            if _enum(f.offset_freeze_switch) == "Frozen":  # redefine the dial position
                new_dial = self._dial_of(target)
                self._phys_minus_dial += self._dial - new_dial
                self._dial = self._target = new_dial
                await f.dial_readback_value.write(new_dial, verify_value=False)
                await f.dial_desired_value.write(new_dial, verify_value=False)
            else:
                off = target - self._sign * self._dial
                await f.user_offset.write(off, verify_value=False)
                await f.dial_desired_value.write(self._dial, verify_value=False)
            await self._publish_user_values(val=target, rbv=target)

        async def _put_stop(self, instance, value):
            if int(value):
                await self._stop()
            return 0

        async def _put_spmg(self, instance, value):
            if value in ("Stop", 0):
                await self._stop()
            return value

        async def _put_home(self, instance, value):
            if not int(value):
                return 0
            f = self.fields
            if _enum(f.stop_pause_move_go) == "Stop":
                raise MotorError(f"{self._where('HOMF')}: SPMG is Stop, the motor does not move")
            await instance.write(1, verify_value=False)
            try:
                await self._start(home - self._phys_minus_dial, homing=True).wait()
            finally:
                await instance.write(0, verify_value=False)
            return SkipWrite

        async def _put_user_limit(self, instance, value):
            f, v = self.fields, float(value)
            high = instance is f.user_high_limit
            off = float(f.user_offset.value)
            if self._sign > 0:
                await (f.dial_high_limit if high else f.dial_low_limit).write(v - off, verify_value=False)
            else:
                await (f.dial_low_limit if high else f.dial_high_limit).write(off - v, verify_value=False)
            await self._publish_limits()
            return SkipWrite

        async def _put_dial_limit(self, instance, value):
            await instance.write(float(value), verify_value=False)
            await self._publish_limits()
            return SkipWrite

        async def _put_calibration(self, instance, value):
            await instance.write(value, verify_value=False)
            await self._publish_user_values()
            return SkipWrite

        async def _put_speed(self, instance, value):
            v = float(value)
            if not (math.isfinite(v) and v > 0):
                raise MotorError(f"{self._where('VELO')}: speed must be > 0 {egu}/s, got {v}")
            return v

        async def _put_dval(self, instance, value):
            if _enum(self.fields.set_use_switch) == "Set":
                await self._calibrate(self._user_of(float(value)))
            else:
                await self._move_user(self._user_of(float(value)))
            return SkipWrite

        async def _put_relative(self, instance, value):
            await self._move_user(float(self.rec.value) + float(value))
            return 0

        async def _put_tweak(self, instance, value):
            if int(value):
                step = float(self.fields.tweak_step_size.value)
                sign = 1.0 if instance is self.fields.tweak_motor_forward else -1.0
                await self._move_user(float(self.rec.value) + sign * step)
            return 0

    Motor.__name__ = f"Motor_{name}"
    return Motor
