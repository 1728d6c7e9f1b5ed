"""Masking result rows on their way to the client, for sessions with masks.

Follows the server's answers in the order the requests were forwarded, so each RowDescription,
DataRow and COPY chunk is matched with the statement (simple Query) or portal (extended protocol,
SQL cursor) it belongs to — the server answers requests strictly in order, so this bookkeeping is
exact, and portals are defined only when the server confirms their Bind (a failed Bind to an existing
name must not change what pgproxy thinks that portal returns).

Each result set's columns get their maskers from ``column_maskers`` (the catalog's rules and the
statement's plan, formats per Bind or from the RowDescription of a simple query); a result set with no
masked column is relayed as raw bytes, and the description of a statement that reads no masked relation
is not even decoded (a quick scan of its table OIDs is the second check). The server's error texts for
statements reading masked columns are replaced (their message could quote a value).

Sans-IO: bytes in, bytes out; it must not decide policy (that is the planner's job).
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field

from pgproxy.gate.column_maskers import NULL_EVERY_COLUMN, UNPLANNED, ColumnMaskers, Fields, Maskers
from pgproxy.masking.copy_out import CopyOutMasker
from pgproxy.masking.plan import NO_PLAN, ResultPlan
from pgproxy.masking.resolve import MaskedCatalog
from pgproxy.masking.rows import mask_data_row
from pgproxy.wire.backend import ErrorResponse
from pgproxy.wire.backend_notice import SEVERITY, decode_error_response
from pgproxy.wire.backend_results import decode_row_description
from pgproxy.wire.copy import CopyData

_FIELD = struct.Struct("!IhIhih")
_COUNT = struct.Struct("!h")
_OID = struct.Struct("!I")
_WITHHELD = "pgproxy withheld the server's error message because the statement reads masked columns"


class PreparedResult:
    """The plan of one prepared statement of this session, and its columns once a Describe told them."""

    __slots__ = ("fields", "plan")

    def __init__(self, plan: ResultPlan) -> None:
        self.plan = plan
        self.fields: Fields | None = None  # (table OID, attnum, type, typmod) per column, once described


@dataclass(slots=True)
class _Portal:
    plan: ResultPlan
    formats: tuple[int, ...]  # Bind's result format codes (empty: all text)
    prepared: PreparedResult | None = None
    fields: tuple[tuple[int, int, int, int], ...] | None = None
    holds: bool = False  # a WITH HOLD cursor survives the end of its transaction
    maskers: Maskers | None = None  # computed at the first row


@dataclass(slots=True)
class _Request:
    kind: str  # Q P B DS DP E C S F
    plans: list[ResultPlan] = field(default_factory=list)  # Q: one per statement
    index: int = 0  # Q: the statement being answered
    portal: str = ""  # B, DP, E, C (portal)
    bound: _Portal | None = None  # B
    prepared: PreparedResult | None = None  # DS
    failed: bool = False  # Q: a statement failed (the rest do not run)


class ResultMasker:
    """The result-masking state of one session."""

    def __init__(self, key: bytes, codec: str) -> None:
        self.catalog: MaskedCatalog | None = None  # set by the gate before each use
        self._maskers = ColumnMaskers(key, codec)
        self._requests: deque[_Request] = deque()
        self._portals: dict[str, _Portal] = {}
        self._skipping = False  # after an extended-protocol error, until the client's Sync
        self._copy_in = False  # in COPY FROM STDIN and the client has not ended it: Syncs are ignored
        self.maskers: Maskers | None = None  # of the result set being sent (None: relay rows as they are)
        self._copy: CopyOutMasker | None = None

    def client_codec(self, codec: str) -> None:
        """The client's encoding changed (maskers decode and encode text values with it)."""
        if codec != self._maskers.codec:
            self._maskers = ColumnMaskers(self._maskers.key, codec)

    # -- what was forwarded --------------------------------------------------------------------
    def query(self, plans: list[ResultPlan]) -> None:
        if not self._skipping:
            self._requests.append(_Request("Q", plans=plans))

    def parse(self) -> None:
        self._add(_Request("P"))

    def bind(self, portal: str, prepared: PreparedResult | None, formats: tuple[int, ...]) -> None:
        plan = prepared.plan if prepared is not None else UNPLANNED
        bound = _Portal(plan, formats, prepared, prepared.fields if prepared is not None else None)
        self._add(_Request("B", portal=portal, bound=bound))

    def describe_statement(self, prepared: PreparedResult | None) -> None:
        self._add(_Request("DS", prepared=prepared))

    def describe_portal(self, portal: str) -> None:
        self._add(_Request("DP", portal=portal))

    def execute(self, portal: str) -> None:
        self._add(_Request("E", portal=portal))
        if len(self._requests) == 1:
            self._head_changed()  # everything before it is answered: its rows come next

    def close(self, portal: str | None) -> None:
        """A Close of a portal (its name) or of a statement (None)."""
        self._add(_Request("C", portal=portal if portal is not None else "\x00statement"))

    def sync(self, copy_in: bool) -> None:
        if copy_in or self._copy_in:
            return  # the server ignores Sync during COPY FROM STDIN
        self._skipping = False
        self._requests.append(_Request("S"))

    def copy_end(self) -> None:
        """The client sent CopyDone or CopyFail. During COPY FROM STDIN it ends it (Syncs count again);
        sent before the server's CopyInResponse arrived, it is a marker: Syncs before it were ignored."""
        if self._copy_in:
            self._copy_in = False
        elif not self._skipping:
            self._requests.append(_Request("CD"))

    def function_call(self) -> None:
        if not self._skipping:
            self._requests.append(_Request("F"))

    def _add(self, request: _Request) -> None:
        if not self._skipping:
            self._requests.append(request)

    # -- what the server answered --------------------------------------------------------------
    def server_message(self, kind: int, data: bytes, start: int, end: int) -> bytes | None:
        """None: relay the message as is; bytes: send these instead (possibly empty)."""
        if kind == 0x44:  # 'D' DataRow: the hot path
            maskers = self.maskers
            if maskers is None:
                return None
            if maskers is NULL_EVERY_COLUMN:
                maskers = NULL_EVERY_COLUMN * int.from_bytes(data[start : start + 2], "big")
            return mask_data_row(memoryview(data)[start:end], maskers)
        if kind == 0x64:  # 'd' CopyData
            return None if self._copy is None else _copy_data(self._copy.feed(data[start:end]))
        head = self._requests[0] if self._requests else None
        if kind == 0x54:  # 'T' RowDescription
            self._row_description(head, data, start, end)
        elif kind in (0x43, 0x49):  # 'C' CommandComplete, 'I' EmptyQueryResponse
            self._statement_done(head, completed=kind == 0x43)
        elif kind == 0x73:  # 's' PortalSuspended: the portal stays, with its maskers
            self._finish(head, "E")
        elif kind == 0x48:  # 'H' CopyOutResponse
            self._copy_started(head)
        elif kind == 0x47:  # 'G' CopyInResponse
            self._copy_in_started()
        elif kind == 0x63 and self._copy is not None:  # 'c' CopyDone
            tail, self._copy = self._copy.finish(), None
            return (_copy_data(tail) if tail else b"") + data[start - 5 : end]
        elif kind == 0x45:  # 'E' ErrorResponse
            return self._error(head, data, start, end)
        elif kind == 0x5A:  # 'Z' ReadyForQuery
            self._ready(head, chr(data[start]) if end > start else "I")
        elif kind == 0x31:  # '1' ParseComplete
            self._finish(head, "P")
        elif kind == 0x32:  # '2' BindComplete
            # A Bind the server accepted created the portal: any older entry of that name is gone (a
            # named portal that still exists makes the Bind fail instead, so it never gets here).
            if head is not None and head.kind == "B" and head.bound is not None:
                self._portals[head.portal] = head.bound
            self._finish(head, "B")
        elif kind == 0x33:  # '3' CloseComplete
            if head is not None and head.kind == "C":
                self._portals.pop(head.portal, None)
            self._finish(head, "C")
        elif kind == 0x6E and head is not None and head.kind in ("DS", "DP"):  # 'n' NoData
            self._pop()
        return None

    def _finish(self, head: _Request | None, kind: str) -> None:
        if head is not None and head.kind == kind:
            self._pop()

    def _pop(self) -> None:
        """The head request is answered; an Execute next in line gets its portal's maskers now (its rows
        come next, and the Bind before it has been confirmed or refused by now)."""
        self._requests.popleft()
        self.maskers = None
        self._head_changed()

    def _copy_in_started(self) -> None:
        """The server is in COPY FROM STDIN: it ignores every Sync until the client's CopyDone or CopyFail,
        so Syncs forwarded before that (pipelined ahead of the CopyInResponse) will not be answered."""
        requests = list(self._requests)
        kept = requests[:1]
        for index, request in enumerate(requests[1:], start=1):
            if request.kind == "CD":
                kept.extend(requests[index + 1 :])  # the COPY's end: what follows counts again
                break
            if request.kind != "S":
                kept.append(request)
        else:
            self._copy_in = True  # the client has not ended the COPY yet
        self._requests = deque(kept)

    def _head_changed(self) -> None:
        while self._requests and self._requests[0].kind == "CD":
            self._requests.popleft()  # the end of a COPY whose CopyInResponse never came: nothing answers it
        head = self._requests[0] if self._requests else None
        if head is not None and head.kind == "E":
            self.maskers = self._portal_maskers(head.portal)

    def _row_description(self, head: _Request | None, data: bytes, start: int, end: int) -> None:
        self.maskers = None
        if head is None:
            return
        if self.catalog is None or (
            self._unmasked(head) and not _names_masked_table(data, start, end, self.catalog.masked_oids)
        ):
            # Nothing is masked in this session, or the statement reads no masked relation (the planner
            # checked every relation it names) and, as a second check, no column comes from a masked table.
            if head.kind in ("DS", "DP"):
                self._pop()
            return
        described = decode_row_description(memoryview(data)[start:end]).fields
        fields = tuple((f.table_oid, f.column_attr, f.type_oid, f.type_modifier) for f in described)
        formats = tuple(f.format_code for f in described)
        if head.kind == "DS":
            if head.prepared is not None:
                head.prepared.fields = fields
            self._pop()
        elif head.kind == "DP":
            portal = self._portals.get(head.portal)
            if portal is not None:
                portal.fields, portal.maskers = fields, None
                if portal.prepared is not None:
                    # The statement's columns too: drivers (JDBC) describe a portal once, then Bind/Execute only.
                    portal.prepared.fields = fields
            self._pop()
        elif head.kind == "Q":
            plan = self._query_plan(head)
            self.maskers = self._rows(plan, fields, formats)

    def _unmasked(self, head: _Request) -> bool:
        if head.kind == "Q":
            return self._query_plan(head) is NO_PLAN
        if head.kind == "DS":
            return head.prepared is not None and head.prepared.plan is NO_PLAN
        if head.kind == "DP":
            portal = self._portals.get(head.portal)
            return portal is not None and portal.plan is NO_PLAN
        return False

    def _query_plan(self, head: _Request) -> ResultPlan:
        return self._rows_of(head.plans[head.index] if head.index < len(head.plans) else UNPLANNED)

    def _rows_of(self, plan: ResultPlan) -> ResultPlan:
        """The plan the rows of ``plan`` follow: a FETCH's cursor's, an EXECUTE's prepared statement's."""
        if plan.fetches is not None:
            cursor = self._portals.get(plan.fetches)
            return cursor.plan if cursor is not None else UNPLANNED
        if plan.cursor_plan is not None and plan.declares is None:
            return plan.cursor_plan  # EXECUTE of a prepared statement: its plan
        return plan

    def _portal_maskers(self, name: str) -> Maskers | None:
        portal = self._portals.get(name)
        if portal is None:
            return self._rows(UNPLANNED, None, ())
        if portal.plan is NO_PLAN:
            return None
        if portal.maskers is None:
            fields = portal.fields
            if fields is None and portal.prepared is not None:
                fields = portal.prepared.fields
            portal.maskers = self._rows(self._rows_of(portal.plan), fields, portal.formats) or ()
        return portal.maskers or None

    def _rows(self, plan: ResultPlan, fields: Fields | None, formats: tuple[int, ...]) -> Maskers | None:
        catalog = self.catalog
        return None if catalog is None else self._maskers.rows(catalog, plan, fields, formats)

    def _statement_done(self, head: _Request | None, *, completed: bool) -> None:
        self.maskers = None
        if head is None:
            return
        if head.kind == "E":
            portal = self._portals.get(head.portal)
            if completed and portal is not None:
                self._cursor_effect(portal.plan)  # DECLARE / CLOSE run through the extended protocol
            self._pop()
            return
        if head.kind != "Q":
            return
        if completed and head.index < len(head.plans):
            self._cursor_effect(head.plans[head.index])
        head.index += 1

    def _cursor_effect(self, plan: ResultPlan) -> None:
        if plan.declares is not None:
            self._portals[plan.declares] = _Portal(
                plan.cursor_plan or NO_PLAN, (1,) if plan.binary else (), holds=plan.holds
            )
        elif plan.closes is not None:
            if plan.closes == "":
                self._portals.clear()
            else:
                self._portals.pop(plan.closes, None)

    def _copy_started(self, head: _Request | None) -> None:
        plan: ResultPlan | None = None
        if head is not None and head.kind == "Q":
            plan = self._query_plan(head)
        elif head is not None and head.kind == "E":
            portal = self._portals.get(head.portal)
            plan = self._rows_of(portal.plan) if portal is not None else UNPLANNED
        copy = plan.copy if plan is not None else None
        if copy is None or all(rule is None for rule in copy.rules):
            self._copy = None
            return
        assert self.catalog is not None
        self._copy = self._maskers.copy(self.catalog, copy)

    def _error(self, head: _Request | None, data: bytes, start: int, end: int) -> bytes | None:
        self.maskers, self._copy = None, None
        if head is None:
            return None
        withheld = False
        if head.kind in ("Q", "F"):
            # A Query (or a refused FunctionCall, sent as a stand-in Query) fails alone: no skipping.
            withheld = head.kind == "Q" and head.index < len(head.plans) and self._query_plan(head).reads_masked
            head.failed = True
        else:
            if head.kind == "E":
                portal = self._portals.get(head.portal)
                withheld = portal is None or self._rows_of(portal.plan).reads_masked or portal.plan.reads_masked
            # Extended protocol: the server skips everything up to the next Sync.
            while self._requests and self._requests[0].kind != "S":
                self._requests.popleft()
            if not self._requests:
                self._skipping = True
        return _withheld(data, start, end) if withheld and self.catalog is not None else None

    def _ready(self, head: _Request | None, status: str) -> None:
        self.maskers, self._copy, self._copy_in = None, None, False
        while self._requests:
            request = self._requests.popleft()
            if request.kind in ("Q", "S", "F"):
                break
        if status == "I" and self._portals:
            # Protocol portals and cursors without HOLD end with their transaction.
            self._portals = {name: portal for name, portal in self._portals.items() if portal.holds}
        self._head_changed()




def _names_masked_table(data: bytes, start: int, end: int, masked_oids: frozenset[int]) -> bool:
    """Whether any column of a RowDescription comes from a table with masked columns (a quick scan)."""
    (count,) = _COUNT.unpack_from(data, start)
    at = start + 2
    for _ in range(count):
        at = data.index(b"\x00", at, end) + 1  # the column name
        if _OID.unpack_from(data, at)[0] in masked_oids:
            return True
        at += _FIELD.size
    return False


def _copy_data(payload: bytes) -> bytes:
    return CopyData(payload).encode()


def _withheld(data: bytes, start: int, end: int) -> bytes:
    """The server's error with its severity and SQLSTATE kept, and nothing else."""
    server = decode_error_response(memoryview(data)[start:end])
    return ErrorResponse.build(server.get(SEVERITY) or "ERROR", server.sqlstate or "XX000", _WITHHELD).encode()
