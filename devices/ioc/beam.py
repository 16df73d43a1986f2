"""Beam IOC: storage-ring current and the photon shutter (``<prefix>BEAM:``).

=======================  =====  ==============================================================
``ring_current_mA``      float  readback, updated at 5 Hz: top-up around ``ring_nominal_mA``
                                (0.1 % sawtooth); 0 during a dump, then a 2 s ramp back
``ring_nominal_mA``      float  nominal current (default 400 mA)
``dump``                 int    put 1: the beam dumps for ``dump_duration_s`` (suspender tests)
``dump_duration_s``      float  default 5 s
``shutter``              enum   Close/Open command; the put completes when the shutter has
                                finished moving (``shutter_time_s``, default 0.3 s)
``shutter_status``       enum   Closed / Open / Moving
=======================  =====  ==============================================================

The monochromator energy is a motor of the endstation IOC (the detectors there need it).

Run: ``python -m strainstream.devices.ioc beam --prefix SS: --port 5072``.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from caproto import ChannelType
from caproto.server import PVGroup, SubGroup, pvproperty

from ._common import MONITOR_FLUSH_S, add_common_args, serve

__all__ = ["BeamGroup", "BeamIOC", "build", "main"]


class BeamGroup(PVGroup):
    ring_current_mA = pvproperty(value=400.0, read_only=True, precision=3)
    ring_nominal_mA = pvproperty(value=400.0, precision=1)
    dump = pvproperty(value=0, doc="put 1: beam dump")
    dump_duration_s = pvproperty(value=5.0, precision=2)
    shutter = pvproperty(value="Close", dtype=ChannelType.ENUM, enum_strings=["Close", "Open"])
    shutter_status = pvproperty(value="Closed", dtype=ChannelType.ENUM, read_only=True,
                                enum_strings=["Closed", "Open", "Moving"])
    shutter_time_s = pvproperty(value=0.3, precision=2)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._dump_until = -1.0
        self._ramp_s = 2.0

    @ring_current_mA.scan(period=0.2, use_scan_field=False)
    async def ring_current_mA(self, instance, async_lib):
        now = time.monotonic()
        nominal = float(self.ring_nominal_mA.value)
        if now < self._dump_until:
            value = 0.0
        else:
            ramp = min(1.0, (now - self._dump_until) / self._ramp_s) if self._dump_until > 0 else 1.0
            saw = 1.0 - 0.001 * ((now % 60.0) / 60.0)  # top-up every minute
            value = nominal * saw * ramp
        await instance.write(value)

    @dump.putter
    async def dump(self, instance, value):
        if value:
            self._dump_until = time.monotonic() + float(self.dump_duration_s.value)
            await self.ring_current_mA.write(0.0)
        return 0

    @shutter.putter
    async def shutter(self, instance, value):
        target = "Open" if value in ("Open", 1) else "Closed"
        if self.shutter_status.value != target:
            await self.shutter_status.write("Moving")
            await asyncio.sleep(float(self.shutter_time_s.value))
            await self.shutter_status.write(target)
            await asyncio.sleep(MONITOR_FLUSH_S)
        return value


class BeamIOC(PVGroup):
    beam = SubGroup(BeamGroup, prefix="BEAM:")


def build(prefix: str) -> BeamIOC:
    """Create the IOC (PV names ``<prefix>BEAM:*``)."""
    return BeamIOC(prefix=prefix)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="strainstream-ioc beam", description=__doc__.splitlines()[0])
    add_common_args(ap)
    args = ap.parse_args(argv)
    return serve(build(args.prefix), args.port, "beam", list_pvs=args.list_pvs,
                 exit_with_parent=args.exit_with_parent)


if __name__ == "__main__":
    raise SystemExit(main())
