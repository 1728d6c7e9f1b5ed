"""Walk pglast's JSON parse tree of one statement and collect what it touches.

``collect`` visits every node below a statement without recursion (an explicit stack, so no nesting
depth can exhaust Python's stack) and records relations read and written, every function, operator and
TABLESAMPLE method called, SELECT … INTO, locking clauses and data-modifying statements. It decides
nothing: ``classify`` turns these facts into a category. It must stay exhaustive: a JSON shape it cannot
type is reported in ``Facts.odd`` so the statement fails closed, never silently skipped.

libpg_query writes ``Node *`` fields wrapped (``{"RangeVar": {...}}``) and fields of a specific node
type bare (``"relation": {...}``); the bare ones are typed from pglast's own struct metadata. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pglast.ast

from pgproxy.sql.statement import Relation

Fields = dict[str, Any]


def _struct_tables() -> tuple[frozenset[str], dict[str, dict[str, str]]]:
    names = {
        name for name, cls in vars(pglast.ast).items() if isinstance(cls, type) and issubclass(cls, pglast.ast.Node)
    }
    typed: dict[str, dict[str, str]] = {}
    for name in names:
        slots = getattr(getattr(pglast.ast, name), "__slots__", None)
        if not isinstance(slots, dict):
            continue
        for slot, info in slots.items():
            child = info.c_type.rstrip("*")
            if child in names and child not in ("Node", "Expr"):
                typed.setdefault(name, {})[slot] = child
    return frozenset(names | {"List"}), typed


NODE_TYPES, TYPED_FIELDS = _struct_tables()
_NO_FIELDS: dict[str, str] = {}

# Leaves that can hold nothing of interest (constants, parameters, names).
_LEAVES = frozenset({"A_Const", "String", "Integer", "Float", "Boolean", "BitString", "ParamRef", "A_Star"})
DML = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})
_WITH_CLAUSE = DML | {"SelectStmt"}

# Fields that name a relation the statement creates, changes or attaches to (written); every other
# RangeVar is read. COPY's relation is written only by COPY FROM (handled in ``collect``).
WRITE_FIELDS: dict[str, tuple[str, ...]] = {
    "InsertStmt": ("relation",),
    "UpdateStmt": ("relation",),
    "DeleteStmt": ("relation",),
    "MergeStmt": ("relation",),
    "IntoClause": ("rel",),
    "CreateStmt": ("relation", "inhRelations"),
    "ViewStmt": ("view",),
    "IndexStmt": ("relation",),
    "AlterTableStmt": ("relation",),
    "PartitionCmd": ("name",),
    "RenameStmt": ("relation",),
    "AlterObjectSchemaStmt": ("relation",),
    "AlterObjectDependsStmt": ("relation",),
    "AlterOwnerStmt": ("relation",),
    "TruncateStmt": ("relations",),
    "CreateSeqStmt": ("sequence",),
    "AlterSeqStmt": ("sequence",),
    "RefreshMatViewStmt": ("relation",),
    "CreateTrigStmt": ("relation",),
    "RuleStmt": ("relation",),
    "CreatePolicyStmt": ("table",),
    "AlterPolicyStmt": ("table",),
    "CompositeTypeStmt": ("typevar",),
    "ColumnDef": ("identitySequence",),
    "GrantStmt": ("objects",),
}


# Node types ``collect`` looks at (every other node is only descended into).
_NOTED = (
    frozenset(WRITE_FIELDS)
    | DML
    | {
        "RangeVar",
        "FuncCall",
        "A_Expr",
        "A_Indirection",
        "SubLink",
        "SortBy",
        "RangeTableSample",
        "SelectStmt",
        "CopyStmt",
    }
)


@dataclass(slots=True)
class Facts:
    """What one statement's tree touches."""

    reads: set[Relation] = field(default_factory=set)
    writes: set[Relation] = field(default_factory=set)
    functions: list[tuple[tuple[str, ...], int]] = field(default_factory=list)  # (name parts, argument count)
    operators: list[tuple[str, ...]] = field(default_factory=list)
    samplers: list[tuple[str, ...]] = field(default_factory=list)  # TABLESAMPLE methods
    into: bool = False  # SELECT … INTO somewhere
    locking: bool = False  # FOR UPDATE / SHARE somewhere
    dml: int = 0  # INSERT/UPDATE/DELETE/MERGE nodes, the statement itself included
    odd: str | None = None  # a JSON shape the walker could not type: fail closed


NOT_A_NAME = "\x00"  # stands for a part that is not a String node: matches no allow-listed name


def names_of(items: Any) -> tuple[str, ...]:
    """``[{"String": {"sval": "a"}}, …]`` → ``("a", …)``; other nodes give ``NOT_A_NAME``."""
    parts: list[str] = []
    for item in items or ():
        string = item.get("String") if isinstance(item, dict) else None
        parts.append(string.get("sval", "") if isinstance(string, dict) else NOT_A_NAME)
    return tuple(parts)


def relation_of(fields: Fields) -> Relation:
    return Relation(fields.get("schemaname") or None, fields.get("relname", ""))


def unwrap(value: Any) -> tuple[str, Fields] | None:
    """``{"Type": {...}}`` → ``("Type", {...})``; None when ``value`` is not a wrapped node."""
    if isinstance(value, dict) and len(value) == 1:
        ((kind, fields),) = value.items()
        if kind in NODE_TYPES and isinstance(fields, dict):
            return kind, fields
    return None


def _mark(value: Any, marked: set[int]) -> None:
    """Remember the RangeVar(s) at ``value`` (bare, wrapped, or a list of them) as written."""
    for item in value if isinstance(value, list) else (value,):
        if isinstance(item, dict):
            inner = item.get("RangeVar", item)
            marked.add(id(inner))


def collect(kind: str, fields: Fields) -> Facts:
    """Walk the tree of node ``kind`` with ``fields``; never recurses."""
    facts = Facts()
    written: set[int] = set()
    empty: frozenset[str] = frozenset()
    stack: list[tuple[str, Fields, frozenset[str]]] = [(kind, fields, empty)]
    push = stack.append
    while stack:
        kind, node, ctes = stack.pop()
        if kind in _NOTED:
            if kind == "RangeVar":
                _note_relation(node, ctes, written, facts)
                continue
            _note(kind, node, written, facts)
            if kind in _WITH_CLAUSE and node.get("withClause"):
                ctes = _push_ctes(node["withClause"], ctes, stack, facts)
                if facts.odd:
                    return facts
        typed = TYPED_FIELDS.get(kind, _NO_FIELDS)
        for name, value in node.items():
            value_type = type(value)
            if value_type is dict:
                if len(value) == 1:
                    ((child_kind, child),) = value.items()
                    if child_kind in NODE_TYPES and type(child) is dict:
                        if child_kind not in _LEAVES:
                            push((child_kind, child, ctes))
                        continue
                if name == "withClause" and kind in _WITH_CLAUSE:
                    continue  # pushed above, with the scope of its names
                child_type = typed.get(name)
                if child_type is None:
                    facts.odd = f"unexpected parse tree shape at {kind}.{name}"
                    return facts
                if child_type not in _LEAVES:
                    push((child_type, value, ctes))
            elif value_type is list:
                for item in value:
                    if type(item) is dict and len(item) == 1:
                        ((child_kind, child),) = item.items()
                        if child_kind in NODE_TYPES and type(child) is dict:
                            if child_kind not in _LEAVES:
                                push((child_kind, child, ctes))
                            continue
                    if item == {}:
                        continue  # a NULL in a list (SELECT DISTINCT's marker)
                    facts.odd = f"unexpected parse tree shape in {kind}.{name}"
                    return facts
    return facts


def _note_relation(node: Fields, ctes: frozenset[str], written: set[int], facts: Facts) -> None:
    relation = relation_of(node)
    if id(node) in written:
        facts.writes.add(relation)
    elif relation.schema is None and not node.get("catalogname") and relation.name in ctes:
        pass  # a reference to a WITH query in scope, not a table
    else:
        facts.reads.add(relation)


def _note(kind: str, node: Fields, written: set[int], facts: Facts) -> None:
    """Record what node ``kind`` says about the statement (calls, clauses, written relations)."""
    if kind == "FuncCall":
        facts.functions.append((names_of(node.get("funcname")), len(node.get("args") or ())))
    elif kind == "A_Indirection":
        # `(expr).name` selects a field — or calls the one-argument function `name` on expr
        # (functional notation), which the server picks when expr has no such field: judge it as a call.
        for element in node.get("indirection") or ():
            string = element.get("String") if isinstance(element, dict) else None
            if isinstance(string, dict):
                facts.functions.append(((string.get("sval", ""),), 1))
    elif kind == "A_Expr":
        facts.operators.append(names_of(node.get("name")))
    elif kind == "SubLink" and node.get("operName"):
        facts.operators.append(names_of(node.get("operName")))
    elif kind == "SortBy" and node.get("useOp"):
        facts.operators.append(names_of(node.get("useOp")))
    elif kind == "RangeTableSample":
        facts.samplers.append(names_of(node.get("method")))
    elif kind == "SelectStmt":
        facts.into = facts.into or "intoClause" in node
        facts.locking = facts.locking or bool(node.get("lockingClause"))
    elif kind in DML:
        facts.dml += 1
    elif kind == "CopyStmt" and node.get("is_from"):
        _mark(node.get("relation"), written)
    for name in WRITE_FIELDS.get(kind, ()):
        if name in node:
            _mark(node[name], written)


def _push_ctes(
    with_clause: Fields, outer: frozenset[str], stack: list[tuple[str, Fields, frozenset[str]]], facts: Facts
) -> frozenset[str]:
    """Push each WITH query with the names it can see; return the names the statement body sees."""
    entries: list[Fields] = []
    for item in with_clause.get("ctes") or ():
        wrapped = unwrap(item)
        if wrapped is None or wrapped[0] != "CommonTableExpr":
            facts.odd = "unexpected parse tree shape in WITH"
            return outer
        entries.append(wrapped[1])
    names = [entry.get("ctename", "") for entry in entries]
    body = outer | frozenset(names)
    recursive = bool(with_clause.get("recursive"))
    for index, entry in enumerate(entries):
        # WITH RECURSIVE: every query sees every name; otherwise only the queries before it.
        stack.append(("CommonTableExpr", entry, body if recursive else outer | frozenset(names[:index])))
    return body
