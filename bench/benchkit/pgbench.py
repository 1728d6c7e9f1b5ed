"""pgbench select-only runs: command lines, client environment and output parsing.

Every run is ``pgbench -S -n`` (built-in select-only script, no vacuum) over TCP to 127.0.0.1, so the
direct target pays the same loopback costs as the proxies' upstream connections.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from benchkit import BenchError
from benchkit.postgres import BENCH_DB, BENCH_ROLE
from benchkit.procs import run_checked

_TRANSACTIONS = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)
_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.MULTILINE)
_TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)


@dataclass(frozen=True)
class Config:
    """One cell of the matrix: how many clients, pgbench threads and which query protocol."""

    clients: int
    jobs: int
    mode: str

    @property
    def label(self) -> str:
        """Short name used in the table and the JSON, e.g. ``c=16 extended``."""
        return f"c={self.clients} {self.mode}"


@dataclass(frozen=True)
class PgbenchResult:
    """What one pgbench run reported."""

    tps: float
    latency_ms: float
    transactions: int
    failed: int


def client_env(password: str | None = None) -> dict[str, str]:
    """Our environment without the caller's libpq PG* settings, plaintext TCP, and the password if any."""
    env = {key: value for key, value in os.environ.items() if not _is_libpq_variable(key)}
    env["PGSSLMODE"] = "disable"
    env["PGCONNECT_TIMEOUT"] = "10"
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def _is_libpq_variable(name: str) -> bool:
    """PGHOST, PGUSER, PGOPTIONS... would redirect or alter our clients; PGPROXY_* is not libpq's."""
    return name.startswith("PG") and not name.startswith("PGPROXY")


def pgbench_argv(pg_bin: Path, port: int, config: Config, duration: int) -> list[str]:
    """The select-only pgbench command line for one run against 127.0.0.1:``port``."""
    return [
        str(pg_bin / "pgbench"), "-S", "-n",
        "-c", str(config.clients), "-j", str(config.jobs), "-M", config.mode, "-T", str(duration),
        "-h", "127.0.0.1", "-p", str(port), "-U", BENCH_ROLE, BENCH_DB,
    ]


def parse_output(text: str) -> PgbenchResult:
    """Extract tps, average latency and transaction counts from pgbench's summary."""
    transactions, latency, tps = _TRANSACTIONS.search(text), _LATENCY.search(text), _TPS.search(text)
    if transactions is None or latency is None or tps is None:
        raise BenchError(f"could not parse pgbench output:\n{text}")
    failed = _FAILED.search(text)
    return PgbenchResult(
        tps=float(tps.group(1)),
        latency_ms=float(latency.group(1)),
        transactions=int(transactions.group(1)),
        failed=int(failed.group(1)) if failed else 0,
    )


def run_pgbench(
    pg_bin: Path, port: int, config: Config, duration: int, *, env: Mapping[str, str], cwd: Path
) -> PgbenchResult:
    """Run pgbench once and parse its summary; a non-zero exit becomes ``BenchError``."""
    argv = pgbench_argv(pg_bin, port, config, duration)
    output = run_checked(argv, cwd=cwd, env=env, timeout=duration + 120)
    return parse_output(output)


def query_value(pg_bin: Path, port: int, sql: str, *, env: Mapping[str, str], cwd: Path) -> str:
    """The unaligned, tuples-only output of one statement run with psql against 127.0.0.1:``port``."""
    argv = [str(pg_bin / "psql"), "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(port),
            "-U", BENCH_ROLE, "-d", BENCH_DB, "-c", sql]
    return run_checked(argv, cwd=cwd, env=env, timeout=60).strip()


def smoke_test(pg_bin: Path, port: int, *, env: Mapping[str, str], cwd: Path) -> None:
    """One ``SELECT 1`` through a target with psql, so a broken login fails before any measurement."""
    output = query_value(pg_bin, port, "SELECT 1", env=env, cwd=cwd)
    if output != "1":
        raise BenchError(f"smoke test through port {port} returned {output!r} instead of '1'")


MASKED_PROBE = "SELECT abalance FROM pgbench_accounts WHERE aid = 1"


def check_masked(
    pg_bin: Path, direct_port: int, proxy_port: int, *,
    direct_env: Mapping[str, str], proxy_env: Mapping[str, str], cwd: Path,
) -> tuple[str, str]:
    """Fail unless the abalance pgbench -S reads comes back masked through the proxy: the value read
    through ``proxy_port`` must be an integer (hash keeps the type) that differs from the one read
    directly (pgbench -i sets every abalance to 0, and the hash of 0 is not 0). Returns both values."""
    direct = query_value(pg_bin, direct_port, MASKED_PROBE, env=direct_env, cwd=cwd)
    proxied = query_value(pg_bin, proxy_port, MASKED_PROBE, env=proxy_env, cwd=cwd)
    if not proxied.lstrip("-").isdigit():
        raise BenchError(f"masking check: `{MASKED_PROBE}` through port {proxy_port} returned {proxied!r}, "
                         "not an integer (hash should keep the column's type)")
    if proxied == direct:
        raise BenchError(f"masking is not in effect: `{MASKED_PROBE}` returned {proxied!r} through port "
                         f"{proxy_port}, the same as directly; pgbench_accounts.abalance should be hashed")
    return direct, proxied
