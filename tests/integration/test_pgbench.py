"""pgbench through pgproxy: simple, extended and prepared query modes, read-only and tpcb-like.

pgbench's tables (default names) are created once per module, directly. Each run goes through the
proxy and, at the same time, straight to PostgreSQL; both must report the same configuration, no
failed transactions and some processed transactions. Throughput is never asserted.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from tests.support.pg_plugin import TEST_DATABASE, UPSTREAM_ROLE, RealPostgres
from tests.support.proxy_plugin import RunningProxy

pytestmark = pytest.mark.integration

_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)$", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)
# Lines that describe the run rather than measure it: they must be the same direct and proxied.
_CONFIG = ("transaction type:", "scaling factor:", "query mode:", "number of clients:", "number of threads:",
           "maximum number of tries:", "duration:")


@dataclass(frozen=True)
class Target:
    args: list[str]
    env: dict[str, str]


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str

    @property
    def processed(self) -> int:
        match = _PROCESSED.search(self.stdout)
        assert match is not None, self.stdout + self.stderr
        return int(match.group(1))

    @property
    def failed(self) -> int:
        match = _FAILED.search(self.stdout)
        assert match is not None, self.stdout + self.stderr
        return int(match.group(1))

    @property
    def config(self) -> list[str]:
        return [line for line in self.stdout.splitlines() if line.startswith(_CONFIG)]


def _env(**extra: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "10", "PGAPPNAME": "pgbench-test", **extra}


def direct_target(postgres: RealPostgres) -> Target:
    return Target(["-h", postgres.host, "-p", str(postgres.port), "-U", UPSTREAM_ROLE, TEST_DATABASE], _env())


def proxied_target(proxy: RunningProxy) -> Target:
    token = proxy.idp.mint("pgbench-runner")
    return Target(["-h", "127.0.0.1", "-p", str(proxy.port), "-U", "agent", TEST_DATABASE],
                  _env(PGPASSWORD=token, PGSSLMODE="require"))


def start(target: Target, *flags: str) -> subprocess.Popen[str]:
    # The target's arguments end with the database name, so pgbench's own flags go first.
    return subprocess.Popen(["pgbench", *flags, *target.args], env=target.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen[str]) -> Outcome:
    try:
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return Outcome(process.returncode, stdout, stderr)


def run_both(proxy: RunningProxy, postgres: RealPostgres, *flags: str) -> tuple[Outcome, Outcome]:
    """The same pgbench run, direct and proxied, at the same time."""
    direct = start(direct_target(postgres), *flags)
    proxied = start(proxied_target(proxy), *flags)
    return finish(direct), finish(proxied)


def history_rows(postgres: RealPostgres) -> int:
    with psycopg.connect(postgres.dsn(UPSTREAM_ROLE)) as conn:
        row = conn.execute("SELECT count(*) FROM pgbench_history").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture(scope="module")
def pgbench_tables(postgres: RealPostgres) -> Iterator[None]:
    init = finish(start(direct_target(postgres), "-i", "-s", "1", "-q"))
    assert init.returncode == 0, init.stderr
    yield
    dropped = finish(start(direct_target(postgres), "-i", "-I", "d"))
    assert dropped.returncode == 0, dropped.stderr


def check(direct: Outcome, proxied: Outcome) -> None:
    assert proxied.returncode == 0, proxied.stdout + proxied.stderr
    assert direct.returncode == 0, direct.stdout + direct.stderr
    assert proxied.config == direct.config
    assert len(proxied.config) >= 5, proxied.stdout
    assert proxied.failed == direct.failed == 0
    assert "number of failed transactions: 0" in proxied.stdout
    assert proxied.processed > 0 and direct.processed > 0


@pytest.mark.usefixtures("pgbench_tables")
@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_select_only(proxy: RunningProxy, postgres: RealPostgres, mode: str) -> None:
    direct, proxied = run_both(proxy, postgres, "-n", "-S", "-T", "2", "-c", "4", "-M", mode)
    check(direct, proxied)
    assert f"query mode: {mode}" in proxied.config


@pytest.mark.usefixtures("pgbench_tables")
def test_tpcb_like_writes_are_all_recorded(proxy: RunningProxy, postgres: RealPostgres) -> None:
    before = history_rows(postgres)
    direct, proxied = run_both(proxy, postgres, "-n", "-T", "2", "-c", "2", "-M", "extended")
    check(direct, proxied)
    assert "transaction type: <builtin: TPC-B (sort of)>" in proxied.config
    # Every transaction pgbench counts as processed inserted exactly one history row.
    assert history_rows(postgres) - before == direct.processed + proxied.processed


@pytest.mark.usefixtures("pgbench_tables")
def test_bad_token_is_refused(proxy: RunningProxy) -> None:
    target = proxied_target(proxy)
    env: dict[str, Any] = {**target.env, "PGPASSWORD": "not-a-token"}
    refused = finish(start(Target(target.args, env), "-n", "-S", "-t", "1"))
    assert refused.returncode != 0
    assert "OIDC token rejected" in refused.stderr
