"""Verification of hash chains over any iterable of records, with a report for ``pgproxy audit verify``.

Pure: no I/O, no asyncio. :func:`verify` consumes the records once, in stored order, keeping only a
small state per chain (memory grows with the number of chains, not records), so it runs over a file or
a database cursor of any size. It must not repair, reorder or skip records: it reports, per chain, the
*first* broken link, and keeps counting (and refining that first finding) after it.

What it detects, per chain (chains are told apart by ``chain_id`` and checked independently):

* an **edited** record — any field, including ``hash``, ``prev_hash`` or the content — no longer hashes
  to its ``hash``: ``hash_mismatch`` at that record;
* an edited record whose own hash was recomputed: the next record's ``prev_hash`` does not link:
  ``prev_hash_mismatch`` at the next record;
* a **deleted** record (or several): ``seq`` jumps, ``gap`` at the record after the hole; a deleted
  first record shows as a gap at the chain's first record;
* **reordered** records (a swapped pair, a record moved later) or a duplicated record: ``seq`` is not
  the next one, ``out_of_order`` at the first record out of place (a jump whose missing records turn
  up later is reported as ``out_of_order``, not ``gap``);
* a record that was never sealed: ``unsealed``.

What it cannot detect from the records alone: removal of a chain's **tail** (or of a whole chain), and a
suffix rewritten consistently with recomputed hashes (SHA-256 has no key). Both need an *anchor*, a
:class:`~pgproxy.audit.chain.ChainHead` kept outside the writers' reach; with ``anchors`` the report
adds ``truncated`` (the log ends before the anchored seq), ``anchor_mismatch`` (the anchored seq holds
another hash) and ``missing_chain``. An outcome's ``intent_id`` does not help here: cutting the log
right after an outcome leaves nothing dangling. Record times are not checked (clocks step).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from pgproxy.audit.chain import ChainHead, record_hash
from pgproxy.audit.record import AuditRecord


class BreakKind(StrEnum):
    HASH_MISMATCH = "hash_mismatch"
    PREV_HASH_MISMATCH = "prev_hash_mismatch"
    GAP = "gap"
    OUT_OF_ORDER = "out_of_order"
    UNSEALED = "unsealed"
    TRUNCATED = "truncated"
    ANCHOR_MISMATCH = "anchor_mismatch"
    MISSING_CHAIN = "missing_chain"


@dataclass(frozen=True, slots=True)
class Break:
    """The first broken link of a chain.

    ``position`` is the 0-based index of the offending record in the verified sequence (for a JSONL file:
    its line number minus one; ``None`` for findings at the end of the log), ``seq`` the seq that record
    carries (or the anchored seq), ``expected_seq`` the seq that should have been there.
    """

    chain_id: str
    kind: BreakKind
    seq: int
    expected_seq: int
    position: int | None
    record_id: str | None
    message: str


@dataclass(frozen=True, slots=True)
class ChainReport:
    chain_id: str
    records: int  # records of this chain seen in the log, including any after the break
    verified_through: int  # the last seq of the unbroken prefix (0: none)
    head: ChainHead | None  # the head of the unbroken prefix
    broken: Break | None

    @property
    def ok(self) -> bool:
        return self.broken is None


@dataclass(frozen=True, slots=True)
class VerifyReport:
    chains: tuple[ChainReport, ...]  # in order of first appearance, then anchored chains not found
    records: int

    @property
    def ok(self) -> bool:
        return all(chain.ok for chain in self.chains)

    @property
    def breaks(self) -> tuple[Break, ...]:
        return tuple(chain.broken for chain in self.chains if chain.broken is not None)

    def summary(self) -> str:
        """Human-readable lines: one per chain, then the verdict."""
        lines = []
        for chain in self.chains:
            if chain.broken is None:
                lines.append(
                    f"chain {chain.chain_id}: {chain.records} records, intact through seq {chain.verified_through}"
                )
            else:
                where = "" if chain.broken.position is None else f" (record #{chain.broken.position + 1})"
                lines.append(
                    f"chain {chain.chain_id}: BROKEN at seq {chain.broken.seq}{where}: {chain.broken.message}; "
                    f"intact through seq {chain.verified_through}"
                )
        verdict = "OK" if self.ok else f"FAILED: {len(self.breaks)} broken chain(s)"
        lines.append(f"{self.records} records in {len(self.chains)} chain(s): {verdict}")
        return "\n".join(lines)


class _ChainState:
    __slots__ = ("broken", "chain_id", "last_hash", "last_seq", "missing", "records")

    def __init__(self, chain_id: str) -> None:
        self.chain_id = chain_id
        self.records = 0
        self.last_seq = 0
        self.last_hash = ""
        self.broken: Break | None = None
        self.missing: tuple[int, int] | None = None  # seq range a provisional gap says is missing


def verify(records: Iterable[AuditRecord], anchors: Mapping[str, ChainHead] | None = None) -> VerifyReport:
    """Check every chain in ``records`` (in stored order); ``anchors`` are trusted heads by chain id."""
    anchors = anchors or {}
    states: dict[str, _ChainState] = {}
    total = 0
    for position, record in enumerate(records):
        total += 1
        state = states.get(record.chain_id)
        if state is None:
            state = states[record.chain_id] = _ChainState(record.chain_id)
        state.records += 1
        if state.broken is None:
            state.broken = _check(state, record, position, anchors.get(record.chain_id))
        elif state.missing is not None and state.missing[0] <= record.seq <= state.missing[1]:
            _reclassify_gap(state, record)
    reports = [_finish(state, anchors.get(chain_id)) for chain_id, state in states.items()]
    for chain_id, anchor in anchors.items():
        if chain_id not in states:
            message = f"no record of this chain, but an anchor says it reached seq {anchor.seq}"
            missing = Break(chain_id, BreakKind.MISSING_CHAIN, anchor.seq, 1, None, None, message)
            reports.append(ChainReport(chain_id, 0, 0, None, missing))
    return VerifyReport(tuple(reports), total)


def _check(state: _ChainState, record: AuditRecord, position: int, anchor: ChainHead | None) -> Break | None:
    expected = state.last_seq + 1

    def broken(kind: BreakKind, message: str) -> Break:
        return Break(state.chain_id, kind, record.seq, expected, position, record.record_id, message)

    if not record.sealed or not record.hash:
        return broken(BreakKind.UNSEALED, f"record {record.record_id} was never sealed into a chain")
    if record.seq > expected:
        state.missing = (expected, record.seq - 1)
        return broken(
            BreakKind.GAP,
            f"seq {record.seq} follows seq {state.last_seq}: "
            + (
                f"record {expected} missing"
                if record.seq == expected + 1
                else f"records {expected}-{record.seq - 1} missing"
            ),
        )
    if record.seq < expected:
        return broken(
            BreakKind.OUT_OF_ORDER,
            f"seq {record.seq} appears after seq {state.last_seq} (records reordered or duplicated)",
        )
    if record_hash(record.prev_hash, record) != record.hash:
        return broken(
            BreakKind.HASH_MISMATCH, f"record at seq {record.seq} was altered: its content does not match its hash"
        )
    if record.prev_hash != state.last_hash:
        return broken(
            BreakKind.PREV_HASH_MISMATCH,
            f"seq {record.seq} does not link to the record before it "
            f"(seq {state.last_seq} was replaced, or records were removed and the rest renumbered)",
        )
    if anchor is not None and anchor.seq == record.seq and anchor.hash != record.hash:
        return broken(
            BreakKind.ANCHOR_MISMATCH,
            f"seq {record.seq} does not carry the anchored hash (the chain was rewritten up to here)",
        )
    state.last_seq = record.seq
    state.last_hash = record.hash
    return None


def _reclassify_gap(state: _ChainState, record: AuditRecord) -> None:
    """A record the provisional gap called missing turned up later: the records were moved, not deleted."""
    gap = state.broken
    assert gap is not None
    state.missing = None
    state.broken = Break(
        gap.chain_id,
        BreakKind.OUT_OF_ORDER,
        gap.seq,
        gap.expected_seq,
        gap.position,
        gap.record_id,
        f"seq {gap.seq} appears before seq {record.seq} (records reordered)",
    )


def _finish(state: _ChainState, anchor: ChainHead | None) -> ChainReport:
    broken = state.broken
    if broken is None and anchor is not None and state.last_seq < anchor.seq:
        broken = Break(
            state.chain_id,
            BreakKind.TRUNCATED,
            anchor.seq,
            state.last_seq + 1,
            None,
            None,
            f"the log ends at seq {state.last_seq} but an anchor says seq {anchor.seq} exists (tail removed)",
        )
    head = ChainHead(state.chain_id, state.last_seq, state.last_hash) if state.last_seq else None
    return ChainReport(state.chain_id, state.records, state.last_seq, head, broken)
