"""Column masking on the extended protocol and the other read paths: asyncpg (binary, prepared statements
whose RowDescription the driver caches), a JDBC-style raw flow (named statements, Describe portal,
portals fetched over several Executes, re-Bind without Describe), SQL cursors and PREPARE/EXECUTE,
DDL seen through pgproxy, writes that would copy masked values, and the audit log.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from pgproxy.wire import backend as be
from pgproxy.wire import frontend as fe
from tests.support.enforcement import policy_version, wait_for_policy_version, write_policy
from tests.support.masking import MASK_KEY, POLICY, ROWS, MaskedSchema, email, masked_row, partial
from tests.support.proxy_plugin import ProxyFactory
from tests.support.raw_client import RawClient

pytestmark = pytest.mark.integration

SECRETS = [row[2] for row in ROWS if row[2] is not None] + [row[8] for row in ROWS if row[8] is not None]


def expected_customers(masked: MaskedSchema) -> list[tuple[Any, ...]]:
    return [masked_row(row) for row in masked.direct("SELECT * FROM customers ORDER BY id")]


# -- asyncpg: binary formats, statements prepared once and executed many times ----------------------------


async def _asyncpg_rows(masked: MaskedSchema) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[Any]]:
    conn = await asyncpg.connect(masked.proxy.url(masked.agent()))
    try:
        statement = await conn.prepare(masked.q("SELECT * FROM S.customers ORDER BY id"))
        first = [tuple(r.values()) for r in await statement.fetch()]
        again = [tuple(r.values()) for r in await statement.fetch()]  # cached RowDescription: Bind/Execute only
        lowered = [r[0] for r in await conn.fetch(masked.q("SELECT lower(email) FROM S.customers ORDER BY id"))]
        by_id = await conn.fetchval(masked.q("SELECT email FROM S.customers WHERE id = $1"), 1)
        lowered.append(by_id)
        async with conn.transaction():
            cursor = conn.cursor(masked.q("SELECT id, phone FROM S.customers ORDER BY id"), prefetch=1)
            phones = [tuple(r.values()) async for r in cursor]
        exported = io.BytesIO()
        await conn.copy_from_query(masked.q("SELECT id, email FROM S.customers ORDER BY id"), output=exported,
                                   format="csv")
        lowered.append(exported.getvalue().decode())
        return first + again, phones, lowered
    finally:
        await conn.close()


def test_asyncpg_binary_prepared_and_cursor(masked: MaskedSchema) -> None:
    rows, phones, lowered = asyncio.run(_asyncpg_rows(masked))
    expected = expected_customers(masked)
    assert rows == expected + expected
    assert phones == [(row[0], partial(row[3])) for row in ROWS]
    csv_text = lowered.pop()
    assert lowered == [None if row[2] is None else "***" for row in ROWS] + [email(ROWS[0][2])]
    assert csv_text.splitlines() == [f"{row[0]},{email(row[2]) or ''}" for row in ROWS]


# -- a JDBC-style flow on the raw protocol --------------------------------------------------------------


async def _jdbc_flow(masked: MaskedSchema) -> tuple[list[list[bytes | None]], list[list[bytes | None]]]:
    async with await RawClient.connect(masked.proxy.port) as client:
        await client.login(masked.agent())
        query = masked.q("SELECT id, email, upper(email) FROM S.customers ORDER BY id")
        await client.send(
            fe.Parse("S_1", query), fe.Bind("C_1", "S_1"), fe.Describe("P", "C_1"),
            fe.Execute("C_1", 2), fe.Execute("C_1", 2), fe.Execute("C_1", 0), fe.Sync(),
        )
        first = [list(m.values) for m in await client.read_until_ready() if isinstance(m, be.DataRow)]
        # The statement is reused the way JDBC does after prepareThreshold: Bind/Execute, no Describe.
        await client.send(fe.Bind("", "S_1", result_format_codes=(0, 0, 0)), fe.Execute("", 0), fe.Sync())
        second = [list(m.values) for m in await client.read_until_ready() if isinstance(m, be.DataRow)]
        return first, second


def test_jdbc_style_named_statement_portals_and_reuse(masked: MaskedSchema) -> None:
    first, second = asyncio.run(_jdbc_flow(masked))
    expected = [
        [str(row[0]).encode(), None if row[2] is None else email(row[2]).encode(),  # type: ignore[union-attr]
         None if row[2] is None else b"***"]
        for row in ROWS
    ]
    assert [[None if v is None else bytes(v) for v in row] for row in first] == expected
    assert [[None if v is None else bytes(v) for v in row] for row in second] == expected


async def _failed_rebind(masked: MaskedSchema) -> list[list[bytes | None]]:
    """A Bind to a portal name that exists (a WITH HOLD cursor) fails; the portal still returns its own rows."""
    async with await RawClient.connect(masked.proxy.port) as client:
        await client.login(masked.agent())
        await client.query(masked.q("DECLARE p CURSOR WITH HOLD FOR SELECT lower(email) FROM S.customers ORDER BY id"))
        await client.send(fe.Parse("plain", "SELECT 'x'::text"), fe.Bind("p", "plain"), fe.Sync())
        answer = await client.read_until_ready()
        assert any(isinstance(m, be.ErrorResponse) for m in answer)  # portal "p" already exists
        await client.send(fe.Execute("p", 0), fe.Sync())
        rows = [list(m.values) for m in await client.read_until_ready() if isinstance(m, be.DataRow)]
        await client.query("CLOSE p")
        return [[None if v is None else bytes(v) for v in row] for row in rows]


def test_failed_bind_does_not_change_what_a_portal_masks(masked: MaskedSchema) -> None:
    rows = asyncio.run(_failed_rebind(masked))
    # Executed without a Describe, pgproxy does not know the column's type: NULL is the masked value.
    assert rows == [[None] for _ in ROWS]


# -- SQL cursors, PREPARE/EXECUTE ---------------------------------------------------------------------


def test_sql_cursors_and_prepared_statements(masked: MaskedSchema) -> None:
    with psycopg.connect(masked.proxy.conninfo(masked.agent())) as conn:
        with conn.cursor(name="named") as cur:  # DECLARE … CURSOR, then FETCH FORWARD n
            cur.itersize = 2
            cur.execute(masked.q("SELECT id, email, email || '!' FROM S.customers ORDER BY id"))
            fetched = list(cur)
        conn.rollback()
        conn.execute(masked.q("PREPARE mine AS SELECT lower(email), phone FROM S.customers ORDER BY id"))
        executed = conn.execute("EXECUTE mine").fetchall()
        conn.rollback()
    assert fetched == [(row[0], email(row[2]), None if row[2] is None else "***") for row in ROWS]
    assert executed == [(None if row[2] is None else "***", partial(row[3])) for row in ROWS]


# -- DDL through pgproxy, writes that would copy masked values --------------------------------------------


def test_views_created_through_pgproxy_are_masked_at_once(masked: MaskedSchema) -> None:
    with psycopg.connect(masked.proxy.conninfo(masked.agent()), autocommit=True) as conn:
        conn.execute(masked.q("CREATE VIEW S.fresh AS SELECT id, email AS contact FROM S.customers"))
        rows = conn.execute(masked.q("SELECT contact FROM S.fresh ORDER BY id")).fetchall()
        conn.execute(masked.q("CREATE MATERIALIZED VIEW S.kept AS SELECT id, upper(email) AS shout FROM S.customers"))
        kept = conn.execute(masked.q("SELECT shout FROM S.kept ORDER BY id")).fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="whole-row"):
            conn.execute(masked.q("CREATE VIEW S.whole AS SELECT c AS everything FROM S.customers c"))
    assert [row[0] for row in rows] == [email(row[2]) for row in ROWS]
    assert [row[0] for row in kept] == [None if row[2] is None else "***" for row in ROWS]


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE S.stolen AS SELECT email FROM S.customers",
        "SELECT email INTO S.stolen2 FROM S.customers",
        "INSERT INTO S.orders (id, customer_id, total) SELECT id, id, length(email) FROM S.customers",
        "UPDATE S.customers SET name = email",
        "CREATE TABLE S.stolen3 AS WITH x AS (SELECT email FROM S.customers) SELECT * FROM x",
        "UPDATE S.orders o SET total = length(c.email) FROM S.customers c WHERE c.id = o.customer_id",
        "INSERT INTO S.customers (id, name) SELECT id + 100, phone FROM S.customers",
    ],
)
def test_writes_that_would_store_masked_values_are_refused(masked: MaskedSchema, statement: str) -> None:
    with (
        psycopg.connect(masked.proxy.conninfo(masked.agent()), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege) as refused,
    ):
        conn.execute(masked.q(statement))
    assert "masked" in str(refused.value)
    assert masked.direct("SELECT count(*) FROM orders") == [(3,)]
    assert masked.direct("SELECT name FROM customers ORDER BY id") == [(row[1],) for row in ROWS]


def test_objects_the_catalog_cannot_see_are_refused(masked: MaskedSchema) -> None:
    """A temporary view is invisible to pgproxy's catalog reading: reading it could bypass masking."""
    with psycopg.connect(masked.proxy.conninfo(masked.agent()), autocommit=True) as conn:
        conn.execute(masked.q("CREATE TEMP VIEW hidden AS SELECT lower(email) AS e FROM S.customers"))
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
            conn.execute("SELECT e || '' FROM hidden")
        assert "does not know" in str(refused.value)
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as notified:
            conn.execute(masked.q("SELECT pg_notify('leak', email) FROM S.customers"))
        assert "pg_notify" in str(notified.value)
        assert conn.execute("SELECT 'still usable'").fetchone() == ("still usable",)


def test_returning_is_masked(masked: MaskedSchema) -> None:
    with psycopg.connect(masked.proxy.conninfo(masked.agent())) as conn:
        query = "UPDATE S.customers SET name = name WHERE id = 1 RETURNING email, lower(email)"
        rows = conn.execute(masked.q(query)).fetchall()
        conn.rollback()
    assert rows == [(email(ROWS[0][2]), "***")]


# -- the audit log ------------------------------------------------------------------------------------------


def test_masked_values_never_reach_the_audit_log(masked: MaskedSchema) -> None:
    with psycopg.connect(masked.proxy.conninfo(masked.agent()), autocommit=True) as conn:
        conn.execute(masked.q("SELECT * FROM S.customers")).fetchall()
        with pytest.raises(psycopg.Error):
            conn.execute(masked.q("SELECT ssn::int FROM S.customers"))
        with pytest.raises(psycopg.Error):
            conn.execute(masked.q("SELECT email::int FROM S.customers"))
    masked.proxy.drain_audit()
    log = "\n".join(record.to_json() for record in masked.proxy.audit_records())
    assert "ssn::int" in log  # the statements are there
    for secret in SECRETS:
        assert secret not in log


# -- policy reloads ----------------------------------------------------------------------------------------


def test_a_reload_that_masks_an_open_session_ends_it(masked: MaskedSchema, proxy_factory: ProxyFactory,
                                                    tmp_path: Path) -> None:
    """A session that had no masks is ended at its next statement once a reload gives it masks; a new
    session then sees masked values. Sessions with masks follow the new masks at once."""
    policies = tmp_path / "reloaded"
    policies.mkdir()
    masks_file = policies / "masks.yaml"
    policy = POLICY.replace("SCHEMA", masked.schema)
    write_policy(masks_file, policy.split("masks:")[0])
    proxy = proxy_factory(policies=policies, policy_poll_seconds=0.1, mask_key=MASK_KEY)
    query = masked.q("SELECT email FROM S.customers WHERE id = 1")
    with psycopg.connect(proxy.conninfo(masked.agent()), autocommit=True) as conn:
        assert conn.execute(query).fetchone() == (ROWS[0][2],)
        version = policy_version(proxy)
        write_policy(masks_file, policy)
        wait_for_policy_version(proxy, version)
        with pytest.raises(psycopg.OperationalError, match="now masks columns"):
            conn.execute(query)
    with psycopg.connect(proxy.conninfo(masked.agent()), autocommit=True) as conn:
        assert conn.execute(query).fetchone() == (email(ROWS[0][2]),)
        version = policy_version(proxy)
        write_policy(masks_file, policy.replace("customers.email: email", "customers.email: \"null\""))
        wait_for_policy_version(proxy, version)
        assert conn.execute(query).fetchone() == (None,)
