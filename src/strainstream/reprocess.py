"""Batch reprocessing of archived runs with Dask: ``strainstream reprocess QUERY``.

Every matching run is replayed from the catalog through the callbacks of its analyses (the
live worker's and ``strainstream replay``'s code, :func:`strainstream.replay.replay_into`)
and its results are written back with the live worker's sink
(:class:`~strainstream.callbacks.sinks.TiledSink`) at ``derived/<uid>/<analysis>``, so
``strainstream results``, plots and the live worker find them where they always are. One
Dask task reprocesses one run; a failing run is reported and the batch goes on.

Query
-----
``QUERY`` is zero or more terms on the run's start document, all AND-ed::

    plan_name=count  sample.material=SC-NM91  num_points>=10  experiment!=sxdm

- ``KEY OP VALUE`` with OP one of ``=`` (or ``==``), ``!=``, ``<``, ``<=``, ``>``, ``>=``.
- KEY is a dotted path into the start document (``sample.material``); ``start.`` may be
  written out, and ``stop.KEY`` looks into the stop document (``stop.exit_status=success``).
  Key segments are letters, digits, ``_`` and ``-``. A key no run has matches nothing.
- VALUE is read as JSON when it is a number, ``true``, ``false`` or ``null``, or a quoted
  string (``"8"`` is the string 8); anything else is the literal string.
- ``--since`` / ``--until`` (ISO 8601 date or date-time; no offset means local time) bound the
  run's ``start.time``: ``since <= time < until``; a bare ``--until`` date includes that day.
- ``--uid U ...`` keeps only these runs (a unique prefix of 6+ characters is accepted),
  ``--limit N`` the N oldest matches. Only runs with a strainstream analysis match.

Versions and idempotency
------------------------
Each analysis has a ``version``; its results table records it in its metadata. For each
analysis of a matching run:

- no stored results → computed and stored;
- stored, same version, ``status == "complete"`` → **skipped: up to date** (nothing is
  written, not even metadata);
- stored, same version, not complete (a crash, a failed earlier reprocess) → continued after
  the committed rows, exactly as the live worker resumes (no row twice);
- stored from another (older) version, or ``--force`` → **replaced**: the old table and its
  arrays are deleted and the results written anew at the same place; the new table's
  metadata keeps ``replaced: {version, status, n_rows, finished}`` of what it replaced.
  (Stored results from a *newer* version than the code are left alone unless ``--force``.)

Runs still being recorded (no stop document) are skipped: the live worker owns them. Do not
run two reprocess batches over the same runs at the same time.

Execution
---------
A ``distributed.LocalCluster`` of ``--workers N`` single-threaded processes (default 2), or
an existing cluster with ``--scheduler ADDRESS`` (its workers need strainstream installed and
must reach the tiled server; they read detector files directly when they see the same
filesystem, else through tiled). ``--workers 0`` runs the runs one after the other in this
process, without Dask. The API key travels to the tasks wrapped so that it never appears in
a repr, a log line or Dask's task listing. Runs with nothing to do are answered without a
task (a batch that is all up to date starts no cluster). A run whose task has not answered
``--run-timeout`` seconds after a worker took it is reported failed and that worker
restarted, so one hung run cannot stall the batch.

Progress (runs done / total) goes to stderr; the final table (uid, analysis, version, rows,
status ``done`` / ``skipped: up to date`` / ``failed: reason``, note) to stdout, or one JSON
list with ``--json``. Exit status: 0 when nothing failed (also when nothing matched), 1 when
a run failed, 2 for a usage error.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from strainstream.errors import StrainstreamError

__all__ = [
    "Outcome",
    "QueryError",
    "ReprocessError",
    "build_queries",
    "find_runs",
    "format_table",
    "parse_term",
    "reprocess",
    "reprocess_run",
    "reprocess_task",
    "settled",
]

logger = logging.getLogger("strainstream.reprocess")

#: result rows are committed in appends of this many events (the live worker's back-fill
#: batches too); a crash loses at most this many rows of work, never stored rows
COMMIT_EVERY = 100
_OPERATORS = ("==", "!=", "<=", ">=", "=", "<", ">")
_TERM = re.compile(r"^(?P<key>[^=!<>]*)(?P<op>==|!=|<=|>=|=|<|>)(?P<value>.*)$", re.S)
_KEY = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_REASON_CHARS = 200


class ReprocessError(StrainstreamError):
    """A problem the user can fix (bad option, unreachable scheduler): one line, exit 2."""


class QueryError(ReprocessError, ValueError):
    """A malformed query term or date."""


# -- outcomes ----------------------------------------------------------------------------
@dataclass
class Outcome:
    """What happened to one analysis of one run.

    ``status`` is ``done``, ``skipped`` or ``failed``; ``detail`` says why (skipped/failed)
    or what was done (``new``, ``replaced v0``, ``resumed after 3 rows``).
    """

    uid: str
    analysis: str
    status: str
    detail: str = ""
    version: str | None = None
    n_rows: int | None = None
    seconds: float = 0.0

    @property
    def label(self) -> str:
        """The table's status cell: ``done``, ``skipped: up to date``, ``failed: reason``."""
        return self.status if self.status == "done" else f"{self.status}: {self.detail}"


# -- query --------------------------------------------------------------------------------
def _value(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, int | float | bool) or value is None else text


def parse_term(term: str):
    """One ``KEY OP VALUE`` term → a tiled query (see the module docstring).

    Raises
    ------
    QueryError
        The term is not ``KEY OP VALUE`` or the key is not a dotted name.
    """
    from tiled.queries import Key

    m = _TERM.match(term)
    if m is None:
        raise QueryError(f"malformed query term {term!r}: expected KEY=VALUE "
                         f"(or KEY!=VALUE, <, <=, >, >=), e.g. sample.material=SC-NM91")
    key, op, raw = m["key"].strip(), m["op"], m["value"]
    if not _KEY.match(key):
        raise QueryError(f"malformed query term {term!r}: the key {key!r} is not a dotted name "
                         "(letters, digits, _ and - separated by dots)")
    if not raw.strip():
        raise QueryError(f"malformed query term {term!r}: no value after {op!r} "
                         "(write KEY=\"\" for an empty string)")
    if not key.startswith(("start.", "stop.")):
        key = f"start.{key}"
    k, v = Key(key), _value(raw)
    try:
        return {"=": k == v, "==": k == v, "!=": k != v, "<": k < v, "<=": k <= v, ">": k > v,
                ">=": k >= v}[op]
    except (TypeError, ValueError) as exc:
        raise QueryError(f"malformed query term {term!r}: {exc}") from None


def parse_time(text: str, name: str, end_of_day: bool = False) -> float:
    """An ISO 8601 date or date-time → POSIX seconds (no offset: local time).

    ``end_of_day``: a bare date means the midnight that ends it (for ``--until``).
    """
    text = text.strip()
    try:
        when = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(f"{name}: {text!r} is not an ISO date or date-time "
                         "(e.g. 2026-11-26 or 2026-11-26T14:30 or 2026-11-26T14:30+01:00)") from None
    if end_of_day and re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        when += _dt.timedelta(days=1)
    return when.timestamp()


def build_queries(terms: Sequence[str], since: str | None = None, until: str | None = None) -> list:
    """The tiled queries for ``terms`` and the time range (AND-ed by chained ``search``)."""
    from tiled.queries import In, Key

    from strainstream.callbacks.router import ANALYSES

    queries = [In("start.experiment", sorted(ANALYSES))]
    queries += [parse_term(t) for t in terms]
    if since is not None:
        queries.append(Key("start.time") >= parse_time(since, "--since"))
    if until is not None:
        queries.append(Key("start.time") < parse_time(until, "--until", end_of_day=True))
    return queries


def find_runs(root, terms: Sequence[str] = (), since: str | None = None, until: str | None = None,
              uids: Sequence[str] | None = None, limit: int | None = None) -> tuple[list[str], list[str]]:
    """uids of the runs matching the query, oldest first; and the ``uids`` that matched none.

    Parameters
    ----------
    root : tiled client container
        The catalog root.
    terms, since, until : see the module docstring.
    uids : sequence of str, optional
        Keep only these runs (full uids or unique prefixes of 6+ characters).
    limit : int, optional
        At most this many runs (the oldest).
    """
    results = root
    for q in build_queries(terms, since, until):
        results = results.search(q)
    results = results.sort(("start.time", 1))
    if not uids:
        keys = []
        for key in results.keys():
            keys.append(key)
            if limit is not None and len(keys) >= limit:
                break
        return keys, []
    wanted: dict[str, list[str]] = {u: [] for u in uids}
    keys = []
    for key in results.keys():
        hits = [u for u in wanted if key == u or (len(u) >= 6 and key.startswith(u))]
        for u in hits:
            wanted[u].append(key)
        if hits:
            keys.append(key)
    for u, ks in wanted.items():
        if len(ks) > 1 and u not in ks:
            raise QueryError(f"--uid {u} is ambiguous: {len(ks)} matching runs start with it")
    unmatched = [u for u, ks in wanted.items() if not ks]
    return (keys[:limit] if limit is not None else keys), unmatched


# -- one run --------------------------------------------------------------------------------
def _version_key(version: str | None) -> tuple:
    parts = re.findall(r"\d+|[A-Za-z]+", str(version or ""))
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def _decide(stored: dict[str, Any] | None, version: str, force: bool) -> tuple[str, str]:
    """(action, detail): action in new / replace / resume / skip."""
    if stored is None:
        return "new", "new"
    if stored.get("version") in (None, ""):
        return "replace", "replaced (no version)"
    old = str(stored.get("version"))
    if force:
        return "replace", f"replaced v{old} (--force)"
    if old == str(version):
        if stored.get("status") == "complete":
            return "skip", "up to date"
        return "resume", f"resumed ({stored.get('status', 'unknown')} v{old})"
    if _version_key(old) > _version_key(version):
        return "skip", f"stored v{old} is newer than v{version} (--force replaces it)"
    return "replace", f"replaced v{old}"


def _reason(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 1] + "…"


def reprocess_run(root, uid: str, force: bool = False, commit_every: int = COMMIT_EVERY,
                  overrides: dict[str, Any] | None = None, root_map: dict[str, str] | None = None
                  ) -> list[Outcome]:
    """Reprocess one archived run in this process; never raises for a broken run.

    ``overrides`` (``experiment``, ``calibration``, ``fields``) and ``root_map`` analyse a
    run recorded elsewhere (:func:`strainstream.replay.replay_documents`).

    Returns one :class:`Outcome` per analysis of the run (see the module docstring for
    what is skipped, continued or replaced).
    """
    from strainstream.callbacks.router import analyses_for
    from strainstream.callbacks.sinks import TiledSink, delete_results, stored_results_metadata
    from strainstream.replay import replay_into

    t0 = time.perf_counter()
    try:
        run = root[uid]
        md = run.metadata
        from strainstream.rundesc import apply_overrides

        start = apply_overrides(dict(md["start"]), overrides)
        classes = analyses_for(start)
    except Exception as exc:
        return [Outcome(uid, "-", "failed", _reason(exc), seconds=time.perf_counter() - t0)]
    if not classes:
        return [Outcome(uid, "-", "skipped", f"no strainstream analysis for experiment={start.get('experiment')!r}")]
    if "stop" not in md or not md.get("stop"):
        return [Outcome(uid, cls.name, "skipped", "run not finished (the live worker analyses it)",
                        cls.version) for cls in classes]

    outcomes: dict[str, Outcome] = {}
    todo: dict[str, dict[str, Any]] = {}  # analysis -> extra metadata for its new table
    for cls in classes:
        try:
            stored = stored_results_metadata(root, uid, cls.name)
            action, detail = _decide(stored, cls.version, force)
            if action == "replace":
                delete_results(root, uid, cls.name)
                todo[cls.name] = {"replaced": {
                    "version": stored.get("version"), "status": stored.get("status"),
                    "finished": stored.get("finished"), "summary": stored.get("summary")}}
            elif action in ("new", "resume"):
                todo[cls.name] = {}
            outcomes[cls.name] = Outcome(uid, cls.name, "skipped" if action == "skip" else "done", detail,
                                         cls.version)
        except Exception as exc:
            outcomes[cls.name] = Outcome(uid, cls.name, "failed", _reason(exc), cls.version)
    if todo:
        try:
            callbacks = replay_into(
                run, lambda name: TiledSink(root, uid, name, extra_metadata=todo.get(name)),
                only=set(todo), commit_every=commit_every, overrides=overrides, root_map=root_map)
            for cb in callbacks:
                outcomes[cb.name].n_rows = len(cb.rows)
        except Exception as exc:
            reason = _reason(exc)
            logger.info("run %s: reprocessing failed: %s", uid, reason)
            for name in todo:
                outcomes[name].status, outcomes[name].detail = "failed", reason
                _mark_failed(root, uid, name, reason)
    elapsed = time.perf_counter() - t0
    for o in outcomes.values():
        o.seconds = elapsed
    return [outcomes[cls.name] for cls in classes]


def settled(root, uid: str) -> list[Outcome] | None:
    """The skipped outcomes of run ``uid`` when it needs no work, else None.

    No work: every analysis is up to date (or stored from a newer version), or the run is not
    finished, or it has no analysis. Lets a batch leave settled runs out before it starts a
    cluster; the task decides again for the runs it gets.
    """
    from strainstream.callbacks.router import analyses_for
    from strainstream.callbacks.sinks import stored_results_metadata

    try:
        md = root[uid].metadata
        classes = analyses_for(dict(md["start"]))
        if not classes or not md.get("stop"):
            return reprocess_run(root, uid)  # answers at once, writes nothing
        outcomes = []
        for cls in classes:
            action, detail = _decide(stored_results_metadata(root, uid, cls.name), cls.version, False)
            if action != "skip":
                return None
            outcomes.append(Outcome(uid, cls.name, "skipped", detail, cls.version))
        return outcomes
    except Exception:  # let the task find and report the problem
        return None


def _mark_failed(root, uid: str, analysis: str, reason: str) -> None:
    """Best effort: the results table says it failed and why (the next reprocess resumes it)."""
    from strainstream.callbacks.sinks import DERIVED

    try:
        node = root[DERIVED][uid][analysis]
        node.update_metadata({"status": "failed", "error": reason})
    except Exception:
        logger.debug("run %s/%s: could not mark the results failed", uid, analysis, exc_info=True)


# -- Dask task ------------------------------------------------------------------------------
class _Secret:
    """An API key that never shows in a repr (Dask's task listings, tracebacks, logs)."""

    __slots__ = ("value",)

    def __init__(self, value: str | None) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "_Secret('***')"

    __str__ = __repr__

    def __getstate__(self):
        return self.value

    def __setstate__(self, state) -> None:
        self.value = state


_CLIENTS: dict[tuple[str, str], Any] = {}


def _client(uri: str, api_key: _Secret):
    """One tiled client per (uri, key) per worker process, reused by its tasks."""
    from strainstream.client import connect

    ident = (uri, hashlib.sha256((api_key.value or "").encode()).hexdigest())
    root = _CLIENTS.get(ident)
    if root is None:
        root = _CLIENTS[ident] = connect(uri, api_key.value)
    return root


def reprocess_task(uri: str, api_key: _Secret, uid: str, force: bool = False,
                   commit_every: int = COMMIT_EVERY, overrides: dict[str, Any] | None = None,
                   root_map: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The Dask task: reprocess run ``uid`` of the tiled server at ``uri`` (outcomes as dicts).

    tiled's array client computes with dask: inside a Dask worker that would send each frame
    read back to the cluster as a task of its own, so the task computes locally instead.
    """
    import dask

    t0 = time.perf_counter()
    with dask.config.set(scheduler="synchronous"):
        try:
            root = _client(uri, api_key)
        except Exception as exc:
            return [asdict(Outcome(uid, "-", "failed", _reason(exc), seconds=time.perf_counter() - t0))]
        return [asdict(o) for o in reprocess_run(root, uid, force=force, commit_every=commit_every,
                                                 overrides=overrides, root_map=root_map)]


# -- the batch -------------------------------------------------------------------------------
@contextlib.contextmanager
def dask_client(workers: int = 2, scheduler: str | None = None):
    """A ``distributed.Client``: on ``scheduler``, else on a new loopback LocalCluster."""
    from distributed import Client, LocalCluster

    # distributed's import sets its logger to INFO (its config's ``logging: distributed: info``)
    # and, when the root logger already has a handler (the CLI's), adds none of its own: every
    # INFO line, and the traceback it logs at INFO when a worker's comm closes at shutdown,
    # would reach the CLI's stderr. Level set here, after that import.
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("distributed").setLevel(logging.ERROR)
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ReprocessError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        with client:
            yield client
        return
    # the workers' own logs: CRITICAL only. A task's failure reaches this process through its
    # future (and becomes the run's outcome); what a worker logs at ERROR is its shutdown race
    # ("Failed to communicate with scheduler during heartbeat" + a CommClosedError traceback
    # when the scheduler closes first: seen in CI on the user's stderr)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        yield client


def reprocess(uri: str, api_key: str | None, uids: Sequence[str], *, workers: int = 2,
              scheduler: str | None = None, force: bool = False, commit_every: int = COMMIT_EVERY,
              on_done: Callable[[int, int, list[Outcome]], None] | None = None,
              client=None, run_timeout_s: float | None = 1800.0,
              overrides: dict[str, Any] | None = None, root_map: dict[str, str] | None = None
              ) -> list[Outcome]:
    """Reprocess runs ``uids`` of the tiled server at ``uri``, one Dask task per run
    (``overrides``, ``root_map``: see :func:`reprocess_run`).

    Parameters
    ----------
    uri, api_key : str
        The tiled server and a key that may write.
    uids : sequence of str
        Runs to reprocess (see :func:`find_runs`). Runs with nothing to do (see
        :func:`settled`) are reported skipped without a task; when no run needs work no
        cluster is started.
    workers : int
        Processes of the LocalCluster (ignored with ``scheduler`` or ``client``); 0: no
        Dask, the runs one after the other in this process.
    scheduler : str, optional
        Address of an existing Dask scheduler.
    force : bool
        Replace results even when they are up to date.
    on_done : callable, optional
        ``(n_done, n_total, outcomes_of_that_run)`` after each run (progress).
    client : distributed.Client, optional
        Use this client (and its cluster) instead of making one.
    run_timeout_s : float, optional
        A run whose task has not answered after this many seconds on a worker is reported
        failed and its worker restarted (Dask only; None: wait forever).

    Returns
    -------
    list of Outcome
        In the order of ``uids``.
    """
    total = len(uids)
    by_uid: dict[str, list[Outcome]] = {}

    def record(uid: str, outcomes: list[Outcome]) -> None:
        by_uid[uid] = outcomes
        if on_done is not None:
            on_done(len(by_uid), total, outcomes)

    if not uids:
        return []
    from strainstream.client import connect

    root = connect(uri, api_key) if not force or (client is None and scheduler is None and workers == 0) else None
    todo = list(uids)
    if not force:  # settled runs need no task (and an all-settled batch no cluster)
        todo = []
        for uid in uids:
            outcomes = settled(root, uid)
            if outcomes is None:
                todo.append(uid)
            else:
                record(uid, outcomes)
    if not todo:
        pass
    elif client is None and scheduler is None and workers == 0:
        for uid in todo:
            record(uid, reprocess_run(root, uid, force=force, commit_every=commit_every,
                                      overrides=overrides, root_map=root_map))
    else:
        with contextlib.ExitStack() as stack:
            if client is None:
                client = stack.enter_context(dask_client(workers, scheduler))
            _run_on(client, uri, _Secret(api_key), todo, force, commit_every, record, run_timeout_s,
                    overrides=overrides, root_map=root_map)
    return [o for uid in uids for o in by_uid[uid]]


def _run_on(client, uri: str, key: _Secret, uids: Sequence[str], force: bool, commit_every: int,
            record: Callable[[str, list[Outcome]], None], run_timeout_s: float | None = None, *,
            overrides: dict[str, Any] | None = None, root_map: dict[str, str] | None = None) -> None:
    """Submit one task per run; record each as it completes.

    A task that runs longer than ``run_timeout_s`` (counted from when a worker took it) is
    reported failed and its worker process restarted (the other tasks it held run again
    elsewhere: reprocessing is idempotent), so one hung run cannot stall the batch.
    """
    from distributed import wait

    futures = {}
    for uid in uids:
        fut = client.submit(reprocess_task, uri, key, uid, force, commit_every, overrides, root_map,
                            key=f"strainstream-reprocess-{uid}-{time.time_ns()}", pure=False)
        futures[fut] = uid
    pending = set(futures)
    taken: dict[str, float] = {}  # task key -> when a worker was first seen processing it
    while pending:
        try:
            done, _ = wait(list(pending), timeout=2.0, return_when="FIRST_COMPLETED")
        except TimeoutError:
            done = set()
        for fut in done:
            pending.discard(fut)
            uid = futures[fut]
            try:
                outcomes = [Outcome(**d) for d in fut.result()]
            except Exception as exc:  # the worker process died (KilledWorker) or the task could not run
                outcomes = [Outcome(uid, "-", "failed", _reason(exc))]
            record(uid, outcomes)
        if run_timeout_s is None or not pending:
            continue
        now = time.monotonic()
        try:
            processing = client.processing()
        except Exception:  # the scheduler is busy or gone: try again on the next round
            logger.debug("could not ask the scheduler what is processing", exc_info=True)
            continue
        where = {k: w for w, keys in processing.items() for k in keys}
        for fut in list(pending):
            worker = where.get(fut.key)
            if worker is None:
                taken.pop(fut.key, None)
                continue
            if now - taken.setdefault(fut.key, now) <= run_timeout_s:
                continue
            pending.discard(fut)
            uid = futures[fut]
            record(uid, [Outcome(uid, "-", "failed", f"no answer after {run_timeout_s:.0f} s "
                                 "(--run-timeout); its Dask worker was restarted")])
            fut.cancel()
            for k, w in where.items():
                if w == worker:
                    taken.pop(k, None)
            try:
                client.restart_workers([worker], raise_for_error=False)
            except Exception:
                logger.warning("could not restart Dask worker %s", worker, exc_info=True)


def format_table(outcomes: Sequence[Outcome]) -> str:
    """The final table: uid, analysis, version, rows, status, note."""
    header = ("UID", "ANALYSIS", "VERSION", "ROWS", "STATUS", "NOTE")
    rows = []
    for o in outcomes:
        note = o.detail if o.status == "done" else ""
        rows.append((o.uid, o.analysis, o.version or "-", "-" if o.n_rows is None else str(o.n_rows),
                     o.label, note))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)
