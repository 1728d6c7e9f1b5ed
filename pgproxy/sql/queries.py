"""Handlers for statements that run or wrap a query: SELECT, INSERT/UPDATE/DELETE/MERGE, EXPLAIN,
PREPARE/EXECUTE/DEALLOCATE, DECLARE/FETCH/MOVE/CLOSE, COPY and CREATE TABLE AS.

A SELECT is a read only when nothing in it writes: no INTO, no locking clause, no data-modifying WITH
query at any depth, no call outside the allow-list. A wrapper (EXPLAIN, PREPARE, DECLARE, COPY, CREATE
TABLE AS) takes the category of what it wraps, or a stricter one. Handlers never decide by a constant's
value without marking the text uncacheable. No I/O.
"""

from __future__ import annotations

from collections.abc import Callable

import pglast.parser

from pgproxy.sql.build import Context, finish, unknown
from pgproxy.sql.statement import Category, Flag, Statement, strictest_category
from pgproxy.sql.tree import DML, Fields, collect, unwrap

Handler = Callable[[Context, str, Fields, int], Statement]

_DML_COMMANDS = {"InsertStmt": "INSERT", "UpdateStmt": "UPDATE", "DeleteStmt": "DELETE", "MergeStmt": "MERGE"}
COPY_PROGRAM_REFUSAL = "COPY … PROGRAM runs a command on the database server; pgproxy never forwards it"
COPY_FILE_REFUSAL = (
    "COPY to or from a file on the database server uses the server's file system; pgproxy never forwards it "
    "(use COPY … FROM STDIN or TO STDOUT)"
)
EXECUTE_REASON = "prepared statement resolved by the session"
_COMMENTS = frozenset({"C_COMMENT", "SQL_COMMENT"})


def query(ctx: Context, kind: str, fields: Fields, depth: int) -> Statement:
    facts = collect(kind, fields)
    flags: set[Flag] = set()
    if kind == "SelectStmt":
        category, command, own_dml = Category.READ, "SELECT", 0
    else:
        category, command, own_dml = Category.WRITE, _DML_COMMANDS[kind], 1
    if facts.dml > own_dml:
        flags.add(Flag.DATA_MODIFYING_CTE)
        category = strictest_category(category, Category.WRITE)
    if facts.locking:
        flags.add(Flag.LOCKING_CLAUSE)
        category = strictest_category(category, Category.WRITE)
    if facts.into:
        flags.add(Flag.SELECT_INTO)
        category = strictest_category(category, Category.DDL)
        command = "SELECT INTO" if kind == "SelectStmt" else command
    return finish(kind, category, command, facts, flags=flags)


def _inner(ctx: Context, value: object, depth: int, what: str) -> Statement:
    wrapped = unwrap(value)
    if wrapped is None:
        return unknown(None, f"{what} has no statement pgproxy can read")
    return ctx.nested(wrapped[0], wrapped[1], depth)


def explain(ctx: Context, kind: str, fields: Fields, depth: int) -> Statement:
    inner = _inner(ctx, fields.get("query"), depth, "EXPLAIN")
    analyze = False
    for option in fields.get("options") or ():
        element = (unwrap(option) or ("", {}))[1]
        if element.get("defname") == "analyze":
            if "arg" in element:
                ctx.cacheable = False  # (ANALYZE 0) / (ANALYZE 'off'): the value is a constant
            analyze = analyze or _true(element.get("arg"))
    # EXPLAIN ANALYZE runs the statement: not on the read allow-list, even for a read.
    base = Category.UTILITY if analyze else Category.READ
    flags = {Flag.EXPLAIN_ANALYZE} if analyze else set()
    return finish(kind, base, "EXPLAIN", inner=[inner], flags=flags, explained=inner)


def _true(arg: object) -> bool:
    """PostgreSQL's defGetBoolean: only an explicit false/off/0 is false; anything unclear counts as true."""
    if arg is None:
        return True
    wrapped = unwrap(arg)
    if wrapped is None:
        return True
    kind, value = wrapped
    if kind == "String":
        return str(value.get("sval", "")).lower() not in ("false", "off")
    if kind == "Integer":
        return bool(value.get("ival", 0) != 0)
    if kind == "Boolean":
        return bool(value.get("boolval", False))
    return True


def prepare(ctx: Context, kind: str, fields: Fields, depth: int) -> Statement:
    inner = _inner(ctx, fields.get("query"), depth, "PREPARE")
    name = fields.get("name", "")
    return finish(kind, Category.READ, "PREPARE", inner=[inner], prepared=inner, prepared_name=name)


def execute(ctx: Context, kind: str, fields: Fields, depth: int) -> Statement:
    facts = collect(kind, fields)  # the parameters are expressions: they may call functions
    name = fields.get("name", "")
    return finish(kind, Category.UNKNOWN, "EXECUTE", facts, prepared_name=name, reason=EXECUTE_REASON)


def deallocate(ctx: Context, kind: str, fields: Fields, depth: int) -> Statement:
    if fields.get("isall"):
        return Statement(Category.SESSION, "DEALLOCATE ALL", node=kind)
    return Statement(Category.SESSION, "DEALLOCATE", prepared_name=fields.get("name", ""), node=kind)


def declare(ctx: Context, kind: str, fields: Fields, depth: int) -> Statement:
    inner = _inner(ctx, fields.get("query"), depth, "DECLARE")
    return finish(kind, Category.READ, "DECLARE CURSOR", inner=[inner])


def fetch(ctx: Context, kind: str, fields: Fields, depth: int) -> Statement:
    return Statement(Category.READ, "MOVE" if fields.get("ismove") else "FETCH", node=kind)


def close(ctx: Context, kind: str, fields: Fields, depth: int) -> Statement:
    return Statement(Category.READ, "CLOSE CURSOR" if fields.get("portalname") else "CLOSE CURSOR ALL", node=kind)


def copy(ctx: Context, kind: str, fields: Fields, depth: int) -> Statement:
    is_from = bool(fields.get("is_from"))
    category = Category.IMPORT if is_from else Category.EXPORT
    own = {name: value for name, value in fields.items() if name != "query"}
    inner = [_inner(ctx, fields["query"], depth, "COPY")] if "query" in fields else []
    flags: set[Flag] = set()
    refusal = None
    if fields.get("is_program"):
        flags.add(Flag.COPY_PROGRAM)
        refusal = COPY_PROGRAM_REFUSAL
    elif fields.get("filename") or _names_a_file(ctx.statement_text()):
        flags.add(Flag.COPY_SERVER_FILE)
        refusal = COPY_FILE_REFUSAL
    return finish(kind, category, "COPY", collect(kind, own), inner=inner, flags=flags, refusal=refusal)


def _names_a_file(text: str) -> bool:
    """Whether COPY's target is a constant (a file; '' too) rather than STDIN/STDOUT, by its tokens.

    The parse tree cannot tell ``FROM STDIN`` from ``FROM ''`` (an empty file name is dropped), so the
    first FROM/TO outside parentheses is found and the token after it (after PROGRAM) read.
    """
    try:
        tokens = [token.name for token in pglast.parser.scan(text) if token.name not in _COMMENTS]
    except Exception:
        return True
    depth = 0
    for index, name in enumerate(tokens):
        if name == "ASCII_40":
            depth += 1
        elif name == "ASCII_41":
            depth -= 1
        elif depth == 0 and name in ("FROM", "TO"):
            rest = tokens[index + 1 : index + 3]
            if rest[:1] == ["PROGRAM"]:
                rest = rest[1:]
            return rest[:1] not in (["STDIN"], ["STDOUT"])
    return True


def create_table_as(ctx: Context, kind: str, fields: Fields, depth: int) -> Statement:
    command = "CREATE MATERIALIZED VIEW" if fields.get("objtype") == "OBJECT_MATVIEW" else "CREATE TABLE AS"
    inner = _inner(ctx, fields.get("query"), depth, command)
    own = {name: value for name, value in fields.items() if name != "query"}
    name = inner.prepared_name if inner.command == "EXECUTE" else None
    return finish(kind, Category.DDL, command, collect(kind, own), inner=[inner], prepared_name=name)


HANDLERS: dict[str, Handler] = {
    "SelectStmt": query,
    **dict.fromkeys(DML, query),
    "ExplainStmt": explain,
    "PrepareStmt": prepare,
    "ExecuteStmt": execute,
    "DeallocateStmt": deallocate,
    "DeclareCursorStmt": declare,
    "FetchStmt": fetch,
    "ClosePortalStmt": close,
    "CopyStmt": copy,
    "CreateTableAsStmt": create_table_as,
}
