"""What a held DDL statement will do to the database while it runs: the lock it takes, rewrites, scans.

Approvers decide faster and better when the request says "ACCESS EXCLUSIVE lock on orders (blocks
reads and writes while it runs); rewrites the table" rather than only showing the SQL. This module reads
the statement with PostgreSQL's own parser (pglast) and applies PostgreSQL 15's documented lock levels
(the ALTER TABLE, CREATE INDEX, REINDEX, VACUUM, CLUSTER, REFRESH MATERIALIZED VIEW and LOCK reference
pages) and the rules for when ALTER TABLE rewrites or scans a table. Where the answer depends on the
catalog (is a type change binary-compatible, is a default volatile) it says "may".

Pure: no catalog access and no I/O. It must never be used to decide anything — it informs humans.
"""

from __future__ import annotations

import json
from typing import Any

import pglast.parser

# PostgreSQL's table lock modes, weakest first, and what each blocks (for the approver).
_LOCKS = {
    "ACCESS SHARE": "blocks only ACCESS EXCLUSIVE",
    "ROW SHARE": "blocks EXCLUSIVE and ACCESS EXCLUSIVE",
    "ROW EXCLUSIVE": "blocks SHARE and stronger",
    "SHARE UPDATE EXCLUSIVE": "does not block reads or writes; blocks other schema changes and VACUUM",
    "SHARE": "blocks writes while it runs; reads continue",
    "SHARE ROW EXCLUSIVE": "blocks writes while it runs; reads continue",
    "EXCLUSIVE": "blocks writes while it runs; reads continue",
    "ACCESS EXCLUSIVE": "blocks reads and writes while it runs",
}
_ORDER = list(_LOCKS)

# ALTER TABLE subcommands that take less than ACCESS EXCLUSIVE (PostgreSQL 15, ALTER TABLE reference).
_SUBCOMMAND_LOCKS = {
    "AT_SetStatistics": "SHARE UPDATE EXCLUSIVE",
    "AT_SetOptions": "SHARE UPDATE EXCLUSIVE",
    "AT_ResetOptions": "SHARE UPDATE EXCLUSIVE",
    "AT_ClusterOn": "SHARE UPDATE EXCLUSIVE",
    "AT_DropCluster": "SHARE UPDATE EXCLUSIVE",
    "AT_ValidateConstraint": "SHARE UPDATE EXCLUSIVE",
    "AT_AttachPartition": "SHARE UPDATE EXCLUSIVE",
    "AT_EnableTrig": "SHARE ROW EXCLUSIVE",
    "AT_DisableTrig": "SHARE ROW EXCLUSIVE",
    "AT_EnableTrigAll": "SHARE ROW EXCLUSIVE",
    "AT_DisableTrigAll": "SHARE ROW EXCLUSIVE",
    "AT_EnableTrigUser": "SHARE ROW EXCLUSIVE",
    "AT_DisableTrigUser": "SHARE ROW EXCLUSIVE",
}
_REWRITES = {"AT_SetLogged", "AT_SetUnLogged", "AT_SetAccessMethod"}
_VOLATILE_DEFAULTS = {"random", "gen_random_uuid", "uuid_generate_v4", "nextval", "clock_timestamp", "timeofday"}
# Stable functions: evaluated once for the whole ALTER, so the default is stored once, not per row.
_STABLE_DEFAULTS = {"now", "statement_timestamp", "transaction_timestamp", "current_setting"}
_SERIAL_TYPES = {"serial", "serial4", "bigserial", "serial8", "smallserial", "serial2"}


def describe_impact(sql: str) -> str | None:
    """A sentence on the locks, rewrites and scans of ``sql``'s statements; None when there is nothing to say."""
    try:
        statements = json.loads(pglast.parser.parse_sql_json(sql)).get("stmts", [])
    except Exception:
        return None
    parts = [part for raw in statements if (part := _statement_impact(raw.get("stmt", {}))) is not None]
    return "; ".join(parts) if parts else None


def _statement_impact(node: dict[str, Any]) -> str | None:
    if len(node) != 1:
        return None
    kind, fields = next(iter(node.items()))
    if kind == "AlterTableStmt":
        return _alter_table(fields)
    if kind == "IndexStmt":
        if fields.get("concurrent"):
            return _lock("SHARE UPDATE EXCLUSIVE", fields) + "; builds the index in two passes without blocking writes"
        return _lock("SHARE", fields) + "; builds the index in one pass"
    if kind == "DropStmt":
        objects = fields.get("removeType", "").removeprefix("OBJECT_").lower().replace("_", " ")
        return f"ACCESS EXCLUSIVE lock ({_LOCKS['ACCESS EXCLUSIVE']}); drops the {objects} and its data for good"
    if kind == "TruncateStmt":
        return _lock("ACCESS EXCLUSIVE", fields) + "; removes every row"
    if kind == "ClusterStmt":
        return _lock("ACCESS EXCLUSIVE", fields) + "; rewrites the table"
    if kind == "VacuumStmt":
        full = any(_defname(option) == "full" for option in fields.get("options", []))
        if full:
            return _lock("ACCESS EXCLUSIVE", fields) + "; rewrites the table"
        return None
    if kind == "ReindexStmt":
        if any(_defname(option) == "concurrently" for option in fields.get("params", [])):
            return _lock("SHARE UPDATE EXCLUSIVE", fields) + "; rebuilds indexes without blocking writes"
        return "SHARE lock on the table (blocks writes) and ACCESS EXCLUSIVE on its indexes while they are rebuilt"
    if kind == "RefreshMatViewStmt":
        mode = "EXCLUSIVE" if fields.get("concurrent") else "ACCESS EXCLUSIVE"
        return _lock(mode, fields) + "; recomputes the materialized view"
    if kind in ("RenameStmt", "AlterObjectSchemaStmt"):
        return _lock("ACCESS EXCLUSIVE", fields)
    if kind == "CreateTrigStmt":
        return _lock("SHARE ROW EXCLUSIVE", fields)
    if kind == "LockStmt":
        mode = _lock_mode_name(fields.get("mode", 8))
        return f"{mode} lock ({_LOCKS[mode]}) held until the transaction ends"
    if kind in ("GrantStmt", "GrantRoleStmt", "CreateRoleStmt", "AlterRoleStmt", "DropRoleStmt"):
        return "changes privileges; takes no table lock"
    return None


def _alter_table(fields: dict[str, Any]) -> str:
    strongest = "SHARE UPDATE EXCLUSIVE"
    rewrite: str | None = None
    scans = False
    for item in fields.get("cmds", []):
        command = item.get("AlterTableCmd", {})
        subtype = command.get("subtype", "")
        mode = _SUBCOMMAND_LOCKS.get(subtype, "ACCESS EXCLUSIVE")
        definition = command.get("def") or {}
        constraint = definition.get("Constraint", {})
        if subtype == "AT_AddConstraint" and constraint.get("contype") == "CONSTR_FOREIGN":
            mode = "SHARE ROW EXCLUSIVE"
        if _ORDER.index(mode) > _ORDER.index(strongest):
            strongest = mode
        if subtype in _REWRITES:
            rewrite = "rewrites the table"
        elif subtype == "AT_AlterColumnType" and rewrite is None:
            rewrite = "may rewrite the table (unless the type change is binary-compatible)"
        elif subtype == "AT_AddColumn":
            rewrite = _added_column_rewrite(definition.get("ColumnDef", {})) or rewrite
        elif subtype in ("AT_SetNotNull", "AT_ValidateConstraint") or (
            subtype == "AT_AddConstraint"
            and constraint.get("contype") in ("CONSTR_CHECK", "CONSTR_FOREIGN")
            and not constraint.get("skip_validation")
        ):
            scans = True
    text = _lock(strongest, fields)
    if rewrite:
        text += f"; {rewrite}"
    if scans:
        text += "; scans every row to check it"
    return text


def _added_column_rewrite(column: dict[str, Any]) -> str | None:
    names = [part.get("String", {}).get("sval", "") for part in column.get("typeName", {}).get("names", [])]
    if names and names[-1] in _SERIAL_TYPES:
        return "rewrites the table (a serial column fills every row)"
    for item in column.get("constraints", []):
        constraint = item.get("Constraint", {})
        if constraint.get("contype") != "CONSTR_DEFAULT":
            continue
        calls = _function_names(constraint.get("raw_expr"))
        if calls & _VOLATILE_DEFAULTS:
            return "rewrites the table (a volatile default is computed for every row)"
        if calls - _STABLE_DEFAULTS:
            return "may rewrite the table (if the default is volatile)"
    return None


def _function_names(node: object) -> set[str]:
    names: set[str] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            call = current.get("FuncCall")
            if isinstance(call, dict):
                parts = call.get("funcname", [])
                if parts:
                    names.add(str(parts[-1].get("String", {}).get("sval", "")))
            stack.extend(current.values())
        elif isinstance(current, list):
            stack.extend(current)
    return names


def _lock(mode: str, fields: dict[str, Any]) -> str:
    relation = fields.get("relation") or {}
    name = relation.get("relname")
    schema = relation.get("schemaname")
    where = f" on {schema + '.' if schema else ''}{name}" if name else ""
    return f"{mode} lock{where} ({_LOCKS[mode]})"


def _defname(option: dict[str, Any]) -> str:
    return str(option.get("DefElem", {}).get("defname", "")).lower()


def _lock_mode_name(mode: int) -> str:
    # PostgreSQL's LOCKMODE numbers: 1 AccessShare … 8 AccessExclusive.
    index = min(max(int(mode), 1), 8) - 1
    return _ORDER[index]
