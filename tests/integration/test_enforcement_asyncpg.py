"""Policy enforcement seen through asyncpg (extended protocol: Parse, Bind, pipelined Binds).

Every way asyncpg can send a statement — ``fetch`` (a named Parse from its statement cache), ``prepare``,
``execute`` without arguments (a simple Query) and with them, ``executemany`` — is refused for a denied
statement in every spelling, with SQLSTATE 42501, the rule, the category and a hint; the connection stays
usable after each refusal, and PostgreSQL shows no effect. Allowed statements return exactly what they
return directly. A prepared statement is judged again at every execution: a policy reload that denies it
refuses its next run, and one that allows it again lets it run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support.compare import asyncpg_pair
from tests.support.enforcement import (
    DEFAULT,
    DENY_SECRETS_TO_READERS,
    HELD,
    ITEM_ROWS,
    ITEMS,
    REFUSED,
    SECRET_ROWS,
    SECRETS,
    SEQUENCE,
    SIDE_EFFECT_FUNCTION,
    Denial,
    GateDatabase,
    Snapshot,
    copy_policies,
    policy_version,
    spellings,
    token,
    wait_for_policy_version,
    with_rules,
    write_policy,
)
from tests.support.fake_idp import FakeIdP
from tests.support.pg_plugin import RealPostgres
from tests.support.proxy_plugin import ProxyFactory, RunningProxy

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Attack:
    """A denied statement with one parameter; ``literal`` is the parameter written as SQL."""

    sql: str
    arg: Any
    literal: str
    category: str
    rule: str = DEFAULT

    def plain(self, spelling: str) -> str:
        return spelling.replace("$1", self.literal)


ATTACKS = [
    Attack(f"DELETE FROM {ITEMS} WHERE id = $1", 1, "1", "write"),
    Attack(f"UPDATE {ITEMS} SET name = $1", "x", "'x'", "write"),
    Attack(f"WITH d AS (DELETE FROM {ITEMS} WHERE id = $1 RETURNING *) SELECT * FROM d", 1, "1", "write"),
    Attack(f"EXPLAIN (ANALYZE, COSTS off) DELETE FROM {ITEMS} WHERE id = $1", 1, "1", "write"),
    Attack(f"SELECT id FROM {ITEMS} WHERE id = $1 FOR UPDATE", 1, "1", "write"),
    Attack(f"SELECT nextval('{SEQUENCE}') + $1", 1, "1", "write"),
    Attack(f"SELECT setval('{SEQUENCE}', $1)", 1000, "1000", "write"),
    Attack("SELECT lo_from_bytea(0, $1)", b"smuggled", "'smuggled'::bytea", "write"),
    Attack("SELECT set_config('search_path', $1, false)", "pg_temp, public", "'pg_temp, public'", "privilege"),
    Attack(f"SELECT {SIDE_EFFECT_FUNCTION}() + $1", 1, "1", "procedural"),
    Attack(f"SELECT * INTO gate_copy FROM {ITEMS} WHERE id = $1", 1, "1", "ddl", HELD),
    Attack("SELECT pg_read_file($1)", "/etc/passwd", "'/etc/passwd'", "procedural", REFUSED),
    Attack(f"SELECT name FROM {SECRETS} WHERE id = $1; DELETE FROM {ITEMS}", 1, "1", "write"),
]


def attack_id(attack: Attack) -> str:
    return attack.sql[:50]


async def _fetch(conn: asyncpg.Connection, attack: Attack, spelling: str) -> object:
    return await conn.fetch(spelling, attack.arg)


async def _fetch_literal(conn: asyncpg.Connection, attack: Attack, spelling: str) -> object:
    return await conn.fetch(attack.plain(spelling))


async def _prepare(conn: asyncpg.Connection, attack: Attack, spelling: str) -> object:
    return await conn.prepare(spelling)


async def _execute(conn: asyncpg.Connection, attack: Attack, spelling: str) -> object:
    return await conn.execute(attack.plain(spelling))


async def _execute_args(conn: asyncpg.Connection, attack: Attack, spelling: str) -> object:
    return await conn.execute(spelling, attack.arg)


async def _executemany(conn: asyncpg.Connection, attack: Attack, spelling: str) -> object:
    await conn.executemany(spelling, [(attack.arg,), (attack.arg,), (attack.arg,)])
    return None


Method = Callable[[asyncpg.Connection, Attack, str], Awaitable[object]]
METHODS: dict[str, Method] = {
    "fetch": _fetch,
    "fetch_literal": _fetch_literal,
    "prepare": _prepare,
    "execute": _execute,
    "execute_args": _execute_args,
    "executemany": _executemany,
}


def check_refusal(error: asyncpg.PostgresError, denial: Denial) -> None:
    assert isinstance(error, asyncpg.exceptions.InsufficientPrivilegeError), repr(error)
    denial.check(error.sqlstate, error.message, error.detail, error.hint)


@pytest.mark.parametrize("method", list(METHODS))
async def test_denied_statements_through_every_api(
    enforcing: RunningProxy, gate: GateDatabase, baseline: Snapshot, fake_idp: FakeIdP, method: str
) -> None:
    conn = await asyncpg.connect(enforcing.url(token(fake_idp, "readers")))
    try:
        for attack in ATTACKS:
            for spelling in spellings(attack.sql):
                with pytest.raises(asyncpg.PostgresError) as raised:
                    await METHODS[method](conn, attack, spelling)
                check_refusal(raised.value, Denial(attack.rule, attack.category))
                assert await conn.fetchval("SELECT $1::int + 1", 41) == 42  # the session goes on
                assert not conn.is_in_transaction()
        # Nothing was left behind in asyncpg's statement cache or on the server.
        assert [tuple(r) for r in await conn.fetch(f"SELECT id, name FROM {ITEMS} ORDER BY id")] == ITEM_ROWS
    finally:
        await conn.close(timeout=10)
    assert gate.snapshot() == baseline


async def test_denial_inside_a_transaction_aborts_it(
    enforcing: RunningProxy, gate: GateDatabase, baseline: Snapshot, fake_idp: FakeIdP
) -> None:
    conn = await asyncpg.connect(enforcing.url(token(fake_idp, "readers")))
    try:
        transaction = conn.transaction()
        await transaction.start()
        assert await conn.fetchval(f"SELECT count(*) FROM {ITEMS}") == len(ITEM_ROWS)
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.fetch(f"DELETE FROM {ITEMS} WHERE id = $1", 1)
        with pytest.raises(asyncpg.exceptions.InFailedSQLTransactionError):
            await conn.fetchval("SELECT 1")
        await transaction.rollback()
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close(timeout=10)
    assert gate.snapshot() == baseline


# -- allowed statements ------------------------------------------------------------------------------------


async def _allowed_work(conn: asyncpg.Connection) -> list[Any]:
    out: list[Any] = []
    out.append([tuple(r) for r in await conn.fetch(f"SELECT * FROM {ITEMS} ORDER BY id")])
    out.append(await conn.fetchrow(f"SELECT name, length(name) FROM {ITEMS} WHERE id = $1", 2))
    out.append(await conn.fetchval(f'select count(*) from /* ; DELETE */ "{ITEMS}" where name like $1', "%a%"))
    out.append(await conn.execute(f"SELECT * FROM {ITEMS}"))
    out.append(await conn.execute(f"SELECT 1; SELECT * FROM {SECRETS}"))
    statement = await conn.prepare(f"SELECT id, secret FROM {SECRETS} WHERE id >= $1 ORDER BY id")
    out.append([tuple(a.name for a in statement.get_attributes())])
    for start in range(3):
        out.append([tuple(r) for r in await statement.fetch(start)])
    out.append(await conn.fetchval(f"SELECT last_value FROM {SEQUENCE}"))
    out.append(await conn.fetchval("SHOW default_transaction_read_only"))
    out.append(await conn.fetch("EXPLAIN (COSTS off) SELECT * FROM gate_items WHERE id = $1", 1))
    async with conn.transaction(readonly=True):
        cursor = await conn.cursor(f"SELECT id FROM {ITEMS} ORDER BY id")
        out.append(await cursor.fetch(2))
        out.append(await cursor.fetch(5))
        out.append([r["id"] async for r in conn.cursor(f"SELECT id FROM {ITEMS} ORDER BY id DESC", prefetch=1)])
    try:
        await conn.fetch("SELECT 1 / $1::int", 0)
    except asyncpg.PostgresError as exc:
        out.append((type(exc).__name__, exc.sqlstate, exc.message))
    out.append(await conn.fetchval("SELECT 'after the error'"))
    return [tuple(item) if isinstance(item, asyncpg.Record) else item for item in out]


async def test_allowed_statements_return_what_they_return_directly(
    enforcing: RunningProxy, postgres: RealPostgres, gate: GateDatabase, baseline: Snapshot, fake_idp: FakeIdP
) -> None:
    async with asyncpg_pair(enforcing, postgres, token(fake_idp, "readers")) as (direct, proxied):
        expected = await _allowed_work(direct)
        assert await _allowed_work(proxied) == expected
    assert expected[0] == ITEM_ROWS
    assert ("DivisionByZeroError", "22012", "division by zero") in expected
    assert gate.snapshot() == baseline


async def test_viewer_reads_through_asyncpg(enforcing: RunningProxy, fake_idp: FakeIdP) -> None:
    conn = await asyncpg.connect(enforcing.url(token(fake_idp, "viewers")))
    try:
        assert await conn.fetchval("SELECT current_user") == "gate_viewer"
        assert await conn.fetchval("SHOW default_transaction_read_only") == "on"
        assert [tuple(r) for r in await conn.fetch(f"SELECT * FROM {SECRETS} ORDER BY id")] == SECRET_ROWS
        with pytest.raises(asyncpg.PostgresError) as raised:
            await conn.execute("BEGIN READ WRITE")
        check_refusal(raised.value, Denial("pgproxy:read-only-session", "transaction"))
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close(timeout=10)


# -- a prepared statement is judged at every execution ----------------------------------------------------


async def test_prepared_statement_is_judged_again_after_a_policy_reload(
    proxy_factory: ProxyFactory, gate: GateDatabase, fake_idp: FakeIdP, tmp_path: Path
) -> None:
    policies = copy_policies(tmp_path)
    rules = policies / "rules.yaml"
    original = rules.read_text()
    proxy = proxy_factory(policies=policies, policy_poll_seconds=0.1)
    conn = await asyncpg.connect(proxy.url(token(fake_idp, "readers")))
    try:
        statement = await conn.prepare(f"SELECT id, secret FROM {SECRETS} WHERE id >= $1 ORDER BY id")
        assert [tuple(r) for r in await statement.fetch(0)] == SECRET_ROWS
        cursor_statement = await conn.prepare(f"SELECT secret FROM {SECRETS} ORDER BY id")

        version = policy_version(proxy)
        write_policy(rules, with_rules(original, DENY_SECRETS_TO_READERS))
        version = wait_for_policy_version(proxy, version)

        for _ in range(3):  # refused at each Bind, not once
            with pytest.raises(asyncpg.PostgresError) as raised:
                await statement.fetch(0)
            check_refusal(raised.value, Denial("readers-not-secrets", "read"))
            assert raised.value.hint == "read the other tables"
            assert await conn.fetchval("SELECT count(*) FROM gate_items") == 3
        with pytest.raises(asyncpg.PostgresError) as raised:
            await cursor_statement.fetchval()
        check_refusal(raised.value, Denial("readers-not-secrets", "read"))
        with pytest.raises(asyncpg.PostgresError) as raised:
            await conn.executemany(f"SELECT secret FROM {SECRETS} WHERE id = $1", [(1,), (2,)])
        check_refusal(raised.value, Denial("readers-not-secrets", "read"))

        write_policy(rules, original)
        wait_for_policy_version(proxy, version)
        assert [tuple(r) for r in await statement.fetch(2)] == SECRET_ROWS[1:]
        assert await cursor_statement.fetchval() == SECRET_ROWS[0][1]
    finally:
        await conn.close(timeout=10)
    gate.assert_untouched()
