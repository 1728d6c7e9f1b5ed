"""verify(): a clean log verifies; edits, deletions, reorderings and (with anchors) truncation are found."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgproxy.audit import AuditRecord, BreakKind, Chain, ChainHead, Decision, RecordKind, record_hash, verify
from tests.unit.audit.factories import outcome, sealed_chain, statement, unsealed_records


def workload(n: int, chain_id: str = "pgproxy-a") -> list[AuditRecord]:
    """A session start, then statement/outcome pairs, sealed into one chain (n records in all)."""
    records: list[AuditRecord] = [AuditRecord(kind=RecordKind.SESSION_START, time="2024-05-01T12:00:00.000000Z")]
    while len(records) < n:
        intent = statement(f"SELECT {len(records)}")
        records.append(intent)
        records.append(outcome(intent, rows=len(records)))
    return sealed_chain(records[:n], chain_id)


def altered(record: AuditRecord, name: str) -> AuditRecord:
    """``record`` with one field changed to another valid value."""
    value = getattr(record, name)
    new: Any
    if name == "kind":
        new = RecordKind.SESSION_END if value is not RecordKind.SESSION_END else RecordKind.AUTH_FAILURE
        return dataclasses.replace(record, kind=new, decision=record.decision or Decision.DENY)
    if name == "decision":
        new = Decision.DENY if value is not Decision.DENY else Decision.ALLOW
    elif name == "time":
        new = "2030-01-01T00:00:00.000000Z"
    elif name in ("record_id", "intent_id"):
        new = "f" * 32 if value != "f" * 32 else "e" * 32
    elif name == "chain_id":
        new = "pgproxy-forged"
    elif name in ("hash", "prev_hash"):
        new = hashlib.sha256(f"forged {value}".encode()).hexdigest()
    elif name == "seq":
        new = value + 1
    elif name in ("statement_index", "rows"):
        new = 0 if value else 7
    elif name == "duration_ms":
        new = (value or 0.0) + 1.5
    elif name == "sqlstate":
        new = "42501" if value != "42501" else "00000"
    elif name in ("groups", "relations", "approvers"):
        new = (*value, "x")
    else:
        new = (value or "") + "x"
    return dataclasses.replace(record, **{name: new})


EDITABLE = [  # one version exists
    field.name for field in dataclasses.fields(AuditRecord) if field.init and field.name != "version"
]


@settings(max_examples=50, deadline=None)
@given(st.lists(unsealed_records(), min_size=1, max_size=60))
def test_a_clean_chain_of_any_records_verifies(records: list[AuditRecord]) -> None:
    sealed = sealed_chain(records)
    report = verify(sealed)
    assert report.ok, report.summary()
    assert report.records == len(records)
    [chain] = report.chains
    assert (chain.chain_id, chain.records, chain.verified_through) == ("pgproxy-a", len(records), len(records))
    assert chain.head == ChainHead.of(sealed[-1])
    assert verify(sealed, anchors={"pgproxy-a": ChainHead.of(sealed[-1])}).ok


def test_an_empty_log_verifies() -> None:
    report = verify([])
    assert report.ok and report.records == 0 and report.chains == ()


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 19), st.sampled_from(EDITABLE))
def test_editing_any_field_of_any_record_is_reported_at_that_record(index: int, name: str) -> None:
    records = workload(20)
    tampered = list(records)
    tampered[index] = altered(records[index], name)
    report = verify(tampered)
    assert not report.ok
    positions = [brk.position for brk in report.breaks if brk.position is not None]
    assert min(positions) == index, report.summary()


@pytest.mark.parametrize("name", ["text", "rows", "decision", "subject", "hash", "prev_hash", "time"])
def test_an_edited_record_is_a_hash_mismatch_at_its_seq(name: str) -> None:
    records = workload(10)
    records[5] = altered(records[5], name)
    [brk] = verify(records).breaks
    assert (brk.kind, brk.seq, brk.position, brk.record_id) == (BreakKind.HASH_MISMATCH, 6, 5, records[5].record_id)
    assert "seq 6 was altered" in brk.message


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link() -> None:
    records = workload(10)
    forged = dataclasses.replace(records[3], text="SELECT harmless", hash="")
    records[3] = dataclasses.replace(forged, hash=record_hash(forged.prev_hash, forged))
    [brk] = verify(records).breaks
    assert (brk.kind, brk.seq, brk.position) == (BreakKind.PREV_HASH_MISMATCH, 5, 4)


@pytest.mark.parametrize("index", [0, 1, 5, 8])
def test_a_deleted_record_is_a_gap(index: int) -> None:
    records = workload(10)
    del records[index]
    [brk] = verify(records).breaks
    assert (brk.kind, brk.seq, brk.expected_seq, brk.position) == (BreakKind.GAP, index + 2, index + 1, index)
    assert f"record {index + 1} missing" in brk.message


def test_several_deleted_records_are_one_gap() -> None:
    records = workload(10)
    del records[3:6]
    [brk] = verify(records).breaks
    assert (brk.kind, brk.seq, brk.position) == (BreakKind.GAP, 7, 3)
    assert "records 4-6 missing" in brk.message


@given(st.integers(0, 8))
def test_a_swapped_adjacent_pair_is_out_of_order(index: int) -> None:
    records = workload(10)
    records[index], records[index + 1] = records[index + 1], records[index]
    [brk] = verify(records).breaks
    assert (brk.kind, brk.seq, brk.expected_seq, brk.position) == (BreakKind.OUT_OF_ORDER, index + 2, index + 1, index)
    assert "reordered" in brk.message


def test_a_record_moved_later_is_out_of_order() -> None:
    records = workload(10)
    moved = records.pop(2)
    records.insert(7, moved)
    [brk] = verify(records).breaks
    assert (brk.kind, brk.seq, brk.position) == (BreakKind.OUT_OF_ORDER, 4, 2)


def test_a_duplicated_record_is_out_of_order() -> None:
    records = workload(6)
    records.insert(4, records[2])
    [brk] = verify(records).breaks
    assert (brk.kind, brk.seq, brk.expected_seq, brk.position) == (BreakKind.OUT_OF_ORDER, 3, 5, 4)


def test_an_unsealed_record_in_the_log_is_reported() -> None:
    records = workload(4)
    records.insert(2, statement())
    [brk] = verify(records).breaks
    assert (brk.kind, brk.position) == (BreakKind.UNSEALED, 2)


def test_only_the_first_break_of_a_chain_is_reported_and_counting_goes_on() -> None:
    records = workload(10)
    records[2] = altered(records[2], "text")
    del records[6]
    report = verify(records)
    [chain] = report.chains
    assert chain.broken is not None and chain.broken.position == 2
    assert (chain.records, chain.verified_through) == (9, 2)
    assert chain.head is not None and chain.head.seq == 2
    assert "BROKEN at seq 3 (record #3)" in report.summary()
    assert "FAILED: 1 broken chain(s)" in report.summary()


def test_a_removed_tail_is_undetectable_without_an_anchor() -> None:
    records = workload(10)
    anchor = ChainHead.of(records[-1])
    truncated = records[:7]
    assert verify(truncated).ok  # the chain alone cannot tell: this is why anchors exist
    [brk] = verify(truncated, anchors={"pgproxy-a": anchor}).breaks
    assert (brk.kind, brk.seq, brk.expected_seq, brk.position) == (BreakKind.TRUNCATED, 10, 8, None)
    assert "tail removed" in brk.message


def test_a_consistently_rewritten_suffix_needs_an_anchor() -> None:
    records = workload(10)
    anchor = ChainHead.of(records[-1])
    # Delete seq 5 and re-seal everything after it, as someone with write access could.
    resealed = Chain.resume(records[3], "pgproxy-a").seal_all(
        [dataclasses.replace(record, chain_id="", seq=0, prev_hash="", hash="") for record in records[5:]]
    )
    rewritten = records[:4] + resealed
    assert verify(rewritten).ok
    [brk] = verify(rewritten, anchors={"pgproxy-a": anchor}).breaks
    assert brk.kind is BreakKind.TRUNCATED
    # Padded back to the anchored length, the anchored seq holds another hash.
    padded = rewritten + Chain.resume(rewritten[-1], "pgproxy-a").seal_all([statement()])
    [brk] = verify(padded, anchors={"pgproxy-a": anchor}).breaks
    assert (brk.kind, brk.seq, brk.position) == (BreakKind.ANCHOR_MISMATCH, 10, 9)


def test_an_anchor_for_a_chain_that_is_gone_is_reported() -> None:
    records = workload(3, "pgproxy-a")
    report = verify(records, anchors={"pgproxy-b": ChainHead("pgproxy-b", 4, "0" * 64)})
    [brk] = report.breaks
    assert (brk.chain_id, brk.kind, brk.seq) == ("pgproxy-b", BreakKind.MISSING_CHAIN, 4)
    assert [chain.chain_id for chain in report.chains] == ["pgproxy-a", "pgproxy-b"]


def test_an_anchor_behind_the_head_is_checked_in_passing() -> None:
    records = workload(10)
    assert verify(records, anchors={"pgproxy-a": ChainHead.of(records[4])}).ok


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from("abc"), min_size=3, max_size=60), st.data())
def test_interleaved_chains_verify_independently(order: list[str], data: st.DataObject) -> None:
    chains = {name: Chain(f"pgproxy-{name}") for name in "abc"}
    log = [chains[name].seal(statement(f"SELECT '{name}'")) for name in order]
    report = verify(log)
    assert report.ok
    assert {chain.chain_id: chain.records for chain in report.chains} == {
        f"pgproxy-{name}": order.count(name) for name in dict.fromkeys(order)
    }
    victim = data.draw(st.integers(0, len(log) - 1))
    log[victim] = altered(log[victim], "text")
    broken = {brk.chain_id: brk for brk in verify(log).breaks}
    assert list(broken) == [log[victim].chain_id]
    assert broken[log[victim].chain_id].position == victim
