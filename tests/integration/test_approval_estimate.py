"""The row estimate shown for a held write is the planner's own, and getting it never runs the write.

Each test explains statements on a real server through ``estimate_rows`` and compares the number with
what EXPLAIN reports when run directly, then checks the table (and a log table a volatile function
would write to) is unchanged.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator

import asyncpg
import psycopg
import pytest

from pgproxy.approvals.estimate import estimate_rows
from tests.support.pg_plugin import SCRAM_ROLE, UPSTREAM_ROLE, RealPostgres

pytestmark = pytest.mark.integration

ROWS = 5000
Connect = Callable[[], Awaitable[asyncpg.Connection]]
Conn = psycopg.Connection[tuple[object, ...]]


@pytest.fixture
def table(postgres: RealPostgres) -> Iterator[tuple[Conn, str]]:
    """A table of ROWS analysed rows, an empty copy, a log table and a function that writes to the log."""
    name = f"estimate_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.dsn(UPSTREAM_ROLE), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, a int)")
        conn.execute(f"INSERT INTO {name} SELECT g, g % 10 FROM generate_series(1, {ROWS}) g")
        conn.execute(f"CREATE TABLE {name}_copy (LIKE {name})")
        conn.execute(f"CREATE TABLE {name}_log (at timestamptz DEFAULT now())")
        conn.execute(
            f"CREATE FUNCTION {name}_noisy() RETURNS boolean VOLATILE LANGUAGE plpgsql AS"
            f" $$ BEGIN INSERT INTO {name}_log DEFAULT VALUES; RETURN true; END $$"
        )
        conn.execute(f"ANALYZE {name}")
        yield conn, name
        conn.execute(f"DROP TABLE IF EXISTS {name}, {name}_copy, {name}_log CASCADE")
        conn.execute(f"DROP FUNCTION IF EXISTS {name}_noisy()")


def connector(dsn: str) -> Connect:
    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(dsn)

    return connect


def planner_rows(conn: Conn, sql: str) -> int:
    """The rows EXPLAIN itself estimates for the input of the statement's ModifyTable node."""
    row = conn.execute(f"EXPLAIN (FORMAT JSON) {sql}").fetchone()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(str(row[0]))
    node = plan[0]["Plan"]
    assert node["Node Type"] == "ModifyTable"
    return round(float(node["Plans"][0]["Plan Rows"]))


def estimated(text: str | None) -> int:
    assert text is not None
    found = re.fullmatch(r"estimated ([\d,]+) rows? \(planner estimate\)", text)
    assert found is not None, text
    return int(found.group(1).replace(",", ""))


def count(conn: Conn, table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(str(row[0]))


@pytest.mark.parametrize(
    "template",
    [
        "DELETE FROM {t} WHERE id < 1000",
        "UPDATE {t} SET a = a + 1 WHERE a = 3",
        "INSERT INTO {t}_copy SELECT * FROM {t} WHERE id > 4000",
        "MERGE INTO {t}_copy c USING {t} s ON c.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.a)",
        "/* reason: clean up */ DELETE FROM {t} WHERE id < 1000;",
    ],
)
async def test_the_estimate_is_the_planners_and_nothing_runs(
    postgres: RealPostgres, table: tuple[Conn, str], template: str
) -> None:
    conn, name = table
    sql = template.format(t=name)
    before = conn.execute(f"SELECT sum(a) FROM {name}").fetchone()

    text = await estimate_rows(connector(postgres.dsn(UPSTREAM_ROLE)), sql, role=UPSTREAM_ROLE)

    expected = planner_rows(conn, sql)
    assert estimated(text) == expected
    assert ROWS / 1000 <= expected <= ROWS  # the analysed table gives a plausible, non-trivial estimate
    assert count(conn, name) == ROWS
    assert count(conn, f"{name}_copy") == 0
    assert conn.execute(f"SELECT sum(a) FROM {name}").fetchone() == before


async def test_the_estimate_is_close_to_the_truth(postgres: RealPostgres, table: tuple[Conn, str]) -> None:
    conn, name = table
    text = await estimate_rows(
        connector(postgres.dsn(UPSTREAM_ROLE)), f"DELETE FROM {name} WHERE id < 1001", role=None
    )
    assert 500 <= estimated(text) <= 2000  # the truth is 1,000
    assert text is not None and "," in text  # thousands are grouped for people
    assert count(conn, name) == ROWS


async def test_a_volatile_function_in_the_statement_is_not_called(
    postgres: RealPostgres, table: tuple[Conn, str]
) -> None:
    conn, name = table
    sql = f"DELETE FROM {name} WHERE {name}_noisy() AND id < 10"
    text = await estimate_rows(connector(postgres.dsn(UPSTREAM_ROLE)), sql, role=UPSTREAM_ROLE)
    assert estimated(text) == planner_rows(conn, sql)
    assert count(conn, f"{name}_log") == 0
    assert count(conn, name) == ROWS


@pytest.mark.parametrize(
    "template",
    [
        "DELETE FROM {t} WHERE id = $1",  # parameterised: cannot be planned without its values
        "DELETE FROM {t} WHERE id < 10; DELETE FROM {t}_copy",  # several statements
        "SELECT 1; DELETE FROM {t}",
        "ALTER TABLE {t} ADD COLUMN b int",  # DDL: describe_impact's business
        "TRUNCATE {t}",
        "SELECT * FROM {t}",
        "INSERT INTO {t}_copy VALUES (1, 2)",  # as many rows as written
        "EXPLAIN ANALYZE DELETE FROM {t}",
        "DELETE FROM {t} WHERE",  # does not parse
        "DELETE FROM {t}_missing",  # fails to plan
    ],
)
async def test_no_estimate(postgres: RealPostgres, table: tuple[Conn, str], template: str) -> None:
    conn, name = table
    sql = template.format(t=name)
    assert await estimate_rows(connector(postgres.dsn(UPSTREAM_ROLE)), sql, role=UPSTREAM_ROLE) is None
    assert count(conn, name) == ROWS
    assert count(conn, f"{name}_copy") == 0


async def test_a_table_the_role_cannot_read_gives_no_estimate(
    postgres: RealPostgres, table: tuple[Conn, str]
) -> None:
    conn, name = table
    admin = connector(postgres.dsn())
    sql = f"DELETE FROM {name} WHERE id < 10"
    assert await estimate_rows(admin, sql, role=SCRAM_ROLE) is None  # permission denied, swallowed
    assert estimated(await estimate_rows(admin, sql, role=None)) == planner_rows(conn, sql)


async def test_the_role_name_is_quoted(postgres: RealPostgres, table: tuple[Conn, str]) -> None:
    conn, name = table
    role = f'Est "reader"; {uuid.uuid4().hex[:6]}'
    quoted = '"' + role.replace('"', '""') + '"'
    with psycopg.connect(postgres.admin_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {quoted} NOLOGIN")
    try:
        conn.execute(f"GRANT SELECT, DELETE ON {name} TO {quoted}")
        sql = f"DELETE FROM {name} WHERE id < 10"
        text = await estimate_rows(connector(postgres.dsn()), sql, role=role)
        assert estimated(text) == planner_rows(conn, sql)
        assert await estimate_rows(connector(postgres.dsn()), sql, role=role + "x") is None  # no such role
    finally:
        conn.execute(f"REVOKE ALL ON {name} FROM {quoted}")
        with psycopg.connect(postgres.admin_dsn, autocommit=True) as admin:
            admin.execute(f"DROP ROLE {quoted}")


async def test_a_blocked_explain_gives_up(postgres: RealPostgres, table: tuple[Conn, str]) -> None:
    conn, name = table
    with psycopg.connect(postgres.dsn(UPSTREAM_ROLE)) as locker, locker.transaction():
        locker.execute(f"LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE")  # planning the DELETE must wait for it
        text = await estimate_rows(
            connector(postgres.dsn(UPSTREAM_ROLE)), f"DELETE FROM {name} WHERE id < 10", role=None, timeout=0.3
        )
    assert text is None
    assert count(conn, name) == ROWS


async def test_a_failing_connection_gives_no_estimate(table: tuple[Conn, str]) -> None:
    _, name = table

    async def refuse() -> asyncpg.Connection:
        raise OSError("connection refused")

    assert await estimate_rows(refuse, f"DELETE FROM {name}", role=None) is None
