"""Helpers for the adversarial component tests: raw sessions straight to PostgreSQL, a superuser's view
of the server's backends, and lookups of pgproxy's own sessions.

A direct raw session (:func:`direct_session`) speaks the same bytes as a proxied one (:func:`proxied_session`),
so a test can send identical input both ways and compare the answers message by message. Everything that
waits has a generous deadline that only bounds a hang; nothing here asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager

import psycopg

from pgproxy.server.connection import ClientConnection
from pgproxy.wire import backend as be
from tests.support.pg_plugin import TEST_DATABASE, UPSTREAM_ROLE, RealPostgres
from tests.support.proxy_plugin import RunningProxy
from tests.support.raw_client import DEADLINE, ProxyTestError, RawClient

__all__ = [
    "Admin",
    "backend_key",
    "comparable_messages",
    "direct_session",
    "non_loopback_address",
    "proxied_session",
    "proxy_session",
    "relay_state",
    "wait_for",
]

# What legitimately differs between a direct and a proxied session: the cancel key (pgproxy mints its own
# secret) and application_name (pgproxy stamps the caller's identity into it).
_SESSION_SPECIFIC = (be.BackendKeyData,)


def comparable_messages(messages: Iterable[be.BackendMessage]) -> list[be.BackendMessage]:
    """``messages`` without the few that differ between a direct and a proxied session by design."""
    kept: list[be.BackendMessage] = []
    for message in messages:
        if isinstance(message, _SESSION_SPECIFIC):
            continue
        if isinstance(message, be.ParameterStatus) and message.name == "application_name":
            continue
        kept.append(message)
    return kept


async def wait_for(
    condition: Callable[[], Awaitable[bool]], *, what: str, deadline: float = DEADLINE, interval: float = 0.02
) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``deadline`` seconds (a hang bound)."""
    try:
        async with asyncio.timeout(deadline):
            while True:
                if await condition():
                    return
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"still waiting for {what} after {deadline:.0f} s") from None


@asynccontextmanager
async def direct_session(postgres: RealPostgres, *, user: str = UPSTREAM_ROLE) -> AsyncIterator[RawClient]:
    """A raw session straight to PostgreSQL as pgproxy's upstream role (trust over TCP), past ReadyForQuery."""
    client = await RawClient.connect(postgres.port, postgres.host)
    try:
        await client.send_startup(user, TEST_DATABASE)
        for message in await client.read_until_ready():
            if isinstance(message, be.ErrorResponse):
                raise ProxyTestError(f"direct login refused: {message.sqlstate} {message.message}")
            if isinstance(message, be.AuthenticationCleartextPassword | be.AuthenticationMD5Password):
                raise ProxyTestError("the test server asks the upstream role for a password")
        yield client
    finally:
        await client.close()


@asynccontextmanager
async def proxied_session(proxy: RunningProxy, token: str | None = None, *, tls: bool = False) -> AsyncIterator[
    RawClient
]:
    """A raw session through pgproxy with a fresh token (or ``token``), past ReadyForQuery."""
    client = await RawClient.connect(proxy.port)
    try:
        await client.login(proxy.idp.mint() if token is None else token, tls=tls)
        yield client
    finally:
        await client.close()


def backend_key(client: RawClient) -> be.BackendKeyData:
    """The session's BackendKeyData: pgproxy passes the upstream pid through with a secret of its own."""
    for message in client.received:
        if isinstance(message, be.BackendKeyData):
            return message
    raise ProxyTestError("no BackendKeyData received")


class Admin:
    """A superuser connection to the test server: pg_stat_activity, pg_terminate_backend."""

    def __init__(self, connection: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        self.connection = connection

    @classmethod
    @asynccontextmanager
    async def connect(cls, postgres: RealPostgres) -> AsyncIterator[Admin]:
        connection = await psycopg.AsyncConnection.connect(postgres.dsn(database=TEST_DATABASE), autocommit=True)
        try:
            yield cls(connection)
        finally:
            await connection.close()

    async def value(self, sql: str, *params: object) -> object:
        cursor = await self.connection.execute(sql, params)
        row = await cursor.fetchone()
        assert row is not None
        return row[0]

    async def backend_exists(self, pid: int) -> bool:
        return bool(await self.value("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", pid))

    async def backend_state(self, pid: int) -> tuple[str | None, str | None]:
        """(state, wait_event) of a backend, e.g. ('active', 'PgSleep')."""
        cursor = await self.connection.execute(
            "SELECT state, wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)
        )
        row = await cursor.fetchone()
        if row is None:
            return (None, None)
        state, wait_event = row
        return (None if state is None else str(state), None if wait_event is None else str(wait_event))

    async def wait_backend_gone(self, pid: int, what: str = "") -> None:
        async def gone() -> bool:
            return not await self.backend_exists(pid)

        await wait_for(gone, what=what or f"backend {pid} to leave pg_stat_activity")

    async def wait_sleeping(self, pid: int) -> None:
        """Until backend ``pid`` is inside pg_sleep (its statement is really in flight)."""

        async def sleeping() -> bool:
            return await self.backend_state(pid) == ("active", "PgSleep")

        await wait_for(sleeping, what=f"backend {pid} to be in pg_sleep")

    async def terminate(self, pid: int) -> bool:
        return bool(await self.value("SELECT pg_terminate_backend(%s)", pid))

    async def client_backends(self) -> int:
        """Client backends connected to the server right now (all databases)."""
        return int(str(await self.value("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")))

    async def spare_connections(self) -> int:
        """Connection slots a non-superuser could still take."""
        limit = int(str(await self.value("SHOW max_connections")))
        reserved = int(str(await self.value("SHOW superuser_reserved_connections")))
        with contextlib.suppress(psycopg.Error):
            reserved += int(str(await self.value("SHOW reserved_connections")))  # PostgreSQL 16+
        return limit - reserved - await self.client_backends()

    async def proxied_backends(self, marker: str) -> list[int]:
        """Pids of backends whose application_name (pgproxy's identity stamp) contains ``marker``."""
        cursor = await self.connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s ORDER BY pid", (f"%{marker}%",)
        )
        return [int(str(row[0])) for row in await cursor.fetchall()]


def proxy_session(proxy: RunningProxy, subject: str) -> ClientConnection | None:
    """pgproxy's connection object for the session of token subject ``subject`` (call on the proxy's loop)."""
    for connection in proxy.server.connections:
        if connection.identity is not None and connection.identity.subject == subject:
            return connection
    return None


def relay_state(proxy: RunningProxy, subject: str) -> tuple[bool, str] | None:
    """(whether pgproxy's relay believes no request is in flight, transaction status), or None without a session."""

    def read() -> tuple[bool, str] | None:
        connection = proxy_session(proxy, subject)
        if connection is None or connection.relay is None:
            return None
        return (connection.relay.idle, connection.relay.transaction_status)

    return proxy.call_soon(read)


def non_loopback_address() -> str | None:
    """An address of this host that is not loopback (the source of a 'remote' client), if there is one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") else address

