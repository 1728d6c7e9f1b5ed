"""Token-level helpers on PostgreSQL's own scanner (pglast): wrapped queries and U& identifiers.

`inner_query` cuts the query out of COPY (query) TO, DECLARE … CURSOR FOR, PREPARE … AS and
CREATE [MATERIALIZED] VIEW … AS, by token offsets so that comments, strings and dollar quotes can
never fool it. `plain_identifiers` rewrites U&"…" identifiers into ordinary quoted identifiers,
because sqlglot reads `U&"x"` as the expression `u & "x"` while PostgreSQL reads one identifier.
Neither executes nor changes the meaning of the statement.
"""

from __future__ import annotations

import json
from typing import Any

from pglast import parser as pg_parser

from pgproxy.masking.lineage_types import Unresolvable

_QUERY_START = {
    # statement node -> (keyword token after which the search starts, token the query follows)
    "DeclareCursorStmt": ("CURSOR", "FOR"),
    "PrepareStmt": ("PREPARE", "AS"),
    "ViewStmt": ("VIEW", "AS"),
}
_SKIPPED = frozenset({"ASCII_59", "C_COMMENT", "SQL_COMMENT"})
_HEX = frozenset("0123456789abcdefABCDEF")
_TRAILERS = (("WITH", "CHECK", "OPTION"), ("WITH", "CASCADED", "CHECK", "OPTION"), ("WITH", "LOCAL", "CHECK", "OPTION"),
             ("WITH", "DATA_P"), ("WITH", "NO", "DATA_P"))


def inner_query(sql: str) -> str | None:
    """The query text inside COPY (q) TO / DECLARE … FOR q / PREPARE … AS q / CREATE [MATERIALIZED] VIEW … AS q."""
    try:
        stmts = json.loads(pg_parser.parse_sql_json(sql)).get("stmts") or []
        tokens = [t for t in pg_parser.scan(sql) if t.name not in _SKIPPED]
    except Exception:
        return None
    if len(stmts) != 1 or not tokens:
        return None
    node: dict[str, Any] = stmts[0]["stmt"]
    kind = next(iter(node))
    if kind == "CopyStmt" and node[kind].get("query") is not None:
        return _parenthesised_after(sql, tokens, "COPY")
    if kind == "CreateTableAsStmt" and node[kind].get("objtype") == "OBJECT_MATVIEW":
        return _after(sql, tokens, "VIEW", "AS")
    if kind in _QUERY_START:
        return _after(sql, tokens, *_QUERY_START[kind])
    return None


def _after(sql: str, tokens: list[Any], anchor: str, keyword: str) -> str | None:
    names = [t.name for t in tokens]
    if anchor not in names:
        return None
    depth = 0
    for i in range(names.index(anchor) + 1, len(tokens)):
        name = names[i]
        depth += (name == "ASCII_40") - (name == "ASCII_41")
        if depth == 0 and name == keyword and i + 1 < len(tokens):
            end = len(tokens)
            for trailer in _TRAILERS:
                if tuple(names[end - len(trailer):]) == trailer:
                    end -= len(trailer)
                    break
            if end <= i + 1:
                return None
            return sql[tokens[i + 1].start : tokens[end - 1].end + 1]
    return None


def _parenthesised_after(sql: str, tokens: list[Any], anchor: str) -> str | None:
    names = [t.name for t in tokens]
    if anchor not in names:
        return None
    start = names.index(anchor) + 1
    if start >= len(tokens) or names[start] != "ASCII_40":
        return None
    depth = 0
    for i in range(start, len(tokens)):
        depth += (names[i] == "ASCII_40") - (names[i] == "ASCII_41")
        if depth == 0:
            return sql[tokens[start + 1].start : tokens[i - 1].end + 1] if i > start + 1 else None
    return None


def plain_identifiers(sql: str) -> str:
    """Rewrite every U&"…" [UESCAPE 'c'] identifier as the equivalent "…" identifier."""
    try:
        tokens = list(pg_parser.scan(sql))
    except Exception:
        raise Unresolvable("statement does not parse") from None
    pieces: list[str] = []
    position = 0
    for i, token in enumerate(tokens):
        if token.name != "UIDENT" or token.start < position:
            continue
        body = sql[token.start + 3 : token.end].replace('""', '"')
        end = token.end
        escape = "\\"
        if i + 2 < len(tokens) and tokens[i + 1].name == "UESCAPE" and tokens[i + 2].name == "SCONST":
            literal = sql[tokens[i + 2].start : tokens[i + 2].end + 1]
            if len(literal) != 3:
                raise Unresolvable("unsupported UESCAPE")
            escape, end = literal[1], tokens[i + 2].end
        name = _decode(body, escape)
        pieces.append(sql[position : token.start])
        pieces.append('"' + name.replace('"', '""') + '"')
        position = end + 1
    pieces.append(sql[position:])
    return "".join(pieces)


def _decode(body: str, escape: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char != escape:
            out.append(char)
            i += 1
            continue
        if body[i + 1 : i + 2] == escape:
            out.append(escape)
            i += 2
            continue
        width, skip = (6, 2) if body[i + 1 : i + 2] == "+" else (4, 1)
        digits = body[i + skip : i + skip + width]
        if len(digits) != width or any(c not in _HEX for c in digits):
            raise Unresolvable("invalid Unicode escape in an identifier")
        code = int(digits, 16)
        if code == 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            raise Unresolvable("unsupported Unicode escape in an identifier")
        out.append(chr(code))
        i += skip + width
    return "".join(out)
