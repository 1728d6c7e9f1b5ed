"""psycopg 3 (sync and async) through pgproxy: text and binary results, parameters, pipeline mode,
server-side cursors, COPY, server-side prepared statements, transaction status, notices and
cancellation must behave exactly as they do directly against PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.types.json import Jsonb

from tests.support.compare import (
    TYPES_QUERY,
    comparable,
    psycopg_async_both,
    psycopg_both,
    psycopg_pair,
    wait_until,
)
from tests.support.pg_plugin import UPSTREAM_ROLE, RealPostgres
from tests.support.proxy_plugin import RunningProxy

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]
AsyncConn = psycopg.AsyncConnection[Any]

PARAMS_QUERY = (
    "SELECT %(small)s::int2, %(big)s::int8, %(num)s::numeric, %(flt)s::float8, %(txt)s::text, %(raw)s::bytea, "
    "%(flag)s::bool, %(day)s::date, %(stamp)s::timestamptz, %(span)s::interval, %(doc)s::jsonb, %(ints)s::int[], "
    "%(nothing)s::text"
)
PARAMS: dict[str, Any] = {
    "small": -32768, "big": 2**62, "num": decimal.Decimal("-1234.5678"), "flt": 0.1, "txt": "ü∑🙂 'quoted' %s",
    "raw": b"\x00\x01\xfe", "flag": True, "day": dt.date(1999, 12, 31),
    "stamp": dt.datetime(2000, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "span": dt.timedelta(days=-1, seconds=5),
    "doc": Jsonb({"k": [1, "v", None]}), "ints": [[1, 2], [3, None]], "nothing": None,
}


def description(cursor: psycopg.Cursor[Any] | psycopg.AsyncCursor[Any]) -> list[tuple[str, int]]:
    return [(column.name, column.type_code) for column in cursor.description or ()]


def sleeping_backend(admin_dsn: str, pid: int) -> bool:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND state = 'active' "
            "AND query LIKE 'SELECT pg_sleep(30)%%'", (pid,)
        ).fetchone()
    return row is not None and row[0] == 1


# -- results and parameters ----------------------------------------------------------------------------


def test_text_and_binary_results_equal_direct(proxy: RunningProxy, postgres: RealPostgres) -> None:
    def work(conn: Conn) -> list[Any]:
        out: list[Any] = []
        for binary in (False, True):
            with conn.cursor(binary=binary) as cur:
                cur.execute(TYPES_QUERY)
                out.append((description(cur), comparable(cur.fetchall())))
                cur.execute("SELECT g, g::text, g * 1.5 FROM generate_series(1, 2000) AS g")
                out.append(cur.fetchall())
        return out

    direct, proxied = psycopg_both(proxy, postgres, work)
    assert proxied == direct
    text_rows, binary_rows = proxied[0][1], proxied[2][1]
    assert len(text_rows) == len(binary_rows) == 1
    names = [name for name, _ in proxied[0][0]]
    text_row, binary_row = dict(zip(names, text_rows[0], strict=True)), dict(zip(names, binary_rows[0], strict=True))
    for column in ("i8", "num", "b", "tstz", "u", "jb", "a_int", "a_text2d", "n_int", "d", "iv"):
        assert text_row[column] == binary_row[column], column
    assert text_row["b"] == b"\x00\xff\x10" and text_row["a_int"] == [1, None, 3]
    assert proxied[1] == proxied[3] and len(proxied[1]) == 2000


@pytest.mark.parametrize("binary", [False, True])
def test_parameters(proxy: RunningProxy, postgres: RealPostgres, binary: bool) -> None:
    def work(conn: Conn) -> list[Any]:
        with conn.cursor(binary=binary) as cur:
            cur.execute(PARAMS_QUERY, PARAMS, binary=binary)
            out: list[Any] = [cur.fetchone()]
            cur.execute("CREATE TEMP TABLE params(id int, label text)")
            cur.executemany("INSERT INTO params VALUES (%s, %s)", [(i, f"label {i}") for i in range(100)])
            out.append(cur.rowcount)
            cur.execute(sql.SQL("SELECT {} FROM params WHERE id = ANY(%s) ORDER BY id").format(sql.Identifier("label")),
                        ([3, 5, 99, 1000],))
            out.append(cur.fetchall())
        return out

    direct, proxied = psycopg_both(proxy, postgres, work)
    assert proxied == direct
    row = proxied[0]
    assert row[:10] == tuple(v for k, v in PARAMS.items() if k not in ("doc", "ints", "nothing"))
    assert row[10:] == ({"k": [1, "v", None]}, [[1, 2], [3, None]], None)
    assert proxied[1:] == [100, [("label 3",), ("label 5",), ("label 99",)]]


def test_prepared_server_side(proxy: RunningProxy, postgres: RealPostgres) -> None:
    def work(conn: Conn) -> list[Any]:
        out: list[Any] = []
        for value in range(6):
            out.append(conn.execute("SELECT %s::int + 1, %s::text", (value, f"v{value}")).fetchone())
            out.append(conn.execute("SELECT %s::int * 3", (value,), binary=True).fetchone())
        out.append(conn.execute("SELECT 'literal'", prepare=True).fetchone())
        prepared = conn.execute(
            "SELECT name, statement, parameter_types::text[] FROM pg_prepared_statements "
            "WHERE name LIKE '\\_pg3\\_%%' ORDER BY statement"
        ).fetchall()
        out.append(prepared)
        return out

    direct, proxied = psycopg_both(proxy, postgres, work, prepare_threshold=0, autocommit=True)
    assert proxied == direct
    statements = {statement for _, statement, _ in proxied[-1]}
    assert {"SELECT $1::int + 1, $2::text", "SELECT $1::int * 3", "SELECT 'literal'"} <= statements


# -- pipeline mode ---------------------------------------------------------------------------------------


def test_pipeline_with_an_error_and_recovery(proxy: RunningProxy, postgres: RealPostgres) -> None:
    def work(conn: Conn) -> list[Any]:
        conn.execute("CREATE TEMP TABLE piped(id int PRIMARY KEY, note text)")
        out: list[Any] = []
        try:
            with conn.pipeline() as pipeline:
                first = conn.execute("INSERT INTO piped VALUES (1, 'one') RETURNING id")
                pipeline.sync()
                out.append(first.fetchone())
                conn.execute("INSERT INTO piped VALUES (%s, %s)", (2, "two"))
                conn.cursor().executemany("INSERT INTO piped VALUES (%s, %s)", [(3, "three"), (4, "four")])
                conn.execute("INSERT INTO piped VALUES (1, 'duplicate')")
                conn.execute("INSERT INTO piped VALUES (5, 'five')")
        except errors.UniqueViolation as exc:
            out.append(("UniqueViolation", exc.sqlstate))
        out.append(conn.info.transaction_status.name)
        out.append(conn.execute("SELECT array_agg(id ORDER BY id) FROM piped").fetchone())
        with conn.pipeline():
            cursors = [conn.execute("SELECT %s::int * 2, %s::text", (i, str(i))) for i in range(20)]
            out.append([cursor.fetchone() for cursor in cursors])
        with conn.pipeline() as pipeline, conn.transaction():
            conn.execute("INSERT INTO piped VALUES (6, 'six')")
            pipeline.sync()
            out.append(conn.info.transaction_status.name)
        out.append(conn.execute("SELECT count(*) FROM piped").fetchone())
        return out

    direct, proxied = psycopg_both(proxy, postgres, work, autocommit=True)
    assert proxied == direct
    assert proxied[0] == (1,) and proxied[1] == ("UniqueViolation", "23505")
    assert proxied[2] == "IDLE" and proxied[4] == [(i * 2, str(i)) for i in range(20)]


# -- server-side cursors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True])
def test_server_side_cursor_itersize_and_scrolling(proxy: RunningProxy, postgres: RealPostgres, binary: bool) -> None:
    def work(conn: Conn) -> list[Any]:
        out: list[Any] = []
        with conn.cursor(name="walker", scrollable=True, binary=binary) as cur:
            cur.itersize = 7
            cur.execute("SELECT g, md5(g::text), g * 0.5 FROM generate_series(1, %s) AS g", (100,))
            out.append(description(cur))
            out.append([cur.fetchone() for _ in range(3)])
            out.append(cur.fetchmany(10))
            cur.scroll(0, mode="absolute")
            out.append(cur.fetchone())
            cur.scroll(50, mode="absolute")
            out.append(cur.fetchone())
            cur.scroll(-5)
            out.append(cur.fetchone())
            out.append(list(cur))
            out.append(cur.fetchone())
            cur.scroll(-1)
            out.append(cur.fetchall())
        conn.commit()
        with conn.cursor(name="held", withhold=True) as cur:
            cur.itersize = 3
            cur.execute("SELECT g FROM generate_series(1, 10) AS g")
            conn.commit()
            out.append([row[0] for row in cur])
        out.append(conn.execute("SELECT name FROM pg_cursors").fetchall())
        return out

    direct, proxied = psycopg_both(proxy, postgres, work)
    assert proxied == direct
    assert [row[0] for row in proxied[1] + proxied[2]] == list(range(1, 14))
    assert proxied[3][0] == 1 and proxied[4][0] == 51 and proxied[5][0] == 47
    assert [row[0] for row in proxied[6]] == list(range(48, 101))
    assert proxied[7] is None and proxied[8] == [] and proxied[9] == list(range(1, 11)) and proxied[10] == []


# -- COPY ----------------------------------------------------------------------------------------------------


def test_copy_both_ways(proxy: RunningProxy, postgres: RealPostgres) -> None:
    records = [(i, f"row {i}\ttab\nnewline \\ back", None if i % 4 == 0 else decimal.Decimal(i) / 8,
                dt.date(2020, 1, 1) + dt.timedelta(days=i)) for i in range(2000)]

    def work(conn: Conn) -> list[Any]:
        out: list[Any] = []
        with conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE copied(id int, note text, amount numeric, day date)")
            with cur.copy("COPY copied (id, note, amount, day) FROM STDIN") as copy:
                for record in records[:1000]:
                    copy.write_row(record)
            out.append(cur.rowcount)
            with cur.copy("COPY copied FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "text", "numeric", "date"])
                for record in records[1000:]:
                    copy.write_row(record)
            out.append(cur.rowcount)
            with cur.copy("COPY copied (id, note) FROM STDIN (FORMAT csv)") as copy:
                copy.write(b'5000,"raw, csv"\n5001,"second ""line"""\n')
            out.append(cur.rowcount)
            with cur.copy("COPY (SELECT * FROM copied ORDER BY id) TO STDOUT") as copy:
                copy.set_types(["int4", "text", "numeric", "date"])
                out.append(list(copy.rows()))
            for options in ("", "(FORMAT csv, HEADER)", "(FORMAT binary)"):
                with cur.copy(f"COPY (SELECT * FROM copied ORDER BY id) TO STDOUT {options}") as copy:
                    out.append(b"".join(bytes(chunk) for chunk in copy))
            with cur.copy("COPY copied (id, amount) TO STDOUT (FORMAT binary)") as copy:
                copy.set_types(["int4", "numeric"])
                out.append(sorted(copy.rows(), key=lambda row: int(row[0])))
        return out

    direct, proxied = psycopg_both(proxy, postgres, work, autocommit=True)
    assert proxied == direct
    assert proxied[:3] == [1000, 1000, 2]
    assert proxied[3][:2000] == records
    assert proxied[6].startswith(b"PGCOPY\n\xff\r\n\x00")


def test_copy_error_recovers(proxy: RunningProxy, postgres: RealPostgres) -> None:
    def work(conn: Conn) -> list[Any]:
        out: list[Any] = []
        conn.execute("CREATE TEMP TABLE ints(id int)")
        try:
            with conn.cursor() as cur, cur.copy("COPY ints FROM STDIN") as copy:
                copy.write_row(("1",))
                copy.write_row(("not a number",))
        except errors.InvalidTextRepresentation as exc:
            out.append(exc.sqlstate)
        try:
            with conn.cursor() as cur, cur.copy("COPY ints FROM STDIN") as copy:
                copy.write_row((1,))
                raise RuntimeError("client gives up")  # psycopg sends CopyFail, then re-raises
        except RuntimeError as exc:
            out.append(str(exc))
        out.append(conn.execute("SELECT count(*) FROM ints").fetchone())
        out.append(conn.info.transaction_status.name)
        return out

    direct, proxied = psycopg_both(proxy, postgres, work, autocommit=True)
    assert proxied == direct
    assert proxied == ["22P02", "client gives up", (0,), "IDLE"]


# -- session state --------------------------------------------------------------------------------------------


def test_transaction_status_tracking(proxy: RunningProxy, postgres: RealPostgres) -> None:
    def work(conn: Conn) -> list[str]:
        statuses = [conn.info.transaction_status.name]

        def step(query: str) -> None:
            try:
                conn.execute(query)
                statuses.append(conn.info.transaction_status.name)
            except psycopg.Error as exc:
                statuses.append(f"{type(exc).__name__}:{conn.info.transaction_status.name}")

        for query in ("SELECT 1", "BEGIN", "SELECT 1", "SELECT 1/0", "SELECT 1", "ROLLBACK", "BEGIN",
                      "SAVEPOINT s", "SELECT * FROM nowhere", "ROLLBACK TO SAVEPOINT s", "SELECT 1", "COMMIT",
                      "COMMIT", "SELECT 2"):
            step(query)
        conn.autocommit = False
        step("SELECT 1")
        conn.commit()
        statuses.append(conn.info.transaction_status.name)
        step("SELECT 1/0")
        conn.rollback()
        statuses.append(conn.info.transaction_status.name)
        with conn.transaction():
            statuses.append(conn.info.transaction_status.name)
        statuses.append(conn.info.transaction_status.name)
        return statuses

    direct, proxied = psycopg_both(proxy, postgres, work, autocommit=True)
    assert proxied == direct
    assert proxied[:7] == ["IDLE", "IDLE", "INTRANS", "INTRANS", "DivisionByZero:INERROR",
                           "InFailedSqlTransaction:INERROR", "IDLE"]
    assert proxied[-5:] == ["IDLE", "DivisionByZero:INERROR", "IDLE", "INTRANS", "IDLE"]


def test_notice_handler_receives_notices(proxy: RunningProxy, postgres: RealPostgres) -> None:
    def work(conn: Conn) -> list[tuple[str | None, str | None, str | None]]:
        notices: list[tuple[str | None, str | None, str | None]] = []
        conn.add_notice_handler(
            lambda diag: notices.append((diag.severity_nonlocalized, diag.sqlstate, diag.message_primary))
        )
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hello %', 'ü'; RAISE WARNING 'careful'; "
                     "RAISE NOTICE USING MESSAGE = 'custom', ERRCODE = 'P0001'; END $$")
        conn.execute("DROP TABLE IF EXISTS surely_not_here")
        conn.execute("SET client_min_messages = warning")
        conn.execute("DO $$ BEGIN RAISE NOTICE 'filtered'; RAISE WARNING 'kept'; END $$")
        return notices

    direct, proxied = psycopg_both(proxy, postgres, work, autocommit=True)
    assert proxied == direct
    assert proxied == [
        ("NOTICE", "00000", "hello ü"), ("WARNING", "01000", "careful"), ("NOTICE", "P0001", "custom"),
        ("NOTICE", "00000", 'table "surely_not_here" does not exist, skipping'), ("WARNING", "01000", "kept"),
    ]


def cancel_scenario(conninfo: str, admin_dsn: str, method: str) -> Any:
    """Cancel ``pg_sleep(30)`` from another thread with ``conn.<method>()``; what happened, as JSON data."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SET statement_timeout = '20s'")  # a backstop: a failed cancel shows as a timeout
        pid = conn.info.backend_pid
        seen = threading.Event()

        def canceller() -> None:
            if wait_until(lambda: sleeping_backend(admin_dsn, pid), deadline=15):
                seen.set()
            getattr(conn, method)()

        thread = threading.Thread(target=canceller, daemon=True)
        thread.start()
        out: list[Any] = []
        try:
            conn.execute("SELECT pg_sleep(30)")
            out.append("completed")
        except errors.QueryCanceled as exc:
            out.append(["QueryCanceled", exc.sqlstate, exc.diag.message_primary])
        thread.join(20)
        out.append(seen.is_set())
        out.append(conn.execute("SELECT 'usable', pg_backend_pid() = %s", (pid,)).fetchone())
        out.append(conn.info.transaction_status.name)
    return json.loads(json.dumps(out))


def _cancel_in_subprocess(conninfo: str, admin_dsn: str, method: str) -> Any:
    # psycopg's C implementation calls the blocking PQcancel() without releasing the GIL, so inside this
    # process it would stall the proxy's own thread: it could never answer. Another process sees a real server.
    script = ("import json, sys; from tests.integration.test_psycopg import cancel_scenario; "
              "print(json.dumps(cancel_scenario(*json.load(sys.stdin))))")
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps([conninfo, admin_dsn, method]),
                          capture_output=True, text=True, timeout=60, check=False, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
def test_cancel_from_another_thread(proxy: RunningProxy, postgres: RealPostgres, method: str) -> None:
    run = _cancel_in_subprocess if method == "cancel" else cancel_scenario
    direct = run(postgres.dsn(UPSTREAM_ROLE), postgres.admin_dsn, method)
    proxied = run(proxy.conninfo(), postgres.admin_dsn, method)
    assert proxied == direct
    assert proxied == [["QueryCanceled", "57014", "canceling statement due to user request"], True,
                       ["usable", True], "IDLE"]


def test_backend_pid_and_parameter_status(proxy: RunningProxy, postgres: RealPostgres) -> None:
    with psycopg_pair(proxy, postgres) as (direct, proxied):
        for conn in (direct, proxied):
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row == (conn.info.backend_pid,)
        for name in ("server_version", "server_encoding", "client_encoding", "DateStyle", "TimeZone",
                     "integer_datetimes", "standard_conforming_strings"):
            assert proxied.info.parameter_status(name) == direct.info.parameter_status(name), name
        assert proxied.info.server_version == direct.info.server_version


# -- async -----------------------------------------------------------------------------------------------------


async def test_async_results_parameters_and_binary(proxy: RunningProxy, postgres: RealPostgres) -> None:
    async def work(conn: AsyncConn) -> list[Any]:
        out: list[Any] = []
        for binary in (False, True):
            async with conn.cursor(binary=binary) as cur:
                await cur.execute(TYPES_QUERY)
                out.append((description(cur), comparable(await cur.fetchall())))
                await cur.execute(PARAMS_QUERY, PARAMS)
                out.append(await cur.fetchone())
                await cur.execute("SELECT g FROM generate_series(1, 5000) AS g")
                out.append(await cur.fetchmany(10))
                out.append(len(await cur.fetchall()))
        return out

    direct, proxied = await psycopg_async_both(proxy, postgres, work)
    assert proxied == direct
    assert proxied[3] == 4990


async def test_async_pipeline_and_server_side_cursor(proxy: RunningProxy, postgres: RealPostgres) -> None:
    async def work(conn: AsyncConn) -> list[Any]:
        out: list[Any] = []
        await conn.execute("CREATE TEMP TABLE apiped(id int PRIMARY KEY)")
        try:
            async with conn.pipeline() as pipeline:
                await conn.execute("INSERT INTO apiped VALUES (1)")
                await pipeline.sync()
                await conn.execute("INSERT INTO apiped VALUES (2)")
                await conn.execute("SELECT 1 / 0")
                await conn.execute("INSERT INTO apiped VALUES (3)")
        except errors.DivisionByZero as exc:
            out.append(exc.sqlstate)
        cursor = await conn.execute("SELECT array_agg(id ORDER BY id) FROM apiped")
        out.append(await cursor.fetchone())
        async with conn.transaction():
            async with conn.cursor(name="async_walker", scrollable=True) as cur:
                cur.itersize = 4
                await cur.execute("SELECT g FROM generate_series(1, 30) AS g")
                out.append(await cur.fetchmany(5))
                await cur.scroll(20, mode="absolute")
                out.append([row async for row in cur])
            async with conn.cursor() as cur:
                async with cur.copy("COPY apiped FROM STDIN") as copy:
                    for i in range(100, 110):
                        await copy.write_row((i,))
                async with cur.copy("COPY apiped TO STDOUT (FORMAT csv)") as copy:
                    out.append(b"".join([bytes(chunk) async for chunk in copy]))
        return out

    direct, proxied = await psycopg_async_both(proxy, postgres, work, autocommit=True)
    assert proxied == direct
    assert proxied[:2] == ["22012", ([1],)]
    assert proxied[3] == [(g,) for g in range(21, 31)]


async def test_async_cancel_safe(proxy: RunningProxy, postgres: RealPostgres) -> None:
    async def work(conn: AsyncConn) -> list[Any]:
        await conn.execute("SET statement_timeout = '20s'")
        pid = conn.info.backend_pid
        sleeper = asyncio.ensure_future(conn.execute("SELECT pg_sleep(30)"))
        started = await asyncio.to_thread(wait_until, lambda: sleeping_backend(postgres.admin_dsn, pid), deadline=15)
        out: list[Any] = [started]
        await conn.cancel_safe()
        try:
            await sleeper
            out.append("completed")
        except errors.QueryCanceled as exc:
            out.append(("QueryCanceled", exc.diag.message_primary))
        cursor = await conn.execute("SELECT 'usable'")
        out.append(await cursor.fetchone())
        return out

    direct, proxied = await psycopg_async_both(proxy, postgres, work, autocommit=True)
    assert proxied == direct
    assert proxied == [True, ("QueryCanceled", "canceling statement due to user request"), ("usable",)]

