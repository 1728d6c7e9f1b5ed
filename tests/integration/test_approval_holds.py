"""Held statements on the wire: a statement that needs approval waits, then runs (approved) or fails with
the documented error (denied: 42501, expired: 57014); the session stays usable; nothing runs before the
approval. Real clients (psql, asyncpg, psycopg) through pgproxy; votes are cast on the approval service
with verified identities, as the channels do. Every test runs with requests in memory and in the
PostgreSQL approval store (a fresh schema in a scratch database)."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from pgproxy.approvals.model import ApprovalRequest, RequestState, Vote, VoteRefused
from pgproxy.approvals.service import ApprovalService
from pgproxy.approvals.store import ApprovalStore
from pgproxy.audit import Decision, RecordKind
from pgproxy.auth.identity import Identity
from pgproxy.wire import backend as be
from pgproxy.wire import frontend as fe
from tests.support.pg_plugin import UPSTREAM_ROLE, RealPostgres
from tests.support.proxy_plugin import ProxyFactory, RunningProxy
from tests.support.raw_client import RawClient

pytestmark = pytest.mark.integration

POLICY = """\
rules:
  - id: agents-read
    who: {groups: [agents]}
    databases: ["*"]
    categories: [read, session, transaction]
    effect: allow
  - id: agents-HELD
    who: {groups: [agents]}
    databases: ["*"]
    categories: [HELD]
    effect: require_approval
    approval: {approvers: {groups: [dba]}, timeout: TIMEOUT}
"""
DBA = Identity("dba-1", "https://idp.invalid", "dba@example.com", "DBA", ("dba",), None)
OTHER_DBA = Identity("dba-2", "https://idp.invalid", "dba2@example.com", "DBA 2", ("dba",), None)


HOLDS_DATABASE = "pgproxy_holds_approvals"


@contextmanager
def scratch_database(postgres: RealPostgres, name: str) -> Iterator[str]:
    """A new database for approval stores (dropped afterwards); yields its superuser DSN."""
    with psycopg.connect(postgres.admin_dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield postgres.dsn(database=name)
    finally:
        with psycopg.connect(postgres.admin_dsn, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def write_policies(tmp_path: Path, timeout: str, *, held: str = "ddl") -> Path:
    """Agents read freely; the ``held`` category (rule ``agents-<held>``) needs a DBA's approval."""
    policies = tmp_path / f"policies-{uuid.uuid4().hex[:6]}"
    policies.mkdir()
    (policies / "rules.yaml").write_text(POLICY.replace("TIMEOUT", timeout).replace("HELD", held))
    return policies


@dataclass
class Holding:
    """Starts pgproxy with an approval service: requests in memory (``dsn`` None) or in a store on ``schema``."""

    proxy_factory: ProxyFactory
    tmp_path: Path
    dsn: str | None
    schema: str = field(default_factory=lambda: f"apr_{uuid.uuid4().hex[:12]}")
    started: list[RunningProxy] = field(default_factory=list)

    def __call__(self, timeout: str = "5m") -> tuple[RunningProxy, ApprovalService]:
        store = ApprovalStore(self.dsn, schema=self.schema) if self.dsn is not None else None
        service = ApprovalService(store, approve_at="https://pgproxy.example/approvals")
        policies = write_policies(self.tmp_path, timeout)
        self.started.append(self.proxy_factory(approval_service=service, policies=policies))
        return self.started[-1], service


@pytest.fixture(scope="module")
def holds_dsn(postgres: RealPostgres) -> Iterator[str]:
    with scratch_database(postgres, HOLDS_DATABASE) as dsn:
        yield dsn


@pytest.fixture(params=["memory", "store"])
def start(request: pytest.FixtureRequest, proxy_factory: ProxyFactory, tmp_path: Path) -> Iterator[Holding]:
    """Start pgproxy holding statements; its proxies are stopped (their services closed) after the test."""
    dsn = request.getfixturevalue("holds_dsn") if request.param == "store" else None
    holding = Holding(proxy_factory, tmp_path, dsn)
    yield holding
    for proxy in holding.started:
        proxy.stop(grace=1)


@contextmanager
def scratch_table(postgres: RealPostgres) -> Iterator[Callable[[], bool]]:
    """A table pgproxy's login owns; the callable says whether it still exists (read directly)."""
    name = f"held_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.dsn(UPSTREAM_ROLE), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int)")

    def exists() -> bool:
        with psycopg.connect(postgres.dsn(UPSTREAM_ROLE), autocommit=True) as conn:
            return conn.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone() == (True,)

    exists.name = name  # type: ignore[attr-defined]
    try:
        yield exists
    finally:
        with psycopg.connect(postgres.dsn(UPSTREAM_ROLE), autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def table(postgres: RealPostgres) -> Iterator[Callable[[], bool]]:
    with scratch_table(postgres) as exists:
        yield exists


def agent_token(proxy: RunningProxy, name: str = "agent-1") -> str:
    return proxy.idp.mint(name, email=f"{name}@example.com", groups=["agents"])


def wait_for_request(proxy: RunningProxy, service: ApprovalService) -> ApprovalRequest:
    """The newest pending request, once there is one (polled through the service)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pending = proxy.call(service.list([RequestState.PENDING]))
        if pending:
            return pending[0]
        time.sleep(0.02)
    raise AssertionError("no approval request appeared")


def wait_for_state(proxy: RunningProxy, service: ApprovalService, request_id: str,
                   state: RequestState) -> ApprovalRequest:
    """The request once it reaches ``state`` (read through ``service``)."""
    deadline = time.monotonic() + 30
    while True:
        found = proxy.call(service.get(request_id))
        assert found is not None, f"request {request_id} is unknown"
        if found.state is state:
            return found
        assert time.monotonic() < deadline, f"request {request_id} is still {found.state.value}"
        time.sleep(0.02)


def vote(proxy: RunningProxy, service: ApprovalService, request_id: str, voter: Identity, approve: bool, *,
         reason: str | None = None) -> ApprovalRequest:
    return proxy.call(service.vote(request_id, Vote(voter, approve, time.time(), reason)))


def in_background(function: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = function()
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def psql(proxy: RunningProxy, token: str, *commands: str) -> subprocess.CompletedProcess[str]:
    arguments = [part for command in commands for part in ("-c", command)]
    return subprocess.run(["psql", "-X", proxy.conninfo(token), "-v", "ON_ERROR_STOP=0", *arguments],
                          capture_output=True, text=True, timeout=60, check=False)


def test_psql_drop_waits_runs_only_after_approval_and_is_logged_with_its_approver(
    start: Holding, table: Callable[[], bool]
) -> None:
    proxy, service = start()
    name = table.name  # type: ignore[attr-defined]
    thread, result = in_background(lambda: psql(proxy, agent_token(proxy), f"/* reason: cleanup */ DROP TABLE {name}",
                                                "SELECT 'still usable'"))
    request = wait_for_request(proxy, service)
    assert request.context.command == "DROP TABLE" and request.context.stated_reason == "cleanup"
    assert request.context.relations == (name,) and request.requester.subject == "agent-1"
    assert table(), "the statement ran before anyone approved it"
    with pytest.raises(VoteRefused, match="own request"):
        vote(proxy, service, request.id, Identity("agent-1", proxy.idp.issuer, "agent-1@example.com", None,
                                                  ("agents", "dba"), None), True)
    decided = vote(proxy, service, request.id, DBA, True)
    assert decided.state is RequestState.APPROVED
    thread.join(60)
    completed = result["value"]
    assert completed.returncode == 0, completed.stderr
    assert f"waits for approval request {request.id}" in completed.stderr
    assert "https://pgproxy.example/approvals" in completed.stderr
    assert "still usable" in completed.stdout and not table()
    [intent] = [r for r in proxy.audit_records() if r.kind is RecordKind.STATEMENT and r.command == "DROP TABLE"
                and r.approval_id == request.id]
    assert (intent.decision, intent.rule_id, intent.approvers) == (Decision.REQUIRE_APPROVAL, "agents-ddl",
                                                                   ("dba@example.com",))


def test_a_denial_fails_the_statement_with_who_and_why_and_the_session_stays_usable(
    start: Holding, table: Callable[[], bool]
) -> None:
    proxy, service = start()
    name = table.name  # type: ignore[attr-defined]
    thread, result = in_background(lambda: psql(proxy, agent_token(proxy), f"DROP TABLE {name}", "SELECT 41 + 1"))
    request = wait_for_request(proxy, service)
    vote(proxy, service, request.id, DBA, False, reason="not during business hours")
    thread.join(60)
    completed = result["value"]
    assert f"approval request {request.id} was denied by dba@example.com: not during business hours" in (
        completed.stderr)
    assert "42" in completed.stdout and table()


def test_an_expired_request_fails_with_57014(start: Holding, table: Callable[[], bool]) -> None:
    proxy, service = start(timeout="1s")
    name = table.name  # type: ignore[attr-defined]
    with psycopg.connect(proxy.conninfo(agent_token(proxy)), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.QueryCanceled, match="expired without a decision"):
            conn.execute(f"DROP TABLE {name}")
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert table()
    [expired] = proxy.call(service.list())
    assert expired.state is RequestState.EXPIRED


async def test_asyncpg_extended_protocol_needs_one_approval_for_its_pipeline(
    start: Holding, table: Callable[[], bool]
) -> None:
    proxy, service = await asyncio.to_thread(start)
    name = table.name  # type: ignore[attr-defined]
    conn = await asyncpg.connect(proxy.url(agent_token(proxy)), ssl=False)
    try:
        running = asyncio.ensure_future(conn.execute(f"ALTER TABLE {name} ADD COLUMN note text"))
        request = await asyncio.to_thread(wait_for_request, proxy, service)
        await asyncio.to_thread(vote, proxy, service, request.id, DBA, True)
        assert await asyncio.wait_for(running, 60) == "ALTER TABLE"
        columns = await conn.fetch("SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0",
                                   name)
        assert [row["attname"] for row in columns] == ["id", "note"]
        assert len(await asyncio.to_thread(proxy.call, service.list())) == 1
    finally:
        await conn.close()


def test_a_client_that_disconnects_while_waiting_withdraws_its_request(
    start: Holding, table: Callable[[], bool]
) -> None:
    proxy, service = start()
    name = table.name  # type: ignore[attr-defined]
    conn = psycopg.connect(proxy.conninfo(agent_token(proxy)), autocommit=True)
    conn.pgconn.send_query(f"DROP TABLE {name}".encode())
    request = wait_for_request(proxy, service)
    conn.close()
    wait_for_state(proxy, service, request.id, RequestState.WITHDRAWN)
    with pytest.raises(VoteRefused, match="withdrawn"):
        vote(proxy, service, request.id, OTHER_DBA, True)
    assert table()
    records = proxy.audit_records()
    [intent] = [r for r in records if r.kind is RecordKind.STATEMENT and r.approval_id == request.id]
    [outcome] = [r for r in records if r.intent_id == intent.record_id]
    assert intent.decision is Decision.REQUIRE_APPROVAL and outcome.reason is not None
    assert "went away" in outcome.reason and records.index(intent) < records.index(outcome)


def test_a_cancel_request_withdraws_the_request_and_the_session_stays_usable(
    start: Holding, table: Callable[[], bool]
) -> None:
    proxy, service = start()
    name = table.name  # type: ignore[attr-defined]
    with psycopg.connect(proxy.conninfo(agent_token(proxy)), autocommit=True) as conn:
        thread, result = in_background(lambda: conn.execute(f"DROP TABLE {name}"))
        request = wait_for_request(proxy, service)
        conn.cancel_safe()  # what Ctrl-C in psql sends: a CancelRequest on a new connection
        thread.join(60)
        error = result.get("error")
        assert isinstance(error, psycopg.errors.QueryCanceled) and "user request" in str(error), result
        wait_for_state(proxy, service, request.id, RequestState.WITHDRAWN)
        assert conn.execute("SELECT 'usable'").fetchone() == ("usable",)
    assert table()


def test_the_whole_pipeline_waits_with_the_held_statement(
    start: Holding, table: Callable[[], bool], postgres: RealPostgres
) -> None:
    """Statements pipelined before the held one, in the same write, do not run ahead of it."""
    proxy, service = start()
    name = table.name  # type: ignore[attr-defined]
    marker = f"pipeline_{uuid.uuid4().hex[:8]}"

    async def pipeline() -> list[be.BackendMessage]:
        async with await RawClient.connect(proxy.port) as client:
            await client.login(agent_token(proxy))
            await client.send(  # one write: a read, then the DDL that needs approval, then Sync
                fe.Parse("", f"SELECT '{marker}'"), fe.Bind("", ""), fe.Execute(""),
                fe.Parse("", f"DROP TABLE {name}"), fe.Bind("", ""), fe.Execute(""), fe.Sync(),
            )
            return await client.read_until_ready()

    thread, result = in_background(lambda: asyncio.run(pipeline()))
    request = wait_for_request(proxy, service)
    with psycopg.connect(postgres.dsn(), autocommit=True) as admin:
        running = admin.execute("SELECT state, query FROM pg_stat_activity WHERE query LIKE %s AND pid <> "
                                "pg_backend_pid()", [f"%{marker}%"]).fetchall()
    assert running == [], running  # the SELECT before the DROP did not reach the server either
    vote(proxy, service, request.id, DBA, True)
    thread.join(60)
    answers = result.get("value")
    assert answers is not None, result
    assert [type(m).__name__ for m in answers if not isinstance(m, be.NoticeResponse)] == [
        "ParseComplete", "BindComplete", "DataRow", "CommandComplete",
        "ParseComplete", "BindComplete", "CommandComplete", "ReadyForQuery",
    ]
    assert not table()


@pytest.mark.parametrize("driver", ["psycopg-pipeline", "asyncpg-prepared"])
def test_extended_protocol_statements_need_one_approval(
    start: Holding, table: Callable[[], bool], driver: str
) -> None:
    """psycopg sends Parse/Bind/Execute/Sync at once; asyncpg prepares in one batch and executes in the next."""
    proxy, service = start()
    name = table.name  # type: ignore[attr-defined]
    statement = f"ALTER TABLE {name} ADD COLUMN note text"

    def run() -> Any:
        if driver == "psycopg-pipeline":
            with psycopg.connect(proxy.conninfo(agent_token(proxy)), autocommit=True) as conn:
                return conn.execute(statement).statusmessage

        async def prepared() -> Any:
            conn = await asyncpg.connect(proxy.url(agent_token(proxy)), ssl=False)
            try:
                return await conn.fetch(statement)
            finally:
                await conn.close()

        return asyncio.run(prepared())

    thread, result = in_background(run)
    request = wait_for_request(proxy, service)
    vote(proxy, service, request.id, DBA, True)
    thread.join(60)
    assert "error" not in result, result.get("error")
    assert result["value"] in ("ALTER TABLE", [])
    assert len(proxy.call(service.list())) == 1  # one request, not one per message
    with psycopg.connect(proxy.conninfo(agent_token(proxy)), autocommit=True) as conn:
        assert conn.execute(f"SELECT count(*) FROM pg_attribute WHERE attrelid = '{name}'::regclass "
                            "AND attname = 'note'").fetchone() == (1,)


@pytest.mark.parametrize("start", ["store"], indirect=True)
def test_a_request_the_store_cannot_keep_ends_the_session_with_58000(
    start: Holding, table: Callable[[], bool]
) -> None:
    proxy, _ = start()
    assert start.dsn is not None
    with psycopg.connect(start.dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {start.schema}.approval_votes, {start.schema}.approval_requests")
    name = table.name  # type: ignore[attr-defined]
    with (psycopg.connect(proxy.conninfo(agent_token(proxy)), autocommit=True) as conn,
          pytest.raises(psycopg.errors.lookup("58000"), match="lost the approval request")):
        conn.execute(f"DROP TABLE {name}")
    assert table()
