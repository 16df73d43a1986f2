"""The endstation motors: ophyd's stock ``EpicsMotor`` on the motor records ``<prefix>ES:<motor>``.

Every motor is an ``ophyd.epics_motor.EpicsMotor`` — no subclass — so a profile for a real
beamline uses the very same class on its own motor records. In events a motor appears as
``<motor name>`` (the ``RBV`` readback, hinted) and ``<motor name>_user_setpoint`` (``VAL``);
inside :class:`Endstation` (name ``es``) the motor names are ``es_sample_x``, ``es_theta``, ...

The factories (:func:`motor`, :func:`endstation`) give each instance two strainstream habits
with :func:`named_errors`, without changing its class:

- a target outside the soft limits raises ``ophyd.utils.errors.LimitError`` naming the motor,
  the target, the limits and the units before anything is sent ("det_z: target 5000 mm is
  outside the soft limits [300, 2000] mm (SS:ES:det_z.HLM/.LLM); move refused") — the
  limits are ``EpicsMotor.limits``, i.e. the CA control limits of ``VAL`` that the record
  keeps equal to HLM/LLM; the IOC refuses such puts too (LVIO);
- a timeout or disconnection in ``read``, ``describe``, ``set``/``move``, ``stop``, ``home``,
  ``set_current_position``, ``check_value`` or ``wait_for_connection`` raises
  :class:`~strainstream.devices._ioc.IOCNotAnswering` naming the IOC, its address and the PV;
  a move that outlasts its own timeout (``move(..., timeout=)``) while every PV of the motor is
  connected raises :class:`~strainstream.devices._ioc.OperationTimeout` naming the motor and
  its readback instead (a slow or stuck stage, not a dead IOC);
- a move issued the moment the previous one ended always completes
  (:func:`serialize_move_completion`).
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Any

from ophyd import Component as Cpt
from ophyd import EpicsMotor
from ophyd.status import wait as status_wait
from ophyd.utils.errors import LimitError

from ._ioc import IOCDevice, mock_device, name_ioc_errors

__all__ = ["Endstation", "MOTOR_NAMES", "check_limits", "endstation", "motor", "named_errors",
           "serialize_move_completion"]

MOTOR_NAMES = ("sample_x", "sample_y", "sample_z", "theta", "zp_z", "det_z", "sample_inout",
               "energy")

#: EpicsMotor methods whose IOC timeouts/disconnections become IOCNotAnswering
_GUARDED = ("read", "describe", "read_configuration", "describe_configuration", "set", "move",
            "stop", "home", "set_current_position", "wait_for_connection")


def check_limits(motor: EpicsMotor, target: float) -> None:
    """Raise ``LimitError`` naming motor, target, soft limits and units if ``target`` is outside.

    The limits are ``motor.limits`` (``VAL``'s control limits = HLM/LLM); equal limits (or
    none, on a mock device) disable the check.
    """
    limits = motor.limits
    if limits is None:
        return
    low, high = (float(v) for v in limits)
    target = float(target)
    if low < high and not (low <= target <= high):  # also refuses NaN
        egu = motor.egu
        what = f"{target:g} {egu}" if math.isfinite(target) else f"{target}"
        raise LimitError(
            f"{motor.name}: target {what} is outside the soft limits [{low:g}, {high:g}] {egu} "
            f"({motor.prefix}.HLM/.LLM); move refused")


def serialize_move_completion(motor: EpicsMotor) -> EpicsMotor:
    """Make the end of one move and the start of the next exclusive on this instance.

    ophyd's ``EpicsMotor`` (1.11) ends a move on its CA monitor thread in
    ``_done_moving``: it finishes the move's status, *then* clears the done-subscriptions.
    Finishing the status wakes the plan, and the plan's next ``set`` on the same motor
    subscribes its new status in ``PositionerBase.move``. When the monitor thread is
    pre-empted between the two steps (a loaded machine; seen in CI with ``sample_inout``),
    the late clear drops the new status's subscription: that move never completes and the
    plan hangs with the motor at its target. ophyd logs "Subscription _req_done callback
    exception ... has already been called on MoveStatus" when the window is hit.

    Here ``_done_moving`` and the subscribing part of ``move``/``home`` hold one re-entrant
    lock per motor; a move with ``wait=True`` waits outside the lock (the move's own end
    needs it). The class is unchanged; only this instance's methods are wrapped. Returns
    ``motor``.
    """
    lock = threading.RLock()
    done_moving = motor._done_moving

    @functools.wraps(done_moving)
    def locked_done_moving(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return done_moving(*args, **kwargs)

    def locked_start(start):
        @functools.wraps(start)
        def call(target: Any, wait: bool = True, **kwargs: Any) -> Any:
            with lock:
                status = start(target, wait=False, **kwargs)
            if wait:
                try:
                    status_wait(status)
                except KeyboardInterrupt:
                    motor.stop()
                    raise
            return status
        return call

    motor._done_moving = locked_done_moving
    motor.move = locked_start(motor.move)
    motor.home = locked_start(motor.home)
    return motor


def named_errors(motor: EpicsMotor, *, ioc_name: str = "endstation", ioc_address: str | None = None,
                 ioc_prefix: str | None = None) -> EpicsMotor:
    """Give a stock ``EpicsMotor`` instance the named errors of this package (class unchanged).

    ``check_value`` (called by every move) becomes :func:`check_limits`; IOC timeouts and
    disconnections in the methods listed in the module docstring become
    :class:`IOCNotAnswering` ("endstation IOC at 127.0.0.1:5065 (prefix SS:) not answering:
    PV SS:ES:theta.RBV timed out"); :func:`serialize_move_completion` closes ophyd's
    end-of-move race. Returns ``motor``.

    Parameters
    ----------
    ioc_name, ioc_address : str
        The IOC serving the record, for messages.
    ioc_prefix : str, optional
        The prefix named in messages (default the motor's own prefix).
    """
    motor.check_value = functools.partial(check_limits, motor)
    serialize_move_completion(motor)
    name_ioc_errors(motor, (*_GUARDED, "check_value"), ioc_name=ioc_name,
                    ioc_address=ioc_address, prefix=ioc_prefix)
    motor.ioc_name, motor.ioc_address = ioc_name, ioc_address
    return motor


class Endstation(IOCDevice):
    """All endstation motors (stock ``EpicsMotor`` records ``<prefix>ES:<motor>``)."""

    ioc_default_name = "endstation"

    sample_x = Cpt(EpicsMotor, "ES:sample_x")
    sample_y = Cpt(EpicsMotor, "ES:sample_y")
    sample_z = Cpt(EpicsMotor, "ES:sample_z")
    theta = Cpt(EpicsMotor, "ES:theta")
    zp_z = Cpt(EpicsMotor, "ES:zp_z")
    det_z = Cpt(EpicsMotor, "ES:det_z")
    sample_inout = Cpt(EpicsMotor, "ES:sample_inout")
    energy = Cpt(EpicsMotor, "ES:energy")

    def __init__(self, prefix: str = "", *, name: str, ioc_name=None, ioc_address=None,
                 **kwargs: Any) -> None:
        super().__init__(prefix, name=name, ioc_name=ioc_name, ioc_address=ioc_address, **kwargs)
        for cpt in self.component_names:
            named_errors(getattr(self, cpt), ioc_name=self.ioc_name, ioc_address=self.ioc_address,
                         ioc_prefix=self.prefix)


def motor(prefix: str, motor_name: str, *, name: str | None = None,
          ioc_address: str | None = None, mock: bool = False) -> EpicsMotor:
    """Factory: one endstation motor, e.g. ``motor("SS:", "sample_x")`` (no connection made).

    Parameters
    ----------
    prefix : str
        Beamline PV prefix (``SS:``); the record is ``<prefix>ES:<motor_name>``.
    motor_name : str
        One of :data:`MOTOR_NAMES`.
    name : str, optional
        ophyd name (default ``motor_name``).
    ioc_address : str, optional
        ``host:port`` of the endstation IOC, for error messages.
    mock : bool
        A fake (no CA) ``EpicsMotor`` for unit tests.
    """
    if motor_name not in MOTOR_NAMES:
        raise ValueError(f"unknown motor {motor_name!r}; choose one of {list(MOTOR_NAMES)}")
    record = f"{prefix}ES:{motor_name}"
    if mock:
        m = mock_device(EpicsMotor, record, name=name or motor_name)
    else:
        m = EpicsMotor(record, name=name or motor_name)
    return named_errors(m, ioc_name="endstation", ioc_address=ioc_address)


def endstation(prefix: str = "SS:", *, name: str = "es", ioc_address: str | None = None,
               mock: bool = False) -> Endstation:
    """Factory: all endstation motors (``es.sample_x``, ..., ``es.energy``); no connection made."""
    kw = dict(name=name, ioc_name="endstation", ioc_address=ioc_address)
    if mock:
        return mock_device(Endstation, prefix, **kw)
    return Endstation(prefix, **kw)
