"""Packaging: the package-dir mapping holds for the editable install and for a built wheel."""

from __future__ import annotations

import importlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "module, folder",
    [
        ("strainstream.plans", "plans"),
        ("strainstream.callbacks", "callbacks"),
        ("strainstream.devices", "devices"),
        ("strainstream.devices.ioc", "devices/ioc"),
    ],
)
def test_mapped_packages_import_from_their_folders(module, folder):
    mod = importlib.import_module(module)
    # strict editable installs link files from a build tree; resolve the links
    assert Path(mod.__file__).resolve() == (ROOT / folder / "__init__.py").resolve()


def test_cli_starts_without_heavy_imports():
    code = (
        "import sys, strainstream.cli as c; c.build_parser(); "
        "heavy = [m for m in ('tiled', 'bluesky', 'ophyd', 'numpy', 'h5py', 'pyFAI') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.slow
def test_wheel_contains_all_packages(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("strainstream-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "strainstream/__init__.py", "strainstream/cli/__init__.py", "strainstream/py.typed",
        "strainstream/plans/__init__.py", "strainstream/plans/frames.py",
        "strainstream/callbacks/__init__.py", "strainstream/callbacks/base.py",
        "strainstream/devices/__init__.py", "strainstream/devices/detectors.py",
        "strainstream/devices/ioc/__init__.py",
        "strainstream/xrd/__init__.py", "strainstream/sxdm/__init__.py", "strainstream/xanes/__init__.py",
        "strainstream/electrochem/__init__.py", "strainstream/sim/__init__.py",
    }
    assert expected <= names, sorted(expected - names)
    assert not any(n.startswith(("tests/", "plans/", "callbacks/", "devices/")) for n in names)
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert entry and "strainstream = strainstream.cli:main" in zipfile.ZipFile(wheel).read(entry[0]).decode()


def test_deploy_config_matches_what_serve_writes(tmp_path):
    """deploy/tiled/embedded.yml parses as a tiled config with the same shape serve writes."""
    import json

    import yaml

    from strainstream.tiledconfig import write_config

    written = json.loads(write_config(tmp_path, port=8000, api_key="k").read_text())
    shipped = yaml.safe_load((ROOT / "deploy" / "tiled" / "embedded.yml").read_text())
    assert shipped.keys() == written.keys()
    assert shipped["trees"][0]["args"].keys() == written["trees"][0]["args"].keys()
    assert shipped["authentication"] == written["authentication"]


def test_beamline_subcommand_is_wired():
    out = subprocess.run([sys.executable, "-m", "strainstream.cli", "beamline", "status", "--help"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "--ports" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "strainstream.cli", "beamline", "launch"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "usage: strainstream beamline" in bad.stderr


def test_dependencies_are_ranges_and_ci_installs_the_tested_versions():
    """pyproject declares ranges (no exact pins a beamline environment would fight); the exact
    versions CI tests are in constraints.txt, which the README's install and .ci/run use."""
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    requirements = project["dependencies"] + [r for reqs in extras.values() for r in reqs]
    pinned = [r for r in requirements if "==" in r]
    assert not pinned, f"exact pins in pyproject.toml: {pinned}"
    constraints = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            constraints[re.sub(r"[-_.]+", "-", name).lower()] = version
    for r in requirements:
        name = re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0]).lower()
        if name not in ("setuptools", "wheel"):  # pip freeze leaves these two out
            assert name in constraints, f"{name} has no tested version in constraints.txt"
    command = "pip install -e '.[test]' -c constraints.txt --config-settings editable_mode=strict"
    assert command in (ROOT / "README.md").read_text()
    assert command.replace("install -e", "install -q -e") in (ROOT / ".ci" / "run").read_text()
