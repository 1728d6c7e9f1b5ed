"""Chain: sealing sets seq, prev_hash and hash; resuming continues a chain."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys

import pytest

from pgproxy.audit import AuditRecord, Chain, ChainError, ChainHead, InvalidRecord, new_chain_id, verify
from tests.unit.audit.factories import outcome, statement


def test_sealing_numbers_and_links_records() -> None:
    chain = Chain("pgproxy-a")
    assert chain.head is None
    first = chain.seal(statement())
    second = chain.seal(outcome(first))
    assert (first.chain_id, first.seq, first.prev_hash) == ("pgproxy-a", 1, "")
    assert (second.chain_id, second.seq, second.prev_hash) == ("pgproxy-a", 2, first.hash)
    assert first.hash == hashlib.sha256(first.canonical_bytes()).hexdigest()
    assert second.hash == hashlib.sha256(first.hash.encode() + second.canonical_bytes()).hexdigest()
    assert chain.head == ChainHead("pgproxy-a", 2, second.hash)
    assert (chain.last_seq, chain.last_hash) == (2, second.hash)


def test_sealing_changes_only_the_chain_fields() -> None:
    record = statement()
    sealed = Chain("pgproxy-a").seal(record)
    assert dataclasses.replace(sealed, chain_id="", seq=0, prev_hash="", hash="") == record


def test_a_sealed_record_cannot_be_sealed_again() -> None:
    chain = Chain("pgproxy-a")
    sealed = chain.seal(statement())
    with pytest.raises(ChainError, match="already sealed"):
        chain.seal(sealed)
    with pytest.raises(ChainError, match="already sealed"):
        Chain("pgproxy-b").seal(sealed)


def test_a_record_meant_for_another_chain_is_refused() -> None:
    with pytest.raises(ChainError, match="belongs to chain"):
        Chain("pgproxy-a").seal(statement(chain_id="pgproxy-b"))
    assert Chain("pgproxy-a").seal(statement(chain_id="pgproxy-a")).seq == 1


def test_seal_all_is_all_or_nothing() -> None:
    chain = Chain("pgproxy-a")
    good = statement()
    already = Chain("pgproxy-a").seal(statement())
    with pytest.raises(ChainError):
        chain.seal_all([good, already])
    assert chain.last_seq == 0
    assert [record.seq for record in chain.seal_all([good, statement()])] == [1, 2]


def test_resume_continues_after_the_last_record() -> None:
    chain = Chain("pgproxy-a")
    records = chain.seal_all([statement() for _ in range(3)])
    resumed = Chain.resume(records[-1], "pgproxy-a")
    more = resumed.seal_all([statement() for _ in range(2)])
    assert [record.seq for record in more] == [4, 5]
    assert more[0].prev_hash == records[-1].hash
    assert verify(records + more).ok
    assert Chain.resume(ChainHead.of(records[-1]), "pgproxy-a").last_seq == 3


def test_resume_from_another_chain_or_nothing_starts_afresh() -> None:
    other = Chain("pgproxy-b").seal(statement())
    assert Chain.resume(other, "pgproxy-a").head is None
    assert Chain.resume(None, "pgproxy-a").last_seq == 0


def test_chain_arguments_are_checked() -> None:
    with pytest.raises(ChainError):
        Chain("")
    with pytest.raises(ChainError):
        Chain("pgproxy-a", last_seq=3)
    with pytest.raises(ChainError):
        Chain("pgproxy-a", last_seq=0, last_hash="0" * 64)
    with pytest.raises(ChainError):
        Chain("pgproxy-a", last_seq=-1, last_hash="0" * 64)
    with pytest.raises(InvalidRecord):
        Chain("pgproxy a")
    with pytest.raises(InvalidRecord):
        Chain("pgproxy-a", last_seq=1, last_hash="xyz")
    with pytest.raises(ChainError, match="unsealed"):
        ChainHead.of(statement())


def test_new_chain_ids_are_distinct_and_valid() -> None:
    first, second = new_chain_id(), new_chain_id()
    assert first != second
    assert AuditRecord.from_json(Chain(first).seal(statement()).to_json()).chain_id == first


def test_the_pure_modules_load_no_io_frameworks() -> None:
    probe = (
        "import sys, pgproxy.audit, pgproxy.audit.record, pgproxy.audit.chain, pgproxy.audit.verify; "
        "print(sorted(m for m in ('asyncio', 'socket', 'ssl', 'pgproxy.audit.jsonl') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"
