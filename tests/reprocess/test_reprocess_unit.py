"""``strainstream reprocess``: query syntax, version decisions, the hidden key, the table (no server)."""

from __future__ import annotations

import datetime as dt
import pickle

import pytest
from tiled.queries import Comparison, Eq, NotEq

from strainstream.cli.reprocess import main
from strainstream.reprocess import (
    Outcome,
    QueryError,
    _decide,
    _Secret,
    build_queries,
    format_table,
    parse_term,
    parse_time,
)


@pytest.mark.parametrize(
    ("term", "key", "value", "kind"),
    [
        ("plan_name=count", "start.plan_name", "count", Eq),
        ("sample.material=SC-NM91", "start.sample.material", "SC-NM91", Eq),
        ("sample.material==SC-NM91", "start.sample.material", "SC-NM91", Eq),
        ("num_points=8", "start.num_points", 8, Eq),
        ('num_points="8"', "start.num_points", "8", Eq),
        ("rate=2.5", "start.rate", 2.5, Eq),
        ("flag=true", "start.flag", True, Eq),
        ("experiment!=sxdm", "start.experiment", "sxdm", NotEq),
        ("stop.exit_status=success", "stop.exit_status", "success", Eq),
        ("start.plan_name=count", "start.plan_name", "count", Eq),
        ("note=a=b", "start.note", "a=b", Eq),  # the first operator splits
    ],
)
def test_terms_become_tiled_queries(term, key, value, kind):
    q = parse_term(term)
    assert isinstance(q, kind)
    assert q.key == key and q.value == value and type(q.value) is type(value)


@pytest.mark.parametrize(("term", "op", "value"), [("num_points>=10", "ge", 10), ("time<5", "lt", 5),
                                                    ("scan_id>3", "gt", 3), ("scan_id<=3", "le", 3)])
def test_comparison_terms(term, op, value):
    q = parse_term(term)
    assert isinstance(q, Comparison) and q.operator == op and q.value == value


@pytest.mark.parametrize(
    ("term", "needle"),
    [("sample.material", "expected KEY=VALUE"), ("=x", "is not a dotted name"),
     ("a..b=x", "is not a dotted name"), ("a b=x", "is not a dotted name"),
     ("plan_name=", "no value after"), ("plan_name=   ", "no value after")],
)
def test_malformed_terms_name_the_problem(term, needle):
    with pytest.raises(QueryError, match=needle) as info:
        parse_term(term)
    assert repr(term) in str(info.value) and "\n" not in str(info.value)


def test_times_and_range():
    assert parse_time("2026-11-26T14:30:00+00:00", "--since") == dt.datetime(
        2026, 11, 26, 14, 30, tzinfo=dt.UTC).timestamp()
    day = parse_time("2026-11-26", "--until")
    assert parse_time("2026-11-26", "--until", end_of_day=True) - day == 86400
    with pytest.raises(QueryError, match="--since: 'yesterday' is not an ISO date"):
        parse_time("yesterday", "--since")
    queries = build_queries(["sample.material=SC-NM91"], since="2026-11-01", until="2026-11-30")
    # only runs with an analysis, then the terms, then since <= start.time < until (end of day)
    assert queries[0].key == "start.experiment" and "frame_series" in queries[0].value
    assert [(q.key, q.operator) for q in queries[2:]] == [("start.time", "ge"), ("start.time", "lt")]
    assert queries[3].value == parse_time("2026-12-01", "x")


@pytest.mark.parametrize(
    ("stored", "force", "action", "detail"),
    [
        (None, False, "new", "new"),
        ({"version": "1", "status": "complete"}, False, "skip", "up to date"),
        ({"version": "1", "status": "complete"}, True, "replace", "replaced v1 (--force)"),
        ({"version": "1", "status": "running"}, False, "resume", "resumed (running v1)"),
        ({"version": "1", "status": "failed"}, False, "resume", "resumed (failed v1)"),
        ({"version": "0", "status": "complete"}, False, "replace", "replaced v0"),
        ({"status": "complete"}, False, "replace", "replaced (no version)"),
        ({"version": "0.9", "status": "running"}, False, "replace", "replaced v0.9"),
        ({"version": "2", "status": "complete"}, False, "skip", "stored v2 is newer than v1 (--force replaces it)"),
        ({"version": "10", "status": "complete"}, False, "skip", "stored v10 is newer than v1 (--force replaces it)"),
    ],
)
def test_version_decisions(stored, force, action, detail):
    assert _decide(stored, "1", force) == (action, detail)
    assert _decide({"version": "2", "status": "complete"}, "10", False)[0] == "replace"  # numeric, not text


def test_the_key_never_shows_but_travels():
    s = _Secret("s3cr3t-key")
    assert "s3cr3t" not in repr(s) and "s3cr3t" not in str(s) and "s3cr3t" not in repr([s, ("u", s)])
    assert pickle.loads(pickle.dumps(s)).value == "s3cr3t-key"


def test_table_shows_status_reason_and_note():
    out = format_table([
        Outcome("u1", "frame_stats", "done", "replaced v0", "1", 4),
        Outcome("u2", "frame_stats", "skipped", "up to date", "1"),
        Outcome("u3", "frame_stats", "failed", "HTTPStatusError: 500", "1"),
    ]).splitlines()
    assert out[0].split() == ["UID", "ANALYSIS", "VERSION", "ROWS", "STATUS", "NOTE"]
    assert out[1].split() == ["u1", "frame_stats", "1", "4", "done", "replaced", "v0"]
    assert "skipped: up to date" in out[2] and out[2].split()[3] == "-"
    assert out[3].rstrip().endswith("failed: HTTPStatusError: 500")


def test_cli_usage_errors_before_any_connection(capsys):
    from strainstream.cli import main as cli_main

    # a malformed term and an empty query are one-line errors, exit 2, before connecting anywhere
    assert cli_main(["reprocess", "sample.material", "--uri", "http://127.0.0.1:9/api/v1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("strainstream reprocess: error: malformed query term 'sample.material'")
    assert len(err.splitlines()) == 1
    assert cli_main(["reprocess", "--uri", "http://127.0.0.1:9/api/v1"]) == 2
    assert "give a QUERY" in capsys.readouterr().err
    assert cli_main(["reprocess", "--all", "--since", "last week", "--uri", "http://127.0.0.1:9/api/v1"]) == 2
    assert "--since: 'last week' is not an ISO date" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])


@pytest.mark.system
@pytest.mark.timeout(300)
def test_a_hung_run_is_reported_and_its_worker_restarted():
    """A 'server' that accepts connections and never answers: the task hangs inside tiled's
    client; after run_timeout_s the batch reports the run failed and goes on."""
    import socket

    from strainstream.reprocess import reprocess

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}/api/v1"
        done = []
        outcomes = reprocess(uri, "k", ["u-hung"], workers=1, force=True, run_timeout_s=3.0,
                             on_done=lambda n, total, o: done.append((n, total)))
    assert [(o.uid, o.status) for o in outcomes] == [("u-hung", "failed")]
    # the guard answered, not tiled's own 30 s read timeout (that would be a ReadTimeout)
    assert "no answer after 3 s" in outcomes[0].detail and done == [(1, 1)]
