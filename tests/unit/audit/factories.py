"""Builders for audit tests: records by hand, hypothesis strategies, sealed chains."""

from __future__ import annotations

import dataclasses
from datetime import UTC
from typing import Any

from hypothesis import strategies as st

from pgproxy.audit import AuditRecord, Chain, Decision, RecordKind, utc_timestamp

TIME = "2024-05-01T12:00:00.000000Z"


def statement(text: str = "SELECT 1", **fields: Any) -> AuditRecord:
    values: dict[str, Any] = {
        "kind": RecordKind.STATEMENT,
        "time": TIME,
        "session_id": "s-1",
        "client_address": "10.0.0.7:51234",
        "subject": "user-1",
        "email": "ada@example.com",
        "groups": ("dba", "eng"),
        "issuer": "https://idp.example.com/",
        "database": "app",
        "upstream_role": "pgproxy_rw",
        "statement_index": 0,
        "text": text,
        "fingerprint": "select ?",
        "category": "read",
        "command": "SELECT",
        "relations": ("public.accounts",),
        "decision": Decision.ALLOW,
        "rule_id": "reads",
    }
    values.update(fields)
    return AuditRecord(**values)


def outcome(intent: AuditRecord, **fields: Any) -> AuditRecord:
    values: dict[str, Any] = {
        "kind": RecordKind.OUTCOME,
        "time": TIME,
        "session_id": intent.session_id,
        "intent_id": intent.record_id,
        "command_tag": "SELECT 1",
        "rows": 1,
        "duration_ms": 0.25,
    }
    values.update(fields)
    return AuditRecord(**values)


def sealed_chain(records: list[AuditRecord], chain_id: str = "pgproxy-a") -> list[AuditRecord]:
    return Chain(chain_id).seal_all(records)


# Any text a statement or message may hold, surrogates excluded (they cannot be UTF-8).
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
names = st.text("abcdefghijklmnopqrstuvwxyz_.0123456789", min_size=1, max_size=12)
optional_texts = st.none() | texts
optional_ints = st.none() | st.integers(0, 2**53 - 1)
times = st.datetimes(timezones=st.just(UTC)).map(utc_timestamp)


@st.composite
def unsealed_records(draw: st.DrawFn) -> AuditRecord:
    kind = draw(st.sampled_from(RecordKind))
    decisions = st.sampled_from(Decision)
    decision = draw(decisions) if kind is RecordKind.STATEMENT else draw(st.none() | decisions)
    intent = draw(names) if kind is RecordKind.OUTCOME else draw(st.none() | names)
    return AuditRecord(
        kind=kind,
        time=draw(times),
        session_id=draw(st.none() | names),
        client_address=draw(optional_texts),
        subject=draw(optional_texts),
        email=draw(optional_texts),
        groups=tuple(draw(st.lists(texts, max_size=3))),
        issuer=draw(optional_texts),
        database=draw(optional_texts),
        upstream_role=draw(optional_texts),
        statement_index=draw(optional_ints),
        text=draw(optional_texts),
        fingerprint=draw(optional_texts),
        category=draw(optional_texts),
        command=draw(optional_texts),
        relations=tuple(draw(st.lists(texts, max_size=3))),
        decision=decision,
        rule_id=draw(optional_texts),
        approval_id=draw(optional_texts),
        approvers=tuple(draw(st.lists(texts, max_size=3))),
        intent_id=intent,
        command_tag=draw(optional_texts),
        rows=draw(optional_ints),
        sqlstate=draw(st.none() | st.text("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=5, max_size=5)),
        error_message=draw(optional_texts),
        duration_ms=draw(st.none() | st.floats(0, 1e12, allow_nan=False, allow_infinity=False)),
        reason=draw(optional_texts),
    )


def field_names() -> list[str]:
    return [field.name for field in dataclasses.fields(AuditRecord) if field.init]


# -- a morning of activity, for the review side (search, show, export, the web page) ---------------------

DAY = "2024-05-01"
XSS = "SELECT '<script>alert(1)</script>' AS x, '=HYPERLINK(\"http://evil.example\")' AS y"


def at(clock: str) -> str:
    """A record time on ``DAY``: ``at("09:00:01.5")`` → ``2024-05-01T09:00:01.500000Z``."""
    whole, _, fraction = clock.partition(".")
    return f"{DAY}T{whole}.{fraction.ljust(6, '0')}Z"


def session_record(kind: RecordKind, record_id: str, session_id: str, clock: str, **fields: Any) -> AuditRecord:
    return AuditRecord(kind=kind, time=at(clock), record_id=record_id, session_id=session_id, **fields)


def review_log() -> list[AuditRecord]:
    """Unsealed records in time (and so stored) order, with readable record ids.

    Session ``s-ada`` (ada@example.com, database app): a read (``ada-read`` + ``ada-read-done``), a denied
    delete of ``accounts`` (``ada-delete`` + ``ada-delete-done``, SQLSTATE 42501), a statement still running
    (``ada-sleep``, no outcome). Session ``s-bob`` (Bob@Example.com, database billing, a formula as
    application name): a DDL held for approval and approved by carol and dave (``bob-alter`` +
    ``bob-alter-done``), a read whose text carries markup and a formula (``bob-xss`` + ``bob-xss-done``).
    An auth failure of "mallory"; both sessions end.
    """
    ada = {"session_id": "s-ada", "subject": "user-1", "email": "ada@example.com", "database": "app"}
    bob = {"session_id": "s-bob", "subject": "user-2", "email": "Bob@Example.com", "database": "billing",
           "groups": ("eng",), "client_address": "10.0.0.9:40000"}
    read = statement("SELECT * FROM public.accounts WHERE id = 1", record_id="ada-read", time=at("09:00:01"), **ada)
    delete = statement(
        "DELETE FROM accounts", record_id="ada-delete", time=at("09:05:00"), category="write", command="DELETE",
        relations=("accounts",), decision=Decision.DENY, rule_id="no-deletes", statement_index=0, **ada,
    )
    sleep = statement("SELECT pg_sleep(3600)", record_id="ada-sleep", time=at("11:00:30"), relations=(), **ada)
    alter = statement(
        "ALTER TABLE billing.invoices ADD COLUMN note text", record_id="bob-alter", time=at("10:01:00"),
        category="ddl", command="ALTER TABLE", relations=("billing.invoices",), decision=Decision.REQUIRE_APPROVAL,
        rule_id="ddl-needs-approval", approval_id="req-1", approvers=("carol@example.com", "Dave@example.com"),
        **bob,
    )
    xss = statement(XSS, record_id="bob-xss", time=at("10:31:00"), relations=(), **bob)
    return [
        session_record(RecordKind.SESSION_START, "ada-start", "s-ada", "09:00:00", subject="user-1",
                       email="ada@example.com", database="app", client_address="10.0.0.7:51234",
                       application_name="psql"),
        read,
        outcome(read, record_id="ada-read-done", time=at("09:00:01.5"), command_tag="SELECT 1", rows=1),
        delete,
        outcome(delete, record_id="ada-delete-done", time=at("09:05:00.1"), command_tag=None, rows=None,
                sqlstate="42501", error_message="permission denied by policy no-deletes"),
        session_record(RecordKind.SESSION_START, "bob-start", "s-bob", "10:00:00", subject="user-2",
                       email="Bob@Example.com", database="billing", application_name="=cmd|' /C calc'!A0"),
        alter,
        xss,
        outcome(xss, record_id="bob-xss-done", time=at("10:31:00.2"), command_tag="SELECT 1", rows=1),
        outcome(alter, record_id="bob-alter-done", time=at("10:45:00"), command_tag="ALTER TABLE", rows=None),
        AuditRecord(kind=RecordKind.AUTH_FAILURE, time=at("11:00:00"), record_id="mallory-failed",
                    login_user="mallory", client_address="203.0.113.9:1234", reason="token expired"),
        sleep,
        session_record(RecordKind.SESSION_END, "bob-end", "s-bob", "11:30:00", reason="client closed"),
        session_record(RecordKind.SESSION_END, "ada-end", "s-ada", "11:45:00", reason="token expired"),
    ]
