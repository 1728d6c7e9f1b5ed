"""The statement log through real clients: for each statement, the exact intent and outcome records.

Each test runs real drivers (psql, asyncpg, psycopg) through pgproxy with a JSONL audit log, then reads
the log back and checks, statement by statement, who (the token's identity), what (text, fingerprint,
classification), the decision and rule, and the outcome (tag, rows, SQLSTATE) against what the client
saw — and that the whole log is one intact hash chain.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import uuid
from collections.abc import Iterator

import asyncpg
import httpx
import psycopg
import pytest

from pgproxy.audit import AuditRecord, Decision, RecordKind, verify
from tests.support.enforcement import ENFORCING, HELD, ITEMS, GateDatabase, token
from tests.support.pg_plugin import TEST_DATABASE, RealPostgres
from tests.support.proxy_plugin import ProxyFactory, RunningProxy

pytestmark = pytest.mark.integration

PROBE = "audit_trail_probe"


@pytest.fixture(scope="module")
def audited(proxy_factory: ProxyFactory, postgres: RealPostgres) -> RunningProxy:
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {PROBE}")
        conn.execute(f"CREATE TABLE {PROBE} (id int PRIMARY KEY, note text)")
        conn.execute(f"GRANT ALL ON {PROBE} TO PUBLIC")
    return proxy_factory()


@pytest.fixture(scope="module")
def enforced(proxy_factory: ProxyFactory, gate: GateDatabase) -> RunningProxy:
    return proxy_factory(policies=ENFORCING)


@pytest.fixture
def caller() -> Iterator[str]:
    yield f"auditee-{uuid.uuid4().hex[:10]}"


def session_records(proxy: RunningProxy, subject: str) -> list[AuditRecord]:
    """This subject's records, in chain order; outcomes are matched through their session."""
    records = proxy.audit_records()
    sessions = {record.session_id for record in records if record.subject == subject}
    return [record for record in records if record.session_id in sessions]


def statements(records: list[AuditRecord]) -> list[AuditRecord]:
    return [record for record in records if record.kind is RecordKind.STATEMENT]


def outcomes_of(records: list[AuditRecord], intent: AuditRecord) -> list[AuditRecord]:
    return [record for record in records if record.kind is RecordKind.OUTCOME and record.intent_id == intent.record_id]


def only_outcome(records: list[AuditRecord], intent: AuditRecord) -> AuditRecord:
    found = outcomes_of(records, intent)
    assert len(found) == 1, (intent.text, found)
    return found[0]


def test_psql_multi_statement_query_gives_one_record_per_statement(audited: RunningProxy, caller: str) -> None:
    idp = audited.idp
    secret = idp.mint(caller, email=f"{caller}@example.com", groups=["analysts", "oncall"])
    sql = f"SELECT 1 AS one; INSERT INTO {PROBE} VALUES (1001, 'x'), (1002, 'y'); SELECT * FROM {PROBE} WHERE id > 1000"
    result = subprocess.run(["psql", audited.conninfo(secret, application_name="report-job"), "-X", "-c", sql],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    records = session_records(audited, caller)
    start = records[0]
    assert start.kind is RecordKind.SESSION_START
    assert (start.subject, start.email, start.groups, start.issuer) == (
        caller, f"{caller}@example.com", ("analysts", "oncall"), idp.issuer)
    assert (start.database, start.application_name, start.login_user) == (TEST_DATABASE, "report-job", "agent")
    assert start.client_address is not None and start.client_address.startswith("127.0.0.1:")
    intents = statements(records)
    assert [(r.statement_index, r.command, r.category, r.text) for r in intents] == [
        (0, "SELECT", "read", "SELECT 1 AS one"),
        (1, "INSERT", "write", f"INSERT INTO {PROBE} VALUES (1001, 'x'), (1002, 'y')"),
        (2, "SELECT", "read", f"SELECT * FROM {PROBE} WHERE id > 1000"),
    ]
    for intent in intents:
        assert (intent.decision, intent.rule_id, intent.subject, intent.session_id) == (
            Decision.ALLOW, "tests-everything", caller, start.session_id)
        assert intent.fingerprint is not None and len(intent.fingerprint) == 16
    assert intents[1].relations == (PROBE,)
    assert [(only_outcome(records, r).command_tag, only_outcome(records, r).rows) for r in intents] == [
        ("SELECT 1", 1), ("INSERT 0 2", 2), ("SELECT 2", 2)]
    assert all(only_outcome(records, r).duration_ms is not None for r in intents)
    end = records[-1]
    assert end.kind is RecordKind.SESSION_END and end.session_id == start.session_id
    # Every intent is in the log before its outcome.
    positions = {record.record_id: index for index, record in enumerate(records)}
    assert all(positions[r.record_id] < positions[only_outcome(records, r).record_id] for r in intents)
    assert verify(audited.audit_records()).ok


def test_an_error_ends_the_query_and_the_rest_is_recorded_as_not_run(audited: RunningProxy, caller: str) -> None:
    secret = audited.idp.mint(caller)
    result = subprocess.run(
        ["psql", audited.conninfo(secret), "-X", "-c", "SELECT 2; SELECT 1/0; SELECT 3"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode != 0 and "division by zero" in result.stderr
    records = session_records(audited, caller)
    first, failing, skipped = statements(records)
    assert only_outcome(records, first).command_tag == "SELECT 1"
    failed = only_outcome(records, failing)
    assert (failed.sqlstate, failed.error_message, failed.command_tag) == ("22012", "division by zero", None)
    not_run = only_outcome(records, skipped)
    assert not_run.sqlstate is None and not_run.reason is not None and not_run.reason.startswith("not run")


async def test_asyncpg_records_each_execution_of_a_prepared_statement(audited: RunningProxy, caller: str) -> None:
    conn = await asyncpg.connect(audited.url(audited.idp.mint(caller)), ssl=False)
    try:
        statement = await conn.prepare("SELECT g FROM generate_series(1, $1::int) AS g")
        assert len(await statement.fetch(3)) == 3
        assert len(await statement.fetch(5)) == 5
        await conn.executemany(f"INSERT INTO {PROBE} VALUES ($1, $2)", [(2001, "a"), (2002, "b"), (2003, "c")])
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(f"INSERT INTO {PROBE} VALUES ($1, $2)", 2001, "again")
    finally:
        await conn.close()
    records = await asyncio.to_thread(session_records, audited, caller)
    intents = statements(records)
    selects = [r for r in intents if r.command == "SELECT"]
    assert [only_outcome(records, r).rows for r in selects] == [3, 5]
    assert {r.text for r in selects} == {"SELECT g FROM generate_series(1, $1::int) AS g"}
    assert selects[0].fingerprint == selects[1].fingerprint
    inserts = [r for r in intents if r.command == "INSERT"]
    assert [only_outcome(records, r).command_tag for r in inserts[:3]] == ["INSERT 0 1"] * 3
    duplicate = only_outcome(records, inserts[3])
    assert duplicate.sqlstate == "23505" and duplicate.command_tag is None
    # Parameter values are never logged.
    assert not any("again" in (r.text or "") for r in records)


def test_psycopg_pipeline_error_skips_the_rest_of_the_batch(audited: RunningProxy, caller: str) -> None:
    with psycopg.connect(audited.conninfo(audited.idp.mint(caller)), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline():
            conn.execute("SELECT %s::int", [7])
            conn.execute("SELECT 1 / %s::int", [0])
            conn.execute("SELECT %s::int + 1", [8])
        assert conn.execute("SELECT 'after'").fetchone() == ("after",)
    records = session_records(audited, caller)
    # psycopg stops sending the pipeline once it has seen the error, so the third statement reaches
    # pgproxy only if it was sent before the error arrived; if it did, it is recorded as not run.
    seven, failing, *skipped, after = statements(records)
    assert len(skipped) <= 1
    assert only_outcome(records, seven).command_tag == "SELECT 1"
    assert only_outcome(records, failing).sqlstate == "22012"
    assert all(only_outcome(records, record).reason is not None for record in skipped)
    assert only_outcome(records, after).command_tag == "SELECT 1" and after.text == "SELECT 'after'"


def test_denied_and_held_statements_carry_their_rule(enforced: RunningProxy, caller: str) -> None:
    secret = token(enforced.idp, "readers", sub=caller)
    result = subprocess.run(
        ["psql", enforced.conninfo(secret), "-X", "-v", "ON_ERROR_STOP=0",
         "-c", f"SELECT count(*) FROM {ITEMS}", "-c", f"DELETE FROM {ITEMS}", "-c", f"DROP TABLE {ITEMS}"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert "permission denied" in result.stderr or "pgproxy" in result.stderr, result.stderr
    records = session_records(enforced, caller)
    read, delete, drop = statements(records)
    assert (read.decision, read.rule_id) == (Decision.ALLOW, "readers-read")
    assert only_outcome(records, read).command_tag == "SELECT 1"
    assert (delete.decision, delete.rule_id, delete.category) == (Decision.DENY, "pgproxy:default-deny", "write")
    assert delete.reason is not None
    refused = only_outcome(records, delete)
    assert refused.sqlstate == "42501" and refused.error_message is not None
    assert (drop.decision, drop.rule_id, drop.category) == (Decision.REQUIRE_APPROVAL, HELD, "ddl")
    assert only_outcome(records, drop).sqlstate == "42501"


def test_refused_logins_are_recorded_with_who_tried_and_why(enforced: RunningProxy, caller: str) -> None:
    forged = enforced.idp.mint_with_unknown_key(caller)
    with pytest.raises(psycopg.OperationalError, match="OIDC token rejected"):
        psycopg.connect(enforced.conninfo(forged, user=f"{caller}-login"))
    outsider = enforced.idp.mint(caller, email=f"{caller}@example.com", groups=["nobody-knows"])
    with pytest.raises(psycopg.OperationalError, match="no policy rule"):
        psycopg.connect(enforced.conninfo(outsider))
    records = enforced.audit_records()
    by_token = [r for r in records if r.kind is RecordKind.AUTH_FAILURE and r.login_user == f"{caller}-login"]
    assert len(by_token) == 1
    assert by_token[0].sqlstate == "28P01" and by_token[0].subject is None  # an unverified token names nobody
    assert by_token[0].reason is not None and "OIDC token rejected" in by_token[0].reason
    by_policy = [r for r in records if r.kind is RecordKind.AUTH_FAILURE and r.subject == caller]
    assert len(by_policy) == 1 and by_policy[0].sqlstate == "28000"
    assert by_policy[0].email == f"{caller}@example.com" and by_policy[0].database == TEST_DATABASE
    assert not any(r.kind is RecordKind.SESSION_START and r.subject == caller for r in records)
    assert not any(forged in r.to_json() or outsider in r.to_json() for r in records)  # tokens never logged


def test_literals_are_redacted_when_configured(proxy_factory: ProxyFactory, caller: str) -> None:
    redacting = proxy_factory(audit_redact_literals=True)
    with psycopg.connect(redacting.conninfo(redacting.idp.mint(caller)), autocommit=True) as conn:
        conn.execute("SELECT 'card 4111-1111' AS note, 42 WHERE 'x' <> 'top secret'")
        with conn.cursor() as cursor:  # the client-side binding puts the literal into the text
            cursor.execute(psycopg.sql.SQL("SELECT {}").format(psycopg.sql.Literal("api-key-123")))
    records = session_records(redacting, caller)
    texts = [r.text for r in statements(records)]
    assert texts[0] == "SELECT $1 AS note, $2 WHERE $3 <> $4"
    secrets = ("card 4111-1111", "top secret", "api-key-123")
    assert not [r.to_json() for r in records if any(secret in r.to_json() for secret in secrets)]


def test_the_review_api_of_a_running_pgproxy_shows_each_statement_with_its_outcome(
    proxy_factory: ProxyFactory, caller: str
) -> None:
    reviewed = proxy_factory(web_listen="127.0.0.1:0", audit_reviewers="auditors")
    marker = f"marker_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(reviewed.conninfo(reviewed.idp.mint(caller)), autocommit=True) as conn:
        conn.execute(f"SELECT 42 AS {marker}")
    reviewed.audit_records()  # written (outcomes go with the next batch, or within 50 ms)
    web = reviewed.server.services[0]
    base = f"https://127.0.0.1:{web.port}"  # type: ignore[attr-defined]
    auditor = reviewed.idp.mint("auditor-1", email="auditor@example.com", groups=["auditors"])
    trust = ssl.create_default_context(cafile=str(reviewed.settings.tls_cert))  # pgproxy's own certificate
    with httpx.Client(base_url=base, verify=trust, timeout=30) as client:
        found = client.get("/api/audit/records", params={"text": marker},
                           headers={"Authorization": f"Bearer {auditor}"})
        assert found.status_code == 200, found.text
        [entry] = found.json()["entries"]
        assert entry["record"]["subject"] == caller and entry["record"]["text"] == f"SELECT 42 AS {marker}"
        assert [outcome["command_tag"] for outcome in entry["outcomes"]] == ["SELECT 1"]
        outsider = reviewed.idp.mint(caller, groups=["analysts"])
        assert client.get("/api/audit/records", headers={"Authorization": f"Bearer {outsider}"}).status_code == 403
        assert client.get("/api/audit/records").status_code == 401


def test_durable_records_are_forwarded_to_syslog_as_the_same_json(proxy_factory: ProxyFactory, caller: str) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(10)
    try:
        port = receiver.getsockname()[1]
        forwarding = proxy_factory(audit_forward="syslog", audit_syslog_address=f"127.0.0.1:{port}")
        with psycopg.connect(forwarding.conninfo(forwarding.idp.mint(caller)), autocommit=True) as conn:
            conn.execute("SELECT 'forwarded'")
        stored = [record.to_json() for record in session_records(forwarding, caller)]
        received: list[str] = []
        while len(received) < len(stored) + 1:  # the session's records (other sessions' may interleave)
            message = receiver.recv(65536).decode()
            assert message.startswith("<134>pgproxy-audit: ")  # facility local0, severity info
            received.append(message.removeprefix("<134>pgproxy-audit: ").rstrip("\x00"))
            if all(line in received for line in stored):
                break
        assert all(line in received for line in stored)
    finally:
        receiver.close()
