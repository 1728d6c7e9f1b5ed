"""The tamper-evident audit log: records, hash chains, verification and the JSONL store.

Modules, lowest first:

* ``record``  — :class:`AuditRecord` (frozen), its JSON form and the canonical bytes the chain hashes
  (RFC 8785 form without ``hash``; specified in that module's docstring). Pure.
* ``chain``   — :class:`Chain` seals records (``seq``, ``prev_hash``, ``hash``) and resumes from a
  store's last record; :class:`ChainHead` is a chain's position, also used as a trusted anchor. Pure.
* ``verify``  — :func:`verify` checks any iterable of records and reports each chain's first broken
  link (edited, deleted, reordered records; with anchors also a removed tail). Pure.
* ``jsonl``   — ``JsonlAuditStore``, an append-only 0600 JSONL file (one write + fsync per batch,
  torn-tail recovery), and ``GroupCommitter``, which seals and batches submissions for any store.
  It does I/O and uses asyncio, so it is *not* re-exported here: import it from ``pgproxy.audit.jsonl``.
  Importing this package (or ``record``/``chain``/``verify``) loads no asyncio, sockets or files, so
  sans-IO layers may use the record types.

The intended write path, for whoever wires this into the proxy: build an unsealed record per event
(``AuditRecord(kind=RecordKind.STATEMENT, time=utc_timestamp(), …)``), ``await committer.submit(record)``
and forward the statement only after it returns (the intent is then durable); an outcome record names
its statement record by ``intent_id=<statement record's record_id>``. If ``submit`` raises
``AuditStoreUnavailable`` the statement must not be forwarded (fail closed) unless configured
otherwise. Nothing in this package may hold tokens, passwords or masked values.

This package must not import the proxy's layers (server, gate, policy): the proxy depends on it, not the
other way round.
"""

from pgproxy.audit.chain import Chain, ChainError, ChainHead, new_chain_id, record_hash
from pgproxy.audit.record import AuditRecord, Decision, InvalidRecord, RecordKind, new_record_id, utc_timestamp
from pgproxy.audit.verify import Break, BreakKind, ChainReport, VerifyReport, verify

__all__ = [
    "AuditRecord",
    "Break",
    "BreakKind",
    "Chain",
    "ChainError",
    "ChainHead",
    "ChainReport",
    "Decision",
    "InvalidRecord",
    "RecordKind",
    "VerifyReport",
    "new_chain_id",
    "new_record_id",
    "record_hash",
    "utc_timestamp",
    "verify",
]
