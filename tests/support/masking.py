"""A masked schema and a proxy whose policy masks it (the ``masked`` fixture), for the masking integration tests.

``customers`` holds one column per strategy (and per interesting type); ``orders`` is unmasked; a view
and a materialized view read the masked columns. The policy masks them for everyone but the ``dba``
group, with ``ssn`` guarded against filtering (``refuse_predicates``). Expected masked values are
computed here independently of pgproxy's code, from the rows read directly from PostgreSQL.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.pg_plugin import UPSTREAM_ROLE, RealPostgres
from tests.support.proxy_plugin import ProxyFactory, RunningProxy

MASK_KEY = "masking-tests-key-0123456789abcdef"

POLICY = """
rules:
  - id: tests-all
    who: {everyone: true}
    databases: ["*"]
    categories: ["*"]
    effect: allow
masks:
  - id: customer-pii
    databases: ["*"]
    who: {everyone: true}
    exempt: {groups: [dba]}
    columns:
      SCHEMA.customers.email: email
      SCHEMA.customers.phone: {strategy: partial, keep_first: 0, keep_last: 4}
      SCHEMA.customers.token: hash
      SCHEMA.customers.score: hash
      SCHEMA.customers.card: "null"
      SCHEMA.customers.note: {strategy: redact, text: "[hidden]"}
  - id: ssn-guard
    databases: ["*"]
    refuse_predicates: true
    exempt: {groups: [dba]}
    columns:
      SCHEMA.customers.ssn: redact
"""

ROWS = [
    (1, "Ada", "ada@example.com", "+44 20 7946 0001", uuid.UUID(int=1), 71, "4111111111111111", "likes tea",
     "123-45-6789"),
    (2, "Bob", "bob.smith@mail.example.org", "555-0102", uuid.UUID(int=2), -5, "5500000000000004", "tab\there",
     "987-65-4321"),
    (3, "Cé", "ce@exämple.fr", "12", uuid.UUID(int=3), 0, None, "line\nbreak \\ back", "111-22-3333"),
    (4, "Dan", None, None, None, None, None, None, None),
]
COLUMNS = ("id", "name", "email", "phone", "token", "score", "card", "note", "ssn")


@dataclass
class MaskedSchema:
    postgres: RealPostgres
    schema: str
    proxy: RunningProxy

    def direct(self, query: str) -> list[tuple[Any, ...]]:
        """Rows read directly from PostgreSQL (unmasked), as pgproxy's login."""
        with psycopg.connect(self.postgres.dsn(UPSTREAM_ROLE), autocommit=True) as conn:
            conn.execute(f"SET search_path = {self.schema}, public")
            return conn.execute(query).fetchall()

    def q(self, query: str) -> str:
        return query.replace("S.", f"{self.schema}.")

    def agent(self, name: str = "agent-1") -> str:
        return self.proxy.idp.mint(name, email=f"{name}@example.com", groups=["agents"])

    def dba(self, name: str = "dba-1") -> str:
        return self.proxy.idp.mint(name, email=f"{name}@example.com", groups=["dba"])


def create_schema(postgres: RealPostgres, schema: str) -> None:
    with psycopg.connect(postgres.dsn(UPSTREAM_ROLE), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(
            f"CREATE TABLE {schema}.customers (id int PRIMARY KEY, name text, email text, phone varchar(20),"
            " token uuid, score int, card char(16), note text, ssn text)"
        )
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {schema}.customers VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", ROWS)
        conn.execute(f"CREATE TABLE {schema}.orders (id int, customer_id int, total numeric)")
        conn.execute(f"INSERT INTO {schema}.orders VALUES (10, 1, 9.5), (11, 2, 20), (12, 1, 3.25)")
        conn.execute(
            f"CREATE VIEW {schema}.contacts AS SELECT id, email, lower(email) AS lowered, name FROM {schema}.customers"
        )
        conn.execute(f"CREATE MATERIALIZED VIEW {schema}.phones AS SELECT id, phone FROM {schema}.customers")


def drop_schema(postgres: RealPostgres, schema: str) -> None:
    with psycopg.connect(postgres.dsn(UPSTREAM_ROLE), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(scope="module")
def masked(
    postgres: RealPostgres, proxy_factory: ProxyFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MaskedSchema]:
    """A fresh masked schema and a proxy masking it, for one test module."""
    yield from masked_schema(postgres, proxy_factory, tmp_path_factory.mktemp("masking"))


def masked_schema(postgres: RealPostgres, proxy_factory: ProxyFactory, tmp: Path) -> Iterator[MaskedSchema]:
    schema = f"mask_{uuid.uuid4().hex[:8]}"
    create_schema(postgres, schema)
    policies = tmp / f"policies-{schema}"
    policies.mkdir()
    (policies / "masks.yaml").write_text(POLICY.replace("SCHEMA", schema))
    proxy = proxy_factory(policies=policies, mask_key=MASK_KEY)
    try:
        yield MaskedSchema(postgres, schema, proxy)
    finally:
        drop_schema(postgres, schema)


# -- expected values, computed independently ---------------------------------------------------------


def email(value: str | None) -> str | None:
    if value is None:
        return None
    return "***@" + value.rsplit("@", 1)[1] if "@" in value else "***"


def partial(value: str | None, last: int = 4) -> str | None:
    if value is None:
        return None
    if len(value) <= last:
        return "*" * len(value)
    return "*" * (len(value) - last) + value[-last:]


def hashed_text(value: str | None) -> str | None:
    if value is None:
        return None
    return hmac.new(MASK_KEY.encode(), value.encode(), hashlib.sha256).hexdigest()


def hashed_int(value: int | None) -> int | None:
    if value is None:
        return None
    digest = hmac.new(MASK_KEY.encode(), str(value).encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:4], "big", signed=True)


def hashed_uuid(value: uuid.UUID | None) -> uuid.UUID | None:
    if value is None:
        return None
    digest = hmac.new(MASK_KEY.encode(), str(value).encode(), hashlib.sha256).digest()
    return uuid.UUID(bytes=digest[:16], version=4)


def masked_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A ``customers`` row as an agent must see it."""
    id_, name, mail, phone, token, score, _card, note, ssn = row
    return (
        id_, name, email(mail), partial(phone), hashed_uuid(token), hashed_int(score), None,
        None if note is None else "[hidden]", None if ssn is None else "***",
    )
