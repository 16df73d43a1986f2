"""Beamline profiles (strainstream.beamlines): every shipped profile builds in mock mode with
the stock classes, its devices fit the plans, and the simulated profile is the one the
console, the queue server and Beamline use."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

import pytest
from bluesky.protocols import Movable, Readable
from ophyd import EpicsMotor
from ophyd.areadetector import AreaDetector, HDF5Plugin, SingleTrigger
from ophyd.areadetector.filestore_mixins import FileStoreHDF5IterativeWrite

from strainstream.beamlines import PROFILES, device_table, load, make_devices, names_by_ioc
from strainstream.devices.testing import mock_beamline


@pytest.fixture(autouse=True)
def _tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # ophyd.sim's temporary directory


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_builds_in_mock_mode_with_stock_classes(name, tmp_path):
    prof = load(name)
    devices = mock_beamline(name, write_dir=tmp_path)
    assert set(devices) == {n for names in prof.IOCS.values() for n in names} == set(prof.DEVICES)
    rows = device_table(devices)
    assert rows and all(set(r) == {"name", "class", "prefix"} for r in rows)
    motors = [r for r in rows if r["class"] == "ophyd.epics_motor.EpicsMotor"]
    for dev in devices.values():
        if hasattr(dev, "cam"):  # area detectors: the stock ophyd parts
            assert isinstance(dev, SingleTrigger) and isinstance(dev, AreaDetector)
            assert isinstance(dev.hdf1, HDF5Plugin) and isinstance(dev.hdf1, FileStoreHDF5IterativeWrite)
            assert dev.cam.prefix == dev.prefix + "cam1:" and dev.hdf1.prefix == dev.prefix + "HDF1:"
            assert isinstance(dev, Readable)
    if "es" in devices:
        es = devices["es"]
        assert len(motors) == len(es.component_names) >= 4
        for m in es.component_names:
            assert isinstance(getattr(es, m), EpicsMotor) and isinstance(getattr(es, m), Movable)
    if "beam" in devices:
        beam = devices["beam"]
        assert hasattr(beam, "ring_current_mA") and hasattr(beam.shutter, "status")
        assert isinstance(beam.shutter, Movable)


@pytest.mark.parametrize("name", PROFILES)
def test_plans_accept_the_profile_devices(name, tmp_path):
    """Plan validation: each plan the profile can run is built with its devices (no IOC)."""
    from strainstream.plans.sxdm import sxdm_map
    from strainstream.plans.xanes import txm_xanes
    from strainstream.plans.xrd import operando_xrd

    d = mock_beamline(name, write_dir=tmp_path)
    built = []
    if "xrd" in d and "cycler" in d:
        built.append(operando_xrd(d["xrd"], d["cycler"], calibration={}, beam=d.get("beam")))
    if "sxdm" in d and "es" in d and hasattr(d["es"], "theta"):
        built.append(sxdm_map(d["sxdm"], d["es"], theta_center_deg=10.0, x_center_um=0.0,
                              y_center_um=0.0, nx=4, ny=4, beam=d.get("beam")))
    if "txm" in d and "es" in d and hasattr(d["es"], "zp_z"):
        built.append(txm_xanes(d["txm"], d["es"], beam=d.get("beam")))
    assert built, f"profile {name} runs none of the experiments"
    for plan in built:
        assert hasattr(plan, "send")
        plan.close()


def test_the_console_queue_and_ioc_list_use_the_simulated_profile():
    from strainstream.config import IOC_NAMES
    from strainstream.profile import DEVICE_NAMES

    assert DEVICE_NAMES == names_by_ioc("sim")
    assert tuple(IOC_NAMES) == tuple(names_by_ioc("sim"))


def test_unknown_profile_and_ioc_are_named():
    from strainstream.errors import UsageError

    with pytest.raises(UsageError, match="no beamline profile 'nope'; shipped: sim"):
        load("nope")
    with pytest.raises(UsageError, match=r"unknown IOC\(s\) \['x'\]"):
        make_devices("sim", iocs=["x"], mock=True)


def test_status_lists_a_real_profile_without_its_iocs():
    r = subprocess.run([sys.executable, "-m", "strainstream.cli", "beamline", "status", "--json",
                        "--beamline", "nsls2_hxn_fxi", "--ports", "beam=9", "--timeout", "0.2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr  # nothing answers here
    devices = {d["name"]: d for d in json.loads(r.stdout)["devices"]}
    assert devices["theta"] == {"name": "theta", "class": "ophyd.epics_motor.EpicsMotor",
                                "prefix": "XF:03IDC-ES{Smpl:1-Ax:Th}Mtr", "connected": False}
    assert devices["sxdm"]["prefix"] == "XF:03IDC-ES{Merlin:1}" and not devices["sxdm"]["connected"]


def test_the_readme_profile_example_builds(tmp_path, monkeypatch):
    """The README's profile for a real beamline, as a module of the user's own."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("## On a real beamline"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "mybeamline_example.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    devices = make_devices("mybeamline_example", write_dir=tmp_path, mock=True)
    rows = {r["name"]: r for r in device_table(devices)}
    assert rows["theta"]["class"] == "ophyd.epics_motor.EpicsMotor" and rows["theta"]["prefix"] == "11idc:m12"
    assert rows["sample_x"]["prefix"] == "11idc:m9"
    assert rows["xrd"]["prefix"] == "11idcPE1:" and "AreaDetector" in rows["xrd"]["class"]
    assert devices["beam"].shutter.open_status == "OPEN"
