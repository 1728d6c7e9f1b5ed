"""Reading the audit log for reviewers: search, show and export over JSONL files or the PostgreSQL store.

Both readers implement :class:`AuditReader`:

* ``search(filter, limit=…, newest_first=…, start_after=…)`` — the first ``limit`` entries of the listing
  (records the filter lists, see ``query``) in time order, each statement with its outcomes; pass the
  :class:`~pgproxy.audit.query.Cursor` of the last entry shown to get the next page;
* ``show(id)`` — a :class:`Detail`: the record with that ``record_id`` (its outcomes; for an outcome, its
  statement; the start and end of its session), or else, taking the id as a ``session_id``, the session's
  entries oldest first; ``None`` when neither exists;
* ``export(filter)`` — the records an export holds (``selection.ExportSelection``) in stored order, chain by
  chain, streamed: encode them with ``export.encode``. An export of ``RecordFilter()`` is the whole log.

:class:`JsonlAuditReader` reads files (in the order given; rotated files of one chain oldest first) on a
worker thread: a search reads every line once, then scans for the outcomes of the entries it keeps (only
lines naming one of them are parsed), in memory proportional to ``limit``. :class:`PostgresAuditReader`
pushes what the table's columns can answer into SQL (time window and order, identity, database, session,
category, decision, rule, kinds; outcomes by session and ``intent_id``) and applies the rest of the filter
to the parsed records; a search stops reading at ``limit`` entries.

Failures to read (missing file, corrupt record, database unreachable, no privilege) raise
:class:`AuditSourceError` with a message for the reviewer. This module only reads: it must never write,
repair or reorder a log, nor decide who may review (the web app and the CLI do).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Iterable, Iterator, Sequence
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from pgproxy.audit.jsonl import AuditLogCorrupt
from pgproxy.audit.pg_schema import SchemaError
from pgproxy.audit.postgres import AuditTableCorrupt, PostgresAuditStore
from pgproxy.audit.query import Cursor, Detail, Entry, RecordFilter
from pgproxy.audit.record import AuditRecord, InvalidRecord, RecordKind
from pgproxy.audit.selection import ExportSelection, TopEntries

_BATCH = 500  # records handed from the file thread to the event loop at a time
_SESSION_LIMIT = 200
_SESSION_ENDS = frozenset({RecordKind.SESSION_START, RecordKind.SESSION_END})
_INTENT = re.compile(rb'"intent_id"\s*:\s*"([0-9A-Za-z_.:-]{1,128})"')


class AuditSourceError(RuntimeError):
    """The audit log could not be read; the message says which source and why."""


class AuditReader(Protocol):
    async def search(
        self, flt: RecordFilter, *, limit: int = 50, newest_first: bool = True, start_after: Cursor | None = None
    ) -> list[Entry]: ...

    async def show(self, ident: str, *, session_limit: int = _SESSION_LIMIT) -> Detail | None: ...

    def export(self, flt: RecordFilter) -> AsyncIterator[AuditRecord]: ...


def _session_detail(entries: list[Entry], limit: int) -> Detail | None:
    if not entries:
        return None
    return Detail(None, session=tuple(entries[:limit]), truncated=len(entries) > limit)


# -- JSONL files --------------------------------------------------------------------------------------------


class JsonlAuditReader:
    """Reads one or more JSONL audit files (``JsonlAuditStore`` files; the writer may still be appending)."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]]) -> None:
        if not paths:
            raise ValueError("no JSONL audit file given")
        self.paths = tuple(Path(path) for path in paths)

    async def search(
        self, flt: RecordFilter, *, limit: int = 50, newest_first: bool = True, start_after: Cursor | None = None
    ) -> list[Entry]:
        top = TopEntries(flt, limit=limit, newest_first=newest_first, start_after=start_after)
        return await asyncio.to_thread(self._search, top)

    def _search(self, top: TopEntries) -> list[Entry]:
        top.add_all(self._scan())
        wanted = top.statement_ids
        if wanted:
            top.join(self._scan(lambda line: _names_intent(line, wanted)))
        return top.entries()

    async def show(self, ident: str, *, session_limit: int = _SESSION_LIMIT) -> Detail | None:
        return await asyncio.to_thread(self._show, ident, session_limit)

    def _show(self, ident: str, session_limit: int) -> Detail | None:
        needle = ident.encode("utf-8")
        found = next((r for r in self._scan(lambda line: needle in line) if r.record_id == ident), None)
        if found is None:
            top = TopEntries(RecordFilter(session_id=ident), limit=session_limit + 1, newest_first=False)
            return _session_detail(self._search(top), session_limit)
        related = (needle, *((found.intent_id.encode("ascii"),) if found.intent_id else ()))
        session = None if found.session_id is None else json.dumps(found.session_id, ensure_ascii=False)
        in_session = b"" if session is None else session.encode("utf-8")

        def wanted(line: bytes) -> bool:
            if any(item in line for item in related):
                return True
            return bool(in_session) and in_session in line and (b"session_start" in line or b"session_end" in line)

        outcomes: list[AuditRecord] = []
        intent = None
        ends: list[Entry] = []
        for record in self._scan(wanted):
            if record.kind is RecordKind.OUTCOME and record.intent_id == ident:
                outcomes.append(record)
            elif found.intent_id is not None and record.record_id == found.intent_id:
                intent = record
            elif record.kind in _SESSION_ENDS and session is not None and record.session_id == found.session_id:
                ends.append(Entry(record))
        return Detail(found, tuple(outcomes), intent, tuple(ends))

    async def export(self, flt: RecordFilter) -> AsyncIterator[AuditRecord]:
        selection = ExportSelection(flt)
        records = self._scan()
        try:
            while batch := await asyncio.to_thread(_take, records, _BATCH):
                for record in batch:
                    if selection.admit(record):
                        yield record
        finally:
            records.close()

    def _scan(self, wanted: Callable[[bytes], bool] | None = None) -> Generator[AuditRecord]:
        """Every record of the files in order (blocking); with ``wanted``, only lines it accepts are parsed.

        A torn last line (no ``\\n``: being written) is skipped, as ``jsonl.read_records`` does.
        """
        for path in self.paths:
            try:
                with path.open("rb") as file:
                    for number, line in enumerate(file, start=1):
                        if not line.endswith(b"\n"):
                            break
                        if wanted is None or wanted(line):
                            yield _parse_line(path, number, line)
            except FileNotFoundError:
                raise AuditSourceError(f"{path}: no such file") from None
            except OSError as exc:
                raise AuditSourceError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _names_intent(line: bytes, wanted: set[str]) -> bool:
    found = _INTENT.search(line)
    return found is not None and found[1].decode("ascii") in wanted


def _parse_line(path: Path, number: int, line: bytes) -> AuditRecord:
    try:
        return AuditRecord.from_json(line)
    except InvalidRecord as exc:
        raise AuditSourceError(str(AuditLogCorrupt(path, number, str(exc)))) from None


def _take(records: Iterator[AuditRecord], count: int) -> list[AuditRecord]:
    batch = []
    for record in records:
        batch.append(record)
        if len(batch) == count:
            break
    return batch


# -- PostgreSQL ---------------------------------------------------------------------------------------------


class PostgresAuditReader:
    """Reads ``<schema>.audit_log`` through :class:`PostgresAuditStore`'s readers (SELECT privilege only).

    Build it from a store, or with :meth:`connect` from a DSN (a reviewer role with SELECT is enough).
    """

    def __init__(self, store: PostgresAuditStore) -> None:
        self.store = store

    @classmethod
    def connect(
        cls, dsn_or_connect: str | Callable[[], Awaitable[asyncpg.Connection]], *, schema: str = "pgproxy"
    ) -> PostgresAuditReader:
        return cls(PostgresAuditStore(dsn_or_connect, schema=schema))

    async def search(
        self, flt: RecordFilter, *, limit: int = 50, newest_first: bool = True, start_after: Cursor | None = None
    ) -> list[Entry]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        kept: list[AuditRecord] = []
        position = None if start_after is None else (start_after.at, start_after.record_id)
        order = "time_desc" if newest_first else "time"
        pushed = _pushdown(flt, listing=True)
        rows = self._read(batch=min(1000, limit * 2 + 10), order=order, start_after=position, **pushed)
        async with _reading(self.store), aclosing(rows) as records:
            async for record in records:
                if flt.lists(record):
                    kept.append(record)
                    if len(kept) == limit:
                        break
            outcomes = await self._outcomes(kept)
        return [Entry(record, tuple(outcomes.get(record.record_id, ()))) for record in kept]

    async def show(self, ident: str, *, session_limit: int = _SESSION_LIMIT) -> Detail | None:
        async with _reading(self.store):
            found = await self._first(record_id=ident)
            if found is None:
                entries = await self.search(
                    RecordFilter(session_id=ident), limit=session_limit + 1, newest_first=False
                )
                return _session_detail(entries, session_limit)
            outcomes = (await self._outcomes([found])).get(ident, [])
            intent = None if found.intent_id is None else await self._first(record_id=found.intent_id)
            ends: list[AuditRecord] = []
            if found.session_id is not None:
                kinds = sorted(kind.value for kind in _SESSION_ENDS)
                ends = await self.store.fetch(session_id=found.session_id, any_of={"kind": kinds})
        return Detail(found, tuple(outcomes), intent, tuple(Entry(record) for record in ends))

    async def export(self, flt: RecordFilter) -> AsyncIterator[AuditRecord]:
        selection = ExportSelection(flt)
        since, until = flt.window
        pushed = _pushdown(flt)
        streams = [self._read(**pushed)]
        statements = not flt.kinds or RecordKind.STATEMENT in flt.kinds
        if statements and flt.wants_outcomes and not flt.is_empty and (not flt.selects_outcomes or until is not None):
            # Outcomes of exported statements may lie past the window, or not match on their own.
            start = since if not flt.selects_outcomes else until
            session = {} if flt.session_id is None else {"session_id": flt.session_id}
            streams.append(self._read(since=start, kind=RecordKind.OUTCOME.value, **session))
        async with _reading(self.store), aclosing(_merge(streams)) as records:
            async for record in records:
                if selection.admit(record):
                    yield record

    def _read(self, **query: Any) -> AsyncGenerator[AuditRecord]:
        return self.store.iter_records(**query)

    async def _first(self, **query: Any) -> AuditRecord | None:
        async with aclosing(self.store.iter_records(**query)) as records:
            async for record in records:
                return record
        return None

    async def _outcomes(self, records: Iterable[AuditRecord]) -> dict[str, list[AuditRecord]]:
        """The outcome records of the statements among ``records``, by statement record id, stored order."""
        statements = [record for record in records if record.kind is RecordKind.STATEMENT]
        if not statements:
            return {}
        ids = {record.record_id for record in statements}
        sessions = {record.session_id for record in statements}
        query: dict[str, Any] = {"intent_ids": sorted(ids)}
        if None not in sessions:  # outcomes carry their statement's session: use its index
            query["any_of"] = {"session_id": sorted(session for session in sessions if session is not None)}
        found: dict[str, list[AuditRecord]] = {}
        for outcome in await self.store.fetch(**query):
            if outcome.intent_id is not None and outcome.intent_id in ids:
                found.setdefault(outcome.intent_id, []).append(outcome)
        return found


def _pushdown(flt: RecordFilter, *, listing: bool = False) -> dict[str, Any]:
    """The part of ``flt`` the table's search columns answer (the rest is checked on the parsed records).

    ``listing``: outcome records are not read unless the filter lists them (they are joined separately).
    """
    since, until = flt.window
    query: dict[str, Any] = {"since": since, "until": until}
    if flt.identity is not None:
        query["identity"] = flt.identity
    for key, value in (("database", flt.database), ("session_id", flt.session_id), ("rule_id", flt.rule_id)):
        if value is not None:
            query[key] = value
    if flt.category is not None:
        query["category"] = flt.category.lower()
    if flt.decision is not None:
        query["decision"] = flt.decision.value
    kinds = set(flt.kinds or RecordKind)
    if flt.names_statement_fields:
        kinds &= {RecordKind.STATEMENT}
    if listing and RecordKind.OUTCOME not in flt.kinds:
        kinds.discard(RecordKind.OUTCOME)
    if kinds != set(RecordKind):
        query["any_of"] = {"kind": sorted(kind.value for kind in kinds)}
    return query


async def _merge(streams: Sequence[AsyncGenerator[AuditRecord]]) -> AsyncGenerator[AuditRecord]:
    """Merge streams each in ``(chain_id, seq)`` order into one, a record present in several once."""
    heads: list[tuple[tuple[str, int], int, AuditRecord]] = []
    try:
        for index, stream in enumerate(streams):
            first = await anext(stream, None)
            if first is not None:
                heads.append(((first.chain_id, first.seq), index, first))
        last: tuple[str, int] | None = None
        while heads:
            heads.sort()
            key, index, record = heads.pop(0)
            if key != last:
                yield record
                last = key
            following = await anext(streams[index], None)
            if following is not None:
                heads.append(((following.chain_id, following.seq), index, following))
    finally:
        for stream in streams:
            await stream.aclose()


@asynccontextmanager
async def _reading(store: PostgresAuditStore) -> AsyncIterator[None]:
    """Turns the store's and the driver's failures into :class:`AuditSourceError` for the reviewer."""
    where = f"audit store (schema {store.schema})"
    try:
        yield
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError) as exc:
        raise AuditSourceError(f"{where}: no audit table; has pgproxy written to it yet?") from exc
    except asyncpg.InsufficientPrivilegeError as exc:
        raise AuditSourceError(f"{where}: this role may not read it (GRANT SELECT, see pg_schema)") from exc
    except (AuditTableCorrupt, SchemaError) as exc:
        raise AuditSourceError(f"{where}: {exc}") from exc
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise AuditSourceError(f"{where}: cannot read: {exc}") from exc
