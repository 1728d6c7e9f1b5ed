"""A scratch database owned by one login role, with other login roles that own nothing.

For tests of pgproxy's own stores (the audit log, approvals) that check what each role may do: the
database and roles are dropped before (leftovers of an interrupted run) and after use.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg

from tests.support.pg_plugin import RealPostgres


@dataclass
class RoleDatabase:
    postgres: RealPostgres
    name: str
    password: str

    def dsn(self, role: str | None = None) -> str:
        """A DSN for the database: as ``role``, or as the server's superuser."""
        if role is None:
            return self.postgres.dsn(database=self.name)
        return self.postgres.dsn(role, self.name, self.password)


@contextmanager
def role_database(
    postgres: RealPostgres, name: str, *, owner: str, others: tuple[str, ...], password: str
) -> Iterator[RoleDatabase]:
    roles = (owner, *others)

    def drop(admin: psycopg.Connection[tuple[object, ...]]) -> None:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        for role in roles:
            admin.execute(f"DROP ROLE IF EXISTS {role}")

    with psycopg.connect(postgres.admin_dsn, autocommit=True) as admin:
        drop(admin)
        for role in roles:
            admin.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER PASSWORD '{password}'")
        admin.execute(f"CREATE DATABASE {name} OWNER {owner}")
    try:
        yield RoleDatabase(postgres, name, password)
    finally:
        with psycopg.connect(postgres.admin_dsn, autocommit=True) as admin:
            drop(admin)
