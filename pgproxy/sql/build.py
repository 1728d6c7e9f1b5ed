"""Shared pieces of the statement handlers: the per-text context and the assembly of a Statement.

``finish`` turns a base category and the facts of a statement's tree (and the statements nested in it)
into one ``Statement``: it judges every call, folds the calls' categories into the statement's (the
strictest wins), records unsafe calls and server-file refusals. Handlers never build a Statement that
skips it, so no call escapes judgement. No parsing of text here beyond pglast's scanner, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pgproxy.sql.functions import display_name, judge_function, judge_operator, judge_tablesample
from pgproxy.sql.statement import Category, Flag, Relation, Statement, strictest_category
from pgproxy.sql.tree import Facts, Fields

MAX_DEPTH = 8  # statements nested in statements (CREATE SCHEMA → CREATE VIEW …; EXPLAIN → query)


@dataclass(slots=True)
class Context:
    """One text being classified."""

    sql: str
    recurse: Callable[[Context, str, Fields, int], Statement]
    cacheable: bool = True  # False when a decision read a constant's value
    location: int = 0  # the current statement's span, in UTF-8 bytes (length 0: to the end)
    length: int = 0
    _utf8: bytes | None = field(default=None, repr=False)

    def statement_text(self) -> str:
        if self._utf8 is None:
            self._utf8 = self.sql.encode("utf-8")
        end = self.location + self.length if self.length else None
        return self._utf8[self.location : end].decode("utf-8", "replace")

    def nested(self, kind: str, fields: Fields, depth: int) -> Statement:
        if depth >= MAX_DEPTH:
            return unknown(kind, "statements nest too deeply to classify")
        return self.recurse(self, kind, fields, depth + 1)


def unknown(kind: str | None, reason: str, command: str = "?") -> Statement:
    return Statement(Category.UNKNOWN, command, reason=reason, node=kind)


def finish(
    kind: str,
    category: Category,
    command: str,
    facts: Facts | None = None,
    *,
    inner: Iterable[Statement] = (),
    flags: Iterable[Flag] = (),
    reads: Iterable[Relation] = (),
    writes: Iterable[Relation] = (),
    setting: str | None = None,
    explained: Statement | None = None,
    prepared: Statement | None = None,
    prepared_name: str | None = None,
    refusal: str | None = None,
    reason: str | None = None,
) -> Statement:
    """Assemble a statement from its base category, its own tree's facts and nested statements."""
    if facts is not None and facts.odd:
        return unknown(kind, facts.odd, command)
    all_reads = set(reads)
    all_writes = set(writes)
    functions: set[str] = set()
    unsafe: set[str] = set()
    all_flags = set(flags)
    categories = [category]
    refusals = [refusal] if refusal else []
    reasons = [reason] if reason else []
    if facts is not None:
        all_reads |= facts.reads
        all_writes |= facts.writes
        calls = [(display_name(parts), judge_function(parts, nargs)) for parts, nargs in facts.functions]
        calls += [(f"operator({display_name(parts)})", judge_operator(parts)) for parts in facts.operators]
        calls += [(f"tablesample({display_name(parts)})", judge_tablesample(parts)) for parts in facts.samplers]
        for name, verdict in calls:
            if not name.startswith(("operator(", "tablesample(")) or verdict.category is not None:
                functions.add(name)
            if verdict.category is not None:
                unsafe.add(name)
                categories.append(verdict.category)
            if verdict.refusal:
                refusals.append(verdict.refusal)
                all_flags.add(Flag.SERVER_FILE_FUNCTION)
    for statement in inner:
        all_reads |= statement.reads
        all_writes |= statement.writes
        functions |= statement.functions
        unsafe |= statement.unsafe_functions
        all_flags |= statement.flags
        categories.append(statement.category)
        if statement.refusal:
            refusals.append(statement.refusal)
        if statement.reason:
            reasons.append(statement.reason)
    if unsafe:
        all_flags.add(Flag.UNSAFE_FUNCTION)
    final = strictest_category(*categories)
    return Statement(
        final,
        command,
        reads=frozenset(all_reads),
        writes=frozenset(all_writes),
        functions=frozenset(functions),
        unsafe_functions=frozenset(unsafe),
        flags=frozenset(all_flags),
        setting=setting,
        explained=explained,
        prepared=prepared,
        prepared_name=prepared_name,
        refusal=refusals[0] if refusals else None,
        reason=(reasons[0] if reasons else "unrecognised") if final is Category.UNKNOWN else None,
        node=kind,
    )
