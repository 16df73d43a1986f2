"""``strainstream COMMAND ...`` registers only COMMAND's module (issue #16 item 5: start-up).

No timing here (``benchmarks/bench_cli_latency.py`` measures it): what is checked is that the
partial parser is the full parser for every sub-command — the same parse, the same usage
errors — and that a command does not import the other sub-commands' modules.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest

from strainstream.cli import COMMAND_MODULES, COMMAND_OF, _command_of, build_parser
from strainstream.cli._common import Parser
from strainstream.errors import UsageError


def test_command_of_names_the_module_that_registers_each_command():
    registered = {}
    for name in COMMAND_MODULES:
        parser = Parser(prog="strainstream")
        sub = parser.add_subparsers(dest="command", parser_class=Parser)
        importlib.import_module(f"strainstream.cli.{name}").register(sub)
        registered.update(dict.fromkeys(sub.choices, name))
    assert registered == COMMAND_OF
    assert build_parser().get_default("known_commands") == frozenset(COMMAND_OF)
    for command in COMMAND_OF:
        assert build_parser(command).get_default("known_commands") == frozenset(COMMAND_OF)


def test_command_of_argv():
    assert _command_of(["results", "x"]) == "results"
    assert _command_of(["-v", "plot", "x"]) == "plot"
    assert _command_of(["--verbose", "-v", "runs"]) == "runs"
    for argv in ([], ["-h"], ["--help"], ["-v"], ["resultz"], ["--data-dir", "results"], ["-h", "results"]):
        assert _command_of(argv) is None, argv


def _parse(parser, argv):
    try:
        return "ok", {k: v for k, v in vars(parser.parse_args(argv)).items() if k != "group_parser"}
    except UsageError as exc:
        return "usage", str(exc)


@pytest.mark.parametrize("argv", [
    ["results", "0123abcd", "--json"], ["results", "0123abcd", "--data-dir", "d", "--uri", "http://h:1/api/v1"],
    ["plot", "u", "--dpi", "50", "--out", "x.png", "--analysis", "xrd"], ["plot", "u", "--dpi", "5"],
    ["runs", "--limit", "2", "--experiment", "sxdm"], ["runs", "--limit", "0"], ["replay", "u", "--field", "a=b"],
    ["results"], ["results", "u", "--bogus"], ["results", "u", "extra"], ["-v", "results", "u"],
    ["serve", "--port", "8001"], ["worker", "--data-dir", "d"], ["import", "x", "--data-dir", "d"],
    ["beamline", "up", "--iocs", "cycler"], ["beamline", "up"], ["beamline", "status", "--timeout", "x"],
    ["deploy", "up"], ["deploy", "up", "--data-dir", "d", "--profile", "bogus"], ["keys", "list"],
    ["xrd", "refine"], ["sxdm", "map"], ["xanes", "whiteline"], ["queue"], ["config", "show"],
    ["demo", "--frames", "0"], ["demo", "--experiment", "frame_series"],
])
def test_the_partial_parser_is_the_full_parser(argv):
    assert _parse(build_parser(_command_of(argv)), argv) == _parse(build_parser(), argv)


def test_beamline_up_still_defaults_to_every_ioc():
    from strainstream.cli.beamline import _iocs
    from strainstream.config import IOC_NAMES

    assert _iocs(build_parser().parse_args(["beamline", "up"])) == ",".join(IOC_NAMES)
    assert _iocs(build_parser().parse_args(["beamline", "up", "--iocs", "beam"])) == "beam"


def test_a_command_imports_only_its_module(frame_series_demo):
    d, summary = frame_series_demo
    code = textwrap.dedent(f"""
        import sys
        from strainstream.cli import main
        rc = main(["results", {summary["uid"]!r}, "--data-dir", {str(d)!r}])
        mods = sorted(m for m in sys.modules if m.startswith("strainstream.cli.") and m != "strainstream.cli._common")
        print(mods, file=sys.stderr)
        sys.exit(rc)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "['strainstream.cli.runs']"
