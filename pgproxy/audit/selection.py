"""Choosing records from a stream: the first entries of a listing, and the records an export holds.

:class:`TopEntries` keeps the first ``limit`` entries of a listing (newest or oldest first, after a
:class:`~pgproxy.audit.query.Cursor`) from records fed in any order, in memory proportional to
``limit``, and joins the outcome records of the statements it kept. :class:`ExportSelection` decides,
record by record in stored order, what an export holds (see ``query`` for how outcomes are treated).

Pure: no I/O. It must not read stores (``review`` feeds it) nor format output (``export``, ``display``).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from pgproxy.audit.query import Cursor, Entry, RecordFilter
from pgproxy.audit.record import AuditRecord, RecordKind


class _Newer:
    """A heap item for newest-first listings: the heap keeps the newest, so the *oldest* is on top."""

    __slots__ = ("key", "record")

    def __init__(self, record: AuditRecord) -> None:
        self.key = Cursor.of(record)
        self.record = record

    def __lt__(self, other: _Newer) -> bool:
        return self.key < other.key


class _Older(_Newer):
    __slots__ = ()

    def __lt__(self, other: _Newer) -> bool:
        return other.key < self.key


class TopEntries:
    """The first ``limit`` entries of a listing (newest or oldest first), after ``start_after`` if given.

    Feed every record with :meth:`add` (any order), then :meth:`attach` the outcome records (any order)
    and read :meth:`entries`. Memory: ``limit`` records plus their outcomes.
    """

    def __init__(
        self, flt: RecordFilter, *, limit: int, newest_first: bool = True, start_after: Cursor | None = None
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._filter = flt
        self._limit = limit
        self._item = _Newer if newest_first else _Older
        self._newest_first = newest_first
        self._start_after = start_after
        self._heap: list[_Newer] = []
        self._outcomes: dict[str, list[AuditRecord]] = {}

    def add(self, record: AuditRecord) -> None:
        if not self._filter.lists(record):
            return
        key = Cursor.of(record)
        if self._start_after is not None and (
            key >= self._start_after if self._newest_first else key <= self._start_after
        ):
            return
        item = self._item(record)
        if len(self._heap) < self._limit:
            heapq.heappush(self._heap, item)
        elif self._heap[0] < item:
            heapq.heapreplace(self._heap, item)

    def add_all(self, records: Iterable[AuditRecord]) -> None:
        for record in records:
            self.add(record)

    @property
    def statement_ids(self) -> set[str]:
        """The record ids of the kept statements: whose outcomes :meth:`join` wants."""
        return {item.record.record_id for item in self._heap if item.record.kind is RecordKind.STATEMENT}

    def join(self, outcomes: Iterable[AuditRecord]) -> None:
        """Attach, in the order given, the outcome records naming a kept statement; others are ignored."""
        wanted = self.statement_ids
        for outcome in outcomes:
            if outcome.kind is RecordKind.OUTCOME and outcome.intent_id in wanted:
                self._outcomes.setdefault(outcome.intent_id, []).append(outcome)

    def entries(self) -> list[Entry]:
        """The kept entries in listing order, each statement with its joined outcomes."""
        return [
            Entry(item.record, tuple(self._outcomes.get(item.record.record_id, ())))
            for item in sorted(self._heap, reverse=True)
        ]


class ExportSelection:
    """Which records of a stored-order stream an export holds: the matching records, plus the outcomes of
    exported statements that do not match on their own (an outcome never precedes its statement in its
    chain). A statement is tracked until its first outcome arrives, so memory grows with statements
    still waiting for one (running, held, or cut off), not with the size of the export."""

    def __init__(self, flt: RecordFilter) -> None:
        self._filter = flt
        self._everything = flt.is_empty
        self._join = flt.wants_outcomes
        self._waiting: set[str] = set()

    def admit(self, record: AuditRecord) -> bool:
        if self._everything:
            return True
        if record.kind is RecordKind.OUTCOME and self._join and record.intent_id in self._waiting:
            self._waiting.discard(record.intent_id)
            return True
        if not self._filter.matches(record):
            return False
        if record.kind is RecordKind.STATEMENT and self._join:
            self._waiting.add(record.record_id)
        return True
