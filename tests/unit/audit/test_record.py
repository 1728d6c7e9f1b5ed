"""AuditRecord: validation, JSON round trip and the canonical form the chain hashes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgproxy.audit import AuditRecord, Chain, Decision, InvalidRecord, RecordKind, record_hash, utc_timestamp
from pgproxy.policy.model import Effect
from tests.unit.audit.factories import TIME, field_names, outcome, statement, unsealed_records

GOLDEN = AuditRecord(
    kind=RecordKind.OUTCOME,
    time="2024-05-01T12:00:00.123456Z",
    record_id="0123456789abcdef0123456789abcdef",
    chain_id="pgproxy-golden",
    seq=1,
    session_id="s-1",
    intent_id="fedcba9876543210fedcba9876543210",
    command_tag="UPDATE 2",
    rows=2,
    duration_ms=12.5,
    groups=("b", "a"),
    error_message='é "q" \\ \n\x01\u2028\x7f',
)
GOLDEN_CANONICAL = (
    '{"chain_id":"pgproxy-golden","duration_ms":12.5,"error_message":"é \\"q\\" \\\\ \\n\\u0001\u2028\x7f",'
    '"groups":["b","a"],"intent_id":"fedcba9876543210fedcba9876543210","kind":"outcome","prev_hash":"",'
    '"record_id":"0123456789abcdef0123456789abcdef","rows":2,"seq":1,"session_id":"s-1",'
    '"command_tag":"UPDATE 2","time":"2024-05-01T12:00:00.123456Z","version":1}'
)


def reference_canonical(record: AuditRecord) -> bytes:
    """The recipe the record module documents, built from the stored JSON with the standard library."""
    obj = json.loads(record.to_json())
    del obj["hash"]
    if isinstance(obj.get("duration_ms"), float) and obj["duration_ms"].is_integer():
        obj["duration_ms"] = int(obj["duration_ms"])
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_golden_canonical_form_and_hash_are_stable() -> None:
    expected = json.dumps(json.loads(GOLDEN_CANONICAL), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert GOLDEN.canonical_bytes().decode() == expected
    assert GOLDEN.canonical_bytes() == (
        b'{"chain_id":"pgproxy-golden","command_tag":"UPDATE 2","duration_ms":12.5,'
        b'"error_message":"\xc3\xa9 \\"q\\" \\\\ \\n\\u0001\xe2\x80\xa8\x7f","groups":["b","a"],'
        b'"intent_id":"fedcba9876543210fedcba9876543210","kind":"outcome","prev_hash":"",'
        b'"record_id":"0123456789abcdef0123456789abcdef","rows":2,"seq":1,"session_id":"s-1",'
        b'"time":"2024-05-01T12:00:00.123456Z","version":1}'
    )
    assert record_hash("", GOLDEN) == hashlib.sha256(GOLDEN.canonical_bytes()).hexdigest()
    assert record_hash("", GOLDEN) == "ac18b636b4f35409e5144a739a504957033ac3eaa3bf43a105a0331a00e1e058"


def test_same_record_same_bytes() -> None:
    first = statement(record_id="a" * 32)
    second = statement(record_id="a" * 32)
    assert first == second
    assert first.canonical_bytes() == second.canonical_bytes()


@given(unsealed_records(), st.randoms(use_true_random=False))
def test_key_order_and_whitespace_do_not_change_the_canonical_form(record: AuditRecord, rnd: random.Random) -> None:
    sealed = Chain("pgproxy-k").seal(record)
    items = list(json.loads(sealed.to_json()).items())
    rnd.shuffle(items)
    reordered = json.dumps(dict(items), indent=2, ensure_ascii=True)
    again = AuditRecord.from_json(reordered)
    assert again == sealed
    assert again.canonical_bytes() == sealed.canonical_bytes()
    assert again.to_json() == sealed.to_json()


@given(unsealed_records())
def test_canonical_form_follows_the_documented_recipe(record: AuditRecord) -> None:
    sealed = Chain("pgproxy-r").seal(record)
    assert sealed.canonical_bytes() == reference_canonical(sealed)
    assert b"\n" not in sealed.to_json().encode()


@given(unsealed_records())
def test_json_round_trip(record: AuditRecord) -> None:
    assert AuditRecord.from_json(record.to_json()) == record
    assert AuditRecord.from_json(record.to_json().encode()) == record


def test_canonical_form_omits_hash_nulls_and_empty_arrays_keeps_empty_strings() -> None:
    record = Chain("pgproxy-c").seal(statement(groups=(), relations=(), rule_id="", approval_id=None))
    canonical = json.loads(record.canonical_bytes())
    assert "hash" not in canonical
    assert "hash" in json.loads(record.to_json())
    assert "groups" not in canonical and "approval_id" not in canonical and "rows" not in canonical
    assert canonical["rule_id"] == ""
    assert canonical["prev_hash"] == ""


@pytest.mark.parametrize(
    ("given_ms", "written"),
    [(12.5, "12.5"), (3, "3"), (3.0, "3"), (0.0, "0"), (0.0004, "0"), (1234.56789, "1234.568"), (0.001, "0.001")],
)
def test_durations_are_microseconds_in_ecmascript_number_form(given_ms: float, written: str) -> None:
    record = outcome(statement(), duration_ms=given_ms)
    assert f'"duration_ms":{written},' in record.canonical_bytes().decode()
    assert AuditRecord.from_json(record.to_json()).duration_ms == record.duration_ms


def test_time_format() -> None:
    when = datetime(2024, 5, 1, 14, 0, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    assert utc_timestamp(when) == "2024-05-01T12:00:00.000005Z"
    assert AuditRecord(kind=RecordKind.SESSION_START, time=utc_timestamp()).time.endswith("Z")
    with pytest.raises(InvalidRecord, match="timezone-aware"):
        utc_timestamp(datetime(2024, 5, 1))


def test_decisions_are_the_policy_effects() -> None:
    assert {decision.value for decision in Decision} == {effect.value for effect in Effect}


def test_no_field_can_hold_a_secret() -> None:
    for name in field_names():
        assert not any(word in name for word in ("token", "password", "secret", "credential"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"time": "2024-05-01T12:00:00Z"}, "microseconds"),
        ({"time": "2024-13-01T12:00:00.000000Z"}, "valid date"),
        ({"record_id": ""}, "record_id"),
        ({"record_id": "a b"}, "record_id"),
        ({"chain_id": "x/y"}, "chain_id"),
        ({"hash": "ABC"}, "hash"),
        ({"prev_hash": "0" * 63}, "prev_hash"),
        ({"sqlstate": "4250"}, "sqlstate"),
        ({"rows": -1}, "rows"),
        ({"rows": True}, "rows"),
        ({"seq": 2**53}, "seq"),
        ({"duration_ms": -0.5}, "duration_ms"),
        ({"duration_ms": float("nan")}, "duration_ms"),
        ({"duration_ms": 1e15}, "duration_ms"),
        ({"text": "a\ud800b"}, "surrogate"),
        ({"groups": ["a"]}, "groups"),
        ({"relations": (1,)}, "relations"),
        ({"decision": None}, "decision"),
        ({"decision": "allow"}, "Decision"),
        ({"version": 2}, "version"),
    ],
)
def test_invalid_values_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRecord, match=message):
        dataclasses.replace(statement(), **change)


def test_outcome_names_its_statement() -> None:
    with pytest.raises(InvalidRecord, match="intent_id"):
        AuditRecord(kind=RecordKind.OUTCOME, time=TIME)
    intent = statement()
    assert outcome(intent).intent_id == intent.record_id


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"kind":"session_start","time":"2024-05-01T12:00:00.000000Z","token":"x"}', "unknown"),
        ('{"kind":"session_start","kind":"session_end","time":"2024-05-01T12:00:00.000000Z"}', "duplicate"),
        ('{"kind":"outcome","intent_id":"a","time":"2024-05-01T12:00:00.000000Z","duration_ms":NaN}', "NaN"),
        ('{"kind":"session_start","time":"2024-05-01T12:00:00.000000Z","seq":"1"}', "seq"),
        ('{"kind":"session_start","time":"2024-05-01T12:00:00.000000Z","seq":1.0}', "seq"),
        ('{"kind":"session_start","time":"2024-05-01T12:00:00.000000Z","groups":"dba"}', "array"),
        ('{"kind":"coffee","time":"2024-05-01T12:00:00.000000Z"}', "kind"),
        ('{"kind":7,"time":"2024-05-01T12:00:00.000000Z"}', "kind"),
        ('{"time":"2024-05-01T12:00:00.000000Z"}', "without kind"),
        ('{"kind":"session_start","time":1}', "time"),
        ("[1]", "object"),
        ('{"kind":', "not a JSON"),
        (b'{"kind":"\xff"}', "not a JSON"),
    ],
)
def test_from_json_refuses_malformed_records(text: str | bytes, message: str) -> None:
    with pytest.raises(InvalidRecord, match=message):
        AuditRecord.from_json(text)


def test_explicit_nulls_read_like_absent_fields() -> None:
    record = AuditRecord.from_json(
        '{"kind":"session_end","time":"2024-05-01T12:00:00.000000Z","reason":null,"record_id":"r1","groups":null}'
    )
    assert record.reason is None and record.groups == ()
    assert '"reason"' not in record.to_json()
