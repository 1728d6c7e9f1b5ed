"""Session row limits: a statement may return max_rows rows, a COPY … TO STDOUT max_export_rows.

Going over ends the session with FATAL 54000 naming the limit; the rows up to the limit were relayed,
none after it. Other sessions are unaffected.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.support.proxy_plugin import POLICIES, ProxyFactory, RunningProxy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def limited_proxy(proxy_factory: ProxyFactory) -> RunningProxy:
    return proxy_factory(policies=POLICIES / "limited")


def connect(proxy: RunningProxy) -> psycopg.Connection[tuple[object, ...]]:
    token = proxy.idp.mint("limited-1", email="limited@example.com", groups=["limited"])
    return psycopg.connect(proxy.conninfo(token), autocommit=True)


@pytest.mark.parametrize("rows", [0, 1, 5])
def test_results_within_the_limit_arrive_whole(limited_proxy: RunningProxy, rows: int) -> None:
    with connect(limited_proxy) as conn:
        result = conn.execute("SELECT n FROM generate_series(1, %s) AS n", [rows]).fetchall()
        assert result == [(n,) for n in range(1, rows + 1)]
        # every statement has its own count
        assert len(conn.execute("SELECT n FROM generate_series(1, 5) AS n").fetchall()) == 5


@pytest.mark.parametrize("rows", [6, 1000])
def test_a_result_over_the_limit_ends_the_session(limited_proxy: RunningProxy, rows: int) -> None:
    with connect(limited_proxy) as conn:
        with pytest.raises(psycopg.OperationalError) as raised:
            conn.execute("SELECT n FROM generate_series(1, %s) AS n", [rows]).fetchall()
        assert "more than 5 rows" in str(raised.value) and "limited-session" in str(raised.value)
        assert conn.closed or conn.broken
    with connect(limited_proxy) as conn:  # the next session works
        assert conn.execute("SELECT 1").fetchone() == (1,)


def fetch_through_cursor(proxy: RunningProxy, rows: int) -> list[tuple[object, ...]]:
    with connect(proxy) as conn, conn.transaction(), conn.cursor(name="c") as cursor:
        cursor.execute("SELECT n FROM generate_series(1, %s) AS n", [rows])
        return cursor.fetchall()


def export(proxy: RunningProxy, rows: int) -> bytes:
    query = f"COPY (SELECT n FROM generate_series(1, {rows}) AS n) TO STDOUT"
    with connect(proxy) as conn, conn.cursor().copy(query) as copy:
        return b"".join(bytes(chunk) for chunk in copy)


def test_a_cursor_fetch_over_the_limit_ends_the_session(limited_proxy: RunningProxy) -> None:
    assert fetch_through_cursor(limited_proxy, 4) == [(1,), (2,), (3,), (4,)]
    with pytest.raises(psycopg.OperationalError) as raised:
        fetch_through_cursor(limited_proxy, 10)
    assert "more than 5 rows" in str(raised.value)


def test_exports_have_their_own_limit(limited_proxy: RunningProxy) -> None:
    assert export(limited_proxy, 3) == b"1\n2\n3\n"
    with pytest.raises(psycopg.OperationalError) as raised:
        export(limited_proxy, 4)
    assert "max_export_rows" in str(raised.value)
