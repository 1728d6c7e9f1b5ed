"""A throwaway PostgreSQL cluster for the benchmark, built with the system initdb/pg_ctl.

The cluster lives in a temporary directory, listens on 127.0.0.1 only (plus a Unix socket inside that
directory), trusts the benchmark role from 127.0.0.1 and is tuned for a select-only workload (fsync off,
autovacuum off). ``pgbench -i`` loads it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from benchkit import BenchError
from benchkit.procs import run_checked, service_prefix

DEFAULT_PG_BIN = Path("/usr/lib/postgresql/15/bin")
BENCH_ROLE = "bench"
BENCH_DB = "postgres"
REQUIRED_PROGRAMS = ("initdb", "pg_ctl", "postgres", "pgbench", "psql")

_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "100",
    "shared_buffers": "'128MB'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "autovacuum": "off",
    "log_min_messages": "warning",
}


def check_pg_bin(pg_bin: Path) -> None:
    """Fail early, with a hint, when the PostgreSQL programs are missing."""
    missing = [name for name in REQUIRED_PROGRAMS if not (pg_bin / name).is_file()]
    if missing:
        raise BenchError(
            f"missing {', '.join(missing)} in {pg_bin}; install PostgreSQL 15 "
            "(apt-get install postgresql-15 postgresql-contrib) or pass --pg-bin"
        )


@dataclass
class Postgres:
    """A running throwaway cluster: where it lives and how to reach it."""

    pg_bin: Path
    data_dir: Path
    socket_dir: Path
    port: int

    def url(self) -> str:
        """libpq URL of the benchmark database as the benchmark role over TCP."""
        return f"postgresql://{BENCH_ROLE}@127.0.0.1:{self.port}/{BENCH_DB}"

    def start(self) -> None:
        """Start the cluster and wait until it accepts connections; the caller ``stop()``s it."""
        run_checked(
            [*service_prefix(), str(self.pg_bin / "pg_ctl"), "-D", str(self.data_dir),
             "-l", str(self.socket_dir / "postgres.log"), "-w", "-t", "60", "start"],
            cwd=self.socket_dir,
            timeout=90,
        )

    def stop(self) -> None:
        """Stop the cluster (fast mode); kill the postmaster if pg_ctl cannot."""
        argv = [*service_prefix(), str(self.pg_bin / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w"]
        try:
            run_checked([*argv, "stop"], cwd=self.socket_dir, timeout=60)
        except BenchError:
            _kill_postmaster(self.data_dir)


def init_cluster(pg_bin: Path, workdir: Path, port: int) -> Postgres:
    """initdb a cluster under ``workdir`` configured for 127.0.0.1:``port``; ``start()`` it next."""
    data_dir = workdir / "pgdata"
    run_checked(
        [*service_prefix(), str(pg_bin / "initdb"), "-D", str(data_dir), "-U", BENCH_ROLE, "-A", "trust",
         "-E", "UTF8", "--locale=C", "--no-sync"],
        cwd=workdir,
        timeout=120,
    )
    _write_config(data_dir, workdir, port)
    return Postgres(pg_bin=pg_bin, data_dir=data_dir, socket_dir=workdir, port=port)


def _write_config(data_dir: Path, socket_dir: Path, port: int) -> None:
    """Append our settings to postgresql.conf and restrict pg_hba.conf to the benchmark role."""
    settings = {**_SETTINGS, "port": str(port), "unix_socket_directories": f"'{socket_dir}'"}
    with (data_dir / "postgresql.conf").open("a") as conf:
        conf.write("\n# pgproxy bench\n")
        conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
    (data_dir / "pg_hba.conf").write_text(
        f"local all {BENCH_ROLE} trust\nhost all {BENCH_ROLE} 127.0.0.1/32 trust\n"
    )


def _kill_postmaster(data_dir: Path) -> None:
    """Last resort when pg_ctl fails: SIGQUIT the postmaster named in postmaster.pid."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGQUIT)
    except (OSError, ValueError, IndexError):
        pass


def init_pgbench(cluster: Postgres, scale: int, env: Mapping[str, str]) -> None:
    """Load the pgbench tables at ``scale`` (``pgbench -i -s``) over TCP."""
    run_checked(
        [str(cluster.pg_bin / "pgbench"), "-i", "-q", "-s", str(scale), "-h", "127.0.0.1",
         "-p", str(cluster.port), "-U", BENCH_ROLE, BENCH_DB],
        cwd=cluster.socket_dir,
        env=env,
        timeout=1800,
    )


def server_version(pg_bin: Path) -> str:
    """``postgres --version`` output, for the report."""
    return run_checked([str(pg_bin / "postgres"), "--version"], cwd=Path("/"), timeout=30).strip()
