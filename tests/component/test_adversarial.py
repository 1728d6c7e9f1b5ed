"""The proxy against attackers and buggy drivers, with a real PostgreSQL behind it.

Each case states the exact outcome — the SQLSTATE, the messages a direct session gets for the same bytes,
row counts, the backend leaving ``pg_stat_activity``, the proxy's session count returning to where it was —
never merely "no exception". Deadlines only bound waiting for something to happen; nothing asserts speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import struct
import sys
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import asyncpg
import psycopg
import pytest

from pgproxy.wire import backend as be
from pgproxy.wire import frontend as fe
from pgproxy.wire.framing import DEFAULT_MAX_MESSAGE, MessageFramer
from tests.support.adversary import (
    Admin,
    backend_key,
    comparable_messages,
    direct_session,
    non_loopback_address,
    proxied_session,
    proxy_session,
    relay_state,
    wait_for,
)
from tests.support.pg_plugin import TEST_DATABASE, UPSTREAM_ROLE, RealPostgres
from tests.support.proxy_plugin import ProxyFactory, RunningProxy
from tests.support.raw_client import (
    DEADLINE,
    RawClient,
    ServerClosed,
    assert_proxy_healthy,
    connection_count,
    i32,
    wait_for_connections_at_most,
)

ADMIN_SHUTDOWN = "57P01"
QUERY_CANCELED = "57014"
STARTUP_TIMEOUT = "timeout expired during connection startup"


@pytest.fixture(autouse=True)
async def healthy_after(proxy: RunningProxy) -> AsyncIterator[None]:
    """After each test: the shared proxy forgot every connection the test made and still serves."""
    before = connection_count(proxy)
    yield
    await wait_for_connections_at_most(proxy, before)
    await assert_proxy_healthy(proxy)


@pytest.fixture
async def admin(postgres: RealPostgres) -> AsyncIterator[Admin]:
    async with Admin.connect(postgres) as connection:
        yield connection


@pytest.fixture(scope="module")
def impatient_proxy(proxy_factory: ProxyFactory) -> RunningProxy:
    """Clients get one second to log in."""
    return proxy_factory(startup_timeout_seconds=1.0)


def both(proxy: RunningProxy, postgres: RealPostgres) -> list[Callable[[], AbstractAsyncContextManager[RawClient]]]:
    """Open a raw session straight to PostgreSQL, then one through the proxy."""
    return [lambda: direct_session(postgres), lambda: proxied_session(proxy)]


def subject(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def responses(client: RawClient, *messages: bytes | fe.FrontendMessage) -> list[be.BackendMessage]:
    """Send ``messages`` in one write; everything up to the ReadyForQuery that answers the last Sync/Query."""
    await client.send(*messages)
    return await client.read_until_ready()


# -- cancel requests -----------------------------------------------------------------------------------
async def test_cancel_with_a_wrong_secret_does_not_cancel_the_victim(
    proxy: RunningProxy, admin: Admin
) -> None:
    async with proxied_session(proxy) as victim, proxied_session(proxy) as attacker:
        key, own = backend_key(victim), backend_key(attacker)
        await victim.send(fe.Query("SELECT 'finished' AS outcome FROM pg_sleep(2)"))
        await admin.wait_sleeping(key.process_id)
        flipped = bytes([key.secret_key[0] ^ 0x01]) + key.secret_key[1:]
        # The attacker knows the victim's pid (pg_stat_activity shows it) and its own secret.
        for secret, tls in ((own.secret_key, False), (b"\x00" * 4, False), (flipped, False), (flipped, True)):
            async with await RawClient.connect(proxy.port) as canceller:
                if tls:
                    await canceller.request_tls()
                await canceller.send(fe.CancelRequest(key.process_id, secret))
                assert await canceller.expect_closed() == []
        # Every forged cancel was handled (the proxy closed each connection) while the statement ran.
        assert await admin.backend_state(key.process_id) == ("active", "PgSleep")
        result = await victim.read_until_ready()
        assert [type(m) for m in result] == [be.RowDescription, be.DataRow, be.CommandComplete, be.ReadyForQuery]
        assert result[1] == be.DataRow((b"finished",))


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
async def test_cancel_with_the_right_key_from_another_connection(
    proxy: RunningProxy, admin: Admin, tls: bool
) -> None:
    async with proxied_session(proxy, tls=True) as victim:
        key = backend_key(victim)
        await victim.send(fe.Query("SELECT pg_sleep(30)"))
        await admin.wait_sleeping(key.process_id)
        async with await RawClient.connect(proxy.port) as canceller:  # a new connection, another source port
            if tls:
                await canceller.request_tls()
            await canceller.send(fe.CancelRequest(key.process_id, key.secret_key))
            assert await canceller.expect_closed() == []
        answer = await victim.read_until_ready()
        errors = [m for m in answer if isinstance(m, be.ErrorResponse)]
        assert [(e.severity, e.sqlstate, e.message) for e in errors] == [
            ("ERROR", QUERY_CANCELED, "canceling statement due to user request")
        ]
        assert answer[-1] == be.ReadyForQuery("I")
        assert await victim.query_values("SELECT 'still usable'") == [("still usable",)]


async def test_cancel_still_works_when_the_proxy_is_full(proxy_factory: ProxyFactory, admin: Admin) -> None:
    """A CancelRequest is not a session: at --max-connections it must still reach the server, as in PostgreSQL."""
    full = proxy_factory(max_connections=1)
    async with proxied_session(full) as victim:
        key = backend_key(victim)
        await victim.send(fe.Query("SELECT pg_sleep(30)"))
        await admin.wait_sleeping(key.process_id)
        async with await RawClient.connect(full.port) as canceller:
            await canceller.send(fe.CancelRequest(key.process_id, key.secret_key))
            assert await canceller.expect_closed() == []
        answer = await victim.read_until_ready()
        assert [m.sqlstate for m in answer if isinstance(m, be.ErrorResponse)] == [QUERY_CANCELED]
    await wait_for_connections_at_most(full, 0)


# -- the upstream backend goes away ----------------------------------------------------------------------
@pytest.mark.parametrize("busy", [False, True], ids=["idle", "mid-query"])
async def test_backend_terminated_by_an_administrator(
    proxy: RunningProxy, postgres: RealPostgres, admin: Admin, busy: bool
) -> None:
    baseline = connection_count(proxy)
    outcomes: list[list[be.BackendMessage]] = []
    async with proxied_session(proxy) as bystander:
        for connect in both(proxy, postgres):
            async with connect() as client:
                pid = backend_key(client).process_id
                if busy:
                    await client.send(fe.Query("SELECT pg_sleep(30)"))
                    await admin.wait_sleeping(pid)
                assert await admin.terminate(pid)
                outcomes.append(comparable_messages(await client.expect_closed()))  # ... then EOF
                await admin.wait_backend_gone(pid)
        direct, proxied = outcomes
        assert proxied == direct
        error = proxied[-1]
        assert isinstance(error, be.ErrorResponse)
        assert (error.severity, error.sqlstate, error.message) == (
            "FATAL", ADMIN_SHUTDOWN, "terminating connection due to administrator command"
        )
        # Others keep being served, and the dead session is forgotten.
        assert await bystander.query_values("SELECT 'bystander'") == [("bystander",)]
        await wait_for_connections_at_most(proxy, baseline + 1)


# -- the client goes away or misbehaves -----------------------------------------------------------------
async def test_client_vanishing_mid_large_result_frees_its_backend(proxy: RunningProxy, admin: Admin) -> None:
    baseline = connection_count(proxy)
    client = await RawClient.connect(proxy.port)
    await client.login(proxy.idp.mint())
    pid = backend_key(client).process_id
    # ~2 GB of rows: the statement cannot finish by itself while the test runs.
    await client.send(fe.Query("SELECT repeat('x', 100) FROM generate_series(1, 20000000)"))
    rows = 0
    while rows < 1000:
        if isinstance(await client.read_message(), be.DataRow):
            rows += 1
    client.writer.transport.abort()  # RST, no Terminate
    await admin.wait_backend_gone(pid, "the backend of a vanished client to end")
    await wait_for_connections_at_most(proxy, baseline)


async def test_client_closing_mid_copy_in_commits_nothing(
    proxy: RunningProxy, postgres: RealPostgres, admin: Admin
) -> None:
    table = f"adversarial_copy_{uuid.uuid4().hex[:10]}"
    rows = b"".join(b"%d\trow %d\n" % (n, n) for n in range(1000))
    async with await psycopg.AsyncConnection.connect(postgres.dsn(UPSTREAM_ROLE), autocommit=True) as owner:
        await owner.execute(f"CREATE TABLE {table} (n int, t text)")
        try:
            async with proxied_session(proxy) as completes:  # control: the same COPY, finished
                await completes.send(fe.Query(f"COPY {table} FROM STDIN"))
                await completes.expect(be.CopyInResponse)
                answer = await responses(completes, fe.CopyData(rows[:5000]), fe.CopyData(rows[5000:]), fe.CopyDone())
                assert answer == [be.CommandComplete("COPY 1000"), be.ReadyForQuery("I")]
            await owner.execute(f"TRUNCATE {table}")

            client = await RawClient.connect(proxy.port)
            await client.login(proxy.idp.mint())
            pid = backend_key(client).process_id
            await client.send(fe.Query(f"COPY {table} FROM STDIN"))
            await client.expect(be.CopyInResponse)
            await client.send(fe.CopyData(rows[:5000]), fe.CopyData(rows[5000:]))  # ... and no CopyDone
            await client.close()
            await admin.wait_backend_gone(pid)
            cursor = await owner.execute(f"SELECT count(*) FROM {table}")
            assert await cursor.fetchone() == (0,)
        finally:
            await owner.execute(f"DROP TABLE {table}")


async def test_bytes_after_terminate_are_never_answered(
    proxy: RunningProxy, postgres: RealPostgres, admin: Admin
) -> None:
    trailing = (fe.Terminate(), fe.Query("SELECT 'after terminate'"), fe.Sync(), fe.Query("SELECT 2"))
    for connect in both(proxy, postgres):
        async with connect() as client:
            pid = backend_key(client).process_id
            await client.send(*trailing)
            assert await client.expect_closed() == []
            await admin.wait_backend_gone(pid)


async def test_200_short_sessions_at_once(proxy: RunningProxy, admin: Admin) -> None:
    baseline = connection_count(proxy)
    marker = subject("crowd")
    # The server's own connection limit, not the proxy's, bounds how many can be open at the same time.
    at_once = asyncio.Semaphore(max(1, min(200, await admin.spare_connections() - 5)))
    tokens = [proxy.idp.mint(f"{marker}-{n}") for n in range(200)]

    async def session(n: int) -> tuple[int, str]:
        async with at_once:
            conn = await asyncpg.connect(proxy.url(tokens[n]), timeout=DEADLINE)
            try:
                row = await conn.fetchrow(
                    "SELECT $1::int * 2 AS doubled, current_setting('application_name') AS app", n
                )
                assert row is not None
                return int(row["doubled"]), str(row["app"])
            finally:
                await conn.close(timeout=DEADLINE)

    results = await asyncio.gather(*(session(n) for n in range(200)))
    assert [doubled for doubled, _ in results] == [2 * n for n in range(200)]
    assert [app.split(" via pgproxy")[0] for _, app in results] == [f"{marker}-{n}" for n in range(200)]
    await wait_for_connections_at_most(proxy, baseline)

    async def all_backends_gone() -> bool:
        return await admin.proxied_backends(marker) == []

    await wait_for(all_backends_gone, what="the 200 upstream backends to end")


# -- slow and silent clients -----------------------------------------------------------------------------
async def test_silent_clients_are_closed_by_the_startup_timeout(impatient_proxy: RunningProxy) -> None:
    clients = [await RawClient.connect(impatient_proxy.port) for _ in range(20)]
    try:
        for client in clients:  # TCP open, not one byte sent
            error = await client.expect_fatal("08006")
            assert error.message == STARTUP_TIMEOUT
    finally:
        for client in clients:
            await client.close()
    await wait_for_connections_at_most(impatient_proxy, 0)
    await assert_proxy_healthy(impatient_proxy)


async def test_trickling_startup_packet_is_cut_off_at_the_deadline(impatient_proxy: RunningProxy) -> None:
    packet = fe.StartupMessage(3, 0, (("user", "agent"), ("database", TEST_DATABASE))).encode()

    async def trickle(client: RawClient) -> None:
        for byte in packet:  # one byte every 0.2 s: every read makes "progress"
            try:
                await client.send(bytes([byte]))
            except ConnectionError:
                return
            await asyncio.sleep(0.2)

    async with await RawClient.connect(impatient_proxy.port) as client:
        sender = asyncio.create_task(trickle(client))
        try:
            error = await client.expect_fatal("08006")
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        assert error.message == STARTUP_TIMEOUT
        assert client.received == [error]
    await wait_for_connections_at_most(impatient_proxy, 0)


async def test_client_stalling_mid_startup_packet_inside_tls(impatient_proxy: RunningProxy) -> None:
    packet = fe.StartupMessage(3, 0, (("user", "agent"), ("database", TEST_DATABASE))).encode()
    async with await RawClient.connect(impatient_proxy.port) as client:
        await client.request_tls()
        await client.send(packet[: len(packet) // 2])
        error = await client.expect_fatal("08006")  # over TLS
        assert error.message == STARTUP_TIMEOUT
    await wait_for_connections_at_most(impatient_proxy, 0)


async def test_client_stalling_before_its_tls_handshake(impatient_proxy: RunningProxy) -> None:
    async with await RawClient.connect(impatient_proxy.port) as client:
        await client.send(fe.SSLRequest())
        assert await client.read_byte() == b"S"
        # No ClientHello ever follows. The proxy must close, and never write plaintext after its 'S'.
        async with asyncio.timeout(DEADLINE):
            assert await client.reader.read() == b""
    await wait_for_connections_at_most(impatient_proxy, 0)
    await assert_proxy_healthy(impatient_proxy)


# -- framing -----------------------------------------------------------------------------------------------
SCRIPT: tuple[fe.FrontendMessage, ...] = (
    fe.Query("SELECT 1 AS one, 'two' AS two, NULL AS three"),
    fe.Query("SELECT n, repeat('ab', n) FROM generate_series(1, 5) AS n; SELECT 'second statement'"),
    fe.Query("SELEC syntax error"),
    fe.Parse("", "SELECT $1::int + 1, $2::text", (23, 25)),
    fe.Bind("", "", (0, 1), (b"41", b"binary text"), (0,)),
    fe.Describe("P", ""),
    fe.Execute(""),
    fe.Sync(),
    fe.Query("BEGIN; SELECT 1/0"),
    fe.Query("ROLLBACK"),
)


async def _run_script(client: RawClient, *, one_byte_at_a_time: bool) -> list[be.BackendMessage]:
    data = b"".join(message.encode() for message in SCRIPT)
    if one_byte_at_a_time:
        for byte in data:
            await client.send(bytes([byte]))
            await asyncio.sleep(0.001)  # let each byte arrive in a read of its own
    else:
        await client.send(data)
    answers: list[be.BackendMessage] = []
    for _ in range(sum(isinstance(m, fe.Query | fe.Sync) for m in SCRIPT)):
        answers += await client.read_until_ready()
    return answers


async def test_session_sent_one_byte_at_a_time(proxy: RunningProxy, postgres: RealPostgres) -> None:
    token = proxy.idp.mint()
    startup = fe.StartupMessage(3, 0, (("user", "agent"), ("database", TEST_DATABASE))).encode()
    async with await RawClient.connect(proxy.port) as trickled:
        for byte in startup:
            await trickled.send(bytes([byte]))
        await trickled.expect(be.AuthenticationCleartextPassword)
        for byte in fe.PasswordMessage(token.encode()).encode():
            await trickled.send(bytes([byte]))
        login = await trickled.read_until_ready()
        assert isinstance(login[0], be.AuthenticationOk)
        split = await _run_script(trickled, one_byte_at_a_time=True)
        for byte in fe.Terminate().encode():
            await trickled.send(bytes([byte]))
        assert await trickled.expect_closed() == []
    async with proxied_session(proxy) as whole:
        unsplit = await _run_script(whole, one_byte_at_a_time=False)
    async with direct_session(postgres) as direct:
        reference = await _run_script(direct, one_byte_at_a_time=False)
    assert split == unsplit == reference
    assert len([m for m in reference if isinstance(m, be.ErrorResponse)]) == 2


async def test_8mb_simple_query(proxy: RunningProxy, postgres: RealPostgres) -> None:
    literal = ("pgproxy-" * (1 << 20))[: 8 * 1024 * 1024 - 100]
    sql = f"SELECT length(x), md5(x) FROM (VALUES ('{literal}')) AS v(x)"
    expected = [(str(len(literal)), hashlib.md5(literal.encode(), usedforsecurity=False).hexdigest())]
    async with proxied_session(proxy) as proxied, direct_session(postgres) as direct:
        assert await proxied.query_values(sql) == await direct.query_values(sql) == expected
        assert await proxied.query_values("SELECT 'after'") == [("after",)]


async def test_nul_inside_a_query_string(proxy: RunningProxy, postgres: RealPostgres) -> None:
    body = b"SELECT 1\x00; SELECT 'smuggled'\x00"
    raw = b"Q" + i32(len(body) + 4) + body
    async with proxied_session(proxy) as proxied, direct_session(postgres) as direct:
        got = [await responses(client, raw) for client in (proxied, direct)]
        assert got[0] == got[1]
        error = got[0][0]
        assert isinstance(error, be.ErrorResponse)
        assert (error.severity, error.sqlstate, error.message) == ("ERROR", "08P01", "invalid message format")
        assert got[0][1:] == [be.ReadyForQuery("I")]
        assert await proxied.query_values("SELECT 'usable'") == [("usable",)]


async def test_pipeline_of_1000_bind_execute_then_one_sync(proxy: RunningProxy, postgres: RealPostgres) -> None:
    pipeline: list[fe.FrontendMessage] = [fe.Parse("", "SELECT $1::int * 2", (23,))]
    for n in range(1000):
        pipeline += [fe.Bind("", "", (), (str(n).encode(),), ()), fe.Execute("")]
    pipeline.append(fe.Sync())
    name = subject("pipeline")
    async with proxied_session(proxy, proxy.idp.mint(name)) as proxied, direct_session(postgres) as direct:
        got = [await responses(client, *pipeline) for client in (proxied, direct)]
        assert got[0] == got[1]
        assert [m.values for m in got[0] if isinstance(m, be.DataRow)] == [(str(2 * n).encode(),) for n in range(1000)]
        assert relay_state(proxy, name) == (True, "I")


async def test_function_call_fastpath(proxy: RunningProxy, postgres: RealPostgres) -> None:
    """Fast-path calls of large-object functions behave as directly; other OIDs are refused (pgproxy cannot
    tell what a function given only by OID does) and the session stays usable."""
    create = fe.FunctionCall(957, (1,), (struct.pack("!i", -1),), 1)  # lo_creat(-1), binary result
    async with proxied_session(proxy) as proxied:
        created = await responses(proxied, create)
        assert isinstance(created[0], be.FunctionCallResponse) and created[0].value is not None
        oid = struct.unpack("!I", created[0].value)[0]
        unlink = fe.FunctionCall(964, (1,), (struct.pack("!I", oid),), 1)  # lo_unlink(oid)
        assert await responses(proxied, unlink) == [
            be.FunctionCallResponse(struct.pack("!i", 1)), be.ReadyForQuery("I"),
        ]
        for refused in (fe.FunctionCall(2026), fe.FunctionCall(177, (1,), (b"\0\0\0\2", b"\0\0\0\3"), 1),
                        fe.FunctionCall(1)):
            error, ready = await responses(proxied, refused)
            assert isinstance(error, be.ErrorResponse) and ready == be.ReadyForQuery("I")
            assert error.sqlstate == "42501" and "pgproxy:refused" in error.message
            assert error.detail is not None and "fast-path" in error.detail
        assert await proxied.query_values("SELECT 'usable'") == [("usable",)]


async def test_parameter_status_changes_reach_the_client(proxy: RunningProxy, postgres: RealPostgres) -> None:
    statements = (
        "SET TimeZone = 'Asia/Tokyo'",
        "SET DateStyle = 'German'",
        "BEGIN; SET LOCAL IntervalStyle = 'iso_8601'",
        "ROLLBACK",
        "SET application_name = 'renamed by the client'",
    )
    async with proxied_session(proxy) as proxied, direct_session(postgres) as direct:
        got = [[await client.query(sql) for sql in statements] for client in (proxied, direct)]
    assert got[0] == got[1]
    statuses = [[(m.name, m.value) for m in answer if isinstance(m, be.ParameterStatus)] for answer in got[0]]
    assert statuses == [
        [("TimeZone", "Asia/Tokyo")],
        [("DateStyle", "German, DMY")],
        [("IntervalStyle", "iso_8601")],
        [("IntervalStyle", "postgres")],
        [("application_name", "renamed by the client")],
    ]


async def test_notice_storm(proxy: RunningProxy, postgres: RealPostgres) -> None:
    storm = "DO $$BEGIN FOR i IN 1..20000 LOOP RAISE NOTICE 'notice %', i; END LOOP; END$$"
    async with proxied_session(proxy) as proxied, direct_session(postgres) as direct:
        got = [await client.query(storm) for client in (proxied, direct)]
    assert got[0] == got[1]
    notices = [m.message for m in got[0] if isinstance(m, be.NoticeResponse)]
    assert notices == [f"notice {i}" for i in range(1, 20001)]
    assert got[0][-2:] == [be.CommandComplete("DO"), be.ReadyForQuery("I")]


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
async def test_20mb_bytea_both_ways(proxy: RunningProxy, postgres: RealPostgres, binary: bool) -> None:
    data = os.urandom(20 * 1024 * 1024)
    placeholder = "%b" if binary else "%t"  # the parameter's format; the cursor picks the result's
    sql = f"SELECT md5(x), length(x), x FROM (SELECT {placeholder}::bytea AS x) AS v"
    # Text: a 40 MB hex parameter and a 40 MB hex DataRow through the relay; binary: 20 MB each way.
    results = []
    for conninfo in (postgres.dsn(UPSTREAM_ROLE), proxy.conninfo(sslmode="require" if binary else "disable")):
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            cursor = conn.cursor(binary=binary)
            await cursor.execute(sql, (data,))
            results.append(await cursor.fetchone())
    assert results[0] == results[1] == (hashlib.md5(data, usedforsecurity=False).hexdigest(), len(data), data)


# -- encryption negotiation without a certificate ----------------------------------------------------------
@pytest.fixture(scope="module")
def certless_proxy(proxy_factory: ProxyFactory) -> RunningProxy:
    """No TLS certificate, plaintext allowed from loopback, listening on every interface."""
    return proxy_factory(tls_cert=None, tls_key=None, listen="0.0.0.0:0")


@pytest.fixture(scope="module")
def remote_address() -> str:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this host has no non-loopback address to connect from")
    return address


async def test_sslrequest_without_certificate_is_answered_n(certless_proxy: RunningProxy) -> None:
    async with await RawClient.connect(certless_proxy.port) as client:
        await client.send(fe.SSLRequest())
        assert await client.read_byte() == b"N"
        await client.login(certless_proxy.idp.mint())  # plaintext continues from loopback
        assert await client.query_values("SELECT 'plaintext on loopback'") == [("plaintext on loopback",)]
    with pytest.raises(psycopg.OperationalError, match="server does not support SSL"):
        await psycopg.AsyncConnection.connect(certless_proxy.conninfo(sslmode="require"), connect_timeout=10)
    async with await psycopg.AsyncConnection.connect(certless_proxy.conninfo(sslmode="prefer")) as conn:
        assert not conn.pgconn.ssl_in_use
    await wait_for_connections_at_most(certless_proxy, 0)


async def test_plaintext_from_a_non_loopback_address_is_refused(
    certless_proxy: RunningProxy, proxy_factory: ProxyFactory, remote_address: str
) -> None:
    async with await RawClient.connect(certless_proxy.port, remote_address) as client:
        await client.send(fe.SSLRequest())
        assert await client.read_byte() == b"N"
        await client.send_startup()
        error = await client.expect_fatal("28000")
        assert error.message == (
            "pgproxy accepts no connection from here: "
            "unencrypted connections are only allowed from loopback when configured"
        )
        assert client.received == [error]  # refused before a password (token) was asked for
    tls_proxy = proxy_factory(listen="0.0.0.0:0")  # plaintext allowed on loopback, TLS offered
    async with await RawClient.connect(tls_proxy.port, remote_address) as client:
        await client.send_startup()
        error = await client.expect_fatal("28000")
        assert error.message.startswith("pgproxy requires TLS")
        assert error.hint == "connect with sslmode=require"
    async with await RawClient.connect(tls_proxy.port, remote_address) as client:
        await client.login(tls_proxy.idp.mint(), tls=True)
        assert await client.query_values("SELECT 'tls from afar'") == [("tls from afar",)]
    await wait_for_connections_at_most(certless_proxy, 0)
    await wait_for_connections_at_most(tls_proxy, 0)


# -- the relay's idea of "idle" must match the server's -------------------------------------------------------
# The relay counts Query/Sync/FunctionCall and expects one ReadyForQuery for each. The server answers fewer when
# it skips messages: after an error in an extended-protocol batch it discards everything up to Sync (Query and
# FunctionCall included), and during COPY FROM STDIN it ignores Sync. Then the relay believes a request is still
# in flight forever: graceful shutdown waits out its whole grace period and token expiry never ends the session.
async def _skip_after_extended_error(client: RawClient, call: fe.FrontendMessage) -> list[be.BackendMessage]:
    return await responses(client, fe.Parse("", "SELEC broken"), call, fe.Sync())


async def _query_after_flushed_extended_error(client: RawClient) -> list[be.BackendMessage]:
    await client.send(fe.Parse("", "SELEC broken"), fe.Flush())  # the error arrives before the Query is sent
    error = await client.expect(be.ErrorResponse)
    return [error, *await responses(client, fe.Query("SELECT 1"), fe.Sync())]


async def _sync_inside_copy_in(client: RawClient) -> list[be.BackendMessage]:
    await client.query("CREATE TEMP TABLE copy_target (n int)")
    await client.send(fe.Query("COPY copy_target FROM STDIN"))
    await client.expect(be.CopyInResponse)
    return await responses(client, fe.CopyData(b"1\n"), fe.Sync(), fe.CopyData(b"2\n"), fe.CopyDone())


@pytest.mark.parametrize(
    "case",
    [
        "query-after-extended-error",
        "function-call-after-extended-error",
        "query-after-flushed-extended-error",
        "sync-inside-copy-in",
    ],
)
async def test_relay_is_idle_after_messages_the_server_skips(
    proxy: RunningProxy, postgres: RealPostgres, case: str
) -> None:
    async def run(client: RawClient) -> list[be.BackendMessage]:
        if case == "sync-inside-copy-in":
            return await _sync_inside_copy_in(client)
        if case == "query-after-flushed-extended-error":
            return await _query_after_flushed_extended_error(client)
        call = fe.Query("SELECT 1") if case.startswith("query") else fe.FunctionCall(2026)
        return await _skip_after_extended_error(client, call)

    name = subject("skipped")
    async with proxied_session(proxy, proxy.idp.mint(name)) as proxied, direct_session(postgres) as direct:
        assert await run(proxied) == await run(direct)  # one ReadyForQuery: the server skipped a request
        assert relay_state(proxy, name) == (True, "I"), "pgproxy still counts a request in flight"


# Run in a child process: libpq's blocking calls would hold the GIL that the in-process proxy thread needs.
LIBPQ_COPY = """
import sys

from psycopg import pq

conn = pq.PGconn.connect(sys.argv[1].encode())
assert conn.status == pq.ConnStatus.OK, conn.error_message
assert conn.exec_(b"CREATE TEMP TABLE copy_target (n int)").status == pq.ExecStatus.COMMAND_OK
conn.send_query_params(b"COPY copy_target FROM STDIN", None)  # Parse/Bind/Describe/Execute/Sync
started = conn.get_result()
assert started is not None and started.status == pq.ExecStatus.COPY_IN
conn.put_copy_data(b"1\\n2\\n3\\n")
conn.put_copy_end()  # CopyDone and, because the COPY came through the extended protocol, Sync
done = conn.get_result()
assert done is not None and done.status == pq.ExecStatus.COMMAND_OK, conn.error_message
assert conn.get_result() is None
print(done.command_status.decode(), conn.exec_(b"SELECT count(*) FROM copy_target").get_value(0, 0).decode())
sys.stdout.flush()
sys.stdin.read()  # stay connected until the test has looked at the proxy
"""


@pytest.mark.xfail(
    strict=True,
    reason="known gap: the Sync libpq pipelines before extended-protocol COPY data is counted although the "
    "server ignores it; the session is then not seen as idle (shutdown and token-expiry deadlines bound it)",
)
async def test_relay_is_idle_after_libpq_extended_protocol_copy(proxy: RunningProxy) -> None:
    """libpq sends a COPY given to PQsendQueryParams as Parse/Bind/Describe/Execute/Sync and, after CopyDone, a
    second Sync; the server ignores the first (it arrives during COPY), so one request gets no ReadyForQuery."""
    name = subject("libpq-copy")
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LIBPQ_COPY, proxy.conninfo(proxy.idp.mint(name)),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        async with asyncio.timeout(DEADLINE):
            line = await child.stdout.readline()
        assert line.decode().split() == ["COPY", "3", "3"]
        assert relay_state(proxy, name) == (True, "I"), "pgproxy still counts a request in flight"
    finally:
        child.stdin.close()
        async with asyncio.timeout(DEADLINE):
            assert await child.wait() == 0


async def test_relay_is_busy_while_a_batch_runs_after_a_pipelined_copy(proxy: RunningProxy, admin: Admin) -> None:
    """A client may send its COPY data right behind the COPY statement, before CopyInResponse comes back. Whatever
    the relay does to model COPY, the statement that runs afterwards is in flight: ending the session "at an idle
    moment" then would cut its result in half."""
    name = subject("copy-pipelined")
    batch = (fe.Bind("", ""), fe.Execute(""), fe.Sync())
    async with proxied_session(proxy, proxy.idp.mint(name)) as client:
        await client.query("CREATE TEMP TABLE copy_target (n int)")
        answer = await responses(client, fe.Query("COPY copy_target FROM STDIN"), fe.CopyData(b"1\n"), fe.CopyDone())
        assert [type(m) for m in answer] == [be.CopyInResponse, be.CommandComplete, be.ReadyForQuery]
        await client.send(fe.Parse("", "SELECT 1"), *batch, fe.Parse("", "SELECT pg_sleep(2)"), *batch)
        assert (await client.read_until_ready())[-1] == be.ReadyForQuery("I")  # the first batch
        await admin.wait_sleeping(backend_key(client).process_id)  # the second batch runs
        assert relay_state(proxy, name) == (False, "I"), "pgproxy believes the session is idle"
        assert (await client.read_until_ready())[-1] == be.ReadyForQuery("I")
        assert relay_state(proxy, name) == (True, "I")


async def test_token_expiry_during_copy_in_still_ends_the_session(proxy: RunningProxy) -> None:
    """The token expires while the client streams COPY data. The session must still end: after the COPY (as
    PostgreSQL's own idle moment) or by cutting it off, but not hang with the COPY half-fed."""
    async with proxied_session(proxy, proxy.idp.mint(subject("copy-expiring"), expires_in=2)) as client:
        await client.query("CREATE TEMP TABLE copy_target (n int)")
        await client.send(fe.Query("COPY copy_target FROM STDIN"))
        await client.expect(be.CopyInResponse)

        async def stream() -> None:
            for n in range(20):  # ~3 s of data: the token expires half-way
                with contextlib.suppress(ConnectionError):
                    await client.send(fe.CopyData(b"%d\n" % n))
                await asyncio.sleep(0.15)
            with contextlib.suppress(ConnectionError):
                await client.send(fe.CopyDone())

        mark = len(client.received)
        sender = asyncio.create_task(stream())
        try:
            async with asyncio.timeout(8):
                while not isinstance(await client.read_message(), be.ErrorResponse):
                    pass
        except TimeoutError:
            raise AssertionError("the session outlived its token: its COPY data is no longer read") from None
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        error = be.ErrorResponse.build("FATAL", "28000", "OIDC token expired; reconnect with a fresh token")
        assert client.received[mark:] in (
            [be.CommandComplete("COPY 20"), be.ReadyForQuery("I"), error],  # ended after the COPY
            [error],  # or cut off
        )
        await client.expect_closed()


async def test_token_expiry_ends_a_session_with_an_unsynced_extended_batch(proxy: RunningProxy) -> None:
    """Parse + Flush is answered at once (ParseComplete) and leaves nothing for the server to do: the session is
    at rest even though no Sync was sent, and an expired token must end it."""
    async with proxied_session(proxy, proxy.idp.mint(subject("open-batch"), expires_in=2)) as client:
        await client.send(fe.Parse("", "SELECT 1"), fe.Flush())
        assert await client.read_message() == be.ParseComplete()
        try:
            async with asyncio.timeout(8):
                error = await client.expect_fatal("28000")
        except TimeoutError:
            raise AssertionError("the session outlived its token: pgproxy waits for a Sync that never comes") from None
        assert error.message == "OIDC token expired; reconnect with a fresh token"


async def test_token_expiry_still_ends_a_session_after_an_extended_protocol_error(proxy: RunningProxy) -> None:
    async with proxied_session(proxy, proxy.idp.mint(subject("expiring"), expires_in=2)) as client:
        answer = await _skip_after_extended_error(client, fe.Query("SELECT 1"))
        assert [type(m) for m in answer] == [be.ErrorResponse, be.ReadyForQuery]
        # The session is idle; when the token expires (in ~2 s) pgproxy must end it with FATAL 28000, as it does
        # for a session that never saw the error (tests/integration/test_lifecycle.py).
        try:
            async with asyncio.timeout(10):
                error = await client.expect_fatal("28000")
        except TimeoutError:
            raise AssertionError("the session outlived its token: pgproxy never found it idle") from None
        assert error.message == "OIDC token expired; reconnect with a fresh token"


# -- cost of a large message arriving in pieces ----------------------------------------------------------------
async def test_framing_a_large_message_allocates_linearly() -> None:
    """A client (or the server) sends one large message; the relay frames it as it arrives in reads. An
    authenticated client trickling a 64 MB Query, or a ``SELECT repeat('x', 500000000)``, must not make the
    proxy allocate and copy (size / read size) times the message: that is CPU the whole event loop waits for."""
    size, read_size = 8 * 1024 * 1024, 64 * 1024
    message = b"Q" + i32(size + 4) + b"x" * (size - 1) + b"\x00"
    framer = MessageFramer(DEFAULT_MAX_MESSAGE)
    allocated, complete = 0, b""
    tracemalloc.start()
    try:
        for start in range(0, len(message), read_size):
            chunk = message[start : start + read_size]
            current, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            done, _ = framer.feed(chunk)
            allocated += tracemalloc.get_traced_memory()[1] - current
            complete += done
    finally:
        tracemalloc.stop()
    assert complete == message
    total = len(message)
    assert allocated <= 8 * total, f"framing one {total}-byte message allocated {allocated} bytes"


async def test_token_expiry_cannot_be_dodged_by_always_keeping_a_request_in_flight(
    proxy: RunningProxy, admin: Admin
) -> None:
    """A client that pipelines its next statement before each answer never has "no request in flight". pgproxy
    must still end the session once the token has expired (stop forwarding new requests, let the in-flight ones
    finish, then FATAL 28000); otherwise a token's lifetime does not bound the session's."""
    statement = fe.Query("SELECT pg_sleep(0.1)")
    name = subject("pipeliner")
    async with proxied_session(proxy, proxy.idp.mint(name, expires_in=2)) as client:
        pid = backend_key(client).process_id
        await client.send(statement, statement)
        answered, fatal = 0, None
        try:
            async with asyncio.timeout(10):  # the token expires ~2 s in
                while fatal is None:
                    try:
                        message = await client.read_message()
                    except ServerClosed:
                        break
                    if isinstance(message, be.ErrorResponse) and message.severity == "FATAL":
                        fatal = message
                    elif isinstance(message, be.ReadyForQuery):
                        answered += 1
                        with contextlib.suppress(ConnectionError):  # the proxy may have stopped listening
                            await client.send(statement)  # one more in flight before the last one is answered
        except TimeoutError:
            raise AssertionError(
                f"the session outlived its token: {answered} statements answered, still running"
            ) from None
    # The FATAL can be lost when the proxy closes with our unread statements queued (the kernel then resets
    # the connection), so the proof that the session ended is on both sides: pgproxy and the server.
    if fatal is not None:
        assert (fatal.sqlstate, fatal.message) == ("28000", "OIDC token expired; reconnect with a fresh token")
    await admin.wait_backend_gone(pid)
    assert proxy.call_soon(lambda: proxy_session(proxy, name)) is None
