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


def test_the_watchdog_pings_through_one_http_client(monkeypatch):
    """The worker pings the server every 0.5 s; a new httpx client per ping builds an SSL
    context each time (a quarter of the worker's CPU during a fly scan). One client serves
    all pings, and a server that does not answer is reported, not raised."""
    import types

    import httpx

    from strainstream.worker import Worker

    made, asked = [], []

    class Client:
        def __init__(self, **kwargs):
            made.append(kwargs)

        def get(self, url):
            asked.append(url)
            if len(asked) == 3:
                raise httpx.ConnectError("refused")
            return types.SimpleNamespace(status_code=200)

    monkeypatch.setattr(httpx, "Client", Client)
    worker = types.SimpleNamespace(
        root=types.SimpleNamespace(context=types.SimpleNamespace(api_uri="http://127.0.0.1:8000/api/v1/")),
        _ping_client=None)
    results = [Worker._ping(worker) for _ in range(4)]
    assert results == [True, True, False, True]
    assert len(made) == 1 and asked == ["http://127.0.0.1:8000/healthz"] * 4


def test_the_warm_up_imports_what_the_analyses_import_lazily():
    """A fresh interpreter: after the worker's warm-up, the analyses' lazy imports (the SXDM
    mapper's scipy.stats, the XRD integration's pyFAI) are in, so the first run of a worker
    does not wait for them (0.57 s and 0.39 s measured)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from strainstream.worker import Worker\n"
            "lazy = ('scipy.stats', 'pyFAI.integrator.azimuthal')\n"
            "before = [m in sys.modules for m in lazy]\n"
            "Worker._warm_up(); Worker._warm_up_client()\n"
            "print(before, [m in sys.modules for m in lazy])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split("\n")[-2] == "[False, False] [True, True]", out.stdout + out.stderr
