"""pg_dump and pg_restore through pgproxy: a dump taken through the proxy must equal one taken directly.

A small schema with tables, enum/composite/range/domain types, sequences, identity columns, views, a
materialized view, SQL and PL/pgSQL functions, a trigger, comments and a large object is created in a unique
schema. pg_dump (schema + data, plain and custom format) runs once straight against PostgreSQL as pgproxy's
upstream role and once through the proxy with an OIDC token as its password; the outputs must be byte-identical
once the only parts that legitimately differ are removed (pg_dump's random ``\\restrict`` key, the custom
format's creation time). Then the custom dump is restored through the proxy (``pg_restore -j 2``, so several
proxied sessions at once) and the restored tables, sequences and large object must equal the originals.

pg_dump refuses a server newer than itself, so each server gets a pg_dump of at least its major version: the
embedded server (pgserver's PostgreSQL 16) is dumped with pgserver's own binaries, which lack TLS, so that run
goes through the proxy in plaintext over loopback; the distribution's PostgreSQL 15 (``tls_postgres``) is dumped
with the distribution's pg_dump 15 with ``PGSSLMODE=require`` to the proxy and TLS from the proxy upstream.
"""

from __future__ import annotations

import re
import subprocess
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.pg_plugin import TEST_DATABASE, UPSTREAM_ROLE, RealPostgres, TLSPostgres
from tests.support.proxy_plugin import ProxyFactory, RunningProxy

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pgserver warns at import when there is no XDG runtime directory
    from pgserver._commands import POSTGRES_BIN_PATH

pytestmark = pytest.mark.integration

SYSTEM_BIN_ROOT = Path("/usr/lib/postgresql")
_VERSION = re.compile(r"\(PostgreSQL\) (\d+)")
# pg_dump >= 15.14 / 16.10 / 17.6 wraps a plain dump in "\restrict <random key>" ... "\unrestrict <key>".
_PER_RUN_LINE = re.compile(rb"^(\\restrict |\\unrestrict |-- Started on |-- Completed on ).*\n", re.MULTILINE)


# -- which pg_dump ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tools:
    bin_dir: Path
    major: int
    tls: bool  # whether its libpq was built with TLS support

    def path(self, program: str) -> str:
        return str(self.bin_dir / program)


@cache
def _tools(bin_dir: Path) -> Tools | None:
    if not (bin_dir / "pg_dump").is_file():
        return None
    version = subprocess.run([str(bin_dir / "pg_dump"), "--version"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    match = _VERSION.search(version)
    if match is None:
        return None
    probe = subprocess.run(  # refused before any connection attempt when TLS is not compiled in
        [str(bin_dir / "pg_dump"), "--schema-only", "host=127.0.0.1 port=1 sslmode=require connect_timeout=2"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    return Tools(bin_dir, int(match.group(1)), "SSL support is not compiled in" not in probe.stderr)


def tools_for(server_major: int) -> Tools:
    """A pg_dump/pg_restore no older than the server; TLS-capable if possible, the closest version first."""
    candidates = [Path(POSTGRES_BIN_PATH)]
    if SYSTEM_BIN_ROOT.is_dir():
        candidates += sorted(SYSTEM_BIN_ROOT.glob("*/bin"))
    usable = [t for t in map(_tools, candidates) if t is not None and t.major >= server_major]
    if not usable:
        raise AssertionError(f"no pg_dump for a PostgreSQL {server_major} server among {candidates}")
    return min(usable, key=lambda t: (not t.tls, t.major))


# -- the schema ---------------------------------------------------------------------------------------------
LARGE_OBJECT = bytes(range(256)) * 4096 + "large object ünïcode".encode()  # ~1 MB: several lo_read calls

SCHEMA_SQL = """
CREATE SCHEMA {s};
CREATE TYPE {s}.mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE {s}.pair AS (a int, b text);
CREATE DOMAIN {s}.positive AS int CHECK (VALUE > 0);
CREATE TYPE {s}.floatrange AS RANGE (subtype = float8);
CREATE SEQUENCE {s}.ticket_seq START 1000 INCREMENT 7;
CREATE TABLE {s}.people (
    id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    mood {s}.mood,
    born date,
    tags text[],
    profile jsonb,
    photo bytea,
    score numeric(10, 3),
    seen timestamptz,
    lucky {s}.positive,
    pair {s}.pair,
    span {s}.floatrange
);
COMMENT ON TABLE {s}.people IS 'people, with ünïcode and a ''quote''';
COMMENT ON COLUMN {s}.people.photo IS 'raw bytes';
CREATE TABLE {s}.tickets (
    no bigint DEFAULT nextval('{s}.ticket_seq') PRIMARY KEY,
    person int REFERENCES {s}.people (id) ON DELETE CASCADE,
    body text CHECK (length(body) < 10000),
    created timestamptz
);
CREATE INDEX tickets_person_created ON {s}.tickets (person, created);
CREATE TABLE {s}.events (id bigserial PRIMARY KEY, payload text NOT NULL, at interval);
CREATE FUNCTION {s}.greet(p {s}.people) RETURNS text LANGUAGE sql STABLE AS $$ SELECT 'hello ' || p.name $$;
CREATE FUNCTION {s}.stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.created := coalesce(NEW.created, '2024-01-01 00:00:00+00');
    RETURN NEW;
END
$$;
CREATE TRIGGER tickets_stamp BEFORE INSERT ON {s}.tickets FOR EACH ROW EXECUTE FUNCTION {s}.stamp();
CREATE VIEW {s}.people_moods AS SELECT mood, count(*) AS n FROM {s}.people GROUP BY mood;
CREATE MATERIALIZED VIEW {s}.ticket_counts AS SELECT person, count(*) AS n FROM {s}.tickets GROUP BY person;

INSERT INTO {s}.people (name, mood, born, tags, profile, photo, score, seen, lucky, pair, span) VALUES
    ('Ada', 'happy', '1815-12-10', '{{math,"with space","quo\\"te"}}', '{{"k": [1, 2, {{"n": null}}]}}',
     '\\x00ff0a0d5c', 12.345, '2024-02-29 13:14:15.123456+05:30', 7, ROW(1, 'one'), '[1.5,2.5)'),
    (E'tab\\there, newline\\nthere, backslash \\\\ done', 'sad', NULL, '{{}}', '[]', '', -0.5, NULL, 1,
     ROW(NULL, E'a\\tb'), 'empty'),
    ('ünïcode 🙂 名前', NULL, '2000-01-01', NULL, NULL, NULL, NULL, 'infinity', NULL, NULL, NULL),
    ('', 'ok', '0001-01-01', '{{NULL}}', '"just a string"', decode(repeat('00ff', 5000), 'hex'),
     99999.999, '-infinity', 2147483647, ROW(-1, ''), '(,)');
INSERT INTO {s}.tickets (person, body)
    SELECT 1 + n % 4, 'ticket ' || n || E'\\n' || repeat('x', n % 50) FROM generate_series(1, 300) AS n;
INSERT INTO {s}.events (payload, at)
    SELECT md5(n::text) || E'\\t' || n, make_interval(secs => n) FROM generate_series(1, 20000) AS n;
SELECT setval('{s}.ticket_seq', 5000);
REFRESH MATERIALIZED VIEW {s}.ticket_counts;
"""
TABLES = ("people", "tickets", "events", "people_moods", "ticket_counts")


@dataclass
class DumpTarget:
    name: str
    tools: Tools
    proxy: RunningProxy
    direct_conninfo: str  # as pgproxy's upstream role, for setup and checks
    host: str
    port: int
    schema: str
    large_object: int

    def direct_env(self) -> dict[str, str]:
        return _env(self.host, self.port, UPSTREAM_ROLE, "prefer")

    def proxied_env(self) -> dict[str, str]:
        sslmode = "require" if self.tools.tls else "disable"
        env = _env("127.0.0.1", self.proxy.port, "agent", sslmode)
        env["PGPASSWORD"] = self.proxy.idp.mint("pg-dump")
        return env

    def run(self, program: str, *arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run([self.tools.path(program), *arguments], env=env, capture_output=True,
                                timeout=120, check=False)
        assert result.returncode == 0, f"{program} failed: {result.stderr.decode(errors='replace')}"
        return result

    def dump(self, out: Path, *flags: str, env: dict[str, str]) -> bytes:
        # -b: the large object travels through libpq's lo_* calls, i.e. the FunctionCall ('F') message.
        self.run("pg_dump", "--no-sync", "-b", "-n", self.schema, "-f", str(out), *flags, env=env)
        return out.read_bytes()


def _env(host: str, port: int, user: str, sslmode: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "PGHOST": host, "PGPORT": str(port), "PGUSER": user,
            "PGDATABASE": TEST_DATABASE, "PGSSLMODE": sslmode, "PGCONNECT_TIMEOUT": "10"}


def _server_major(conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        return conn.info.server_version // 10000


@pytest.fixture(scope="module", params=["embedded-pg16", "distribution-pg15-tls"])
def target(request: pytest.FixtureRequest, proxy_factory: ProxyFactory) -> Iterator[DumpTarget]:
    if request.param == "embedded-pg16":
        postgres: RealPostgres = request.getfixturevalue("postgres")
        conninfo = postgres.dsn(UPSTREAM_ROLE)
        host, port = postgres.host, postgres.port
        proxy: RunningProxy = request.getfixturevalue("proxy")
    else:
        tls_postgres: TLSPostgres = request.getfixturevalue("tls_postgres")
        conninfo = tls_postgres.dsn("sslmode=prefer")
        host, port = "127.0.0.1", tls_postgres.server.port
        proxy = proxy_factory(upstream=tls_postgres.dsn("sslmode=require"))
    tools = tools_for(_server_major(conninfo))
    if request.param == "distribution-pg15-tls":  # this run is the one that proves PGSSLMODE=require works
        assert tools.tls, f"{tools.bin_dir}/pg_dump has no TLS support"
    schema = f"dump_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # -b dumps every large object of the database: this test must own them all (the restore recreates them).
        others = conn.execute("SELECT oid FROM pg_largeobject_metadata").fetchall()
        assert others == [], f"other large objects exist in {TEST_DATABASE}: {others}"
        row = conn.execute("SELECT lo_from_bytea(0, %s)", (LARGE_OBJECT,)).fetchone()
        assert row is not None
        large_object = int(row[0])
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(SCHEMA_SQL.format(s=schema))
        yield DumpTarget(request.param, tools, proxy, conninfo, host, port, schema, large_object)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.execute(f"DROP SCHEMA IF EXISTS {schema}_original CASCADE")
            conn.execute("SELECT lo_unlink(oid) FROM pg_largeobject_metadata WHERE oid = %s", (large_object,))


def without_per_run_lines(dump: bytes) -> bytes:
    return _PER_RUN_LINE.sub(b"", dump)


def custom_header_time(archive: bytes) -> slice:
    """Where a custom-format archive stores its creation time (7 ints), from the header layout of pg_dump's
    ``WriteHead``: magic, version (3 bytes), int size, offset size, format, compression, then the time."""
    assert archive[:5] == b"PGDMP", "not a custom-format archive"
    major, minor, _revision, int_size, _offset_size, _format = archive[5:11]
    start = 11 + (1 if (major, minor) >= (1, 15) else 1 + int_size)  # 1.15 (PG 16) made compression a byte
    return slice(start, start + 7 * (1 + int_size))


def table_contents(conninfo: str, schema: str) -> dict[str, Any]:
    contents: dict[str, Any] = {}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for table in TABLES:
            # Rows as PostgreSQL prints them (infinity timestamps, ranges and composites have no Python value).
            contents[table] = conn.execute(
                f'SELECT t::text FROM {schema}.{table} AS t ORDER BY t::text COLLATE "C"'
            ).fetchall()
        contents["ticket_seq"] = conn.execute(f"SELECT last_value, is_called FROM {schema}.ticket_seq").fetchall()
        contents["identity"] = conn.execute(
            f"SELECT last_value FROM {schema}.people_id_seq UNION ALL SELECT last_value FROM {schema}.events_id_seq"
        ).fetchall()
        contents["greeting"] = conn.execute(
            f"SELECT {schema}.greet(p) FROM {schema}.people AS p ORDER BY id"
        ).fetchall()
    return contents


# -- tests -------------------------------------------------------------------------------------------------------
def _compare(target: DumpTarget, tmp_path: Path, *flags: str) -> tuple[bytes, bytes]:
    direct = target.dump(tmp_path / "direct", *flags, env=target.direct_env())
    proxied = target.dump(tmp_path / "proxied", *flags, env=target.proxied_env())
    return direct, proxied


def test_plain_dump_through_the_proxy_equals_the_direct_one(target: DumpTarget, tmp_path: Path) -> None:
    direct, proxied = _compare(target, tmp_path)
    assert without_per_run_lines(proxied) == without_per_run_lines(direct)
    text = direct.decode()
    for expected in (f"CREATE TYPE {target.schema}.mood AS ENUM", f"COPY {target.schema}.events ",
                     "tab\\there, newline\\nthere", "ünïcode 🙂 名前", "SELECT pg_catalog.lo_create(",
                     f"SELECT pg_catalog.setval('{target.schema}.ticket_seq', 5000, true);",
                     f"CREATE MATERIALIZED VIEW {target.schema}.ticket_counts"):
        assert expected in text
    assert text.count("\n") > 20000  # the data is there, not only the schema


def test_custom_dump_through_the_proxy_equals_the_direct_one(target: DumpTarget, tmp_path: Path) -> None:
    direct, proxied = _compare(target, tmp_path, "-Fc")
    assert len(proxied) == len(direct)
    created = custom_header_time(direct)
    assert custom_header_time(proxied) == created
    assert proxied[: created.start] + proxied[created.stop :] == direct[: created.start] + direct[created.stop :]
    # The same, read back as SQL by pg_restore.
    def as_sql(name: str) -> bytes:
        return target.run("pg_restore", "-f", "-", str(tmp_path / name), env=target.direct_env()).stdout

    assert without_per_run_lines(as_sql("proxied")) == without_per_run_lines(as_sql("direct"))


def test_pg_restore_through_the_proxy(target: DumpTarget, tmp_path: Path) -> None:
    schema, original = target.schema, f"{target.schema}_original"
    archive = tmp_path / "archive"
    target.dump(archive, "-Fc", env=target.proxied_env())
    before_sql = target.dump(tmp_path / "before.sql", env=target.direct_env())
    expected = table_contents(target.direct_conninfo, schema)
    # Make room: the original moves aside (views and functions follow it by OID); the large object is recreated
    # with its own OID by the restore, so it must go first.
    with psycopg.connect(target.direct_conninfo, autocommit=True) as conn:
        conn.execute(f"ALTER SCHEMA {schema} RENAME TO {original}")
        conn.execute("SELECT lo_unlink(%s)", (target.large_object,))
    try:
        target.run("pg_restore", "--exit-on-error", "-j", "2", "-d", TEST_DATABASE, str(archive),
                   env=target.proxied_env())
        assert table_contents(target.direct_conninfo, schema) == expected
        assert table_contents(target.direct_conninfo, original) == expected
        with psycopg.connect(target.direct_conninfo, autocommit=True) as conn:
            row = conn.execute("SELECT lo_get(%s)", (target.large_object,)).fetchone()
        assert row == (LARGE_OBJECT,)
        # Dumping the restored schema gives back the original dump, byte for byte.
        after_sql = target.dump(tmp_path / "after.sql", env=target.direct_env())
        assert without_per_run_lines(after_sql) == without_per_run_lines(before_sql)
    finally:
        with psycopg.connect(target.direct_conninfo, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.execute(f"ALTER SCHEMA {original} RENAME TO {schema}")

