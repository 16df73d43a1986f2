"""Cycler/potentiostat IOC with the operando XRD area detector in the same process.

PVs (``<prefix>CYC:``):

======================  =====  ==================================================================
``mode``                enum   CC / CV / REST, applied by ``start``
``current_sp_mA_g``     float  CC current (mA/g, + = charge); CV current compliance (|I|)
``voltage_sp_V``        float  CV hold voltage (V)
``v_max_V, v_min_V``    float  CC stops at v_max on charge / v_min on discharge (then rest or CV)
``then_cv``             int    1: hold the limit voltage (CV) after a CC limit, 0: rest
``step_time_s``         float  a started CC/CV step ends after this many s of cell time and the
                               cell rests (the cycler's own step timer, exact to the simulated
                               second whatever the client's latency; 0: no time limit)
``start, stop``         int    put 1: apply the mode / go to rest
``reset``               int    put 1: a fresh pristine cell (soc 0, cycle 1)
``accel``               float  simulated seconds per wall second (default 600: a 2.7→4.5 V
                               charge at 20 mA/g in about 70 s)
``voltage_V`` ...       float  readbacks: voltage_V, current_mA, current_mA_g, capacity_mAh_g,
                               charge_capacity_mAh_g, energy_mWh_g (net ∫V dQ, the cycler's own
                               energy counter), soc, time_s; cycle, limit_hits (int);
                               mode_RBV, preset (str); running (0/1). The readbacks of one
                               update carry one EPICS timestamp.
======================  =====  ==================================================================

The cell (:class:`strainstream.sim.cell.CoinCell`) is advanced every 0.1 s of wall time by
``accel`` × the elapsed wall time.

XRD detector (``<prefix>XRD:``, see :class:`~strainstream.devices.ioc._common.AreaDetectorGroup`):
Simulation controls (``SIM:``, no real detector has them): ``SIM:Sample`` (enum ``cell`` | ``CeO2``) says what is in the beam: with ``CeO2`` a frame of the
calibrant is taken (:meth:`~strainstream.sim.xrd_frames.XRDFrameSimulator.ceo2_frame`, for
geometry calibration; phase attributes NaN). With ``SIM:BeamGate`` = 1 the detector sees the
beam IOC's photons (followed over Channel Access,
:class:`~strainstream.devices.ioc._common.BeamGateMixin`): while the ring current is below
``SIM:BeamMin_mA`` or the shutter is not Open a frame is dark (all zeros: no dark current);
``SIM:BeamOn_RBV`` and the per-frame ``beam_on`` attribute say which. Otherwise every frame (``cam1:Acquire``) snapshots the cell's current lattice (phases) and computes the frame with
:meth:`strainstream.sim.xrd_frames.XRDFrameSimulator.frame` for the default geometry binned to
the configured shape (2048² default; ``--xrd-shape 256`` → binning 8), noise seed
``(SIM:Seed, ArrayCounter)``. The state used is stored per frame in the HDF5 file
(``/entry/instrument/NDAttributes``: soc, voltage_V, capacity_mAh_g, time_s, counter,
n_phases, phase{0,1}_{a_A,c_A,fraction,microstrain,size_nm,li_occupancy}) so a frame can be
recomputed exactly from the forward model.

Run: ``python -m strainstream.devices.ioc cycler --prefix SS: --port 5070 --write-dir DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np
from caproto import ChannelType
from caproto.server import PVGroup, SubGroup, pvproperty

from ._common import MONITOR_FLUSH_S, AreaDetectorGroup, BeamGateMixin, add_common_args, serve

__all__ = ["NOMINAL_EXPOSURE_S", "PHASE_FIELDS", "CyclerGroup", "CyclerIOC", "XRDDetector", "build", "main"]

PHASE_FIELDS = ("a_A", "c_A", "fraction", "microstrain", "size_nm", "li_occupancy")
_MODES = ["CC", "CV", "REST"]
#: exposure (s) of the simulator's cell frame as it computes it: a frame of AcquireTime t has
#: t / NOMINAL_EXPOSURE_S times its counts
NOMINAL_EXPOSURE_S = 0.2


class XRDDetector(BeamGateMixin, AreaDetectorGroup):
    """Operando XRD area detector: frames of the parent's coin cell in its current state."""

    det_name = "xrd"
    dtype = "uint16"
    scalar_keys = ("soc", "voltage_V", "capacity_mAh_g", "time_s", "counter", "n_phases",
                   "beam_on") + tuple(f"phase{k}_{f}" for k in (0, 1) for f in PHASE_FIELDS)

    Sample = pvproperty(name="SIM:Sample", value="cell", dtype=ChannelType.ENUM, enum_strings=["cell", "CeO2"],
                        doc="what is in the beam: the coin cell, or the CeO2 calibrant (NIST 674b)")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.simulator = None

    def configure(self, frame_shape, write_dir):
        super().configure(frame_shape, write_dir)
        rows, cols = self.frame_shape
        if rows != cols or 2048 % rows:
            raise ValueError(f"XRD frame shape must be square and divide 2048 (e.g. 2048, 512, 128), "
                             f"got {frame_shape}")

    def _sim(self):
        if self.simulator is None:
            from strainstream.sim.xrd_frames import DetectorGeometry, XRDFrameSimulator

            self.simulator = XRDFrameSimulator(DetectorGeometry.binned(2048 // self.frame_shape[0]))
        return self.simulator

    def make_frame(self, index, t=None):
        cell = self.parent.cyc.cell
        phases = cell.lattice()
        tm = dict(cell.preset.transition_metals)
        rb = cell.readbacks()
        seed = [int(self.Seed.value), int(index)]
        noise = bool(self.Noise.value)
        scalars = {k: float(rb[k]) for k in ("soc", "voltage_V", "capacity_mAh_g", "time_s")}
        scalars["counter"] = float(index)
        scalars["n_phases"] = float(len(phases))
        beam_on = self.beam_on()
        scalars["beam_on"] = float(beam_on)
        for k, ph in enumerate(phases[:2]):
            for f in PHASE_FIELDS:
                scalars[f"phase{k}_{f}"] = float(getattr(ph, f))
        sim = self._sim()
        if not beam_on:  # no photons: a dark frame (this detector has no dark current)
            shape, dtype = self.frame_shape, self.dtype
            return (lambda: np.zeros(shape, dtype)), scalars
        # counts grow with the exposure: the simulator's frame is a NOMINAL_EXPOSURE_S one
        # (AcquireTime 0, never set, is that exposure too)
        exposure = float(self.cam_AcquireTime.value)
        scale = exposure / NOMINAL_EXPOSURE_S if exposure > 0 else 1.0
        if self.Sample.value == "CeO2":
            scalars["n_phases"] = 0.0
            for k in (0, 1):
                for f in PHASE_FIELDS:
                    scalars[f"phase{k}_{f}"] = float("nan")

            def compute():
                return sim.ceo2_frame(seed=seed, noise=noise, scale=scale).image

            return compute, scalars

        def compute():
            return sim.frame(phases, seed=seed, noise=noise, transition_metals=tm, scale=scale).image

        return compute, scalars


class CyclerGroup(PVGroup):
    """Battery cycler driving a simulated coin cell (``<prefix>CYC:``)."""

    preset = pvproperty(value="SC-NM91", dtype=str, read_only=True)
    mass_mg = pvproperty(value=10.0, read_only=True, precision=3)
    mode = pvproperty(value="REST", dtype=ChannelType.ENUM, enum_strings=_MODES,
                      doc="mode applied by start")
    current_sp_mA_g = pvproperty(value=20.0, precision=3)
    voltage_sp_V = pvproperty(value=4.5, precision=4)
    v_max_V = pvproperty(value=4.5, precision=4)
    v_min_V = pvproperty(value=2.7, precision=4)
    then_cv = pvproperty(value=0)
    step_time_s = pvproperty(value=0.0, precision=1)
    start = pvproperty(value=0)
    stop = pvproperty(value=0)
    reset = pvproperty(value=0)
    accel = pvproperty(value=600.0, precision=1)
    running = pvproperty(value=0, read_only=True)
    mode_RBV = pvproperty(value="REST", dtype=str, read_only=True)
    voltage_V = pvproperty(value=0.0, read_only=True, precision=5)
    current_mA = pvproperty(value=0.0, read_only=True, precision=5)
    current_mA_g = pvproperty(value=0.0, read_only=True, precision=4)
    capacity_mAh_g = pvproperty(value=0.0, read_only=True, precision=4)
    charge_capacity_mAh_g = pvproperty(value=0.0, read_only=True, precision=4)
    energy_mWh_g = pvproperty(value=0.0, read_only=True, precision=5)
    soc = pvproperty(value=0.0, read_only=True, precision=5)
    cycle = pvproperty(value=1, read_only=True)
    limit_hits = pvproperty(value=0, read_only=True)
    time_s = pvproperty(value=0.0, read_only=True, precision=1)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._preset_name = "SC-NM91"
        self._mass_mg = 10.0
        self.cell = None
        self._t_wall = None
        self._step_end = None  # cell time at which the running step ends (step_time_s)

    def configure(self, preset_name: str, mass_mg: float) -> None:
        from strainstream.sim.cell import CoinCell

        self._preset_name = preset_name
        self._mass_mg = float(mass_mg)
        self.cell = CoinCell(preset_name, mass_mg)

    async def _publish(self):
        rb = self.cell.readbacks()
        # one acquisition, one EPICS timestamp on every readback: a client can tell readings
        # of the same moment from a read that straddled two updates (GITT transients)
        stamp = time.time()
        for key in ("voltage_V", "current_mA", "current_mA_g", "capacity_mAh_g", "soc", "time_s"):
            await getattr(self, key).write(float(rb[key]), timestamp=stamp)
        await self.charge_capacity_mAh_g.write(float(self.cell.charge_capacity_mAh_g), timestamp=stamp)
        await self.energy_mWh_g.write(float(self.cell.energy_mWh_g), timestamp=stamp)
        await self.cycle.write(int(rb["cycle"]), timestamp=stamp)
        await self.limit_hits.write(int(self.cell.limit_hits), timestamp=stamp)
        if self.mode_RBV.value != rb["mode"]:
            await self.mode_RBV.write(rb["mode"])
        running = 0 if rb["mode"] == "REST" else 1
        if self.running.value != running:
            await self.running.write(running)

    @preset.startup
    async def preset(self, instance, async_lib):
        await self.preset.write(self._preset_name, verify_value=False)
        await self.mass_mg.write(self._mass_mg, verify_value=False)
        await self._publish()

    @time_s.scan(period=0.1, use_scan_field=False)
    async def time_s(self, instance, async_lib):
        now = time.monotonic()
        if self._t_wall is not None:
            dt = (now - self._t_wall) * max(float(self.accel.value), 0.0)
            if dt > 0:
                end = self._step_end
                if end is not None and self.cell.mode != "REST" and self.cell.time_s + dt >= end:
                    h = max(end - self.cell.time_s, 0.0)
                    self.cell.step(h)
                    self.cell.set_mode("REST")
                    dt -= h
                    self._step_end = None
                self.cell.step(dt)
        self._t_wall = now
        await self._publish()

    def _apply(self):
        mode = self.mode.value
        mode = _MODES[mode] if isinstance(mode, int) else str(mode)
        i = float(self.current_sp_mA_g.value)
        if mode == "CC":
            v_lim = float(self.v_max_V.value) if i >= 0 else float(self.v_min_V.value)
            self.cell.set_mode("CC", current_mA_g=i, v_limit_V=v_lim,
                               then="cv" if self.then_cv.value else "rest")
        elif mode == "CV":
            self.cell.set_mode("CV", voltage_V=float(self.voltage_sp_V.value),
                               current_mA_g=abs(i) if i else None)
        else:
            self.cell.set_mode("REST")

    @start.putter
    async def start(self, instance, value):
        if value:
            self._apply()
            limit = float(self.step_time_s.value)
            self._step_end = self.cell.time_s + limit if limit > 0 else None
            await self._publish()
            await asyncio.sleep(MONITOR_FLUSH_S)
        return 0

    @stop.putter
    async def stop(self, instance, value):
        if value:
            self.cell.set_mode("REST")
            self._step_end = None
            await self._publish()
            await asyncio.sleep(MONITOR_FLUSH_S)
        return 0

    @reset.putter
    async def reset(self, instance, value):
        if value:
            from strainstream.sim.cell import CoinCell

            self.cell = CoinCell(self._preset_name, self._mass_mg)
            self._step_end = None
            await self._publish()
            await asyncio.sleep(MONITOR_FLUSH_S)
        return 0


class CyclerIOC(PVGroup):
    """The cycler (``<prefix>CYC:``) and the XRD detector looking at its cell (``<prefix>XRD:``)."""

    cyc = SubGroup(CyclerGroup, prefix="CYC:")
    xrd = SubGroup(XRDDetector, prefix="XRD:")


def build(prefix: str, *, preset_name="SC-NM91", mass_mg=10.0, xrd_shape=2048,
          write_dir=".") -> CyclerIOC:
    """Create the IOC (PV names ``<prefix>CYC:*`` and ``<prefix>XRD:*``)."""
    ioc = CyclerIOC(prefix=prefix)
    ioc.cyc.configure(preset_name, mass_mg)
    ioc.xrd.configure((xrd_shape, xrd_shape), write_dir)
    return ioc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="strainstream-ioc cycler", description=__doc__.splitlines()[0])
    add_common_args(ap)
    ap.add_argument("--preset", default="SC-NM91", help="cell preset (SC-NM91, PC-NC91, ...)")
    ap.add_argument("--mass-mg", type=float, default=10.0)
    ap.add_argument("--xrd-shape", type=int, default=2048, help="XRD frame rows = cols (divides 2048)")
    args = ap.parse_args(argv)
    ioc = build(args.prefix, preset_name=args.preset, mass_mg=args.mass_mg,
                xrd_shape=args.xrd_shape, write_dir=args.write_dir)
    if not args.list_pvs:
        ioc.xrd._sim()  # build the pyFAI geometry before announcing READY
    return serve(ioc, args.port, "cycler", closers=[ioc.xrd.close], list_pvs=args.list_pvs,
                 exit_with_parent=args.exit_with_parent)


if __name__ == "__main__":
    raise SystemExit(main())
