"""The audit store dies mid-workload: nothing runs unlogged, clients get a clear error, pgproxy recovers.

pgproxy writes its log to a PostgreSQL audit database. Writers insert numbered rows through pgproxy
while the test takes the audit database away (connections refused, the store's own connection
terminated) and later gives it back. Afterwards every row in the table must have its intent record,
every statement the client saw succeed must have its outcome, the chain must verify, and statements
must have been refused with SQLSTATE 58000 during the outage and accepted again after it.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
import pytest

from pgproxy.audit import RecordKind, verify
from tests.support.pg_plugin import RealPostgres
from tests.support.proxy_plugin import ProxyFactory, RunningProxy, database_audit_records

pytestmark = pytest.mark.integration

AUDIT_DATABASE = "pgproxy_audit_outage"
TABLE = "audit_outage_probe"


@dataclass
class Workload:
    """Writers inserting ids through pgproxy; what each saw."""

    proxy: RunningProxy
    succeeded: set[int] = field(default_factory=set)
    refused: list[str] = field(default_factory=list)  # SQLSTATEs of refusals
    messages: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def writer(self) -> None:
        conn: psycopg.Connection[tuple[object, ...]] | None = None
        while not self.stop.is_set():
            with self.lock:
                row = next(self.ids)
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.proxy.conninfo(self.proxy.idp.mint("writer")), autocommit=True)
                conn.execute(f"INSERT INTO {TABLE} VALUES ({row})")
                with self.lock:
                    self.succeeded.add(row)
            except psycopg.Error as exc:
                with self.lock:
                    self.refused.append(exc.sqlstate or "?")  # libpq gives none for a refused login
                    self.messages.append(str(exc))
                time.sleep(0.02)
        if conn is not None:
            conn.close()

    def refused_for_the_audit_log(self) -> int:
        """Statements or logins refused because the audit log could not be written."""
        with self.lock:
            return sum(1 for sqlstate, message in zip(self.refused, self.messages, strict=True)
                       if sqlstate == "58000" or "audit" in message)

    def successes(self) -> int:
        with self.lock:
            return len(self.succeeded)


@pytest.fixture
def audit_dsn(postgres: RealPostgres) -> Iterator[str]:
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {AUDIT_DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {AUDIT_DATABASE}")
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY)")
        conn.execute(f"GRANT ALL ON {TABLE} TO PUBLIC")
    yield postgres.dsn(database=AUDIT_DATABASE)
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {AUDIT_DATABASE} ALLOW_CONNECTIONS true")
        conn.execute(f"DROP DATABASE IF EXISTS {AUDIT_DATABASE} WITH (FORCE)")


def wait_until(condition: object, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_no_statement_runs_unlogged_while_the_store_is_down(
    proxy_factory: ProxyFactory, postgres: RealPostgres, audit_dsn: str
) -> None:
    proxy = proxy_factory(audit_dsn=audit_dsn, audit_jsonl=None)
    workload = Workload(proxy)
    writers = [threading.Thread(target=workload.writer) for _ in range(4)]
    for thread in writers:
        thread.start()
    try:
        wait_until(lambda: workload.successes() >= 50)
        with psycopg.connect(postgres.dsn(), autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {AUDIT_DATABASE} ALLOW_CONNECTIONS false")
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                          [AUDIT_DATABASE])
            wait_until(lambda: workload.refused_for_the_audit_log() >= 5)
            during = workload.successes()
            time.sleep(1.0)
            # While the store is down, nothing more succeeds.
            assert workload.successes() == during
            admin.execute(f"ALTER DATABASE {AUDIT_DATABASE} ALLOW_CONNECTIONS true")
        wait_until(lambda: workload.successes() >= during + 50)
    finally:
        workload.stop.set()
        for thread in writers:
            thread.join(30)
    audit = proxy.server.context.audit
    assert audit is not None and audit.healthy

    # The records held during the outage were queued when the store came back, before any new statement.
    proxy.drain_audit()
    records = database_audit_records(audit_dsn)
    assert verify(records).ok, verify(records).summary()
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        inserted = {row for (row,) in conn.execute(f"SELECT id FROM {TABLE}")}
    intents = {
        record.text: record for record in records if record.kind is RecordKind.STATEMENT and record.command == "INSERT"
    }
    # Every row that reached the table has its intent record.
    missing = [row for row in inserted if f"INSERT INTO {TABLE} VALUES ({row})" not in intents]
    assert not missing
    assert workload.succeeded <= inserted
    # Every statement the client saw succeed has its outcome, even those whose outcome was due mid-outage.
    completed = {record.intent_id for record in records if record.kind is RecordKind.OUTCOME and record.rows == 1}
    unfinished = [row for row in workload.succeeded
                  if intents[f"INSERT INTO {TABLE} VALUES ({row})"].record_id not in completed]
    assert not unfinished
    # Every refusal says why: the audit log (a statement refused, a session ended, a login refused).
    assert workload.refused_for_the_audit_log() == len(workload.refused), workload.messages


def test_replicas_sharing_one_audit_database_each_keep_an_intact_chain(
    proxy_factory: ProxyFactory, audit_dsn: str
) -> None:
    replicas = [proxy_factory(audit_dsn=audit_dsn, audit_jsonl=None) for _ in range(2)]

    def work(proxy: RunningProxy, name: str) -> None:
        for round_ in range(3):
            with psycopg.connect(proxy.conninfo(proxy.idp.mint(name)), autocommit=True) as conn:
                for number in range(20):
                    conn.execute(f"SELECT {round_ * 100 + number}")

    threads = [threading.Thread(target=work, args=(proxy, f"replica-user-{index}"))
               for index, proxy in enumerate(replicas) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    for proxy in replicas:
        proxy.drain_audit()
    records = database_audit_records(audit_dsn)
    report = verify(records)
    assert report.ok, report.summary()
    assert len(report.chains) == 2
    statements_by_chain = {
        chain: sum(1 for r in records if r.chain_id == chain and r.kind is RecordKind.STATEMENT)
        for chain in {r.chain_id for r in records}
    }
    assert sorted(statements_by_chain.values()) == [180, 180]  # 3 sessions x 3 rounds x 20, per replica
