"""An HTTP transport that waits out tiled server outages instead of failing.

Used by the RunEngine's writer (:mod:`strainstream.session`) and by the analysis worker
(:mod:`strainstream.worker`): while the server restarts, requests wait and retry with
backoff; nothing is lost and nobody fails.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from strainstream.errors import StrainstreamError

__all__ = ["OutageTolerantTransport", "TiledUnreachable", "tolerate_outages"]

#: HTTP statuses meaning "the server did not process the request; try again later"
_UNAVAILABLE = {503}


class TiledUnreachable(StrainstreamError, ConnectionError):
    """The tiled server has been unreachable for longer than the transport waits.

    Deliberately not an ``httpx.HTTPError``: tiled's client retries those (10 attempts within
    45 s) and the writer would retry them again, so each document of a long outage would
    wait minutes before going to the spool. This error is final for the request.
    """


class OutageTolerantTransport:
    """An httpx transport wrapper that waits for an unreachable server instead of failing.

    Only failures that prove the server did not process the request are retried here:
    connection errors (refused, reset before sending) and HTTP 503. They are retried with
    exponential backoff (0.1 s doubling to ``max_backoff_s``) until the *outage* (not the
    request) has lasted ``max_outage_s``; then :class:`TiledUnreachable` is raised, and every
    later request of the same outage is tried once and fails at once (the documents of a
    run during a long outage go to the spool one after another, not ``max_outage_s`` each). Failures after the request was sent (read errors and
    timeouts, other 5xx) go up to tiled's client, which retries idempotent requests and
    adopts nodes whose creation answer was lost (it never appends the same rows twice on
    its own; bluesky's TiledWriter may, with a warning — readers skip duplicate seq_nums).

    Parameters
    ----------
    inner : httpx.BaseTransport
        The transport to wrap (tiled's caching transport).
    max_outage_s : float
        Longest outage waited for, seconds.
    on_down, on_up : callable, optional
        Called (no arguments / with the outage duration in s) when the server becomes
        unreachable and when it answers again.
    """

    def __init__(self, inner, *, max_outage_s: float = 3600.0, max_backoff_s: float = 2.0,
                 on_down: Callable[[], None] | None = None,
                 on_up: Callable[[float], None] | None = None) -> None:
        self.inner = inner
        self.max_outage_s = max_outage_s
        self.max_backoff_s = max_backoff_s
        self.on_down = on_down
        self.on_up = on_up
        self.down_since: float | None = None
        self.outages: list[float] = []  # durations (s) of the outages waited out
        self._lock = threading.Lock()

    def __getattr__(self, name):  # tiled reads e.g. ``.cache`` from its transport
        return getattr(self.inner, name)

    def handle_request(self, request):
        import httpx

        backoff = 0.1
        while True:
            try:
                response = self.inner.handle_request(request)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                error: Exception | None = exc
            else:
                if response.status_code not in _UNAVAILABLE:
                    self._up()
                    return response
                response.read()
                response.close()
                error = None
            self._down()
            down_since = self.down_since
            outage = time.monotonic() - down_since if down_since is not None else 0.0
            if outage >= self.max_outage_s:
                why = f"{error}" if error is not None else f"HTTP {response.status_code}"
                raise TiledUnreachable(
                    f"tiled server unreachable for {outage:.1f} s (waits at most {self.max_outage_s:g} s): "
                    f"{request.method} {request.url} not sent ({why})") from error
            time.sleep(min(backoff, max(self.max_outage_s - outage, 0.01)))
            backoff = min(backoff * 2, self.max_backoff_s)

    def _down(self) -> None:
        with self._lock:
            if self.down_since is not None:
                return
            self.down_since = time.monotonic()
        if self.on_down is not None:
            self.on_down()

    def _up(self) -> None:
        if self.down_since is None:
            return
        with self._lock:
            if self.down_since is None:
                return
            duration = time.monotonic() - self.down_since
            self.down_since = None
            self.outages.append(duration)
        if self.on_up is not None:
            self.on_up(duration)

    def close(self) -> None:
        self.inner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tolerate_outages(client, **kwargs) -> OutageTolerantTransport:
    """Make every HTTP request of ``client`` (and clients sharing its context) wait out
    server outages (see :class:`OutageTolerantTransport`); returns the transport."""
    http = client.context.http_client
    transport = OutageTolerantTransport(http._transport, **kwargs)
    http._transport = transport
    return transport
