"""Two pgproxy replicas sharing one approval store: a client waits on replica A while approvers act
through replica B. B's approval releases A's client (and the statement runs), B's denial reaches it as
42501, an expiry swept by either replica as 57014, and A's client going away shows as withdrawn on B.
A replica whose listening connection was lost finds, once it is back, the decisions it missed."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from pgproxy.approvals.model import ApprovalRequest, RequestState, VoteRefused
from pgproxy.approvals.service import ApprovalService
from pgproxy.approvals.store import ApprovalStore, ConnectionFactory
from tests.integration.test_approval_holds import (
    DBA,
    OTHER_DBA,
    agent_token,
    in_background,
    psql,
    scratch_database,
    scratch_table,
    vote,
    wait_for_request,
    wait_for_state,
    write_policies,
)
from tests.support.pg_plugin import RealPostgres
from tests.support.proxy_plugin import ProxyFactory, RunningProxy

pytestmark = pytest.mark.integration

REPLICAS_DATABASE = "pgproxy_replicas_approvals"


@dataclass
class Replica:
    proxy: RunningProxy
    service: ApprovalService
    heard: list[tuple[str, RequestState]]  # the changes this replica's service made (its on_change)

    def changes(self) -> list[tuple[str, RequestState]]:
        return self.proxy.call_soon(lambda: list(self.heard))


@dataclass
class Replicas:
    """Starts replicas of pgproxy, each with its own service and store on one schema of ``dsn``."""

    proxy_factory: ProxyFactory
    tmp_path: Path
    dsn: str
    schema: str = field(default_factory=lambda: f"apr_{uuid.uuid4().hex[:12]}")
    started: list[RunningProxy] = field(default_factory=list)

    def start(self, name: str, timeout: str = "5m", *, connect: ConnectionFactory | None = None,
              **options: Any) -> Replica:
        store = ApprovalStore(connect or self.dsn, schema=self.schema, replica=name)
        service = ApprovalService(store, approve_at="https://pgproxy.example/approvals", **options)
        heard: list[tuple[str, RequestState]] = []
        service.on_change(lambda request: heard.append((request.id, request.state)))
        policies = write_policies(self.tmp_path, timeout)
        self.started.append(self.proxy_factory(approval_service=service, policies=policies))
        return Replica(self.started[-1], service, heard)

    def row(self, request_id: str) -> tuple[Any, ...] | None:
        """The request's state and holder, read directly in PostgreSQL."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(f"SELECT state, holder FROM {self.schema}.approval_requests WHERE id = %s",
                                [request_id]).fetchone()


@pytest.fixture(scope="module")
def replicas_dsn(postgres: RealPostgres) -> Iterator[str]:
    with scratch_database(postgres, REPLICAS_DATABASE) as dsn:
        yield dsn


@pytest.fixture
def replicas(proxy_factory: ProxyFactory, tmp_path: Path, replicas_dsn: str) -> Iterator[Replicas]:
    started = Replicas(proxy_factory, tmp_path, replicas_dsn)
    yield started
    for proxy in started.started:
        proxy.stop(grace=1)


@pytest.fixture
def table(postgres: RealPostgres) -> Iterator[Callable[[], bool]]:
    with scratch_table(postgres) as exists:
        yield exists


def pending_on(replica: Replica) -> ApprovalRequest:
    return wait_for_request(replica.proxy, replica.service)


def test_an_approval_through_b_releases_the_client_waiting_on_a(
    replicas: Replicas, table: Callable[[], bool]
) -> None:
    a, b = replicas.start("replica-a"), replicas.start("replica-b")
    name = table.name  # type: ignore[attr-defined]
    thread, result = in_background(lambda: psql(a.proxy, agent_token(a.proxy), f"DROP TABLE {name}",
                                                "SELECT 'still usable'"))
    request = pending_on(b)  # A opened it; B reads it from the shared store
    assert request.context.relations == (name,) and replicas.row(request.id) == ("pending", "replica-a")
    assert table(), "the statement ran before anyone approved it"

    assert vote(b.proxy, b.service, request.id, DBA, True).state is RequestState.APPROVED
    thread.join(60)
    completed = result["value"]
    assert completed.returncode == 0, completed.stderr
    assert "still usable" in completed.stdout
    assert not table()  # it ran, as seen directly in PostgreSQL
    assert replicas.row(request.id) == ("approved", "replica-a")
    assert a.changes() == [(request.id, RequestState.PENDING)]  # each change is heard where it was made
    assert b.changes() == [(request.id, RequestState.APPROVED)]


def test_a_denial_through_b_fails_the_statement_on_a_with_42501(
    replicas: Replicas, table: Callable[[], bool]
) -> None:
    a, b = replicas.start("replica-a"), replicas.start("replica-b")
    name = table.name  # type: ignore[attr-defined]

    def run() -> str:
        with psycopg.connect(a.proxy.conninfo(agent_token(a.proxy)), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
                conn.execute(f"DROP TABLE {name}")
            assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
            return str(refused.value)

    thread, result = in_background(run)
    request = pending_on(b)
    vote(b.proxy, b.service, request.id, DBA, False, reason="not during business hours")
    thread.join(60)
    assert "error" not in result, result.get("error")
    assert f"approval request {request.id} was denied by dba@example.com: not during business hours" in (
        result["value"])
    assert table()


@pytest.mark.parametrize("sweeper", ["replica-a", "replica-b"])
def test_an_expiry_swept_by_either_replica_fails_the_statement_on_a_with_57014(
    replicas: Replicas, table: Callable[[], bool], sweeper: str
) -> None:
    if sweeper == "replica-b":
        # A's clock is a minute behind: its own timer and sweeper would expire the request much later, while
        # for B (on time) it is already due, so B's sweeper expires it.
        a = replicas.start("replica-a", "30s", clock=lambda: time.time() - 60, sweep_seconds=3600)
        b = replicas.start("replica-b", sweep_seconds=0.2)
    else:
        a = replicas.start("replica-a", "1s")
        b = replicas.start("replica-b", sweep_seconds=3600)  # B never sweeps during the test
    name = table.name  # type: ignore[attr-defined]
    with psycopg.connect(a.proxy.conninfo(agent_token(a.proxy)), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.QueryCanceled, match="expired without a decision"):
            conn.execute(f"DROP TABLE {name}")
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert table()
    [expired] = b.proxy.call(b.service.list())
    assert expired.state is RequestState.EXPIRED
    expired_by = {"replica-a": a, "replica-b": b}[sweeper]
    assert (expired.id, RequestState.EXPIRED) in expired_by.changes()


def test_a_client_leaving_a_shows_as_withdrawn_on_b(replicas: Replicas, table: Callable[[], bool]) -> None:
    a, b = replicas.start("replica-a"), replicas.start("replica-b")
    name = table.name  # type: ignore[attr-defined]
    conn = psycopg.connect(a.proxy.conninfo(agent_token(a.proxy)), autocommit=True)
    conn.pgconn.send_query(f"DROP TABLE {name}".encode())
    request = pending_on(b)
    conn.close()
    wait_for_state(b.proxy, b.service, request.id, RequestState.WITHDRAWN)
    with pytest.raises(VoteRefused, match="withdrawn"):
        vote(b.proxy, b.service, request.id, OTHER_DBA, True)
    assert replicas.row(request.id) == ("withdrawn", "replica-a")
    assert table()


def test_a_decision_taken_while_a_was_not_listening_reaches_its_client_once_a_listens_again(
    replicas: Replicas, table: Callable[[], bool]
) -> None:
    gate, dialing = threading.Event(), threading.Event()  # while the gate is closed, A opens no connection
    gate.set()

    async def connect() -> asyncpg.Connection:
        if not gate.is_set():
            dialing.set()
            await asyncio.to_thread(gate.wait)
        return await asyncpg.connect(replicas.dsn, server_settings={"application_name": "replica-a"})

    a = replicas.start("replica-a", connect=connect, sweep_seconds=3600)
    b = replicas.start("replica-b", sweep_seconds=3600)
    name = table.name  # type: ignore[attr-defined]
    thread, result = in_background(lambda: psql(a.proxy, agent_token(a.proxy), f"DROP TABLE {name}"))
    try:
        request = pending_on(b)
        with psycopg.connect(replicas.dsn, autocommit=True) as admin:
            [(pid,)] = admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'replica-a' "
                "AND (query LIKE 'LISTEN %' OR query = 'SELECT 1')"
            ).fetchall()  # A's listening connection (the pool's last ran a reset, its own statements)
            gate.clear()
            assert admin.execute("SELECT pg_terminate_backend(%s, 10000)", [pid]).fetchone() == (True,)
        assert dialing.wait(30), "A did not try to listen again"
        # A listens to nobody now: the notification of this approval is lost for it.
        assert vote(b.proxy, b.service, request.id, DBA, True).state is RequestState.APPROVED
    finally:
        gate.set()
    thread.join(60)
    completed = result["value"]
    assert completed.returncode == 0, completed.stderr
    assert not table()
