"""Policy enforcement at the wire: hand-built protocol streams that try to smuggle a statement past the gate.

The gate judges Query, Parse, Bind (a named statement at every use) and FunctionCall, and keeps track of
which text each statement name stands for on the server by the server's own answers. These streams try
to make that view differ from the server's: redefining a name, pipelining a Bind before the Parse it
relies on is answered, a Close the server skips after an error, SQL-level PREPARE/DEALLOCATE, fast-path
calls by OID, a statement pipelined behind a setting that changes how the server reads text. In every case
the statement that runs is the one the server holds, judged as such, and the answers arrive in the order
and shape PostgreSQL gives them.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from pgproxy.wire import backend as be
from pgproxy.wire import frontend as fe
from tests.support.compare import unique_name
from tests.support.enforcement import (
    DEFAULT,
    DENY_SECRETS_TO_READERS,
    ITEMS,
    REFUSED,
    SECRET_ROWS,
    SECRETS,
    SEQUENCE,
    Denial,
    GateDatabase,
    Snapshot,
    copy_policies,
    policy_version,
    spellings,
    token,
    wait_for_policy_version,
    with_rules,
    write_policy,
)
from tests.support.fake_idp import FakeIdP
from tests.support.proxy_plugin import ProxyFactory, RunningProxy
from tests.support.raw_client import RawClient, ServerClosed

pytestmark = pytest.mark.integration

Shape = tuple[object, ...]


@asynccontextmanager
async def session(proxy: RunningProxy, fake_idp: FakeIdP, group: str) -> AsyncIterator[RawClient]:
    client = await RawClient.connect(proxy.port)
    try:
        await client.login(token(fake_idp, group))
        yield client
    finally:
        await client.close()


def shape(message: be.BackendMessage) -> Shape:
    """A message as comparable data: its type and what matters of its content."""
    if isinstance(message, be.ErrorResponse):
        return ("Error", message.sqlstate)
    if isinstance(message, be.DataRow):
        return ("DataRow", *(None if v is None else bytes(v).decode() for v in message.values))
    if isinstance(message, be.CommandComplete):
        return ("CommandComplete", message.tag)
    if isinstance(message, be.ReadyForQuery):
        return ("Ready", message.status)
    return (type(message).__name__,)


async def answers(client: RawClient, batches: int = 1) -> list[Shape]:
    """The shapes of everything up to the ``batches``-th ReadyForQuery."""
    found: list[Shape] = []
    for _ in range(batches):
        found += [shape(message) for message in await client.read_until_ready()]
    return found


def errors_in(client: RawClient) -> Iterator[be.ErrorResponse]:
    return (m for m in client.received if isinstance(m, be.ErrorResponse))


def check(error: be.ErrorResponse, denial: Denial) -> None:
    denial.check(error.sqlstate, error.message, error.detail, error.hint)


READ_ORIGINAL = f"SELECT name FROM {ITEMS} WHERE id = 1"
ORIGINAL_ROWS: list[Shape] = [("BindComplete",), ("DataRow", "alpha"), ("CommandComplete", "SELECT 1"), ("Ready", "I")]
RUN_S1 = (fe.Bind("", "s1"), fe.Execute(""), fe.Sync())


async def test_redefining_a_named_statement_is_judged_at_the_parse(
    enforcing: RunningProxy, gate: GateDatabase, baseline: Snapshot, fake_idp: FakeIdP
) -> None:
    async with session(enforcing, fake_idp, "readers") as client:
        await client.send(fe.Parse("s1", READ_ORIGINAL), fe.Sync())
        assert await answers(client) == [("ParseComplete",), ("Ready", "I")]
        for spelling in spellings(f"DELETE FROM {ITEMS}") + spellings(f"SELECT nextval('{SEQUENCE}')"):
            before = len(list(errors_in(client)))
            await client.send(fe.Parse("s1", spelling), *RUN_S1)
            assert await answers(client) == [("Error", "42501"), ("Ready", "I")]  # Bind/Execute skipped
            check(list(errors_in(client))[before], Denial(DEFAULT, "write"))
            await client.send(*RUN_S1)
            assert await answers(client) == ORIGINAL_ROWS
    assert gate.snapshot() == baseline


DENIED_EXTENDED = [f"DELETE FROM {ITEMS}", f"SELECT setval('{SEQUENCE}', 1)", f"UPDATE {ITEMS} SET name = 'x'"]


@pytest.mark.parametrize("in_transaction", [False, True], ids=["implicit", "block"])
async def test_denied_batch_gets_one_error_then_ready(
    enforcing: RunningProxy, gate: GateDatabase, baseline: Snapshot, fake_idp: FakeIdP, in_transaction: bool
) -> None:
    async with session(enforcing, fake_idp, "readers") as client:
        for sql in DENIED_EXTENDED:
            for spelling in spellings(sql):
                if in_transaction:
                    await client.send(fe.Query("BEGIN"))
                    assert await answers(client) == [("CommandComplete", "BEGIN"), ("Ready", "T")]
                await client.send(
                    fe.Parse("", spelling),
                    fe.Bind("", ""),
                    fe.Describe("P", ""),
                    fe.Execute(""),
                    fe.Parse("s_after", "SELECT 2"),
                    fe.Bind("p_after", "s_after"),
                    fe.Execute("p_after"),
                    fe.Close("S", "s_after"),
                    fe.Flush(),
                    fe.Parse("", "SELECT 3"),
                    fe.Bind("", ""),
                    fe.Execute(""),
                    fe.Sync(),
                )
                assert await answers(client) == [("Error", "42501"), ("Ready", "E" if in_transaction else "I")]
                check(list(errors_in(client))[-1], Denial(DEFAULT, "write"))
                if in_transaction:
                    await client.send(fe.Query("SELECT 1"))
                    assert await answers(client) == [("Error", "25P02"), ("Ready", "E")]
                    await client.send(fe.Query("ROLLBACK"))
                    assert await answers(client) == [("CommandComplete", "ROLLBACK"), ("Ready", "I")]
                # The session goes on; nothing of the skipped messages took effect.
                await client.send(fe.Bind("", "s_after"), fe.Execute(""), fe.Sync())
                assert await answers(client) == [("Error", "42501"), ("Ready", "I")]  # s_after was never defined
                check(list(errors_in(client))[-1], Denial(DEFAULT, "unknown"))
                assert await client.query_values("SELECT 'usable'") == [("usable",)]
    assert gate.snapshot() == baseline


async def test_pipelined_bind_waits_for_the_parse_it_depends_on(
    enforcing: RunningProxy, gate: GateDatabase, baseline: Snapshot, fake_idp: FakeIdP
) -> None:
    async with session(enforcing, fake_idp, "readers") as client:
        # An allowed statement: everything runs, in order.
        await client.send(fe.Parse("s1", READ_ORIGINAL), fe.Sync(), *RUN_S1)
        assert await answers(client, 2) == [("ParseComplete",), ("Ready", "I"), *ORIGINAL_ROWS]
        # A denied one: the Bind that relies on it is refused too, never run.
        await client.send(
            fe.Parse("s2", f"DELETE FROM {ITEMS} RETURNING name"),
            fe.Sync(),
            fe.Bind("", "s2"),
            fe.Execute(""),
            fe.Sync(),
        )
        assert await answers(client, 2) == [("Error", "42501"), ("Ready", "I"), ("Error", "42501"), ("Ready", "I")]
        refusals = list(errors_in(client))
        check(refusals[-2], Denial(DEFAULT, "write"))
        check(refusals[-1], Denial(DEFAULT, "unknown"))
        # A Parse the server rejects: the name stays undefined for the pipelined Bind.
        await client.send(
            fe.Parse("s3", "SELECT * FROM gate_no_such_table"), fe.Sync(), fe.Bind("", "s3"), fe.Execute(""), fe.Sync()
        )
        assert await answers(client, 2) == [("Error", "42P01"), ("Ready", "I"), ("Error", "42501"), ("Ready", "I")]
        check(list(errors_in(client))[-1], Denial(DEFAULT, "unknown"))
        # The same name defined twice across batches: the server keeps the first definition.
        await client.send(fe.Parse("s1", f"SELECT name FROM {ITEMS} WHERE id = 3"), fe.Sync(), *RUN_S1)
        assert await answers(client, 2) == [("Error", "42P05"), ("Ready", "I"), *ORIGINAL_ROWS]
    assert gate.snapshot() == baseline


def skipped_close_stream(replacement: str) -> list[fe.FrontendMessage]:
    """An error makes the server skip ``Close S s1``; the next Parse of s1 then fails as a duplicate; the
    Bind of s1 that follows runs the ORIGINAL s1. One write, three batches."""
    return [
        fe.Parse("", "SELECT 1/0"),
        fe.Bind("", ""),
        fe.Execute(""),
        fe.Close("S", "s1"),
        fe.Sync(),
        fe.Parse("s1", replacement),
        fe.Sync(),
        *RUN_S1,
    ]


SKIPPED_CLOSE_ANSWERS: list[Shape] = [
    ("ParseComplete",),
    ("Error", "22012"),
    ("Ready", "I"),  # the constant 1/0 fails when planned, at Bind
    ("Error", "42P05"),
    ("Ready", "I"),
]


async def test_a_close_the_server_skipped_does_not_confuse_the_gate(
    enforcing: RunningProxy, gate: GateDatabase, baseline: Snapshot, fake_idp: FakeIdP
) -> None:
    async with session(enforcing, fake_idp, "readers") as client:
        await client.send(fe.Parse("s1", READ_ORIGINAL), fe.Sync())
        assert await answers(client) == [("ParseComplete",), ("Ready", "I")]
        for replacement in spellings(f"SELECT name FROM {ITEMS} WHERE id = 3"):
            await client.send(*skipped_close_stream(replacement))
            assert await answers(client, 3) == [*SKIPPED_CLOSE_ANSWERS, *ORIGINAL_ROWS]
        # A Close that does happen, then a redefinition, is followed too.
        await client.send(fe.Close("S", "s1"), fe.Parse("s1", f"SELECT name FROM {ITEMS} WHERE id = 3"), *RUN_S1)
        assert await answers(client) == [
            ("CloseComplete",),
            ("ParseComplete",),
            ("BindComplete",),
            ("DataRow", "gamma"),
            ("CommandComplete", "SELECT 1"),
            ("Ready", "I"),
        ]
    assert gate.snapshot() == baseline


async def test_a_skipped_close_cannot_launder_a_statement_the_policy_now_denies(
    proxy_factory: ProxyFactory, gate: GateDatabase, fake_idp: FakeIdP, tmp_path: Path
) -> None:
    """s1 reads the secrets table (allowed when it was defined); the policy then denies that table. The
    stream makes a naive gate believe s1 was closed and redefined as an allowed read: the Bind must still
    be judged as the secrets read the server runs, and refused."""
    policies = copy_policies(tmp_path)
    rules = policies / "rules.yaml"
    proxy = proxy_factory(policies=policies, policy_poll_seconds=0.1)
    async with session(proxy, fake_idp, "readers") as client:
        await client.send(fe.Parse("s1", f"SELECT secret FROM {SECRETS} WHERE id = 1"), fe.Sync())
        assert await answers(client) == [("ParseComplete",), ("Ready", "I")]
        version = policy_version(proxy)
        write_policy(rules, with_rules(rules.read_text(), DENY_SECRETS_TO_READERS))
        wait_for_policy_version(proxy, version)
        await client.send(*skipped_close_stream(READ_ORIGINAL))
        assert await answers(client, 3) == [*SKIPPED_CLOSE_ANSWERS, ("Error", "42501"), ("Ready", "I")]
        check(list(errors_in(client))[-1], Denial("readers-not-secrets", "read"))
        # EXECUTE in SQL of the protocol-level statement is judged as it too.
        await client.send(fe.Query("EXECUTE s1"))
        assert await answers(client) == [("Error", "42501"), ("Ready", "I")]
        check(list(errors_in(client))[-1], Denial("readers-not-secrets", "read"))
        assert not any(
            isinstance(m, be.DataRow) and SECRET_ROWS[0][1].encode() in bytes(m.values[0] or b"")
            for m in client.received
        )


# -- settings that change how the server reads the text that follows -------------------------------------


async def read_until_closed_or_ready(client: RawClient, readies: int) -> list[be.BackendMessage]:
    """Messages until ``readies`` ReadyForQuery arrived or the server closed the connection."""
    found: list[be.BackendMessage] = []
    while sum(isinstance(m, be.ReadyForQuery) for m in found) < readies:
        try:
            found.append(await client.read_message())
        except ServerClosed:
            break
    return found


READING_CHANGES = {
    "standard_conforming_strings": "SET standard_conforming_strings = off",
    "client_encoding": "SET client_encoding = 'SJIS'",
}
# Texts that read as a SELECT of constants the way pgproxy reads them (standard_conforming_strings on,
# UTF-8), but in which a constant ends early under the new reading, so that what follows it is SQL: a
# second statement, or a call inside the same one. (In SJIS the bytes C3 81 5C of "Á\" are a katakana and
# one two-byte character: the backslash no longer escapes the quote.)
SMUGGLED = {
    ("standard_conforming_strings", "second-statement"): "SELECT 'x\\' , $$' ; DELETE FROM {table}; -- $$",
    ("standard_conforming_strings", "same-statement"): "SELECT 'x\\' , $$' , setval($q${table}_seq$q$, 99) -- $$",
    ("client_encoding", "second-statement"): "SELECT E'\u00c1\\' ; DELETE FROM {table}; -- '",
    ("client_encoding", "same-statement"): "SELECT E'\u00c1\\' , setval($q${table}_seq$q$, 99) -- '",
}
CASES = [(change, form, protocol) for (change, form) in SMUGGLED for protocol in ("simple", "extended")]


@pytest.fixture
def victim(gate: GateDatabase) -> Iterator[str]:
    """A table with three rows and a sequence at 3, owned by the database owner."""
    name = unique_name("gate_victim")
    gate.owner_execute(
        f"CREATE TABLE {name} (id int PRIMARY KEY); INSERT INTO {name} VALUES (1), (2), (3);"
        f"CREATE SEQUENCE {name}_seq; SELECT setval('{name}_seq', 3)"
    )
    yield name
    gate.owner_execute(f"DROP TABLE {name}; DROP SEQUENCE {name}_seq")


@pytest.mark.parametrize("case", CASES, ids="-".join)
async def test_statement_pipelined_behind_a_reading_change_is_not_misread(
    enforcing: RunningProxy, gate: GateDatabase, fake_idp: FakeIdP, victim: str, case: tuple[str, str, str]
) -> None:
    """A tuner may change settings (privilege) but may not write. pgproxy reads statement text with
    standard_conforming_strings on and the session's encoding; a SET that changes either must not let a
    statement pipelined right behind it be judged with the old reading and run with the new one.
    (Through the extended protocol a second statement is refused by the server itself: a Parse holds one.)"""
    change, form, protocol = case
    setting, smuggled = READING_CHANGES[change], SMUGGLED[change, form].format(table=victim)
    async with session(enforcing, fake_idp, "tuners") as client:
        # Judged alone, the text is a harmless read of constants, and runs as one.
        assert [shape(m)[0] for m in await client.query(smuggled)] == [
            "RowDescription",
            "DataRow",
            "CommandComplete",
            "Ready",
        ]
        if protocol == "simple":
            await client.send(fe.Query(setting), fe.Query(smuggled))
        else:
            await client.send(
                fe.Parse("", setting),
                fe.Bind("", ""),
                fe.Execute(""),
                fe.Parse("", smuggled),
                fe.Bind("", ""),
                fe.Execute(""),
                fe.Sync(),
            )
        received = await read_until_closed_or_ready(client, 2 if protocol == "simple" else 1)
    state = (
        gate.owner_rows(f"SELECT id FROM {victim} ORDER BY id"),
        gate.owner_rows(f"SELECT last_value FROM {victim}_seq"),
    )
    assert state == ([(1,), (2,), (3,)], [(3,)]), (
        f"the text sent right behind {setting!r} wrote (rows, sequence = {state}); "
        f"the client saw {[shape(m) for m in received]}"
    )


# -- fast-path function calls -------------------------------------------------------------------------------


def function_oid(gate: GateDatabase, signature: str) -> int:
    rows = gate.owner_rows(f"SELECT '{signature}'::regprocedure::oid::int")
    oid: int = rows[0][0]
    return oid


async def test_function_call_by_oid_is_judged(enforcing: RunningProxy, gate: GateDatabase, fake_idp: FakeIdP) -> None:
    lo_creat = fe.FunctionCall(function_oid(gate, "lo_creat(integer)"), (1,), (struct.pack("!i", -1),), 1)
    before = gate.snapshot()
    for group in ("readers", "viewers"):
        async with session(enforcing, fake_idp, group) as client:
            await client.send(lo_creat)
            assert await answers(client) == [("Error", "42501"), ("Ready", "I")]
            check(next(errors_in(client)), Denial(DEFAULT, "write"))  # a large-object call writes
            assert await client.query_values("SELECT 'usable'") == [("usable",)]
    assert gate.snapshot() == before
    async with session(enforcing, fake_idp, "dba") as client:
        await client.send(lo_creat)
        reply = await client.read_until_ready()
        assert [type(m) for m in reply] == [be.FunctionCallResponse, be.ReadyForQuery], reply
        response = reply[0]
        assert isinstance(response, be.FunctionCallResponse) and response.value is not None
        created = struct.unpack("!I", response.value)[0]
    assert gate.owner_rows(f"SELECT count(*) FROM pg_largeobject_metadata WHERE oid = {created}") == [(1,)]
    gate.owner_execute(f"SELECT lo_unlink({created})")
    assert gate.snapshot() == before


SERVER_FILE_CALLS = [
    ("lo_import(text)", b"/etc/passwd"),
    ("pg_read_file(text)", b"/etc/passwd"),
    ("pg_read_binary_file(text)", b"/etc/passwd"),
    ("pg_stat_file(text)", b"/etc/passwd"),
]


async def test_server_file_functions_by_oid_are_refused_for_everyone(
    enforcing: RunningProxy, gate: GateDatabase, baseline: Snapshot, fake_idp: FakeIdP
) -> None:
    """The functions pgproxy refuses in SQL whatever the policy says (``SELECT lo_import(…)``) must be
    refused just the same when a DBA calls them by OID through the fast-path protocol."""
    in_sql: dict[str, str] = {}
    by_oid: dict[str, str] = {}
    async with session(enforcing, fake_idp, "dba") as client:
        for signature, argument in SERVER_FILE_CALLS:
            name = signature.split("(")[0]
            await client.send(fe.Query(f"SELECT {name}('{argument.decode()}')"))
            assert await answers(client) == [("Error", "42501"), ("Ready", "I")]
            refusal = list(errors_in(client))[-1]
            check(refusal, Denial(REFUSED, "procedural"))
            in_sql[name] = refusal.message
            await client.send(fe.FunctionCall(function_oid(gate, signature), (0,), (argument,), 0))
            reply = await answers(client)
            assert reply[-1] == ("Ready", "I")
            by_oid[name] = list(errors_in(client))[-1].message if reply[0][0] == "Error" else f"ran: {reply}"
        assert await client.query_values("SELECT 'usable'") == [("usable",)]
    assert gate.snapshot() == baseline
    not_refused = {name: outcome for name, outcome in by_oid.items() if REFUSED not in outcome}
    assert not not_refused, f"fast-path calls not refused by pgproxy (what happened instead): {not_refused}"


# -- SQL-level PREPARE and DEALLOCATE --------------------------------------------------------------------------

BIND_X = (fe.Bind("", "gate_x", (0,), (b"2",)), fe.Execute(""), fe.Sync())
X_ROWS: list[Shape] = [("BindComplete",), ("DataRow", "beta"), ("CommandComplete", "SELECT 1"), ("Ready", "I")]


async def test_sql_prepare_then_protocol_bind(
    enforcing: RunningProxy, gate: GateDatabase, baseline: Snapshot, fake_idp: FakeIdP
) -> None:
    async with session(enforcing, fake_idp, "readers") as client:
        await client.send(fe.Query(f"PREPARE gate_x(int) AS SELECT name FROM {ITEMS} WHERE id = $1"))
        assert await answers(client) == [("CommandComplete", "PREPARE"), ("Ready", "I")]
        await client.send(*BIND_X)
        assert await answers(client) == X_ROWS
        # A refused message changes nothing: gate_x is still the read.
        await client.send(fe.Query(f"DEALLOCATE gate_x; PREPARE gate_x(int) AS DELETE FROM {ITEMS} WHERE id = $1"))
        assert await answers(client) == [("Error", "42501"), ("Ready", "I")]
        check(list(errors_in(client))[-1], Denial(DEFAULT, "write"))
        await client.send(*BIND_X)
        assert await answers(client) == X_ROWS
        # A statement after an error never runs: the DEALLOCATE behind the failing SELECT did not happen.
        await client.send(fe.Query("SELECT 1/0; DEALLOCATE gate_x"))
        assert await answers(client) == [("Error", "22012"), ("Ready", "I")]
        await client.send(*BIND_X)
        assert await answers(client) == X_ROWS
        # EXECUTE through a Query runs it too.
        assert await client.query_values("EXECUTE gate_x(3)") == [("gamma",)]
    assert gate.snapshot() == baseline


REMOVALS = ["DEALLOCATE ALL", "DEALLOCATE gate_x", "deallocate prepare GATE_X", "SELECT 1; DEALLOCATE ALL"]


@pytest.mark.parametrize(
    ("removal", "pipelined"),
    [(removal, pipelined) for removal in REMOVALS for pipelined in (False, True)],
    ids=[f"{removal}-{'same-write' if pipelined else 'after'}" for removal in REMOVALS for pipelined in (False, True)],
)
async def test_bind_after_deallocate_never_runs(
    enforcing: RunningProxy, gate: GateDatabase, fake_idp: FakeIdP, removal: str, pipelined: bool
) -> None:
    async with session(enforcing, fake_idp, "readers") as client:
        await client.send(fe.Query(f"PREPARE gate_x(int) AS SELECT name FROM {ITEMS} WHERE id = $1"))
        await answers(client)
        if pipelined:
            await client.send(fe.Query(removal), *BIND_X)
            reply = await answers(client, 2)
        else:
            await client.send(fe.Query(removal))
            reply = await answers(client)
            await client.send(*BIND_X)
            reply += await answers(client)
        completions: list[Shape] = [("CommandComplete", "SELECT 1")] if removal.startswith("SELECT") else []
        if removal.startswith("SELECT"):
            completions.insert(0, ("RowDescription",))
            completions.insert(1, ("DataRow", "1"))
        assert reply[:-2] == [
            *completions,
            ("CommandComplete", "DEALLOCATE" + (" ALL" if removal.endswith("ALL") else "")),
            ("Ready", "I"),
        ]
        assert reply[-2][0] == "Error" and reply[-1] == ("Ready", "I")
        error = list(errors_in(client))[-1]
        if error.sqlstate == "42501":
            check(error, Denial(DEFAULT, "unknown"))
        else:
            assert (error.sqlstate, error.message) == ("26000", 'prepared statement "gate_x" does not exist')
        assert not any(isinstance(m, be.DataRow) and m.values == (b"beta",) for m in client.received)
    gate.assert_untouched()


# -- sessions -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("groups", [[], ["strangers"]], ids=["no-group", "other-group"])
async def test_identity_without_a_rule_gets_fatal_28000(
    enforcing: RunningProxy, fake_idp: FakeIdP, groups: list[str]
) -> None:
    client = await RawClient.connect(enforcing.port)
    try:
        await client.send_startup("someone", "pgproxy_test")
        error = await client.answer_password_expecting_error(
            fake_idp.mint("outsider", email="outsider@example.com", groups=groups)
        )
    finally:
        await client.close()
    assert (error.severity, error.sqlstate) == ("FATAL", "28000")
    assert error.message == 'pgproxy: no policy rule grants outsider@example.com access to database "pgproxy_test"'
    assert error.hint
