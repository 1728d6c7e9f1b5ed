"""The words of decisions: how reasons and hints name statements, categories, approvers and durations.

Pure string building for ``engine`` (and the operator tooling). It must never put statement text or
literal values into words: reasons and hints reach clients, approvers and the audit log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from pgproxy.policy.model import Approvers
from pgproxy.sql.statement import Category, Relation, Statement

__all__ = [
    "CATEGORY_PHRASES",
    "describe_approvers",
    "describe_duration",
    "describe_statement",
    "in_order",
    "list_categories",
    "named",
]

# How hints name categories, in the order they are listed.
CATEGORY_PHRASES: dict[Category, str] = {
    Category.READ: "read-only queries (SELECT, SHOW, EXPLAIN)",
    Category.WRITE: "data changes (INSERT, UPDATE, DELETE, MERGE)",
    Category.DDL: "schema changes (CREATE, ALTER, DROP, TRUNCATE)",
    Category.PRIVILEGE: "privilege changes (GRANT, REVOKE, roles)",
    Category.EXPORT: "exports (COPY … TO STDOUT)",
    Category.IMPORT: "imports (COPY … FROM STDIN)",
    Category.PROCEDURAL: "procedural code (DO, CALL, functions outside the allow-list)",
    Category.UTILITY: "maintenance commands (VACUUM, ANALYZE, LOCK, LISTEN)",
    Category.SESSION: "session settings (SET, RESET, DISCARD)",
    Category.TRANSACTION: "transaction control (BEGIN, COMMIT, ROLLBACK)",
    Category.UNKNOWN: "statements pgproxy cannot classify",
}
_BACKGROUND = frozenset({Category.SESSION, Category.TRANSACTION})  # left out of hints when others exist


def named(command: str) -> str:
    """`` (EXECUTE)`` for a command worth naming; nothing for the classifier's placeholder."""
    return f" ({command})" if command and command.strip("?") else ""


def in_order(relations: Iterable[Relation]) -> tuple[Relation, ...]:
    """Relations sorted by name for messages (unqualified and qualified names mixed)."""
    return tuple(sorted(relations, key=str))


def describe_statement(statement: Statement, relations: Sequence[Relation]) -> str:
    """E.g. ``UPDATE (write) on public.orders``: command, category and up to three relations."""
    text = f"{statement.command} ({statement.category.value})"
    if relations:
        names = ", ".join(str(r) for r in relations[:3])
        more = f" and {len(relations) - 3} more" if len(relations) > 3 else ""
        text += f" on {names}{more}"
    return text


def list_categories(categories: Mapping[Category, Sequence[str] | None], excluding: Category) -> str:
    """E.g. ``read-only queries (…) on tables public.* and exports (…)``; ``None`` means no table scope.

    Session and transaction control are left out when anything else is listed; ``excluding`` never is.
    """
    listed = [c for c in CATEGORY_PHRASES if c in categories and c is not excluding]
    if any(c not in _BACKGROUND for c in listed):
        listed = [c for c in listed if c not in _BACKGROUND]
    phrases = []
    for category in listed:
        phrase = CATEGORY_PHRASES[category]
        scope = categories[category]
        if scope is not None:
            phrase += f" on tables {', '.join(dict.fromkeys(scope))}"
        phrases.append(phrase)
    if len(phrases) > 1:
        return ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return phrases[0] if phrases else ""


def describe_approvers(approvers: Approvers) -> str:
    """E.g. ``group dba or alice@example.com``."""
    words = {
        "groups": ("group", "groups"),
        "subjects": ("subject", "subjects"),
        "emails": ("", ""),
        "email_domains": ("anyone at", "anyone at"),
        "issuers": ("anyone from issuer", "anyone from issuers"),
    }
    parts = []
    for name, values in approvers.given().items():
        one, many = words[name]
        listed = " or ".join(sorted(values))
        word = one if len(values) == 1 else many
        parts.append(f"{word} {listed}".strip())
    return " and ".join(parts)


def describe_duration(seconds: int) -> str:
    """E.g. ``30 minutes``, ``2 hours``, ``90 seconds``."""
    if seconds % 3600 == 0:
        return f"{seconds // 3600} hour{'s' if seconds != 3600 else ''}"
    if seconds % 60 == 0:
        return f"{seconds // 60} minute{'s' if seconds != 60 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"
