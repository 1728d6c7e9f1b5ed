"""pytest plugin: pgproxy running for real in a background thread with its own event loop.

A thread (not the test's loop) so that blocking clients — psql subprocesses, psycopg's sync API,
pgbench — can talk to it. Settings go through ``load_settings`` like ``pgproxy run``.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
import uvloop

from pgproxy.app import build_server
from pgproxy.approvals.service import ApprovalService
from pgproxy.audit.jsonl import read_records
from pgproxy.audit.postgres import PostgresAuditStore
from pgproxy.audit.record import AuditRecord
from pgproxy.config import load_settings
from pgproxy.devcerts import write_self_signed
from pgproxy.server.listener import ProxyServer
from tests.support.fake_idp import FakeIdP
from tests.support.pg_plugin import TEST_DATABASE, UPSTREAM_ROLE, RealPostgres

T = TypeVar("T")
POLICIES = Path(__file__).parent / "policies"


class RunningProxy:
    def __init__(
        self, settings: dict[str, Any], idp: FakeIdP, tls_dir: Path, approvals: ApprovalService | None = None
    ) -> None:
        self.idp = idp
        self.approvals = approvals
        self.tls_dir = tls_dir
        self.settings = load_settings(settings)
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="pgproxy-test", daemon=True)
        self._thread.start()
        self.server: ProxyServer = self.call(self._start())

    async def _start(self) -> ProxyServer:
        server = build_server(self.settings, approvals=self.approvals)
        await server.start()
        return server

    @property
    def port(self) -> int:
        return self.server.port

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run a coroutine on the proxy's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call_soon(self, function: Callable[[], T]) -> T:
        async def invoke() -> T:
            return function()

        return self.call(invoke())

    def conninfo(self, token: str | None = None, *, user: str = "agent", database: str = TEST_DATABASE,
                 sslmode: str = "require", **extra: str) -> str:
        """libpq keyword/value connection string (psql, psycopg, pgbench)."""
        token = self.idp.mint() if token is None else token
        words = {"host": "127.0.0.1", "port": str(self.port), "user": user, "dbname": database,
                 "sslmode": sslmode, "password": token, **extra}
        return " ".join(f"{key}='{value}'" for key, value in words.items())

    def url(self, token: str | None = None, *, user: str = "agent", database: str = TEST_DATABASE,
            scheme: str = "postgresql", sslmode: str | None = "require") -> str:
        """URL form (asyncpg, SQLAlchemy)."""
        token = self.idp.mint() if token is None else token
        query = f"?sslmode={sslmode}" if sslmode else ""
        return f"{scheme}://{quote(user)}:{quote(token, safe='')}@127.0.0.1:{self.port}/{database}{query}"

    def drain_audit(self) -> None:
        """Wait until every audit record submitted so far is written (outcomes included)."""
        audit = self.server.context.audit
        assert audit is not None, "this proxy has no audit log"

        async def drain() -> None:
            for target in audit.targets:
                if target.committer is not None:
                    await target.committer.drain()

        self.call(drain())

    def audit_records(self) -> list[AuditRecord]:
        """Every record of this proxy's JSONL audit log, once everything submitted so far is written."""
        assert self.settings.audit_jsonl is not None, "this proxy has no JSONL audit log"
        self.drain_audit()
        return list(read_records(self.settings.audit_jsonl))

    def stop(self, grace: float = 5.0) -> None:
        if self.loop.is_running():
            self.call(self.server.shutdown(grace), timeout=grace + 30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        if not self.loop.is_running():
            self.loop.close()


ProxyFactory = Callable[..., RunningProxy]


def database_audit_records(dsn: str) -> list[AuditRecord]:
    """Every record of the PostgreSQL audit store at ``dsn``, in chain order (call after draining)."""
    return asyncio.run(PostgresAuditStore(dsn).fetch())
_AUDIT_FILES = itertools.count(1)


def base_settings(postgres: RealPostgres, idp: FakeIdP, tls_dir: Path) -> dict[str, Any]:
    cert, key = write_self_signed(tls_dir)
    return {
        "listen": "127.0.0.1:0",
        "upstream": postgres.dsn(UPSTREAM_ROLE) + "?sslmode=disable",
        "tls_cert": cert,
        "tls_key": key,
        "oidc_issuer": idp.issuer,
        "oidc_audience": idp.audience,
        "oidc_jwks": idp.jwks_url,
        "allow_plaintext_loopback": True,
        "shutdown_grace_seconds": 5,
        "policies": POLICIES / "permissive",
        "audit_jsonl": tls_dir / f"audit-{next(_AUDIT_FILES)}.jsonl",
    }


@pytest.fixture(scope="session")
def proxy_factory(
    postgres: RealPostgres, fake_idp: FakeIdP, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyFactory]:
    """Start extra proxies with setting overrides; all are stopped at the end of the session."""
    started: list[RunningProxy] = []
    tls_dir = tmp_path_factory.mktemp("tls")

    def start(approval_service: ApprovalService | None = None, **overrides: Any) -> RunningProxy:
        settings = base_settings(postgres, fake_idp, tls_dir) | overrides
        proxy = RunningProxy({k: v for k, v in settings.items() if v is not None}, fake_idp, tls_dir, approval_service)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop(grace=1)


@pytest.fixture(scope="session")
def proxy(proxy_factory: ProxyFactory) -> RunningProxy:
    """The shared proxy: TLS offered, plaintext allowed on loopback, upstream trust auth."""
    return proxy_factory()
