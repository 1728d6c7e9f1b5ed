"""The classification cache: keys from pglast's scanner with constants replaced, and a bounded LRU.

``shape_key`` lexes the text with PostgreSQL's own scanner (``pglast.parser.scan``, never a regex) and
keeps every token's exact text except constants, which become their token kind; comments are dropped
(they are whitespace to the grammar, and tracing tools put changing values in them). Two texts share a
key only when they are the same token sequence apart from constant values, so they parse to the same
tree shape. One exception is kept in the key: the string after UESCAPE, which changes how a preceding
U&"…" identifier is spelled. Decisions that read some other constant's value mark the text uncacheable
(see ``classify``). The cache holds ``Classification`` objects, which carry no constants and no text
positions. A text with no constant and no comment (what drivers send with $n parameters) is also a key
by itself, which skips the scanner on a repeat. No I/O; not thread-safe (one event loop uses it).
"""

from __future__ import annotations

from collections import OrderedDict

import pglast.parser

from pgproxy.sql.statement import Classification

CONSTANT_TOKENS = frozenset({"ICONST", "FCONST", "SCONST", "USCONST", "BCONST", "XCONST"})
COMMENT_TOKENS = frozenset({"C_COMMENT", "SQL_COMMENT"})
_SEPARATOR = "\x00"  # never inside a token: texts holding NUL are not cached


def shape_key(sql: str) -> str | None:
    """The cache key of ``sql``; None when the text cannot be keyed (the scanner rejects it, or NUL).

    Tokens are joined by NUL. A constant is written as an empty token followed by its kind
    (``…\\0\\0ICONST\\0…``): no real token is empty, so a constant can never read as an identifier.
    """
    found = shape(sql)
    return None if found is None else found[0]


def shape(sql: str) -> tuple[str, bool] | None:
    """``(shape_key, plain)``: ``plain`` when the text has no constant and no comment, so that the text
    itself may serve as a key (it holds nothing a cache must not keep)."""
    if _SEPARATOR in sql:
        return None
    try:
        tokens = pglast.parser.scan(sql)
    except Exception:
        return None
    parts: list[str] = []
    plain = True
    after_uescape = False
    for token in tokens:
        name = token.name
        if name in COMMENT_TOKENS:
            plain = False
            continue
        if name in CONSTANT_TOKENS and not after_uescape:
            parts.append("")
            parts.append(name)
            plain = False
        else:
            parts.append(sql[token.start : token.end + 1])
        after_uescape = name == "UESCAPE"
    return _SEPARATOR.join(parts), plain


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
