"""The command line is one package: every sub-command from one place, one error base, one config.

- every :class:`~strainstream.errors.StrainstreamError` subclass in the project, raised by a
  sub-command, is printed as one line ``strainstream COMMAND: error: ...`` with exit code 2;
- real user mistakes through real sub-commands end the same way;
- ``--data-dir`` is defined once and only :mod:`strainstream.config` reads ``os.environ``.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import strainstream
from strainstream.cli import COMMAND_MODULES, main
from strainstream.errors import StrainstreamError

ROOT = Path(__file__).resolve().parents[2]


def _all_subclasses(cls):
    out = set()
    for sub in cls.__subclasses__():
        out.add(sub)
        out |= _all_subclasses(sub)
    return out


@pytest.fixture(scope="module")
def error_classes():
    """Every StrainstreamError subclass defined by strainstream (all modules imported)."""
    skip = {"strainstream.devices.ioc.__main__", "strainstream.cli.__main__"}
    for info in pkgutil.walk_packages(strainstream.__path__, "strainstream."):
        if info.name not in skip:
            importlib.import_module(info.name)
    classes = {c for c in _all_subclasses(StrainstreamError) if c.__module__.startswith("strainstream")}
    return sorted(classes, key=lambda c: f"{c.__module__}.{c.__qualname__}")


def test_the_project_has_one_error_base(error_classes):
    names = {c.__name__ for c in error_classes}
    # one from each layer: core, devices, glue, callbacks, command line
    for expected in ("PatternError", "SXDMError", "XanesInputError", "FrameError", "ElectrochemInputError",
                     "DataDirError", "IOCNotAnswering", "SeriesLost", "MotorError", "BeamlineError",
                     "QueueServerError", "ReprocessError", "QueryError", "DeployError", "ConfigError",
                     "UsageError", "CommandError"):
        assert expected in names, f"{expected} does not derive from StrainstreamError"
    # every exception class defined in the project's modules derives from it
    strays = []
    for info in pkgutil.walk_packages(strainstream.__path__, "strainstream."):
        mod = sys.modules.get(info.name)
        for obj in vars(mod).values() if mod else ():
            if (isinstance(obj, type) and issubclass(obj, Exception) and obj.__module__ == info.name
                    and not issubclass(obj, StrainstreamError)):
                strays.append(f"{info.name}.{obj.__qualname__}")
    assert not strays, f"exception classes without the StrainstreamError base: {strays}"


def test_every_error_class_raised_by_a_command_is_one_line(error_classes, monkeypatch, capsys):
    import strainstream.cli.config as config_cli

    assert len(error_classes) >= 17
    for cls in error_classes:
        exc = cls.__new__(cls)
        Exception.__init__(exc, f"{cls.__name__} happened\n  on a second line")

        def handler(args, exc=exc):
            raise exc

        monkeypatch.setattr(config_cli, "cmd_show", handler)
        code = main(["config", "show"])
        captured = capsys.readouterr()
        assert code == 2, cls
        lines = captured.err.strip().splitlines()
        assert lines == [f"strainstream config: error: {cls.__name__} happened on a second line"], (cls, captured.err)
        assert captured.out == ""


@pytest.mark.parametrize(("argv", "env", "expected"), [
    (["results", "abcdef", "--data-dir", "{tmp}/none"], {}, "data directory"),
    (["config", "show"], {"STRAINSTREAM_IOCS": "cycler,ring"}, "unknown IOC(s) ['ring']"),
    (["config", "show"], {"STRAINSTREAM_WORKER_SHARD": "4/2"}, "need 0 <= I < N"),
    (["config", "show", "--config", "{tmp}/missing.yml"], {}, "does not exist"),
    (["worker", "--uri", "http://127.0.0.1:9/api/v1", "--data-dir", "{tmp}", "--shard", "2/2"], {}, ""),
    (["keys", "list", "--data-dir", "{tmp}/none"], {}, "does not exist"),
    (["queue", "up"], {}, "--data-dir is required"),
    (["queue", "status"], {}, "--control-addr"),
    (["deploy", "status", "--data-dir", "{tmp}"], {}, "no deployment runs"),
    (["reprocess", "sample.material", "--uri", "http://127.0.0.1:9/api/v1"], {}, "malformed query term"),
    (["beamline", "status", "--ports", "ring=5"], {}, "--ports wants name=port"),
    (["beamline", "launch"], {}, "usage: strainstream beamline"),
    (["xrd", "refine", "{tmp}/none.xy"], {}, "no such file"),
    (["xrd", "refine", "x.xy", "--phases", "3"], {}, "invalid choice"),
    (["sxdm", "map", "{tmp}"], {}, ""),
    (["xanes", "whiteline", "{tmp}/none.h5"], {}, "no such file"),
    (["demo", "--experiment", "nope"], {}, "invalid choice"),
    (["nope"], {}, "invalid choice"),
])
def test_user_mistakes_are_one_line(tmp_path, monkeypatch, capsys, argv, env, expected):
    for k in ("STRAINSTREAM_URI", "STRAINSTREAM_API_KEY", "STRAINSTREAM_CONFIG", "STRAINSTREAM_DATA_DIR"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    argv = [a.format(tmp=tmp_path) for a in argv]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    command = argv[0] if argv[0] != "nope" else ""
    prefix = f"strainstream {command}: error: " if command else "strainstream: error: "
    assert err.startswith(prefix), err
    assert expected in err, err
    assert "Traceback" not in err


def test_help_lists_every_sub_command_from_one_place():
    out = subprocess.run([sys.executable, "-m", "strainstream.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    listed = set(re.findall(r"^    (\w+)\s", out, re.M))
    expected = {"demo", "serve", "worker", "spool", "results", "replay", "plot", "beamline", "console",
                "queue", "deploy", "keys", "reprocess", "config", "xrd", "sxdm", "xanes"}
    assert expected <= listed, expected - listed
    for name in COMMAND_MODULES:
        assert (ROOT / "src" / "strainstream" / "cli" / f"{name}.py").is_file()


def _source_files():
    for top in ("src", "plans", "callbacks", "devices"):
        yield from (ROOT / top).rglob("*.py")


def test_data_dir_option_is_defined_once():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in _source_files()
            for i, line in enumerate(p.read_text().splitlines(), 1) if 'add_argument("--data-dir"' in line]
    assert hits == ["src/strainstream/cli/_common.py:" + hits[0].split(":")[1]], hits


def test_only_the_config_module_touches_the_environment():
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in _source_files()
            for i, line in enumerate(p.read_text().splitlines(), 1) if "os.environ" in line]
    assert hits and all(h.startswith("src/strainstream/config.py:") for h in hits), hits


def test_config_schema_in_docs_is_current():
    import json

    from strainstream.config import json_schema

    committed = json.loads((ROOT / "docs" / "config.schema.json").read_text())
    assert committed == json.loads(json.dumps(json_schema())), (
        "docs/config.schema.json is stale: run `strainstream config schema --out docs/config.schema.json`")
