"""Hostile and malformed client input against the real proxy, byte by byte through a raw socket.

Every case checks the exact answer (a FATAL ErrorResponse with the SQLSTATE PostgreSQL itself would use,
then the connection closes) and then that the proxy still serves a normal client and has forgotten the
bad connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest

from pgproxy.wire import backend as be
from pgproxy.wire import frontend as fe
from pgproxy.wire.startup import PROTOCOL_3_0
from tests.support.pg_plugin import TEST_DATABASE
from tests.support.proxy_plugin import ProxyFactory, RunningProxy
from tests.support.raw_client import (
    DEADLINE,
    RawClient,
    assert_proxy_healthy,
    connection_count,
    i32,
    wait_for_connections_at_most,
)


@pytest.fixture
async def healthy_after(proxy: RunningProxy) -> AsyncIterator[None]:
    """After the test: the proxy serves a normal client and tracks no connection the test left behind."""
    before = connection_count(proxy)
    yield
    await wait_for_connections_at_most(proxy, before)
    await assert_proxy_healthy(proxy)


@pytest.fixture(scope="module")
def small_proxy(proxy_factory: ProxyFactory) -> RunningProxy:
    """A proxy that accepts client messages of at most 4096 bytes."""
    return proxy_factory(max_message_bytes=4096)


@pytest.fixture(scope="module")
def impatient_proxy(proxy_factory: ProxyFactory) -> RunningProxy:
    """A proxy that gives clients one second to log in."""
    return proxy_factory(startup_timeout_seconds=1.0)


pytestmark = pytest.mark.usefixtures("healthy_after")


# -- the first packet ---------------------------------------------------------------------------------
# A length field the proxy cannot accept is 08P01 (too small) or 54000 (too large); a packet that frames
# but names no known protocol is 0A000, as PostgreSQL says it.
TOO_LARGE_OR_INVALID = ("08P01", "54000")


@pytest.mark.parametrize(
    ("garbage", "sqlstates"),
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: pgproxy\r\n\r\n", TOO_LARGE_OR_INVALID, id="http-request"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64), TOO_LARGE_OR_INVALID,
                     id="tls-client-hello"),
        pytest.param(b"\xff" * 64, ("08P01",), id="all-ones"),
        pytest.param(i32(16) + b"\x00\x07\x00\x00" + b"\xde\xad\xbe\xef" * 2, ("0A000",), id="framed-nonsense"),
    ],
)
async def test_garbage_first_packet_is_refused(
    proxy: RunningProxy, garbage: bytes, sqlstates: tuple[str, ...]
) -> None:
    async with await RawClient.connect(proxy.port) as client:
        await client.send(garbage)
        error = await client.expect_error()
        assert error.severity == "FATAL"
        assert error.sqlstate in sqlstates, error
        assert await client.expect_closed() == []
        assert client.received == [error]


@pytest.mark.parametrize(("major", "minor"), [(2, 0), (1234, 5681), (4, 0), (0, 0)])
async def test_unsupported_protocol_version(proxy: RunningProxy, major: int, minor: int) -> None:
    async with await RawClient.connect(proxy.port) as client:
        await client.send_startup(major=major, minor=minor)
        error = await client.expect_fatal("0A000")
        assert f"unsupported frontend protocol {major}.{minor}" in error.message


async def test_protocol_2_from_a_real_client_shape(proxy: RunningProxy) -> None:
    # A protocol-2 startup packet is fixed-size (296 bytes), not a parameter list; still 0A000.
    packet = i32(296) + i32(2 << 16) + b"agent".ljust(64, b"\x00") + bytes(296 - 8 - 64)
    async with await RawClient.connect(proxy.port) as client:
        await client.send(packet)
        error = await client.expect_fatal("0A000")
        assert "unsupported frontend protocol 2.0" in error.message


@pytest.mark.parametrize("length", [10_001, 65_536, 0x7FFF_FFFF])
async def test_startup_packet_too_long(proxy: RunningProxy, length: int) -> None:
    async with await RawClient.connect(proxy.port) as client:
        # Only the length: the answer must come before the body, which is never sent.
        await client.send(i32(length) + i32(3 << 16))
        error = await client.expect_error()
        assert error.severity == "FATAL"
        assert error.sqlstate in TOO_LARGE_OR_INVALID
        assert str(length) in error.message
        await client.expect_closed()


@pytest.mark.parametrize("length", [7, 4, 0, -1, -2_147_483_648])
async def test_startup_packet_too_short(proxy: RunningProxy, length: int) -> None:
    async with await RawClient.connect(proxy.port) as client:
        await client.send(i32(length) + bytes(8))
        error = await client.expect_fatal("08P01")
        assert error.message == f"invalid startup packet length {length}"


async def test_startup_packet_without_user(proxy: RunningProxy) -> None:
    async with await RawClient.connect(proxy.port) as client:
        await client.send(fe.StartupMessage(3, 0, (("database", TEST_DATABASE),)))
        error = await client.expect_fatal("28000")
        assert error.message == "no PostgreSQL user name specified in startup packet"


async def test_startup_packet_with_bad_terminator(proxy: RunningProxy) -> None:
    body = i32(3 << 16) + b"user\x00agent\x00"  # no final NUL: the list never ends
    async with await RawClient.connect(proxy.port) as client:
        await client.send(i32(len(body) + 4) + body)
        await client.expect_fatal("08P01")


async def test_startup_packet_with_duplicate_parameter(proxy: RunningProxy) -> None:
    body = i32(3 << 16) + b"user\x00agent\x00user\x00admin\x00\x00"
    async with await RawClient.connect(proxy.port) as client:
        await client.send(i32(len(body) + 4) + body)
        error = await client.expect_fatal("08P01")
        assert "duplicate parameter 'user'" in error.message


# -- truncated input, silence ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param(b"\x00\x00", id="half-a-length"),
        pytest.param(fe.StartupMessage(3, 0, (("user", "agent"),)).encode()[:-3], id="startup-cut"),
        pytest.param(fe.SSLRequest().encode()[:6], id="sslrequest-cut"),
    ],
)
async def test_truncated_startup_then_close(proxy: RunningProxy, prefix: bytes) -> None:
    async with await RawClient.connect(proxy.port) as client:
        await client.send(prefix)
    # the healthy_after fixture checks the proxy forgot the connection and still serves


async def test_truncated_password_then_close(proxy: RunningProxy) -> None:
    async with await RawClient.connect(proxy.port) as client:
        await client.send_startup()
        await client.expect(be.AuthenticationCleartextPassword)
        await client.send(fe.PasswordMessage(proxy.idp.mint().encode()).encode()[:40])


async def test_truncated_message_after_login_then_close(proxy: RunningProxy) -> None:
    async with await RawClient.connect(proxy.port) as client:
        await client.login(proxy.idp.mint())
        await client.send(fe.Query("SELECT 'never finished'").encode()[:-5])


async def test_connection_that_never_logs_in_times_out(impatient_proxy: RunningProxy) -> None:
    async with await RawClient.connect(impatient_proxy.port) as client:
        await client.send_startup()
        await client.expect(be.AuthenticationCleartextPassword)
        # ...and never sends the password.
        error = await client.expect_fatal("08006")
        assert error.message == "timeout expired during connection startup"
    await wait_for_connections_at_most(impatient_proxy, 0)
    await assert_proxy_healthy(impatient_proxy)


# -- typed messages: lengths ----------------------------------------------------------------------------
async def test_oversized_message_after_login_refused_from_its_header(small_proxy: RunningProxy) -> None:
    async with await RawClient.connect(small_proxy.port) as client:
        await client.login(small_proxy.idp.mint())
        # A message just under the limit still passes.
        assert await client.query_values("SELECT '" + "x" * 4000 + "' = '' AS big") == [("f",)]
        await client.send(b"Q" + i32(4097))  # announce one byte too many; send no body
        error = await client.expect_fatal("54000")
        assert error.message == "message of 4097 bytes exceeds the limit of 4096 bytes"
    await wait_for_connections_at_most(small_proxy, 0)
    await assert_proxy_healthy(small_proxy)


async def test_oversized_password_message_refused_from_its_header(proxy: RunningProxy) -> None:
    async with await RawClient.connect(proxy.port) as client:
        await client.send_startup()
        await client.expect(be.AuthenticationCleartextPassword)
        await client.send(b"p" + i32(10_000_000))
        error = await client.expect_fatal("54000")
        assert "exceeds the limit" in error.message


@pytest.mark.parametrize("length", [3, 0, -1])
async def test_invalid_message_length_after_login(proxy: RunningProxy, length: int) -> None:
    async with await RawClient.connect(proxy.port) as client:
        await client.login(proxy.idp.mint())
        await client.send(b"Q" + i32(length))
        error = await client.expect_fatal("08P01")
        assert error.message == f"invalid message length {length}"


@pytest.mark.parametrize("length", [3, 0, -1])
async def test_invalid_message_length_instead_of_password(proxy: RunningProxy, length: int) -> None:
    async with await RawClient.connect(proxy.port) as client:
        await client.send_startup()
        await client.expect(be.AuthenticationCleartextPassword)
        await client.send(b"p" + i32(length))
        error = await client.expect_fatal("08P01")
        assert error.message == f"invalid message length {length}"


# -- the password phase -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "message",
    [
        pytest.param(fe.Query("SELECT 1"), id="query"),
        pytest.param(fe.Sync(), id="sync"),
        pytest.param(fe.Terminate(), id="terminate"),
        pytest.param(fe.Parse("", "SELECT 1"), id="parse"),
    ],
)
async def test_non_password_message_when_password_expected(
    proxy: RunningProxy, message: fe.FrontendMessage
) -> None:
    async with await RawClient.connect(proxy.port) as client:
        await client.send_startup()
        await client.expect(be.AuthenticationCleartextPassword)
        await client.send(message)
        error = await client.expect_fatal("08P01")
        assert error.message == (
            f"expected a password message, received message type {message.type_code.decode()!r}"
        )


async def test_password_followed_by_pipelined_query_is_refused(proxy: RunningProxy) -> None:
    async with await RawClient.connect(proxy.port) as client:
        await client.send_startup()
        await client.expect(be.AuthenticationCleartextPassword)
        await client.send(fe.PasswordMessage(proxy.idp.mint().encode()), fe.Query("SELECT 1"))
        error = await client.expect_fatal("08P01")
        assert error.message == "unexpected data after the password message"


async def test_password_not_utf8(proxy: RunningProxy) -> None:
    async with await RawClient.connect(proxy.port) as client:
        await client.send_startup()
        await client.expect(be.AuthenticationCleartextPassword)
        await client.send_password(b"\xff\xfe token")
        error = await client.expect_fatal("08P01")
        assert error.message == "password is not valid UTF-8"


# -- encryption negotiation -------------------------------------------------------------------------------
async def test_data_after_sslrequest_before_handshake_is_refused(proxy: RunningProxy) -> None:
    """CVE-2021-23214 class: bytes sent in the clear behind an SSLRequest must not be processed."""
    async with await RawClient.connect(proxy.port) as client:
        startup = fe.StartupMessage(3, 0, (("user", "agent"), ("database", TEST_DATABASE)))
        await client.send(fe.SSLRequest(), startup)  # one write: both are buffered before the answer
        # The answer is not b"S" but an ErrorResponse, in plaintext, before any TLS.
        error = await client.expect_fatal("08P01")
        assert error.message == "received unencrypted data after SSL request"
        assert client.received == [error]


async def test_plaintext_instead_of_tls_handshake_is_refused(proxy: RunningProxy) -> None:
    async with await RawClient.connect(proxy.port) as client:
        await client.send(fe.SSLRequest())
        assert await client.read_byte() == b"S"
        await client.send_startup()  # the client "forgets" to start TLS
        tail = b""
        async with asyncio.timeout(DEADLINE):
            while chunk := await client.reader.read(65536):  # at most a TLS alert, then EOF
                tail += chunk
        assert be.AuthenticationCleartextPassword().encode() not in tail  # never a password request


async def test_duplicate_sslrequest_inside_tls(proxy: RunningProxy) -> None:
    async with await RawClient.connect(proxy.port) as client:
        await client.request_tls()
        await client.send(fe.SSLRequest())
        error = await client.expect_fatal("08P01")
        assert error.message == "duplicate SSLRequest"


async def test_gssencrequest_answered_n_then_login_works(proxy: RunningProxy) -> None:
    async with await RawClient.connect(proxy.port) as client:
        await client.send(fe.GSSENCRequest())
        assert await client.read_byte() == b"N"
        await client.login(proxy.idp.mint())
        assert await client.query_values("SELECT 1") == [("1",)]


async def test_gssencrequest_then_tls_then_login_works(proxy: RunningProxy) -> None:
    # What libpq does with gssencmode=prefer and sslmode=require when the server has no GSSAPI.
    async with await RawClient.connect(proxy.port) as client:
        await client.send(fe.GSSENCRequest())
        assert await client.read_byte() == b"N"
        await client.login(proxy.idp.mint(), tls=True)
        assert await client.query_values("SELECT 1") == [("1",)]


async def test_second_gssencrequest_is_refused(proxy: RunningProxy) -> None:
    async with await RawClient.connect(proxy.port) as client:
        await client.send(fe.GSSENCRequest())
        assert await client.read_byte() == b"N"
        await client.send(fe.GSSENCRequest())
        error = await client.expect_fatal("08P01")
        assert error.message == "unexpected GSSENCRequest"


async def test_cancel_request_with_unknown_key_is_ignored(proxy: RunningProxy) -> None:
    async with await RawClient.connect(proxy.port) as client:
        await client.send(fe.CancelRequest(12345, b"\x01\x02\x03\x04"))
        assert await client.expect_closed() == []


# -- startup parameters -----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["database", "true", "1", "on", "yes"])
async def test_replication_connection_refused(proxy: RunningProxy, value: str) -> None:
    async with await RawClient.connect(proxy.port) as client:
        await client.send_startup(extra=[("replication", value)])
        error = await client.expect_fatal("42501")
        assert error.message == "replication connections are not allowed through pgproxy"


@pytest.mark.parametrize(
    ("extra", "name"),
    [
        pytest.param([("options", "-c search_path=evil")], "search_path", id="options-c-space"),
        pytest.param([("options", "-csearch_path=evil")], "search_path", id="options-c-joined"),
        pytest.param([("options", "--search_path=evil")], "search_path", id="options-double-dash"),
        pytest.param([("options", "-c SEARCH_PATH=evil")], "SEARCH_PATH", id="options-upper-case"),
        pytest.param(
            [("options", "-c statement_timeout=5000 -c role=postgres")], "role", id="options-second-setting"
        ),
        pytest.param([("options", "-c session_authorization=postgres")], "session_authorization",
                     id="options-session-authorization"),
        pytest.param([("options", "-c default_transaction_read_only=off")], "default_transaction_read_only",
                     id="options-read-only-off"),
        pytest.param([("search_path", "evil")], "search_path", id="startup-parameter"),
        pytest.param([("role", "postgres")], "role", id="startup-parameter-role"),
    ],
)
async def test_policy_relevant_settings_refused(
    proxy: RunningProxy, extra: list[tuple[str, str]], name: str
) -> None:
    async with await RawClient.connect(proxy.port) as client:
        await client.send_startup(extra=extra)
        error = await client.expect_fatal("42501")
        assert error.message == (
            f"startup parameter {name!r} is not allowed through pgproxy; "
            "set it with a statement after connecting, where policy can see it"
        )
        # refused before the token was even asked for
        assert not any(isinstance(m, be.AuthenticationCleartextPassword) for m in client.received)


@pytest.mark.parametrize("options", ["-P", "-d 5", "-c"])
async def test_non_setting_options_refused(proxy: RunningProxy, options: str) -> None:
    async with await RawClient.connect(proxy.port) as client:
        await client.send_startup(extra=[("options", options)])
        error = await client.expect_fatal("42501")
        assert "is not allowed through pgproxy" in error.message


async def test_escaped_option_cannot_smuggle_a_second_setting(proxy: RunningProxy) -> None:
    # Backslash-escaped spaces make one value, which the server must see as one (invalid) value.
    async with await RawClient.connect(proxy.port) as client:
        await client.send_startup(extra=[("options", r"-c statement_timeout=5000\ -c\ search_path=evil")])
        await client.expect(be.AuthenticationCleartextPassword)
        await client.send_password(proxy.idp.mint())
        error = await client.expect_error()
        assert error.sqlstate == "22023"  # invalid value for parameter "statement_timeout"
        assert "statement_timeout" in error.message


async def test_refused_options_through_psycopg(proxy: RunningProxy) -> None:
    with pytest.raises(psycopg.OperationalError, match="startup parameter 'search_path' is not allowed"):
        await psycopg.AsyncConnection.connect(proxy.conninfo(options="-c search_path=evil"), connect_timeout=10)


async def test_allowed_options_reach_the_server(proxy: RunningProxy) -> None:
    conninfo = proxy.conninfo(options="-c statement_timeout=5000 -c lock_timeout=1234")
    async with await psycopg.AsyncConnection.connect(conninfo, connect_timeout=10) as conn:
        cursor = await conn.execute("SELECT current_setting('statement_timeout'), current_setting('lock_timeout')")
        assert await cursor.fetchone() == ("5s", "1234ms")


async def test_allowed_options_through_raw_client(proxy: RunningProxy) -> None:
    async with await RawClient.connect(proxy.port) as client:
        await client.login(proxy.idp.mint(), extra=[("options", "-c statement_timeout=5000"),
                                                    ("TimeZone", "Asia/Tokyo"), ("replication", "false")])
        assert await client.query_values("SHOW statement_timeout") == [("5s",)]
        assert await client.query_values("SHOW TimeZone") == [("Asia/Tokyo",)]


# -- protocol negotiation ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("minor", "options"),
    [
        pytest.param(2, (), id="3.2"),
        pytest.param(2, ("_pq_.test_option",), id="3.2-with-option"),
        pytest.param(0, ("_pq_.test_option", "_pq_.other"), id="3.0-with-options"),
        pytest.param(9999, (), id="3.9999"),
    ],
)
async def test_newer_protocol_is_negotiated_down(proxy: RunningProxy, minor: int, options: tuple[str, ...]) -> None:
    async with await RawClient.connect(proxy.port) as client:
        messages = await client.login(proxy.idp.mint(), minor=minor, extra=[(o, "on") for o in options])
        assert await client.query_values("SELECT 1") == [("1",)]
    negotiation, request = messages[0], messages[1]
    assert isinstance(negotiation, be.NegotiateProtocolVersion)
    assert isinstance(request, be.AuthenticationCleartextPassword)
    assert negotiation.unrecognized_options == options
    key = next(m for m in messages if isinstance(m, be.BackendKeyData))
    assert len(key.secret_key) == 4  # protocol 3.0 keys
    # PostgreSQL sends the full version it will speak (3.0 = 196608) and libpq reads it that way
    # (protocol 3.0 or "downgrade to pre-3.0" otherwise), whatever the field's documented name suggests.
    assert negotiation.newest_version == PROTOCOL_3_0


async def test_libpq_asking_for_protocol_3_2_gets_in(proxy: RunningProxy) -> None:
    if psycopg.pq.version() < 180000:
        pytest.skip("libpq < 18 cannot ask for protocol 3.2")
    conninfo = proxy.conninfo(max_protocol_version="3.2")
    async with await psycopg.AsyncConnection.connect(conninfo, connect_timeout=10) as conn:
        cursor = await conn.execute("SELECT 1")
        assert await cursor.fetchone() == (1,)
