"""The PostgreSQL audit store against a real server: migrations, group commit, shared tables, tampering,
least privilege, and the store's connection dying mid-workload."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime

import asyncpg
import pytest

from pgproxy.audit import AuditRecord, BreakKind, Chain, Decision, InvalidRecord, RecordKind, verify
from pgproxy.audit.jsonl import AuditStoreUnavailable, GroupCommitter
from pgproxy.audit.pg_schema import AUDIT_VERSION, SchemaError, apply_migrations, current_version, grant_statements
from pgproxy.audit.postgres import AuditTableCorrupt, PostgresAuditStore
from tests.support.pg_plugin import RealPostgres
from tests.support.role_database import RoleDatabase, role_database
from tests.unit.audit.factories import outcome, statement

pytestmark = pytest.mark.integration

AUDIT_DATABASE = "pgproxy_audit_test"
OWNER, WRITER, REVIEWER = "pgproxy_audit_owner", "pgproxy_audit_writer", "pgproxy_audit_reviewer"
PASSWORD = "audit-secret-1"


AuditDatabase = RoleDatabase


@pytest.fixture(scope="module")
def audit_db(postgres: RealPostgres) -> Iterator[RoleDatabase]:
    """A database owned by OWNER, with a WRITER and a REVIEWER role that own nothing."""
    with role_database(postgres, AUDIT_DATABASE, owner=OWNER, others=(WRITER, REVIEWER), password=PASSWORD) as db:
        yield db


@pytest.fixture
def schema() -> str:
    """A fresh schema per test: tests share the database, never a table."""
    return f"audit_{uuid.uuid4().hex[:12]}"


StoreFactory = Callable[..., Awaitable[PostgresAuditStore]]


@pytest.fixture
async def store(audit_db: AuditDatabase, schema: str) -> AsyncIterator[StoreFactory]:
    """Open stores (as OWNER on the test's schema unless told otherwise); all closed at teardown."""
    opened: list[PostgresAuditStore] = []

    async def make(role: str = OWNER, *, on: str = schema) -> PostgresAuditStore:
        audit_store = PostgresAuditStore(audit_db.dsn(role), schema=on)
        opened.append(audit_store)
        await audit_store.open()
        return audit_store

    yield make
    for audit_store in opened:
        await audit_store.close()


@pytest.fixture
async def admin(audit_db: AuditDatabase) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(audit_db.dsn())
    yield conn
    await conn.close()


async def resumed(audit_store: PostgresAuditStore, chain_id: str) -> GroupCommitter:
    return GroupCommitter(audit_store, Chain.resume(await audit_store.last_record(chain_id), chain_id))


async def write(committer: GroupCommitter, count: int, prefix: str = "SELECT") -> list[AuditRecord]:
    return list(await asyncio.gather(*(committer.submit(statement(f"{prefix} {i}")) for i in range(count))))


def seqs(records: Sequence[AuditRecord], chain_id: str) -> list[int]:
    return [record.seq for record in records if record.chain_id == chain_id]


# -- schema ----------------------------------------------------------------------------------------------


async def test_open_creates_and_migrates_the_schema_once(
    store: StoreFactory, admin: asyncpg.Connection, schema: str
) -> None:
    first, second, third = await asyncio.gather(store(), store(), store())  # replicas starting together
    versions = await admin.fetch(f"SELECT component, version FROM {schema}.schema_version")
    assert [tuple(row) for row in versions] == [("audit", AUDIT_VERSION)]
    assert await admin.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.audit_log")
    assert await apply_migrations(admin, schema) == AUDIT_VERSION
    assert await current_version(admin, schema) == AUDIT_VERSION

    with pytest.raises(AuditStoreUnavailable, match="already open"):
        await first.open()
    await second.close()
    await second.open()  # opening an existing, current schema again changes nothing
    await third.reopen()
    assert await admin.fetchval(f"SELECT count(*) FROM {schema}.schema_version") == 1


async def test_a_newer_schema_is_refused(store: StoreFactory, admin: asyncpg.Connection, schema: str) -> None:
    await store()
    await admin.execute(f"INSERT INTO {schema}.schema_version (component, version) VALUES ('audit', 999)")
    with pytest.raises(SchemaError, match="999"):
        await store()


async def test_synchronous_commit_is_on_whatever_the_session_default(audit_db: AuditDatabase, schema: str) -> None:
    connections: list[asyncpg.Connection] = []

    async def connect() -> asyncpg.Connection:
        conn = await asyncpg.connect(audit_db.dsn(OWNER), server_settings={"synchronous_commit": "off"})
        connections.append(conn)
        return conn

    audit_store = PostgresAuditStore(connect, schema=schema)
    await audit_store.open()
    try:
        assert await connections[0].fetchval("SHOW synchronous_commit") == "on"
    finally:
        await audit_store.close()
    assert connections[0].is_closed()


# -- writing and reading -----------------------------------------------------------------------------------


class CountingSink:
    def __init__(self, inner: PostgresAuditStore) -> None:
        self.inner = inner
        self.batches: list[int] = []

    async def append(self, records: Sequence[AuditRecord]) -> None:
        self.batches.append(len(records))
        await self.inner.append(records)


async def test_group_commit_stores_every_record_once_in_chain_order(
    store: StoreFactory, admin: asyncpg.Connection, schema: str
) -> None:
    audit_store = await store()
    sink = CountingSink(audit_store)
    committer = GroupCommitter(sink, Chain.resume(await audit_store.last_record("pgproxy-a"), "pgproxy-a"))
    acknowledged = await write(committer, 300)

    assert sum(sink.batches) == 300
    assert len(sink.batches) < 300  # submissions waiting on a write were grouped
    stored = await audit_store.fetch()
    assert [record.seq for record in stored] == list(range(1, 301))
    assert [record.to_json() for record in stored] == [
        record.to_json() for record in sorted(acknowledged, key=lambda record: record.seq)
    ]
    assert await admin.fetchval(f"SELECT count(DISTINCT record_id) FROM {schema}.audit_log") == 300
    report = verify(stored)
    assert report.ok, report.summary()
    assert audit_store.heads["pgproxy-a"] == report.chains[0].head


async def test_records_read_back_byte_for_byte(store: StoreFactory) -> None:
    audit_store = await store()
    committer = await resumed(audit_store, "pgproxy-a")
    awkward = "SELECT 'é\n\t\"\\ \u2028 🐘', '\x00'"
    intent = await committer.submit(
        statement(awkward, email="nul\x00@example.com", groups=(), relations=("public.a", "s.\x00b"))
    )
    done = await committer.submit(outcome(intent, rows=2**53 - 1, duration_ms=12.5, sqlstate="42501"))
    failure = await committer.submit(AuditRecord(kind=RecordKind.AUTH_FAILURE, time=intent.time, reason="bad token"))

    stored = await audit_store.fetch("pgproxy-a")
    assert [record.to_json() for record in stored] == [intent.to_json(), done.to_json(), failure.to_json()]
    assert stored == [intent, done, failure]
    # The search copies replace NUL; searching with the original value finds the record.
    assert await audit_store.fetch(email="nul\x00@example.com") == [intent]
    assert await audit_store.fetch(relation="s.\x00b") == [intent]


async def test_search_filters(store: StoreFactory) -> None:
    audit_store = await store()
    committer = await resumed(audit_store, "pgproxy-a")
    early = datetime(2024, 5, 1, 12, tzinfo=UTC)
    late = datetime(2024, 5, 2, 12, tzinfo=UTC)
    allowed = await committer.submit(statement("SELECT 1", time="2024-05-01T12:00:00.000000Z"))
    denied = await committer.submit(
        statement(
            "DELETE FROM accounts",
            time="2024-05-02T12:00:00.000000Z",
            email="eve@example.com",
            subject="user-2",
            database="billing",
            decision=Decision.DENY,
            rule_id="no-deletes",
            relations=("public.accounts", "public.audit"),
        )
    )
    approved = await committer.submit(
        statement("UPDATE t SET a = 1", approval_id="req-7", approvers=("bob@example.com", "carol@example.com"))
    )

    assert await audit_store.fetch(email="eve@example.com") == [denied]
    assert await audit_store.fetch(subject="user-2", database="billing") == [denied]
    assert await audit_store.fetch(decision=Decision.DENY, rule_id="no-deletes") == [denied]
    assert await audit_store.fetch(relation="public.audit") == [denied]
    assert await audit_store.fetch(approver="carol@example.com") == [approved]
    assert await audit_store.fetch(approval_id="req-7") == [approved]
    assert await audit_store.fetch(since=early, until=late) == [allowed, approved]
    assert await audit_store.fetch(since=late) == [denied]
    assert await audit_store.fetch("pgproxy-other") == []
    with pytest.raises(TypeError, match="text"):
        await audit_store.fetch(text="SELECT 1")


# -- several writers ---------------------------------------------------------------------------------------


async def test_replicas_with_their_own_chains_share_one_table(store: StoreFactory) -> None:
    first, second = await asyncio.gather(store(), store())
    one, two = await resumed(first, "pgproxy-one"), await resumed(second, "pgproxy-two")
    await asyncio.gather(write(one, 150), write(two, 150), write(one, 50, "UPDATE"))

    stored = await first.fetch()
    report = verify(stored)
    assert report.ok, report.summary()
    assert {chain.chain_id: chain.records for chain in report.chains} == {"pgproxy-one": 200, "pgproxy-two": 150}
    assert seqs(stored, "pgproxy-two") == list(range(1, 151))
    assert await second.fetch("pgproxy-two") == [record for record in stored if record.chain_id == "pgproxy-two"]


async def test_one_store_serves_two_committers(store: StoreFactory) -> None:
    audit_store = await store()
    one, two = await resumed(audit_store, "pgproxy-one"), await resumed(audit_store, "pgproxy-two")
    await asyncio.gather(write(one, 100), write(two, 100))
    report = verify(await audit_store.fetch())
    assert report.ok, report.summary()
    assert [chain.records for chain in report.chains] == [100, 100]


async def test_a_second_writer_on_the_same_chain_fails_instead_of_forking(store: StoreFactory) -> None:
    first, second = await store(), await store()
    one = await resumed(first, "pgproxy-a")
    await write(one, 3)
    stale = await resumed(second, "pgproxy-a")  # both now hold head seq 3
    written = await write(one, 2)

    with pytest.raises(AuditStoreUnavailable) as failed:
        await stale.submit(statement("SELECT 'fork'"))
    assert isinstance(failed.value.__cause__, asyncpg.UniqueViolationError)
    assert isinstance(second.failure, asyncpg.UniqueViolationError)
    with pytest.raises(AuditStoreUnavailable, match="must be reopened"):
        await second.last_record("pgproxy-a")

    # A writer that starts the chain afresh is refused before anything reaches the table.
    fresh = Chain("pgproxy-a").seal(statement("SELECT 'restart'"))
    third = await store()
    with pytest.raises(InvalidRecord, match="does not continue the stored seq 5"):
        await third.append([fresh])

    stored = await first.fetch()
    assert [record.seq for record in stored] == [1, 2, 3, 4, 5]
    assert stored[-2:] == sorted(written, key=lambda record: record.seq)
    assert verify(stored).ok


async def test_a_batch_is_stored_whole_or_not_at_all(
    store: StoreFactory, admin: asyncpg.Connection, schema: str
) -> None:
    audit_store = await store()
    assert await audit_store.last_record("pgproxy-a") is None  # the store now holds an empty head
    batch = Chain("pgproxy-a").seal_all([statement(f"SELECT {i}") for i in range(3)])
    squatter = batch[2]  # another writer takes seq 3 after the store read its head
    await admin.execute(
        f"INSERT INTO {schema}.audit_log (chain_id, seq, record_id, kind, time, hash, prev_hash, record) "
        "VALUES ($1, $2, 'squatter', $3, now(), $4, $5, $6)",
        squatter.chain_id,
        squatter.seq,
        squatter.kind.value,
        squatter.hash,
        squatter.prev_hash,
        squatter.to_json(),
    )
    with pytest.raises(asyncpg.UniqueViolationError):
        await audit_store.append(batch)  # seq 1 and 2 went in before seq 3 collided
    assert await admin.fetchval(f"SELECT array_agg(record_id) FROM {schema}.audit_log") == ["squatter"]


# -- tampering and privileges ------------------------------------------------------------------------------

TAMPERING = {
    "edit": (
        ["UPDATE {t} SET record = replace(record, 'SELECT 4', 'SELECT 40') WHERE seq = 5"],
        BreakKind.HASH_MISMATCH,
        5,
    ),
    "delete": (["DELETE FROM {t} WHERE seq = 3"], BreakKind.GAP, 4),
    "swap": (
        [
            "UPDATE {t} SET seq = 1000 WHERE seq = 2",
            "UPDATE {t} SET seq = 2 WHERE seq = 3",
            "UPDATE {t} SET seq = 3 WHERE seq = 1000",
        ],
        BreakKind.OUT_OF_ORDER,
        3,
    ),
}


@pytest.mark.parametrize("tampering", TAMPERING)
async def test_tampering_in_sql_is_caught_by_verify(
    store: StoreFactory, admin: asyncpg.Connection, schema: str, tampering: str
) -> None:
    audit_store = await store()
    committer = await resumed(audit_store, "pgproxy-a")
    for index in range(8):
        await committer.submit(statement(f"SELECT {index}"))
    assert verify(await audit_store.fetch()).ok

    statements, kind, seq = TAMPERING[tampering]
    for sql in statements:
        await admin.execute(sql.format(t=f"{schema}.audit_log"))
    report = verify(await audit_store.fetch())
    assert [(found.kind, found.seq) for found in report.breaks] == [(kind, seq)]


async def test_a_tampered_head_is_not_extended(store: StoreFactory, admin: asyncpg.Connection, schema: str) -> None:
    audit_store = await store()
    await write(await resumed(audit_store, "pgproxy-a"), 3)
    await admin.execute(f"UPDATE {schema}.audit_log SET record = replace(record, 'user-1', 'user-9') WHERE seq = 3")
    with pytest.raises(AuditTableCorrupt, match=r"\(pgproxy-a, 3\)"):
        await (await store()).last_record("pgproxy-a")


async def test_unparseable_rows_are_named(store: StoreFactory, admin: asyncpg.Connection, schema: str) -> None:
    audit_store = await store()
    await write(await resumed(audit_store, "pgproxy-a"), 2)
    await admin.execute(f"UPDATE {schema}.audit_log SET record = 'not json' WHERE seq = 1")
    with pytest.raises(AuditTableCorrupt, match=r"\(pgproxy-a, 1\)"):
        await audit_store.fetch()


async def test_least_privilege_writer_and_reviewer(
    store: StoreFactory, audit_db: AuditDatabase, admin: asyncpg.Connection, schema: str
) -> None:
    with pytest.raises(SchemaError, match="schema's owner"):
        await store(WRITER)  # the writer cannot create what the owner has not migrated

    owner = await store(OWNER)
    for sql in grant_statements(schema, writer=WRITER, reviewer=REVIEWER):
        await admin.execute(f"SET ROLE {OWNER}; {sql}; RESET ROLE")
    writer = await store(WRITER)  # the schema is current: opening runs no DDL
    await write(await resumed(writer, "pgproxy-a"), 5)
    assert len(await owner.fetch()) == 5

    table = f"{schema}.audit_log"
    as_writer = await asyncpg.connect(audit_db.dsn(WRITER))
    as_reviewer = await asyncpg.connect(audit_db.dsn(REVIEWER))
    try:
        for sql in (
            f"UPDATE {table} SET record = record WHERE seq = 2",
            f"DELETE FROM {table} WHERE seq = 2",
            f"TRUNCATE {table}",
            f"CREATE TABLE {schema}.shadow (a int)",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await as_writer.execute(sql)
        assert await as_reviewer.fetchval(f"SELECT count(*) FROM {table}") == 5
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await as_reviewer.execute(f"INSERT INTO {table} SELECT * FROM {table}")
    finally:
        await as_writer.close()
        await as_reviewer.close()

    # A reviewer reads without opening (no writer connection, no migration).
    reviewer = PostgresAuditStore(audit_db.dsn(REVIEWER), schema=schema)
    assert verify(await reviewer.fetch()).ok
    await admin.execute(f"DELETE FROM {table} WHERE seq = 2")  # an admin still can
    assert [found.kind for found in verify(await reviewer.fetch()).breaks] == [BreakKind.GAP]


# -- the store going away ----------------------------------------------------------------------------------


async def test_the_store_dying_mid_append_fails_closed_until_reopened(
    audit_db: AuditDatabase, admin: asyncpg.Connection, schema: str
) -> None:
    connections: list[asyncpg.Connection] = []

    async def connect() -> asyncpg.Connection:
        conn = await asyncpg.connect(audit_db.dsn(OWNER))
        connections.append(conn)
        return conn

    audit_store = PostgresAuditStore(connect, schema=schema)
    await audit_store.open()
    try:
        committer = await resumed(audit_store, "pgproxy-a")
        before = await write(committer, 20)
        pid = connections[0].get_server_pid()

        # Hold the table so the next append is in flight, then kill the store's backend under it.
        blocker = admin.transaction()
        await blocker.start()
        await admin.execute(f"LOCK TABLE {schema}.audit_log IN SHARE MODE")
        in_flight = asyncio.ensure_future(committer.submit(statement("SELECT 'in flight'")))
        while True:  # until the append waits on the lock (bounded by the test timeout)
            if await admin.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid):
                break
            await asyncio.sleep(0.01)
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(AuditStoreUnavailable, match="audit append failed"):
            await in_flight
        await blocker.rollback()

        assert audit_store.failure is not None
        with pytest.raises(AuditStoreUnavailable, match="must be reopened"):
            await audit_store.append(Chain("pgproxy-a", 20, before[-1].hash).seal_all([statement("SELECT 'later'")]))
        with pytest.raises(AuditStoreUnavailable):
            await committer.submit(statement("SELECT 'later'"))

        await audit_store.reopen()
        assert audit_store.heads["pgproxy-a"] is not None
        committer.restart(Chain.resume(await audit_store.last_record("pgproxy-a"), "pgproxy-a"))
        after = await write(committer, 20, "UPDATE")
        assert min(record.seq for record in after) == 21
    finally:
        await audit_store.close()

    stored = await audit_store.fetch()
    assert [record.seq for record in stored] == list(range(1, 41))
    assert "SELECT 'in flight'" not in {record.text for record in stored}
    report = verify(stored)
    assert report.ok, report.summary()
