"""The ``pgproxy`` command as a user runs it: settings errors, ``run`` with SIGTERM, ``token``, ``demo``."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from pgproxy.auth.demo_issuer import DemoIssuer
from pgproxy.auth.oidc import TokenVerifier
from tests.support.fake_idp import FakeIdP
from tests.support.pg_plugin import UPSTREAM_ROLE, RealPostgres
from tests.support.proxy_plugin import POLICIES

pytestmark = pytest.mark.integration
PGPROXY = [sys.executable, "-m", "pgproxy.cli"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PGPROXY_")}
    return env | extra


def wait_for_port(port: int, process: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port}")


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["--listen", "nonsense"], "listen"),
        (["--upstream", "mysql://x"], "upstream"),
        (["--oidc-algorithms", "HS256"], "oidc_algorithms"),
        (["--tls-cert", "/does/not/exist.pem", "--tls-key", "/does/not/exist.key"], "tls_cert"),
        (["--allow-plaintext-loopback", "--max-message-bytes", "12"], "max_message_bytes"),
    ],
)
def test_invalid_settings_fail_at_start_naming_the_setting(arguments: list[str], named: str) -> None:
    base = ["--upstream", "postgresql://u@127.0.0.1/db", "--oidc-issuer", "https://idp.example",
            "--oidc-audience", "pgproxy", "--allow-plaintext-loopback"]
    result = subprocess.run([*PGPROXY, "run", *base, *arguments], capture_output=True, text=True,
                            timeout=60, env=clean_env(), check=False)
    assert result.returncode == 2
    assert f"invalid setting '{named}'" in result.stderr


@pytest.mark.parametrize(
    ("content", "located"),
    [
        ("rules:\n  - id: r1\n    who: {everyone: true}\n    databases: [app]\n    categories: [read]\n"
         "    effect: permit\n", "broken.yaml:6"),
        ("rules:\n  - id: r1\n    who: {everyone: true}\n    databases: [app]\n    categories: [read]\n"
         "    effect: allow\n    colour: blue\n", "broken.yaml:7"),
        ("rules: [\n", "broken.yaml:"),
    ],
)
def test_invalid_policies_stop_pgproxy_at_start_naming_file_and_line(
    tmp_path: Path, content: str, located: str
) -> None:
    (tmp_path / "broken.yaml").write_text(content)
    base = ["--upstream", "postgresql://u@127.0.0.1/db", "--oidc-issuer", "https://idp.example",
            "--oidc-audience", "pgproxy", "--allow-plaintext-loopback", "--oidc-jwks", str(tmp_path / "none.json"),
            "--audit-disabled"]
    result = subprocess.run([*PGPROXY, "run", *base, "--policies", str(tmp_path)], capture_output=True,
                            text=True, timeout=60, env=clean_env(), check=False)
    assert result.returncode == 2, result.stderr
    assert "are not valid; not starting" in result.stderr and located in result.stderr


def test_missing_policy_directory_is_a_setting_error(tmp_path: Path) -> None:
    base = ["--upstream", "postgresql://u@127.0.0.1/db", "--oidc-issuer", "https://idp.example",
            "--oidc-audience", "pgproxy", "--allow-plaintext-loopback", "--audit-disabled"]
    result = subprocess.run([*PGPROXY, "run", *base, "--policies", str(tmp_path / "absent")], capture_output=True,
                            text=True, timeout=60, env=clean_env(), check=False)
    assert result.returncode == 2 and "invalid setting 'policies'" in result.stderr


def test_missing_required_settings_are_named() -> None:
    result = subprocess.run([*PGPROXY, "run"], capture_output=True, text=True, timeout=60, env=clean_env(),
                            check=False)
    assert result.returncode == 2
    for name in ("upstream", "oidc_issuer", "oidc_audience"):
        assert f"invalid setting '{name}'" in result.stderr


def test_run_from_environment_and_config_file_then_sigterm(
    postgres: RealPostgres, fake_idp: FakeIdP, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "pgproxy.toml"
    config.write_text(f'listen = "127.0.0.1:{port}"\noidc_audience = "{fake_idp.audience}"\n'
                      'allow_plaintext_loopback = true\nshutdown_grace_seconds = 5\n'
                      f'policies = "{POLICIES / "permissive"}"\n'
                      f'audit_jsonl = "{tmp_path / "audit.jsonl"}"\n')
    env = clean_env(PGPROXY_UPSTREAM=postgres.dsn(UPSTREAM_ROLE) + "?sslmode=disable",
                    PGPROXY_OIDC_ISSUER=fake_idp.issuer, PGPROXY_OIDC_JWKS=fake_idp.jwks_url)
    process = subprocess.Popen([*PGPROXY, "run", "--config", str(config)], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, process)
        conninfo = f"host=127.0.0.1 port={port} dbname=pgproxy_test user=cli sslmode=disable"
        with psycopg.connect(conninfo, password=fake_idp.mint("cli-user", email="cli@example.com")) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (UPSTREAM_ROLE,)
            process.send_signal(signal.SIGTERM)
            # The open transaction may finish: pgproxy only ends the session once it is idle.
            time.sleep(0.5)
            assert conn.execute("SELECT 'in the same transaction'").fetchone() == ("in the same transaction",)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate()
    assert "shutting down" in stderr
    token_fragment = fake_idp.mint("cli-user")[:40]
    assert token_fragment not in stderr


def test_token_command_mints_a_verifiable_demo_token(tmp_path: Path) -> None:
    result = subprocess.run(
        [*PGPROXY, "token", "--sub", "dba-1", "--email", "dba@example.com", "--group", "dbas",
         "--group", "oncall", "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    token = result.stdout.strip()
    issuer = DemoIssuer.load_or_create(tmp_path / "issuer")
    identity = asyncio.run(TokenVerifier(issuer.oidc_config()).verify(token))
    assert (identity.subject, identity.email, identity.groups) == ("dba-1", "dba@example.com", ("dbas", "oncall"))


def test_demo_prints_a_working_psql_command(tmp_path: Path) -> None:
    port, web_port = free_port(), free_port()
    process = subprocess.Popen([*PGPROXY, "demo", "--port", str(port), "--web-port", str(web_port),
                                "--state-dir", str(tmp_path)],
                               env=clean_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None
        command = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not command:
            line = process.stdout.readline()
            assert line or process.poll() is None, process.communicate()[1]
            if "psql" in line and "PGPASSWORD=" in line:
                command = line.strip()
        match = re.fullmatch(r"PGPASSWORD=(\S+) psql '(.+)'", command)
        assert match, command
        token, conninfo = match.group(1).strip("'"), match.group(2)
        result = subprocess.run(
            ["psql", "-X", "-At", conninfo, "-c",
             "SELECT count(*) FROM customers; SHOW application_name;"
             " SELECT email, phone FROM customers WHERE name = 'Ada Lovelace'"],
            env={"PATH": "/usr/bin:/bin", "PGPASSWORD": token}, capture_output=True, text=True, timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            "3", "agent-x@example.com via pgproxy (psql)", "***@example.com|************0018",
        ]
        # The agent's DROP TABLE waits for approval; a DBA denies it through the review page's API.
        held = subprocess.Popen(
            ["psql", "-X", "-At", conninfo, "-c", "DROP TABLE orders"],
            env={"PATH": "/usr/bin:/bin", "PGPASSWORD": token}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        dba = subprocess.run([*PGPROXY, "token", "--sub", "dba-dana", "--email", "dana@example.com", "--group", "dba",
                              "--state-dir", str(tmp_path)], capture_output=True, text=True, timeout=60,
                             env=clean_env(), check=True).stdout.strip()
        trust = ssl.create_default_context(cafile=str(tmp_path / "tls" / "server.crt"))
        with httpx.Client(base_url=f"https://127.0.0.1:{web_port}", verify=trust, timeout=30,
                          headers={"Authorization": f"Bearer {dba}"}) as api:
            pending: list[dict[str, object]] = []
            deadline = time.monotonic() + 60
            while not pending and time.monotonic() < deadline:
                pending = api.get("/api/approvals", params={"state": "pending"}).json()["requests"]
                time.sleep(0.1)
            assert pending, "the agent's DROP TABLE was not held for approval"
            denied = api.post(f"/api/approvals/{pending[0]['id']}/deny", json={"reason": "not in the demo"})
            assert denied.status_code == 200, denied.text
        _, stderr = held.communicate(timeout=60)
        assert held.returncode != 0
        assert "waits for approval request" in stderr and "denied by dana@example.com: not in the demo" in stderr
        # Both sessions are in the demo's audit log, with the decision and rule of each statement.
        logged = subprocess.run([*PGPROXY, "audit", "search", "--jsonl", str(tmp_path / "audit.jsonl"),
                                 "--identity", "agent-x@example.com", "--kind", "statement", "--json"],
                                env=clean_env(), capture_output=True, text=True, timeout=60, check=False)
        assert logged.returncode == 0, logged.stderr
        entries = [json.loads(line)["record"] for line in logged.stdout.splitlines()]
        decided = {(entry["command"], entry["decision"], entry["rule_id"]) for entry in entries}
        assert ("DROP TABLE", "require_approval", "agents-ddl-and-exports") in decided
        assert any(command == "SELECT" and decision == "allow" for command, decision, _ in decided)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
            process.communicate()
