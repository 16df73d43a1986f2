"""The worker's subscription threads end without a traceback when it shuts down (#21)."""

from __future__ import annotations

import threading


def _raise_in_thread(name: str, exc: BaseException) -> None:
    def boom():
        raise exc

    t = threading.Thread(target=boom, name=name)
    t.start()
    t.join()


def test_expected_subscription_endings_are_quiet_others_are_not(monkeypatch, capsys):
    from strainstream.worker import _quiet_dropped_subscriptions

    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)
    _quiet_dropped_subscriptions()
    _raise_in_thread("tiled-subscription-ws://x", RuntimeError("cannot schedule new futures after shutdown"))
    _raise_in_thread("tiled-subscription-ws://x", RuntimeError("Cannot be restarted once stopped"))
    assert capsys.readouterr().err == ""
    _raise_in_thread("tiled-subscription-ws://x", RuntimeError("something else"))
    _raise_in_thread("other-thread", RuntimeError("cannot schedule new futures after shutdown"))
    err = capsys.readouterr().err
    assert err.count("Traceback") == 2 and "something else" in err
