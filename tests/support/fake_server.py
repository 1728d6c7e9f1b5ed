"""A scripted fake PostgreSQL server: it plays, per connection, a list of steps chosen by the test.

Listens on 127.0.0.1 at an ephemeral port, in the test's event loop (so tests that use it must use async
clients). Each accepted connection takes the next script queued with :meth:`FakeServer.queue`, or the
default script (a normal trust login that then answers queries). Steps either read what the client
(pgproxy) must send — startup packets and typed frontend messages, decoded with ``pgproxy.wire`` — or send
backend messages and raw bytes, which may be deliberately wrong. Everything received is recorded on the
:class:`FakeSession` for assertions; a step that sees something unexpected stores the error there
(``FakeServer.check()`` raises it) instead of crashing the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import scramp

from pgproxy.wire import backend as be
from pgproxy.wire import frontend as fe

__all__ = [
    "DEADLINE",
    "UPSTREAM_PASSWORD",
    "AwaitClose",
    "Call",
    "Close",
    "Expect",
    "ExpectCancel",
    "ExpectSSLRequest",
    "ExpectStartup",
    "FakeServer",
    "FakeSession",
    "Scram",
    "Send",
    "ServeQueries",
    "Step",
    "greeting",
    "standard_session",
]

DEADLINE = 20.0  # seconds a step waits for the client; a bound on hanging, not a timing assertion
F = TypeVar("F")

UPSTREAM_PASSWORD = "secret"  # what dsn() gives pgproxy by default
DEFAULT_PID = 4242
DEFAULT_SECRET = b"\x11\x22\x33\x44"
PARAMETERS = (
    ("server_version", "16.0"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("integer_datetimes", "on"),
    ("standard_conforming_strings", "on"),
    ("TimeZone", "UTC"),
)
INT4_OID = 23


class FakeServerError(AssertionError):
    """The client did not send what the script expected."""


class PeerClosed(FakeServerError):
    """The client closed the connection while the script was waiting for it."""


class FakeSession:
    """One accepted connection and what it received."""

    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.index = index
        self.reader = reader
        self.writer = writer
        self.raw = bytearray()  # every byte received, for "this secret never arrived" checks
        self.packets: list[fe.StartupPacket] = []
        self.messages: list[fe.FrontendMessage] = []
        self.payloads: list[bytes] = []  # raw payload of each entry in ``messages``
        self.error: BaseException | None = None
        self.peer_closed = False
        self.finished = asyncio.Event()

    @property
    def startup(self) -> fe.StartupMessage:
        for packet in self.packets:
            if isinstance(packet, fe.StartupMessage):
                return packet
        raise FakeServerError("no StartupMessage received")

    async def _read_exactly(self, size: int) -> bytes:
        try:
            async with asyncio.timeout(DEADLINE):
                data = await self.reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionResetError) as exc:
            self.peer_closed = True
            if isinstance(exc, asyncio.IncompleteReadError):
                self.raw += exc.partial
            raise PeerClosed("the client closed the connection") from None
        self.raw += data
        return data

    async def read_packet(self) -> fe.StartupPacket:
        (length,) = struct.unpack("!i", await self._read_exactly(4))
        if not 8 <= length <= 10_000:
            raise FakeServerError(f"startup packet length {length}")
        packet = fe.decode_startup(await self._read_exactly(length - 4))
        self.packets.append(packet)
        return packet

    async def read_message(self) -> fe.FrontendMessage:
        header = await self._read_exactly(5)
        (length,) = struct.unpack_from("!i", header, 1)
        if length < 4:
            raise FakeServerError(f"message length {length}")
        payload = await self._read_exactly(length - 4)
        message = fe.decode_frontend(header[0], payload)
        self.messages.append(message)
        self.payloads.append(payload)
        return message

    async def expect(self, kind: type[F]) -> F:
        message = await self.read_message()
        if not isinstance(message, kind):
            raise FakeServerError(f"expected {kind.__name__}, received {message!r}")
        return message

    async def read_until_closed(self) -> None:
        """Record whatever the client still sends until it closes."""
        with contextlib.suppress(PeerClosed):
            while True:
                await self.read_message()

    def send(self, *messages: be.BackendMessage | bytes) -> None:
        self.writer.write(b"".join(m if isinstance(m, bytes) else m.encode() for m in messages))

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(DEADLINE):
                await self.writer.drain()

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


class Step(Protocol):
    async def run(self, session: FakeSession) -> None: ...


Script = Sequence[Step]


@dataclass(frozen=True)
class ExpectSSLRequest:
    """Read an SSLRequest and answer with ``answer`` (b"N", or anything else, e.g. b"S" + extra bytes)."""

    answer: bytes = b"N"

    async def run(self, session: FakeSession) -> None:
        packet = await session.read_packet()
        if not isinstance(packet, fe.SSLRequest):
            raise FakeServerError(f"expected SSLRequest, received {packet!r}")
        session.send(self.answer)
        await session.drain()


@dataclass(frozen=True)
class ExpectStartup:
    """Read the StartupMessage (an SSLRequest first is answered 'N')."""

    async def run(self, session: FakeSession) -> None:
        packet = await session.read_packet()
        if isinstance(packet, fe.SSLRequest):
            session.send(b"N")
            packet = await session.read_packet()
        if not isinstance(packet, fe.StartupMessage):
            raise FakeServerError(f"expected StartupMessage, received {packet!r}")


@dataclass(frozen=True)
class ExpectCancel:
    async def run(self, session: FakeSession) -> None:
        packet = await session.read_packet()
        if not isinstance(packet, fe.CancelRequest):
            raise FakeServerError(f"expected CancelRequest, received {packet!r}")


@dataclass(frozen=True)
class Expect:
    """Read one typed message of ``kind``."""

    kind: type[fe.FrontendMessage]

    async def run(self, session: FakeSession) -> None:
        await session.expect(self.kind)


@dataclass(frozen=True)
class Send:
    """Send backend messages and raw bytes, in one write."""

    items: tuple[be.BackendMessage | bytes, ...]

    def __init__(self, *items: be.BackendMessage | bytes) -> None:
        object.__setattr__(self, "items", items)

    async def run(self, session: FakeSession) -> None:
        session.send(*self.items)
        await session.drain()


@dataclass(frozen=True)
class Close:
    """Hang up (after what was sent is flushed)."""

    async def run(self, session: FakeSession) -> None:
        session.close()


@dataclass(frozen=True)
class AwaitClose:
    """Record what the client sends until it hangs up."""

    async def run(self, session: FakeSession) -> None:
        await session.read_until_closed()


@dataclass(frozen=True)
class Call:
    """Anything else: ``function(session)``."""

    function: Callable[[FakeSession], Awaitable[None]]

    async def run(self, session: FakeSession) -> None:
        await self.function(session)


@dataclass(frozen=True)
class Scram:
    """Server side of SCRAM-SHA-256 for ``password``; can leave out or falsify the server signature."""

    password: str
    skip_final: bool = False  # AuthenticationOk without AuthenticationSASLFinal
    wrong_signature: bool = False  # a SASLFinal whose server signature does not verify
    mechanisms: tuple[str, ...] = ("SCRAM-SHA-256",)

    async def run(self, session: FakeSession) -> None:
        mechanism = scramp.ScramMechanism("SCRAM-SHA-256")
        auth_info = mechanism.make_auth_info(self.password, iteration_count=4096)
        server = mechanism.make_server(lambda _username: auth_info)
        session.send(be.AuthenticationSASL(self.mechanisms))
        await session.expect(fe.PasswordMessage)
        initial = fe.decode_sasl_initial_response(session.payloads[-1])
        if initial.mechanism != "SCRAM-SHA-256" or initial.data is None:
            raise FakeServerError(f"unexpected SASLInitialResponse {initial!r}")
        server.set_client_first(initial.data.decode())
        session.send(be.AuthenticationSASLContinue(server.get_server_first().encode()))
        await session.expect(fe.PasswordMessage)
        server.set_client_final(fe.decode_sasl_response(session.payloads[-1]).data.decode())
        final = server.get_server_final()  # raises if the client proof is wrong
        if self.wrong_signature:
            final = "v=" + "A" * 43 + "="
        if not self.skip_final:
            session.send(be.AuthenticationSASLFinal(final.encode()))
        session.send(be.AuthenticationOk())
        await session.drain()


@dataclass
class ServeQueries:
    """Answer queries like a tiny server until Terminate or EOF: any SELECT returns one row, ``1``.

    Speaks the simple protocol (psycopg's BEGIN/COMMIT) and the extended one (psycopg's execute).
    """

    status: str = "I"
    _statement: str = field(default="", init=False)

    def _result(self, sql: str, *, describe: bool) -> list[be.BackendMessage]:
        word = (sql.strip().split() or [""])[0].upper()
        if word == "SELECT":
            rows: list[be.BackendMessage] = [be.DataRow((b"1",)), be.CommandComplete("SELECT 1")]
            return [self._row_description(), *rows] if describe else rows
        if word == "BEGIN":
            self.status = "T"
        elif word in ("COMMIT", "ROLLBACK"):
            self.status = "I"
        return [be.CommandComplete(word or "EMPTY")]

    @staticmethod
    def _row_description() -> be.RowDescription:
        return be.RowDescription((be.FieldDescription("?column?", 0, 0, INT4_OID, 4, -1, 0),))

    async def run(self, session: FakeSession) -> None:
        while True:
            try:
                message = await session.read_message()
            except PeerClosed:
                return
            if isinstance(message, fe.Terminate):
                return
            if isinstance(message, fe.Query):
                session.send(*self._result(message.sql, describe=True), be.ReadyForQuery(self.status))
            elif isinstance(message, fe.Parse):
                self._statement = message.query
                session.send(be.ParseComplete())
            elif isinstance(message, fe.Bind):
                session.send(be.BindComplete())
            elif isinstance(message, fe.Describe):
                is_select = self._statement.strip().upper().startswith("SELECT")
                if message.kind == "S":
                    session.send(be.ParameterDescription(()))
                session.send(self._row_description() if is_select else be.NoData())
            elif isinstance(message, fe.Execute):
                session.send(*self._result(self._statement, describe=False))
            elif isinstance(message, fe.Close):
                session.send(be.CloseComplete())
            elif isinstance(message, fe.Sync):
                session.send(be.ReadyForQuery(self.status))
            await session.drain()


def greeting(pid: int = DEFAULT_PID, secret: bytes = DEFAULT_SECRET, *, authenticated: bool = False) -> Send:
    """What a server sends after authentication: (AuthenticationOk,) parameters, key, ReadyForQuery."""
    statuses = [be.ParameterStatus(name, value) for name, value in PARAMETERS]
    first: list[be.BackendMessage] = [] if authenticated else [be.AuthenticationOk()]
    return Send(*first, *statuses, be.BackendKeyData(pid, secret), be.ReadyForQuery("I"))


def standard_session(pid: int = DEFAULT_PID, secret: bytes = DEFAULT_SECRET) -> list[Step]:
    """Trust login, then answer queries until the client leaves."""
    return [ExpectStartup(), greeting(pid, secret), ServeQueries()]


class FakeServer:
    """``await FakeServer().start()``; ``queue(...)`` scripts; ``await close()`` at the end."""

    def __init__(self, default_script: Callable[[], Script] = standard_session) -> None:
        self.default_script = default_script
        self.sessions: list[FakeSession] = []
        self._scripts: deque[Script] = deque()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> FakeServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None, "FakeServer not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def dsn(self, sslmode: str = "disable", *, user: str = "u", password: str = UPSTREAM_PASSWORD) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/db?sslmode={sslmode}&connect_timeout=10"

    def queue(self, *steps: Step) -> None:
        """The script for the next connection that arrives (scripts are used in arrival order)."""
        self._scripts.append(steps)

    def clear(self) -> None:
        self._scripts.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        session = FakeSession(len(self.sessions), reader, writer)
        self.sessions.append(session)
        script = self._scripts.popleft() if self._scripts else self.default_script()
        try:
            for step in script:
                await step.run(session)
            await session.drain()
        except Exception as exc:  # recorded for check(); the server itself keeps going
            session.error = exc
        finally:
            session.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(DEADLINE):
                    await writer.wait_closed()
            session.finished.set()
            self._tasks.discard(task)

    async def wait_idle(self, since: int = 0) -> None:
        """Wait until every session from index ``since`` on has finished its script."""
        async with asyncio.timeout(DEADLINE):
            for session in self.sessions[since:]:
                await session.finished.wait()

    def check(self, since: int = 0) -> None:
        """Raise the first error a script recorded (sessions from index ``since`` on)."""
        for session in self.sessions[since:]:
            if session.error is not None:
                raise FakeServerError(f"fake server session {session.index}: {session.error!r}") from session.error

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
