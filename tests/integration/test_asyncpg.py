"""asyncpg through pgproxy: binary results, prepared statements, portals, COPY, transactions,
cancellation and notifications must behave exactly as they do directly against PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import io
import ipaddress
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support.compare import TYPES_QUERY, asyncpg_both, asyncpg_pair, comparable, unique_name
from tests.support.pg_plugin import UPSTREAM_ROLE, RealPostgres
from tests.support.proxy_plugin import RunningProxy

pytestmark = pytest.mark.integration


def plain(value: Any) -> Any:
    """Records (also nested in arrays or records) as tuples, NaN by name, so they compare by value."""
    if isinstance(value, asyncpg.Record):
        return tuple(plain(item) for item in value.values())
    if type(value) in (list, tuple):
        return type(value)(plain(item) for item in value)
    return comparable(value)


def rows(records: list[asyncpg.Record]) -> list[tuple[Any, ...]]:
    return [tuple(plain(value) for value in record.values()) for record in records]


async def poll(condition: Callable[[], Awaitable[bool]], deadline: float = 10.0) -> bool:
    end = time.monotonic() + deadline
    while not await condition():
        if time.monotonic() >= end:
            return False
        await asyncio.sleep(0.05)
    return True


# -- results ---------------------------------------------------------------------------------------------


async def test_binary_results_for_many_types(proxy: RunningProxy, postgres: RealPostgres) -> None:
    async def work(conn: asyncpg.Connection) -> tuple[Any, ...]:
        statement = await conn.prepare(TYPES_QUERY)
        attributes = [(a.name, a.type.name, a.type.kind) for a in statement.get_attributes()]
        record = await statement.fetchrow()
        assert record is not None
        await conn.execute("CREATE TEMP TABLE pair(a int, b text[], c jsonb)")
        composite = await conn.fetchrow(
            "SELECT ROW(7, ARRAY['x', NULL], '[1]')::pair AS p, ARRAY[ROW(8, NULL, NULL)::pair] AS ps"
        )
        assert composite is not None
        extremes = await conn.fetchrow("SELECT 'infinity'::date, '-infinity'::timestamptz, 'NaN'::float8")
        assert extremes is not None
        return attributes, list(record.keys()), plain(record), plain(composite), plain(extremes)

    direct, proxied = await asyncpg_both(proxy, postgres, work)
    assert proxied == direct
    assert proxied[3] == ((7, ["x", None], "[1]"), [(8, None, None)])
    assert proxied[4] == (dt.date.max, dt.datetime.min, "NaN")  # asyncpg's stand-ins for infinities
    values = dict(zip(proxied[1], proxied[2], strict=True))
    assert values["i8"] == 9223372036854775807
    assert values["num_nan"] == values["f4_nan"] == "NaN"
    assert values["num"] == decimal.Decimal("12345678901234567890.123456789")
    assert values["b"] == b"\x00\xff\x10"
    assert values["tstz"] == dt.datetime(2024, 2, 29, 7, 44, 15, 123456, tzinfo=dt.UTC)
    assert values["iv"] == dt.timedelta(days=365 + 2 * 30 + 3, seconds=4 * 3600 + 5 * 60 + 6, microseconds=789000)
    assert values["u"] == uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    assert values["a_int"] == [1, None, 3]
    assert values["rec"] == (1, "two", None, decimal.Decimal("1.5"))
    assert values["net"] == ipaddress.ip_network("192.168.0.0/24")
    assert values["n_int"] is None and values["n_array"] is None


async def test_binary_parameters_round_trip(proxy: RunningProxy, postgres: RealPostgres) -> None:
    args: list[Any] = [
        -32768, 2**31 - 1, -(2**63), decimal.Decimal("-1234.5678"), 0.1, "ü∑🙂", b"\x00\x01\xfe", True,
        dt.date(1999, 12, 31), dt.datetime(2000, 1, 2, 3, 4, 5, 6), dt.datetime(2000, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        dt.timedelta(days=-1, seconds=5), uuid.UUID(int=7), '{"k": [1, "v"]}', [[1, 2], [3, None]], None,
    ]
    query = (
        "SELECT $1::int2, $2::int4, $3::int8, $4::numeric, $5::float8, $6::text, $7::bytea, $8::bool, $9::date, "
        "$10::timestamp, $11::timestamptz, $12::interval, $13::uuid, $14::jsonb, $15::int[], $16::text"
    )

    async def work(conn: asyncpg.Connection) -> list[Any]:
        record = await conn.fetchrow(query, *args)
        assert record is not None
        return list(record.values())

    direct, proxied = await asyncpg_both(proxy, postgres, work)
    assert proxied == direct
    assert proxied[:13] == args[:13]
    assert proxied[14:] == args[14:]


async def test_large_result_set(proxy: RunningProxy, postgres: RealPostgres) -> None:
    query = "SELECT g, md5(g::text) AS h, g % 7 = 0 AS seventh FROM generate_series(1, 200000) AS g"

    async def work(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
        return rows(await conn.fetch(query))

    direct, proxied = await asyncpg_both(proxy, postgres, work)
    assert len(proxied) == 200000
    assert proxied == direct


# -- prepared statements, executemany, portals -------------------------------------------------------------


async def test_named_prepared_statements_executed_repeatedly(proxy: RunningProxy, postgres: RealPostgres) -> None:
    async def work(conn: asyncpg.Connection) -> list[Any]:
        statement = await conn.prepare("SELECT g, $1::text || g AS label FROM generate_series(1, $2::int) AS g")
        single = await conn.prepare("SELECT $1::int * 2")
        out: list[Any] = []
        for count in (0, 1, 5, 50):
            out.append(rows(await statement.fetch(f"n{count}-", count)))
            out.append(plain(await statement.fetchrow("row-", count)))
            out.append(await statement.fetchval("val-", count, column=1))
        out.extend([await single.fetchval(i) for i in range(20)])
        prepared = await conn.fetch("SELECT statement FROM pg_prepared_statements")
        out.append(sorted(str(r["statement"]) for r in prepared if "generate_series(1, $2::int)" in r["statement"]))
        out.append([(p.name, p.kind) for p in statement.get_parameters()])
        return out

    direct, proxied = await asyncpg_both(proxy, postgres, work)
    assert proxied == direct
    assert proxied[0] == [] and proxied[1] is None and proxied[2] is None
    assert proxied[-2] == ["SELECT g, $1::text || g AS label FROM generate_series(1, $2::int) AS g"]


async def test_executemany(proxy: RunningProxy, postgres: RealPostgres) -> None:
    data = [(i, f"name {i}", None if i % 3 else decimal.Decimal(i) / 4) for i in range(500)]

    async def work(conn: asyncpg.Connection) -> tuple[list[tuple[Any, ...]], str]:
        await conn.execute("CREATE TEMP TABLE many(id int PRIMARY KEY, name text, amount numeric)")
        await conn.executemany("INSERT INTO many VALUES ($1, $2, $3)", data)
        await conn.executemany("UPDATE many SET name = upper(name) WHERE id = $1", [(i,) for i in range(0, 500, 50)])
        status = await conn.execute("DELETE FROM many WHERE id >= $1", 490)
        return rows(await conn.fetch("SELECT * FROM many ORDER BY id")), status

    direct, proxied = await asyncpg_both(proxy, postgres, work)
    assert proxied == direct
    assert len(proxied[0]) == 490 and proxied[1] == "DELETE 10"
    assert proxied[0][50] == (50, "NAME 50", None)


async def test_cursors_fetch_in_batches_inside_a_transaction(proxy: RunningProxy, postgres: RealPostgres) -> None:
    async def work(conn: asyncpg.Connection) -> list[Any]:
        out: list[Any] = []
        async with conn.transaction():
            iterated = [r["g"] async for r in conn.cursor("SELECT g FROM generate_series(1, 1000) AS g", prefetch=37)]
            out.append(iterated)
            cursor = await conn.cursor("SELECT g, $1::text AS tag FROM generate_series(1, 100) AS g", "t")
            for size in (30, 30, 1, 29, 30, 5):
                out.append(rows(await cursor.fetch(size)))
            cursor = await conn.cursor("SELECT g FROM generate_series(1, 20) AS g")
            out.append(await cursor.forward(5))
            out.append(plain(await cursor.fetchrow()))
            out.append(rows(await cursor.fetch(3)))
            out.append(await cursor.forward(100))
            out.append(await cursor.fetchrow())
            statement = await conn.prepare("SELECT g, g * $1::int AS m FROM generate_series(1, 10) AS g")
            out.append([plain(r) async for r in statement.cursor(3, prefetch=4)])
        return out

    direct, proxied = await asyncpg_both(proxy, postgres, work)
    assert proxied == direct
    assert proxied[0] == list(range(1, 1001))
    assert [len(batch) for batch in proxied[1:7]] == [30, 30, 1, 29, 10, 0]
    assert proxied[7:12] == [5, (6,), [(7,), (8,), (9,)], 11, None]


# -- COPY ------------------------------------------------------------------------------------------------


async def test_copy_records_to_table(proxy: RunningProxy, postgres: RealPostgres) -> None:
    records = [
        (i, f"row {i} \t tab, comma \"quote\"", b"\x00" * (i % 4), dt.date(2020, 1, 1) + dt.timedelta(days=i),
         None if i % 5 == 0 else [i, -i], {"i": i} if i % 2 else None)
        for i in range(3000)
    ]

    async def work(conn: asyncpg.Connection) -> tuple[str, list[tuple[Any, ...]]]:
        await conn.execute(
            "CREATE TEMP TABLE target(id int, note text, raw bytea, day date, pair int[], doc text)"
        )
        status = await conn.copy_records_to_table(
            "target", records=[(*r[:5], None if r[5] is None else str(r[5])) for r in records]
        )
        return status, rows(await conn.fetch("SELECT * FROM target ORDER BY id"))

    direct, proxied = await asyncpg_both(proxy, postgres, work)
    assert proxied == direct
    assert proxied[0] == "COPY 3000"
    assert proxied[1][7] == (7, records[7][1], b"\x00" * 3, dt.date(2020, 1, 8), [7, -7], "{'i': 7}")


async def test_copy_out_bytes_equal(proxy: RunningProxy, postgres: RealPostgres) -> None:
    async def work(conn: asyncpg.Connection) -> list[Any]:
        await conn.execute(
            "CREATE TEMP TABLE src AS SELECT g AS id, repeat('ü', g % 17) AS note, "
            "CASE WHEN g % 3 = 0 THEN NULL ELSE g * 1.25 END AS amount FROM generate_series(1, 20000) AS g"
        )
        out: list[Any] = []
        for options in ({}, {"format": "csv", "header": True}, {"format": "binary"}):
            sink = io.BytesIO()
            status = await conn.copy_from_query("SELECT * FROM src WHERE id > $1 ORDER BY id", 10, output=sink,
                                                **options)
            out.append((status, sink.getvalue()))
            table_sink = io.BytesIO()
            status = await conn.copy_from_table("src", output=table_sink, columns=["id", "note"], **options)
            out.append((status, table_sink.getvalue()))
        return out

    direct, proxied = await asyncpg_both(proxy, postgres, work)
    assert proxied == direct
    assert proxied[0][0] == "COPY 19990" and proxied[1][0] == "COPY 20000"
    assert proxied[4][1].startswith(b"PGCOPY\n\xff\r\n\x00")


async def test_copy_to_table_from_file(proxy: RunningProxy, postgres: RealPostgres, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("".join(f'{i},"name, {i}",{"" if i % 4 == 0 else i / 2}\n' for i in range(5000)),
                      encoding="utf-8")

    async def work(conn: asyncpg.Connection) -> tuple[str, list[tuple[Any, ...]]]:
        await conn.execute("CREATE TEMP TABLE loaded(id int, name text, half numeric)")
        status = await conn.copy_to_table("loaded", source=source, format="csv")
        return status, rows(await conn.fetch("SELECT * FROM loaded ORDER BY id"))

    direct, proxied = await asyncpg_both(proxy, postgres, work)
    assert proxied == direct
    assert proxied[0] == "COPY 5000"
    assert proxied[1][3] == (3, "name, 3", decimal.Decimal("1.5")) and proxied[1][4][2] is None


async def test_copy_error_keeps_connection_usable(proxy: RunningProxy, postgres: RealPostgres) -> None:
    async def work(conn: asyncpg.Connection) -> list[Any]:
        await conn.execute("CREATE TEMP TABLE strict_ints(id int)")
        out: list[Any] = []
        try:
            await conn.copy_to_table("strict_ints", source=io.BytesIO(b"1\n2\nnot a number\n"))
        except asyncpg.PostgresError as exc:
            out.append((type(exc).__name__, exc.sqlstate))
        out.append(await conn.fetchval("SELECT count(*) FROM strict_ints"))
        return out

    direct, proxied = await asyncpg_both(proxy, postgres, work)
    assert proxied == direct == [("InvalidTextRepresentationError", "22P02"), 0]


# -- transactions ------------------------------------------------------------------------------------------


class _Rollback(Exception):
    pass


async def test_transactions_with_savepoints_and_rollback(proxy: RunningProxy, postgres: RealPostgres) -> None:
    async def work(conn: asyncpg.Connection) -> list[Any]:
        await conn.execute("CREATE TEMP TABLE ledger(id int)")
        out: list[Any] = []
        async with conn.transaction():
            await conn.execute("INSERT INTO ledger VALUES (1)")
            try:
                async with conn.transaction():  # a savepoint
                    await conn.execute("INSERT INTO ledger VALUES (2)")
                    out.append(await conn.fetchval("SELECT count(*) FROM ledger"))
                    raise _Rollback
            except _Rollback:
                pass
            async with conn.transaction():
                await conn.execute("INSERT INTO ledger VALUES (3)")
            out.append(conn.is_in_transaction())
        out.append(conn.is_in_transaction())
        outer = conn.transaction()
        await outer.start()
        await conn.execute("INSERT INTO ledger VALUES (4)")
        await outer.rollback()
        async with conn.transaction(isolation="serializable", readonly=True):
            out.append(await conn.fetchval("SHOW transaction_isolation"))
            out.append(await conn.fetchval("SHOW transaction_read_only"))
        await conn.execute("BEGIN; INSERT INTO ledger VALUES (5); SAVEPOINT s; INSERT INTO ledger VALUES (6); "
                           "ROLLBACK TO SAVEPOINT s; COMMIT")
        out.append([r["id"] for r in await conn.fetch("SELECT id FROM ledger ORDER BY id")])
        return out

    direct, proxied = await asyncpg_both(proxy, postgres, work)
    assert proxied == direct == [2, True, False, "serializable", "on", [1, 3, 5]]


async def test_error_mid_transaction_then_recovery(proxy: RunningProxy, postgres: RealPostgres) -> None:
    async def attempt(conn: asyncpg.Connection, query: str, *args: Any) -> Any:
        try:
            return plain(await conn.fetch(query, *args))
        except asyncpg.PostgresError as exc:
            return type(exc).__name__, exc.sqlstate, str(exc)

    async def work(conn: asyncpg.Connection) -> list[Any]:
        await conn.execute("CREATE TEMP TABLE items(id int PRIMARY KEY)")
        transaction = conn.transaction()
        await transaction.start()
        out = [await attempt(conn, "INSERT INTO items VALUES (1) RETURNING id")]
        out.append(await attempt(conn, "SELECT 1 / $1::int", 0))
        out.append(await attempt(conn, "SELECT 1"))
        out.append(conn.is_in_transaction())
        await transaction.rollback()
        out.append(await attempt(conn, "SELECT count(*) FROM items"))
        out.append(await attempt(conn, "INSERT INTO items VALUES (1), (1)"))
        out.append(await attempt(conn, "SELECT * FROM no_such_table"))
        out.append(await attempt(conn, "SELECT $1::int", 41))
        out.append(conn.is_in_transaction())
        return out

    direct, proxied = await asyncpg_both(proxy, postgres, work)
    assert proxied == direct
    assert proxied[1][:2] == ("DivisionByZeroError", "22012")
    assert proxied[2][:2] == ("InFailedSQLTransactionError", "25P02")
    assert proxied[5][:2] == ("UniqueViolationError", "23505")
    assert proxied[-2:] == [[(41,)], False]


# -- cancellation ------------------------------------------------------------------------------------------


async def test_timeout_cancels_the_query_server_side(proxy: RunningProxy, postgres: RealPostgres) -> None:
    subject = unique_name("timeout")
    outcomes: list[Any] = []
    admin: asyncpg.Connection = await asyncpg.connect(postgres.admin_dsn)
    try:
        for dsn in (postgres.dsn(UPSTREAM_ROLE), proxy.url(proxy.idp.mint(subject))):
            conn: asyncpg.Connection = await asyncpg.connect(dsn)
            try:
                pid = conn.get_server_pid()
                try:
                    await conn.fetchval("SELECT pg_sleep(30)", timeout=0.5)
                    outcomes.append("completed")
                except (TimeoutError, asyncpg.QueryCanceledError) as exc:
                    outcomes.append(type(exc).__name__)

                async def sleeping(pid: int = pid) -> bool:
                    still = await admin.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE (pid = $1 OR application_name LIKE $2) "
                        "AND state = 'active' AND query LIKE '%pg_sleep(30)%'",
                        pid, f"{subject} via pgproxy%",
                    )
                    return bool(still == 0)

                outcomes.append(await poll(sleeping))
                outcomes.append(await conn.fetchval("SELECT 'usable'", timeout=10))
                outcomes.append(await conn.fetchval("SELECT pg_backend_pid()") == pid)
            finally:
                await conn.close(timeout=10)
    finally:
        await admin.close()
    assert outcomes[4:] == outcomes[:4]
    assert outcomes[1:] == [True, "usable", True, *outcomes[:1], True, "usable", True]


# -- notifications, backend identity -------------------------------------------------------------------------


async def test_listen_notify_across_two_sessions(proxy: RunningProxy, postgres: RealPostgres) -> None:
    channel = unique_name("chan")

    async def exchange(listener: asyncpg.Connection, sender: asyncpg.Connection) -> list[Any]:
        received: asyncio.Queue[tuple[int, str, str]] = asyncio.Queue()

        def on_notify(conn: object, pid: int, chan: str, payload: object) -> None:
            received.put_nowait((pid, chan, str(payload)))

        await listener.add_listener(channel, on_notify)
        await sender.execute(f"NOTIFY {channel}, 'hello ü'")
        await sender.fetchval("SELECT pg_notify($1, $2)", channel, "second")
        async with sender.transaction():
            await sender.execute(f"NOTIFY {channel}, 'in a transaction'")
        got = [await asyncio.wait_for(received.get(), 10) for _ in range(3)]
        await listener.remove_listener(channel, on_notify)
        return [(pid == sender.get_server_pid(), chan, payload) for pid, chan, payload in got]

    async with (
        asyncpg_pair(proxy, postgres) as (direct_listener, proxied_listener),
        asyncpg_pair(proxy, postgres) as (direct_sender, proxied_sender),
    ):
        direct = await exchange(direct_listener, direct_sender)
        proxied = await exchange(proxied_listener, proxied_sender)
    assert proxied == direct
    assert proxied == [(True, channel, "hello ü"), (True, channel, "second"), (True, channel, "in a transaction")]


async def test_server_pid_matches_backend_pid(proxy: RunningProxy, postgres: RealPostgres) -> None:
    async def work(conn: asyncpg.Connection) -> bool:
        backend_pid: int = await conn.fetchval("SELECT pg_backend_pid()")
        return conn.get_server_pid() == backend_pid

    assert await asyncpg_both(proxy, postgres, work) == (True, True)


@pytest.mark.parametrize(
    ("email", "client_app"),
    [("someone@example.com", None), (None, None), ("dev@example.com", "report-job")],
)
async def test_application_name_names_the_identity(
    proxy: RunningProxy, postgres: RealPostgres, email: str | None, client_app: str | None
) -> None:
    subject = unique_name("subject")
    identity = email or subject
    settings = {"application_name": client_app} if client_app else {}
    conn: asyncpg.Connection = await asyncpg.connect(proxy.url(proxy.idp.mint(subject, email=email)),
                                                     server_settings=settings)
    try:
        async with asyncpg.create_pool(postgres.admin_dsn, min_size=1, max_size=1) as admin:
            seen = await admin.fetchval(
                "SELECT application_name FROM pg_stat_activity WHERE pid = $1", conn.get_server_pid()
            )
            own = await conn.fetchval("SELECT current_setting('application_name')")
            user = await conn.fetchval("SELECT current_user")
    finally:
        await conn.close()
    assert isinstance(seen, str)
    assert seen.startswith(identity) and "via pgproxy" in seen
    assert seen == own
    assert user == UPSTREAM_ROLE
    expected = f"{identity} via pgproxy" + (f" ({client_app})" if client_app else "")
    assert seen == expected


async def test_pool_reuses_sessions_and_resets_them(proxy: RunningProxy, postgres: RealPostgres) -> None:
    async def exercise(dsn: str) -> list[Any]:
        out: list[Any] = []
        async with asyncpg.create_pool(dsn, min_size=1, max_size=2) as pool:
            pids = []
            for _ in range(5):
                async with pool.acquire() as conn:
                    pids.append(await conn.fetchval("SELECT pg_backend_pid()"))
                    out.append(await conn.fetchval("SHOW statement_timeout"))
                    await conn.execute("SET statement_timeout = '5s'")  # the pool resets it on release
            out.append(len(set(pids)))
            async with pool.acquire() as first, pool.acquire() as second:
                out.append(first.get_server_pid() != second.get_server_pid())
                values = await asyncio.gather(first.fetchval("SELECT 1"), second.fetchval("SELECT 2"))
                out.append(values)
            out.append(await pool.fetchval("SELECT $1::int + 1", 41))
        return out

    direct = await exercise(postgres.dsn(UPSTREAM_ROLE))
    proxied = await exercise(proxy.url())
    assert proxied == direct == ["0", "0", "0", "0", "0", 1, True, [1, 2], 42]
