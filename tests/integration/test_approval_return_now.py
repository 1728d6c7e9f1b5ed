"""The "return now" mode: a session started with ``pgproxy.approval=return`` is refused at once (42501)
with the approval request named, instead of waiting; once approved, the identical statement sent again by
the same person runs exactly once. Real clients (psql, psycopg, asyncpg) through pgproxy; votes are cast
on the approval service with verified identities. Every test runs with requests in memory and in the
PostgreSQL approval store (a fresh schema in a scratch database)."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest

from pgproxy.approvals.model import ApprovalRequest, RequestState
from pgproxy.approvals.service import ApprovalService
from tests.integration.test_approval_holds import (
    DBA,
    Holding,
    agent_token,
    psql,
    scratch_database,
    scratch_table,
    vote,
)
from tests.support.pg_plugin import RealPostgres
from tests.support.proxy_plugin import ProxyFactory, RunningProxy

pytestmark = pytest.mark.integration

RETURN_NOW_DATABASE = "pgproxy_return_now_approvals"
RETURN = "-c pgproxy.approval=return"
_WAITING = re.compile(r"approval request (apr-[0-9a-f]{16}) is waiting for approval; send the same statement "
                      r"again once it is approved \(before \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)")


@pytest.fixture(scope="module")
def return_now_dsn(postgres: RealPostgres) -> Iterator[str]:
    with scratch_database(postgres, RETURN_NOW_DATABASE) as dsn:
        yield dsn


@pytest.fixture(params=["memory", "store"])
def start(request: pytest.FixtureRequest, proxy_factory: ProxyFactory, tmp_path: Path) -> Iterator[Holding]:
    dsn = request.getfixturevalue("return_now_dsn") if request.param == "store" else None
    holding = Holding(proxy_factory, tmp_path, dsn)
    yield holding
    for proxy in holding.started:
        proxy.stop(grace=1)


@pytest.fixture
def table(postgres: RealPostgres) -> Iterator[Callable[[], bool]]:
    with scratch_table(postgres) as exists:
        yield exists


def returning(proxy: RunningProxy, agent: str = "agent-1") -> psycopg.Connection[tuple[object, ...]]:
    """A psycopg session in "return now" mode, as ``agent``."""
    return psycopg.connect(proxy.conninfo(agent_token(proxy, agent), options=RETURN), autocommit=True)


def refused_with(conn: psycopg.Connection[tuple[object, ...]], sql: str) -> str:
    """Send ``sql``; it must be refused at once (42501) naming a pending request: that request's id."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
        conn.execute(sql)
    found = _WAITING.search(str(refused.value))
    assert found is not None, str(refused.value)
    return found[1]


def requests_about(proxy: RunningProxy, service: ApprovalService, name: str) -> list[ApprovalRequest]:
    return [r for r in proxy.call(service.list()) if name in r.context.sql]


def test_refused_at_once_then_runs_exactly_once_after_approval(start: Holding, table: Callable[[], bool]) -> None:
    proxy, service = start()
    name = table.name  # type: ignore[attr-defined]
    drop = f"DROP TABLE {name}"
    with returning(proxy) as conn:
        notices: list[str] = []
        conn.add_notice_handler(lambda notice: notices.append(notice.message_primary or ""))
        first = refused_with(conn, drop)
        assert table(), "the statement ran before anyone approved it"
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,), "the session stays usable"
        assert not any("waits" in notice for notice in notices)
        assert refused_with(conn, drop) == first, "a second send while pending names the same request"
        [request] = requests_about(proxy, service, name)
        assert (request.id, request.state, request.session_id) == (first, RequestState.PENDING, None)
        assert request.statement_digest is not None and request.requester.subject == "agent-1"
        assert table()

        assert vote(proxy, service, first, DBA, True).state is RequestState.APPROVED
        conn.execute(drop)
        assert not table(), "the approved statement ran"

        fourth = refused_with(conn, drop)
        assert fourth != first, "an approval is used once: the same statement again needs a new request"
    assert {r.id for r in requests_about(proxy, service, name)} == {first, fourth}


def test_the_approval_covers_only_that_text_and_that_person(start: Holding, table: Callable[[], bool]) -> None:
    proxy, service = start()
    name = table.name  # type: ignore[attr-defined]
    drop = f"DROP TABLE {name}"
    with returning(proxy, "agent-1") as mine, returning(proxy, "agent-2") as theirs:
        approved = refused_with(mine, drop)
        vote(proxy, service, approved, DBA, True)

        other_text = refused_with(mine, f"drop table {name}")
        assert other_text != approved, "a different text is a different statement"
        other_person = refused_with(theirs, drop)
        assert other_person not in (approved, other_text), "another person's approval does not cover this one"
        assert table()
        assert proxy.call(service.get(approved)).state is RequestState.APPROVED  # type: ignore[union-attr]

        mine.execute(drop)
        assert not table()


def test_psql_simple_query_is_refused_then_runs(start: Holding, table: Callable[[], bool]) -> None:
    proxy, service = start()
    name = table.name  # type: ignore[attr-defined]
    token = agent_token(proxy)
    conninfo = proxy.conninfo(token, options=RETURN)

    def run() -> str:
        completed = subprocess.run(
            ["psql", "-X", conninfo, "-v", "ON_ERROR_STOP=0", "-c", f"DROP TABLE {name}", "-c", "SELECT 'usable'"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert "usable" in completed.stdout, completed.stderr
        return str(completed.stderr)

    first = run()
    found = _WAITING.search(first)
    assert found is not None and "waits for approval" not in first, first
    assert table()
    vote(proxy, service, found[1], DBA, True)
    assert "ERROR" not in run()
    assert not table()
    assert psql(proxy, token, "SELECT 1").returncode == 0  # a waiting session is unaffected by the mode


def test_asyncpg_prepared_statement_is_refused_then_runs(start: Holding, table: Callable[[], bool]) -> None:
    proxy, service = start()
    name = table.name  # type: ignore[attr-defined]
    url = proxy.url(agent_token(proxy))

    async def attempt() -> str | None:
        conn = await asyncpg.connect(url, server_settings={"pgproxy.approval": "return"})
        try:
            statement = await conn.prepare(f"DROP TABLE {name}")  # Parse: held, then its first Bind inherits
            await statement.fetch()
            await conn.fetchval("SELECT $1::int", 7)
            return None
        except asyncpg.exceptions.InsufficientPrivilegeError as exc:
            found = _WAITING.search(str(exc))
            assert found is not None, str(exc)
            assert await conn.fetchval("SELECT $1::int", 7) == 7, "the session stays usable"
            return found[1]
        finally:
            await conn.close()

    request_id = asyncio.run(attempt())
    assert request_id is not None and table()
    assert asyncio.run(attempt()) == request_id
    vote(proxy, service, request_id, DBA, True)
    assert asyncio.run(attempt()) is None
    assert not table()


def test_an_invalid_approval_mode_refuses_the_login(start: Holding) -> None:
    proxy, _ = start()
    with pytest.raises(psycopg.OperationalError, match=r"invalid value for pgproxy\.approval: 'later'"):
        psycopg.connect(proxy.conninfo(agent_token(proxy), options="-c pgproxy.approval=later"))
