"""The live analysis worker: a separate process that follows new runs in tiled.

It subscribes to the catalog root (websocket) for new runs and for their stop documents,
follows each run the router knows (:mod:`strainstream.callbacks.router`) with a
:class:`~strainstream.callbacks.tiled_source.RunFollower`, and writes results to
``derived/<uid>/<analysis>`` through :class:`~strainstream.callbacks.sinks.TiledSink`.

On start-up it also catches up: recent runs whose results are missing or incomplete are
followed from where their result tables stop (after a crash or a SIGKILL nothing is lost
and nothing is analysed twice).

Server restarts: every HTTP request waits out an outage
(:class:`strainstream.transport.OutageTolerantTransport`), and a watchdog thread pings the
server; when it answers again after an outage (or the root subscription died) the worker
subscribes afresh, re-attaches every followed run (back-fill from the stored tables, commit
held-up results, finish runs whose stop document arrived meanwhile) and catches up on runs
created during the outage.

Scale-out: ``Worker(root, shard=(i, n))`` follows only the runs whose uid hashes to shard
``i`` of ``n`` (:func:`shard_of`), also when catching up, so ``n`` workers share the runs and
a restarted worker finishes the runs of its shard.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from strainstream.auth import API_KEY_ENV

__all__ = ["FigureRenderer", "Worker", "parse_shard", "run_worker", "shard_of", "websockets_use_api_key"]

logger = logging.getLogger("strainstream.worker")

#: the variable :func:`strainstream.config.load_config` reads ``worker_shard`` from
SHARD_ENV = "STRAINSTREAM_WORKER_SHARD"


def shard_of(uid: str, n: int) -> int:
    """The shard (0 .. n-1) of a run: a stable hash of its uid (sha1), the same everywhere."""
    return int(hashlib.sha1(uid.encode()).hexdigest(), 16) % n


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with 0 <= I < N; ValueError naming the problem otherwise."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like I/N (e.g. 0/3), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {text!r}: need 0 <= I < N")
    return i, n


class Worker:
    """Follow runs in a tiled catalog and analyse them live.

    Parameters
    ----------
    root : tiled client container
        The catalog root.
    catch_up_s : float
        On start-up, runs started less than this many seconds ago whose results are not
        complete are analysed (from their committed position).
    shard : (int, int), optional
        ``(i, n)``: follow only runs with ``shard_of(uid, n) == i``.
    ping_s : float
        Interval of the watchdog's health check of the server, seconds (0: no watchdog).
    """

    def __init__(self, root, catch_up_s: float = 86400.0, shard: tuple[int, int] | None = None,
                 ping_s: float = 0.5, figures: FigureRenderer | None = None) -> None:
        self.root = root
        self.figures = figures
        self.catch_up_s = catch_up_s
        self.shard = shard
        self.ping_s = ping_s
        self._ping_client = None  # httpx.Client of the watchdog's pings
        self.lock = threading.Lock()
        self.followers: dict[str, Any] = {}
        self.finished: set[str] = set()
        self._root_sub = None
        self._root_lost = threading.Event()
        self.stopped = threading.Event()
        self.outages: list[float] = []  # seconds from the server answering again to re-attached
        self._watchdog: threading.Thread | None = None
        self._warming: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Worker:
        self._warm_up()
        self._warming = threading.Thread(target=self._warm_up_client, args=(self.root,),
                                         name="worker-warm-up", daemon=True)
        self._warming.start()
        self._subscribe_root()
        self.catch_up()
        if self.ping_s > 0:
            self._watchdog = threading.Thread(target=self._watch, name="worker-watchdog", daemon=True)
            self._watchdog.start()
        return self

    def mine(self, uid: str) -> bool:
        """Is this run in the worker's shard?"""
        return self.shard is None or shard_of(uid, self.shard[1]) == self.shard[0]

    def _subscribe_root(self) -> None:
        from strainstream.callbacks.tiled_source import start_subscription

        sub = self.root.subscribe()
        sub.child_created.add_callback(self._on_run_created)
        sub.child_metadata_updated.add_callback(self._on_run_metadata)
        sub.disconnected.add_callback(self._on_root_lost)
        sub.stream_closed.add_callback(self._on_root_lost)
        self._root_lost.clear()
        self._root_sub = sub
        start_subscription(sub, None)  # (a dead or unconnected one is re-attached by _watch)

    def _on_root_lost(self, sub) -> None:
        if sub is self._root_sub and not self.stopped.is_set():
            self._root_lost.set()

    # -- surviving server restarts -------------------------------------------------------
    def _ping(self) -> bool:
        import httpx

        base = str(self.root.context.api_uri).rstrip("/").removesuffix("/api/v1")
        if self._ping_client is None:
            # one client for all pings: a new httpx client builds an SSL context (loads the CA
            # bundle), which cost a quarter of the worker's CPU at one ping every 0.5 s
            self._ping_client = httpx.Client(timeout=2.0, trust_env=False)
        try:
            return self._ping_client.get(f"{base}/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def _watch(self) -> None:
        """Ping the server; after an outage (or a dead root subscription) re-attach everything."""
        try:
            self._watch_loop()
        finally:
            if self._ping_client is not None:
                self._ping_client.close()

    def _watch_loop(self) -> None:
        down_since: float | None = None
        while not self.stopped.wait(self.ping_s):
            up = self._ping()
            thread = getattr(self._root_sub, "_thread", None)
            with self.lock:
                stuck = any(f.needs_reattach.is_set() for f in self.followers.values())
            dead = self._root_lost.is_set() or (thread is not None and not thread.is_alive()) or stuck
            if not up:
                if down_since is None:
                    down_since = time.monotonic()
                    logger.warning("tiled server unreachable; waiting for it to come back")
                continue
            if down_since is None and not dead:
                continue
            back = time.monotonic()
            outage = back - down_since if down_since is not None else 0.0
            try:
                self.reattach()
            except Exception:
                logger.exception("re-attaching after the outage failed; retrying")
                continue
            took = time.monotonic() - back
            self.outages.append(took)
            logger.warning("tiled server back: re-attached %d runs %.2f s after it answered "
                           "again (outage %.1f s)", len(self.followers), took, outage)
            down_since = None

    def reattach(self) -> None:
        """Fresh root subscription, re-attach every followed run, catch up on new runs."""
        from strainstream.callbacks.tiled_source import _disconnect_all

        old = self._root_sub
        self._root_sub = None
        if old is not None:
            _disconnect_all([old])
        self._subscribe_root()
        with self.lock:
            followers = list(self.followers.values())
        for f in followers:
            try:
                f.reattach()
            except Exception:
                logger.exception("run %s: re-attaching failed", f.uid)
        self.catch_up()

    @staticmethod
    def _warm_up() -> None:
        """Import every analysis now, so the first event of the first run pays no imports."""
        import importlib

        import h5py  # noqa: F401  (frames are read from the detectors' HDF5 files)

        from strainstream.callbacks import router, sinks, tiled_source  # noqa: F401

        for specs in router.ANALYSES.values():
            for spec in specs:
                importlib.import_module(spec.partition(":")[0])

    @staticmethod
    def _warm_up_client(root=None) -> None:
        """Import what reading a run's tables imports, in the background while the worker waits
        for runs: tiled's table client imports dask.dataframe (with xarray, pandas, sparse and
        numba: 1.25 s, ≈ 1,400 modules, measured) and dask's compute looks for distributed
        (0.12 s). Before, the first run of a worker paid them between its first event and its
        first result. A run that arrives meanwhile waits only for the rest of an import.
        The analyses' own lazy imports too: ``scipy.stats`` (the SXDM mapper's hot-pixel
        threshold, 0.57 s: the first fly lines of a worker's first SXDM map waited 1–1.3 s for
        their results) and pyFAI's integrator (the XRD integration, 0.39 s)."""
        import importlib

        for name in ("tiled.client.dataframe", "tiled.client.array", "tiled.client.stream",
                     "distributed", "scipy.stats", "pyFAI.integrator.azimuthal"):
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - an optional speed-up; the run imports on demand
                logger.debug("warm-up: importing %s failed", name, exc_info=True)
        if root is not None:  # the results' container, looked up once (not by the first run)
            from strainstream.callbacks.sinks import _derived_node

            try:
                _derived_node(root)
            except Exception:  # noqa: BLE001 - the first run looks it up (and says why)
                logger.debug("warm-up: the derived container", exc_info=True)

    def warmed_up(self, timeout_s: float | None = None) -> bool:
        """Wait until the background warm-up (imports, the results' container) is over."""
        if self._warming is not None:
            self._warming.join(timeout_s)
            return not self._warming.is_alive()
        return True

    def stop(self) -> None:
        self.stopped.set()
        if self.figures is not None:
            self.figures.close()
        if self._root_sub is not None:
            self._root_sub.disconnect(wait=False)
        with self.lock:
            followers = list(self.followers.values())
        for f in followers:
            f.close()

    def catch_up(self) -> None:
        """Follow recent runs whose derived results are missing or incomplete."""
        from tiled.queries import Key

        since = time.time() - self.catch_up_s
        try:
            recent = self.root.search(Key("start.time") > since)
            uids = list(recent)
        except Exception:
            logger.exception("catch-up query failed; falling back to listing the catalog")
            uids = list(self.root)
        for uid in uids:
            if uid == "derived" or uid in self.finished or not self.mine(uid):
                continue
            if self._complete(uid):
                continue
            self.follow(uid)

    def _complete(self, uid: str) -> bool:
        from strainstream.callbacks.router import analyses_for
        from strainstream.callbacks.sinks import DERIVED

        try:
            md = self.root[uid].metadata
            names = [cls.name for cls in analyses_for(md.get("start", {}))]
            if not names:
                return True
            if "stop" not in md:
                return False
            node = self.root[DERIVED][uid]
            return all(n in node and node[n].metadata.get("status") == "complete" for n in names)
        except KeyError:
            return False

    # -- following -----------------------------------------------------------------------
    def follow(self, uid: str, run_node=None) -> None:
        """Follow run ``uid`` (in this worker's shard) until it is analysed.

        ``run_node``: the run's container built from the update announcing its creation: the
        run is new, so its streams and tables come as its subscriptions' child_created updates
        (the follower neither fetches the run nor lists its streams: fewer requests on the
        way to its first result)."""
        from strainstream.callbacks.router import make_callbacks
        from strainstream.callbacks.sinks import TiledSink
        from strainstream.callbacks.tiled_source import RunFollower, SubscriptionNotConnected

        if not self.mine(uid):
            return
        with self.lock:
            if uid in self.followers or uid in self.finished or self.stopped.is_set():
                return

            def factory(start_doc, fallback):
                return make_callbacks(start_doc, lambda name: TiledSink(self.root, uid, name), fallback)

            follower = RunFollower(self.root, uid, factory, on_done=self._on_done, run_node=run_node)
            self.followers[uid] = follower
        try:
            if follower.start():
                logger.info("following run %s", uid)
            else:
                with self.lock:
                    self.followers.pop(uid, None)
                    self.finished.add(uid)
        except SubscriptionNotConnected as exc:
            # the server is going away or overloaded: the watchdog re-attaches once it answers,
            # and the re-attach's catch-up follows this run again (it is not in ``finished``)
            logger.warning("run %s: %s; following it again after a re-attach", uid, exc)
            with self.lock:
                self.followers.pop(uid, None)
            if not self.stopped.is_set():
                self._root_lost.set()
        except Exception:
            logger.exception("run %s: could not be followed", uid)
            with self.lock:
                self.followers.pop(uid, None)

    def _on_done(self, uid: str) -> None:
        with self.lock:
            follower = self.followers.pop(uid, None)
            self.finished.add(uid)
        logger.info("run %s analysed", uid)
        if self.figures is not None and follower is not None:
            self.figures.render(uid, [cb.name for cb in follower.callbacks])

    def _on_run_created(self, update) -> None:
        specs = [getattr(s, "name", s) for s in (update.specs or [])]
        if "BlueskyRun" not in specs:
            return
        from strainstream.callbacks.tiled_source import created_child

        try:
            self.follow(update.key, run_node=created_child(update))
        except Exception:
            logger.exception("run %s: follow failed", update.key)

    def _on_run_metadata(self, update) -> None:
        md = getattr(update, "metadata", None) or {}
        if "stop" not in md:
            return
        with self.lock:
            follower = self.followers.get(update.key)
            retry = follower is None and update.key not in self.finished
        if retry:  # a run that could not be followed when it started: analyse it now it is done
            self.follow(update.key)
            return
        if follower is not None:
            try:
                follower.finish(dict(md["stop"]))
            except Exception:
                logger.exception("run %s: finishing failed", update.key)


def websockets_use_api_key(client) -> None:
    """Authenticate tiled websocket subscriptions of ``client`` with its own API key.

    With an authentication provider configured (multi-user tiled), tiled's client mints a
    short-lived API key for every websocket it opens (two extra requests per subscription,
    and the key needs the ``create:apikeys`` scope). A client that already holds an API key
    can present that key directly, as tiled's websocket endpoint accepts it.
    """
    ctx = client.context
    if not ctx.api_key:
        return
    info = ctx.server_info
    if info.authentication.providers:
        ctx.server_info = info.model_copy(
            update={"authentication": info.authentication.model_copy(update={"providers": []})})


#: how tiled's subscription threads end when we close them (not errors): a subscription
#: dropped while tiled's client was reconnecting it ("Cannot be restarted once stopped"), and
#: one whose server closed the stream while we disconnected it (tiled 0.2.20 then submits the
#: stream-closed callback to the executor its disconnect has just shut down)
_SUBSCRIPTION_ENDINGS = ("once stopped", "cannot schedule new futures after shutdown")


def _quiet_dropped_subscriptions() -> None:
    """Log the expected ends of tiled's subscription threads at debug level instead of
    printing a traceback (see :data:`_SUBSCRIPTION_ENDINGS`)."""
    previous = threading.excepthook

    def hook(args) -> None:
        name = getattr(args.thread, "name", "") or ""
        if name.startswith("tiled-subscription") and isinstance(args.exc_value, RuntimeError) \
                and any(text in str(args.exc_value) for text in _SUBSCRIPTION_ENDINGS):
            logger.debug("subscription thread %s ended: %s", name, args.exc_value)
            return
        previous(args)

    threading.excepthook = hook


class FigureRenderer:
    """Draw the figures of every analysed run once, in a low-priority child process.

    When a run is analysed, ``strainstream plot UID --uri URI --out DIR/`` runs at nice 10
    (the key in ``$STRAINSTREAM_API_KEY``, never on the command line). It writes
    ``DIR/UID8_ANALYSIS.png`` with the digest of the results it drew
    (:func:`strainstream.callbacks.plots.figure_key`), so a user's ``strainstream plot`` of
    the finished run finds it and answers without drawing (0.45 s instead of 1.3–2.3 s,
    measured). A child still drawing 3 s after the worker is asked to stop is terminated:
    the user's own ``plot`` then draws. Failures are the user's ``plot``'s to report (the
    child is silent). ``plot`` creates ``DIR`` when it writes the first figure.
    """

    def __init__(self, uri: str, api_key: str, out_dir: str | os.PathLike) -> None:
        self.uri, self.api_key, self.out_dir = uri, api_key, os.fspath(out_dir)
        self._children: list[subprocess.Popen] = []
        self._lock = threading.Lock()

    def render(self, uid: str, analyses: list[str]) -> subprocess.Popen | None:
        """Start drawing run ``uid``'s figures (None: none of ``analyses`` has a figure)."""
        from strainstream.callbacks.plots import FIGURES
        from strainstream.config import process_environment

        if not any(name in FIGURES for name in analyses):
            return None
        cmd = [sys.executable, "-m", "strainstream.cli", "plot", uid, "--uri", self.uri,
               "--out", os.path.join(self.out_dir, "")]
        with self._lock:
            self._children = [p for p in self._children if p.poll() is None]
            child = subprocess.Popen(cmd, env=process_environment({API_KEY_ENV: self.api_key}),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=lambda: os.nice(10))
            self._children.append(child)
        return child

    def close(self, grace_s: float = 3.0, timeout_s: float = 5.0) -> None:
        """Let children finish for up to ``grace_s``, then terminate (kill after ``timeout_s``)."""
        with self._lock:
            children, self._children = self._children, []
        deadline = time.monotonic() + grace_s
        for child in children:
            try:
                child.wait(max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout_s)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


#: how long ``run_worker`` waits for the warm-up before it says ready, s
WARM_UP_WAIT_S = 20.0


def run_worker(uri: str, api_key: str, catch_up_s: float = 86400.0, ready_file: str | None = None,
               shard: tuple[int, int] | str | None = None, max_outage_s: float = 3600.0,
               figures_dir: str | os.PathLike | None = None) -> int:
    """Run a worker until SIGINT/SIGTERM. Returns the exit code.

    ``shard`` is ``(i, n)`` or ``"i/n"``; default the configuration's ``worker_shard``
    (``$STRAINSTREAM_WORKER_SHARD``, see :mod:`strainstream.config`) or all runs.
    ``figures_dir``: draw each analysed run's figures there (:class:`FigureRenderer`).
    """
    from strainstream.client import connect
    from strainstream.config import load_config
    from strainstream.transport import tolerate_outages

    if shard is None:
        shard = load_config().shard()
    if isinstance(shard, str):
        shard = parse_shard(shard)
    root = connect(uri, api_key, plain=True)  # runs as plain containers: no BlueskyRun imports
    _quiet_dropped_subscriptions()
    websockets_use_api_key(root)
    tolerate_outages(root, max_outage_s=max_outage_s)
    figures = FigureRenderer(uri, api_key, figures_dir) if figures_dir else None
    worker = Worker(root, catch_up_s=catch_up_s, shard=shard, figures=figures).start()
    # ready once warm: a run started at "ready" would share the CPU with ~1.3 s of imports
    # (measured: first result of a 5-event 512² run 314-353 ms after a warm start, 670-760 ms
    # when the run began during the warm-up). Runs that come meanwhile are already followed.
    worker.warmed_up(WARM_UP_WAIT_S)
    logger.info("worker ready, following %s%s", uri, f" (shard {shard[0]}/{shard[1]})" if shard else "")
    if ready_file:
        with open(ready_file, "w") as f:
            f.write("ready\n")

    def _stop(signum, frame):
        worker.stopped.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not worker.stopped.wait(0.5):
        pass
    worker.stop()
    return 0
