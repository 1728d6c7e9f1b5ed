"""One socket as an ``asyncio.Protocol`` with two modes: awaitable reads, then relay callbacks.

During the startup phase the connection code awaits ``read()``; once a session is established it
calls ``attach(sink)`` and every later chunk goes straight to the relay's callback, with no task
switch per read (streams cost ~3x the CPU per query on the hot path). Flow control is surfaced as
``on_pause_writing``/``on_resume_writing`` so the relay can stop reading from the other side.
This module knows nothing of PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

# Bound what a peer can make us buffer before a relay is attached (startup phase only).
HANDSHAKE_BUFFER_LIMIT = 256 * 1024


class ConnectionClosed(Exception):
    """The peer closed the connection (or it was lost) while we were waiting to read."""


@dataclass(frozen=True, slots=True)
class RelaySink:
    """Where an attached endpoint delivers its events."""

    data: Callable[[bytes], None]
    closed: Callable[[Exception | None], None]
    pause_writing: Callable[[], None]
    resume_writing: Callable[[], None]


class Endpoint(asyncio.Protocol):
    """A connected socket: awaitable reads before ``attach``, callbacks after."""

    def __init__(self, on_connected: Callable[[Endpoint], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self._on_connected = on_connected
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._sink: RelaySink | None = None
        self._closed = False
        self._close_exc: Exception | None = None
        self._reading_paused = False
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        if self._on_connected is not None:
            self._on_connected(self)

    def data_received(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None:
            sink.data(data)
            return
        self._buffer += data
        if len(self._buffer) > HANDSHAKE_BUFFER_LIMIT and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True
        self._wake()

    def eof_received(self) -> bool | None:
        return False  # close our side too: PostgreSQL has no half-closed sessions

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._close_exc = exc
        self._wake()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()
        if self._sink is not None:
            self._sink.closed(exc)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._sink is not None:
            self._sink.pause_writing()

    def resume_writing(self) -> None:
        self._write_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()
        if self._sink is not None:
            self._sink.resume_writing()

    # -- startup-phase API ------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    async def read(self) -> bytes:
        """Everything received so far (at least one byte); raises ConnectionClosed at EOF."""
        while not self._buffer:
            if self._closed:
                raise ConnectionClosed(str(self._close_exc) if self._close_exc else "connection closed")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = bytes(self._buffer)
        self._buffer.clear()
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    def take_buffered(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self._closed:
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        if self._write_paused and not self._closed:
            waiter = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def attach(self, sink: RelaySink) -> bytes:
        """Switch to relay mode; return bytes received but not yet read (to be fed to the sink)."""
        self._sink = sink
        leftover = self.take_buffered()
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return leftover

    def upgrade(self, transport: asyncio.Transport) -> None:
        """Adopt the TLS transport that ``loop.start_tls`` returned for this protocol."""
        self.transport = transport

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
