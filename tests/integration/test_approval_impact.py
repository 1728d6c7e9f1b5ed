"""The lock a held statement is said to take is the lock PostgreSQL really takes.

Each statement runs inside a transaction on a real server (then rolled back), and the strongest lock
it holds on the table — read from pg_locks — must be the one ``describe_impact`` names.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from pgproxy.approvals.impact import describe_impact
from tests.support.pg_plugin import UPSTREAM_ROLE, RealPostgres

pytestmark = pytest.mark.integration

STATEMENTS = [
    "ALTER TABLE {t} ADD COLUMN extra int",
    "ALTER TABLE {t} ADD COLUMN extra int DEFAULT random()",
    "ALTER TABLE {t} ADD COLUMN extra bigserial",
    "ALTER TABLE {t} ALTER COLUMN a TYPE bigint",
    "ALTER TABLE {t} ALTER COLUMN a SET NOT NULL",
    "ALTER TABLE {t} ALTER COLUMN a SET STATISTICS 100",
    "ALTER TABLE {t} ALTER COLUMN a SET (n_distinct = 10)",
    "ALTER TABLE {t} ADD CONSTRAINT positive CHECK (a > 0)",
    "ALTER TABLE {t} ADD CONSTRAINT positive CHECK (a > 0) NOT VALID",
    "ALTER TABLE {t} ADD CONSTRAINT to_parent FOREIGN KEY (a) REFERENCES {t}_parent (id) NOT VALID",
    "ALTER TABLE {t} DISABLE TRIGGER ALL",
    "ALTER TABLE {t} RENAME COLUMN b TO c",
    "ALTER TABLE {t} DROP COLUMN b",
    "ALTER TABLE {t} SET UNLOGGED",
    "CREATE INDEX ON {t} (a)",
    "TRUNCATE {t}",
    "DROP TABLE {t}",
    "CLUSTER {t} USING {t}_pkey",
    "REINDEX TABLE {t}",
    "LOCK TABLE {t} IN SHARE ROW EXCLUSIVE MODE",
    "ALTER TABLE {t} RENAME TO {t}_renamed",
]


@pytest.fixture
def table(postgres: RealPostgres) -> Iterator[tuple[psycopg.Connection[tuple[object, ...]], str]]:
    name = f"impact_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.dsn(UPSTREAM_ROLE), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name}_parent (id int PRIMARY KEY)")
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, a int, b text)")
        yield conn, name
        conn.execute(f"DROP TABLE IF EXISTS {name}, {name}_renamed, {name}_parent CASCADE")


@pytest.mark.parametrize("template", STATEMENTS)
def test_the_described_lock_is_the_lock_postgres_takes(
    table: tuple[psycopg.Connection[tuple[object, ...]], str], template: str
) -> None:
    conn, name = table
    statement = template.format(t=name)
    oid = conn.execute("SELECT %s::regclass::oid", [name]).fetchone()
    assert oid is not None
    with conn.transaction(force_rollback=True):
        conn.execute(statement)
        modes = [str(row[0]) for row in conn.execute(
            "SELECT mode FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'relation' AND relation = %s",
            [oid[0]],
        )]
    order = ["AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock",
             "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"]
    strongest = max(modes, key=order.index)
    words = " ".join(part.upper() for part in _split_camel(strongest.removesuffix("Lock")))
    impact = describe_impact(statement)
    assert impact is not None and impact.startswith(words + " lock"), (statement, strongest, impact)


def test_rewrites_and_scans_are_named() -> None:
    assert "rewrites the table" in (describe_impact("ALTER TABLE t ADD COLUMN x int DEFAULT random()") or "")
    assert "rewrite" not in (describe_impact("ALTER TABLE t ADD COLUMN x int DEFAULT 0") or "")
    assert "rewrite" not in (describe_impact("ALTER TABLE t ADD COLUMN x timestamptz DEFAULT now()") or "")
    assert "scans every row" in (describe_impact("ALTER TABLE t ALTER COLUMN a SET NOT NULL") or "")
    assert "scans" not in (describe_impact("ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0) NOT VALID") or "")
    assert describe_impact("CREATE TABLE n (a int)") is None
    assert describe_impact("this is not SQL") is None


def _split_camel(text: str) -> list[str]:
    words: list[str] = []
    for char in text:
        if char.isupper() and words:
            words.append(char)
        elif words:
            words[-1] += char
        else:
            words.append(char)
    return words
