"""TLS between pgproxy and PostgreSQL, with libpq's sslmode semantics, against a real TLS server."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import psycopg
import pytest

from pgproxy.devcerts import write_self_signed
from tests.support.pg_plugin import TLSPostgres
from tests.support.proxy_plugin import ProxyFactory, RunningProxy

pytestmark = pytest.mark.integration


def backend_uses_tls(proxy: RunningProxy) -> bool:
    with psycopg.connect(proxy.conninfo(), autocommit=True) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row is not None
        return bool(row[0])


@pytest.mark.parametrize(
    ("sslmode", "encrypted"),
    [("disable", False), ("allow", False), ("prefer", True), ("require", True)],
)
def test_sslmode_decides_whether_upstream_is_encrypted(
    proxy_factory: ProxyFactory, tls_postgres: TLSPostgres, sslmode: str, encrypted: bool
) -> None:
    proxy = proxy_factory(upstream=tls_postgres.dsn(f"sslmode={sslmode}"))
    assert backend_uses_tls(proxy) is encrypted


@pytest.mark.parametrize("sslmode", ["verify-ca", "verify-full"])
def test_verifying_modes_accept_the_right_ca(
    proxy_factory: ProxyFactory, tls_postgres: TLSPostgres, sslmode: str
) -> None:
    proxy = proxy_factory(upstream=tls_postgres.dsn(f"sslmode={sslmode}&sslrootcert={tls_postgres.ca}"))
    assert backend_uses_tls(proxy)


@pytest.mark.parametrize("sslmode", ["verify-ca", "verify-full"])
def test_verifying_modes_refuse_an_unknown_ca(
    proxy_factory: ProxyFactory, tls_postgres: TLSPostgres, sslmode: str, tmp_path: Path
) -> None:
    other_ca, _ = write_self_signed(tmp_path / "other")
    proxy = proxy_factory(upstream=tls_postgres.dsn(f"sslmode={sslmode}&sslrootcert={other_ca}"))
    with pytest.raises(psycopg.OperationalError, match="could not connect to the database server"):
        psycopg.connect(proxy.conninfo())


def test_cancel_travels_over_tls_upstream(
    proxy_factory: ProxyFactory, tls_postgres: TLSPostgres
) -> None:
    proxy = proxy_factory(upstream=tls_postgres.dsn(f"sslmode=verify-full&sslrootcert={tls_postgres.ca}"))
    with psycopg.connect(proxy.conninfo(), autocommit=True) as conn, concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(conn.execute, "SELECT pg_sleep(30)")
        deadline = time.monotonic() + 20
        with psycopg.connect(tls_postgres.server.dsn, autocommit=True) as admin:
            while not admin.execute(
                "SELECT 1 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'"
            ).fetchone():
                assert time.monotonic() < deadline, "the statement never started"
                time.sleep(0.05)
        conn.cancel_safe()
        with pytest.raises(psycopg.errors.QueryCanceled):
            running.result(timeout=30)
        assert conn.execute("SELECT 'usable'").fetchone() == ("usable",)
