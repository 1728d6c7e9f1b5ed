"""Resolve EXECUTE of a prepared statement into what the prepared statement does.

SQL ``EXECUTE name`` (also inside ``EXPLAIN [ANALYZE] EXECUTE`` and ``CREATE TABLE … AS EXECUTE``)
is classified UNKNOWN until the session, which knows its prepared statements, supplies the
classification behind the name. ``resolve_prepared`` rebuilds the statement from it; an unknown name
stays UNKNOWN. The EXECUTE's own parameter expressions (which may call functions) are kept and judged
too. Pure: the lookup is the caller's. No parsing, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable

from pgproxy.sql.functions import recorded_category
from pgproxy.sql.statement import Category, Flag, Statement, strictest_category

Lookup = Callable[[str], Statement | None]


def resolve_prepared(statement: Statement, lookup: Lookup) -> Statement:
    """``statement`` with every EXECUTE in it replaced by the looked-up prepared statement's meaning."""
    if statement.explained is not None:
        inner = resolve_prepared(statement.explained, lookup)
        if inner is statement.explained:
            return statement
        analyze = Flag.EXPLAIN_ANALYZE in statement.flags
        explain_base = Category.UTILITY if analyze else Category.READ
        return _combine(statement, explain_base, inner, explained=inner, prepared_name=statement.prepared_name)
    if statement.prepared_name is None or statement.command in ("PREPARE", "DEALLOCATE"):
        return statement
    name = statement.prepared_name
    base: Category | None
    if statement.command == "EXECUTE":
        base = None
    elif statement.command == "CREATE TABLE AS":
        base = Category.DDL
    else:
        return statement
    found = lookup(name)
    if found is not None and found.command == "PREPARE" and found.prepared is not None:
        found = found.prepared
    if found is None:
        return Statement(
            Category.UNKNOWN,
            statement.command,
            reads=statement.reads,
            writes=statement.writes,
            functions=statement.functions,
            unsafe_functions=statement.unsafe_functions,
            flags=statement.flags,
            prepared_name=name,
            refusal=statement.refusal,
            reason=f'prepared statement "{name}" is unknown',
            node=statement.node,
        )
    return _combine(statement, base, found, prepared_name=name)


def _combine(
    outer: Statement,
    base: Category | None,
    inner: Statement,
    *,
    explained: Statement | None = None,
    prepared_name: str | None = None,
) -> Statement:
    """``outer``'s own parts (its parameters' calls, its written relations) joined with ``inner``."""
    categories = [inner.category]
    if base is not None:
        categories.append(base)
    for name in outer.unsafe_functions:
        category = recorded_category(name, unsafe=True)
        if category is not None:
            categories.append(category)
    own_writes = outer.writes if base is Category.DDL else frozenset()
    category = strictest_category(*categories)
    return Statement(
        category,
        outer.command,
        reads=outer.reads | inner.reads,
        writes=own_writes | inner.writes,
        functions=outer.functions | inner.functions,
        unsafe_functions=outer.unsafe_functions | inner.unsafe_functions,
        flags=outer.flags | inner.flags,
        setting=inner.setting if outer.command == "EXECUTE" else outer.setting,
        explained=explained,
        prepared=inner if explained is None else None,
        prepared_name=prepared_name,
        refusal=outer.refusal or inner.refusal,
        reason=inner.reason if category is Category.UNKNOWN else None,
        node=outer.node,
    )
