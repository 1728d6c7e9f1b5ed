"""The PostgreSQL approval store against a real server: round trips, the model's rules under concurrency,
expiry, single-use approvals, notifications between replicas, migrations and least privilege."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace

import asyncpg
import pytest

from pgproxy.approvals import pg_schema
from pgproxy.approvals.model import ApprovalRequest, RequestContext, RequestState, Vote, VoteRefused
from pgproxy.approvals.store import ApprovalStore, ConnectionFactory, RequestNotFound
from pgproxy.audit.pg_schema import SchemaError
from pgproxy.audit.postgres import PostgresAuditStore
from pgproxy.auth.identity import Identity
from pgproxy.policy.engine import ApprovalRequirement
from pgproxy.policy.model import Approvers
from tests.support.pg_plugin import RealPostgres
from tests.support.role_database import RoleDatabase, role_database

pytestmark = pytest.mark.integration

DATABASE = "pgproxy_approvals_test"
OWNER, ROLE, REVIEWER = "pgproxy_approvals_owner", "pgproxy_approvals_store", "pgproxy_approvals_reviewer"
PASSWORD = "approvals-secret-1"

IDP = "https://idp.example.com/"
NOW = 1_700_000_000.123456789  # not a whole microsecond: timestamps must round-trip exactly
TIMEOUT = 900

ADA = Identity("u-ada", IDP, "Ada@Example.com", "Ada Lovelace", ("zeta", "dev", "alpha"), 1_700_003_600.25)
DBA1 = Identity("u-dba1", IDP, "dba1@example.com", "Dee One", ("dba",), 1_700_007_200.5)
DBA2 = Identity("u-dba2", IDP, "dba2@example.com", None, ("sre", "dba"), None)
DBA3 = Identity("u-dba3", "https://other-idp.example.com/", None, None, ("dba",), None)
DBA1_ELSEWHERE = Identity("u-dba1-slack", "https://slack.example.com/", "DBA1@example.com", None, ("dba",), None)


ApprovalsDatabase = RoleDatabase


@pytest.fixture(scope="module")
def approvals_db(postgres: RealPostgres) -> Iterator[RoleDatabase]:
    """A database owned by OWNER, with a store ROLE and a REVIEWER that own nothing."""
    with role_database(postgres, DATABASE, owner=OWNER, others=(ROLE, REVIEWER), password=PASSWORD) as database:
        yield database


@pytest.fixture
def schema() -> str:
    """A fresh schema per test: tests share the database, never a table."""
    return f"apr_{uuid.uuid4().hex[:12]}"


StoreFactory = Callable[..., Awaitable[ApprovalStore]]


@pytest.fixture
async def store(approvals_db: ApprovalsDatabase, schema: str) -> AsyncIterator[StoreFactory]:
    """Open stores (as OWNER on the test's schema unless told otherwise); all closed at teardown."""
    opened: list[ApprovalStore] = []

    async def make(
        role: str = OWNER, *, replica: str = "replica-a", connect: ConnectionFactory | None = None
    ) -> ApprovalStore:
        approvals = ApprovalStore(connect or approvals_db.dsn(role), schema=schema, replica=replica)
        opened.append(approvals)
        await approvals.open()
        return approvals

    yield make
    for approvals in opened:
        await approvals.close()


@pytest.fixture
async def admin(approvals_db: ApprovalsDatabase) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(approvals_db.dsn())
    yield conn
    await conn.close()


def requirement(quorum: int = 2, timeout: int = TIMEOUT) -> ApprovalRequirement:
    return ApprovalRequirement(Approvers(groups=frozenset({"dba"})), quorum, timeout)


CONTEXT = RequestContext(
    client_address="10.1.2.3",
    application_name="migrate-tool",
    database="orders",
    upstream_role="app_writer",
    sql="ALTER TABLE \"Orders\" ADD COLUMN note text DEFAULT $1 -- 'é' \u2028 🐘",
    category="ddl",
    command="ALTER TABLE",
    relations=("public.Orders", "audit.events"),
    rule_id="ddl-needs-dba",
    stated_reason="rotate the partition",
    impact="ACCESS EXCLUSIVE lock; rewrites the table",
)


def new_request(
    requester: Identity = ADA, *, quorum: int = 2, at: float = NOW, timeout: int = TIMEOUT, **fields: object
) -> ApprovalRequest:
    request = ApprovalRequest.open(requester, requirement(quorum, timeout), CONTEXT, now=at)
    return replace(request, **fields)  # type: ignore[arg-type]


def vote(voter: Identity, approve: bool = True, at: float = NOW + 1, reason: str | None = None) -> Vote:
    return Vote(voter, approve, at, reason=reason, channel="slack" if approve else "http")


async def vote_rows(admin: asyncpg.Connection, schema: str, request_id: str) -> list[tuple[object, ...]]:
    rows = await admin.fetch(
        f"SELECT seq, voter_subject, approve FROM {schema}.approval_votes WHERE request_id = $1 ORDER BY seq",
        request_id,
    )
    return [tuple(row) for row in rows]


async def blocked_on_lock(admin: asyncpg.Connection, count: int) -> None:
    """Wait until ``count`` other backends wait for a lock (bounded by the test timeout)."""
    waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    while True:
        await admin.execute("SELECT pg_stat_clear_snapshot()")  # a transaction keeps its first snapshot
        if await admin.fetchval(waiting) >= count:
            return
        await asyncio.sleep(0.01)


async def contended(
    admin: asyncpg.Connection, schema: str, request_id: str, calls: list[Awaitable[ApprovalRequest]]
) -> list[ApprovalRequest | BaseException]:
    """Run ``calls`` together while the request row is locked, so all of them queue on it, then release."""
    async with admin.transaction():
        await admin.execute(f"SELECT 1 FROM {schema}.approval_requests WHERE id = $1 FOR UPDATE", request_id)
        running = asyncio.gather(*calls, return_exceptions=True)
        await blocked_on_lock(admin, len(calls))
    return await running


# -- round trips -----------------------------------------------------------------------------------------------


async def test_every_field_round_trips(store: StoreFactory) -> None:
    approvals = await store()
    bare_context = RequestContext(None, None, "db", None, "DROP TABLE t", "ddl", "DROP TABLE", (), "r")
    full = new_request(
        statement_digest="sha256:3f2a", session_id="sess-17", extra={"slack_ts": "1700000000.000100", "k": "é"}
    )
    voted = replace(
        new_request(quorum=3, at=NOW + 0.1),
        votes=(vote(DBA1, reason="looks fine"), vote(DBA3, at=NOW + 2.000001)),
    )
    decided = replace(
        new_request(at=NOW + 0.2, context=bare_context),
        state=RequestState.DENIED,
        decided_at=NOW + 5.5,
        votes=(vote(DBA2, approve=False, at=NOW + 5.5, reason="not now"),),
    )
    every_matcher = Approvers(
        groups=frozenset({"dba", "sre"}),
        emails=frozenset({"Boss@Example.com"}),  # stored lower-cased, as the policy loader does
        email_domains=frozenset({"example.com"}),
        issuers=frozenset({IDP}),
        subjects=frozenset({"u-1", "u-2"}),
    )
    broad = replace(new_request(at=NOW + 0.3), requirement=ApprovalRequirement(every_matcher, 3, 86_400))
    for request in (full, voted, decided, broad):
        await approvals.create(request)
        stored = await approvals.get(request.id)
        assert stored == request
        assert stored is not None and stored.extra == request.extra
        assert stored.requester.groups == request.requester.groups  # the identity provider's order
        assert [v.voter for v in stored.votes] == [v.voter for v in request.votes]
    assert await approvals.get("apr-missing") is None
    with pytest.raises(ValueError, match="already exists"):
        await approvals.create(full)


async def test_set_extra_merges_channel_bookkeeping(store: StoreFactory) -> None:
    approvals = await store()
    request = new_request(extra={"a": "1"})
    await approvals.create(request)
    updated = await approvals.set_extra(request.id, {"slack_ts": "123.456", "a": "2"})
    assert updated.extra == {"a": "2", "slack_ts": "123.456"}
    assert updated == request  # extra is bookkeeping: the request itself is unchanged
    stored = await approvals.get(request.id)
    assert stored is not None and stored.extra == {"a": "2", "slack_ts": "123.456"}
    with pytest.raises(RequestNotFound):
        await approvals.set_extra("apr-missing", {"a": "b"})


# -- votes ---------------------------------------------------------------------------------------------------


async def test_votes_follow_the_model_rules(store: StoreFactory, admin: asyncpg.Connection, schema: str) -> None:
    approvals = await store()
    request = new_request(quorum=2)
    await approvals.create(request)

    admin_requester = replace(ADA, groups=("dba", "admin"))
    with pytest.raises(VoteRefused, match="own request"):
        await approvals.vote(request.id, vote(admin_requester), NOW + 1)
    with pytest.raises(VoteRefused, match="own request"):
        await approvals.vote(request.id, vote(Identity("u-other", IDP, "ada@example.COM", None, ("dba",), None)), NOW)
    with pytest.raises(VoteRefused, match="not an approver"):
        await approvals.vote(request.id, vote(replace(DBA2, groups=("dev",))), NOW + 1)

    first = await approvals.vote(request.id, vote(DBA1, at=NOW + 3), NOW + 3)
    assert (first.state, len(first.votes)) == (RequestState.PENDING, 1)
    with pytest.raises(VoteRefused, match="already voted"):
        await approvals.vote(request.id, vote(DBA1_ELSEWHERE, at=NOW + 4), NOW + 4)  # same email, other IdP

    second = await approvals.vote(request.id, vote(DBA2, at=NOW + 5), NOW + 5)
    assert (second.state, second.decided_at, second.approvers) == (
        RequestState.APPROVED, NOW + 5, ("dba1@example.com", "dba2@example.com")
    )  # fmt: skip
    assert await approvals.get(request.id) == second
    with pytest.raises(VoteRefused, match="already approved"):
        await approvals.vote(request.id, vote(DBA3, at=NOW + 6), NOW + 6)
    assert await vote_rows(admin, schema, request.id) == [(1, "u-dba1", True), (2, "u-dba2", True)]
    with pytest.raises(RequestNotFound, match="apr-missing"):
        await approvals.vote("apr-missing", vote(DBA1), NOW)


async def test_one_deny_denies(store: StoreFactory) -> None:
    approvals = await store()
    request = new_request(quorum=3)
    await approvals.create(request)
    await approvals.vote(request.id, vote(DBA1, at=NOW + 1), NOW + 1)
    denied = await approvals.vote(request.id, vote(DBA2, approve=False, at=NOW + 2, reason="peak hours"), NOW + 2)
    assert (denied.state, denied.decided_at) == (RequestState.DENIED, NOW + 2)
    stored = await approvals.get(request.id)
    assert stored is not None and stored.denial == Vote(DBA2, False, NOW + 2, reason="peak hours", channel="http")
    with pytest.raises(VoteRefused, match="already denied"):
        await approvals.vote(request.id, vote(DBA3, at=NOW + 3), NOW + 3)


async def test_a_vote_after_the_deadline_expires_the_request(store: StoreFactory) -> None:
    approvals = await store()
    request = new_request()
    await approvals.create(request)
    late = request.expires_at
    with pytest.raises(VoteRefused, match="expired"):
        await approvals.vote(request.id, vote(DBA1, at=late), late)
    stored = await approvals.get(request.id)
    assert stored is not None
    assert (stored.state, stored.decided_at, stored.votes) == (RequestState.EXPIRED, late, ())


async def test_unstorable_text_in_a_vote_is_refused_cleanly(store: StoreFactory) -> None:
    approvals = await store()
    request = new_request(quorum=1)
    await approvals.create(request)
    with pytest.raises(VoteRefused, match="cannot be stored"):
        await approvals.vote(request.id, vote(DBA1, approve=False, reason="nul\x00byte"), NOW + 1)
    stored = await approvals.get(request.id)
    assert stored is not None and (stored.state, stored.votes) == (RequestState.PENDING, ())


# -- concurrency ---------------------------------------------------------------------------------------------


async def test_concurrent_approvers_reach_quorum_exactly_once(
    store: StoreFactory, admin: asyncpg.Connection, schema: str
) -> None:
    one, two = await store(replica="replica-a"), await store(replica="replica-b")  # two replicas
    request = new_request(quorum=2)
    await one.create(request)
    results = await contended(
        admin,
        schema,
        request.id,
        [
            one.vote(request.id, vote(DBA1, at=NOW + 1), NOW + 1),
            two.vote(request.id, vote(DBA2, at=NOW + 2), NOW + 2),
            one.vote(request.id, vote(DBA3, at=NOW + 3), NOW + 3),
        ],
    )
    counted = [result for result in results if isinstance(result, ApprovalRequest)]
    refusals = [result for result in results if isinstance(result, VoteRefused)]
    assert len(counted) == 2 and len(refusals) == 1, results
    assert "already approved" in refusals[0].reason
    assert [result.state for result in counted].count(RequestState.APPROVED) == 1  # decided by exactly one vote
    stored = await one.get(request.id)
    assert stored is not None and stored.state is RequestState.APPROVED and len(stored.votes) == 2
    assert stored.decided_at == stored.votes[-1].at
    assert [seq for seq, _, _ in await vote_rows(admin, schema, request.id)] == [1, 2]


@pytest.mark.parametrize("twin", [DBA1, DBA1_ELSEWHERE], ids=["same-subject", "same-email"])
async def test_concurrent_votes_by_one_person_count_once(
    store: StoreFactory, admin: asyncpg.Connection, schema: str, twin: Identity
) -> None:
    one, two = await store(replica="replica-a"), await store(replica="replica-b")
    request = new_request(quorum=2)
    await one.create(request)
    results = await contended(
        admin,
        schema,
        request.id,
        [one.vote(request.id, vote(DBA1), NOW + 1), two.vote(request.id, vote(twin, at=NOW + 2), NOW + 2)],
    )
    assert sorted(type(result).__name__ for result in results) == ["ApprovalRequest", "VoteRefused"], results
    stored = await one.get(request.id)
    assert stored is not None and (stored.state, len(stored.votes)) == (RequestState.PENDING, 1)


async def test_the_tables_refuse_a_second_vote_by_one_person(admin: asyncpg.Connection, store: StoreFactory,
                                                             schema: str) -> None:  # fmt: skip
    approvals = await store()
    request = new_request()
    await approvals.create(request)
    insert = (
        f"INSERT INTO {schema}.approval_votes (request_id, seq, voter_issuer, voter_subject, voter_email, "
        "voter_groups, approve, channel, at) VALUES ($1, $2, $3, $4, $5, '{}', true, 'cli', 0)"
    )
    await admin.execute(insert, request.id, 1, IDP, "u-1", "Someone@Example.com")
    with pytest.raises(asyncpg.UniqueViolationError):
        await admin.execute(insert, request.id, 2, IDP, "u-1", None)  # same issuer and subject
    with pytest.raises(asyncpg.UniqueViolationError):
        await admin.execute(insert, request.id, 2, "https://other/", "u-2", "someone@example.com")  # same email


# -- expiry, withdrawal, listing ---------------------------------------------------------------------------------


async def test_expire_due_expires_each_due_request_once(store: StoreFactory) -> None:
    one, two = await store(replica="replica-a"), await store(replica="replica-b")
    short = [new_request(timeout=60, at=NOW + i) for i in range(6)]
    later = new_request(timeout=3600)
    approved = new_request(quorum=1, timeout=60)
    for request in (*short, later, approved):
        await one.create(request)
    await one.vote(approved.id, vote(DBA1), NOW + 1)

    assert await one.expire_due(NOW + 59) == []
    due = NOW + 63  # short[0..3] are due (expires_at <= due), short[4..5] are not
    first, second = await asyncio.gather(one.expire_due(due), two.expire_due(due))
    expired_ids = [request.id for request in first + second]
    assert sorted(expired_ids) == sorted(request.id for request in short[:4])  # each exactly once
    assert all((r.state, r.decided_at) == (RequestState.EXPIRED, due) for r in first + second)
    assert await one.expire_due(due) == []

    remaining = {r.id: r.state for r in await one.list(limit=100)}
    assert [remaining[r.id] for r in short[4:]] == [RequestState.PENDING] * 2
    assert (remaining[later.id], remaining[approved.id]) == (RequestState.PENDING, RequestState.APPROVED)


async def test_withdraw(store: StoreFactory) -> None:
    approvals = await store()
    pending, approved = new_request(), new_request(quorum=1, at=NOW + 1)
    await approvals.create(pending)
    await approvals.create(approved)
    decided = await approvals.vote(approved.id, vote(DBA1, at=NOW + 2), NOW + 2)

    withdrawn = await approvals.withdraw(pending.id, NOW + 10)
    assert (withdrawn.state, withdrawn.decided_at) == (RequestState.WITHDRAWN, NOW + 10)
    assert await approvals.get(pending.id) == withdrawn
    assert await approvals.withdraw(approved.id, NOW + 11) == decided  # a decided request stays decided
    assert await approvals.withdraw(pending.id, NOW + 12) == withdrawn
    with pytest.raises(RequestNotFound):
        await approvals.withdraw("apr-missing", NOW)


async def test_list_newest_first_with_filters(store: StoreFactory) -> None:
    here, there = await store(replica="replica-a"), await store(replica="replica-b")
    requests = [new_request(at=NOW + i) for i in range(5)]
    for index, request in enumerate(requests):
        await (here if index % 2 == 0 else there).create(request)
    await here.withdraw(requests[1].id, NOW + 10)
    newest_first = [request.id for request in reversed(requests)]

    assert [r.id for r in await here.list()] == newest_first
    assert [r.id for r in await here.list(limit=2)] == newest_first[:2]
    assert [r.id for r in await here.list(since=NOW + 2)] == newest_first[:3]
    assert [r.id for r in await here.list(states=[RequestState.WITHDRAWN])] == [requests[1].id]
    pending = await here.list(states=[RequestState.PENDING, RequestState.APPROVED])
    assert [r.id for r in pending] == [i for i in newest_first if i != requests[1].id]
    assert [r.id for r in await here.list(holder="replica-b")] == [requests[3].id, requests[1].id]
    assert await here.list(states=[]) == []


# -- "return now": single-use approvals ---------------------------------------------------------------------


async def test_an_approval_bound_to_a_statement_is_used_exactly_once(store: StoreFactory) -> None:
    one, two = await store(replica="replica-a"), await store(replica="replica-b")
    request = new_request(quorum=1, statement_digest="sha256:abc")
    await one.create(request)
    assert await one.find_approved("sha256:abc", ADA, NOW + 2) is None  # pending
    assert await one.consume(request.id, NOW + 2) is None
    approved = await one.vote(request.id, vote(DBA1), NOW + 1)

    assert await two.find_approved("sha256:abc", ADA, NOW + 2) == approved
    assert await two.find_approved("sha256:abc", replace(ADA, subject="u-other"), NOW + 2) is None
    assert await two.find_approved("sha256:other", ADA, NOW + 2) is None
    assert await two.find_approved("sha256:abc", ADA, request.expires_at) is None  # too late

    attempts = await asyncio.gather(*(store.consume(request.id, NOW + 3) for store in (one, two) * 4))
    assert [attempt for attempt in attempts if attempt is not None] == [approved]
    assert await one.find_approved("sha256:abc", ADA, NOW + 4) is None
    assert await one.consume(request.id, NOW + 4) is None


async def test_only_approved_bound_unexpired_requests_can_be_consumed(store: StoreFactory) -> None:
    approvals = await store()
    unbound = new_request(quorum=1)
    late = new_request(quorum=1, statement_digest="sha256:late")
    denied = new_request(quorum=1, statement_digest="sha256:denied")
    for request in (unbound, late, denied):
        await approvals.create(request)
    await approvals.vote(unbound.id, vote(DBA1), NOW + 1)
    await approvals.vote(late.id, vote(DBA1), NOW + 1)
    await approvals.vote(denied.id, vote(DBA1, approve=False), NOW + 1)

    assert await approvals.consume(unbound.id, NOW + 2) is None
    assert await approvals.consume(denied.id, NOW + 2) is None
    assert await approvals.consume(late.id, late.expires_at) is None
    assert await approvals.consume(late.id, late.expires_at - 1) is not None
    assert await approvals.consume("apr-missing", NOW) is None


# -- notifications ------------------------------------------------------------------------------------------


async def test_every_change_notifies_another_replica(store: StoreFactory) -> None:
    here, there = await store(replica="replica-a"), await store(replica="replica-b")
    heard: asyncio.Queue[str] = asyncio.Queue()
    await there.listen(heard.put_nowait)

    voted, expiring, withdrawn, sentinel = (new_request(at=NOW + i, timeout=60) for i in range(4))
    await here.create(voted)
    assert await heard.get() == voted.id
    await here.vote(voted.id, vote(DBA1), NOW + 1)
    assert await heard.get() == voted.id
    with pytest.raises(VoteRefused):
        await here.vote(voted.id, vote(DBA1), NOW + 2)  # refused: nothing changed, nothing sent
    await here.create(expiring)
    assert await heard.get() == expiring.id  # not voted.id again
    await here.expire_due(NOW + 61)  # expires voted and expiring
    assert {await heard.get(), await heard.get()} == {voted.id, expiring.id}
    await here.create(withdrawn)
    await here.withdraw(withdrawn.id, NOW + 2)
    assert [await heard.get(), await heard.get()] == [withdrawn.id, withdrawn.id]
    await here.create(sentinel)
    assert await heard.get() == sentinel.id
    assert heard.empty()


async def test_the_listener_comes_back_after_its_connection_is_killed(
    store: StoreFactory, approvals_db: ApprovalsDatabase, admin: asyncpg.Connection
) -> None:
    gate, dialing = asyncio.Event(), asyncio.Event()  # while the gate is closed nobody connects
    gate.set()

    async def connect() -> asyncpg.Connection:
        if not gate.is_set():
            dialing.set()
        await gate.wait()
        return await asyncpg.connect(approvals_db.dsn(OWNER))

    here, there = await store(replica="replica-a"), await store(replica="replica-b", connect=connect)
    heard: asyncio.Queue[str] = asyncio.Queue()
    reconnected = asyncio.Event()
    caught_up: list[str] = []
    rereads: list[asyncio.Future[None]] = []

    def resync() -> None:  # what a listening service does after a reconnection: re-read what it waits on
        async def reread() -> None:
            caught_up.extend(request.id for request in await there.list(states=[RequestState.PENDING]))
            reconnected.set()

        rereads.append(asyncio.ensure_future(reread()))

    listener = await there.listen(heard.put_nowait, on_reconnect=resync)
    pid = listener.server_pid
    assert pid is not None

    gate.clear()
    assert await admin.fetchval("SELECT pg_terminate_backend($1, 10000)", pid)
    await dialing.wait()  # the listener noticed and tries to reconnect
    assert listener.server_pid is None
    missed = new_request()
    await here.create(missed)  # sent while nobody listens on that side
    gate.set()
    await reconnected.wait()

    assert listener.reconnections == 1
    assert listener.server_pid not in (None, pid)
    assert missed.id in caught_up
    after = new_request(at=NOW + 1)
    await here.create(after)
    drained = [await heard.get()]
    while drained[-1] != after.id:
        drained.append(await heard.get())
    assert missed.id not in drained  # lost with the connection: only the re-read found it


# -- schema, migrations and privileges ------------------------------------------------------------------------


async def test_migrations_are_idempotent_and_concurrent_opens_safe(
    store: StoreFactory, approvals_db: ApprovalsDatabase, admin: asyncpg.Connection, schema: str
) -> None:
    audit = PostgresAuditStore(approvals_db.dsn(OWNER), schema=schema)  # the audit log shares the schema
    opened = await asyncio.gather(store(), store(), store(), audit.open())
    await audit.close()
    versions = await admin.fetch(f"SELECT component, version FROM {schema}.schema_version ORDER BY component")
    assert [tuple(row) for row in versions] == [("approvals", pg_schema.APPROVALS_VERSION), ("audit", 1)]
    assert await pg_schema.migrate(admin, schema) == pg_schema.APPROVALS_VERSION
    assert await pg_schema.current_approvals_version(admin, schema) == pg_schema.APPROVALS_VERSION
    first = opened[0]
    assert isinstance(first, ApprovalStore)
    await first.close()
    await first.open()  # reopening a current schema changes nothing
    with pytest.raises(RuntimeError, match="already open"):
        await first.open()
    assert await admin.fetchval(f"SELECT count(*) FROM {schema}.schema_version") == 2

    await admin.execute(f"INSERT INTO {schema}.schema_version (component, version) VALUES ('approvals', 999)")
    with pytest.raises(SchemaError, match="999"):
        await store()


def test_schema_names_are_checked() -> None:
    assert pg_schema.channel_name("pgproxy") == "pgproxy_approvals"
    for bad in ("Bad", "a-b", 'x"; DROP TABLE t; --', "a" * 54):
        with pytest.raises(ValueError, match="schema name"):
            ApprovalStore("postgresql://unused", schema=bad)


async def test_least_privilege_store_role_and_reviewer(
    store: StoreFactory, approvals_db: ApprovalsDatabase, admin: asyncpg.Connection, schema: str
) -> None:
    with pytest.raises(SchemaError, match="schema's owner"):
        await store(ROLE)  # the store's role cannot create what the owner has not migrated
    await store(OWNER)
    for sql in pg_schema.grant_statements(schema, role=ROLE, reviewer=REVIEWER):
        await admin.execute(f"SET ROLE {OWNER}; {sql}; RESET ROLE")

    approvals = await store(ROLE)  # current schema: opening runs no DDL
    heard: asyncio.Queue[str] = asyncio.Queue()
    await approvals.listen(heard.put_nowait)
    request = new_request(quorum=1, statement_digest="sha256:x", timeout=60)
    other = new_request(at=NOW + 1, timeout=60)
    await approvals.create(request)
    await approvals.create(other)
    await approvals.set_extra(request.id, {"slack_ts": "1.2"})
    await approvals.vote(request.id, vote(DBA1), NOW + 2)
    assert await approvals.consume(request.id, NOW + 3) is not None
    assert [r.id for r in await approvals.expire_due(NOW + 61)] == [other.id]
    assert await approvals.withdraw(other.id, NOW + 62) is not None
    assert len(await approvals.list()) == 2
    assert await heard.get() == request.id

    requests, votes = f"{schema}.approval_requests", f"{schema}.approval_votes"
    as_role = await asyncpg.connect(approvals_db.dsn(ROLE))
    as_reviewer = await asyncpg.connect(approvals_db.dsn(REVIEWER))
    try:
        for sql in (
            f"UPDATE {votes} SET approve = false",
            f"DELETE FROM {votes}",
            f"DELETE FROM {requests}",
            f"TRUNCATE {requests} CASCADE",
            f"UPDATE {requests} SET requester_subject = 'someone-else'",
            f"UPDATE {requests} SET quorum = 1",
            f"CREATE TABLE {schema}.shadow (a int)",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await as_role.execute(sql)
        assert await as_reviewer.fetchval(f"SELECT count(*) FROM {votes}") == 1
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await as_reviewer.execute(f"UPDATE {requests} SET state = 'approved'")
    finally:
        await as_role.close()
        await as_reviewer.close()

    reviewer = await store(REVIEWER)  # reads through the store; may not change anything
    assert await reviewer.get(request.id) == await approvals.get(request.id)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await reviewer.create(new_request(at=NOW + 5))
