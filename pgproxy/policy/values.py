"""Scalar values of the policy language: ids, names, patterns, durations, and how globs are matched.

Each ``Annotated`` type below validates one YAML value and raises :class:`ValueError` with a message
meant for a policy author; ``model`` composes them into rules. ``NameMatcher`` and ``TableGlob`` compile
glob patterns once so that the engine's per-statement matching is a set lookup or one regex match.
Pure: stdlib and pydantic only, no I/O, no knowledge of rules or identities.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field, StrictInt

from pgproxy.sql.statement import Category

__all__ = [
    "DEFAULT_APPROVAL_TIMEOUT",
    "MAX_APPROVAL_TIMEOUT",
    "RESERVED_ID_PREFIX",
    "CategoryName",
    "ColumnName",
    "DatabasePattern",
    "Domain",
    "Duration",
    "Email",
    "Name",
    "NameMatcher",
    "NonNegative",
    "Positive",
    "RoleName",
    "RuleId",
    "TableGlob",
    "TablePattern",
    "Text",
    "has_glob",
    "parse_duration",
]

RESERVED_ID_PREFIX = "pgproxy:"  # pgproxy's own decisions (pgproxy:default-deny …)
DEFAULT_APPROVAL_TIMEOUT = 30 * 60
MAX_APPROVAL_TIMEOUT = 7 * 24 * 3600

_ID = re.compile(r"[a-z0-9][a-z0-9._:-]{0,99}")
_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_GLOB_CHARS = frozenset("*?[")
_ROLE = re.compile(r"[A-Za-z_][A-Za-z0-9_$.-]{0,62}")
_IDENTIFIER = re.compile(r"[^\s.*?\[\]]+")


def has_glob(pattern: str) -> bool:
    return any(c in _GLOB_CHARS for c in pattern)


def _check_id(value: str) -> str:
    if value.startswith(RESERVED_ID_PREFIX):
        raise ValueError(f"ids starting with {RESERVED_ID_PREFIX!r} are reserved for pgproxy's own decisions")
    if not _ID.fullmatch(value):
        raise ValueError(
            "an id is 1-100 characters: lower-case letters, digits, '.', '_', ':', '-', not starting with punctuation"
        )
    return value


def _check_email(value: str) -> str:
    local, at, domain = value.partition("@")
    if not at or not local or not domain or "@" in domain or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not an email address")
    return value.lower()


def _check_domain(value: str) -> str:
    if "@" in value or not value or any(c.isspace() for c in value) or value.startswith("."):
        raise ValueError(f"{value!r} is not a domain name (write 'example.com', not '@example.com')")
    return value.lower()


def _check_category(value: str) -> str:
    if value != "*" and value not in Category._value2member_map_:
        names = ", ".join(c.value for c in Category)
        raise ValueError(f"unknown category {value!r}; expected one of {names}, or '*'")
    return value


def _check_database(value: str) -> str:
    if not value.strip():
        raise ValueError("a database name or pattern must not be empty")
    return value


class NameMatcher:
    """Names against literal names and fnmatch globs, case-sensitively; compiled once, called per statement."""

    __slots__ = ("_literals", "_regex")

    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = tuple(patterns)
        self._literals = frozenset(p for p in patterns if not has_glob(p))
        globs = [fnmatch.translate(p) for p in patterns if has_glob(p)]
        self._regex = re.compile("|".join(f"(?:{g})" for g in globs)) if globs else None

    def __call__(self, name: str) -> bool:
        return name in self._literals or (self._regex is not None and self._regex.match(name) is not None)


@dataclass(frozen=True, slots=True)
class TableGlob:
    """One ``schema.table`` pattern of a rule's ``tables``; each part is an fnmatch glob."""

    schema: str
    table: str
    schema_matches: NameMatcher = field(init=False, repr=False, compare=False)
    table_matches: NameMatcher = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "schema_matches", NameMatcher((self.schema,)))
        object.__setattr__(self, "table_matches", NameMatcher((self.table,)))

    def __str__(self) -> str:
        return f"{self.schema}.{self.table}"

    @classmethod
    def parse(cls, text: str) -> TableGlob:
        schema, dot, table = text.partition(".")
        if not dot or not schema or not table or "." in table or any(c.isspace() for c in text):
            raise ValueError(f"{text!r} is not a 'schema.table' pattern (e.g. 'public.*' or '*.secrets')")
        return cls(schema, table)


def _check_table(value: str) -> str:
    TableGlob.parse(value)
    return value


def _check_column(value: str) -> str:
    parts = value.split(".")
    if len(parts) != 3 or not all(_IDENTIFIER.fullmatch(part) for part in parts):
        raise ValueError(f"{value!r} is not a 'schema.table.column' name (no patterns)")
    return value


def _check_role(value: str) -> str:
    if not _ROLE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a role name pgproxy accepts: 1-63 characters, letters, digits, '_', '$', '.', '-', "
            "starting with a letter or '_'"
        )
    return value


def parse_duration(value: object) -> int:
    """Seconds from ``90``, ``"90s"``, ``"30m"``, ``"2h"`` or ``"1h30m"``.

    >>> parse_duration("1h30m")
    5400
    """
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a text such as '90s', '30m', '2h'")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        seconds = int(value)
    elif isinstance(value, str) and value and (match := _DURATION.fullmatch(value.strip())) and any(match.groups()):
        hours, minutes, secs = (int(part or 0) for part in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    else:
        raise ValueError(f"{value!r} is not a duration; write seconds or a text such as '90s', '30m', '2h', '1h30m'")
    if not 1 <= seconds <= MAX_APPROVAL_TIMEOUT:
        raise ValueError(f"a duration must be between 1 second and 7 days, not {seconds} seconds")
    return seconds


RuleId = Annotated[str, AfterValidator(_check_id)]
Text = Annotated[str, Field(min_length=1, max_length=1000)]
Name = Annotated[str, Field(min_length=1)]
Email = Annotated[str, AfterValidator(_check_email)]
Domain = Annotated[str, AfterValidator(_check_domain)]
CategoryName = Annotated[str, AfterValidator(_check_category)]
DatabasePattern = Annotated[str, AfterValidator(_check_database)]
TablePattern = Annotated[str, AfterValidator(_check_table)]
ColumnName = Annotated[str, AfterValidator(_check_column)]
RoleName = Annotated[str, AfterValidator(_check_role)]
Duration = Annotated[int, BeforeValidator(parse_duration)]
Positive = Annotated[StrictInt, Field(ge=1)]
NonNegative = Annotated[StrictInt, Field(ge=0)]
