"""A throwaway PostgreSQL for ``pgproxy demo`` and the test suite, from the ``pgserver`` package.

pgserver ships PostgreSQL binaries inside a wheel, so this works on a machine with no PostgreSQL
installed and no Docker. Unlike ``pgserver.get_server`` (Unix socket only) the server here also
listens on 127.0.0.1, so TCP paths (TLS negotiation, cancel over TCP) are exercised for real.
When run as root, PostgreSQL runs as the unprivileged ``pgserver`` OS user, as pgserver does.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import warnings
from pathlib import Path

with warnings.catch_warnings():
    # pgserver asks platformdirs for a runtime directory at import; without XDG_RUNTIME_DIR (root, CI)
    # that warns, although pgproxy never uses that directory.
    warnings.simplefilter("ignore")
    from pgserver._commands import POSTGRES_BIN_PATH  # where the pgserver wheel keeps its binaries

from pgproxy.devcerts import write_self_signed

SUPERUSER = "postgres"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _os_user() -> str | None:
    """PostgreSQL refuses to run as root: pick the unprivileged account pgserver also uses."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("pgserver")
    except KeyError:
        subprocess.run(["useradd", "-s", "/bin/bash", "pgserver"], check=True, capture_output=True)
    return "pgserver"


class EmbeddedPostgres:
    """Start with ``start()``, stop with ``stop()``; ``dsn`` connects as the superuser over TCP."""

    def __init__(self, base_dir: Path | None = None, port: int | None = None, bin_dir: Path | None = None) -> None:
        # bin_dir: other PostgreSQL binaries, e.g. a distribution's (pgserver's build has no TLS support).
        self.bin_dir = bin_dir or POSTGRES_BIN_PATH
        self._owns_dir = base_dir is None
        self.base_dir = Path(tempfile.mkdtemp(prefix="pgproxy-pg-")) if base_dir is None else base_dir
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "socket"
        self.port = port or _free_port()
        self.os_user = _os_user()
        self.running = False

    @property
    def dsn(self) -> str:
        return self.dsn_for(SUPERUSER, "postgres")

    def dsn_for(self, user: str, database: str, password: str | None = None) -> str:
        secret = f":{password}" if password else ""
        return f"postgresql://{user}{secret}@127.0.0.1:{self.port}/{database}"

    @property
    def socket_dsn(self) -> str:
        return f"postgresql://{SUPERUSER}@/postgres?host={self.socket_dir}&port={self.port}"

    @property
    def hba_file(self) -> Path:
        return self.data_dir / "pg_hba.conf"

    def _prepare_dirs(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if self.os_user is not None:
            entry = pwd.getpwnam(self.os_user)
            for path in (self.base_dir, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            # every ancestor must be traversable by the unprivileged server account
            for parent in self.base_dir.resolve().parents:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    parent.chmod(mode | 0o001)

    def start(self) -> None:
        self._prepare_dirs()
        if not (self.data_dir / "PG_VERSION").exists():
            self._run("initdb", "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8")
            with (self.data_dir / "postgresql.conf").open("a") as conf:
                conf.write(
                    "\n# pgproxy embedded server\n"
                    "listen_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{self.socket_dir}'\n"
                    "max_connections = 200\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "password_encryption = 'scram-sha-256'\n"
                )
        self._run("pg_ctl", "-w", "-o", f"-p {self.port}", "-l", str(self.base_dir / "server.log"), "start")
        self.running = True

    def _run(self, program: str, *arguments: str) -> None:
        result = subprocess.run(
            [str(self.bin_dir / program), "-D", str(self.data_dir), *arguments],
            user=self.os_user, capture_output=True, text=True, timeout=120, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed ({result.returncode}): {result.stderr or result.stdout}")

    def reload(self) -> None:
        self._run("pg_ctl", "reload")

    def enable_tls(self) -> Path:
        """Turn on TLS with a self-signed certificate for 127.0.0.1; return the certificate (its own CA)."""
        cert, key = write_self_signed(self.data_dir / "tls")
        if self.os_user is not None:
            entry = pwd.getpwnam(self.os_user)
            for path in (cert.parent, cert, key):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n")
        self.reload()
        return cert

    def write_hba(self, lines: list[str]) -> None:
        """Replace pg_hba.conf (first match wins) and reload."""
        self.hba_file.write_text("\n".join(lines) + "\n")
        if self.os_user is not None:
            entry = pwd.getpwnam(self.os_user)
            os.chown(self.hba_file, entry.pw_uid, entry.pw_gid)
        self.reload()

    def stop(self) -> None:
        if self.running:
            self._run("pg_ctl", "-w", "-m", "immediate", "stop")
            self.running = False
        if self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
