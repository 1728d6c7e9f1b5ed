"""Transport security and token verification at the proxy's front door, through real clients and raw bytes.

Every refused token is checked three ways: the real client (psycopg; asyncpg where libpq will not send the
input) fails with the proxy's reason, the raw ErrorResponse is exactly FATAL 28P01 naming the failed check,
and neither that error nor pgproxy's log output (at DEBUG) contains the token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import psycopg
import pytest

from pgproxy.wire import backend as be
from tests.support.fake_idp import FakeIdP
from tests.support.pg_plugin import TEST_DATABASE, UPSTREAM_ROLE, RealPostgres
from tests.support.proxy_plugin import ProxyFactory, RunningProxy
from tests.support.raw_client import (
    DEADLINE,
    RawClient,
    assert_proxy_healthy,
    connection_count,
    wait_for_connections_at_most,
)

TOKEN_HINT = "send a current OIDC token from your identity provider as the password"


@pytest.fixture(scope="module")
def tls_only_proxy(proxy_factory: ProxyFactory) -> RunningProxy:
    return proxy_factory(allow_plaintext_loopback=False)


# -- TLS ------------------------------------------------------------------------------------------------
async def test_plaintext_client_refused_when_tls_required(tls_only_proxy: RunningProxy) -> None:
    with pytest.raises(psycopg.OperationalError, match="pgproxy requires TLS") as refused:
        await psycopg.AsyncConnection.connect(tls_only_proxy.conninfo(sslmode="disable"), connect_timeout=10)
    assert "sslmode=require" in str(refused.value)

    async with await RawClient.connect(tls_only_proxy.port) as client:
        await client.send_startup()
        error = await client.expect_fatal("28000")
    assert error.message == (
        "pgproxy requires TLS: unencrypted connections are only allowed from loopback when configured"
    )
    assert error.hint == "connect with sslmode=require"
    # Refused before the password was asked for, so no token ever crossed the wire in the clear.
    assert client.received == [error]
    await assert_proxy_healthy(tls_only_proxy)


@pytest.mark.parametrize("sslmode", ["require", "prefer"])
async def test_tls_client_accepted_when_tls_required(tls_only_proxy: RunningProxy, sslmode: str) -> None:
    conninfo = tls_only_proxy.conninfo(sslmode=sslmode)
    async with await psycopg.AsyncConnection.connect(conninfo, connect_timeout=10) as conn:
        assert conn.pgconn.ssl_in_use
        cursor = await conn.execute("SELECT current_database()")
        assert await cursor.fetchone() == (TEST_DATABASE,)


async def test_raw_tls_login_when_tls_required(tls_only_proxy: RunningProxy) -> None:
    async with await RawClient.connect(tls_only_proxy.port) as client:
        await client.login(tls_only_proxy.idp.mint(), tls=True)
        assert await client.query_values("SELECT 40 + 2") == [("42",)]


async def test_plaintext_loopback_allowed_when_configured(proxy: RunningProxy) -> None:
    async with await psycopg.AsyncConnection.connect(proxy.conninfo(sslmode="disable"), connect_timeout=10) as conn:
        assert not conn.pgconn.ssl_in_use
        cursor = await conn.execute("SELECT 1")
        assert await cursor.fetchone() == (1,)


# -- bad tokens -----------------------------------------------------------------------------------------
def _tamper_signature(idp: FakeIdP) -> str:
    header, payload, signature = idp.mint().split(".")
    middle = len(signature) // 2
    flipped = "B" if signature[middle] == "A" else "A"  # a middle character: every bit of it is signature
    return ".".join((header, payload, signature[:middle] + flipped + signature[middle + 1 :]))


def _tamper_claims(idp: FakeIdP) -> str:
    header, _, signature = idp.mint("agent-x").split(".")
    _, forged_payload, _ = idp.mint("admin").split(".")
    return ".".join((header, forged_payload, signature))


@dataclass(frozen=True)
class BadToken:
    make: Callable[[FakeIdP], str]
    reason: Callable[[FakeIdP], str]


BAD_TOKENS: dict[str, BadToken] = {
    "expired": BadToken(lambda idp: idp.mint(expires_in=-600), lambda idp: "token expired"),
    "wrong-audience": BadToken(
        lambda idp: idp.mint(aud="another-service"), lambda idp: "audience 'another-service' not accepted"
    ),
    "wrong-issuer": BadToken(
        lambda idp: idp.mint(iss="https://evil.example.com"),
        lambda idp: f"issuer 'https://evil.example.com' not accepted (expected {idp.issuer!r})",
    ),
    "unknown-kid": BadToken(
        lambda idp: idp.mint_with_unknown_key(), lambda idp: "unknown signing key id 'unknown-1'"
    ),
    "alg-none": BadToken(lambda idp: idp.mint_alg_none(), lambda idp: "algorithm 'none' not allowed"),
    "hs256-with-public-key": BadToken(
        lambda idp: idp.mint_hs256_with_public_key(), lambda idp: "algorithm 'HS256' not allowed"
    ),
    "tampered-signature": BadToken(_tamper_signature, lambda idp: "signature verification failed"),
    "tampered-claims": BadToken(_tamper_claims, lambda idp: "signature verification failed"),
    "not-a-jwt": BadToken(
        lambda idp: "correct horse battery staple",
        lambda idp: "malformed token: expected three base64url segments",
    ),
    "empty": BadToken(lambda idp: "", lambda idp: "malformed token: empty"),
    "whitespace": BadToken(lambda idp: "   ", lambda idp: "malformed token: empty"),
}


def _token_fragments(token: str) -> list[str]:
    """The token and each long piece of it: none may show up in errors or logs."""
    pieces = [token.strip(), *token.split(".")]
    return [piece for piece in pieces if len(piece.strip()) >= 8]


async def _refused_by_real_client(proxy: RunningProxy, token: str) -> str:
    """The error text a real client reports for ``token``."""
    if token:
        with pytest.raises(psycopg.OperationalError) as refused:
            await psycopg.AsyncConnection.connect(proxy.conninfo(token), connect_timeout=10)
        return str(refused.value)
    # libpq will not send an empty password ("fe_sendauth: no password supplied"); asyncpg will.
    with pytest.raises(asyncpg.InvalidPasswordError) as rejected:
        await asyncpg.connect(host="127.0.0.1", port=proxy.port, user="agent", database=TEST_DATABASE,
                              password=token, ssl=False, timeout=10)
    assert rejected.value.sqlstate == "28P01"
    return str(rejected.value)


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_token_refused_with_reason_and_never_echoed(
    proxy: RunningProxy, fake_idp: FakeIdP, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="pgproxy")
    bad = BAD_TOKENS[case]
    expected = f"OIDC token rejected: {bad.reason(fake_idp)}"
    before = connection_count(proxy)

    token = bad.make(fake_idp)
    client_text = await _refused_by_real_client(proxy, token)
    assert expected in client_text

    token = bad.make(fake_idp)  # a fresh one (differs in iat for most cases) for the raw check
    async with await RawClient.connect(proxy.port) as client:
        await client.send_startup()
        await client.expect(be.AuthenticationCleartextPassword)
        await client.send_password(token)
        error = await client.expect_fatal("28P01")
    assert error.message == expected
    assert error.hint == TOKEN_HINT
    assert client.received[-1] == error

    assert "token rejected" in caplog.text  # the log was captured, so the next checks mean something
    for fragment in _token_fragments(token):
        assert fragment not in client_text
        assert fragment.encode() not in error.encode()
        assert fragment not in caplog.text
    for record in caplog.records:
        assert record.levelno < logging.ERROR, record.getMessage()

    await wait_for_connections_at_most(proxy, before)
    await assert_proxy_healthy(proxy)


async def test_burst_of_bad_tokens_does_not_stop_a_good_login(proxy: RunningProxy, fake_idp: FakeIdP) -> None:
    before = connection_count(proxy)
    cases = list(BAD_TOKENS.values())
    tokens = [cases[i % len(cases)].make(fake_idp) for i in range(50)]

    async def bad_login(token: str) -> be.ErrorResponse:
        async with await RawClient.connect(proxy.port) as client:
            await client.send_startup()
            await client.expect(be.AuthenticationCleartextPassword)
            await client.send_password(token)
            return await client.expect_fatal("28P01")

    async def good_login() -> tuple[object, ...] | None:
        conn = await psycopg.AsyncConnection.connect(proxy.conninfo(), connect_timeout=int(DEADLINE))
        async with conn:
            cursor = await conn.execute("SELECT 'good'")
            return await cursor.fetchone()

    async with asyncio.timeout(DEADLINE * 2):
        errors, good = await asyncio.gather(asyncio.gather(*(bad_login(t) for t in tokens)), good_login())
    assert good == ("good",)
    assert len(errors) == 50
    assert all(e.message.startswith("OIDC token rejected: ") for e in errors)
    await wait_for_connections_at_most(proxy, before)
    await assert_proxy_healthy(proxy)


# -- the identity reaches the server --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("email", "application_name", "expected"),
    [
        pytest.param("alice@example.com", None, "alice@example.com via pgproxy", id="email"),
        pytest.param("alice@example.com", "report-tool", "alice@example.com via pgproxy (report-tool)",
                     id="email-and-client-name"),
        pytest.param("alice@example.com", "bob@example.com via pgproxy",
                     "alice@example.com via pgproxy (bob@example.com via pgproxy)", id="spoof-attempt"),
        pytest.param(None, None, "agent-7 via pgproxy", id="subject-without-email"),
    ],
)
async def test_identity_reaches_upstream_application_name(
    proxy: RunningProxy, postgres: RealPostgres, email: str | None, application_name: str | None, expected: str
) -> None:
    token = proxy.idp.mint("agent-7", email=email)
    extra = {"application_name": application_name} if application_name is not None else {}
    async with await psycopg.AsyncConnection.connect(proxy.conninfo(token, **extra), connect_timeout=10) as conn:
        cursor = await conn.execute("SELECT pg_backend_pid(), current_setting('application_name')")
        row = await cursor.fetchone()
        assert row is not None
        pid, seen_by_session = row
        assert conn.info.backend_pid == pid  # BackendKeyData carries the real backend pid
        async with await psycopg.AsyncConnection.connect(postgres.admin_dsn, autocommit=True) as admin:
            cursor = await admin.execute(
                "SELECT application_name, usename, datname FROM pg_stat_activity WHERE pid = %s", [pid]
            )
            activity = await cursor.fetchone()
    assert activity == (expected, UPSTREAM_ROLE, TEST_DATABASE)
    assert seen_by_session == expected
