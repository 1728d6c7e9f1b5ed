"""The audit tables in PostgreSQL: DDL, versioned migrations under an advisory lock, and the grants.

Layout (schema ``pgproxy`` unless configured otherwise)::

    <schema>.schema_version (component text, version integer, applied_at timestamptz,
                             PRIMARY KEY (component, version))
    <schema>.audit_log      one row per sealed record, PRIMARY KEY (chain_id, seq), record_id UNIQUE

``schema_version`` is shared by every pgproxy component that keeps tables in the schema; this module's
rows have ``component = 'audit'``. Another component (the approval store) may migrate the same schema
with :func:`apply_migrations` and its own component name: all migrations of a schema serialize on one
transaction-level advisory lock (:func:`migration_lock_key`), so replicas starting together do not race.

``audit_log.record`` holds the exact ``AuditRecord.to_json()`` text: the authority, from which the
canonical bytes (and so the hash) are reproduced byte for byte. The other columns are copies for
ordering and search (``subject``, ``email``, ``database``, ``decision``, ``rule_id``, ``relations``,
``approvers``, ``time``…); NUL characters, which PostgreSQL text cannot hold, are replaced by U+FFFD in
those copies only.

Least privilege: the role that owns (and migrates) the tables should not be the role pgproxy writes
with. :func:`grant_statements` lists what the writer and a reviewer need: the writer gets USAGE on the
schema, SELECT on ``schema_version``, SELECT and INSERT on ``audit_log`` — never UPDATE, DELETE or
TRUNCATE — and the reviewer SELECT only. No privilege is granted to PUBLIC.

This module runs DDL and nothing else: it must not read or write audit records, and it must not
weaken an existing table (no migration step drops, rewrites or grants).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import asyncpg

COMPONENT = "audit"

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_AUDIT_V1 = """
CREATE TABLE {s}.audit_log (
    chain_id    text        NOT NULL,
    seq         bigint      NOT NULL CHECK (seq > 0),
    record_id   text        NOT NULL UNIQUE,
    kind        text        NOT NULL,
    time        timestamptz NOT NULL,
    hash        text        NOT NULL,
    prev_hash   text        NOT NULL,
    session_id  text,
    subject     text,
    email       text,
    database    text,
    category    text,
    decision    text,
    rule_id     text,
    approval_id text,
    relations   text[]      NOT NULL DEFAULT '{{}}',
    approvers   text[]      NOT NULL DEFAULT '{{}}',
    record      text        NOT NULL,
    PRIMARY KEY (chain_id, seq)
);
REVOKE ALL ON TABLE {s}.audit_log FROM PUBLIC;
CREATE INDEX audit_log_time ON {s}.audit_log (time);
CREATE INDEX audit_log_subject ON {s}.audit_log (subject, time);
CREATE INDEX audit_log_email ON {s}.audit_log (email, time);
CREATE INDEX audit_log_database ON {s}.audit_log (database, time);
CREATE INDEX audit_log_rule ON {s}.audit_log (rule_id, time);
CREATE INDEX audit_log_session ON {s}.audit_log (session_id);
CREATE INDEX audit_log_approval ON {s}.audit_log (approval_id) WHERE approval_id IS NOT NULL;
CREATE INDEX audit_log_relations ON {s}.audit_log USING gin (relations);
CREATE INDEX audit_log_approvers ON {s}.audit_log USING gin (approvers);
"""

# (version, DDL with {s} for the quoted schema). Append new steps; never edit an applied one.
AUDIT_MIGRATIONS: tuple[tuple[int, str], ...] = ((1, _AUDIT_V1),)
AUDIT_VERSION = AUDIT_MIGRATIONS[-1][0]


class SchemaError(RuntimeError):
    """The audit schema cannot be used: newer than this pgproxy, or not migrated and not migratable."""


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def checked_schema(name: str) -> str:
    """``name`` quoted, after checking it is a plain lowercase identifier (it is pasted into DDL)."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"audit schema name must match {_IDENTIFIER.pattern}: {name!r}")
    return quote_identifier(name)


def migration_lock_key(schema: str) -> str:
    """The text hashed (``hashtextextended``) into the advisory lock every migration of ``schema`` takes."""
    return f"pgproxy.migrate:{schema}"


async def current_version(conn: asyncpg.Connection, schema: str, component: str = COMPONENT) -> int:
    """The applied version of ``component`` (0: schema or version table missing). Needs no lock."""
    quoted = checked_schema(schema)
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{quoted}.schema_version")
    if not exists:
        return 0
    version = await conn.fetchval(
        f"SELECT coalesce(max(version), 0) FROM {quoted}.schema_version WHERE component = $1",  # noqa: S608
        component,
    )
    return int(version)


async def apply_migrations(
    conn: asyncpg.Connection,
    schema: str,
    component: str = COMPONENT,
    steps: Sequence[tuple[int, str]] = AUDIT_MIGRATIONS,
) -> int:
    """Bring ``component`` in ``schema`` to its latest version; return that version.

    Up to date: reads only (a writer without CREATE privilege may open a schema its owner migrated).
    Otherwise one transaction: take the schema's advisory lock, create the schema and version table if
    missing, re-read the version and apply each newer step, recording it. Concurrent callers wait on the
    lock and then find nothing left to do. A schema newer than ``steps`` raises :class:`SchemaError`.
    """
    quoted = checked_schema(schema)
    latest = steps[-1][0]
    version = await current_version(conn, schema, component)
    if version == latest:
        return version
    if version > latest:
        raise SchemaError(f"schema {schema} has {component} version {version}; this pgproxy knows up to {latest}")
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", migration_lock_key(schema))
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {quoted}.schema_version ("
                "component text NOT NULL, version integer NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (component, version))"
            )
            version = await current_version(conn, schema, component)
            if version > latest:
                raise SchemaError(
                    f"schema {schema} has {component} version {version}; this pgproxy knows up to {latest}"
                )
            for step, ddl in steps:
                if step > version:
                    await conn.execute(ddl.format(s=quoted))
                    await conn.execute(
                        f"INSERT INTO {quoted}.schema_version (component, version) VALUES ($1, $2)",  # noqa: S608
                        component,
                        step,
                    )
    except asyncpg.InsufficientPrivilegeError as exc:
        raise SchemaError(
            f"schema {schema} needs {component} migrations {version + 1}..{latest} and this role may not "
            f"apply them ({exc}); run them once as the schema's owner"
        ) from exc
    return latest


def grant_statements(schema: str, *, writer: str, reviewer: str | None = None) -> list[str]:
    """The GRANTs the audit writer (and optionally a read-only reviewer) need, as SQL statements.

    Run them as the tables' owner after :func:`apply_migrations`. The writer must not own the tables
    (an owner may UPDATE and DELETE whatever is granted): migrate with a separate owner role.
    """
    s = checked_schema(schema)
    w = quote_identifier(writer)
    statements = [
        f"GRANT USAGE ON SCHEMA {s} TO {w}",
        f"GRANT SELECT ON {s}.schema_version TO {w}",
        f"GRANT SELECT, INSERT ON {s}.audit_log TO {w}",
    ]
    if reviewer is not None:
        r = quote_identifier(reviewer)
        statements += [
            f"GRANT USAGE ON SCHEMA {s} TO {r}",
            f"GRANT SELECT ON {s}.schema_version, {s}.audit_log TO {r}",
        ]
    return statements
