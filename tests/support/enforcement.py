"""Shared pieces of the policy-enforcement integration tests.

- ``gate_database(postgres)`` creates, once per test session, what the enforcing policy
  (``tests/support/policies/enforcing``) talks about: the tables ``gate_items`` and ``gate_secrets``,
  the sequence ``gate_seq``, a SQL function with a side effect, and the NOLOGIN role ``gate_viewer``
  that viewers' sessions run as. ``GateDatabase.snapshot()`` reads, directly on PostgreSQL, everything
  a statement that slipped through could have changed; tests compare it before and after.
- ``token(idp, group)`` mints a token for one member of a policy group.
- ``Denial`` checks one refused statement: SQLSTATE 42501, the message names the rule, a hint is
  given and the detail states the rule and the statement's category.
- ``spellings(sql)`` generates the spellings of one statement that PostgreSQL reads identically
  (letter case, comments, whitespace and, for the tables and the sequence, every way of quoting
  their names), so that a test covers the class of inputs, not one example.
- Policy-directory helpers for reload tests: copy, rewrite (always seen as changed) and wait.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pglast.parser
import psycopg

from tests.support.compare import wait_until
from tests.support.fake_idp import FakeIdP
from tests.support.pg_plugin import UPSTREAM_ROLE, RealPostgres
from tests.support.proxy_plugin import POLICIES, RunningProxy
from tests.unit.sql.variants import fixed_variants

__all__ = [
    "DELETING_PROCEDURE",
    "DENIED",
    "ENFORCING",
    "ITEMS",
    "ITEM_ROWS",
    "PROBE_FILE",
    "SECRETS",
    "SECRET_ROWS",
    "SEQUENCE",
    "SEQUENCE_START",
    "SIDE_EFFECT_FUNCTION",
    "VIEWER_ROLE",
    "Denial",
    "GateDatabase",
    "Snapshot",
    "copy_policies",
    "gate_database",
    "identifier_spellings",
    "policy_error",
    "policy_version",
    "poll",
    "spellings",
    "token",
    "wait_for_policy_error",
    "wait_for_policy_version",
    "write_policy",
]

ENFORCING = POLICIES / "enforcing"
# Rule ids the tests expect: pgproxy's own decisions and the enforcing policy's held DDL.
DEFAULT, REFUSED, HELD = "pgproxy:default-deny", "pgproxy:refused", "readers-ddl-needs-approval"
DENIED = "42501"
ITEMS, SECRETS, SEQUENCE = "gate_items", "gate_secrets", "gate_seq"
VIEWER_ROLE = "gate_viewer"
SIDE_EFFECT_FUNCTION = "gate_insert_item"  # a SQL function owned by the database owner that INSERTs
DELETING_PROCEDURE = "gate_delete_items"  # a procedure owned by the database owner that DELETEs
ITEM_ROWS = [(1, "alpha"), (2, "beta"), (3, "gamma")]
SECRET_ROWS = [(1, "s3cr3t"), (2, "hunter2")]
SEQUENCE_START = 41
# A server-side path no test may ever create: COPY … TO '<file>' and lo_export aim at it.
PROBE_FILE = f"/tmp/pgproxy_gate_probe_{uuid.uuid4().hex[:12]}"

_SETUP_ADMIN = f"""
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{VIEWER_ROLE}') THEN
    CREATE ROLE {VIEWER_ROLE} NOLOGIN;
  END IF;
END $$;
GRANT {VIEWER_ROLE} TO {UPSTREAM_ROLE};
"""

_SETUP_OWNER = f"""
CREATE TABLE IF NOT EXISTS {ITEMS} (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE IF NOT EXISTS {SECRETS} (id int PRIMARY KEY, secret text NOT NULL);
CREATE SEQUENCE IF NOT EXISTS {SEQUENCE};
CREATE OR REPLACE FUNCTION {SIDE_EFFECT_FUNCTION}() RETURNS int LANGUAGE sql
  AS $$ INSERT INTO {ITEMS} VALUES (1000 + (SELECT count(*) FROM {ITEMS}), 'smuggled') RETURNING id $$;
CREATE OR REPLACE PROCEDURE {DELETING_PROCEDURE}() LANGUAGE sql AS $$ DELETE FROM {ITEMS} $$;
GRANT SELECT ON {ITEMS}, {SECRETS}, {SEQUENCE} TO {VIEWER_ROLE};
"""

# Everything a statement that got through could have changed, read directly on PostgreSQL.
_SNAPSHOT = {
    "items": f"SELECT id, name FROM {ITEMS} ORDER BY id",
    "secrets": f"SELECT id, secret FROM {SECRETS} ORDER BY id",
    "sequence": f"SELECT last_value, is_called FROM {SEQUENCE}",
    "relations": """SELECT n.nspname, c.relname, c.relkind, c.relacl::text, c.relrowsecurity,
                           obj_description(c.oid, 'pg_class')
                    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
                      AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%'
                    ORDER BY 1, 2""",
    "columns": f"""SELECT attrelid::regclass::text, attname, atttypid::regtype::text FROM pg_attribute
                   WHERE attrelid IN ('{ITEMS}'::regclass, '{SECRETS}'::regclass) AND attnum > 0
                     AND NOT attisdropped ORDER BY 1, 2""",
    "functions": """SELECT p.oid::regprocedure::text, p.proacl::text, p.prosrc FROM pg_proc p
                    JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public' ORDER BY 1""",
    "schemas": "SELECT nspname, nspacl::text FROM pg_namespace ORDER BY 1",
    "roles": """SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolbypassrls
                FROM pg_roles ORDER BY 1""",
    "memberships": "SELECT roleid::regrole::text, member::regrole::text FROM pg_auth_members ORDER BY 1, 2",
    "database": "SELECT datacl::text FROM pg_database WHERE datname = current_database()",
    "role_settings": "SELECT setdatabase, setrole, setconfig FROM pg_db_role_setting ORDER BY 1, 2",
    "default_acls": "SELECT defaclrole, defaclnamespace, defaclobjtype, defaclacl::text FROM pg_default_acl",
    "large_objects": "SELECT oid FROM pg_largeobject_metadata ORDER BY 1",
    "prepared_transactions": "SELECT gid FROM pg_prepared_xacts ORDER BY 1",
    "server_settings": "SELECT sourcefile, name, setting FROM pg_file_settings ORDER BY 1, 2",
    "probe_file": f"SELECT pg_stat_file('{PROBE_FILE}', true) IS NOT NULL",
}


Snapshot = dict[str, list[tuple[Any, ...]]]


@dataclass
class GateDatabase:
    postgres: RealPostgres

    @property
    def owner_dsn(self) -> str:
        """A direct connection as the owner of the test database (pgproxy's own upstream login)."""
        return self.postgres.dsn(UPSTREAM_ROLE)

    @property
    def superuser_dsn(self) -> str:
        """A direct superuser connection to the test database."""
        return self.postgres.dsn()

    def snapshot(self) -> Snapshot:
        with psycopg.connect(self.superuser_dsn, autocommit=True) as conn:
            return {name: conn.execute(query).fetchall() for name, query in _SNAPSHOT.items()}

    def owner_rows(self, query: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.owner_dsn, autocommit=True) as conn:
            return conn.execute(query).fetchall()

    def owner_execute(self, script: str) -> None:
        with psycopg.connect(self.owner_dsn, autocommit=True) as conn:
            conn.execute(script)

    def assert_untouched(self) -> None:
        """The shared objects hold exactly what ``gate_database`` put there."""
        state = self.snapshot()
        assert state["items"] == ITEM_ROWS
        assert state["secrets"] == SECRET_ROWS
        assert state["sequence"] == [(SEQUENCE_START, True)]
        assert state["probe_file"] == [(False,)]


_created: dict[tuple[str, int], GateDatabase] = {}


def gate_database(postgres: RealPostgres) -> GateDatabase:
    """Create (once per server and test session) the objects the enforcing policy talks about."""
    key = (postgres.host, postgres.port)
    if key not in _created:
        with psycopg.connect(postgres.admin_dsn, autocommit=True) as admin:
            admin.execute(_SETUP_ADMIN)
        with psycopg.connect(postgres.dsn(UPSTREAM_ROLE), autocommit=True) as owner:
            owner.execute(_SETUP_OWNER)
            with owner.transaction():
                owner.execute(f"DELETE FROM {ITEMS}")
                owner.execute(f"DELETE FROM {SECRETS}")
                with owner.cursor() as cursor:
                    cursor.executemany(f"INSERT INTO {ITEMS} VALUES (%s, %s)", ITEM_ROWS)
                    cursor.executemany(f"INSERT INTO {SECRETS} VALUES (%s, %s)", SECRET_ROWS)
                owner.execute("SELECT setval(%s, %s, true)", (SEQUENCE, SEQUENCE_START))
        _created[key] = GateDatabase(postgres)
    return _created[key]


def token(idp: FakeIdP, group: str | None, *, sub: str | None = None) -> str:
    """A token for a member of ``group`` (None: a member of no group)."""
    name = sub or f"{group or 'nobody'}-member"
    return idp.mint(name, email=f"{name}@example.com", groups=[group] if group else [])


@dataclass(frozen=True)
class Denial:
    """What a refused statement must look like to the client."""

    rule: str
    category: str

    def check(self, sqlstate: str | None, message: str | None, detail: str | None, hint: str | None) -> None:
        assert sqlstate == DENIED, (sqlstate, message)
        assert message is not None and self.rule in message, message
        if self.rule == "readers-ddl-needs-approval":
            assert message.startswith("approval required: "), message
        assert hint, f"no hint with {message!r}"
        assert detail is not None, message
        effect = "require_approval" if message.startswith("approval required") else "deny"
        expected = f"pgproxy policy: {effect} by rule {self.rule}; category {self.category}"
        assert detail.startswith(expected), (detail, expected)


def identifier_spellings(name: str) -> list[str]:
    """Every way of writing the unqualified table name ``name`` that PostgreSQL resolves to it."""
    escaped = "".join(f"\\{ord(ch):04x}" if ch in "aeiou" else ch for ch in name)
    bang = "".join(f"!{ord(ch):04x}" if index == 0 else ch for index, ch in enumerate(name))
    return [
        name,
        name.upper(),
        f'"{name}"',
        f"public.{name}",
        f'"public"."{name}"',
        f'PUBLIC."{name}"',
        f'U&"{escaped}"',
        f"U&\"{bang}\" UESCAPE '!'",
        f'u&"{name}"',
    ]


def respell_identifier(sql: str, name: str, spelled: str) -> str:
    """``sql`` with every identifier token ``name`` (not text inside constants or comments) replaced."""
    out, copied = [], 0
    for item in pglast.parser.scan(sql):
        if item.name == "IDENT" and sql[item.start : item.end + 1] == name:
            out += [sql[copied : item.start], spelled]
            copied = item.end + 1
    return "".join(out) + sql[copied:]


def spellings(sql: str, *, names: tuple[str, ...] = (ITEMS, SECRETS)) -> list[str]:
    """``sql`` in many spellings PostgreSQL reads the same way (deduplicated, original first)."""
    found = list(fixed_variants(sql))
    for name in names:
        found += [respell_identifier(sql, name, spelled) for spelled in identifier_spellings(name)[1:]]
    return list(dict.fromkeys(found))


# -- policy reloads --------------------------------------------------------------------------------------


def copy_policies(destination: Path, source: Path = ENFORCING) -> Path:
    """A private, editable copy of a policy directory."""
    target = destination / "policies"
    shutil.copytree(source, target)
    return target


# A rule that, put first, closes the secrets table to readers (as a reload would).
DENY_SECRETS_TO_READERS = """\
  - id: readers-not-secrets
    who: {groups: [readers]}
    databases: [pgproxy_test]
    tables: ["*.gate_secrets"]
    categories: ["*"]
    effect: deny
    reason: readers lost access to the secrets table
    hint: read the other tables
"""


def with_rules(original: str, *rules: str) -> str:
    """The policy file ``original`` with ``rules`` put first in its rule list."""
    return original.replace("\nrules:\n", "\nrules:\n" + "".join(rules), 1)


def write_policy(path: Path, text: str) -> None:
    """Replace a policy file so that a change-detecting poll cannot miss it (a fresh mtime, even when the
    size is the same and the clock's resolution is coarse)."""
    previous = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    stamp = max(time.time_ns(), previous + 1_000_000_000)
    os.utime(path, ns=(stamp, stamp))


def poll(condition: Callable[[], bool], *, deadline: float = 20.0) -> bool:
    """Whether ``condition`` became true within ``deadline`` seconds (reloads are polled every 20 ms)."""
    return wait_until(condition, deadline=deadline, interval=0.02)


def _policies(proxy: RunningProxy) -> Any:
    return proxy.server.context.policies


def wait_for_policy_version(proxy: RunningProxy, above: int) -> int:
    """Wait until the proxy runs a policy set newer than version ``above``; return its version."""
    assert poll(lambda: proxy.call_soon(lambda: _policies(proxy).version) > above), "the policy was not reloaded"
    version: int = proxy.call_soon(lambda: _policies(proxy).version)
    return version


def wait_for_policy_error(proxy: RunningProxy) -> str:
    """Wait until a reload failed; return the error the proxy recorded."""
    assert poll(lambda: proxy.call_soon(lambda: _policies(proxy).last_error) is not None), "no reload failed"
    error: str = proxy.call_soon(lambda: _policies(proxy).last_error)
    return error


def policy_error(proxy: RunningProxy) -> str | None:
    """Why the last reload failed (file, line and field of each problem), or None after a good one."""
    error: str | None = proxy.call_soon(lambda: _policies(proxy).last_error)
    return error


def policy_version(proxy: RunningProxy) -> int:
    version: int = proxy.call_soon(lambda: _policies(proxy).version)
    return version
