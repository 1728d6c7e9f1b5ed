"""How many rows a held write would touch, as PostgreSQL's planner estimates it: "estimated 1,204 rows".

For an UPDATE, DELETE, INSERT … SELECT or MERGE the approver is told the planner's row estimate, read
from ``EXPLAIN (FORMAT JSON)`` (without ANALYZE, so the statement is planned, never executed). The
EXPLAIN runs on a connection of its own, inside ``BEGIN READ ONLY`` … ``ROLLBACK``, as the session's
upstream role (``SET LOCAL ROLE``) so the planner sees what the session sees and a table the role may
not read gives no estimate, and under ``SET LOCAL statement_timeout``.

Only texts without ``$n`` parameters are explained (a parameterised statement cannot be planned without
its values), and only a single write statement: the text is parsed with PostgreSQL's own parser
(pglast), then ``EXPLAIN (FORMAT JSON)`` followed by the text is parsed again and must be exactly one
EXPLAIN of that kind of statement, with no other option. It is sent with the extended protocol, which
refuses several statements too. Any error or timeout gives None (logged at debug level): the estimate
informs humans and must never decide anything, nor delay the request beyond ``timeout``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pglast.parser

__all__ = ["estimate_rows", "write_kind"]

log = logging.getLogger(__name__)

_EXPLAIN = "EXPLAIN (FORMAT JSON) "


def write_kind(sql: str) -> str | None:
    """The parse-tree kind of ``sql`` if it is one write whose rows can be estimated, else None.

    One of ``UpdateStmt``, ``DeleteStmt``, ``InsertStmt`` (with a SELECT) or ``MergeStmt``; None for
    several statements, a text with ``$n`` parameters, other commands or text that does not parse.
    """
    statements = _parse(sql)
    if statements is None or len(statements) != 1 or _has_parameters(statements):
        return None
    return _write_kind(statements[0].get("stmt", {}))


async def estimate_rows(
    connect: Callable[[], Awaitable[asyncpg.Connection]],
    sql: str,
    *,
    role: str | None,
    timeout: float = 2.0,  # noqa: ASYNC109 -- also sent to the server as statement_timeout
) -> str | None:
    """The planner's row estimate for the write ``sql``, "estimated N rows (planner estimate)", or None.

    ``connect`` opens a connection to the session's database (closed here afterwards); ``role`` is the
    session's upstream role (None: the connection's own). Never raises, except when cancelled; returns
    within about ``timeout`` seconds, connecting included.
    """
    kind = write_kind(sql)
    if kind is None or not _is_plain_explain(_EXPLAIN + sql, kind):
        return None
    try:
        async with asyncio.timeout(timeout):
            plan = await _explain(connect, sql, role, max(1, int(timeout * 1000)))
    except Exception as exc:  # any failure (permission, syntax, timeout, connection) means: no estimate
        log.debug("no row estimate for %.200s: %s: %s", sql, type(exc).__name__, exc)
        return None
    rows = _input_rows(plan)
    if rows is None:
        log.debug("no ModifyTable node in the plan of %.200s", sql)
        return None
    return f"estimated {rows:,} row{'' if rows == 1 else 's'} (planner estimate)"


async def _explain(
    connect: Callable[[], Awaitable[asyncpg.Connection]], sql: str, role: str | None, timeout_ms: int
) -> Any:
    conn = await connect()
    try:
        await conn.execute("BEGIN READ ONLY")
        if role is not None:
            await conn.execute(f"SET LOCAL ROLE {_quote_ident(role)}")
        await conn.execute(f"SET LOCAL statement_timeout = {timeout_ms}")
        text = await conn.fetchval(_EXPLAIN + sql)
        await conn.execute("ROLLBACK")
    except BaseException:  # an error, a timeout or cancellation: drop the connection (and its transaction)
        conn.terminate()
        raise
    await conn.close()
    return json.loads(text) if isinstance(text, str) else text


def _input_rows(plan: Any) -> int | None:
    """The planner's row estimate of the input of the first ModifyTable node in an EXPLAIN JSON result."""
    if not isinstance(plan, list):
        return None
    for entry in plan:
        node = _modify_table(entry.get("Plan") if isinstance(entry, dict) else None)
        if node is None:
            continue
        children = [child for child in node.get("Plans", []) if isinstance(child, dict)]
        outer = [child for child in children if child.get("Parent Relationship") == "Outer"] or children
        if not outer or not isinstance(rows := outer[0].get("Plan Rows"), int | float):
            return None
        return round(rows)
    return None


def _modify_table(node: Any) -> dict[str, Any] | None:
    """The first ModifyTable node of a plan tree, depth first."""
    if not isinstance(node, dict):
        return None
    if node.get("Node Type") == "ModifyTable":
        return node
    for child in node.get("Plans", []):
        if (found := _modify_table(child)) is not None:
            return found
    return None


def _parse(sql: str) -> list[dict[str, Any]] | None:
    try:
        statements = json.loads(pglast.parser.parse_sql_json(sql)).get("stmts", [])
    except Exception:
        return None
    return statements if isinstance(statements, list) else None


def _write_kind(node: Any) -> str | None:
    if not isinstance(node, dict) or len(node) != 1:
        return None
    kind, fields = next(iter(node.items()))
    if kind in ("UpdateStmt", "DeleteStmt", "MergeStmt"):
        return str(kind)
    if kind == "InsertStmt" and isinstance(fields, dict) and "SelectStmt" in fields.get("selectStmt", {}):
        select = fields["selectStmt"]["SelectStmt"]
        return None if "valuesLists" in select else "InsertStmt"  # INSERT … VALUES: as many rows as written
    return None


def _is_plain_explain(text: str, kind: str) -> bool:
    """Whether ``text`` parses as exactly one ``EXPLAIN (FORMAT JSON)`` of a ``kind`` statement."""
    statements = _parse(text)
    if statements is None or len(statements) != 1:
        return False
    node = statements[0].get("stmt", {})
    if list(node) != ["ExplainStmt"]:
        return False
    explain = node["ExplainStmt"]
    options = [option.get("DefElem", {}) for option in explain.get("options", [])]
    if [(option.get("defname"), _string(option.get("arg"))) for option in options] != [("format", "json")]:
        return False
    return _write_kind(explain.get("query")) == kind


def _string(node: Any) -> str | None:
    if isinstance(node, dict) and isinstance(node.get("String"), dict):
        value = node["String"].get("sval")
        return value if isinstance(value, str) else None
    return None


def _has_parameters(node: Any) -> bool:
    if isinstance(node, dict):
        return "ParamRef" in node or any(_has_parameters(value) for value in node.values())
    if isinstance(node, list):
        return any(_has_parameters(value) for value in node)
    return False


def _quote_ident(name: str) -> str:
    if "\x00" in name:
        raise ValueError("a role name cannot contain NUL")
    return '"' + name.replace('"', '""') + '"'
