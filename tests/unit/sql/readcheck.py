"""An independent statement of the read allow-list, to check the classifier against.

It walks pglast's JSON on its own (a plain generic walk, no node typing, none of the classifier's code)
and answers one question: may this statement be a read? It shares only data with the classifier (the
lists of safe function and operator names), never a decision.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pgproxy.sql.functions import (
    DANGER,
    SAFE_FUNCTIONS,
    SAFE_OPERATORS,
    SAFE_QUALIFIED,
    SAFE_TABLESAMPLE_METHODS,
    SERVER_FILE_FUNCTIONS,
)

_WRITES = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})


def _pairs(root: Any) -> Iterator[tuple[str, Any]]:
    stack = [root]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            for key, child in value.items():
                yield key, child
                stack.append(child)
        elif isinstance(value, list):
            stack.extend(value)


def _name(items: Any) -> list[str]:
    return [item["String"]["sval"] for item in items]


def _builtin(name: list[str]) -> bool:
    return len(name) == 1 or (len(name) == 2 and name[0] == "pg_catalog")


def _safe_call(call: dict[str, Any]) -> bool:
    name = _name(call["funcname"])
    base = name[-1]
    if ".".join(name) in SAFE_QUALIFIED:
        return True
    if not _builtin(name) or base not in SAFE_FUNCTIONS or base in DANGER or base in SERVER_FILE_FUNCTIONS:
        return False
    return not (base == "ts_rewrite" and len(call.get("args", [])) == 2)


def _safe_field_selections(indirection: dict[str, Any]) -> bool:
    """`(expr).name` may be a call of the one-argument function `name`: safe only if such a call would be."""
    for element in indirection.get("indirection", []):
        if "String" in element:
            call = {"funcname": [element], "args": [indirection.get("arg")]}
            if not _safe_call(call):
                return False
    return True


def _safe_operator(items: Any) -> bool:
    name = _name(items)
    return _builtin(name) and name[-1] in SAFE_OPERATORS


def _explicitly_false(arg: Any) -> bool:
    if arg is None:
        return False
    ((kind, value),) = arg.items()
    if kind == "String":
        return str(value.get("sval", "")).lower() in ("off", "false")
    if kind == "Integer":
        return bool(value.get("ival", 0) == 0)
    if kind == "Boolean":
        return not value.get("boolval", False)
    return False


def may_be_read(kind: str, node: dict[str, Any]) -> bool:
    """Whether the statement ``{kind: node}`` satisfies the read allow-list."""
    if kind in ("VariableShowStmt", "FetchStmt", "ClosePortalStmt"):
        return True
    if kind == "ExplainStmt":
        for option in node.get("options", []):
            element = option["DefElem"]
            if element["defname"] == "analyze" and not _explicitly_false(element.get("arg")):
                return False
    if kind in ("ExplainStmt", "DeclareCursorStmt", "PrepareStmt"):
        ((inner_kind, inner),) = node["query"].items()
        return may_be_read(inner_kind, inner)
    if kind != "SelectStmt":
        return False
    for key, value in _pairs(node):
        if key in _WRITES or key in ("intoClause", "ExecuteStmt"):
            return False
        if key == "lockingClause" and value:
            return False
        if key == "FuncCall" and not _safe_call(value):
            return False
        if key == "A_Indirection" and not _safe_field_selections(value):
            return False
        if key == "A_Expr" and not _safe_operator(value["name"]):
            return False
        if key == "SubLink" and value.get("operName") and not _safe_operator(value["operName"]):
            return False
        if key == "SortBy" and value.get("useOp") and not _safe_operator(value["useOp"]):
            return False
        if key == "RangeTableSample":
            method = _name(value["method"])
            if not (_builtin(method) and method[-1] in SAFE_TABLESAMPLE_METHODS):
                return False
    return True
