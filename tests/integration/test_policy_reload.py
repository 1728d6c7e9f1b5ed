"""Policy reloads while sessions are open: a changed rule decides the next statement of an existing
session; a broken file never replaces the policy in force (the error names the file and line) and fixing it
applies; SIGHUP reloads a real ``pgproxy run`` process that does not poll.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.integration.test_cli import clean_env, free_port, wait_for_port
from tests.support.compare import unique_name
from tests.support.enforcement import (
    DENY_SECRETS_TO_READERS,
    ITEM_ROWS,
    ITEMS,
    SECRET_ROWS,
    SECRETS,
    Denial,
    GateDatabase,
    copy_policies,
    policy_error,
    policy_version,
    poll,
    spellings,
    token,
    wait_for_policy_error,
    wait_for_policy_version,
    with_rules,
    write_policy,
)
from tests.support.fake_idp import FakeIdP
from tests.support.pg_plugin import UPSTREAM_ROLE, RealPostgres
from tests.support.proxy_plugin import ProxyFactory

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]
READ_SECRETS = f"SELECT id, secret FROM {SECRETS} ORDER BY id"


def allow_writes_to(table: str) -> str:
    return f"""\
  - id: readers-write-scratch
    who: {{groups: [readers]}}
    databases: [pgproxy_test]
    tables: [public.{table}]
    categories: [write]
    effect: allow
"""


@pytest.fixture
def scratch(gate: GateDatabase) -> Iterator[str]:
    name = unique_name("gate_scratch")
    gate.owner_execute(f"CREATE TABLE {name} (id int PRIMARY KEY)")
    yield name
    gate.owner_execute(f"DROP TABLE {name}")


def reader(conninfo: str) -> Conn:
    return psycopg.connect(conninfo, autocommit=True)


def refusal(conn: Conn, sql: str) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as raised:
        conn.execute(sql)
    error = raised.value
    assert isinstance(error, errors.InsufficientPrivilege), repr(error)
    return error


def check(error: psycopg.Error, denial: Denial) -> None:
    denial.check(error.diag.sqlstate, error.diag.message_primary, error.diag.message_detail, error.diag.message_hint)


def test_editing_a_rule_changes_the_next_decision_of_an_open_session(
    proxy_factory: ProxyFactory, gate: GateDatabase, fake_idp: FakeIdP, tmp_path: Path, scratch: str
) -> None:
    policies = copy_policies(tmp_path)
    rules = policies / "rules.yaml"
    original = rules.read_text()
    proxy = proxy_factory(policies=policies, policy_poll_seconds=0.1)
    insert = f"INSERT INTO {scratch} VALUES (1)"
    with reader(proxy.conninfo(token(fake_idp, "readers"))) as conn:
        assert conn.execute(READ_SECRETS).fetchall() == SECRET_ROWS
        check(refusal(conn, insert), Denial("pgproxy:default-deny", "write"))
        conn.execute(f"PREPARE gate_secret_q AS {READ_SECRETS}")
        assert conn.execute("EXECUTE gate_secret_q").fetchall() == SECRET_ROWS

        version = policy_version(proxy)
        write_policy(rules, with_rules(original, DENY_SECRETS_TO_READERS, allow_writes_to(scratch)))
        version = wait_for_policy_version(proxy, version)
        for spelling in spellings(READ_SECRETS):
            check(refusal(conn, spelling), Denial("readers-not-secrets", "read"))
        # A statement prepared in SQL before the change is judged as what it runs, now.
        for execute in ("EXECUTE gate_secret_q", "execute /* x */ GATE_SECRET_Q", "EXPLAIN EXECUTE gate_secret_q"):
            check(refusal(conn, execute), Denial("readers-not-secrets", "read"))
        assert conn.execute(insert).rowcount == 1  # denied before the reload, allowed now
        assert conn.execute(f"SELECT * FROM {ITEMS} ORDER BY id").fetchall() == ITEM_ROWS
        check(refusal(conn, f"DELETE FROM {ITEMS}"), Denial("pgproxy:default-deny", "write"))

        write_policy(rules, original)
        wait_for_policy_version(proxy, version)
        assert conn.execute(READ_SECRETS).fetchall() == SECRET_ROWS
        assert conn.execute("EXECUTE gate_secret_q").fetchall() == SECRET_ROWS
        check(refusal(conn, f"INSERT INTO {scratch} VALUES (2)"), Denial("pgproxy:default-deny", "write"))
    assert gate.owner_rows(f"SELECT id FROM {scratch}") == [(1,)]
    gate.assert_untouched()


def line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


def invalid_yaml(text: str) -> tuple[str, str, int]:
    broken = text + "  - id: broken\n    who: {groups: [readers]\n"
    return "rules.yaml", broken, broken.count("\n") + 1  # the unclosed mapping is noticed at the end


def unknown_field(text: str) -> tuple[str, str, int]:
    broken = text.replace("    effect: deny\n    reason: the secrets", "    efect: deny\n    reason: the secrets", 1)
    return "rules.yaml", broken, line_of(broken, "efect:")


def bad_value(text: str) -> tuple[str, str, int]:
    broken = text.replace("effect: deny", "effect: forbid", 1)
    return "rules.yaml", broken, line_of(broken, "effect: forbid")


def tab_indent(text: str) -> tuple[str, str, int]:
    return "rules.yaml", text + "\t- id: tabbed\n", text.count("\n") + 1


def duplicate_id(text: str) -> tuple[str, str, int]:
    broken = text.replace("id: dba-everything", "id: readers-read")
    return "rules.yaml", broken, line_of(broken, "id: readers-read\n    who: {groups: [dba]}")


def second_file(text: str) -> tuple[str, str, int]:
    return "zz-extra.yaml", "rules:\n  - id: extra\n    whom: {groups: [readers]}\n", 3


# Each breakage gives: the file to write, its content (from the intended rules.yaml), the line the error names.
BREAKAGES: dict[str, Callable[[str], tuple[str, str, int]]] = {
    "invalid-yaml": invalid_yaml,
    "unknown-field": unknown_field,
    "bad-value": bad_value,
    "tab-indent": tab_indent,
    "duplicate-id": duplicate_id,
    "second-file": second_file,
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_broken_file_keeps_the_policy_in_force_until_fixed(
    proxy_factory: ProxyFactory, gate: GateDatabase, fake_idp: FakeIdP, tmp_path: Path, breakage: str
) -> None:
    policies = copy_policies(tmp_path)
    rules = policies / "rules.yaml"
    original = rules.read_text()
    intended = with_rules(original, DENY_SECRETS_TO_READERS)
    proxy = proxy_factory(policies=policies, policy_poll_seconds=0.1)
    with reader(proxy.conninfo(token(fake_idp, "readers"))) as conn:
        assert conn.execute(READ_SECRETS).fetchall() == SECRET_ROWS
        version = policy_version(proxy)
        name, content, line = BREAKAGES[breakage](intended)
        if name != rules.name:
            write_policy(rules, intended)  # valid on its own: only the other file is broken
        write_policy(policies / name, content)

        error = wait_for_policy_error(proxy)
        problems = error.splitlines()
        assert all(re.match(rf"{re.escape(str(policies / name))}:\d+: ", problem) for problem in problems), error
        assert any(problem.startswith(f"{policies / name}:{line}: ") for problem in problems), (error, line)
        assert policy_version(proxy) == version
        # The old policy decides, in the open session and in a new one.
        assert conn.execute(READ_SECRETS).fetchall() == SECRET_ROWS
        with reader(proxy.conninfo(token(fake_idp, "readers"))) as fresh:
            assert fresh.execute(READ_SECRETS).fetchall() == SECRET_ROWS

        if name != rules.name:
            (policies / name).unlink()
        write_policy(rules, intended)
        wait_for_policy_version(proxy, version)
        assert policy_error(proxy) is None
        check(refusal(conn, READ_SECRETS), Denial("readers-not-secrets", "read"))
    gate.assert_untouched()


# -- SIGHUP on a real ``pgproxy run`` ------------------------------------------------------------------------


@dataclass
class PgproxyProcess:
    port: int
    policies: Path
    process: subprocess.Popen[str]
    log: list[str]

    def logged(self, text: str) -> bool:
        return any(text in line for line in list(self.log))


@pytest.fixture
def pgproxy_process(postgres: RealPostgres, fake_idp: FakeIdP, tmp_path: Path) -> Iterator[PgproxyProcess]:
    """``pgproxy run`` in a subprocess that reloads policies on SIGHUP only; its log is collected."""
    policies = copy_policies(tmp_path)
    port = free_port()
    env = clean_env(
        PGPROXY_UPSTREAM=postgres.dsn(UPSTREAM_ROLE) + "?sslmode=disable",
        PGPROXY_OIDC_ISSUER=fake_idp.issuer,
        PGPROXY_OIDC_AUDIENCE=fake_idp.audience,
        PGPROXY_OIDC_JWKS=fake_idp.jwks_url,
        PGPROXY_LISTEN=f"127.0.0.1:{port}",
        PGPROXY_ALLOW_PLAINTEXT_LOOPBACK="true",
        PGPROXY_POLICIES=str(policies),
        PGPROXY_POLICY_POLL_SECONDS="0",
        PGPROXY_SHUTDOWN_GRACE_SECONDS="1",
        PGPROXY_AUDIT_JSONL=str(tmp_path / "audit.jsonl"),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "pgproxy.cli", "run"],
        env=env,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    log: list[str] = []

    def drain() -> None:
        assert process.stderr is not None
        log.extend(iter(process.stderr.readline, ""))

    reader_thread = threading.Thread(target=drain, name="pgproxy-log", daemon=True)
    reader_thread.start()
    try:
        assert poll(lambda: process.poll() is not None or "listening on" in "".join(log), deadline=30), log
        assert process.poll() is None, "".join(log)
        wait_for_port(port, process)
        yield PgproxyProcess(port, policies, process, log)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        reader_thread.join(30)
        if process.stderr is not None:
            process.stderr.close()


def test_sighup_reloads_a_running_pgproxy(
    pgproxy_process: PgproxyProcess, gate: GateDatabase, fake_idp: FakeIdP
) -> None:
    rules = pgproxy_process.policies / "rules.yaml"
    original = rules.read_text()
    process = pgproxy_process.process
    conninfo = f"host=127.0.0.1 port={pgproxy_process.port} dbname=pgproxy_test user=reader sslmode=disable"
    with psycopg.connect(conninfo, password=token(fake_idp, "readers"), autocommit=True) as conn:
        assert conn.execute(READ_SECRETS).fetchall() == SECRET_ROWS

        # A broken file and SIGHUP: the error is logged with file and line, the running policy stays.
        write_policy(rules, original + "\t- id: tabbed\n")
        process.send_signal(signal.SIGHUP)
        assert poll(lambda: pgproxy_process.logged("policy reload failed")), pgproxy_process.log
        assert pgproxy_process.logged(f"{rules}:{original.count(chr(10)) + 1}: invalid YAML")
        assert conn.execute(READ_SECRETS).fetchall() == SECRET_ROWS

        # A valid change alone does nothing (pgproxy does not poll here) ...
        write_policy(rules, with_rules(original, DENY_SECRETS_TO_READERS))
        assert conn.execute(READ_SECRETS).fetchall() == SECRET_ROWS
        with psycopg.connect(conninfo, password=token(fake_idp, "readers"), autocommit=True) as fresh:
            assert fresh.execute(READ_SECRETS).fetchall() == SECRET_ROWS
        # ... SIGHUP applies it to the open session's next statement.
        process.send_signal(signal.SIGHUP)
        assert poll(lambda: pgproxy_process.logged("policies reloaded from")), pgproxy_process.log
        assert pgproxy_process.logged(f"policies reloaded from {pgproxy_process.policies} (version 2)")
        check(refusal(conn, READ_SECRETS), Denial("readers-not-secrets", "read"))
        assert conn.execute(f"SELECT * FROM {ITEMS} ORDER BY id").fetchall() == ITEM_ROWS
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    gate.assert_untouched()
