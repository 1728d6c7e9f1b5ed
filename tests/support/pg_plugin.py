"""pytest plugin: a real PostgreSQL for integration tests, and the roles pgproxy logs in with.

Source, in order: ``PGPROXY_TEST_DSN`` (a superuser DSN), testcontainers when a Docker daemon
answers, else an embedded server from the ``pgserver`` package. Never skips.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from pgproxy.embedded import EmbeddedPostgres

TEST_DATABASE = "pgproxy_test"
UPSTREAM_ROLE = "pgproxy_upstream"  # pgproxy's own login: no superuser, owns the test database
SCRAM_ROLE, SCRAM_PASSWORD = "pgproxy_scram", "scram-secret-1"
MD5_ROLE, MD5_PASSWORD = "pgproxy_md5", "md5-secret-1"


@dataclass
class RealPostgres:
    host: str
    port: int
    admin_user: str
    admin_password: str | None
    embedded: EmbeddedPostgres | None

    def dsn(self, user: str | None = None, database: str = TEST_DATABASE, password: str | None = None) -> str:
        user = user or self.admin_user
        secret = password if user != self.admin_user else self.admin_password
        auth = f"{user}:{secret}" if secret else user
        return f"postgresql://{auth}@{self.host}:{self.port}/{database}"

    @property
    def admin_dsn(self) -> str:
        return self.dsn(database="postgres")


def _docker_available() -> bool:
    """Whether a Docker daemon answers (the CLI alone is not enough)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://"):
        path = host.removeprefix("unix://")
        if not os.path.exists(path):
            return False
        with socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(2)
            try:
                probe.connect(path)
                probe.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                return b" 200 " in probe.recv(64)
            except OSError:
                return False
    return True  # a remote daemon: let testcontainers report if it does not answer


def _prepare(server: RealPostgres) -> None:
    with psycopg.connect(server.admin_dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {TEST_DATABASE}")
        for role, password, method in (
            (UPSTREAM_ROLE, None, None),
            (SCRAM_ROLE, SCRAM_PASSWORD, "scram-sha-256"),
            (MD5_ROLE, MD5_PASSWORD, "md5"),
        ):
            admin.execute(f"DROP ROLE IF EXISTS {role}")
            admin.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER")
            if password is not None:
                admin.execute(f"SET password_encryption = '{method}'")
                admin.execute(f"ALTER ROLE {role} PASSWORD '{password}'")
        admin.execute(f"CREATE DATABASE {TEST_DATABASE} OWNER {UPSTREAM_ROLE}")
        admin.execute(f"GRANT CONNECT ON DATABASE {TEST_DATABASE} TO {SCRAM_ROLE}, {MD5_ROLE}")
    if server.embedded is not None:
        # First match wins: the password roles must prove their password; everyone else is trusted.
        server.embedded.write_hba(
            [
                "local all all trust",
                f"host all {SCRAM_ROLE} 127.0.0.1/32 scram-sha-256",
                f"host all {MD5_ROLE} 127.0.0.1/32 md5",
                "host all all 127.0.0.1/32 trust",
            ]
        )


@pytest.fixture(scope="session")
def postgres() -> Iterator[RealPostgres]:
    dsn = os.environ.get("PGPROXY_TEST_DSN")
    if dsn:
        parts = urlsplit(dsn)
        server = RealPostgres(parts.hostname or "127.0.0.1", parts.port or 5432, parts.username or "postgres",
                              parts.password, None)
        _prepare(server)
        yield server
        return
    if _docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", username="postgres", password="postgres") as container:
            server = RealPostgres(container.get_container_host_ip(), int(container.get_exposed_port(5432)),
                                  "postgres", "postgres", None)
            _prepare(server)
            yield server
        return
    embedded = EmbeddedPostgres()
    embedded.start()
    try:
        server = RealPostgres("127.0.0.1", embedded.port, "postgres", None, embedded)
        _prepare(server)
        yield server
    finally:
        embedded.stop()


SYSTEM_POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class TLSPostgres:
    """A second server that speaks TLS (the distribution's PostgreSQL; pgserver's build has no TLS)."""

    server: EmbeddedPostgres
    ca: Path  # the self-signed server certificate, which is its own CA

    def dsn(self, query: str) -> str:
        return f"{self.server.dsn_for(UPSTREAM_ROLE, TEST_DATABASE)}?{query}"


@pytest.fixture(scope="session")
def tls_postgres() -> Iterator[TLSPostgres]:
    server = EmbeddedPostgres(bin_dir=SYSTEM_POSTGRES_BIN)
    server.start()
    try:
        ca = server.enable_tls()
        with psycopg.connect(server.dsn, autocommit=True) as admin:
            admin.execute(f"CREATE ROLE {UPSTREAM_ROLE} LOGIN NOSUPERUSER")
            admin.execute(f"CREATE DATABASE {TEST_DATABASE} OWNER {UPSTREAM_ROLE}")
        yield TLSPostgres(server, ca)
    finally:
        server.stop()
