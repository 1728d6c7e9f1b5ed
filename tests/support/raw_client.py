"""A tiny asyncio raw-socket PostgreSQL client for tests that need to send exactly the bytes they choose.

Messages are built with ``pgproxy.wire.frontend`` (or given as raw bytes) and what comes back is framed
with ``MessageFramer`` and decoded with ``decode_backend``. Every read has a generous deadline so a
misbehaving server fails the test instead of hanging it; nothing here asserts on timing.

``assert_proxy_healthy`` is the after-every-bad-input check: a normal client (psycopg) can still log in
through the proxy and run ``SELECT 1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections import deque
from collections.abc import Iterable
from typing import TypeVar

import psycopg

from pgproxy.wire import backend as be
from pgproxy.wire import frontend as fe
from pgproxy.wire.errors import ProtocolError
from pgproxy.wire.framing import MessageFramer
from tests.support.proxy_plugin import RunningProxy

__all__ = [
    "DEADLINE",
    "ProxyTestError",
    "RawClient",
    "ServerClosed",
    "assert_proxy_healthy",
    "connection_count",
    "i32",
    "unverified_tls_context",
    "wait_for_connections_at_most",
]

DEADLINE = 20.0  # seconds: only a bound on waiting, never an assertion about speed
M = TypeVar("M")


class ProxyTestError(AssertionError):
    """The server did not answer the way the test expected."""


class ServerClosed(ProxyTestError):
    """The server closed the connection while the client was waiting for a message."""


def i32(n: int) -> bytes:
    return struct.pack("!i", n)


def unverified_tls_context() -> ssl.SSLContext:
    """Like libpq's sslmode=require: encrypt, but do not authenticate the (self-signed) server."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class RawClient:
    """One connection. Create with ``await RawClient.connect(port)``; use as an async context manager."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.received: list[be.BackendMessage] = []  # every message decoded so far, in order
        self._framer = MessageFramer(1 << 30)
        self._queue: deque[be.BackendMessage] = deque()

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> RawClient:
        async with asyncio.timeout(DEADLINE):
            reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            async with asyncio.timeout(DEADLINE):
                await self.writer.wait_closed()

    # -- sending -------------------------------------------------------------------------------------
    async def send(self, *messages: bytes | fe.FrontendMessage | fe.StartupPacket) -> None:
        """Send messages (encoded here) and raw byte strings, in one write."""
        data = b"".join(m if isinstance(m, bytes) else m.encode() for m in messages)
        self.writer.write(data)
        async with asyncio.timeout(DEADLINE):
            await self.writer.drain()

    async def send_startup(
        self,
        user: str = "agent",
        database: str = "pgproxy_test",
        *,
        major: int = 3,
        minor: int = 0,
        extra: Iterable[tuple[str, str]] = (),
    ) -> None:
        parameters = (("user", user), ("database", database), *extra)
        await self.send(fe.StartupMessage(major, minor, parameters))

    async def send_password(self, password: str | bytes) -> None:
        raw = password.encode() if isinstance(password, str) else password
        await self.send(fe.PasswordMessage(raw))

    async def request_tls(self, context: ssl.SSLContext | None = None) -> None:
        """SSLRequest; on 'S' upgrade to TLS (unverified by default). Fails on any other answer."""
        await self.send(fe.SSLRequest())
        answer = await self.read_byte()
        if answer != b"S":
            raise ProxyTestError(f"SSLRequest answered {answer!r}, expected b'S'")
        async with asyncio.timeout(DEADLINE):
            await self.writer.start_tls(context or unverified_tls_context())

    # -- receiving -----------------------------------------------------------------------------------
    async def read_byte(self) -> bytes:
        """One unframed byte (the answer to SSLRequest / GSSENCRequest)."""
        if self._queue or self._framer.buffered:
            raise ProxyTestError("read_byte() while framed messages are pending")
        async with asyncio.timeout(DEADLINE):
            data = await self.reader.read(1)
        if not data:
            raise ServerClosed("server closed the connection instead of answering")
        return data

    async def _fill(self) -> bool:
        """Read one chunk into the queue; False at EOF (or a reset, which is the same to a client)."""
        try:
            async with asyncio.timeout(DEADLINE):
                chunk = await self.reader.read(65536)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            chunk = b""
        if not chunk:
            return False
        try:
            complete, frames = self._framer.feed(chunk)
        except ProtocolError as exc:
            raise ProxyTestError(f"the server sent bytes that do not frame: {exc.message}") from exc
        for frame in frames:
            try:
                message = be.decode_backend(frame[0], complete[frame[1] : frame[2]])
            except ProtocolError as exc:
                raise ProxyTestError(f"the server sent an undecodable message: {exc.message}") from exc
            self._queue.append(message)
            self.received.append(message)
        return True

    async def read_message(self) -> be.BackendMessage:
        """The next backend message; raises ServerClosed at EOF."""
        while not self._queue:
            if not await self._fill():
                raise ServerClosed(f"server closed the connection (after {self._describe_received()})")
        return self._queue.popleft()

    async def expect(self, kind: type[M]) -> M:
        """The next message, which must be of ``kind``."""
        message = await self.read_message()
        if not isinstance(message, kind):
            raise ProxyTestError(f"expected {kind.__name__}, received {message!r}")
        return message

    async def expect_error(self) -> be.ErrorResponse:
        """Skip notices and parameter statuses until an ErrorResponse; anything else is a failure."""
        while True:
            message = await self.read_message()
            if isinstance(message, be.ErrorResponse):
                return message
            if not isinstance(message, be.NoticeResponse | be.ParameterStatus | be.NegotiateProtocolVersion):
                raise ProxyTestError(f"expected an ErrorResponse, received {message!r}")

    async def expect_fatal(self, sqlstate: str) -> be.ErrorResponse:
        """An ErrorResponse with severity FATAL and ``sqlstate``, after which the server closes."""
        error = await self.expect_error()
        if error.severity != "FATAL" or error.sqlstate != sqlstate:
            raise ProxyTestError(
                f"expected FATAL {sqlstate}, received {error.severity} {error.sqlstate}: {error.message}"
            )
        await self.expect_closed()
        return error

    async def expect_closed(self) -> list[be.BackendMessage]:
        """Wait for EOF; return whatever messages arrived before it."""
        rest = list(self._queue)
        self._queue.clear()
        while await self._fill():
            rest.extend(self._queue)
            self._queue.clear()
        return rest

    async def read_until_ready(self) -> list[be.BackendMessage]:
        """Messages up to and including ReadyForQuery."""
        messages: list[be.BackendMessage] = []
        while True:
            message = await self.read_message()
            messages.append(message)
            if isinstance(message, be.ReadyForQuery):
                return messages

    # -- conversations -------------------------------------------------------------------------------
    async def login(
        self,
        token: str,
        *,
        user: str = "agent",
        database: str = "pgproxy_test",
        minor: int = 0,
        extra: Iterable[tuple[str, str]] = (),
        tls: bool = False,
    ) -> list[be.BackendMessage]:
        """(TLS,) startup, token as password; returns the messages up to ReadyForQuery."""
        if tls:
            await self.request_tls()
        await self.send_startup(user, database, minor=minor, extra=extra)
        return await self.answer_password(token)

    async def answer_password(self, token: str) -> list[be.BackendMessage]:
        """Wait for AuthenticationCleartextPassword, send ``token``, read through ReadyForQuery."""
        messages: list[be.BackendMessage] = []
        while True:
            message = await self.read_message()
            messages.append(message)
            if isinstance(message, be.AuthenticationCleartextPassword):
                break
            if isinstance(message, be.ErrorResponse):
                raise ProxyTestError(f"login refused: {message.sqlstate} {message.message}")
        await self.send_password(token)
        while True:
            message = await self.read_message()
            messages.append(message)
            if isinstance(message, be.ErrorResponse):
                raise ProxyTestError(f"login refused: {message.sqlstate} {message.message}")
            if isinstance(message, be.ReadyForQuery):
                return messages

    async def answer_password_expecting_error(self, token: str) -> be.ErrorResponse:
        """Wait for AuthenticationCleartextPassword, send ``token``; the ErrorResponse that follows, then EOF."""
        await self.expect(be.AuthenticationCleartextPassword)
        await self.send_password(token)
        error = await self.expect_error()
        await self.expect_closed()
        return error

    async def query(self, sql: str) -> list[be.BackendMessage]:
        """Simple query; the messages through ReadyForQuery."""
        await self.send(fe.Query(sql))
        return await self.read_until_ready()

    async def query_values(self, sql: str) -> list[tuple[str | None, ...]]:
        """Simple query; the text of every DataRow. Fails on an ErrorResponse."""
        rows: list[tuple[str | None, ...]] = []
        for message in await self.query(sql):
            if isinstance(message, be.ErrorResponse):
                raise ProxyTestError(f"query failed: {message.sqlstate} {message.message}")
            if isinstance(message, be.DataRow):
                rows.append(tuple(None if v is None else bytes(v).decode() for v in message.values))
        return rows

    def _describe_received(self) -> str:
        if not self.received:
            return "no messages"
        return ", ".join(type(m).__name__ for m in self.received[-5:])


async def assert_proxy_healthy(proxy: RunningProxy) -> None:
    """A normal client still gets in and runs a query (async: the test loop may host fake servers)."""
    async with asyncio.timeout(DEADLINE):
        conn = await psycopg.AsyncConnection.connect(proxy.conninfo(), connect_timeout=10)
        async with conn:
            cursor = await conn.execute("SELECT 1")
            assert await cursor.fetchone() == (1,)


def connection_count(proxy: RunningProxy) -> int:
    """How many client connections the proxy is tracking right now."""
    return proxy.call_soon(lambda: len(proxy.server.connections))


async def wait_for_connections_at_most(proxy: RunningProxy, count: int) -> None:
    """Wait (generously) until the proxy has forgotten connections that ended: no leaked sessions."""
    async with asyncio.timeout(DEADLINE):
        while True:
            if connection_count(proxy) <= count:
                return
            await asyncio.sleep(0.01)
