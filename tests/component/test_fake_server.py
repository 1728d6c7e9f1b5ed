"""pgproxy against a scripted fake PostgreSQL: upstream behaviour a real server will not produce on demand.

Hostile or broken upstreams (cleartext password over plain TCP, 'S' followed by injected bytes, garbage
after login, a hang-up mid-result, a SCRAM server that cannot prove it knows the password) must each end
in a clear error for the client and leave the proxy serving; the cancel key a client sees must keep the
upstream pid but never the upstream secret.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import psycopg
import pytest

from pgproxy.wire import backend as be
from pgproxy.wire import frontend as fe
from tests.support.fake_server import (
    UPSTREAM_PASSWORD,
    AwaitClose,
    Close,
    Expect,
    ExpectCancel,
    ExpectSSLRequest,
    ExpectStartup,
    FakeServer,
    Scram,
    Send,
    ServeQueries,
    greeting,
    standard_session,
)
from tests.support.pg_plugin import TEST_DATABASE
from tests.support.proxy_plugin import ProxyFactory, RunningProxy
from tests.support.raw_client import (
    RawClient,
    assert_proxy_healthy,
    i32,
    wait_for_connections_at_most,
)

LOGIN_FAILED = "pgproxy could not log in to the database server"
BAD_SERVER_MESSAGE = "pgproxy received an invalid message from the server"


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[FakeServer]:
    server = await FakeServer().start()
    yield server
    await server.close()


@pytest.fixture(scope="module")
def fake_proxy(proxy_factory: ProxyFactory, fake: FakeServer) -> RunningProxy:
    """A proxy whose upstream is the fake server, over plain TCP (sslmode=disable)."""
    return proxy_factory(upstream=fake.dsn("disable"))


@pytest.fixture(autouse=True)
async def fake_sessions_checked(fake: FakeServer) -> AsyncIterator[int]:
    """Each test starts with no queued script; afterwards every fake session ended without a script error."""
    fake.clear()
    since = len(fake.sessions)
    yield since
    await fake.wait_idle(since)
    fake.check(since)


async def _refused_login(proxy: RunningProxy, database: str = TEST_DATABASE) -> be.ErrorResponse:
    async with await RawClient.connect(proxy.port) as client:
        await client.send_startup(database=database)
        return await client.answer_password_expecting_error(proxy.idp.mint())


# -- what pgproxy refuses to do for an upstream ---------------------------------------------------------
async def test_cleartext_password_over_plain_tcp_is_refused(
    fake: FakeServer, fake_proxy: RunningProxy, fake_sessions_checked: int
) -> None:
    fake.queue(ExpectStartup(), Send(be.AuthenticationCleartextPassword()), AwaitClose())
    error = await _refused_login(fake_proxy)
    assert (error.severity, error.sqlstate, error.message) == ("FATAL", "08006", LOGIN_FAILED)

    fake.queue(ExpectStartup(), Send(be.AuthenticationCleartextPassword()), AwaitClose())
    with pytest.raises(psycopg.OperationalError, match=LOGIN_FAILED):
        await psycopg.AsyncConnection.connect(fake_proxy.conninfo(), connect_timeout=10)

    await fake.wait_idle(fake_sessions_checked)
    for session in fake.sessions[fake_sessions_checked:]:
        assert session.messages == []  # no PasswordMessage
        assert UPSTREAM_PASSWORD.encode() not in session.raw
    await assert_proxy_healthy(fake_proxy)


@pytest.mark.parametrize(
    ("sslmode", "answer"),
    [
        pytest.param("prefer", b"S" + be.AuthenticationOk().encode(), id="S-plus-injected-bytes-prefer"),
        pytest.param("require", b"S" + be.AuthenticationOk().encode(), id="S-plus-injected-bytes-require"),
        pytest.param("require", b"N", id="N-when-tls-required"),
        pytest.param("prefer", be.ErrorResponse.build("FATAL", "XX000", "no").encode(), id="error-answer"),
    ],
)
async def test_bad_answers_to_sslrequest_are_refused(
    proxy_factory: ProxyFactory, fake: FakeServer, fake_sessions_checked: int, sslmode: str, answer: bytes
) -> None:
    proxy = proxy_factory(upstream=fake.dsn(sslmode))
    fake.queue(ExpectSSLRequest(answer), AwaitClose())
    error = await _refused_login(proxy)
    assert (error.severity, error.sqlstate, error.message) == ("FATAL", "08006", LOGIN_FAILED)
    await fake.wait_idle(fake_sessions_checked)
    session = fake.sessions[fake_sessions_checked]
    assert session.packets == [fe.SSLRequest()]  # nothing, least of all a startup packet, followed
    assert session.messages == []


async def test_plaintext_after_n_is_fine_with_prefer(proxy_factory: ProxyFactory, fake: FakeServer) -> None:
    proxy = proxy_factory(upstream=fake.dsn("prefer"))
    await assert_proxy_healthy(proxy)  # the default script answers the SSLRequest with 'N'


async def test_md5_answer_is_correct_and_password_never_sent(
    fake: FakeServer, fake_proxy: RunningProxy, fake_sessions_checked: int
) -> None:
    salt = b"\x01\x02\x03\x04"
    fake.queue(
        ExpectStartup(), Send(be.AuthenticationMD5Password(salt)), Expect(fe.PasswordMessage), greeting(),
        ServeQueries(),
    )
    async with await RawClient.connect(fake_proxy.port) as client:
        await client.login(fake_proxy.idp.mint())
        assert await client.query_values("SELECT 1") == [("1",)]
    await fake.wait_idle(fake_sessions_checked)
    session = fake.sessions[fake_sessions_checked]
    inner = hashlib.md5(f"{UPSTREAM_PASSWORD}u".encode(), usedforsecurity=False).hexdigest()
    outer = hashlib.md5(inner.encode() + salt, usedforsecurity=False).hexdigest()
    assert session.messages[0] == fe.PasswordMessage(b"md5" + outer.encode())
    assert UPSTREAM_PASSWORD.encode() not in session.raw


async def test_scram_login_works(fake: FakeServer, fake_proxy: RunningProxy, fake_sessions_checked: int) -> None:
    fake.queue(ExpectStartup(), Scram(UPSTREAM_PASSWORD), greeting(authenticated=True), ServeQueries())
    async with await RawClient.connect(fake_proxy.port) as client:
        await client.login(fake_proxy.idp.mint())
        assert await client.query_values("SELECT 1") == [("1",)]
    await fake.wait_idle(fake_sessions_checked)
    assert UPSTREAM_PASSWORD.encode() not in fake.sessions[fake_sessions_checked].raw


@pytest.mark.parametrize(
    "scram",
    [
        pytest.param(Scram(UPSTREAM_PASSWORD, skip_final=True), id="no-server-signature"),
        pytest.param(Scram(UPSTREAM_PASSWORD, wrong_signature=True), id="wrong-server-signature"),
    ],
)
async def test_scram_server_that_cannot_prove_itself_is_refused(
    fake: FakeServer, fake_proxy: RunningProxy, scram: Scram
) -> None:
    fake.queue(ExpectStartup(), scram, AwaitClose())
    error = await _refused_login(fake_proxy)
    assert (error.severity, error.sqlstate, error.message) == ("FATAL", "08006", LOGIN_FAILED)
    await assert_proxy_healthy(fake_proxy)


async def test_scram_plus_only_is_refused(fake: FakeServer, fake_proxy: RunningProxy) -> None:
    fake.queue(ExpectStartup(), Send(be.AuthenticationSASL(("SCRAM-SHA-256-PLUS",))), AwaitClose())
    error = await _refused_login(fake_proxy)
    assert (error.severity, error.sqlstate, error.message) == ("FATAL", "08006", LOGIN_FAILED)


# -- upstream failures during login ---------------------------------------------------------------------
async def test_upstream_refusal_reaches_the_client_with_its_sqlstate(
    fake: FakeServer, fake_proxy: RunningProxy
) -> None:
    refusal = be.ErrorResponse.build("FATAL", "53300", "sorry, too many clients already")
    fake.queue(ExpectStartup(), Send(refusal), AwaitClose())
    error = await _refused_login(fake_proxy)
    assert (error.severity, error.sqlstate, error.message) == ("FATAL", "53300", "sorry, too many clients already")


async def test_upstream_authentication_failure_is_not_echoed(fake: FakeServer, fake_proxy: RunningProxy) -> None:
    refusal = be.ErrorResponse.build("FATAL", "28P01", 'password authentication failed for user "u"')
    fake.queue(ExpectStartup(), Send(refusal), AwaitClose())
    error = await _refused_login(fake_proxy)
    assert (error.severity, error.sqlstate, error.message) == ("FATAL", "08006", LOGIN_FAILED)


async def test_upstream_hanging_up_during_login_is_reported(fake: FakeServer, fake_proxy: RunningProxy) -> None:
    """The client must learn why its login failed, not just see the connection drop."""
    fake.queue(ExpectStartup(), Close())
    async with await RawClient.connect(fake_proxy.port) as client:
        await client.send_startup()
        await client.expect(be.AuthenticationCleartextPassword)
        await client.send_password(fake_proxy.idp.mint())
        rest = await client.expect_closed()
    errors = [m for m in rest if isinstance(m, be.ErrorResponse)]
    assert errors, f"the connection was closed without an error; received {rest!r}"
    assert (errors[0].severity, errors[0].sqlstate[:2]) == ("FATAL", "08")
    await assert_proxy_healthy(fake_proxy)


async def test_upstream_garbage_during_login_is_reported(fake: FakeServer, fake_proxy: RunningProxy) -> None:
    fake.queue(ExpectStartup(), Send(b"\xfe" + i32(8) + b"junk"), AwaitClose())
    error = await _refused_login(fake_proxy)
    assert error.severity == "FATAL"
    assert error.sqlstate in ("08006", "08P01")
    await assert_proxy_healthy(fake_proxy)


# -- after login ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"\x00" * 5, id="length-below-4"),
        pytest.param(b"this is not a postgres message", id="absurd-length"),
        pytest.param(b"\xfe" + i32(8) + b"junk", id="unknown-message-type"),
        pytest.param(b"Z" + i32(4), id="ready-for-query-without-status"),
    ],
)
async def test_upstream_garbage_after_login(fake: FakeServer, fake_proxy: RunningProxy, garbage: bytes) -> None:
    fake.queue(*standard_session()[:2], Expect(fe.Query), Send(garbage), AwaitClose())
    async with await RawClient.connect(fake_proxy.port) as client:
        await client.login(fake_proxy.idp.mint())
        await client.send(fe.Query("SELECT 1"))
        error = await client.expect_fatal("08P01")
    assert error.message == BAD_SERVER_MESSAGE
    await wait_for_connections_at_most(fake_proxy, 0)
    await assert_proxy_healthy(fake_proxy)


def _mid_result_script(first: type[fe.FrontendMessage]) -> tuple[ExpectStartup | Send | Expect | Close, ...]:
    row_description = be.RowDescription((be.FieldDescription("n", 0, 0, 23, 4, -1, 0),))
    return (
        ExpectStartup(),
        greeting(),
        Expect(first),
        Send(row_description, be.DataRow((b"1",)), b"D" + i32(100) + b"\x00\x01"),  # the last row is cut
        Close(),
    )


async def test_upstream_closing_mid_result_closes_the_client(fake: FakeServer, fake_proxy: RunningProxy) -> None:
    fake.queue(*_mid_result_script(fe.Query))
    async with await RawClient.connect(fake_proxy.port) as client:
        await client.login(fake_proxy.idp.mint())
        await client.send(fe.Query("SELECT n FROM t"))
        rest = await client.expect_closed()  # EOF, not a hang
    assert [type(m) for m in rest if not isinstance(m, be.ErrorResponse)] == [be.RowDescription, be.DataRow]
    await wait_for_connections_at_most(fake_proxy, 0)

    fake.queue(*_mid_result_script(fe.Query))  # psycopg sends a parameterless execute as a simple Query
    conn = await psycopg.AsyncConnection.connect(fake_proxy.conninfo(), autocommit=True, connect_timeout=10)
    async with conn:
        with pytest.raises(psycopg.OperationalError):
            await conn.execute("SELECT n FROM t")
    await wait_for_connections_at_most(fake_proxy, 0)
    await assert_proxy_healthy(fake_proxy)


# -- what pgproxy tells the upstream and the client -------------------------------------------------------
async def test_upstream_sees_pgproxy_role_and_stamped_identity(
    fake: FakeServer, fake_proxy: RunningProxy, fake_sessions_checked: int
) -> None:
    token = fake_proxy.idp.mint("agent-9", email="carol@example.com")
    async with await RawClient.connect(fake_proxy.port) as client:
        await client.login(token, user="carol", extra=[("application_name", "etl"), ("DateStyle", "ISO")])
    await fake.wait_idle(fake_sessions_checked)
    startup = fake.sessions[fake_sessions_checked].startup
    assert (startup.protocol_major, startup.protocol_minor) == (3, 0)
    assert startup.params == {
        "user": "u",
        "database": TEST_DATABASE,
        "datestyle": "ISO",
        "application_name": "carol@example.com via pgproxy (etl)",
    }
    assert token.encode() not in fake.sessions[fake_sessions_checked].raw


async def test_backend_key_keeps_pid_but_not_the_upstream_secret(
    fake: FakeServer, fake_proxy: RunningProxy, fake_sessions_checked: int
) -> None:
    upstream_pid, upstream_secret = 31337, b"\xaa\xbb\xcc\xdd"
    fake.queue(*standard_session(upstream_pid, upstream_secret))
    async with await RawClient.connect(fake_proxy.port) as client:
        messages = await client.login(fake_proxy.idp.mint())
        keys = [m for m in messages if isinstance(m, be.BackendKeyData)]
        assert len(keys) == 1
        key = keys[0]
        assert key.process_id == upstream_pid
        assert key.secret_key != upstream_secret
        assert len(key.secret_key) == 4

        # A cancel with the client's key reaches the upstream with the upstream's key...
        fake.queue(ExpectCancel(), Close())
        async with await RawClient.connect(fake_proxy.port) as canceller:
            await canceller.send(fe.CancelRequest(upstream_pid, key.secret_key))
            assert await canceller.expect_closed() == []
        cancel_session = fake.sessions[-1]
        await cancel_session.finished.wait()
        assert cancel_session.packets == [fe.CancelRequest(upstream_pid, upstream_secret)]

        # ...and one with the upstream's own secret (or any other) reaches nobody.
        sessions_before = len(fake.sessions)
        for secret in (upstream_secret, b"\x00\x00\x00\x00"):
            async with await RawClient.connect(fake_proxy.port) as canceller:
                await canceller.send(fe.CancelRequest(upstream_pid, secret))
                assert await canceller.expect_closed() == []
        assert len(fake.sessions) == sessions_before

        assert await client.query_values("SELECT 1") == [("1",)]

    fake.queue(*standard_session(upstream_pid + 1, upstream_secret))
    async with await psycopg.AsyncConnection.connect(fake_proxy.conninfo(), connect_timeout=10) as conn:
        assert conn.info.backend_pid == upstream_pid + 1
