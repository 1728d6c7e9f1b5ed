"""Search, show and export over the PostgreSQL audit store, against a real server: the same answers as the
JSONL reader gives for the same records, read by a SELECT-only reviewer role, and clear errors otherwise."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psycopg
import pytest

from pgproxy.audit import AuditRecord, Chain, Decision, RecordKind, verify
from pgproxy.audit.export import ExportFormat, encode
from pgproxy.audit.jsonl import GroupCommitter, JsonlAuditStore
from pgproxy.audit.pg_schema import grant_statements
from pgproxy.audit.postgres import PostgresAuditStore
from pgproxy.audit.query import Cursor, Entry, RecordFilter
from pgproxy.audit.review import AuditReader, AuditSourceError, JsonlAuditReader, PostgresAuditReader
from tests.support.pg_plugin import RealPostgres
from tests.unit.audit.factories import at, outcome, review_log, statement

pytestmark = pytest.mark.integration

DATABASE = "pgproxy_audit_review_test"
WRITER, READER, OUTSIDER = "pgproxy_review_writer", "pgproxy_review_reader", "pgproxy_review_outsider"


@dataclass
class ReviewDatabase:
    postgres: RealPostgres

    def dsn(self, role: str | None = None) -> str:
        return self.postgres.dsn(role, DATABASE, "review-secret-1")


@pytest.fixture(scope="module")
def review_db(postgres: RealPostgres) -> Iterator[ReviewDatabase]:
    def drop(admin: psycopg.Connection[tuple[object, ...]]) -> None:
        admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        for role in (WRITER, READER, OUTSIDER):
            admin.execute(f"DROP ROLE IF EXISTS {role}")

    with psycopg.connect(postgres.admin_dsn, autocommit=True) as admin:
        drop(admin)
        for role in (WRITER, READER, OUTSIDER):
            admin.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER PASSWORD 'review-secret-1'")
        admin.execute(f"CREATE DATABASE {DATABASE}")
    yield ReviewDatabase(postgres)
    with psycopg.connect(postgres.admin_dsn, autocommit=True) as admin:
        drop(admin)


def second_chain() -> list[AuditRecord]:
    """Another replica's records: some at the very times of the first chain's, ids in mixed case."""
    carl = {"session_id": "s-carl", "subject": "user-3", "email": "nul\x00@example.com", "database": "app"}
    tie = statement("SELECT * FROM accounts", record_id="Tie-B", time=at("09:00:01"), **carl)
    return [
        statement("SELECT 1", record_id="_tie", time=at("09:00:01"), relations=(), **carl),
        tie,
        outcome(tie, record_id="tie-b-done", time=at("09:00:01"), command_tag="SELECT 7", rows=7),
        statement("DROP TABLE accounts", record_id="carl-drop", time=at("10:31:00"), category="ddl",
                  command="DROP TABLE", relations=("accounts",), decision=Decision.DENY, rule_id="no-drops", **carl),
    ]


@dataclass
class Logs:
    pg: PostgresAuditReader
    jsonl: JsonlAuditReader
    files: list[Path]
    schema: str


@pytest.fixture
async def logs(review_db: ReviewDatabase, tmp_path: Path) -> AsyncIterator[Logs]:
    """The same sealed records in a fresh schema (written through the committer) and in JSONL files."""
    schema = f"review_{uuid.uuid4().hex[:12]}"
    store = PostgresAuditStore(review_db.dsn(), schema=schema)
    await store.open()
    files = []
    for chain_id, records in (("pgproxy-a", review_log()), ("pgproxy-b", second_chain())):
        committer = GroupCommitter(store, Chain(chain_id))
        sealed = await committer.submit_many(records)
        files.append(tmp_path / f"{chain_id}.jsonl")
        jsonl = JsonlAuditStore(files[-1])
        await jsonl.open()
        await jsonl.append(sealed)
        await jsonl.close()
    await store.close()
    admin = await asyncpg.connect(review_db.dsn())
    try:
        for sql in grant_statements(schema, writer=WRITER, reviewer=READER):
            await admin.execute(sql)
    finally:
        await admin.close()
    yield Logs(PostgresAuditReader.connect(review_db.dsn(READER), schema=schema), JsonlAuditReader(files), files,
               schema)


def shape(entries: Sequence[Entry]) -> list[tuple[str, list[str]]]:
    return [(entry.record.record_id, [o.record_id for o in entry.outcomes]) for entry in entries]


async def all_pages(reader: AuditReader, flt: RecordFilter, *, newest_first: bool) -> list[tuple[str, list[str]]]:
    seen: list[tuple[str, list[str]]] = []
    cursor = None
    while True:
        page = await reader.search(flt, limit=3, newest_first=newest_first, start_after=cursor)
        seen += shape(page)
        if len(page) < 3:
            return seen
        cursor = Cursor.of(page[-1].record)


async def exported(reader: AuditReader, flt: RecordFilter, fmt: ExportFormat) -> bytes:
    return b"".join([chunk async for chunk in encode(reader.export(flt), fmt)])


FILTERS = [
    RecordFilter(),
    RecordFilter(identity="ADA@example.com"),
    RecordFilter(identity="NUL\x00@EXAMPLE.COM"),
    RecordFilter(table="accounts"),
    RecordFilter(table="public.accounts", decision=Decision.DENY),
    RecordFilter(since=at("09:00:01"), until=at("10:31:00")),
    RecordFilter(since=at("10:00:00"), database="billing"),
    RecordFilter(category="DDL"),
    RecordFilter(approver="DAVE@example.com"),
    RecordFilter(text="<script>"),
    RecordFilter(rule_id="reads", session_id="s-ada"),
    RecordFilter(kinds=frozenset({RecordKind.AUTH_FAILURE, RecordKind.SESSION_END})),
    RecordFilter(kinds=frozenset({RecordKind.OUTCOME}), until=at("10:00:00")),
    RecordFilter(session_id="s-carl"),
]


@pytest.mark.parametrize("flt", FILTERS, ids=[repr(flt.to_params()) for flt in FILTERS])
async def test_postgres_answers_as_the_jsonl_files_do(logs: Logs, flt: RecordFilter) -> None:
    for newest_first in (True, False):
        expected = await all_pages(logs.jsonl, flt, newest_first=newest_first)
        assert await all_pages(logs.pg, flt, newest_first=newest_first) == expected
    everything = await logs.jsonl.search(flt, limit=100)
    assert shape(await logs.pg.search(flt, limit=100)) == shape(everything)
    for fmt in ExportFormat:
        assert await exported(logs.pg, flt, fmt) == await exported(logs.jsonl, flt, fmt)


async def test_listings_order_ties_by_record_id_and_join_outcomes(logs: Logs) -> None:
    window = RecordFilter(since=at("09:00:01"), until=at("09:00:02"))
    assert await all_pages(logs.pg, window, newest_first=False) == [
        ("Tie-B", ["tie-b-done"]), ("_tie", []), ("ada-read", ["ada-read-done"]),
    ]
    assert shape(await logs.pg.search(RecordFilter(identity="nul\x00@example.com"), limit=1)) == [
        ("carl-drop", [])
    ]


async def test_show_reads_records_outcomes_statements_and_sessions(logs: Logs) -> None:
    for ident in ("ada-delete", "bob-alter-done", "Tie-B", "s-bob", "s-carl", "mallory-failed", "nothing", "s-ada"):
        assert await logs.pg.show(ident) == await logs.jsonl.show(ident), ident
    detail = await logs.pg.show("bob-alter")
    assert detail is not None and detail.record is not None and detail.record.approval_id == "req-1"
    assert [o.record_id for o in detail.outcomes] == ["bob-alter-done"]
    assert [e.record.kind for e in detail.session] == [RecordKind.SESSION_START, RecordKind.SESSION_END]
    cut = await logs.pg.show("s-ada", session_limit=2)
    assert cut is not None and cut.truncated and [e.record.record_id for e in cut.session] == ["ada-start", "ada-read"]


async def test_a_whole_export_is_the_stored_chains_and_verifies(logs: Logs, tmp_path: Path) -> None:
    data = await exported(logs.pg, RecordFilter(), ExportFormat.JSONL)
    assert data == b"".join(path.read_bytes() for path in logs.files)
    records = [AuditRecord.from_json(line) for line in data.splitlines()]
    report = verify(records)
    assert report.ok and [chain.chain_id for chain in report.chains] == ["pgproxy-a", "pgproxy-b"]


async def test_a_filtered_export_joins_outcomes_that_do_not_match_on_their_own(logs: Logs) -> None:
    records = [record async for record in logs.pg.export(RecordFilter(identity="bob@example.com"))]
    assert [record.record_id for record in records] == [
        "bob-start", "bob-alter", "bob-xss", "bob-xss-done", "bob-alter-done",
    ]
    window = RecordFilter(since=at("10:01:00"), until=at("10:31:00"))
    assert [record.record_id async for record in logs.pg.export(window)] == ["bob-alter", "bob-alter-done"]


async def test_unreadable_stores_raise_a_clear_error(logs: Logs, review_db: ReviewDatabase) -> None:
    cases = {
        "may not read": PostgresAuditReader.connect(review_db.dsn(OUTSIDER), schema=logs.schema),
        "no audit table": PostgresAuditReader.connect(review_db.dsn(READER), schema="review_missing"),
        "cannot read": PostgresAuditReader.connect(f"postgresql://nobody@127.0.0.1:{closed_port()}/x"),
    }
    for message, reader in cases.items():
        with pytest.raises(AuditSourceError, match=message):
            await reader.search(RecordFilter())
        with pytest.raises(AuditSourceError, match=message):
            await reader.show("ada-read")
        with pytest.raises(AuditSourceError, match=message):
            await exported(reader, RecordFilter(identity="x"), ExportFormat.CSV)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
