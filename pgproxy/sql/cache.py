"""The classification cache: keys are statements with their constants replaced, by PostgreSQL's parser.

``shape_key`` is libpg_query's normalization (``pglast.parser.normalize``, never a regex): the text
exactly as sent, except that the span of every constant the parser found is replaced by ``$n``. Two
texts share a key only when they differ in nothing but constants (a constant and a ``$n`` parameter
are the same to it; a unary minus before a constant is folded into it), and classification never
reads a constant's value, except for the few shapes ``classify`` marks uncacheable (an ``EXPLAIN``
``analyze`` option given a value). Spans the parser does not see as constants stay in the key:
keywords, identifiers, comments, the string after ``UESCAPE``, COPY's file name. pglast is pinned to a
release whose libpg_query locates constants by parse position (older ones searched the text and could
swallow a neighbouring keyword); tests pin the cases. Measured on the pgbench select, the key costs a
third of lexing the text with pglast's scanner.
The cache holds ``Classification`` objects, which carry no constants and no text positions. A text
that has no constant and no comment (what drivers send with $n parameters) is also a key by itself,
which skips the normalization on a repeat. No I/O; not thread-safe (one event loop uses it).
"""

from __future__ import annotations

from collections import OrderedDict

import pglast.parser

from pgproxy.sql.statement import Classification

_SEPARATOR = "\x00"  # texts holding NUL are never cached (the server stops reading at NUL)


def shape_key(sql: str) -> str | None:
    """The cache key of ``sql``; None when the text cannot be keyed (it does not parse, or holds NUL)."""
    found = shape(sql)
    return None if found is None else found[0]


def shape(sql: str) -> tuple[str, bool] | None:
    """``(shape_key, plain)``: ``plain`` when the text has no constant and no comment, so that the text
    itself may serve as a key (it holds nothing a cache must not keep)."""
    if _SEPARATOR in sql:
        return None
    try:
        key: str = pglast.parser.normalize(sql)
    except Exception:
        return None
    plain = key == sql and "--" not in sql and "/*" not in sql
    return key, plain


class ShapeCache:
    """A bounded least-recently-used map from shape keys to classifications."""

    def __init__(self, size: int) -> None:
        self.size = max(0, size)
        self._entries: OrderedDict[str, Classification] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Classification | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, key: str, value: Classification) -> None:
        if self.size == 0:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
