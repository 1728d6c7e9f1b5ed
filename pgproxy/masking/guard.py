"""What a session with masks may not do beyond reading masked values: create code, or ask questions about
columns whose mask refuses predicates.

- **Code.** A function, trigger, rule, policy, operator, cast or extension created by a masked session runs
  later, inside statements pgproxy traces as harmless (a trigger on an unmasked table can copy masked
  values anywhere; a ``public.lower(varchar)`` shadows the built-in for varchar columns). Creating or
  changing code is refused while masks apply.
- **Guarded columns** (``refuse_predicates: true``). Filtering is not the only way to ask "is the value
  X?": computing with the value (``CASE WHEN ssn LIKE '1%' …``, ``nullif``, a division that fails or not),
  comparing rows (``DISTINCT``, ``UNION``, ``INTERSECT``, ``EXCEPT``) and row counts of set-returning
  functions (``generate_series(1, CASE … END)``) answer it too. Such columns may only be *returned*
  (masked); every other use is refused.

Pure: works on lineage results and pglast's JSON; it must not load anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pglast.parser

from pgproxy.masking.lineage import Lineage
from pgproxy.sql.classify import parse_tree
from pgproxy.sql.statement import Statement

# Parser nodes that create or change code or what runs implicitly (functions, triggers, rules, …).
CODE_NODES = frozenset({
    "CreateFunctionStmt", "AlterFunctionStmt", "CreateTrigStmt", "RuleStmt", "CreateEventTrigStmt",
    "AlterEventTrigStmt", "DefineStmt", "CreateCastStmt", "CreatePolicyStmt", "AlterPolicyStmt",
    "CreateExtensionStmt", "AlterExtensionStmt", "AlterExtensionContentsStmt", "CreatePLangStmt",
    "CreateTransformStmt", "CreateConversionStmt", "CreateOpClassStmt", "CreateOpFamilyStmt", "AlterOpFamilyStmt",
    "CreateFdwStmt", "AlterFdwStmt", "CreateForeignServerStmt", "CreateUserMappingStmt", "CreateStatsStmt",
})


def code_refusal(statement: Statement) -> str | None:
    if statement.node in CODE_NODES:
        return (f"{statement.command} would add code that runs inside later statements, out of sight of masking;"
                " sessions with masked columns may not create or change code")
    if statement.command == "ALTER SCHEMA":
        # Masks name columns by schema: renaming one would move masked tables out from under their masks.
        return "ALTER SCHEMA could move masked tables away from the names their masks use"
    return None


def guarded_refusal(
    traced: Lineage, guarded: frozenset[str], text: str, statement: Statement, set_returning: frozenset[str]
) -> str | None:
    """Why the statement asks about a guarded column's values, or None."""
    if not guarded:
        return None
    derived = {key for sources in traced.outputs for key in sources.derived}
    used = sorted((traced.predicates | traced.elsewhere | derived) & guarded)
    if used:
        return (f"it filters, joins, groups, orders or computes with masked column {', '.join(used)},"
                " whose mask refuses predicates")
    returned = sorted({key for sources in traced.outputs for key in sources.plain} & guarded)
    if returned and compares_rows(text):
        return (f"it compares rows (DISTINCT, UNION, INTERSECT, EXCEPT) holding masked column {', '.join(returned)},"
                " whose mask refuses predicates")
    read = {f"{schema}.{table}" for schema, table in traced.tables}
    reads_guarded = any(key.rsplit(".", 1)[0] in read for key in guarded)
    series = sorted(name for name in statement.functions if name.rsplit(".", 1)[-1] in set_returning)
    if series and reads_guarded:
        return (f"it calls set-returning function {', '.join(series)}, whose row counts could answer a filter on a"
                " masked column whose mask refuses predicates")
    return None


def compares_rows(text: str) -> bool:
    """Whether any query level removes duplicates or combines rows by comparing them."""
    try:
        tree = parse_tree(text)
    except pglast.parser.ParseError:
        return True  # fail closed: the caller refuses
    for node in _select_statements(tree):
        op = node.get("op", "SETOP_NONE")
        if op in ("SETOP_INTERSECT", "SETOP_EXCEPT") or (op == "SETOP_UNION" and not node.get("all")):
            return True
        if node.get("distinctClause") is not None:
            return True
    return False


def _select_statements(tree: Any) -> Iterator[dict[str, Any]]:
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "SelectStmt" and isinstance(value, dict):
                    yield value
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
