"""The hash chain: sealing records into a chain, and resuming a chain from its last record.

A *chain* is the sequence of records one writer produced, identified by ``chain_id`` (one per pgproxy
instance, so several replicas can share a store: their records interleave but each chain stays
contiguous). Within a chain ``seq`` runs 1, 2, 3, … and every record carries the previous record's hash::

    hash(record) = sha256(prev_hash.encode("ascii") + record.canonical_bytes()).hexdigest()

with ``prev_hash`` the empty string for seq 1 (``canonical_bytes`` is specified in ``record.py``; it
includes ``chain_id``, ``seq`` and ``prev_hash`` themselves, and excludes only ``hash``).

This module is pure: no I/O, no asyncio, no locks. A :class:`Chain` is a small mutable cursor that
must have exactly one user at a time: records must reach the store in the order they were sealed (the
group committer in ``jsonl.py`` seals inside its single flush loop for that reason). It must not write
records anywhere nor decide durability; if a store fails after records were sealed, the cursor is stale
and the chain must be resumed from what the store actually holds (:meth:`Chain.resume`).

SHA-256 is keyless: whoever can rewrite the store can also recompute every hash after an edit. The
chain therefore proves integrity only *relative to a trusted head*: publish :class:`ChainHead` values
(seq and hash) somewhere the store's writers cannot edit — the other store, syslog/SIEM forwarding,
a periodic checkpoint — and pass them to ``verify(…, anchors=…)``. Without an anchor, deleting the
tail of a chain (or rewriting a suffix consistently) is undetectable.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import sha256

from pgproxy.audit.record import AuditRecord, RecordKind

_PROBE_TIME = "1970-01-01T00:00:00.000000Z"


def record_hash(prev_hash: str, record: AuditRecord) -> str:
    """The hash a record must carry, given the previous record's hash ("" for seq 1)."""
    digest = hashlib.sha256(prev_hash.encode("ascii"))
    digest.update(record.canonical_bytes())
    return digest.hexdigest()


def new_chain_id() -> str:
    """A fresh chain id for a pgproxy instance: ``pgproxy-`` and 32 random hex digits."""
    return f"pgproxy-{uuid.uuid4().hex}"


class ChainError(ValueError):
    """A record that cannot be sealed into this chain (already sealed, or sealed for another chain)."""


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The position of a chain's last record: what a store resumes from and what an anchor pins."""

    chain_id: str
    seq: int
    hash: str

    @classmethod
    def of(cls, record: AuditRecord) -> ChainHead:
        if not record.sealed:
            raise ChainError("an unsealed record is not a chain head")
        return cls(record.chain_id, record.seq, record.hash)


class Chain:
    """The sealing cursor of one chain: the next record gets ``last_seq + 1`` and links to ``last_hash``."""

    __slots__ = ("_chain_id", "_last_hash", "_last_seq")

    def __init__(self, chain_id: str, last_seq: int = 0, last_hash: str = "") -> None:
        if (last_seq == 0) != (last_hash == ""):
            raise ChainError("a chain at seq 0 has no last hash, and a later one must have one")
        if last_seq < 0:
            raise ChainError("last_seq must not be negative")
        if not chain_id:
            raise ChainError("a chain needs a non-empty chain_id")
        # The id and hash formats are the record's own rules.
        AuditRecord(kind=RecordKind.SESSION_START, time=_PROBE_TIME, chain_id=chain_id, prev_hash=last_hash)
        self._chain_id = chain_id
        self._last_seq = last_seq
        self._last_hash = last_hash

    @classmethod
    def resume(cls, last: AuditRecord | ChainHead | None, chain_id: str) -> Chain:
        """Continue ``chain_id`` after ``last`` (a store's last record or head of that chain).

        ``last`` of another chain, or ``None`` (an empty store), starts ``chain_id`` afresh at seq 1.
        """
        head = ChainHead.of(last) if isinstance(last, AuditRecord) else last
        if head is None or head.chain_id != chain_id:
            return cls(chain_id)
        return cls(chain_id, head.seq, head.hash)

    @property
    def chain_id(self) -> str:
        return self._chain_id

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def last_hash(self) -> str:
        return self._last_hash

    @property
    def head(self) -> ChainHead | None:
        """Where the chain stands (``None`` before its first record)."""
        return ChainHead(self._chain_id, self._last_seq, self._last_hash) if self._last_seq else None

    def seal(self, record: AuditRecord) -> AuditRecord:
        """``record`` with ``chain_id``, ``seq``, ``prev_hash`` and ``hash`` set; advances the cursor."""
        self._check(record)
        prefix = self._last_hash.encode("ascii")

        def hash_of(canonical: bytes) -> str:
            return sha256(prefix + canonical).hexdigest()

        sealed = record.sealed_copy(self._chain_id, self._last_seq + 1, self._last_hash, hash_of)
        self._last_seq = sealed.seq
        self._last_hash = sealed.hash
        return sealed

    def seal_all(self, records: Sequence[AuditRecord]) -> list[AuditRecord]:
        """Seal several records in order. Nothing advances if one of them cannot be sealed."""
        for record in records:
            self._check(record)
        return [self.seal(record) for record in records]

    def _check(self, record: AuditRecord) -> None:
        check_unsealed(record)
        if record.chain_id and record.chain_id != self._chain_id:
            raise ChainError(f"record {record.record_id} belongs to chain {record.chain_id}")

    def __repr__(self) -> str:
        return f"Chain({self._chain_id!r}, last_seq={self._last_seq})"


def check_unsealed(record: AuditRecord) -> None:
    """Raise :class:`ChainError` unless ``record`` can be sealed (by some chain)."""
    if record.sealed or record.hash or record.prev_hash:
        raise ChainError(f"record {record.record_id} is already sealed")
