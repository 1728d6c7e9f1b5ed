"""The catalog cache reads a real database's relations, types and search paths, and keeps them fresh.

A scratch database (and scratch roles) of this module's own holds the objects; pgproxy's upstream
role, no superuser, reads it as pgproxy would. Waits are polling loops with generous bounds: nothing
here asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import asyncpg
import psycopg
import pytest

from pgproxy.masking.catalog import Catalogs, CatalogUnavailable
from pgproxy.masking.snapshot import CatalogSnapshot
from tests.support.pg_plugin import TEST_DATABASE, UPSTREAM_ROLE, RealPostgres

pytestmark = pytest.mark.integration

Connect = Callable[[str], Awaitable[asyncpg.Connection]]


@dataclass
class Scratch:
    postgres: RealPostgres
    database: str
    role_db: str  # ALTER ROLE … IN DATABASE scratch SET search_path
    role_only: str  # ALTER ROLE … SET search_path (everywhere)
    role_both: str  # both: the database-specific one wins

    def execute(self, sql: str) -> None:
        with psycopg.connect(self.postgres.dsn(UPSTREAM_ROLE, self.database), autocommit=True) as conn:
            conn.execute(sql)

    def connect(self) -> Connect:
        def connect(database: str) -> Awaitable[asyncpg.Connection]:
            return asyncpg.connect(self.postgres.dsn(UPSTREAM_ROLE, database))

        return connect


@pytest.fixture(scope="module")
def scratch(postgres: RealPostgres) -> Iterator[Scratch]:
    tag = uuid.uuid4().hex[:8]
    scratch = Scratch(postgres, f"catalog_{tag}", f"cat_{tag}_db", f"cat_{tag}_only", f"cat_{tag}_both")
    roles = (scratch.role_db, scratch.role_only, scratch.role_both)
    with psycopg.connect(postgres.admin_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {scratch.database} OWNER {UPSTREAM_ROLE}")
        for role in roles:
            admin.execute(f"CREATE ROLE {role} NOLOGIN")
    scratch.execute(
        """
        CREATE SCHEMA "App";
        CREATE SCHEMA other;
        CREATE TABLE "App"."Customers" ("Id" int PRIMARY KEY, email text, gone int, "Full Name" varchar(40));
        ALTER TABLE "App"."Customers" DROP COLUMN gone;
        ALTER TABLE "App"."Customers" ADD COLUMN added numeric(10, 2);
        CREATE VIEW public.customer_emails AS SELECT "Id", email FROM "App"."Customers";
        CREATE MATERIALIZED VIEW public.customer_counts AS SELECT count(*) AS n FROM "App"."Customers";
        CREATE TABLE public.events (id int, at date) PARTITION BY RANGE (at);
        CREATE TABLE public.events_2024 PARTITION OF public.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
        CREATE DOMAIN public.email_address AS text CHECK (VALUE LIKE '%@%');
        CREATE DOMAIN public.work_email AS public.email_address;
        CREATE TABLE public.contacts (addr public.email_address, work public.work_email, n int);
        CREATE TABLE public.shared (id int);
        CREATE TABLE other.shared (id int, x int);
        """
    )
    with psycopg.connect(postgres.admin_dsn, autocommit=True) as admin:
        db = scratch.database
        for sql in (
            f"ALTER DATABASE {db} SET search_path = other, public",
            f'ALTER ROLE {scratch.role_db} IN DATABASE {db} SET search_path = "App", public',
            f"ALTER ROLE {scratch.role_only} SET search_path = public",
            f"ALTER ROLE {scratch.role_both} SET search_path = public",
            f"ALTER ROLE {scratch.role_both} IN DATABASE {db} SET search_path = other",
        ):
            admin.execute(sql)
    yield scratch
    with psycopg.connect(postgres.admin_dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {scratch.database} WITH (FORCE)")
        for role in roles:
            admin.execute(f"DROP ROLE IF EXISTS {role}")


def counting(connect: Connect, opened: list[str]) -> Connect:
    async def wrapped(database: str) -> asyncpg.Connection:
        opened.append(database)
        return await connect(database)

    return wrapped


async def poll(condition: Callable[[], bool], bound: float = 60.0) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_relations_columns_and_view_definitions(scratch: Scratch) -> None:
    catalogs = Catalogs(scratch.connect())
    snap = await catalogs.ready(scratch.database)
    assert snap.database == scratch.database and snap.generation == 1

    customers = snap.relation("App", "Customers", ())
    assert customers is not None and customers.kind == "r"
    assert [(c.name, c.attnum) for c in customers.columns] == [
        ("Id", 1), ("email", 2), ("Full Name", 4), ("added", 5),  # the dropped column (3) is gone
    ]
    assert snap.by_oid[customers.oid] is customers
    full_name = customers.column_at(4)
    assert full_name is not None and full_name.typmod == 44  # varchar(40): 40 + the 4-byte header
    assert snap.types[full_name.type_oid].name == "varchar"
    assert customers.column_at(3) is None

    view = snap.relation("public", "customer_emails", ())
    assert view is not None and view.kind == "v"
    assert [c.name for c in view.columns] == ["Id", "email"]
    assert view.definition is not None and '"App"."Customers"' in view.definition
    matview = snap.relation("public", "customer_counts", ())
    assert matview is not None and matview.kind == "m"
    assert matview.definition is not None and "count(*)" in matview.definition
    events = snap.relation("public", "events", ())
    assert events is not None and events.kind == "p" and [c.name for c in events.columns] == ["id", "at"]
    partition = snap.relation("public", "events_2024", ())
    assert partition is not None and partition.kind == "r"
    assert customers.definition is None

    # System catalogs are there to resolve names; their views are not deparsed.
    pg_class = snap.relation("pg_catalog", "pg_class", ())
    assert pg_class is not None and pg_class.column_at(1) is not None
    tables = snap.relation("information_schema", "tables", ())
    assert tables is not None and tables.kind == "v" and tables.definition is None
    assert not any(r.schema == "pg_toast" or r.schema.startswith("pg_temp_") for r in snap.relations)


async def test_domains_resolve_to_their_base_type(scratch: Scratch) -> None:
    snap = await Catalogs(scratch.connect()).ready(scratch.database)
    contacts = snap.relation("public", "contacts", ())
    assert contacts is not None
    addr, work, n = contacts.columns
    text_oid = 25
    for column, name in ((addr, "email_address"), (work, "work_email")):
        info = snap.types[column.type_oid]
        assert info.name == name
        assert info.category == "S"  # a domain takes its base type's category: a string, like citext
        assert info.base_oid == text_oid  # a domain over a domain: followed to the root
    assert snap.types[text_oid].base_oid == text_oid and snap.types[text_oid].category == "S"
    assert snap.types[n.type_oid].category == "N"


async def test_search_paths_per_role_and_database(scratch: Scratch) -> None:
    snap = await Catalogs(scratch.connect()).ready(scratch.database)
    assert snap.search_paths[""] == "other, public"
    assert snap.search_paths[scratch.role_db] == '"App", public'
    assert snap.search_paths[scratch.role_only] == "public"
    assert snap.search_paths[scratch.role_both] == "other"

    assert snap.search_path(scratch.role_db) == ("pg_catalog", "App", "public")
    found = snap.relation(None, "Customers", snap.search_path(scratch.role_db))
    assert found is not None and found.qualified == "App.Customers"
    assert snap.relation(None, "Customers", snap.search_path(scratch.role_only)) is None

    def shared_for(role: str) -> str:
        relation = snap.relation(None, "shared", snap.search_path(role))
        assert relation is not None
        return relation.schema

    assert shared_for(scratch.role_only) == "public"  # the role's own setting beats the database's
    assert shared_for(scratch.role_both) == "other"  # role in this database beats role everywhere
    assert shared_for("someone_else") == "other"  # no setting of its own: the database's
    pg_class = snap.relation(None, "pg_class", snap.search_path("someone_else"))
    assert pg_class is not None and pg_class.schema == "pg_catalog"


async def test_a_database_without_settings_gets_the_server_default(postgres: RealPostgres) -> None:
    def connect(database: str) -> Awaitable[asyncpg.Connection]:
        return asyncpg.connect(postgres.dsn(UPSTREAM_ROLE, database))

    snap = await Catalogs(connect).ready(TEST_DATABASE)
    assert snap.search_paths[""] == '"$user", public'
    assert snap.search_path("alice") == ("pg_catalog", "alice", "public")


async def test_invalidate_then_ready_sees_new_ddl(scratch: Scratch) -> None:
    catalogs = Catalogs(scratch.connect())
    assert catalogs.snapshot(scratch.database) is None and catalogs.stale(scratch.database)
    first = await catalogs.ready(scratch.database)
    assert not catalogs.stale(scratch.database)
    assert await catalogs.ready(scratch.database) is first  # fresh: no reload

    scratch.execute("CREATE TABLE public.created_later (id int)")
    assert catalogs.snapshot(scratch.database) is first
    catalogs.invalidate(scratch.database)
    assert catalogs.stale(scratch.database)
    assert catalogs.snapshot(scratch.database) is first  # the old one, until someone waits for a new one
    assert first.relation("public", "created_later", ()) is None

    second = await catalogs.ready(scratch.database)
    assert second is not first and second.generation == first.generation + 1
    assert second.relation("public", "created_later", ()) is not None
    assert catalogs.snapshot(scratch.database) is second and not catalogs.stale(scratch.database)


async def test_concurrent_callers_share_one_load(scratch: Scratch) -> None:
    opened: list[str] = []
    catalogs = Catalogs(counting(scratch.connect(), opened))
    snaps = await asyncio.gather(*(catalogs.ready(scratch.database) for _ in range(8)))
    assert opened == [scratch.database]
    assert all(snap is snaps[0] for snap in snaps)

    catalogs.invalidate(scratch.database)
    again = await asyncio.gather(*(catalogs.ready(scratch.database) for _ in range(8)))
    assert len(opened) == 2 and all(snap is again[0] for snap in again)


async def test_an_invalidation_during_a_load_is_not_lost(scratch: Scratch) -> None:
    opened: list[str] = []
    release = asyncio.Event()
    plain = scratch.connect()

    async def held(database: str) -> asyncpg.Connection:
        opened.append(database)
        await release.wait()
        return await plain(database)

    catalogs = Catalogs(held)
    early = asyncio.create_task(catalogs.ready(scratch.database))
    await poll(lambda: len(opened) == 1)
    catalogs.invalidate(scratch.database)  # DDL seen after the load began: that load may have missed it
    late = asyncio.create_task(catalogs.ready(scratch.database))
    release.set()
    first = await early  # wanted nothing newer than the load it started
    assert first.generation == 1
    second = await late  # must come from a load started after its invalidation
    assert len(opened) == 2 and second.generation == 2
    assert not catalogs.stale(scratch.database)


async def test_a_failed_load_keeps_the_old_snapshot(scratch: Scratch) -> None:
    failing = False
    plain = scratch.connect()

    async def connect(database: str) -> asyncpg.Connection:
        if failing:
            raise OSError(111, "could not reach postgresql://pgproxy:hunter2@db.internal/app")
        return await plain(database)

    catalogs = Catalogs(connect)
    old = await catalogs.ready(scratch.database)
    failing = True
    catalogs.invalidate(scratch.database)
    with pytest.raises(CatalogUnavailable) as raised:
        await catalogs.ready(scratch.database)
    assert scratch.database in str(raised.value) and "hunter2" not in str(raised.value)
    assert catalogs.snapshot(scratch.database) is old and catalogs.stale(scratch.database)

    failing = False
    assert (await catalogs.ready(scratch.database)).generation == old.generation + 1


async def test_a_load_that_hangs_times_out(scratch: Scratch) -> None:
    async def hangs(database: str) -> asyncpg.Connection:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    catalogs = Catalogs(hangs, load_timeout=0.2)
    with pytest.raises(CatalogUnavailable, match="timed out"):
        await catalogs.ready(scratch.database)
    assert catalogs.snapshot(scratch.database) is None


async def test_a_wrong_database_is_unavailable(scratch: Scratch) -> None:
    catalogs = Catalogs(scratch.connect())
    with pytest.raises(CatalogUnavailable, match="SQLSTATE 3D000"):  # invalid_catalog_name
        await catalogs.ready(f"{scratch.database}_missing")


async def test_the_refresh_timer_picks_up_changes(scratch: Scratch, caplog: pytest.LogCaptureFixture) -> None:
    failing = False
    plain = scratch.connect()

    async def connect(database: str) -> asyncpg.Connection:
        if failing:
            raise OSError(111, "refused")
        return await plain(database)

    catalogs = Catalogs(connect, refresh_seconds=0.1)
    first = await catalogs.ready(scratch.database)
    catalogs.start()
    try:
        scratch.execute("CREATE TABLE other.seen_by_refresh (id int)")  # DDL around pgproxy: no invalidate

        def refreshed() -> bool:
            current = catalogs.snapshot(scratch.database)
            return current is not None and current.relation("other", "seen_by_refresh", ()) is not None

        await poll(refreshed)
        assert catalogs.snapshot(scratch.database) is not first

        failing = True
        caplog.set_level(logging.WARNING, logger="pgproxy.masking.catalog")
        await poll(lambda: any("unavailable" in r.getMessage() for r in caplog.records))
        kept = catalogs.snapshot(scratch.database)
        assert isinstance(kept, CatalogSnapshot) and kept.relation("other", "seen_by_refresh", ()) is not None
    finally:
        await catalogs.close()
