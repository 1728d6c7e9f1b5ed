"""Builders for policy tests: policy sets from YAML text, identities and statements by hand."""

from __future__ import annotations

from pgproxy.auth.identity import Identity
from pgproxy.policy.loader import load_yaml_text
from pgproxy.policy.model import PolicyFile, PolicySet
from pgproxy.sql.statement import Category, Flag, Relation, Statement


def policy(text: str) -> PolicySet:
    """A policy set from the YAML of one policy file."""
    return PolicySet.from_files([load_yaml_text(text, PolicyFile, "test.yaml")[0]])


def who(
    sub: str = "user-1",
    *,
    email: str | None = None,
    groups: tuple[str, ...] = (),
    issuer: str = "https://idp.example.com/",
) -> Identity:
    return Identity(subject=sub, issuer=issuer, email=email, name=None, groups=groups, expires_at=None)


def rel(text: str) -> Relation:
    schema, _, name = text.rpartition(".")
    return Relation(schema or None, name)


def stmt(
    category: Category,
    command: str = "",
    *,
    reads: tuple[str, ...] = (),
    writes: tuple[str, ...] = (),
    flags: tuple[Flag, ...] = (),
    refusal: str | None = None,
    explained: Statement | None = None,
) -> Statement:
    default_commands = {
        Category.READ: "SELECT",
        Category.WRITE: "INSERT",
        Category.DDL: "CREATE TABLE",
        Category.PRIVILEGE: "GRANT",
        Category.EXPORT: "COPY",
        Category.IMPORT: "COPY",
        Category.SESSION: "SET",
        Category.TRANSACTION: "BEGIN",
        Category.PROCEDURAL: "DO",
        Category.UTILITY: "VACUUM",
        Category.UNKNOWN: "UNKNOWN",
    }
    return Statement(
        category=category,
        command=command or default_commands[category],
        reads=frozenset(rel(r) for r in reads),
        writes=frozenset(rel(w) for w in writes),
        flags=frozenset(flags),
        refusal=refusal,
        explained=explained,
    )
