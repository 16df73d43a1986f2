"""The simulated beamline (default profile): caproto IOCs of :mod:`strainstream.devices.ioc`.

=========== ===================================== =========================================
IOC         device                                records (after ``PREFIX``)
=========== ===================================== =========================================
cycler      ``cycler`` (potentiostat)              ``CYC:*`` (``docs/cycler-ioc.md``)
cycler      ``xrd`` operando XRD area detector     ``XRD:cam1:*``, ``XRD:HDF1:*``
cycler      ``xrd_sim`` simulation controls        ``XRD:SIM:*`` (sample changer, beam gate)
endstation  ``es`` motors (``ophyd.EpicsMotor``)   ``ES:sample_x`` ... ``ES:energy``
endstation  ``sxdm`` pixel detector, ``txm`` camera ``SXDM:cam1:``/``HDF1:``, ``TXM:...``
endstation  ``sxdm_sim``, ``txm_sim``              ``SXDM:SIM:*``, ``TXM:SIM:*``
beam        ``beam`` ring current + shutter        ``BEAM:*``
=========== ===================================== =========================================
"""

from __future__ import annotations

from strainstream.beamlines import Context
from strainstream.devices.beam import Beam
from strainstream.devices.beam import beam as _beam
from strainstream.devices.cycler import Cycler
from strainstream.devices.cycler import cycler as _cycler
from strainstream.devices.detectors import IOCAreaDetector, SimControls, ioc_detector, sim_controls
from strainstream.devices.motors import Endstation, endstation

PREFIX = "SS:"

IOCS = {
    "cycler": ("cycler", "xrd", "xrd_sim"),
    "endstation": ("es", "sxdm", "txm", "sxdm_sim", "txm_sim"),
    "beam": ("beam",),
}


def cycler(ctx: Context) -> Cycler:
    return _cycler(ctx.prefix, ioc_address=ctx.address("cycler"), mock=ctx.mock)


def xrd(ctx: Context) -> IOCAreaDetector:
    return ioc_detector("xrd", ctx.prefix, write_dir=ctx.write_dir,
                        ioc_address=ctx.address("cycler"), mock=ctx.mock)


def xrd_sim(ctx: Context) -> SimControls:
    return sim_controls("xrd", ctx.prefix, ioc_address=ctx.address("cycler"), mock=ctx.mock)


def es(ctx: Context) -> Endstation:
    return endstation(ctx.prefix, ioc_address=ctx.address("endstation"), mock=ctx.mock)


def sxdm(ctx: Context) -> IOCAreaDetector:
    return ioc_detector("sxdm", ctx.prefix, write_dir=ctx.write_dir,
                        ioc_address=ctx.address("endstation"), mock=ctx.mock)


def txm(ctx: Context) -> IOCAreaDetector:
    return ioc_detector("txm", ctx.prefix, write_dir=ctx.write_dir,
                        ioc_address=ctx.address("endstation"), mock=ctx.mock)


def sxdm_sim(ctx: Context) -> SimControls:
    return sim_controls("sxdm", ctx.prefix, ioc_address=ctx.address("endstation"), mock=ctx.mock)


def txm_sim(ctx: Context) -> SimControls:
    return sim_controls("txm", ctx.prefix, ioc_address=ctx.address("endstation"), mock=ctx.mock)


def beam(ctx: Context) -> Beam:
    return _beam(ctx.prefix, ioc_address=ctx.address("beam"), mock=ctx.mock)


DEVICES = {"cycler": cycler, "xrd": xrd, "xrd_sim": xrd_sim, "es": es, "sxdm": sxdm, "txm": txm,
           "sxdm_sim": sxdm_sim, "txm_sim": txm_sim, "beam": beam}
