"""Helpers for integration tests that run the same work directly and through pgproxy and compare.

Each helper opens one connection straight to PostgreSQL (as pgproxy's upstream role, the role the
proxied session runs as) and one through the proxy with a freshly minted token, runs the same
callable on both, and returns ``(direct, proxied)`` for the test to assert equal.
"""

from __future__ import annotations

import decimal
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import asyncpg
import psycopg

from tests.support.pg_plugin import UPSTREAM_ROLE, RealPostgres
from tests.support.proxy_plugin import RunningProxy

T = TypeVar("T")

__all__ = [
    "TYPES_QUERY",
    "asyncpg_both",
    "asyncpg_pair",
    "comparable",
    "psycopg_async_both",
    "psycopg_both",
    "psycopg_pair",
    "unique_name",
    "wait_until",
]

# One row with a column of (nearly) every common type, NULLs, arrays and an anonymous record.
TYPES_QUERY = """
SELECT 1::int2 AS i2, (-2147483648)::int4 AS i4, 9223372036854775807::int8 AS i8,
       12345678901234567890.123456789::numeric AS num, 'NaN'::numeric AS num_nan, (-0.5)::numeric(5, 2) AS num_neg,
       1.5::float4 AS f4, pi()::float8 AS f8, '-Infinity'::float8 AS f8_inf, 'NaN'::float4 AS f4_nan,
       'ü∑🙂 text'::text AS t, 'abc'::varchar(5) AS vc, 'x'::char(3) AS ch, ''::text AS empty,
       '\\x00ff10'::bytea AS b, ''::bytea AS b_empty, true AS bool_t, false AS bool_f,
       '2024-02-29'::date AS d, '0001-01-01'::date AS d_min, '13:14:15.5'::time AS tm,
       '2024-02-29 13:14:15.123456'::timestamp AS ts,
       '2024-02-29 13:14:15.123456+05:30'::timestamptz AS tstz,
       '1 year 2 mons 3 days 04:05:06.789'::interval AS iv,
       'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u,
       '{"a": [1, 2, {"b": null}], "s": "ü"}'::json AS j, '{"z": 1, "a": "x"}'::jsonb AS jb,
       ARRAY[1, NULL, 3]::int[] AS a_int, ARRAY[['a', 'b'], ['c', NULL]] AS a_text2d, ARRAY[]::text[] AS a_empty,
       ARRAY['2024-01-01'::date] AS a_date, ARRAY['{"k": 1}'::jsonb] AS a_jsonb,
       NULL::int AS n_int, NULL::text AS n_text, NULL::bytea AS n_bytea, NULL::int[] AS n_array,
       ROW(1, 'two', NULL::date, 1.5::numeric) AS rec,
       '192.168.0.0/24'::cidr AS net, '10.1.2.3'::inet AS host, int4range(1, 10) AS rng,
       '(1.5,2)'::point AS pt, 'a b'::tsvector AS tsv, 42::oid AS an_oid
"""


def comparable(value: Any) -> Any:
    """``value`` with NaN (which never equals itself) replaced by the string ``"NaN"``, recursively
    through lists and tuples, so that results compare equal exactly when they are the same."""
    if isinstance(value, decimal.Decimal | float) and math.isnan(value):
        return "NaN"
    if type(value) in (list, tuple):
        return type(value)(comparable(item) for item in value)
    return value


def unique_name(prefix: str) -> str:
    """A lower-case identifier nobody else uses: ``prefix_<12 hex>``."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def wait_until(condition: Callable[[], bool], *, deadline: float = 10.0, interval: float = 0.05) -> bool:
    """Poll ``condition`` until it holds or ``deadline`` seconds pass; return its last value."""
    end = time.monotonic() + deadline
    while True:
        if condition():
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(interval)


# -- asyncpg ---------------------------------------------------------------------------------------------


@asynccontextmanager
async def asyncpg_pair(
    proxy: RunningProxy, postgres: RealPostgres, token: str | None = None, **connect: Any
) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Connection]]:
    """``(direct, proxied)`` asyncpg connections, closed on exit."""
    direct: asyncpg.Connection = await asyncpg.connect(postgres.dsn(UPSTREAM_ROLE), **connect)
    try:
        proxied: asyncpg.Connection = await asyncpg.connect(proxy.url(token), **connect)
        try:
            yield direct, proxied
        finally:
            await proxied.close(timeout=10)
    finally:
        await direct.close(timeout=10)


async def asyncpg_both(
    proxy: RunningProxy,
    postgres: RealPostgres,
    work: Callable[[asyncpg.Connection], Awaitable[T]],
    **connect: Any,
) -> tuple[T, T]:
    """Run ``work`` on a direct and on a proxied asyncpg connection (one after the other)."""
    async with asyncpg_pair(proxy, postgres, **connect) as (direct, proxied):
        return await work(direct), await work(proxied)


# -- psycopg 3 -------------------------------------------------------------------------------------------


@contextmanager
def psycopg_pair(
    proxy: RunningProxy, postgres: RealPostgres, token: str | None = None, **connect: Any
) -> Iterator[tuple[psycopg.Connection[Any], psycopg.Connection[Any]]]:
    """``(direct, proxied)`` synchronous psycopg connections, closed on exit."""
    with (
        psycopg.connect(postgres.dsn(UPSTREAM_ROLE), **connect) as direct,
        psycopg.connect(proxy.conninfo(token), **connect) as proxied,
    ):
        yield direct, proxied


def psycopg_both(
    proxy: RunningProxy,
    postgres: RealPostgres,
    work: Callable[[psycopg.Connection[Any]], T],
    **connect: Any,
) -> tuple[T, T]:
    """Run ``work`` on a direct and on a proxied psycopg connection (one after the other)."""
    with psycopg_pair(proxy, postgres, **connect) as (direct, proxied):
        return work(direct), work(proxied)


async def psycopg_async_both(
    proxy: RunningProxy,
    postgres: RealPostgres,
    work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]],
    **connect: Any,
) -> tuple[T, T]:
    """Run ``work`` on a direct and on a proxied async psycopg connection (one after the other)."""
    async with (
        await psycopg.AsyncConnection.connect(postgres.dsn(UPSTREAM_ROLE), **connect) as direct,
        await psycopg.AsyncConnection.connect(proxy.conninfo(), **connect) as proxied,
    ):
        return await work(direct), await work(proxied)
