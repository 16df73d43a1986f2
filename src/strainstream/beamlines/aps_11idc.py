"""Example profile laid out like an operando high-energy XRD beamline (APS 11-ID-C style).

A PerkinElmer flat panel as an areaDetector IOC (``11idcPE1:cam1:``, ``11idcPE1:HDF1:``), the
sample stage and detector distance on motor records, the ring current and the station
shutter on the facility's records, and the coin cell's potentiostat followed through its
live export file. The PV names follow the facility's style; check them against your IOCs
(``strainstream beamline status``) before a beamtime. Loaded in tests with mock devices.
"""

from __future__ import annotations

import os

from strainstream.beamlines import Context
from strainstream.beamlines._parts import beam_status, motor_stage
from strainstream.devices._ioc import mock_device
from strainstream.devices.beam import BeamStatus
from strainstream.devices.cycler_file import CyclerFileFollower, cycler_file
from strainstream.devices.detectors import IOCAreaDetector

PREFIX = ""  # every factory names its full records

IOCS = {
    "pe1": ("xrd",),
    "motors": ("es",),
    "machine": ("beam",),
    "potentiostat": ("cycler",),
}


def xrd(ctx: Context) -> IOCAreaDetector:
    kw = dict(name="xrd", dtype="uint16", write_dir=ctx.write_dir, ioc_name="pe1")
    if ctx.mock:
        return mock_device(IOCAreaDetector, "11idcPE1:", **kw)
    return IOCAreaDetector("11idcPE1:", **kw)


def es(ctx: Context):
    return motor_stage("es", {
        "sample_x": "11idc:m9", "sample_y": "11idc:m10", "sample_z": "11idc:m11",
        "det_z": "11idc:m15",
    }, ioc_name="motors", mock=ctx.mock)


def beam(ctx: Context) -> BeamStatus:
    return beam_status("beam", ring_current="S:SRcurrentAI", shutter_command="11idc:shutter:cmd",
                       shutter_status="11idc:shutter:status", open_value="OPEN",
                       close_value="CLOSE", open_status="OPEN", mock=ctx.mock)


def cycler(ctx: Context) -> CyclerFileFollower:
    path = os.path.join(str(ctx.write_dir or "."), "potentiostat", "cell.mpt")
    return cycler_file(path, active_mass_mg=10.0, name="cycler")


DEVICES = {"xrd": xrd, "es": es, "beam": beam, "cycler": cycler}
