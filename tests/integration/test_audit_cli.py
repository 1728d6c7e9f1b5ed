"""`pgproxy audit search|show|export` as a reviewer runs them: over JSONL files and over PostgreSQL (the DSN
from the environment), exit codes, usage errors, private export files, and escaped terminal output."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest

from pgproxy.audit import Chain
from pgproxy.audit.jsonl import GroupCommitter
from pgproxy.audit.pg_schema import grant_statements
from pgproxy.audit.postgres import PostgresAuditStore
from tests.support.pg_plugin import RealPostgres
from tests.unit.audit.factories import at, review_log, sealed_chain, statement

pytestmark = pytest.mark.integration
PGPROXY = [sys.executable, "-m", "pgproxy.cli", "audit"]
DATABASE, READER = "pgproxy_audit_cli_test", "pgproxy_audit_cli_reader"


def clean_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PGPROXY_")}
    return env | extra


def pgproxy(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PGPROXY, *arguments], capture_output=True, text=True, timeout=120,
                          env=env or clean_env(), check=False)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    ansi = statement("SELECT '\x1b[2J\x1b]0;pwned\x07\u202eevil'", record_id="ansi", time=at("11:59:00"),
                     subject="user-9", email="zed@example.com")
    records = [*review_log(), ansi]
    path = tmp_path / "audit.jsonl"
    path.write_text("".join(record.to_json() + "\n" for record in sealed_chain(records)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cli_db(postgres: RealPostgres) -> Iterator[RealPostgres]:
    with psycopg.connect(postgres.admin_dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        admin.execute(f"DROP ROLE IF EXISTS {READER}")
        admin.execute(f"CREATE ROLE {READER} LOGIN NOSUPERUSER")
        admin.execute(f"CREATE DATABASE {DATABASE}")
    yield postgres
    with psycopg.connect(postgres.admin_dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        admin.execute(f"DROP ROLE IF EXISTS {READER}")


@pytest.fixture
async def pg_env(cli_db: RealPostgres) -> AsyncIterator[dict[str, str]]:
    """The environment of a reviewer whose audit log is in PostgreSQL (read with a SELECT-only role)."""
    schema = f"cli_{uuid.uuid4().hex[:12]}"
    store = PostgresAuditStore(cli_db.dsn(database=DATABASE), schema=schema)
    await store.open()
    await GroupCommitter(store, Chain("pgproxy-a")).submit_many(review_log())
    await store.close()
    admin = await asyncpg.connect(cli_db.dsn(database=DATABASE))
    try:
        for sql in grant_statements(schema, writer=READER, reviewer=READER)[-2:]:
            await admin.execute(sql)
    finally:
        await admin.close()
    yield clean_env(PGPROXY_AUDIT_DSN=cli_db.dsn(READER, DATABASE), PGPROXY_AUDIT_SCHEMA=schema)


def test_search_prints_a_table_and_exits_1_when_nothing_matches(log: Path) -> None:
    found = pgproxy("search", "--jsonl", str(log), "--identity", "Ada@Example.com", "--kind", "statement")
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    assert lines[0].split() == ["TIME", "IDENTITY", "DATABASE", "DECISION", "RULE", "WHAT", "OUTCOME", "TEXT"]
    assert len(lines) == 4 and "SELECT pg_sleep(3600)" in lines[1]
    assert "deny" in lines[2] and "no-deletes" in lines[2] and "ERROR 42501" in lines[2]
    assert "SELECT 1" in lines[3] and "public.accounts" in lines[3]
    limited = pgproxy("search", "--jsonl", str(log), "--limit", "2", "--oldest-first", "--width", "12")
    assert limited.stdout.splitlines()[1].endswith("10.0.0.7:51…")
    assert "the first 2: there may be more" in limited.stdout
    nothing = pgproxy("search", "--jsonl", str(log), "--text", "no such statement")
    assert nothing.returncode == 1 and nothing.stdout == ""
    assert "no matching audit records" in nothing.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["search", "--from", "yesterday"], "from: invalid time 'yesterday'"),
        (["search", "--limit", "0"], "--limit must be at least 1"),
        (["search", "--decision", "maybe"], "decision: 'maybe' is not one of"),
        (["export", "--dsn", "postgresql://x@127.0.0.1/x"], "give --jsonl FILE or --dsn DSN, not both"),
        (["export", "--format", "csv", "--from", "2024-05-02", "--to", "2024-05-01"], "must be earlier than to"),
    ],
)
def test_usage_errors_exit_2_with_a_message(log: Path, arguments: list[str], message: str) -> None:
    result = pgproxy(*arguments, "--jsonl", str(log))
    assert result.returncode == 2
    assert message in result.stderr and result.stdout == ""


def test_without_a_log_or_with_an_unreadable_one_exit_2(tmp_path: Path) -> None:
    none = pgproxy("show", "ada-read")
    assert none.returncode == 2 and "set PGPROXY_AUDIT_DSN or PGPROXY_AUDIT_JSONL" in none.stderr
    missing = pgproxy("search", env=clean_env(PGPROXY_AUDIT_JSONL=str(tmp_path / "gone.jsonl")))
    assert missing.returncode == 2 and "gone.jsonl: no such file" in missing.stderr


def test_terminal_control_characters_in_records_are_shown_escaped(log: Path) -> None:
    result = pgproxy("search", "--jsonl", str(log), "--text", "pwned", "--width", "200")
    assert result.returncode == 0
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout and "\u202e" not in result.stdout
    assert "\\x1b[2J\\x1b]0;pwned\\x07\\u202eevil" in result.stdout
    shown = pgproxy("show", "ansi", env=clean_env(PGPROXY_AUDIT_JSONL=str(log)))
    assert shown.returncode == 0 and "\x1b" not in shown.stdout and "text: SELECT '\\x1b[2J" in shown.stdout


def test_the_postgres_store_is_read_with_the_dsn_from_the_environment(pg_env: dict[str, str]) -> None:
    found = pgproxy("search", "--table", "invoices", "--json", env=pg_env)
    assert found.returncode == 0, found.stderr
    entries = [json.loads(line) for line in found.stdout.splitlines()]
    assert [entry["record"]["record_id"] for entry in entries] == ["bob-alter"]
    assert entries[0]["outcomes"][0]["command_tag"] == "ALTER TABLE"
    shown = pgproxy("show", "bob-alter", env=pg_env)
    assert shown.returncode == 0
    assert "approvers: carol@example.com; Dave@example.com" in shown.stdout
    assert "outcome:\n  kind: outcome" in shown.stdout and "session_start:" in shown.stdout
    as_json = json.loads(pgproxy("show", "s-bob", "--json", env=pg_env).stdout)
    assert as_json["record"] is None and len(as_json["session"]) == 4
    missing = pgproxy("show", "no-such-id", env=pg_env)
    assert missing.returncode == 1 and "no audit record or session with id 'no-such-id'" in missing.stderr


def test_exports_go_to_a_private_file_or_stdout_and_a_whole_export_verifies(
    log: Path, pg_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "evidence.jsonl"
    result = pgproxy("export", "--output", str(out), env=pg_env)
    assert result.returncode == 0, result.stderr
    assert "exported 14 audit records as jsonl (the whole log" in result.stderr and result.stdout == ""
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    verified = subprocess.run([*PGPROXY, "verify", str(out)], capture_output=True, text=True, timeout=120,
                              env=clean_env(), check=False)
    assert verified.returncode == 0 and "14 records in 1 chain(s): OK" in verified.stdout
    from_file = pgproxy("export", "--jsonl", str(log), "--format", "csv", "--decision", "deny")
    assert from_file.returncode == 0 and "exported 2 audit records as csv" in from_file.stderr
    rows = from_file.stdout.splitlines()
    assert rows[0].startswith("time,kind,record_id,") and len(rows) == 3
    assert ",outcome,ada-delete-done," in rows[2]


async def test_verify_reads_the_audit_database_and_reports_an_edited_or_deleted_row(
    pg_env: dict[str, str], cli_db: RealPostgres
) -> None:
    clean = await asyncio.to_thread(pgproxy, "verify", env=pg_env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "anchor for later checks: pgproxy-a:" in clean.stdout
    table = f"{pg_env['PGPROXY_AUDIT_SCHEMA']}.audit_log"
    admin = await asyncpg.connect(cli_db.dsn(database=DATABASE))
    try:
        # An edit in the record text a reviewer reads (the hash no longer matches) ...
        await admin.execute(
            f"UPDATE {table} SET record = replace(record, 'invoices', 'payments') WHERE record_id = 'bob-alter'"
        )
        edited = await asyncio.to_thread(pgproxy, "verify", env=pg_env)
        assert edited.returncode == 1 and "altered" in edited.stdout, edited.stdout
        # ... and a deleted row (a gap in the chain).
        await admin.execute(f"DELETE FROM {table} WHERE seq = 2")
        deleted = await asyncio.to_thread(pgproxy, "verify", env=pg_env)
        assert deleted.returncode == 1 and "record 2 missing" in deleted.stdout, deleted.stdout
    finally:
        await admin.close()
