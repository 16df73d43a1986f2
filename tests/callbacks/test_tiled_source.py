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
