"""Matching one policy entry against an identity, a database and a statement's relations.

The building blocks of ``engine``: who-matching, database globs and table scopes, with the cautious
reading of unqualified names described in ``policies/README.md``. Pure, no I/O; it must not rank
rules or make decisions (that is ``engine``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pgproxy.auth.identity import Identity
from pgproxy.policy.model import Approvers, Effect, Mask, PolicySet, Rule, SessionSettings, Who
from pgproxy.policy.values import NameMatcher, TableGlob
from pgproxy.sql.statement import Relation, Statement

__all__ = [
    "applicable_rules",
    "applies",
    "database_matches",
    "identity_matches",
    "relation_in_scope",
    "rule_matches",
    "scoped_relations",
    "touched_relations",
]

# An unqualified name resolves through the default search path. PostgreSQL always searches pg_catalog
# first, so a name that could be a catalog relation (they all start with "pg_") might resolve there.
_DEFAULT_PATH = ("public",)
_CATALOG_PATH = ("pg_catalog", "public")


def identity_matches(matcher: Who | Approvers, identity: Identity) -> bool:
    """Every field the matcher gives matches the identity (within a field: any value)."""
    if isinstance(matcher, Who) and matcher.everyone:
        return True
    if matcher.subjects is not None and identity.subject not in matcher.subjects:
        return False
    if matcher.issuers is not None and identity.issuer not in matcher.issuers:
        return False
    if matcher.groups is not None and matcher.groups.isdisjoint(identity.groups):
        return False
    if matcher.emails is not None or matcher.email_domains is not None:
        email = (identity.email or "").lower()
        if not email:
            return False
        if matcher.emails is not None and email not in matcher.emails:
            return False
        if matcher.email_domains is not None and email.rpartition("@")[2] not in matcher.email_domains:
            return False
    return True


def database_matches(patterns: Iterable[str], database: str) -> bool:
    """``database`` equals a name or matches a glob (case-sensitive, as PostgreSQL names are)."""
    return NameMatcher(patterns)(database)


def relation_in_scope(relation: Relation, scope: Sequence[TableGlob], *, deny: bool) -> bool:
    """Whether one relation lies inside a rule's ``tables``.

    A qualified name must match a pattern's schema and table parts. An unqualified name is judged
    conservatively for the rule's effect: for deny rules it is inside when any pattern's table part
    matches (whatever schema it resolves to); for allow and require_approval rules only when it is
    inside for every schema it could resolve to on the default search path (``public``, and also
    ``pg_catalog`` for names starting with ``pg_``).
    """
    name = relation.name
    if relation.schema is not None:
        return any(g.table_matches(name) and g.schema_matches(relation.schema) for g in scope)
    if deny:
        return any(g.table_matches(name) for g in scope)
    path = _CATALOG_PATH if name.startswith("pg_") else _DEFAULT_PATH
    return all(any(g.table_matches(name) and g.schema_matches(schema) for g in scope) for schema in path)


def touched_relations(statement: Statement) -> frozenset[Relation]:
    """Relations the statement reads or writes, including those of an explained or prepared statement."""
    result = statement.reads | statement.writes
    for inner in (statement.explained, statement.prepared):
        if inner is not None:
            result |= touched_relations(inner)
    return result


def scoped_relations(rule: Rule, relations: frozenset[Relation]) -> tuple[bool, tuple[Relation, ...]]:
    """(does the rule's table scope admit the statement, the relations that decided it)."""
    scope = rule.table_scope
    if scope is None:
        return True, ()
    if rule.effect is Effect.DENY:
        inside = tuple(sorted((r for r in relations if relation_in_scope(r, scope, deny=True)), key=str))
        return bool(inside), inside
    return all(relation_in_scope(r, scope, deny=False) for r in relations), ()


def applies(rule: Rule | SessionSettings | Mask, identity: Identity, database: str) -> bool:
    return identity_matches(rule.who, identity) and rule.database_matches(database)


def rule_matches(rule: Rule, identity: Identity, database: str, statement: Statement) -> bool:
    """Who, database, category and table scope all match."""
    return (
        statement.category in rule.granted
        and applies(rule, identity, database)
        and scoped_relations(rule, touched_relations(statement))[0]
    )


def applicable_rules(policy_set: PolicySet, identity: Identity, database: str) -> tuple[Rule, ...]:
    """Rules (any effect) whose who and databases match, in order; categories and tables not considered."""
    return tuple(rule for rule in policy_set.rules if applies(rule, identity, database))
