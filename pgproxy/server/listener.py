"""The listening socket, the set of live connections, periodic housekeeping, and graceful shutdown.

On shutdown the listener stops accepting, asks every session to end at its next idle moment
(in-flight statements finish), waits up to the grace period, then closes whatever remains.
Housekeeping (e.g. noticing changed policy files) runs as plain callbacks on a timer: they must be
quick and must not raise into the loop. SIGHUP calls the reload callbacks.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from typing import Protocol

from pgproxy.server.connection import ClientConnection, ProxyContext
from pgproxy.server.endpoint import Endpoint

log = logging.getLogger(__name__)


class Service(Protocol):
    """Something served beside the proxy (the review page): started after it, stopped after its sessions."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class ProxyServer:
    def __init__(
        self,
        context: ProxyContext,
        host: str,
        port: int,
        *,
        max_connections: int = 1000,
        reuse_port: bool = False,
    ) -> None:
        self.context = context
        self.max_connections = max_connections
        self.host = host
        self.port = port
        self.reuse_port = reuse_port
        self.connections: set[ClientConnection] = set()
        self._admitted = 0  # connections under the limit (over-limit ones are only told so)
        self._server: asyncio.base_events.Server | None = None
        self._emptied = asyncio.Event()
        self._chores: list[tuple[float, Callable[[], object]]] = []
        self._reloads: list[Callable[[], object]] = []
        self._timers: list[asyncio.TimerHandle] = []
        self.services: list[Service] = []

    def every(self, seconds: float, chore: Callable[[], object]) -> None:
        """Run ``chore`` every ``seconds`` while serving (registered before ``start``)."""
        self._chores.append((seconds, chore))

    def on_reload(self, reload: Callable[[], object]) -> None:
        """Run ``reload`` on SIGHUP (while ``run_until_signalled`` serves)."""
        self._reloads.append(reload)

    def _schedule(self, seconds: float, chore: Callable[[], object]) -> None:
        loop = asyncio.get_running_loop()

        def tick() -> None:
            try:
                chore()
            except Exception:
                log.exception("housekeeping task failed")
            self._timers.remove(handle)
            self._schedule(seconds, chore)

        handle = loop.call_later(seconds, tick)
        self._timers.append(handle)

    def reload(self) -> None:
        for reload in self._reloads:
            try:
                reload()
            except Exception:
                log.exception("reload failed")

    async def start(self) -> None:
        """Open the audit log and the approval service (if any; raises when they cannot be opened), then listen."""
        if self.context.audit is not None:
            await self.context.audit.open()
        if self.context.approvals is not None:
            await self.context.approvals.start()  # before listening: a held statement needs it at once
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._accept, self.host, self.port, reuse_port=self.reuse_port or None, backlog=1024
        )
        sockets = self._server.sockets
        if self.port == 0 and sockets:
            self.port = sockets[0].getsockname()[1]
        for sock in sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.info("pgproxy listening on %s:%d, upstream %s", self.host, self.port,
                 self.context.upstream.describe())
        for seconds, chore in self._chores:
            self._schedule(seconds, chore)
        for service in self.services:
            await service.start()

    def _accept(self) -> Endpoint:
        # Over the limit the client still gets TLS and sends its startup packet, so that it can read
        # the refusal (libpq cannot show an error sent in answer to SSLRequest).
        over_limit = self._admitted >= self.max_connections
        connection = ClientConnection(self.context, self._forget, over_limit=over_limit)
        if not over_limit:
            self._admitted += 1
        self.connections.add(connection)
        self._emptied.clear()
        return connection.endpoint

    def _forget(self, connection: ClientConnection) -> None:
        if connection in self.connections and not connection.over_limit:
            self._admitted -= 1
        self.connections.discard(connection)
        if not self.connections:
            self._emptied.set()

    async def shutdown(self, grace_seconds: float) -> None:
        """Stop accepting; let in-flight statements finish for up to ``grace_seconds``; close the rest."""
        if self._server is not None:
            self._server.close()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for connection in list(self.connections):
            connection.shutdown(grace=True)
        if self.connections:
            try:
                async with asyncio.timeout(grace_seconds):
                    await self._emptied.wait()
            except TimeoutError:
                log.warning("grace period over; closing %d busy session(s)", len(self.connections))
        for connection in list(self.connections):
            connection.shutdown(grace=False)
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.sleep(0)  # let transports flush their final error messages
        for service in self.services:
            await service.stop()
        if self.context.approvals is not None:
            await self.context.approvals.close()
        if self.context.audit is not None:
            await self.context.audit.close()  # after the sessions: their last records are written

    async def run_until_signalled(self, grace_seconds: float) -> None:
        """Serve until SIGTERM or SIGINT, then shut down gracefully."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await stop.wait()
            log.info("signal received: shutting down (grace %.0fs)", grace_seconds)
            await self.shutdown(grace_seconds)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)

