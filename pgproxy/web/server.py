"""Serving an ASGI app (the review pages) with uvicorn inside pgproxy's own asyncio event loop.

:class:`WebServer` binds its socket itself — so port 0 works and :attr:`WebServer.port` tells the port
the system chose — then runs ``uvicorn.Server.serve`` as a task of the running loop: no second loop, no
thread, no process. ``start()`` returns once the server accepts connections (or raises why it could not
start); ``stop()`` stops accepting, lets requests in flight finish for up to ``shutdown_grace_seconds``,
then cancels them.

uvicorn must not touch process-wide state that pgproxy owns: no signal handlers (pgproxy handles
SIGTERM/SIGINT and calls ``stop()``), no logging configuration (records go to the ``uvicorn.error`` and,
when enabled, ``uvicorn.access`` loggers), no lifespan events, no websockets. This module must not
build apps or decide what they serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

_START_POLL = 0.01


class _EmbeddedServer(uvicorn.Server):
    """uvicorn's server without its signal handling (pgproxy's loop owns the process's signals)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # the hook's name in uvicorn releases before 0.29
        return


class WebServer:
    """One listening HTTP(S) server for ``app`` on ``host``:``port`` (0: any free port)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        certfile: Path | None = None,
        keyfile: Path | None = None,
        access_log: bool = False,
        shutdown_grace_seconds: float = 5.0,
        start_timeout_seconds: float = 10.0,
    ) -> None:
        if (certfile is None) != (keyfile is None):
            raise ValueError("give both certfile and keyfile for HTTPS, or neither")
        self._app = app
        self._host = host
        self._requested_port = port
        self._certfile = certfile
        self._keyfile = keyfile
        self._access_log = access_log
        self._grace = shutdown_grace_seconds
        self._start_timeout = start_timeout_seconds
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound port (known once :meth:`start` returned)."""
        if self._port is None:
            raise RuntimeError("the web server has not started")
        return self._port

    @property
    def url(self) -> str:
        scheme = "https" if self._certfile else "http"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        """Bind, serve, and return once connections are accepted; raises OSError (e.g. port in use)."""
        if self._task is not None:
            raise RuntimeError("the web server is already running")
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.create_server((self._host, self._requested_port), family=family)
        config = uvicorn.Config(
            self._app,
            log_config=None,
            access_log=self._access_log,
            lifespan="off",
            ws="none",
            server_header=False,
            ssl_certfile=None if self._certfile is None else str(self._certfile),
            ssl_keyfile=None if self._keyfile is None else str(self._keyfile),
            timeout_graceful_shutdown=max(1, round(self._grace)),
        )
        server = _EmbeddedServer(config)
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]), name="pgproxy-web")
        try:
            async with asyncio.timeout(self._start_timeout):
                while not server.started:
                    if task.done():
                        task.result()  # raises why it stopped
                        raise RuntimeError("the web server stopped while starting")
                    await asyncio.sleep(_START_POLL)
        except BaseException:
            server.should_exit = True
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            sock.close()
            raise
        self._server, self._task = server, task
        self._port = sock.getsockname()[1]

    async def stop(self) -> None:
        """Stop accepting, finish requests in flight (up to the grace period), and close the socket."""
        server, task = self._server, self._task
        if server is None or task is None:
            return
        self._server = self._task = None
        server.should_exit = True
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
