"""The PostgreSQL audit store: durable, chain-checked appends for the group committer, and readers.

:class:`PostgresAuditStore` keeps sealed records in ``<schema>.audit_log`` (see ``pg_schema.py`` for the
tables, migrations and grants). Several pgproxy replicas share one audit database, each writing its own
chain (``chain_id``); ``PRIMARY KEY (chain_id, seq)`` makes a second writer on the same chain fail
instead of forking it.

Writing: one dedicated connection per store, ``synchronous_commit`` set ``on`` for it whatever the
server or role default. :meth:`~PostgresAuditStore.append` first checks that the batch continues the
chain heads the store holds (a chain it has not seen is read from the table first; an empty chain must
start at seq 1), then inserts the whole batch with one pipelined ``executemany`` — one implicit
transaction, one round trip — and the batch is durable when that returns. Any failure after the check
(connection lost, constraint violated, timeout, cancellation) is raised and leaves the store failed: every
later append raises ``AuditStoreUnavailable`` until :meth:`~PostgresAuditStore.reopen` reconnects and
reloads the heads from what the table really holds (the failed batch may or may not have committed), as
``JsonlAuditStore`` does, so ``GroupCommitter.restart(Chain.resume(await store.last_record(id), id))``
continues the chain. Appends from several committers sharing one store are serialized in call order.

Reading: :meth:`~PostgresAuditStore.iter_records` and :meth:`~PostgresAuditStore.fetch` use a separate
connection each, in one read-only repeatable-read snapshot, ordered by ``(chain_id, seq)`` (or by time, for
reviewing: ``pgproxy.audit.review``); they return
records parsed from the stored text, so ``verify`` checks exactly what is stored. Readers need only
SELECT and do not require :meth:`~PostgresAuditStore.open` (a reviewer role can use them).

This module must not seal records (the committer does), decide fail-open or fail-closed (the caller
does), repair, update or delete stored records, or trust the search columns over the record text.
Connect directly or through session pooling: a transaction-pooling bouncer would drop the session's
``synchronous_commit``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from datetime import datetime
from typing import Any

import asyncpg

from pgproxy.audit.chain import ChainHead, record_hash
from pgproxy.audit.jsonl import AuditStoreUnavailable
from pgproxy.audit.pg_schema import apply_migrations, checked_schema
from pgproxy.audit.record import AuditRecord, InvalidRecord

ConnectionFactory = Callable[[], Awaitable[asyncpg.Connection]]

_COLUMNS = (
    "chain_id, seq, record_id, kind, time, hash, prev_hash, session_id, subject, email, database, "
    "category, decision, rule_id, approval_id, relations, approvers, record"
)
_FILTERS = (
    "kind", "record_id", "session_id", "subject", "email", "database", "category", "decision", "rule_id", "approval_id"
)
_ORDERS = {
    "chain": "chain_id, seq",
    "time": 'time, record_id COLLATE "C"',
    "time_desc": 'time DESC, record_id COLLATE "C" DESC',
}


class AuditTableCorrupt(RuntimeError):
    """A stored row that is not a valid record, or a chain head that does not match its own hash."""

    def __init__(self, chain_id: str, seq: int, detail: str) -> None:
        super().__init__(f"audit_log row ({chain_id}, {seq}): {detail}")
        self.chain_id = chain_id
        self.seq = seq


class PostgresAuditStore:
    """Sealed audit records in PostgreSQL; the same append contract as ``JsonlAuditStore``.

    ``dsn_or_connect`` is a DSN, or an async callable returning a new ``asyncpg.Connection`` (for TLS,
    passwords from a secret store…); the store closes the connections it obtains. ``timeout`` (seconds)
    bounds each append and head read; by default they wait as long as the connection does.
    """

    def __init__(
        self, dsn_or_connect: str | ConnectionFactory, /, *, schema: str = "pgproxy", timeout: float | None = None
    ) -> None:
        self._connect: ConnectionFactory = (
            (lambda: asyncpg.connect(dsn_or_connect)) if isinstance(dsn_or_connect, str) else dsn_or_connect
        )
        self.schema = schema
        self._table = f"{checked_schema(schema)}.audit_log"
        placeholders = ", ".join(f"${i}" for i in range(1, 19))
        self._insert = f"INSERT INTO {self._table} ({_COLUMNS}) VALUES ({placeholders})"  # noqa: S608
        self._timeout = timeout
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._failure: BaseException | None = None
        self._heads: dict[str, ChainHead | None] = {}

    @property
    def failure(self) -> BaseException | None:
        return self._failure

    @property
    def heads(self) -> Mapping[str, ChainHead | None]:
        """The chain heads the store holds (chains it wrote or read), e.g. to publish as anchors."""
        return dict(self._heads)

    async def open(self) -> None:
        """Connect, force ``synchronous_commit = on``, create/migrate the schema, reload known heads."""
        async with self._lock:
            await self._open()

    async def _open(self) -> None:
        if self._conn is not None:
            raise AuditStoreUnavailable(f"audit store (schema {self.schema}) is already open")
        conn = await self._connect()
        try:
            await conn.execute("SET synchronous_commit TO on")
            encoding = await conn.fetchval("SHOW server_encoding")
            if encoding != "UTF8":
                raise AuditStoreUnavailable(f"the audit database must use UTF8, not {encoding}")
            await apply_migrations(conn, self.schema)
            for chain_id in self._heads:
                self._heads[chain_id] = await self._load_head(conn, chain_id)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self._failure = None

    async def reopen(self) -> None:
        """Close (whatever state the connection is in) and open again, reloading the chain heads."""
        async with self._lock:
            await self._close()
            await self._open()

    async def close(self) -> None:
        async with self._lock:
            await self._close()

    async def last_record(self, chain_id: str) -> AuditRecord | None:
        """The stored last record of ``chain_id`` (``None``: no record), checked against its hash."""
        async with self._lock:
            conn = self._writer()
            try:
                record = await self._last(conn, chain_id)
            except BaseException as exc:
                self._fail(exc)
                raise
            self._heads[chain_id] = ChainHead.of(record) if record else None
            return record

    async def append(self, records: Sequence[AuditRecord]) -> None:
        """Insert ``records`` (sealed, continuing their chains) in one transaction; durable on return."""
        async with self._lock:
            conn = self._writer()
            if not records:
                return
            try:
                for chain_id in {record.chain_id for record in records} - self._heads.keys():
                    self._heads[chain_id] = await self._load_head(conn, chain_id)
            except BaseException as exc:
                self._fail(exc)
                raise
            heads = self._check_continuity(records)
            try:
                await conn.executemany(self._insert, [_row(record) for record in records], timeout=self._timeout)
            except BaseException as exc:
                self._fail(exc)
                raise
            self._heads.update(heads)

    async def fetch(self, chain_id: str | None = None, **filters: Any) -> list[AuditRecord]:
        """Every matching record, in ``(chain_id, seq)`` order (see :meth:`iter_records`)."""
        async with aclosing(self.iter_records(chain_id, **filters)) as records:
            return [record async for record in records]

    async def iter_records(
        self,
        chain_id: str | None = None,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        relation: str | None = None,
        approver: str | None = None,
        identity: str | None = None,
        any_of: Mapping[str, Sequence[str]] | None = None,
        intent_ids: Sequence[str] | None = None,
        order: str = "chain",
        start_after: tuple[datetime, str] | None = None,
        batch: int = 1000,
        **equal: str,
    ) -> AsyncGenerator[AuditRecord]:
        """Stored records from one snapshot, optionally filtered, in ``(chain_id, seq)`` order by default.

        ``since`` ≤ time < ``until``; ``relation``/``approver``: the record names it; ``equal`` matches
        columns exactly: kind, record_id, session_id, subject, email, database, category, decision,
        rule_id, approval_id; ``any_of`` maps such a column to the values it may hold; ``identity``
        equals ``subject`` or ``email`` ignoring case; ``intent_ids``: outcome records completing one of
        these statements. ``order="time"`` (or ``"time_desc"``) sorts by ``(time, record_id)`` instead,
        and ``start_after`` then skips to the rows past that position. Only unfiltered or
        ``chain_id``-filtered reads in chain order are complete chains for ``verify``.
        Use it under ``contextlib.aclosing`` when the loop may stop early.
        """
        unknown = (set(equal) | set(any_of or ())) - set(_FILTERS)
        if unknown:
            raise TypeError(f"unknown audit filters: {', '.join(sorted(unknown))}")
        if order not in _ORDERS or (start_after is not None and order == "chain"):
            raise ValueError(f"order must be one of {', '.join(_ORDERS)}; start_after needs a time order")
        conditions: list[str] = []
        args: list[object] = []

        def where(condition: str, *values: object) -> None:
            first = len(args) + 1
            args.extend(values)
            conditions.append(condition.format(*(f"${first + i}" for i in range(len(values)))))

        if chain_id is not None:
            where("chain_id = {}", chain_id)
        if since is not None:
            where("time >= {}", since)
        if until is not None:
            where("time < {}", until)
        if relation is not None:
            where("relations @> ARRAY[{}::text]", _searchable(relation))
        if approver is not None:
            where("approvers @> ARRAY[{}::text]", _searchable(approver))
        if identity is not None:
            where("(lower(subject) = lower({0}) OR lower(email) = lower({0}))", _searchable(identity))
        for column, values in sorted((any_of or {}).items()):
            where(f"{column} = ANY({{}}::text[])", [_searchable(value) for value in values])
        if intent_ids is not None:
            where("kind = 'outcome' AND (record::json ->> 'intent_id') = ANY({}::text[])", list(intent_ids))
        if start_after is not None:
            op = "<" if order == "time_desc" else ">"
            where(f'(time {op} {{0}} OR (time = {{0}} AND record_id COLLATE "C" {op} {{1}}))', *start_after)
        for column, value in sorted(equal.items()):
            where(f"{column} = {{}}", _searchable(value))
        query = f"SELECT chain_id, seq, record FROM {self._table}"  # noqa: S608
        if conditions:
            query += " WHERE " + " AND ".join(conditions)
        query += f" ORDER BY {_ORDERS[order]}"
        conn = await self._connect()
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                async for row in conn.cursor(query, *args, prefetch=batch):
                    yield _parse(row["chain_id"], row["seq"], row["record"])
        finally:
            await conn.close()

    def _writer(self) -> asyncpg.Connection:
        if self._conn is None:
            raise AuditStoreUnavailable(f"audit store (schema {self.schema}) is not open")
        if self._failure is not None:
            raise AuditStoreUnavailable(
                f"audit store (schema {self.schema}) failed and must be reopened"
            ) from self._failure
        return self._conn

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._failure is not None:
            conn.terminate()  # a failed connection may not answer a polite close
            return
        try:
            await conn.close(timeout=self._timeout)
        except Exception:
            conn.terminate()

    async def _last(self, conn: asyncpg.Connection, chain_id: str) -> AuditRecord | None:
        row = await conn.fetchrow(
            f"SELECT chain_id, seq, record FROM {self._table} WHERE chain_id = $1 ORDER BY seq DESC LIMIT 1",  # noqa: S608
            chain_id,
            timeout=self._timeout,
        )
        if row is None:
            return None
        record = _parse(row["chain_id"], row["seq"], row["record"])
        if (
            record.chain_id != chain_id
            or record.seq != row["seq"]
            or record_hash(record.prev_hash, record) != record.hash
        ):
            raise AuditTableCorrupt(chain_id, row["seq"], "the chain's last row does not match its hash or position")
        return record

    async def _load_head(self, conn: asyncpg.Connection, chain_id: str) -> ChainHead | None:
        record = await self._last(conn, chain_id)
        return ChainHead.of(record) if record else None

    def _check_continuity(self, records: Sequence[AuditRecord]) -> dict[str, ChainHead]:
        heads: dict[str, ChainHead] = {}
        for record in records:
            if not record.sealed:
                raise InvalidRecord(f"record {record.record_id} is not sealed")
            head = heads.get(record.chain_id) or self._heads.get(record.chain_id)
            seq, last_hash = (head.seq, head.hash) if head else (0, "")
            if record.seq != seq + 1 or record.prev_hash != last_hash:
                raise InvalidRecord(
                    f"record seq {record.seq} of chain {record.chain_id} does not continue the stored seq {seq}"
                )
            heads[record.chain_id] = ChainHead.of(record)
        return heads


def _searchable(value: str) -> str:
    """The search-column copy of a value: PostgreSQL text cannot hold NUL."""
    return value.replace("\x00", "\ufffd")


def _optional(value: str | None) -> str | None:
    return None if value is None else _searchable(value)


def _row(record: AuditRecord) -> tuple[object, ...]:
    return (
        record.chain_id,
        record.seq,
        record.record_id,
        record.kind.value,
        datetime.fromisoformat(record.time),
        record.hash,
        record.prev_hash,
        _optional(record.session_id),
        _optional(record.subject),
        _optional(record.email),
        _optional(record.database),
        _optional(record.category),
        None if record.decision is None else record.decision.value,
        _optional(record.rule_id),
        _optional(record.approval_id),
        [_searchable(name) for name in record.relations],
        [_searchable(name) for name in record.approvers],
        record.to_json(),
    )


def _parse(chain_id: str, seq: int, text: str) -> AuditRecord:
    try:
        return AuditRecord.from_json(text)
    except InvalidRecord as exc:
        raise AuditTableCorrupt(chain_id, seq, str(exc)) from None
