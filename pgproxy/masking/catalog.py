"""Reads, caches and refreshes each database's catalog as ``snapshot.CatalogSnapshot`` values.

pgproxy's own login (an injected ``connect(database)``) reads, in one REPEATABLE READ READ ONLY
transaction so the readings agree with each other: every table, partitioned, foreign table, view and
materialized view (with its live columns in attnum order and, outside pg_catalog/information_schema,
its view definition), every pg_type row, and the search_path configured per role and for the
database. Four small queries per load (relations come with their columns aggregated), however many
relations there are.

``Catalogs`` keeps the newest snapshot per database. ``snapshot`` never does I/O; ``ready`` loads when
a database was never read or was invalidated (DDL seen through pgproxy), with at most one load in
flight per database that concurrent callers share; a background task re-reads every loaded database
every ``refresh_seconds`` to catch DDL made around pgproxy. A failed load keeps the previous snapshot.

This module must not decide what is masked, must not read table data (catalogs only), must not write
anything, and must not let secrets reach ``CatalogUnavailable`` messages or logs: errors are described
by exception type and SQLSTATE only, never by text that could quote a DSN.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from types import MappingProxyType

import asyncpg

from pgproxy.masking.snapshot import CatalogSnapshot, Column, Relation, TypeInfo

__all__ = ["CatalogUnavailable", "Catalogs", "read_catalog"]

log = logging.getLogger(__name__)

Connect = Callable[[str], Awaitable[asyncpg.Connection]]

# One row per relation; the columns come aggregated (ordered by attnum) so a database with thousands
# of relations still costs one round trip. pg_get_viewdef deparses, so it is skipped for the system
# schemas' hundreds of views, which nobody masks. Temp schemas belong to other sessions (the load's
# own session has none) and pg_toast holds no user-visible relations.
_RELATIONS = r"""
SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text,
       coalesce(cols.names, '{}'), coalesce(cols.nums, '{}'), coalesce(cols.types, '{}'),
       coalesce(cols.mods, '{}'),
       CASE WHEN c.relkind IN ('v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
            THEN pg_catalog.pg_get_viewdef(c.oid) END
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN LATERAL (
    SELECT array_agg(a.attname::text ORDER BY a.attnum) AS names,
           array_agg(a.attnum::int ORDER BY a.attnum) AS nums,
           array_agg(a.atttypid ORDER BY a.attnum) AS types,
           array_agg(a.atttypmod ORDER BY a.attnum) AS mods
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
) cols ON true
WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')
  AND n.nspname <> 'pg_toast'
  AND n.nspname NOT LIKE 'pg\_temp\_%'
  AND n.nspname NOT LIKE 'pg\_toast\_temp\_%'
ORDER BY c.oid
"""

# Partitions and inheritance children, whose rows are also their parents' rows.
_PARENTS = "SELECT inhrelid, inhparent FROM pg_catalog.pg_inherits ORDER BY inhrelid, inhseqno"
# Functions returning sets: their row counts depend on their arguments (see masking.guard).
_SET_RETURNING = "SELECT DISTINCT proname::text FROM pg_catalog.pg_proc WHERE proretset"
_TYPES = "SELECT oid, typname::text, typcategory::text, typbasetype FROM pg_catalog.pg_type"

# setrole = 0 / setdatabase = 0 mean "all roles" / "all databases". pg_roles (not pg_authid) because
# pgproxy's login is no superuser; a setting for a dropped role has no name and is ignored.
_SETTINGS = """
SELECT s.setdatabase <> 0, coalesce(r.rolname::text, ''), s.setrole <> 0, s.setconfig
FROM pg_catalog.pg_db_role_setting s
LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.setrole
WHERE s.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()))
  AND (s.setrole = 0 OR r.oid IS NOT NULL)
"""

# Where the load connection's own search_path came from. reset_val is the server-wide value only when
# it was not set for this login's role or database (or by the client); otherwise boot_val is the best
# a non-superuser can know (pg_file_settings is superuser-only).
_SERVER_PATH = "SELECT source, reset_val, boot_val FROM pg_catalog.pg_settings WHERE name = 'search_path'"
_SERVER_SOURCES = frozenset({"default", "configuration file", "command line", "environment variable"})


class CatalogUnavailable(Exception):
    """The catalog could not be read. The message names the database and the kind of failure only."""


async def read_catalog(conn: asyncpg.Connection, database: str, *, generation: int = 0,
                       timeout_ms: int = 10_000) -> CatalogSnapshot:
    """One consistent reading of the catalog ``conn`` is connected to (left open, no transaction left)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        # If the client-side timeout fires, the server should stop too; SET LOCAL ends with the transaction.
        await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
        await conn.execute(f"SET LOCAL lock_timeout = {int(timeout_ms)}")
        # pg_get_viewdef qualifies every name the reader's search_path would not find: with pg_catalog
        # alone, view definitions name every other relation with its schema (see resolve.VIEW_SEARCH_PATH).
        await conn.execute("SET LOCAL search_path = pg_catalog")
        relation_rows = await conn.fetch(_RELATIONS)
        parent_rows = await conn.fetch(_PARENTS)
        set_returning = frozenset(row[0] for row in await conn.fetch(_SET_RETURNING))
        type_rows = await conn.fetch(_TYPES)
        setting_rows = await conn.fetch(_SETTINGS)
        server_row = await conn.fetchrow(_SERVER_PATH)
    server_path: str | None = None
    if server_row is not None:
        source, reset_val, boot_val = server_row
        server_path = reset_val if source in _SERVER_SOURCES else boot_val
    return CatalogSnapshot(
        database=database,
        relations=tuple(_relation(row) for row in relation_rows),
        types=MappingProxyType(_types(type_rows)),
        search_paths=MappingProxyType(search_paths([(r[0], r[1], r[2], r[3]) for r in setting_rows], server_path)),
        generation=generation,
        parents=MappingProxyType(_parents(parent_rows)),
        set_returning=set_returning,
    )


def _parents(rows: Iterable[asyncpg.Record]) -> dict[int, tuple[int, ...]]:
    parents: dict[int, list[int]] = {}
    for child, parent in rows:
        parents.setdefault(int(child), []).append(int(parent))
    return {child: tuple(found) for child, found in parents.items()}


def _relation(row: asyncpg.Record) -> Relation:
    oid, schema, name, kind, names, nums, types, mods, definition = row
    columns = tuple(
        Column(name=col, attnum=num, type_oid=typ, typmod=mod)
        for col, num, typ, mod in zip(names, nums, types, mods, strict=True)
    )
    return Relation(oid=oid, schema=schema, name=name, kind=kind, columns=columns, definition=definition)


def _types(rows: Iterable[asyncpg.Record]) -> dict[int, TypeInfo]:
    immediate = {row[0]: (row[1], row[2], row[3] or row[0]) for row in rows}
    types: dict[int, TypeInfo] = {}
    for oid, (name, category, own_base) in immediate.items():
        base = own_base
        # A domain over a domain: follow to the root, which is what a value really is on the wire.
        # The bound guards a (corrupt) cycle; real chains are a few links long.
        for _ in range(len(immediate)):
            parent = immediate.get(base)
            if parent is None or parent[2] == base:
                break
            base = parent[2]
        types[oid] = TypeInfo(oid=oid, name=name, category=category, base_oid=base)
    return types


def search_paths(rows: Iterable[tuple[bool, str, bool, list[str] | None]],
                 server_path: str | None) -> dict[str, str]:
    """Configured search_path by role name, "" for roles with none of their own.

    Rows are (for this database?, role name, for one role?, setconfig). PostgreSQL applies settings
    role+database, then role, then database, then all-roles-everywhere, first found wins; a role's own
    entry is the first two, "" the last two or else ``server_path``.
    """
    by_role: dict[str, dict[bool, str]] = {}  # role -> {for this database: value}
    shared: dict[bool, str] = {}
    for in_database, role, for_role, config in rows:
        value = _setting(config or [], "search_path")
        if value is None:
            continue
        if for_role:
            by_role.setdefault(role, {})[in_database] = value
        else:
            shared[in_database] = value
    paths = {role: found.get(True, found.get(False, "")) for role, found in by_role.items()}
    default = shared.get(True, shared.get(False, server_path))
    if default is not None:
        paths[""] = default
    return paths


def _setting(config: Iterable[str], name: str) -> str | None:
    for entry in config:
        key, sep, value = entry.partition("=")
        if sep and key.strip().lower() == name:
            return value
    return None


def _describe(exc: BaseException) -> str:
    """A failure in words that cannot carry a secret: its type, SQLSTATE or errno, never its text."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, asyncpg.PostgresError):
        return f"{type(exc).__name__} (SQLSTATE {exc.sqlstate})"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__} (errno {exc.errno})"
    return type(exc).__name__


class Catalogs:
    """The newest catalog snapshot of each database pgproxy serves, kept fresh."""

    def __init__(self, connect: Connect, *, refresh_seconds: float = 60.0, load_timeout: float = 10.0) -> None:
        self._connect = connect
        self._refresh_seconds = refresh_seconds
        self._load_timeout = load_timeout
        self._snapshots: dict[str, CatalogSnapshot] = {}
        # Staleness without races: invalidate bumps the epoch; a snapshot is fresh when the load that
        # produced it started at the current epoch, so a load already running when DDL is seen
        # cannot hide that DDL.
        self._epochs: dict[str, int] = {}
        self._loaded_epochs: dict[str, int] = {}
        self._generations: dict[str, int] = {}
        self._loads: dict[str, asyncio.Task[CatalogSnapshot]] = {}
        self._refresher: asyncio.Task[None] | None = None

    def snapshot(self, database: str) -> CatalogSnapshot | None:
        return self._snapshots.get(database)

    def stale(self, database: str) -> bool:
        if database not in self._snapshots:
            return True
        return self._loaded_epochs.get(database, -1) < self._epochs.get(database, 0)

    def invalidate(self, database: str) -> None:
        self._epochs[database] = self._epochs.get(database, 0) + 1

    async def ready(self, database: str) -> CatalogSnapshot:
        """A snapshot read after this call began if the database was invalidated or never read."""
        wanted = self._epochs.get(database, 0)
        while True:
            current = self._snapshots.get(database)
            if current is not None and self._loaded_epochs.get(database, -1) >= wanted:
                return current
            # A load in flight may have started before the invalidation we must see: wait for it,
            # then go round and start (or join) a newer one.
            await self._load_shared(database)

    def start(self) -> None:
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.create_task(self._refresh_forever(), name="catalog-refresh")

    async def close(self) -> None:
        tasks = [task for task in (self._refresher, *self._loads.values()) if task is not None]
        self._refresher = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _load_shared(self, database: str) -> CatalogSnapshot:
        task = self._loads.get(database)
        if task is None:
            task = asyncio.create_task(self._load(database), name=f"catalog-load:{database}")
            self._loads[database] = task
            task.add_done_callback(self._forget_load(database))
        # shield: one waiter giving up (cancelled, timed out) must not cancel the load the others share.
        return await asyncio.shield(task)

    def _forget_load(self, database: str) -> Callable[[asyncio.Task[CatalogSnapshot]], None]:
        def done(task: asyncio.Task[CatalogSnapshot]) -> None:
            if self._loads.get(database) is task:
                del self._loads[database]
            if not task.cancelled():
                task.exception()  # retrieved here too, so a load nobody waits for logs no asyncio noise

        return done

    async def _load(self, database: str) -> CatalogSnapshot:
        epoch = self._epochs.get(database, 0)
        generation = self._generations.get(database, 0) + 1
        try:
            async with asyncio.timeout(self._load_timeout):
                snapshot = await self._read(database, generation)
        except Exception as exc:  # TimeoutError included; cancellation is not caught
            raise CatalogUnavailable(f"catalog of database {database!r} unavailable: {_describe(exc)}") from None
        self._generations[database] = generation
        self._snapshots[database] = snapshot
        self._loaded_epochs[database] = epoch
        return snapshot

    async def _read(self, database: str, generation: int) -> CatalogSnapshot:
        # A fresh connection per load: loads are rare (a refresh interval, or DDL), so a kept
        # connection would hold a backend per database for nothing and need its own liveness care.
        conn = await self._connect(database)
        try:
            snapshot = await read_catalog(conn, database, generation=generation,
                                          timeout_ms=max(1, int(self._load_timeout * 1000)))
        except BaseException:  # error, timeout or cancellation: drop the connection without waiting on it
            conn.terminate()
            raise
        await conn.close()
        return snapshot

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_seconds)
            for database in list(self._snapshots):
                try:
                    await self._load_shared(database)
                except CatalogUnavailable as exc:
                    log.warning("%s; keeping generation %d", exc, self._generations.get(database, 0))

