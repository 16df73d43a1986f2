"""Example profile laid out like a nanoprobe + TXM endstation (NSLS-II HXN/FXI style).

A Merlin pixel detector (``XF:03IDC-ES{Merlin:1}cam1:``, ``...HDF1:``) for SXDM, an Andor
camera behind the zone plate for TXM-XANES (``XF:18IDB-ES{Det:Andor}``), the sample and
zone-plate stages and the DCM energy on motor records, ring current and shutter on the
facility's records. PV names follow the facility's naming convention; check them against
your IOCs before a beamtime. Loaded in tests with mock devices.
"""

from __future__ import annotations

from strainstream.beamlines import Context
from strainstream.beamlines._parts import beam_status, motor_stage
from strainstream.devices._ioc import mock_device
from strainstream.devices.beam import BeamStatus
from strainstream.devices.detectors import IOCAreaDetector

PREFIX = ""

IOCS = {
    "merlin": ("sxdm",),
    "andor": ("txm",),
    "motors": ("es",),
    "machine": ("beam",),
}


def _detector(prefix: str, name: str, dtype: str, ctx: Context) -> IOCAreaDetector:
    kw = dict(name=name, dtype=dtype, write_dir=ctx.write_dir, ioc_name=name)
    if ctx.mock:
        return mock_device(IOCAreaDetector, prefix, **kw)
    return IOCAreaDetector(prefix, **kw)


def sxdm(ctx: Context) -> IOCAreaDetector:
    return _detector("XF:03IDC-ES{Merlin:1}", "sxdm", "uint32", ctx)


def txm(ctx: Context) -> IOCAreaDetector:
    return _detector("XF:18IDB-ES{Det:Andor}", "txm", "float32", ctx)


def es(ctx: Context):
    return motor_stage("es", {
        "sample_x": "XF:03IDC-ES{Ppmac:1-zpssx}Mtr", "sample_y": "XF:03IDC-ES{Ppmac:1-zpssy}Mtr",
        "sample_z": "XF:03IDC-ES{Ppmac:1-zpssz}Mtr", "theta": "XF:03IDC-ES{Smpl:1-Ax:Th}Mtr",
        "zp_z": "XF:18IDB-ES{TXM:ZP-Ax:Z}Mtr", "det_z": "XF:03IDC-ES{Det:Merlin-Ax:Z}Mtr",
        "sample_inout": "XF:18IDB-ES{TXM:Smpl-Ax:X}Mtr", "energy": "XF:18IDA-OP{Mono:DCM-Ax:E}Mtr",
    }, ioc_name="motors", mock=ctx.mock)


def beam(ctx: Context) -> BeamStatus:
    return beam_status("beam", ring_current="SR:OPS-BI{DCCT:1}I:Real-I",
                       shutter_command="XF:03IDB-PPS{PSh}Cmd:Opn-Cmd",
                       shutter_status="XF:03IDB-PPS{PSh}Pos-Sts", open_value="1", close_value="0",
                       open_status="Open", mock=ctx.mock)


DEVICES = {"sxdm": sxdm, "txm": txm, "es": es, "beam": beam}
