"""The EPICS motor record as the simulated IOCs serve it (:func:`motor_group`)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

from caproto.server import PVGroup, pvproperty

from strainstream.errors import StrainstreamError

from ._common import MONITOR_FLUSH_S

__all__ = ["MotorError", "motor_group"]


class MotorError(StrainstreamError, ValueError):
    """A refused motor move (outside the soft limits)."""


def motor_group(name: str, egu: str, value: float, llm: float, hlm: float, velo: float,
                doc: str = "", on_move: Callable[[Any, float], None] | None = None) -> type[PVGroup]:
    """A ``PVGroup`` class emulating the used subset of an EPICS motor record.

    Parameters
    ----------
    name : str
        Motor name (used in error messages).
    egu : str
        Engineering units.
    value : float
        Initial position.
    llm, hlm : float
        Soft limits (a put to VAL outside them is refused; ``llm == hlm`` disables them).
    velo : float
        Speed (egu/s).
    on_move : callable, optional
        ``on_move(group, position)`` called after every readback update.
    """

    class Motor(PVGroup):
        VAL = pvproperty(value=float(value), precision=5, doc=f"{doc} set-point ({egu})")
        RBV = pvproperty(value=float(value), precision=5, read_only=True, doc=f"readback ({egu})")
        DMOV = pvproperty(value=1, read_only=True, doc="1 when not moving (done moving)")
        MOVN = pvproperty(value=0, read_only=True, doc="1 while moving")
        VELO = pvproperty(value=float(velo), precision=4, doc=f"speed ({egu}/s)")
        HLM = pvproperty(value=float(hlm), precision=5, doc=f"high soft limit ({egu})")
        LLM = pvproperty(value=float(llm), precision=5, doc=f"low soft limit ({egu})")
        STOP = pvproperty(value=0, doc="put 1 to stop the move")
        EGU = pvproperty(value=egu, dtype=str, read_only=True)
        DESC = pvproperty(value=(doc or name)[:39], dtype=str, read_only=True)

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._move_id = 0
            self.motor_name = name
            self.position = float(value)

        @VAL.putter
        async def VAL(self, instance, target):
            target = float(target)
            lo, hi = float(self.LLM.value), float(self.HLM.value)
            if not math.isfinite(target):
                raise MotorError(f"motor {name} ({self.prefix}VAL): target {target} is not finite")
            if lo < hi and not (lo <= target <= hi):
                raise MotorError(
                    f"motor {name} ({self.prefix}VAL): target {target:g} {egu} is outside the soft "
                    f"limits [{lo:g}, {hi:g}] {egu}; move refused")
            self._move_id += 1
            my_id = self._move_id
            await self.DMOV.write(0)
            await self.MOVN.write(1)
            dt = 0.01
            pos = float(self.RBV.value)
            try:
                while pos != target:
                    if self._move_id != my_id:  # superseded by a newer move or a STOP
                        return pos
                    step = max(float(self.VELO.value), 1e-12) * dt
                    pos = target if abs(target - pos) <= step else pos + math.copysign(step, target - pos)
                    self.position = pos
                    await self.RBV.write(pos)
                    if on_move is not None:
                        on_move(self, pos)
                    if pos != target:
                        await asyncio.sleep(dt)
            finally:
                if self._move_id == my_id:
                    await self.MOVN.write(0)
                    await self.DMOV.write(1)
                    # let the subscription loop (batching ~10 ms) send the last readback
                    # before the put-completion reply, so clients never see a stale RBV
                    await asyncio.sleep(MONITOR_FLUSH_S)
            return target

        @STOP.putter
        async def STOP(self, instance, value):
            if value:
                self._move_id += 1
                await self.MOVN.write(0)
                await self.DMOV.write(1)
                await self.VAL.write(float(self.RBV.value), verify_value=False)
            return 0

    Motor.__name__ = f"Motor_{name}"
    return Motor
