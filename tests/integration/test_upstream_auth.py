"""pgproxy logging in to a real PostgreSQL with its own credentials: SCRAM, MD5, trust over a Unix socket,
and what the client is told when that login fails (never pgproxy's password)."""

from __future__ import annotations

import logging
import socket
from urllib.parse import quote

import psycopg
import pytest

from tests.support.pg_plugin import (
    MD5_PASSWORD,
    MD5_ROLE,
    SCRAM_PASSWORD,
    SCRAM_ROLE,
    TEST_DATABASE,
    UPSTREAM_ROLE,
    RealPostgres,
)
from tests.support.proxy_plugin import ProxyFactory, RunningProxy
from tests.support.raw_client import RawClient, assert_proxy_healthy

pytestmark = pytest.mark.integration

LOGIN_FAILED = "pgproxy could not log in to the database server"
CONNECT_FAILED = "pgproxy could not connect to the database server"


def _free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _server_version(postgres: RealPostgres) -> int:
    async with await psycopg.AsyncConnection.connect(postgres.admin_dsn) as admin:
        return admin.info.server_version


async def _server_accepts(dsn: str) -> bool:
    try:
        conn = await psycopg.AsyncConnection.connect(dsn, connect_timeout=10)
    except psycopg.OperationalError:
        return False
    await conn.close()
    return True


async def _one_row(proxy: RunningProxy, sql: str) -> tuple[object, ...]:
    async with await psycopg.AsyncConnection.connect(proxy.conninfo(), connect_timeout=10) as conn:
        cursor = await conn.execute(sql)
        row = await cursor.fetchone()
    assert row is not None
    return row


@pytest.mark.parametrize(
    ("role", "password", "method"),
    [
        pytest.param(SCRAM_ROLE, SCRAM_PASSWORD, "scram-sha-256", id="scram"),
        pytest.param(MD5_ROLE, MD5_PASSWORD, "md5", id="md5"),
    ],
)
async def test_login_with_password_roles(
    proxy_factory: ProxyFactory, postgres: RealPostgres, role: str, password: str, method: str
) -> None:
    proxy = proxy_factory(upstream=postgres.dsn(role, password=password) + "?sslmode=disable")
    assert await _one_row(proxy, "SELECT current_user, 6 * 7") == (role, 42)
    async with await RawClient.connect(proxy.port) as client:
        await client.login(proxy.idp.mint())
        assert await client.query_values("SELECT current_user") == [(role,)]
        if postgres.embedded is not None and await _server_version(postgres) >= 160000:
            # Our pg_hba makes these roles prove their password; SYSTEM_USER shows how they did.
            assert await client.query_values("SELECT system_user") == [(f"{method}:{role}",)]


@pytest.mark.parametrize(
    ("role", "right_password"),
    [pytest.param(SCRAM_ROLE, SCRAM_PASSWORD, id="scram"), pytest.param(MD5_ROLE, MD5_PASSWORD, id="md5")],
)
async def test_wrong_upstream_password(
    proxy_factory: ProxyFactory,
    postgres: RealPostgres,
    caplog: pytest.LogCaptureFixture,
    role: str,
    right_password: str,
) -> None:
    wrong = "wrong-upstream-password-" + right_password
    if postgres.embedded is None and await _server_accepts(postgres.dsn(role, password=quote(wrong, safe=""))):
        pytest.skip(f"this server's pg_hba does not make {role} prove its password")
    caplog.set_level(logging.DEBUG, logger="pgproxy")
    proxy = proxy_factory(upstream=postgres.dsn(role, password=quote(wrong, safe="")) + "?sslmode=disable")

    with pytest.raises(psycopg.OperationalError, match=LOGIN_FAILED) as refused:
        await psycopg.AsyncConnection.connect(proxy.conninfo(), connect_timeout=10)
    async with await RawClient.connect(proxy.port) as client:
        await client.send_startup()
        error = await client.answer_password_expecting_error(proxy.idp.mint())
    assert (error.severity, error.sqlstate, error.message) == ("FATAL", "08006", LOGIN_FAILED)
    for secret in (wrong, right_password):
        assert secret not in str(refused.value)
        assert secret.encode() not in error.encode()
        assert secret not in caplog.text
    assert "upstream login" in caplog.text  # the operator's log says what happened


async def test_missing_database_is_reported_as_postgresql_says(proxy: RunningProxy) -> None:
    with pytest.raises(psycopg.OperationalError, match='database "no_such_database" does not exist'):
        await psycopg.AsyncConnection.connect(proxy.conninfo(database="no_such_database"), connect_timeout=10)
    async with await RawClient.connect(proxy.port) as client:
        await client.send_startup(database="no_such_database")
        error = await client.answer_password_expecting_error(proxy.idp.mint())
    assert (error.severity, error.sqlstate) == ("FATAL", "3D000")
    assert error.message == 'database "no_such_database" does not exist'
    await assert_proxy_healthy(proxy)


async def test_unreachable_upstream(proxy_factory: ProxyFactory) -> None:
    port = _free_port()
    proxy = proxy_factory(upstream=f"postgresql://{UPSTREAM_ROLE}@127.0.0.1:{port}/{TEST_DATABASE}?sslmode=disable")
    with pytest.raises(psycopg.OperationalError, match=CONNECT_FAILED):
        await psycopg.AsyncConnection.connect(proxy.conninfo(), connect_timeout=10)
    async with await RawClient.connect(proxy.port) as client:
        await client.send_startup()
        error = await client.answer_password_expecting_error(proxy.idp.mint())
    assert (error.severity, error.sqlstate, error.message) == ("FATAL", "08006", CONNECT_FAILED)


async def test_upstream_over_unix_socket_and_tcp(proxy_factory: ProxyFactory, postgres: RealPostgres) -> None:
    targets = {"tcp": postgres.dsn(UPSTREAM_ROLE) + "?sslmode=disable"}
    if postgres.embedded is not None:
        socket_dir = quote(str(postgres.embedded.socket_dir), safe="")
        targets["unix"] = (
            f"postgresql://{UPSTREAM_ROLE}@/{TEST_DATABASE}?host={socket_dir}&port={postgres.embedded.port}"
        )
    for kind, upstream in targets.items():
        proxy = proxy_factory(upstream=upstream)
        # inet_server_addr() is NULL on a Unix-socket session.
        user, address = await _one_row(proxy, "SELECT current_user, inet_server_addr()::text")
        assert user == UPSTREAM_ROLE
        assert (address is None) == (kind == "unix"), (kind, address)
