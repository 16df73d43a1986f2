"""The Bokeh server of the dashboard, embedded in our process (its own thread and loop)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from functools import partial
from pathlib import Path

from strainstream.errors import StrainstreamError

from . import dashboard_json_path

__all__ = ["DashboardServer"]

logger = logging.getLogger(__name__)


class DashboardPortError(StrainstreamError, OSError):
    """The dashboard cannot listen on its address (port in use, no permission, ...)."""


class DashboardServer:
    """Serve the dashboard at ``http://HOST:PORT/`` following the tiled server ``uri``.

    BokehJS is served by this server itself (a Bokeh server's pages use resources mode
    ``server``, ``/static/js/bokeh.min.js``): the page needs no internet. ``data_dir``, when given, receives ``dashboard.json`` (``url``, ``pid``) while
    the server runs, for :func:`strainstream.dashboard.running_dashboard`.

    Use as a context manager, or :meth:`start` / :meth:`stop`.
    """

    def __init__(self, uri: str, api_key: str | None, *, host: str = "127.0.0.1", port: int = 5006,
                 data_dir: str | os.PathLike | None = None) -> None:
        self.uri, self.api_key, self.host, self.port = uri, api_key, host, int(port)
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self._thread: threading.Thread | None = None
        self._loop = None
        self._server = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        host = "localhost" if self.host in ("127.0.0.1", "0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}/"

    def _run(self) -> None:
        from bokeh.application import Application
        from bokeh.application.handlers.function import FunctionHandler
        from bokeh.server.server import Server
        from tornado.ioloop import IOLoop

        from ._app import make_document

        asyncio.set_event_loop(asyncio.new_event_loop())
        try:
            self._loop = IOLoop.current()
            app = Application(FunctionHandler(partial(make_document, uri=self.uri, api_key=self.api_key)))
            origins = sorted({f"{h}:{self.port}" for h in ("localhost", "127.0.0.1", self.host)})
            if self.host in ("0.0.0.0", "::"):
                origins = ["*"]
            self._server = Server({"/": app}, io_loop=self._loop, address=self.host, port=self.port,
                                  allow_websocket_origin=origins, check_unused_sessions_milliseconds=5000,
                                  unused_session_lifetime_milliseconds=15000)
            self._server.start()
        except BaseException as exc:  # port in use, ...
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.start()
        self._server.stop()
        self._loop.close(all_fds=True)

    def start(self) -> DashboardServer:
        self._thread = threading.Thread(target=self._run, name="dashboard", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        if self.data_dir is not None:
            path = dashboard_json_path(self.data_dir)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"url": self.url, "pid": os.getpid(), "uri": self.uri}))
            os.replace(tmp, path)
        return self

    def stop(self) -> None:
        if self.data_dir is not None:
            path = dashboard_json_path(self.data_dir)
            try:
                if json.loads(path.read_text()).get("pid") == os.getpid():
                    path.unlink()
            except (OSError, ValueError):
                pass
        if self._loop is not None:
            self._loop.add_callback(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_dashboard(uri: str, api_key: str | None, *, port: int, host: str = "127.0.0.1",
                    data_dir: str | os.PathLike | None = None, port_option: str = "--port") -> DashboardServer:
    """A started :class:`DashboardServer`; a port it cannot listen on is a
    :class:`DashboardPortError` naming the address and ``port_option`` (the command's option)."""
    server = DashboardServer(uri, api_key, host=host, port=port, data_dir=data_dir)
    try:
        return server.start()
    except OSError as exc:
        raise DashboardPortError(f"cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}; "
                                 f"pass another {port_option}") from None
