"""Spellings of one SQL statement that PostgreSQL reads identically: case, comments, whitespace.

A statement is cut into tokens with pglast's scanner; a variant rejoins the same tokens with other
separators (spaces, newlines, tabs, ``/* */`` and ``--`` comments, nested comments) and with keywords and
unquoted identifiers in other letter case. Quoted identifiers and constants are kept byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterator

import pglast.parser
from hypothesis import strategies as st

SEPARATORS = (" ", "\n", "\t", "  \r\n ", " /* ; DELETE FROM x */ ", "/**/", " -- ; DROP TABLE x\n", "/* /* */ */")
_CASE_CHANGEABLE = ("IDENT",)


def tokens(sql: str) -> list[tuple[str, str, bool]]:
    """(text, token name, letter case may change) for each token, comments dropped."""
    found = []
    for token in pglast.parser.scan(sql):
        if token.name in ("C_COMMENT", "SQL_COMMENT"):
            continue
        text = sql[token.start : token.end + 1]
        changeable = token.kind != "NO_KEYWORD" or (token.name in _CASE_CHANGEABLE and not text.startswith('"'))
        found.append((text, token.name, changeable))
    return found


def _spell(text: str, how: int) -> str:
    return (text.lower(), text.upper(), text.swapcase(), text.title())[how % 4]


def join(parts: list[tuple[str, str, bool]], separators: list[str], cases: list[int]) -> str:
    out = []
    for index, (text, _name, changeable) in enumerate(parts):
        if index:
            out.append(separators[(index - 1) % len(separators)])
        out.append(_spell(text, cases[index % len(cases)]) if changeable else text)
    return "".join(out)


def fixed_variants(sql: str) -> Iterator[str]:
    """A deterministic handful of spellings of ``sql`` (the first is ``sql`` itself)."""
    parts = tokens(sql)
    yield sql
    yield join(parts, [" "], [1])  # upper case
    yield join(parts, ["\n"], [0])  # lower case, one token per line
    yield join(parts, [" /* c */ "], [2])
    yield join(parts, [" -- c\n"], [3])
    yield join(parts, list(SEPARATORS), [0, 1, 2, 3])
    yield f"/* SELECT 1; */ {sql}"
    yield f"-- leading comment; SELECT 1\n{sql} -- trailing"
    yield f"  \n\t{sql} ;  "


@st.composite
def spelled(draw: st.DrawFn, sql: str) -> str:
    """A hypothesis strategy: ``sql`` with separators and letter case drawn at random."""
    parts = tokens(sql)
    gaps = max(1, len(parts) - 1)
    separators = draw(st.lists(st.sampled_from(SEPARATORS), min_size=gaps, max_size=gaps))
    cases = draw(st.lists(st.integers(0, 3), min_size=len(parts), max_size=len(parts)))
    return join(parts, separators, cases or [0])
