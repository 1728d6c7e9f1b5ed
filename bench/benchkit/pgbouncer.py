"""pgbouncer in session mode in front of the throwaway cluster: the baseline every proxy is compared to.

It runs in the foreground (so its CPU time can be read from /proc), as the ``postgres`` OS user when we are
root, with ``auth_type = trust`` and a one-line userlist naming the benchmark role.
"""

from __future__ import annotations

import os
from pathlib import Path

from benchkit import BenchError
from benchkit.postgres import BENCH_DB, BENCH_ROLE, Postgres
from benchkit.procs import Service, run_checked, service_prefix, start_service, wait_for_port

DEFAULT_PGBOUNCER = Path("/usr/sbin/pgbouncer")
INSTALL_HINT = "apt-get install pgbouncer"


def check_pgbouncer(binary: Path) -> None:
    """Fail early, with the install command, when pgbouncer is missing."""
    if not binary.is_file():
        raise BenchError(
            f"pgbouncer not found at {binary}; install it with `{INSTALL_HINT}` "
            "(or pass --pgbouncer PATH, or leave it out with --targets direct,pgproxy)"
        )


def pgbouncer_version(binary: Path) -> str:
    """First line of ``pgbouncer --version``, for the report."""
    return run_checked([str(binary), "--version"], cwd=Path("/"), timeout=30).splitlines()[0].strip()


def _config_text(cluster: Postgres, port: int, userlist: Path) -> str:
    """pgbouncer.ini: session pooling, trust auth, enough server connections for 16 clients."""
    return f"""\
[databases]
{BENCH_DB} = host=127.0.0.1 port={cluster.port} dbname={BENCH_DB} user={BENCH_ROLE}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {userlist}
pool_mode = session
max_client_conn = 100
default_pool_size = 40
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
"""


def start_pgbouncer(binary: Path, cluster: Postgres, workdir: Path, port: int) -> Service:
    """Write the config under ``workdir``, start pgbouncer on 127.0.0.1:``port`` and wait until it listens."""
    userlist = workdir / "pgbouncer-users.txt"
    userlist.write_text(f'"{BENCH_ROLE}" ""\n')
    config = workdir / "pgbouncer.ini"
    config.write_text(_config_text(cluster, port, userlist))
    service = start_service(
        "pgbouncer",
        [*service_prefix(), str(binary), str(config)],
        cwd=workdir,
        log_path=workdir / "pgbouncer.log",
        env=os.environ,
    )
    try:
        wait_for_port(port, timeout=30, alive=service)
    except BaseException:
        service.stop()
        raise
    return service
