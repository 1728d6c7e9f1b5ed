"""The gate's side of column masking for one session: plan each statement, follow each result set.

A session has masking when the policy gives its identity masks on its database. Then every Query
statement and Parse is planned (``masking.plan``) before it is forwarded — a refused plan becomes a
denial like a policy's — and every request is reported to the result masker (``results``) so that
result rows, COPY data and error texts can be rewritten on the way back. Planning needs a current
catalog reading: when there is none (first use, DDL seen, a relation the reading does not know),
``wants_catalog`` is set and the message waits; the relay loads the catalog and retries.

Sans-IO: the catalog is read through the ``CatalogView`` protocol; loading is the relay's job.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from pgproxy.auth.identity import Identity
from pgproxy.gate.denial import CATALOG_OUTAGE_RULE
from pgproxy.gate.judge import PolicySource
from pgproxy.gate.results import PreparedResult, ResultMasker
from pgproxy.masking.plan import NO_PLAN, Planner, Refused, ResultPlan
from pgproxy.masking.registry import PlannerRegistry
from pgproxy.masking.snapshot import CatalogSnapshot
from pgproxy.policy.engine import Decision, Effect, session_profile
from pgproxy.policy.model import Mask
from pgproxy.sql.classify import statement_texts
from pgproxy.sql.statement import Category, Statement

MASKING_RULE = "pgproxy:masking"
_HINT = "select the columns you need by name, without functions pgproxy cannot trace; masked columns stay masked"
# Statements that change what names mean or what exists: the catalog reading is refreshed after them.
_CATALOG_CHANGING = frozenset({Category.DDL, Category.PRIVILEGE})
_unpack_h = struct.Struct("!h").unpack_from
_unpack_i = struct.Struct("!i").unpack_from


class CatalogView(Protocol):
    def snapshot(self, database: str) -> CatalogSnapshot | None: ...

    def stale(self, database: str) -> bool: ...

    def invalidate(self, database: str) -> None: ...


class Wait:
    """The statement waits for a catalog reading (``GateMasking.wants_catalog`` is set)."""


WAIT = Wait()


class GateMasking:
    """Masking for one session."""

    def __init__(
        self,
        *,
        policies: PolicySource,
        identity: Identity,
        database: str,
        catalogs: CatalogView,
        registry: PlannerRegistry,
        key: bytes,
        login_role: str,
        codec: str,
    ) -> None:
        self._policies = policies
        self._identity = identity
        self.database = database
        self._catalogs = catalogs
        self._registry = registry
        self._login_role = login_role
        self.results = ResultMasker(key, codec)
        self.wants_catalog = False  # the relay should load the catalog, then retry the held messages
        self.catalog_failed = False  # the last load failed: statements that need it are refused
        self._masks_version = -1
        self._masks: tuple[Mask, ...] = ()
        self._current: tuple[CatalogSnapshot | None, int, Planner] | None = None  # the planner last used
        # id(statement) → (statement, planner, plan): plans of shared Statement objects, see plan_query
        self._remembered: dict[int, tuple[Statement, Planner, ResultPlan]] = {}
        # id(statement) → (statement, planner, result) for prepared statements that carry no plan
        self._checked: dict[int, tuple[Statement, Planner, PreparedResult | None]] = {}
        self._retried: set[str] = set()  # unknown relation names a catalog refresh was already tried for
        self._catalog_changed = False  # a statement that may change the catalog ran in this transaction

    # -- is masking on for this session ----------------------------------------------------------
    @property
    def masks(self) -> tuple[Mask, ...]:
        version = self._policies.version
        if version != self._masks_version:
            profile = session_profile(self._policies.current, self._identity, self.database)
            self._masks = profile.masks if profile is not None else ()
            self._masks_version = version
        return self._masks

    # -- planning ------------------------------------------------------------------------------
    def plan_query(
        self, statements: Sequence[Statement], text: str | None, key: str | None
    ) -> list[ResultPlan] | Decision | Wait:
        if not self.masks:
            self.results.catalog = None
            return [NO_PLAN] * len(statements)
        planner = self._planner(statements)
        if not isinstance(planner, Planner):
            return planner
        remembered = self._remembered
        plans: list[ResultPlan] = []
        texts: list[str | None] | None = None
        for index, statement in enumerate(statements):
            known = remembered.get(id(statement))
            if known is not None and known[0] is statement and known[1] is planner:
                plans.append(known[2])
                continue
            if texts is None:
                texts = _texts(text, len(statements))
            single = len(statements) == 1
            planned = self._plan_one(planner, statement, texts[index], key if single else None)
            if isinstance(planned, Decision):
                return planned
            # Shared Statement objects stand for one normalized text (the classifier's cache), so a plan
            # made from that text, or one needing no text, holds for every later use of the object.
            if planned is NO_PLAN or (single and key is not None and planner.cached(statement, key) is planned):
                if len(remembered) >= _REMEMBERED_LIMIT:
                    remembered.clear()
                remembered[id(statement)] = (statement, planner, planned)
            plans.append(planned)
        return plans

    def plan_parse(self, statement: Statement, text: str | None, key: str | None) -> ResultPlan | Decision | Wait:
        planned = self.plan_query((statement,), text, key)
        return planned[0] if isinstance(planned, list) else planned

    # -- what the gate calls ---------------------------------------------------------------------
    def screen_query(
        self,
        statements: tuple[Statement, ...],
        text: str | Statement,
        key: str | None,
        decision: Decision | None,
    ) -> tuple[tuple[Statement, ...], list[ResultPlan] | None, Decision | None] | Wait:
        """A Query's statements (PREPAREs carrying their plans), their plans, and the decision: the
        policy's, or masking's refusal of a statement the policy lets run (or hold)."""
        if decision is not None and decision.effect is not Effect.REQUIRE_APPROVAL:
            return statements, None, decision
        if len(statements) == 1 and (known := self._known(statements[0])) is not None:
            return statements, [known], decision  # planned before, nothing changed since: the hot path
        planned = self.plan_query(statements, text if isinstance(text, str) else None, key)
        if isinstance(planned, Wait):
            return planned
        if isinstance(planned, Decision):
            return statements, None, planned
        return self.attach_prepared(statements, planned), planned, decision

    def screen_parse(
        self, meaning: Statement, text: str | Statement, key: str | None, decision: Decision | None
    ) -> tuple[Statement, Decision | None] | Wait:
        """A Parse's statement carrying its plan (for later Binds and Describes), and the decision."""
        if decision is not None and decision.effect is not Effect.REQUIRE_APPROVAL:
            return meaning, decision
        known = self._known(meaning)
        planned = known if known is not None else self.plan_parse(meaning, text if isinstance(text, str) else None, key)
        if isinstance(planned, Wait):
            return planned
        if isinstance(planned, Decision):
            return meaning, planned
        if planned is NO_PLAN:
            return meaning, decision  # no need to carry a plan (see ``_prepared_result``)
        return replace(meaning, result=PreparedResult(planned)), decision

    def _prepared_result(self, statement: Statement) -> PreparedResult | None:
        """The plan a prepared statement carries. Statements that needed none carry none (attaching one
        means copying the Statement, at every Parse): they are checked again against the current catalog
        and masks, since a reload may have masked a relation they read (then: None, every column nulled)."""
        held = statement.result
        if isinstance(held, PreparedResult):
            return held
        current = self._current
        if current is None or statement.category is Category.PROCEDURAL:
            return None
        planner = current[2]
        checked = self._checked.get(id(statement))
        if checked is not None and checked[0] is statement and checked[1] is planner:
            return checked[2]
        found = None if planner.unknown(statement) or planner.reads_masked_relation(statement) else NO_PLAN_RESULT
        if len(self._checked) >= _REMEMBERED_LIMIT:
            self._checked.clear()
        self._checked[id(statement)] = (statement, planner, found)
        return found

    def screen_call(self, call: Statement, decision: Decision | None) -> Decision | None:
        """A fast-path FunctionCall: code pgproxy cannot trace, refused while masks apply to the session."""
        if decision is not None or not self.masks:
            return decision
        return _masking_denial(call, "it calls a function by OID, whose results pgproxy cannot trace to columns")

    def bind(self, portal: str, statement: Statement | None, data: bytes, start: int, end: int) -> None:
        """A Bind went upstream (``statement`` None: a stand-in that fails)."""
        prepared = self._prepared_result(statement) if statement is not None else None
        # Result formats matter only for rows that may be masked.
        formats = bind_result_formats(data, start, end) if prepared is None or prepared.plan is not NO_PLAN else ()
        self.results.bind(portal, prepared, formats)

    def describe(self, of_statement: bool, name: str, statement: Statement | None) -> None:
        """A Describe went upstream: of a prepared statement (``statement``, its meaning) or a portal."""
        if of_statement:
            self.results.describe_statement(self._prepared_result(statement) if statement is not None else None)
        else:
            self.results.describe_portal(name)

    def _known(self, statement: Statement) -> ResultPlan | None:
        """The remembered plan of ``statement`` if the catalog reading and the policy are unchanged."""
        known = self._remembered.get(id(statement))
        current = self._current
        if (
            known is None or known[0] is not statement or current is None or known[1] is not current[2]
            or current[1] != self._policies.version or current[0] is not self._catalogs.snapshot(self.database)
            or self._catalogs.stale(self.database)
        ):
            return None
        return known[2]

    def _planner(self, statements: Sequence[Statement]) -> Planner | Decision | Wait:
        snapshot = self._catalogs.snapshot(self.database)
        current = self._current
        if (
            current is not None and current[0] is snapshot and current[1] == self._policies.version
            and not self._catalogs.stale(self.database)
            and all(self._remembered.get(id(s), (None,))[0] is s for s in statements)
        ):
            return current[2]  # the common case: nothing changed and every statement was planned before
        needs_tables = any(statement.relations for statement in statements)
        if snapshot is None or self._catalogs.stale(self.database):
            if self.catalog_failed:
                if needs_tables or snapshot is None:
                    self.catalog_failed = False  # the next statement tries to read the catalog again
                    return _catalog_outage(statements[0])
            else:
                self.wants_catalog = True
                return WAIT
        assert snapshot is not None
        planner = self._registry.planner(snapshot, self.masks, self._policies.version, self._search_path(snapshot))
        self._current = (snapshot, self._policies.version, planner)
        self.results.catalog = planner.catalog
        if not self.catalog_failed:
            unknown = {str(r) for s in statements for r in planner.unknown(s)} - self._retried
            if unknown:
                # A relation created since the catalog was read (perhaps a view over masked columns):
                # read it again once before deciding; names that still do not exist go to the server.
                self._retried |= unknown
                self._catalogs.invalidate(self.database)
                self.wants_catalog = True
                return WAIT
        return planner

    def _search_path(self, snapshot: CatalogSnapshot) -> tuple[str, ...]:
        return snapshot.search_path(self._login_role)

    def _plan_one(
        self, planner: Planner, statement: Statement, text: str | None, key: str | None
    ) -> ResultPlan | Decision:
        if statement.command == "EXECUTE" and statement.prepared is not None:
            # SQL EXECUTE: the prepared statement was planned when it was prepared.
            prepared = statement.prepared.result
            inner = prepared.plan if isinstance(prepared, PreparedResult) else None
            return ResultPlan(reads_masked=True, cursor_plan=inner or _UNPLANNED_EXECUTE)
        unknown = planner.unknown(statement)
        if unknown:
            names = ", ".join(sorted(str(relation) for relation in unknown))
            return _masking_denial(
                statement,
                f"pgproxy's catalog does not know {names} (a temporary object, or one just created elsewhere),"
                " so it cannot tell whether masked columns are behind it",
            )
        planned = planner.plan(statement, key or text)
        if isinstance(planned, Refused) and key is not None and text is not None and key != text:
            planned = planner.plan(statement, text)  # the normalized text may not trace where the text does
        if isinstance(planned, Refused):
            return _masking_denial(statement, planned.reason)
        return planned

    def attach_prepared(self, statements: tuple[Statement, ...], plans: Sequence[ResultPlan]) -> tuple[Statement, ...]:
        """PREPARE statements carry their plan to later EXECUTEs (through the prepared-statement table)."""
        if not any(s.command == "PREPARE" and s.prepared is not None for s in statements):
            return statements
        return tuple(
            replace(s, prepared=replace(s.prepared, result=PreparedResult(plan)))
            if s.command == "PREPARE" and s.prepared is not None
            else s
            for s, plan in zip(statements, plans, strict=True)
        )

    def after_statements(self, statements: Sequence[Statement]) -> None:
        """Statements went upstream; one that may change the catalog makes the reading stale once its
        transaction ends (before that, other sessions — the catalog's reader too — cannot see it)."""
        for statement in statements:
            if statement.category in _CATALOG_CHANGING:
                self._catalog_changed = True

    def ready(self, status: str) -> None:
        """ReadyForQuery with transaction ``status``."""
        if self._catalog_changed and status == "I":
            self._catalog_changed = False
            if self.masks:
                self._catalogs.invalidate(self.database)


_UNPLANNED_EXECUTE = ResultPlan(reads_masked=True)
NO_PLAN_RESULT = PreparedResult(NO_PLAN)  # shared: a NO_PLAN statement's columns are never recorded
_REMEMBERED_LIMIT = 4096


def bind_result_formats(data: bytes, start: int, end: int) -> tuple[int, ...]:
    """The result-column format codes of a Bind message body ``data[start:end]``."""
    at = data.index(b"\x00", start, end) + 1  # portal
    at = data.index(b"\x00", at, end) + 1  # statement
    (count,) = _unpack_h(data, at)
    at += 2 + 2 * count
    (count,) = _unpack_h(data, at)
    at += 2
    for _ in range(count):
        (length,) = _unpack_i(data, at)
        at += 4 + max(length, 0)
    (count,) = _unpack_h(data, at)
    at += 2
    return tuple(_unpack_h(data, at + 2 * index)[0] for index in range(count))


def _texts(text: str | None, count: int) -> list[str | None]:
    parts = statement_texts(text, count) if text is not None else None
    return [None] * count if parts is None else list(parts)


def _masking_denial(statement: Statement, reason: str) -> Decision:
    return Decision(
        Effect.DENY, MASKING_RULE, f"pgproxy refused {statement.command}: {reason}", _HINT, None, False, statement
    )


def _catalog_outage(statement: Statement) -> Decision:
    return Decision(
        Effect.DENY,
        CATALOG_OUTAGE_RULE,
        "pgproxy cannot read the database catalog it masks columns with, so it runs no statement that reads tables",
        "retry shortly; pgproxy reads the catalog again on the next statement",
        None,
        False,
        statement,
    )
