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
    return [field.name for field in dataclasses.fields(AuditRecord)]
