"""The beamline profile and the queue server's permissions/plan list, without servers or IOCs."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from bluesky.protocols import Readable

from strainstream.profile import PLAN_NAMES, ProfileConfig, plans
from strainstream.queue import DEPLOY_DIR

PERMISSIONS = DEPLOY_DIR / "user_group_permissions.yaml"
EXISTING = DEPLOY_DIR / "existing_plans_and_devices.yaml"
OURS = ("operando_xrd", "adaptive_operando_xrd", "operando_cycling", "operando_gitt", "rate_series", "sxdm_map",
        "find_bragg", "txm_xanes", "frame_series")


def test_queue_ready_plans_keep_name_doc_and_behaviour():
    from strainstream.plans.xrd import operando_xrd

    wrapped = plans()["operando_xrd"]
    assert wrapped.__name__ == "operando_xrd" and wrapped.__doc__ == operando_xrd.__doc__
    assert wrapped.__wrapped__ is operando_xrd
    assert inspect.isgeneratorfunction(wrapped)
    sig = inspect.signature(wrapped)
    assert sig.parameters["detector"].annotation is Readable
    assert sig.parameters["beam"].annotation == (Readable | None)
    assert sig.parameters["calibration"].annotation == dict[str, Any]
    assert sig.parameters["rate_mA_g"].annotation is float
    assert list(sig.parameters) == list(inspect.signature(operando_xrd).parameters)
    # same checks, same message: the wrapper runs the plan itself
    for plan in (operando_xrd, wrapped):
        with pytest.raises(ValueError, match="rate_mA_g must be > 0"):
            next(plan(None, None, calibration={"wavelength_A": 0.1665}, rate_mA_g=-1.0))
    assert tuple(plans()) == PLAN_NAMES


def test_config_from_env_and_back():
    env = {"STRAINSTREAM_URI": "http://127.0.0.1:1/api/v1", "STRAINSTREAM_API_KEY": "k",
           "STRAINSTREAM_PREFIX": "XX:", "STRAINSTREAM_DETECTOR_DIR": "/data/det",
           "STRAINSTREAM_IOCS": "cycler,beam", "STRAINSTREAM_TABLE": "0",
           "STRAINSTREAM_SPOOL_DIR": "/data/spool"}
    cfg = ProfileConfig.from_env(env)
    assert (cfg.uri, cfg.api_key, cfg.prefix, cfg.detector_dir, cfg.iocs, cfg.table, cfg.progress,
            cfg.spool_dir) == (env["STRAINSTREAM_URI"], "k", "XX:", "/data/det", ("cycler", "beam"),
                               False, True, "/data/spool")
    assert ProfileConfig.from_env(cfg.env()) == cfg
    assert ProfileConfig.from_env(env, prefix="YY:").prefix == "YY:"
    with pytest.raises(ValueError, match="no API key"):
        ProfileConfig.from_env({"STRAINSTREAM_URI": "http://127.0.0.1:1/api/v1"})
    with pytest.raises(ValueError, match="unknown IOC"):
        ProfileConfig(iocs=("cycler", "ring"))


def _allowed():
    from bluesky_queueserver.manager.profile_ops import load_allowed_plans_and_devices

    return load_allowed_plans_and_devices(path_existing_plans_and_devices=str(EXISTING),
                                          path_user_group_permissions=str(PERMISSIONS))


def test_permissions_beamline_runs_the_profile_plans_observer_nothing():
    from bluesky_queueserver.manager.profile_ops import validate_user_group_permissions

    validate_user_group_permissions(yaml.safe_load(PERMISSIONS.read_text()))
    allowed_plans, allowed_devices = _allowed()
    assert sorted(allowed_plans["beamline"]) == sorted(PLAN_NAMES)
    assert allowed_plans["primary"] == allowed_plans["beamline"]  # qserver's default group
    assert {"xrd", "cycler", "beam", "es", "sxdm", "txm"} <= set(allowed_devices["beamline"])
    assert allowed_plans["observer"] == {} and allowed_devices["observer"] == {}


def _validate(plan: dict, group: str) -> tuple[bool, str]:
    from bluesky_queueserver.manager.profile_ops import validate_plan

    allowed_plans, allowed_devices = _allowed()
    return validate_plan(dict(plan, user_group=group), allowed_plans=allowed_plans[group],
                         allowed_devices=allowed_devices[group])


def test_queue_validates_plan_parameters_against_the_profile():
    good = {"name": "operando_xrd", "args": ["xrd", "cycler"],
            "kwargs": {"calibration": {"wavelength_A": 0.1665}, "max_frames": 3, "beam": "beam"}}
    assert _validate(good, "beamline") == (True, "")
    ok, msg = _validate(dict(good, args=["no_such_detector", "cycler"]), "beamline")
    assert not ok and "no_such_detector" in msg
    ok, msg = _validate(dict(good, kwargs={**good["kwargs"], "max_frames": "many"}), "beamline")
    assert not ok and "max_frames" in msg
    ok, msg = _validate(good, "observer")
    assert not ok and "not in the list of allowed plans" in msg
    assert _validate({"name": "count", "args": [["xrd"]], "kwargs": {"num": 3}}, "beamline")[0]
    # the adaptive charge takes its budget as plain parameters (its agent and live results are
    # the profile's business, not a queued item's)
    adaptive = {"name": "adaptive_operando_xrd", "args": ["xrd", "cycler"],
                "kwargs": {"calibration": {"wavelength_A": 0.1665}, "frames": 40, "dose_s": 6.0, "beam": "beam"}}
    assert _validate(adaptive, "beamline") == (True, "")
    ok, msg = _validate(dict(adaptive, kwargs={**adaptive["kwargs"], "frames": "many"}), "beamline")
    assert not ok and "frames" in msg
    assert _validate(dict(adaptive, kwargs={**adaptive["kwargs"], "triggers": {"dqdv_factor": 3.0}}),
                     "beamline") == (True, "")
    ok, msg = _validate(dict(adaptive, kwargs={**adaptive["kwargs"], "agent": "mine"}), "beamline")
    assert not ok and "agent" in msg
    assert not _validate({"name": "grid_scan", "args": [["xrd"]]}, "beamline")[0]


def _signatures(existing: dict) -> dict:
    """Plan name -> parameters (name, kind, annotation, default) of an existing-plans list."""
    return {name: [{k: v for k, v in p.items() if k != "description"} for p in plan["parameters"]]
            for name, plan in existing["existing_plans"].items()}


@pytest.mark.system
def test_committed_plan_list_is_what_the_profile_offers(tmp_path):
    """deploy/queueserver/existing_plans_and_devices.yaml is regenerated by `queue plans`."""
    out = tmp_path / "existing.yaml"
    env = dict(os.environ, EPICS_CA_AUTO_ADDR_LIST="NO", EPICS_CA_ADDR_LIST="127.0.0.1:9")
    proc = subprocess.run([sys.executable, "-m", "strainstream.cli", "queue", "plans", "--out",
                           str(out)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    fresh, committed = yaml.safe_load(out.read_text()), yaml.safe_load(EXISTING.read_text())
    assert sorted(fresh["existing_plans"]) == sorted(PLAN_NAMES)
    stale = ("deploy/queueserver/existing_plans_and_devices.yaml is stale: run "
             "`strainstream queue plans`")
    # RE Manager refreshes the list when its environment opens; the committed copy must still
    # offer the same plans (parameters, types) and devices before that
    # (descriptions aside: a docstring edit needs no regeneration)
    assert _signatures(fresh) == _signatures(committed), stale
    assert ({k: v["classname"] for k, v in fresh["existing_devices"].items()}
            == {k: v["classname"] for k, v in committed["existing_devices"].items()}), stale
    for name in OURS:
        params = {p["name"]: p for p in fresh["existing_plans"][name]["parameters"]}
        first = next(iter(params.values()))
        if name == "frame_series":  # typed list[Readable] by the plan itself
            assert first["annotation"]["type"] == "list[__READABLE__]"
        else:  # `Any` device parameters: an enum of the profile's devices
            assert first["annotation"]["devices"]["Device"] == sorted(fresh["existing_devices"])
        types = [p["annotation"]["type"] for p in params.values() if "annotation" in p]
        assert len(types) == len(params) and not any("'" in t for t in types)  # no str literals
    assert Path(out).read_text().startswith("# This file is automatically generated")
