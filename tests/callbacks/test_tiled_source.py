"""RunFollower's subscriptions: one that never connects must not hang the follower.

tiled's ``Subscription.start_in_thread`` waits without a timeout for the websocket; when
its thread dies on the way (HTTP 500 on the handshake while the server shuts down — seen in
CI: the worker subscribed to a new stream as the server was restarted) it waits forever,
and the worker held the run's lock for good (0 of 93 events analysed). Known answers: the
start gives up after its timeout with SubscriptionNotConnected, and the follower flags
itself for the worker's re-attach; a subscription that connects starts as before.
"""

from __future__ import annotations

import threading
import time

import pytest

from strainstream.callbacks.tiled_source import (
    RunFollower,
    SubscriptionNotConnected,
    start_subscription,
)


class _NeverConnects:
    _uri = "ws://127.0.0.1:1/api/v1/stream/single/run/primary"

    def __init__(self) -> None:
        self.release = threading.Event()

    def start_in_thread(self, start=None):
        self.release.wait()  # tiled: _connected_event.wait() after its thread died
        return self


class _Connects:
    def __init__(self) -> None:
        self.started_from = "not started"

    def start_in_thread(self, start=None):
        self.started_from = start
        return self


def test_a_subscription_that_never_connects_gives_up():
    sub = _NeverConnects()
    t0 = time.monotonic()
    with pytest.raises(SubscriptionNotConnected, match="primary.*not connected after 0.3 s"):
        start_subscription(sub, 0, timeout_s=0.3)
    assert time.monotonic() - t0 < 2.0
    sub.release.set()
    ok = _Connects()
    start_subscription(ok, 5, timeout_s=5.0)
    assert ok.started_from == 5


def test_the_follower_flags_itself_for_a_reattach(monkeypatch):
    import strainstream.callbacks.tiled_source as ts

    monkeypatch.setattr(ts.start_subscription, "__defaults__", (0, 0.2))
    follower = RunFollower.__new__(RunFollower)  # only what _start needs
    follower.needs_reattach = threading.Event()
    sub = _NeverConnects()
    with pytest.raises(SubscriptionNotConnected):
        follower._start(sub)
    assert follower.needs_reattach.is_set()
    sub.release.set()
    follower.needs_reattach.clear()
    follower._start(_Connects())
    assert not follower.needs_reattach.is_set()


def test_a_run_whose_first_subscription_fails_is_followed_after_the_reattach(monkeypatch):
    """Worker.follow: the run's own subscription does not connect → the run is not dropped
    (not in ``finished``) and the watchdog is asked for a re-attach, whose catch-up follows
    it again; any other failure still drops it with a logged traceback."""
    import strainstream.callbacks.tiled_source as ts
    from strainstream.worker import Worker

    def fails(self):
        raise SubscriptionNotConnected("ws://x/run not connected after 20 s")

    monkeypatch.setattr(ts.RunFollower, "__init__", lambda self, root, uid, factory, on_done, run_node=None: None)
    monkeypatch.setattr(ts.RunFollower, "start", fails)
    worker = Worker(root=object(), ping_s=0)
    worker.follow("run-a")
    assert worker._root_lost.is_set()
    assert "run-a" not in worker.followers and "run-a" not in worker.finished

    started = []
    monkeypatch.setattr(ts.RunFollower, "start", lambda self: started.append(1) or True)
    worker._root_lost.clear()
    worker.follow("run-a")  # what the re-attach's catch-up does
    assert started == [1] and "run-a" in worker.followers and not worker._root_lost.is_set()

    monkeypatch.setattr(ts.RunFollower, "start", lambda self: 1 / 0)
    worker.follow("run-b")
    assert not worker._root_lost.is_set() and "run-b" not in worker.followers
