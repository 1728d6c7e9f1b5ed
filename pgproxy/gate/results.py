"""Masking result rows on their way to the client, for sessions with masks.

Follows the server's answers in the order the requests were forwarded, so each RowDescription,
DataRow and COPY chunk is matched with the statement (simple Query) or portal (extended protocol,
SQL cursor) it belongs to — the server answers requests strictly in order, so this bookkeeping is
exact, and portals are defined only when the server confirms their Bind (a failed Bind to an existing
name must not change what pgproxy thinks that portal returns).

For each result set, every column gets a rule from two independent sources, the stricter winning:
the catalog (RowDescription's table OID and attribute number; views included) and the statement's
plan (``masking.plan``: lineage of computed columns). Columns then get a value masker for their type
and format (per Bind, or from the RowDescription of a simple query). A result set with no masked
column is relayed as raw bytes. Where pgproxy cannot know a column's origin (results of a cursor it
did not see declared), columns that are not plain table columns are nulled. The server's error texts
for statements reading masked columns are replaced (their message could quote a value).

Sans-IO: bytes in, bytes out; it must not decide policy (that is the planner's job).
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from pgproxy.gate.encoding import UnsupportedEncoding, python_codec
from pgproxy.gate.trail import error_fields
from pgproxy.masking.copy_out import CopyOutMasker
from pgproxy.masking.plan import NO_PLAN, CopyPlan, ResultPlan
from pgproxy.masking.resolve import MaskedCatalog
from pgproxy.masking.rows import mask_data_row
from pgproxy.masking.rules import ColumnRule, strictest
from pgproxy.masking.values import Masker, type_kind, value_masker
from pgproxy.policy.model import MaskStrategy
from pgproxy.wire.backend import ErrorResponse
from pgproxy.wire.backend_results import decode_row_description

_FIELD = struct.Struct("!IhIhih")
_COUNT = struct.Struct("!h")
_OID = struct.Struct("!I")
_UNKNOWN_ORIGIN = ColumnRule(MaskStrategy.NULL, "a cursor pgproxy did not see declared", derived=True)
_WITHHELD = "pgproxy withheld the server's error message because the statement reads masked columns"


class PreparedResult:
    """The plan of one prepared statement of this session, and its columns once a Describe told them."""

    __slots__ = ("fields", "plan")

    def __init__(self, plan: ResultPlan) -> None:
        self.plan = plan
        self.fields: tuple[tuple[int, int, int, int], ...] | None = None  # (table OID, attnum, type, typmod)


@dataclass(slots=True)
class _Portal:
    plan: ResultPlan
    formats: tuple[int, ...]  # Bind's result format codes (empty: all text)
    prepared: PreparedResult | None = None
    fields: tuple[tuple[int, int, int, int], ...] | None = None
    holds: bool = False  # a WITH HOLD cursor survives the end of its transaction
    maskers: tuple[Masker | None, ...] | None = None  # computed at the first row


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
        self.key = key
        self.codec = codec
        self._requests: deque[_Request] = deque()
        self._portals: dict[str, _Portal] = {}
        self._skipping = False  # after an extended-protocol error, until the client's Sync
        self._copy_in = False  # in COPY FROM STDIN and the client has not ended it: Syncs are ignored
        self.maskers: tuple[Masker | None, ...] | None = None  # of the result set being sent
        self._copy: CopyOutMasker | None = None
        # (plan, catalog, columns, formats) → maskers; plan and catalog kept to make their ids unique
        self._built: dict[
            tuple[int, int, object, tuple[int, ...]],
            tuple[ResultPlan, MaskedCatalog, tuple[Masker | None, ...] | None],
        ] = {}

    # -- what was forwarded --------------------------------------------------------------------
    def query(self, plans: list[ResultPlan]) -> None:
        if not self._skipping:
            self._requests.append(_Request("Q", plans=plans))

    def parse(self) -> None:
        self._add(_Request("P"))

    def bind(self, portal: str, prepared: PreparedResult | None, formats: tuple[int, ...]) -> None:
        plan = prepared.plan if prepared is not None else _UNKNOWN
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
                maskers = (_null_masker,) * int.from_bytes(data[start : start + 2], "big")
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
            self.maskers = self._build(plan, fields, formats)

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
        return self._rows_of(head.plans[head.index] if head.index < len(head.plans) else _UNKNOWN)

    def _rows_of(self, plan: ResultPlan) -> ResultPlan:
        """The plan the rows of ``plan`` follow: a FETCH's cursor's, an EXECUTE's prepared statement's."""
        if plan.fetches is not None:
            cursor = self._portals.get(plan.fetches)
            return cursor.plan if cursor is not None else _UNKNOWN
        if plan.cursor_plan is not None and plan.declares is None:
            return plan.cursor_plan  # EXECUTE of a prepared statement: its plan
        return plan

    def _portal_maskers(self, name: str) -> tuple[Masker | None, ...] | None:
        portal = self._portals.get(name)
        if portal is None:
            return self._build(_UNKNOWN, None, ())
        if portal.plan is NO_PLAN:
            return None
        if portal.maskers is None:
            fields = portal.fields
            if fields is None and portal.prepared is not None:
                fields = portal.prepared.fields
            portal.maskers = self._build(self._rows_of(portal.plan), fields, portal.formats) or ()
        return portal.maskers or None

    def _build(
        self, plan: ResultPlan, fields: tuple[tuple[int, int, int, int], ...] | None, formats: tuple[int, ...]
    ) -> tuple[Masker | None, ...] | None:
        """The maskers of one result set; None when no column is masked (the raw fast path).

        Remembered per plan, columns and formats: a statement run again gets the same maskers without
        building them (an HMAC key schedule, type lookups) anew."""
        catalog = self.catalog
        if catalog is None:
            return None
        key = (id(plan), id(catalog), fields, formats)
        known = self._built.get(key)
        if known is not None and known[0] is plan and known[1] is catalog:
            return known[2]
        maskers = self._build_new(catalog, plan, fields, formats)
        if len(self._built) >= _BUILT_LIMIT:
            self._built.clear()
        self._built[key] = (plan, catalog, maskers)
        return maskers

    def _build_new(
        self,
        catalog: MaskedCatalog,
        plan: ResultPlan,
        fields: tuple[tuple[int, int, int, int], ...] | None,
        formats: tuple[int, ...],
    ) -> tuple[Masker | None, ...] | None:
        planned = plan.columns
        if fields is None:
            # Rows without a description (a driver that skipped Describe): only the plan can tell, and
            # without types the one valid masked value is NULL.
            if plan.columns is None and plan.reads_masked:
                return NULL_EVERY_COLUMN  # not even the number of columns is known
            if not planned or all(rule is None for rule in planned):
                return None
            return tuple(None if rule is None else _null_masker for rule in planned)
        mismatch = planned is not None and len(planned) != len(fields)
        by_attribute, types = catalog.by_attribute, catalog.snapshot.types
        known = catalog.snapshot.by_oid
        maskers: list[Masker | None] = []
        for index, (table_oid, attnum, type_oid, typmod) in enumerate(fields):
            rules: list[ColumnRule] = []
            if table_oid:
                found = by_attribute.get((table_oid, attnum))
                if found is not None:
                    rules.append(found)
                elif table_oid not in known:
                    rules.append(_UNKNOWN_ORIGIN)
            if mismatch:
                rules.append(_UNKNOWN_ORIGIN)
            elif planned is not None and planned[index] is not None:
                rules.append(planned[index])  # type: ignore[arg-type]
            elif plan is _UNKNOWN and not table_oid:
                rules.append(_UNKNOWN_ORIGIN)
            rule = strictest(rules)
            if rule is None:
                maskers.append(None)
                continue
            binary = _format_of(formats, index) == 1
            kind = type_kind(type_oid, types)
            maskers.append(value_masker(
                rule, kind, binary=binary, typmod=typmod, codec=self.codec, key=self.key, type_oid=type_oid
            ))
        return tuple(maskers) if any(m is not None for m in maskers) else None

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
            plan = self._rows_of(portal.plan) if portal is not None else _UNKNOWN
        copy = plan.copy if plan is not None else None
        if copy is None or all(rule is None for rule in copy.rules):
            self._copy = None
            return
        self._copy = self._copy_masker(copy)

    def _copy_masker(self, copy: CopyPlan) -> CopyOutMasker:
        assert self.catalog is not None
        binary = copy.format == "binary"
        codec = self.codec if copy.encoding is None else _codec_for(copy.encoding, self.codec)
        types = self.catalog.snapshot.types
        maskers = [
            None if rule is None else value_masker(
                rule, type_kind(type_oid, types), binary=binary, typmod=-1, codec=codec, key=self.key,
                type_oid=type_oid,
            )
            for rule, type_oid in zip(copy.rules, copy.types, strict=True)
        ]
        return CopyOutMasker(
            copy.format, maskers, delimiter=copy.delimiter, null=copy.null, quote=copy.quote,
            escape=copy.escape, header=copy.header, codec=codec,
        )

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


_BUILT_LIMIT = 256
_UNKNOWN = ResultPlan(reads_masked=True)  # results pgproxy cannot trace to a statement it planned


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


def _null_masker(value: bytes) -> bytes | None:
    return None


# Rows of a result set pgproxy knows nothing about (a portal it did not see bound, no description):
# every value becomes NULL, the one value valid for every type.
NULL_EVERY_COLUMN: tuple[Masker | None, ...] = (_null_masker,)


def _format_of(formats: Sequence[int], index: int) -> int:
    if not formats:
        return 0
    if len(formats) == 1:
        return formats[0]
    return formats[index] if index < len(formats) else 0


def _copy_data(payload: bytes) -> bytes:
    return b"d" + struct.pack("!I", len(payload) + 4) + payload


def _codec_for(encoding: str, fallback: str) -> str:
    try:
        return python_codec(encoding.upper())
    except UnsupportedEncoding:
        return fallback


def _withheld(data: bytes, start: int, end: int) -> bytes:
    sqlstate, _message = error_fields(data[start:end], "utf-8")
    severity = "ERROR"
    for part in bytes(data[start:end]).split(b"\x00"):
        if part[:1] == b"S":
            severity = part[1:].decode("ascii", "replace")
            break
    return ErrorResponse.build(severity, sqlstate or "XX000", _WITHHELD).encode()
