"""Classify SQL text into statements with a category, relations, calls and flags: pgproxy's read gate.

pglast (PostgreSQL's own parser) is the authority: the text is parsed once with ``parse_sql_json``, split
into statements exactly as the server splits it, and each statement's JSON tree is handed to the handler
of its node type (``queries`` for SELECT, DML and the statements wrapping a query; ``utility`` for the
rest). Reads are an allow-list: a statement is READ only when a handler says so, and a node type no
handler knows is UNKNOWN. Nothing here raises: any failure, including a parse error or a tree nested too
deeply, becomes an UNKNOWN statement with a reason (fail closed).

``Classifier`` adds the cache (``cache``): repeated statements that differ only in constants are parsed
once. A text whose classification read a constant's value is never cached. This module must not do I/O
or hold anything but classifications (no trees, no texts, no constants) beyond one call.
"""

from __future__ import annotations

import json
from typing import Any

import pglast.parser

from pgproxy.sql.build import Context, unknown
from pgproxy.sql.cache import ShapeCache, shape
from pgproxy.sql.prepared import resolve_prepared
from pgproxy.sql.queries import HANDLERS as QUERY_HANDLERS
from pgproxy.sql.queries import Handler
from pgproxy.sql.statement import Category, Classification, Statement, strictest
from pgproxy.sql.tree import Fields, unwrap
from pgproxy.sql.utility import HANDLERS as UTILITY_HANDLERS

__all__ = ["Classifier", "classify_uncached", "parse_tree", "resolve_prepared", "statement_texts", "strictest"]

HANDLERS: dict[str, Handler] = {**UTILITY_HANDLERS, **QUERY_HANDLERS}
MAX_CACHED_TEXT = 65_536  # longer texts (bulk VALUES lists) rarely repeat; they are not kept
_CONSTANT_PREFIXES = ("'", "E'", "e'", "B'", "b'", "X'", "x'", "U&'", "u&'", "N'", "n'", "$")


def parse_tree(sql: str) -> dict[str, Any]:
    """pglast's parse of ``sql`` as plain JSON data (raises pglast's ParseError)."""
    tree: dict[str, Any] = json.loads(pglast.parser.parse_sql_json(sql))
    return tree


def statement_texts(sql: str, count: int) -> list[str] | None:
    """The text of each of the ``count`` statements of ``sql``, split as the server splits them; None when
    the parser cannot split it into exactly that many."""
    if count == 1:
        return [sql]
    try:
        parts = [sql[piece] for piece in pglast.parser.split(sql, with_parser=True, only_slices=True)]
    except Exception:  # pglast's ParseError, or text its scanner rejects
        return None
    return parts if len(parts) == count else None


def classify_uncached(sql: str) -> Classification:
    """Classify ``sql`` without the cache. Never raises."""
    return classify_text(sql)[0]


def classify_text(sql: str) -> tuple[Classification, bool]:
    """The classification of ``sql`` and whether it may be cached under its shape key. Never raises."""
    try:
        if "\x00" in sql:
            return _unparseable("the statement text contains a NUL character"), False
        try:
            tree = parse_tree(sql)
        except pglast.parser.ParseError as exc:
            return _unparseable(_parse_reason(exc)), False
        except RecursionError:
            return _single(unknown(None, "the statement nests too deeply to classify")), False
        context = Context(sql, _statement)
        statements = []
        for raw in tree.get("stmts") or ():
            context.location = int(raw.get("stmt_location", 0))
            context.length = int(raw.get("stmt_len", 0))
            wrapped = unwrap(raw.get("stmt"))
            if wrapped is None:
                statements.append(unknown(None, "the parser returned no statement"))
                context.cacheable = False
                continue
            statements.append(_statement(context, wrapped[0], wrapped[1], 0))
        return Classification(tuple(statements)), context.cacheable
    except Exception as exc:  # fail closed, whatever went wrong
        return _single(unknown(None, f"pgproxy could not classify the statement ({type(exc).__name__})")), False


def _statement(context: Context, kind: str, fields: Fields, depth: int) -> Statement:
    handler = HANDLERS.get(kind)
    if handler is None:
        return unknown(kind, f"pgproxy does not recognise {kind} statements")
    return handler(context, kind, fields, depth)


def _single(statement: Statement) -> Classification:
    return Classification((statement,))


def _unparseable(reason: str) -> Classification:
    return Classification((Statement(Category.UNKNOWN, "?", reason=reason),), unparseable=True)


def _parse_reason(exc: pglast.parser.ParseError) -> str:
    """The parser's message, without the text of a constant it may quote (constants may be secrets)."""
    message = str(exc.args[0]) if exc.args else str(exc)
    head, marker, near = message.partition(' at or near "')
    if marker and (near.startswith(_CONSTANT_PREFIXES) or near[:1].isdigit()):
        return f"{head} at or near a constant"
    return message


class Classifier:
    """Classification with a bounded cache keyed by statement shape; shared by every session.

    Two maps of the same size: shape key → classification, and, for texts without constants or
    comments, text → classification (a dictionary lookup instead of a scan). Texts longer than
    ``MAX_CACHED_TEXT`` characters are classified uncached.
    """

    def __init__(self, cache_size: int = 10_000) -> None:
        self._shapes = ShapeCache(cache_size)
        self._texts = ShapeCache(cache_size)
        self.hits = 0
        self.misses = 0

    def classify(self, sql: str) -> Classification:
        """Classify ``sql``, from the cache when a text of the same shape was seen. Never raises."""
        return self.classify_keyed(sql)[0]

    def classify_keyed(self, sql: str) -> tuple[Classification, str | None]:
        """``classify`` and the text's shape key (its normalization; None when not computed)."""
        found = self._texts.get(sql)
        if found is not None:
            self.hits += 1
            return found, sql  # only plain texts are in this map: they are their own shape key
        keyed = None
        if len(sql) <= MAX_CACHED_TEXT:
            try:
                keyed = shape(sql)
            except Exception:
                keyed = None
        if keyed is not None:
            found = self._shapes.get(keyed[0])
            if found is not None:
                self.hits += 1
                if keyed[1]:
                    self._texts.put(sql, found)
                return found, keyed[0]
        self.misses += 1
        result, cacheable = classify_text(sql)
        if keyed is not None and cacheable:
            self._shapes.put(keyed[0], result)
            if keyed[1]:
                self._texts.put(sql, result)
        return result, keyed[0] if keyed is not None else None

    @property
    def cached(self) -> int:
        """How many shapes are cached."""
        return len(self._shapes)

    @property
    def cached_texts(self) -> int:
        """How many plain texts (no constants, no comments) are cached."""
        return len(self._texts)

    def clear(self) -> None:
        self._shapes.clear()
        self._texts.clear()
