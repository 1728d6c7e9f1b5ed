"""The masking plan of one statement, made before it is forwarded: mask these outputs, or refuse it.

For a session with masks, every statement is checked against the masked catalog before it runs:
- statements PostgreSQL could use to move masked values where pgproxy cannot see them are refused:
  procedural code (DO, CALL, user-defined functions), search_path changes, reading a refused relation
  (an untraceable view over masked columns, the statistics views), writes that store masked values
  (``INSERT … SELECT email``, ``CREATE TABLE … AS``), filters on columns whose mask refuses predicates,
  and any statement reading a masked relation whose data flow ``lineage`` cannot trace;
- a statement reading a masked relation gets a rule per output column (the RowDescription it produces
  is checked against the catalog as well, see ``gate.results``), and the server's error texts for it
  are withheld (``SELECT email::int`` would otherwise print the value in the error);
- ``COPY … TO STDOUT`` gets its columns and COPY options; ``DECLARE``/``FETCH``/``CLOSE`` name cursors.
Everything else needs no plan (``NO_PLAN``).

Pure: no I/O and no protocol; plans are cached per masked catalog (they hold no literal values).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pgproxy.masking.guard import code_refusal, guarded_refusal
from pgproxy.masking.lineage import Unresolvable, inner_query, trace
from pgproxy.masking.resolve import MaskedCatalog, output_rule
from pgproxy.masking.rules import ColumnRule
from pgproxy.masking.snapshot import Relation as CatalogRelation
from pgproxy.sql.classify import classify_uncached, parse_tree
from pgproxy.sql.statement import Category, Flag, Relation, Statement

_PLAN_CACHE_LIMIT = 2048
_CURSOR_BINARY, _CURSOR_HOLD = 0x01, 0x20  # DeclareCursorStmt.options bits (PostgreSQL's parsenodes.h)
# Statements that send no rows and store no values. Views and materialized views store no values pgproxy
# would not mask: reading them is masked through their definitions (``resolve``).
_NO_DATA = frozenset({
    "EXPLAIN", "SHOW", "DEALLOCATE", "DEALLOCATE ALL", "CLOSE CURSOR", "MOVE", "DROP VIEW",
    "DROP MATERIALIZED VIEW",
})
# Defining a view stores no values (reading it is masked through its definition); a materialized view
# runs its query, so the server's errors are withheld.
_VIEWS = frozenset({"CREATE VIEW", "CREATE MATERIALIZED VIEW"})


@dataclass(frozen=True, slots=True)
class CopyPlan:
    """``COPY … TO STDOUT``: how its rows are written, and each column's rule and type (0: unknown)."""

    format: str  # text, csv or binary
    rules: tuple[ColumnRule | None, ...]
    types: tuple[int, ...]
    delimiter: str | None = None
    null: str | None = None
    quote: str | None = None
    escape: str | None = None
    header: bool = False
    encoding: str | None = None  # ENCODING option: the data's encoding, instead of the client's


@dataclass(frozen=True, slots=True)
class ResultPlan:
    """What pgproxy must do with the results of one statement."""

    columns: tuple[ColumnRule | None, ...] | None = None  # traced output rules; None: nothing to trace
    reads_masked: bool = False  # the statement reads a masked column: withhold the server's error texts
    copy: CopyPlan | None = None
    declares: str | None = None  # DECLARE: the cursor it opens (its query's plan is ``cursor_plan``)
    cursor_plan: ResultPlan | None = None
    holds: bool = False  # DECLARE … WITH HOLD: the cursor outlives its transaction
    binary: bool = False  # DECLARE BINARY: FETCH sends binary values even to simple queries
    fetches: str | None = None  # FETCH: the cursor whose rows it returns
    closes: str | None = None  # CLOSE: the cursor closed ("" for CLOSE ALL)

    @property
    def needed(self) -> bool:
        return self is not NO_PLAN


NO_PLAN = ResultPlan()


@dataclass(frozen=True, slots=True)
class Refused:
    """The statement may not run for this session; ``reason`` is shown to the client."""

    reason: str


class Planner:
    """Plans for the statements of sessions sharing one masked catalog and search path."""

    def __init__(self, catalog: MaskedCatalog, search_path: tuple[str, ...]) -> None:
        self.catalog = catalog
        self.search_path = search_path
        self._cache: OrderedDict[tuple[str, str], ResultPlan | Refused] = OrderedDict()
        # Name → relation for this reading and search path (a planner serves one reading: never stale).
        self._relations: dict[Relation, CatalogRelation | None] = {}

    def plan(self, statement: Statement, text: str | None) -> ResultPlan | Refused:
        """The plan for ``statement`` whose own text is ``text`` (None when pgproxy has no text for it)."""
        refusal = self._refusal(statement) or code_refusal(statement)
        if refusal is not None:
            return Refused(refusal)
        node = statement.node
        if node in ("FetchStmt", "ClosePortalStmt") and text is not None:
            return _cursor_plan(node, text)
        masked_reads = self._masked(statement.reads | statement.writes)
        if masked_reads and statement.unsafe_functions:
            called = ", ".join(sorted(statement.unsafe_functions))
            return Refused(f"it calls {called}, which could carry masked values where pgproxy does not mask them")
        if masked_reads and Flag.EXPLAIN_ANALYZE in statement.flags and self._guarded(masked_reads):
            return Refused("EXPLAIN ANALYZE counts the rows a filter on a column whose mask refuses predicates keeps")
        if not masked_reads or statement.command in _NO_DATA:
            return NO_PLAN if node != "DeclareCursorStmt" or text is None else self._declare(text, NO_PLAN)
        if text is None:
            return Refused("pgproxy cannot trace this statement's columns")
        key = (statement.command, text)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        planned = self._plan_masked(statement, text)
        self._cache[key] = planned
        if len(self._cache) > _PLAN_CACHE_LIMIT:
            self._cache.popitem(last=False)
        return planned

    # -- what is refused before tracing --------------------------------------------------------------
    def reads_masked_relation(self, statement: Statement) -> bool:
        return bool(self._masked(statement.reads | statement.writes))

    def cached(self, statement: Statement, text: str) -> ResultPlan | Refused | None:
        """The plan made for ``statement`` from ``text``, if it is still cached."""
        return self._cache.get((statement.command, text))

    def _guarded(self, relations: list[CatalogRelation]) -> bool:
        guarded = self.catalog.predicate_guarded
        return any(f"{r.qualified}.{c.name}" in guarded for r in relations for c in r.columns)

    def _refusal(self, statement: Statement) -> str | None:
        if statement.category is Category.PROCEDURAL:
            called = ", ".join(sorted(statement.unsafe_functions)) or statement.command
            return f"it runs code ({called}) whose results pgproxy cannot trace to columns, and masked columns exist"
        if statement.setting == "search_path" or "set_config" in statement.functions:
            return "changing search_path would re-point the names masking relies on"
        for relation in statement.relations:
            resolved = self._resolve(relation)
            if resolved is not None and (why := self.catalog.refused_relations.get(resolved)) is not None:
                return f"it reads {resolved[0]}.{resolved[1]}, which pgproxy cannot mask: {why}"
        return None

    def _lookup(self, relation: Relation) -> CatalogRelation | None:
        """The catalog relation a name means for this search path (remembered: every check asks again)."""
        try:
            return self._relations[relation]
        except KeyError:
            found = self.catalog.snapshot.relation(relation.schema, relation.name, self.search_path)
            if len(self._relations) >= _PLAN_CACHE_LIMIT:
                self._relations.clear()
            self._relations[relation] = found
            return found

    def _resolve(self, relation: Relation) -> tuple[str, str] | None:
        found = self._lookup(relation)
        return None if found is None else (found.schema, found.name)

    def _masked(self, relations: frozenset[Relation]) -> list[CatalogRelation]:
        masked = self.catalog.masked_relations
        found: list[CatalogRelation] = []
        for relation in relations:
            resolved = self._lookup(relation)
            if resolved is not None and (resolved.schema, resolved.name) in masked:
                found.append(resolved)
        return found

    def unknown(self, statement: Statement) -> list[Relation]:
        """Relations the statement reads that the catalog does not know (the caller may refresh it)."""
        return [r for r in statement.reads if self._resolve(r) is None]

    # -- tracing ------------------------------------------------------------------------------------
    def _plan_masked(self, statement: Statement, text: str) -> ResultPlan | Refused:
        node = statement.node
        try:
            if node == "CopyStmt":
                return self._copy(text)
            if statement.command in _VIEWS:
                inner = inner_query(text)
                if inner is None:
                    return Refused("pgproxy cannot find the query of this view")
                plan = self._trace(inner, _inner_statement(inner))
                if isinstance(plan, Refused):
                    return plan
                return NO_PLAN if statement.command == "CREATE VIEW" else ResultPlan(reads_masked=True)
            if statement.command == "REFRESH MATERIALIZED VIEW":
                return ResultPlan(reads_masked=True)
            if node == "DeclareCursorStmt":
                inner = inner_query(text)
                if inner is None:
                    return Refused("pgproxy cannot find the query of this DECLARE")
                plan = self._trace(inner, statement)
                return plan if isinstance(plan, Refused) else self._declare(text, plan)
            if node == "PrepareStmt":
                inner = inner_query(text)
                if inner is None:
                    return Refused("pgproxy cannot find the query of this PREPARE")
                return self._trace(inner, statement.prepared or statement)
            return self._trace(text, statement)
        except Unresolvable as exc:
            return Refused(f"it reads masked columns and {exc}")

    def _trace(self, text: str, statement: Statement) -> ResultPlan | Refused:
        tables = self._tables(statement.reads | statement.writes)
        traced = trace(text, tables, self.search_path, frozenset(self.catalog.rules))
        for relation in self._masked(statement.reads):
            if (relation.schema, relation.name) not in traced.tables:
                return Refused(f"pgproxy could not follow how {relation.qualified} is read")
        guarded = guarded_refusal(
            traced, self.catalog.predicate_guarded, text, statement, self.catalog.snapshot.set_returning
        )
        if guarded is not None:
            return Refused(guarded)
        if statement.category is not Category.READ:
            stored = sorted(traced.elsewhere - traced.predicates)
            if stored:
                return Refused(f"it would store values of masked column {', '.join(stored)} where they are not masked")
        rules = self.catalog.rules
        columns = tuple(output_rule(sources, rules) for sources in traced.outputs)
        reads_masked = any(column is not None for column in columns) or bool(traced.elsewhere & rules.keys())
        return ResultPlan(columns=columns, reads_masked=reads_masked)

    def _tables(self, relations: frozenset[Relation]) -> dict[tuple[str, str], list[tuple[str, str]]]:
        tables: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for relation in relations:
            found = self._lookup(relation)
            if found is not None:
                tables[(found.schema, found.name)] = [(c.name, str(c.type_oid)) for c in found.columns]
        return tables

    def _declare(self, text: str, inner: ResultPlan) -> ResultPlan:
        fields = _statement_fields(text, "DeclareCursorStmt")
        options = int(fields.get("options", 0))
        return ResultPlan(
            reads_masked=inner.reads_masked,
            declares=str(fields.get("portalname", "")),
            cursor_plan=inner,
            holds=bool(options & _CURSOR_HOLD),
            binary=bool(options & _CURSOR_BINARY),
        )

    def _copy(self, text: str) -> ResultPlan | Refused:
        fields = _statement_fields(text, "CopyStmt")
        if fields.get("is_from"):
            return NO_PLAN  # COPY FROM STDIN sends no rows back
        options = _copy_options(fields.get("options", []))
        relation = fields.get("relation")
        if relation is not None:
            found = self.catalog.snapshot.relation(relation.get("schemaname"), relation["relname"], self.search_path)
            if found is None:
                return Refused("pgproxy does not know the table this COPY reads")
            wanted = [item["String"]["sval"] for item in fields.get("attlist", [])]
            columns = [c for c in found.columns if not wanted or c.name in wanted]
            if wanted:
                columns.sort(key=lambda c: wanted.index(c.name))
            rules = tuple(self.catalog.rules.get(f"{found.qualified}.{c.name}") for c in columns)
            types = tuple(c.type_oid for c in columns)
        else:
            inner = inner_query(text)
            if inner is None:
                return Refused("pgproxy cannot find the query of this COPY")
            statements = _inner_statement(inner)
            plan = self._trace(inner, statements)
            if isinstance(plan, Refused):
                return plan
            rules = plan.columns or ()
            types = tuple(self._source_type(rule) for rule in rules)
        copy = CopyPlan(rules=rules, types=types, **options)
        return ResultPlan(columns=rules, reads_masked=any(rule is not None for rule in rules), copy=copy)

    def _source_type(self, rule: ColumnRule | None) -> int:
        """The type of a plainly copied masked column (its source's); 0 when computed or unmasked."""
        if rule is None or rule.derived:
            return 0
        schema, table, column = rule.source.split(".", 2)
        found = self.catalog.snapshot.by_name.get((schema, table))
        if found is None:
            return 0
        return next((c.type_oid for c in found.columns if c.name == column), 0)


def _inner_statement(text: str) -> Statement:
    statements = classify_uncached(text).statements
    return statements[0] if statements else Statement(Category.UNKNOWN, "?")


def _statement_fields(text: str, node: str) -> dict[str, Any]:
    stmts = parse_tree(text)["stmts"]
    fields: dict[str, Any] = stmts[0]["stmt"][node]
    return fields


def _cursor_plan(node: str, text: str) -> ResultPlan:
    fields = _statement_fields(text, node)
    name = str(fields.get("portalname", ""))
    if node == "ClosePortalStmt":
        return ResultPlan(closes=name)
    if fields.get("ismove"):
        return NO_PLAN
    return ResultPlan(fetches=name)


def _copy_options(options: list[dict[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {"format": "text"}
    for item in options:
        definition = item["DefElem"]
        name, arg = definition["defname"], definition.get("arg")
        value: Any = None
        if isinstance(arg, dict):
            if "String" in arg:
                value = arg["String"].get("sval", "")
            elif "Boolean" in arg:
                value = arg["Boolean"].get("boolval", False)
            elif "Integer" in arg:
                value = arg["Integer"].get("ival", 0)
        if name == "format":
            found["format"] = str(value).lower()
        elif name in ("delimiter", "null", "quote", "escape", "encoding"):
            found[name] = str(value)
        elif name == "header":
            # HEADER alone means true; HEADER MATCH only applies to COPY FROM.
            found["header"] = value is None or value in (True, 1) or str(value).lower() in ("true", "on", "1", "match")
        elif name == "csv":  # old syntax: COPY … CSV
            found["format"] = "csv"
        elif name == "binary":
            found["format"] = "binary"
    return found
