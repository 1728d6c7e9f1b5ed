"""Policy enforcement seen through psycopg 3: extended protocol, client-side binding, pipelines,
transaction blocks and prepared statements.

A refusal must behave exactly like an error PostgreSQL itself raised at that statement: in a pipeline the
error arrives at the refused statement, the statements after it are skipped and the implicit transaction
is rolled back; in a transaction block the transaction is aborted until ROLLBACK. This is shown by running
the same work directly with the refused statement replaced by one that fails (``SELECT 1/0``) and comparing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors, pq

from tests.support.compare import unique_name
from tests.support.enforcement import (
    DEFAULT,
    HELD,
    ITEM_ROWS,
    ITEMS,
    SECRETS,
    SEQUENCE,
    SIDE_EFFECT_FUNCTION,
    Denial,
    GateDatabase,
    Snapshot,
    spellings,
    token,
)
from tests.support.fake_idp import FakeIdP
from tests.support.proxy_plugin import RunningProxy

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]
SECRETS_RULE = "writers-not-secrets"


@pytest.fixture
def scratch(gate: GateDatabase) -> Iterator[str]:
    """A table of this test's own, owned by the database owner (writers may write it; nobody else)."""
    name = unique_name("gate_scratch")
    gate.owner_execute(f"CREATE TABLE {name} (id int PRIMARY KEY)")
    yield name
    gate.owner_execute(f"DROP TABLE {name}")


def connect(proxy: RunningProxy, fake_idp: FakeIdP, group: str, **options: Any) -> Conn:
    return psycopg.connect(proxy.conninfo(token(fake_idp, group)), autocommit=True, **options)


def check_refusal(error: psycopg.Error, denial: Denial) -> None:
    assert isinstance(error, errors.InsufficientPrivilege), repr(error)
    diag = error.diag
    denial.check(diag.sqlstate, diag.message_primary, diag.message_detail, diag.message_hint)


# Denied for a reader; each with one parameter ($1 in the spelling, %s for psycopg) and its value.
READER_ATTACKS: list[tuple[str, Any, str, str]] = [
    (f"DELETE FROM {ITEMS} WHERE id = $1", 1, "write", DEFAULT),
    (f"WITH d AS (UPDATE {ITEMS} SET name = $1 RETURNING id) SELECT count(*) FROM d", "x", "write", DEFAULT),
    (f"EXPLAIN (ANALYZE, COSTS off) INSERT INTO {ITEMS} VALUES ($1, 'x')", 99, "write", DEFAULT),
    (f"SELECT setval('{SEQUENCE}', $1)", 1000, "write", DEFAULT),
    ("SELECT set_config('search_path', $1, false)", "pg_temp", "privilege", DEFAULT),
    (f"SELECT {SIDE_EFFECT_FUNCTION}() + $1", 1, "procedural", DEFAULT),
    (f"CREATE TABLE gate_copy AS SELECT * FROM {ITEMS} WHERE id = $1", 1, "ddl", HELD),
]


def as_psycopg(spelling: str) -> str:
    return spelling.replace("%", "%%").replace("$1", "%s")


@pytest.mark.parametrize("prepare", [None, True], ids=["unnamed", "prepared"])
def test_extended_protocol_denials(
    enforcing: RunningProxy, gate: GateDatabase, baseline: Snapshot, fake_idp: FakeIdP, prepare: bool | None
) -> None:
    with connect(enforcing, fake_idp, "readers") as conn:
        for sql, value, category, rule in READER_ATTACKS:
            for spelling in spellings(sql):
                for binary in (False, True):
                    with pytest.raises(psycopg.Error) as raised:
                        conn.cursor(binary=binary).execute(as_psycopg(spelling), (value,), prepare=prepare)
                    check_refusal(raised.value, Denial(rule, category))
                    assert conn.execute("SELECT %s::int + 1", (41,)).fetchone() == (42,)
        with pytest.raises(psycopg.Error) as raised:
            conn.cursor().executemany(f"DELETE FROM {ITEMS} WHERE id = %s", [(1,), (2,)])
        check_refusal(raised.value, Denial(DEFAULT, "write"))
        assert conn.info.transaction_status.name == "IDLE"
    assert gate.snapshot() == baseline


MULTI_STATEMENT = [
    (f"SELECT 1; DELETE FROM {ITEMS}", "write", DEFAULT),
    (f"SELECT * FROM {ITEMS} /* ; */; UPDATE {ITEMS} SET name = 'x'", "write", DEFAULT),
    (f"BEGIN; SELECT 1; SELECT nextval('{SEQUENCE}'); COMMIT", "write", DEFAULT),
    (f"SELECT 'a;b'; -- ;\nTRUNCATE {ITEMS}", "ddl", HELD),
    (f"SET statement_timeout = 0; RESET ALL; SELECT * FROM {ITEMS}", "privilege", DEFAULT),
]


def test_client_cursor_multi_statement_denials(
    enforcing: RunningProxy, gate: GateDatabase, baseline: Snapshot, fake_idp: FakeIdP
) -> None:
    with connect(enforcing, fake_idp, "readers") as conn:
        cursor = psycopg.ClientCursor(conn)
        for sql, category, rule in MULTI_STATEMENT:
            for spelling in spellings(sql):
                with pytest.raises(psycopg.Error) as raised:
                    cursor.execute(spelling.replace("%", "%%"))
                check_refusal(raised.value, Denial(rule, category))
                cursor.execute(f"SELECT 1; SELECT count(*) FROM {ITEMS} WHERE id > %s", (0,))
                assert cursor.fetchall() == [(1,)] and cursor.nextset() and cursor.fetchall() == [(3,)]
        assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)  # nothing of the refused SET ran
    assert gate.snapshot() == baseline


# -- a refusal is an error in the server's place -------------------------------------------------------------


def _kind(exc: BaseException) -> str:
    """The error's kind, with the refusal and the direct stand-in error named alike."""
    if isinstance(exc, errors.InsufficientPrivilege | errors.DivisionByZero):
        return "statement failed"
    return type(exc).__name__


def pipeline_work(table: str, failing: str) -> Callable[[Conn], list[Any]]:
    """INSERT, ``failing``, INSERT in one pipeline (one implicit transaction), then what happened."""

    def work(conn: Conn) -> list[Any]:
        out: list[Any] = []
        cursors = [conn.cursor() for _ in range(3)]
        try:
            with conn.pipeline() as pipeline:
                cursors[0].execute(f"INSERT INTO {table} VALUES (%s)", (1,))
                cursors[1].execute(failing)
                cursors[2].execute(f"INSERT INTO {table} VALUES (%s)", (2,))
                try:
                    pipeline.sync()
                except psycopg.Error as exc:
                    out.append(("sync", _kind(exc)))
                for index, cursor in enumerate(cursors):
                    status = cursor.pgresult.status if cursor.pgresult else None
                    out.append((index, cursor.statusmessage, None if status is None else pq.ExecStatus(status).name))
        except psycopg.Error as exc:
            out.append(("pipeline", _kind(exc)))
        out.append(conn.info.transaction_status.name)
        out.append(conn.execute(f"SELECT count(*) FROM {table}").fetchone())
        # A second pipeline on the same connection works normally.
        with conn.pipeline():
            conn.execute(f"INSERT INTO {table} VALUES (%s)", (3,))
            last = conn.execute(f"SELECT array_agg(id) FROM {table}")
        out.append(last.fetchone())
        conn.execute(f"DELETE FROM {table}")
        return out

    return work


def transaction_work(table: str, failing: str) -> Callable[[Conn], list[Any]]:
    """BEGIN; INSERT; ``failing``; another statement; ROLLBACK — then what happened."""

    def work(conn: Conn) -> list[Any]:
        out: list[Any] = []
        for step in ("BEGIN", f"INSERT INTO {table} VALUES (1)", failing, "SELECT 1", "ROLLBACK"):
            try:
                cursor = conn.execute(step)
                out.append(cursor.statusmessage)
            except psycopg.Error as exc:
                out.append(_kind(exc))
            out.append(conn.info.transaction_status.name)
        out.append(conn.execute(f"SELECT count(*) FROM {table}").fetchone())
        return out

    return work


@pytest.mark.parametrize("shape", ["pipeline", "transaction"])
def test_refusal_behaves_like_a_server_error(
    enforcing: RunningProxy, gate: GateDatabase, fake_idp: FakeIdP, scratch: str, shape: str
) -> None:
    before = gate.snapshot()
    make = pipeline_work if shape == "pipeline" else transaction_work
    with psycopg.connect(gate.owner_dsn, autocommit=True) as direct:
        expected = make(scratch, "SELECT 1/0")(direct)
    refused: list[psycopg.Error] = []
    with connect(enforcing, fake_idp, "writers") as proxied:
        proxied.add_notice_handler(lambda diag: None)
        denied_sql = f"SELECT secret FROM {SECRETS}"
        outcome = make(scratch, denied_sql)(proxied)
        with pytest.raises(psycopg.Error) as raised:
            proxied.execute(denied_sql)
        refused.append(raised.value)
    assert outcome == expected
    check_refusal(refused[0], Denial(SECRETS_RULE, "read"))
    assert refused[0].diag.message_hint == "work with the other tables of the database"
    if shape == "pipeline":
        assert expected[0] == ("sync", "statement failed")
        assert expected[-3:] == ["IDLE", (0,), ([3],)]
    else:
        assert expected == [
            "BEGIN",
            "INTRANS",
            "INSERT 0 1",
            "INTRANS",
            "statement failed",
            "INERROR",
            "InFailedSqlTransaction",
            "INERROR",
            "ROLLBACK",
            "IDLE",
            (0,),
        ]
    assert gate.snapshot() == before
    gate.assert_untouched()


def test_pipeline_refusal_for_each_kind_of_message(
    enforcing: RunningProxy, gate: GateDatabase, fake_idp: FakeIdP, scratch: str
) -> None:
    """The refused statement in a pipeline in several positions and spellings: each time the statements
    before it are rolled back with it and those after it never run."""
    with connect(enforcing, fake_idp, "writers") as conn:
        # psycopg itself loses track of statements it prepared in an aborted pipeline (it then Binds
        # names the server never defined, directly as through pgproxy): keep its automatic preparing out.
        conn.prepare_threshold = None
        for spelling in spellings(f"DELETE FROM {SECRETS} WHERE id > 0"):
            for position in range(3):
                statements = [f"INSERT INTO {scratch} VALUES ({n})" for n in range(1, 3)]
                statements.insert(position, spelling)
                seen: list[str] = []
                with pytest.raises(psycopg.Error) as raised, conn.pipeline():
                    for statement in statements:
                        conn.execute(statement)
                        seen.append(statement)
                check_refusal(raised.value, Denial(SECRETS_RULE, "write"))
                assert conn.execute(f"SELECT count(*) FROM {scratch}").fetchone() == (0,)
    gate.assert_untouched()


def test_prepared_statements_repeat_and_stay_allowed(
    enforcing: RunningProxy, gate: GateDatabase, fake_idp: FakeIdP
) -> None:
    names = dict(ITEM_ROWS)
    with connect(enforcing, fake_idp, "readers") as conn, psycopg.connect(gate.owner_dsn) as direct:
        for i in range(60):
            key = i % 3 + 1
            for prepare in (True, None):  # explicit, and psycopg's own after a few executions
                row = conn.execute(f"SELECT name FROM {ITEMS} WHERE id = %s", (key,), prepare=prepare).fetchone()
                assert row == (names[key],)
            assert conn.execute(f"SELECT count(*) FROM {ITEMS} WHERE id <= %s", (key,)).fetchall() == (
                direct.execute(f"SELECT count(*) FROM {ITEMS} WHERE id <= %s", (key,)).fetchall()
            )
        prepared = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
        assert prepared is not None and prepared[0] >= 2
    with connect(enforcing, fake_idp, "writers") as conn:
        for _ in range(10):
            with pytest.raises(psycopg.Error) as raised:
                conn.execute(f"SELECT secret FROM {SECRETS} WHERE id = %s", (1,), prepare=True)
            check_refusal(raised.value, Denial(SECRETS_RULE, "read"))
            assert conn.execute(f"SELECT count(*) FROM {ITEMS}", prepare=True).fetchone() == (3,)
    gate.assert_untouched()


# -- sessions -------------------------------------------------------------------------------------------------


def test_viewer_session_is_read_only(enforcing: RunningProxy, gate: GateDatabase, fake_idp: FakeIdP) -> None:
    with connect(enforcing, fake_idp, "viewers") as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert conn.execute("SELECT current_user").fetchone() == ("gate_viewer",)
        for spelling in spellings("BEGIN READ WRITE") + spellings(
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ WRITE"
        ):
            with pytest.raises(psycopg.Error) as raised:
                conn.execute(spelling)
            check_refusal(raised.value, Denial("pgproxy:read-only-session", "transaction"))
            assert conn.info.transaction_status.name == "IDLE"
        conn.autocommit = False
        conn.read_only = False  # psycopg now opens every transaction with BEGIN READ WRITE
        with pytest.raises(psycopg.Error) as raised:
            conn.execute("SELECT 1")
        check_refusal(raised.value, Denial("pgproxy:read-only-session", "transaction"))
        conn.rollback()
        conn.read_only = None
        assert conn.execute(f"SELECT count(*) FROM {ITEMS}").fetchone() == (3,)
        assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
        conn.rollback()
    gate.assert_untouched()


@pytest.mark.parametrize("groups", [[], ["strangers"], ["Readers"], ["readers-x"]], ids=str)
def test_identity_without_a_rule_is_refused_at_connect(
    enforcing: RunningProxy, fake_idp: FakeIdP, groups: list[str]
) -> None:
    identity = fake_idp.mint("outsider", email="outsider@example.com", groups=groups)
    with pytest.raises(psycopg.OperationalError) as raised:
        psycopg.connect(enforcing.conninfo(identity), connect_timeout=10)
    # libpq reports no SQLSTATE for a failed connection (test_enforcement_protocol checks 28000 on the wire).
    text = str(raised.value)
    assert text.startswith("connection failed: connection to server at")
    assert text.endswith(
        'failed: FATAL:  pgproxy: no policy rule grants outsider@example.com access to database "pgproxy_test"\n'
        "HINT:  ask the database owners to add a policy rule for you, or connect to a database you may use"
    ), text
