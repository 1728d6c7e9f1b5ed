"""The whole loop as an operator runs it: `pgproxy` configured with approvals and its review page; an
agent's psql waits on a DROP TABLE; a DBA approves through the HTTP API with their own token; psql gets
its result. The approval store is the audit database (one `pgproxy` schema for both)."""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from pgproxy.audit import Decision, RecordKind
from tests.integration.test_approval_holds import (
    agent_token,
    in_background,
    psql,
    scratch_database,
    scratch_table,
    write_policies,
)
from tests.support.pg_plugin import UPSTREAM_ROLE, RealPostgres
from tests.support.proxy_plugin import ProxyFactory, database_audit_records

pytestmark = pytest.mark.integration


@pytest.fixture
def audit_database(postgres: RealPostgres) -> Iterator[str]:
    with scratch_database(postgres, f"pgproxy_e2e_{uuid.uuid4().hex[:8]}") as dsn:
        yield dsn


def test_an_agent_waits_and_a_dba_approves_through_the_api(
    proxy_factory: ProxyFactory, postgres: RealPostgres, tmp_path: Path, audit_database: str
) -> None:
    proxy = proxy_factory(
        policies=write_policies(tmp_path, "5m"), approvals=True, web_listen="127.0.0.1:0", audit_dsn=audit_database,
        audit_jsonl=None,
    )
    web = proxy.server.services[0]
    base = f"https://127.0.0.1:{web.port}"  # type: ignore[attr-defined]
    trust = ssl.create_default_context(cafile=str(proxy.settings.tls_cert))
    dba = proxy.idp.mint("dba-1", email="dba@example.com", groups=["dba"])
    with scratch_table(postgres) as exists, httpx.Client(base_url=base, verify=trust, timeout=30,
                                                         headers={"Authorization": f"Bearer {dba}"}) as client:
        name = exists.name  # type: ignore[attr-defined]
        thread, result = in_background(lambda: psql(proxy, agent_token(proxy), f"DROP TABLE {name}"))
        deadline = time.monotonic() + 30
        pending: list[dict[str, object]] = []
        while not pending and time.monotonic() < deadline:
            listing = client.get("/api/approvals", params={"state": "pending"})
            assert listing.status_code == 200, listing.text
            pending = [entry for entry in listing.json()["requests"] if name in str(entry)]
            time.sleep(0.05)
        assert pending, "the held statement did not show up in the API"
        request_id = str(pending[0]["id"])
        assert exists()
        approved = client.post(f"/api/approvals/{request_id}/approve", json={})
        assert approved.status_code == 200, approved.text
        thread.join(60)
        completed = result["value"]
        assert completed.returncode == 0, completed.stderr
        assert f"{base}/approvals" in completed.stderr  # the NOTICE says where to approve
        assert not exists()
    records = [r for r in database_audit_records(audit_database)
               if r.kind is RecordKind.STATEMENT and r.approval_id == request_id]
    assert [(r.decision, r.approvers) for r in records] == [(Decision.REQUIRE_APPROVAL, ("dba@example.com",))]



def test_a_held_write_shows_approvers_the_planners_row_estimate(
    proxy_factory: ProxyFactory, postgres: RealPostgres, tmp_path: Path
) -> None:
    proxy = proxy_factory(policies=write_policies(tmp_path, "5m", held="write"), approvals=True,
                          web_listen="127.0.0.1:0")
    dba = proxy.idp.mint("dba-1", email="dba@example.com", groups=["dba"])
    web = proxy.server.services[0]
    trust = ssl.create_default_context(cafile=str(proxy.settings.tls_cert))
    with scratch_table(postgres) as exists, httpx.Client(
        base_url=f"https://127.0.0.1:{web.port}", verify=trust, timeout=30,  # type: ignore[attr-defined]
        headers={"Authorization": f"Bearer {dba}"},
    ) as client:
        name = exists.name  # type: ignore[attr-defined]
        with psycopg.connect(postgres.dsn(UPSTREAM_ROLE), autocommit=True) as owner:
            owner.execute(f"INSERT INTO {name} SELECT generate_series(1, 1000)")
            owner.execute(f"ANALYZE {name}")
        thread, result = in_background(lambda: psql(proxy, agent_token(proxy), f"DELETE FROM {name} WHERE id <= 100"))
        deadline = time.monotonic() + 30
        pending: list[dict[str, object]] = []
        while not pending and time.monotonic() < deadline:
            pending = [entry for entry in client.get("/api/approvals", params={"state": "pending"}).json()["requests"]
                       if name in str(entry)]
            time.sleep(0.05)
        assert pending, "the held DELETE did not show up"
        impact = str(pending[0]["context"]["impact"])  # type: ignore[index]
        assert impact.startswith("estimated ") and "rows (planner estimate)" in impact, impact
        client.post(f"/api/approvals/{pending[0]['id']}/deny", json={"reason": "estimate checked"})
        thread.join(60)
        assert "denied" in result["value"].stderr
        with psycopg.connect(postgres.dsn(UPSTREAM_ROLE), autocommit=True) as owner:
            assert owner.execute(f"SELECT count(*) FROM {name}").fetchone() == (1000,)  # EXPLAIN ran nothing
