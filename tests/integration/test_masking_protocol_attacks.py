"""Attacks on the result masker's bookkeeping at the protocol level: pgproxy must match every result set
with the statement or portal it belongs to, whatever the client pipelines, so that rows of a masked
result set are never relayed as if they came from an unmasked statement.

Every scenario runs on the raw protocol; every message the client receives is searched for the original
values of the masked columns, and the session must still answer ``SELECT 1`` afterwards (no desync).
The first scenarios (a refused FunctionCall, Syncs pipelined into COPY FROM STDIN, a described portal of a
protocol-level ``EXECUTE``) once made the masker lose track.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable

import pytest

from pgproxy.wire import backend as be
from pgproxy.wire import frontend as fe
from tests.support.masking import ROWS, MaskedSchema
from tests.support.raw_client import RawClient, ServerClosed

pytestmark = pytest.mark.integration

Scenario = Callable[[RawClient, MaskedSchema], Awaitable[None]]
MASKED_SQL = "SELECT id, email, upper(email), phone, token, score, card, note, ssn FROM S.customers ORDER BY id"
PLAIN_SQL = "SELECT 1::int, 'a'::text, 'b'::text, 'c'::varchar(20), NULL::uuid, 2::int, 'd'::char(16), 'e', 'f'"
COPY_DONE = b"c\x00\x00\x00\x04"


def _needles() -> list[bytes]:
    found: set[bytes] = set()
    for row in ROWS:
        for value in row[2:9]:
            if value is None:
                continue
            text = str(value)
            if len(text) > 4:
                copy_text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
                found |= {text.encode(), text.upper().encode(), copy_text.encode()}
        if row[4] is not None:
            found.add(row[4].bytes)  # uuid in binary format
    return sorted(found)


NEEDLES = _needles()


def leaks(messages: list[be.BackendMessage]) -> list[bytes]:
    blob = b"".join(message.encode() for message in messages)
    return [needle for needle in NEEDLES if needle in blob]


async def _drive(masked: MaskedSchema, scenario: Scenario) -> tuple[list[be.BackendMessage], bool]:
    """Run ``scenario`` in a fresh agent session; every message received, and whether SELECT 1 still works."""
    async with await RawClient.connect(masked.proxy.port) as client:
        await client.login(masked.agent())
        try:
            await scenario(client, masked)
            answer = await client.query("SELECT 1")
        except ServerClosed:
            return client.received, False
        rows = [list(m.values) for m in answer if isinstance(m, be.DataRow)]
        healthy = rows == [[b"1"]] and isinstance(answer[-1], be.ReadyForQuery)
        return client.received, healthy


async def _ready(client: RawClient, count: int = 1) -> None:
    for _ in range(count):
        await client.read_until_ready()


def _ext(masked: MaskedSchema, sql: str, *, portal: str = "", statement: str = "",
         formats: tuple[int, ...] = (), max_rows: int = 0) -> list[fe.FrontendMessage]:
    return [fe.Parse(statement, masked.q(sql)), fe.Bind(portal, statement, result_format_codes=formats),
            fe.Describe("P", portal), fe.Execute(portal, max_rows)]


# -- the scenarios ------------------------------------------------------------------------------------------


async def function_call_then_query(client: RawClient, masked: MaskedSchema) -> None:
    await client.send(fe.FunctionCall(870, (0,), (b"X",)))  # lower(text) by OID: refused (stand-in Query)
    await _ready(client)
    await client.send(fe.Query(masked.q(MASKED_SQL)))
    await _ready(client)


async def function_call_in_extended_batch(client: RawClient, masked: MaskedSchema) -> None:
    await client.send(*_ext(masked, PLAIN_SQL), fe.FunctionCall(870, (0,), (b"X",)),
                      *_ext(masked, MASKED_SQL), fe.Sync())
    await _ready(client, 2)


async def sync_pipelined_into_copy_in(client: RawClient, masked: MaskedSchema) -> None:
    # The Sync goes upstream before the server's CopyInResponse: the server ignores it during COPY IN.
    await client.send(fe.Query(masked.q("COPY S.orders FROM STDIN")), fe.Sync(), COPY_DONE)
    await _ready(client)
    await client.send(fe.Query(masked.q(MASKED_SQL)))
    await _ready(client)


async def extended_copy_in_then_query(client: RawClient, masked: MaskedSchema) -> None:
    # What libpq's PQexecParams does: Sync right after Execute, before the server's CopyInResponse.
    await client.send(*_ext(masked, "COPY S.orders FROM STDIN"), fe.Sync())
    await client.expect(be.ParseComplete)
    await client.send(COPY_DONE, fe.Sync())
    await _ready(client)
    await client.send(fe.Query(masked.q(MASKED_SQL)))
    await _ready(client)


async def query_during_copy_in(client: RawClient, masked: MaskedSchema) -> None:
    # Would leave pgproxy waiting for the answer to a Query the server swallowed; the server ends the session.
    await client.send(fe.Query(masked.q("COPY S.orders FROM STDIN")))
    await client.expect(be.CopyInResponse)
    await client.send(fe.Query("SELECT 'a'::text, 'b'::text"))
    await _ready(client)
    await client.send(fe.Query(masked.q("SELECT upper(email), lower(ssn) FROM S.customers")))
    await _ready(client)


async def copy_fail(client: RawClient, masked: MaskedSchema) -> None:
    await client.send(fe.Query(masked.q("COPY S.orders FROM STDIN")), fe.CopyFail("no"), fe.Query(masked.q(MASKED_SQL)))
    await _ready(client, 2)


async def pipeline_with_flush(client: RawClient, masked: MaskedSchema) -> None:
    messages: list[fe.FrontendMessage] = []
    for index in range(6):
        messages += _ext(masked, MASKED_SQL if index % 2 else PLAIN_SQL, portal=f"p{index}", statement=f"s{index}")
        messages.append(fe.Flush())
    await client.send(fe.Query("BEGIN"), *messages, fe.Sync(), fe.Query("COMMIT"))
    await _ready(client, 3)


async def execute_before_bind_confirmed(client: RawClient, masked: MaskedSchema) -> None:
    await client.send(fe.Parse("a", masked.q(MASKED_SQL)), fe.Parse("b", masked.q(PLAIN_SQL)), fe.Sync())
    await _ready(client)
    await client.send(fe.Bind("", "b"), fe.Execute("", 1), fe.Bind("", "a"), fe.Execute("", 0),
                      fe.Bind("", "b"), fe.Execute("", 0), fe.Bind("", "a", result_format_codes=(1,)),
                      fe.Execute("", 0), fe.Sync())
    await _ready(client)


async def error_mid_pipeline_then_more(client: RawClient, masked: MaskedSchema) -> None:
    await client.send(*_ext(masked, MASKED_SQL), fe.Parse("", "SELEC oops"), *_ext(masked, MASKED_SQL),
                      fe.Query(masked.q(MASKED_SQL)), fe.Flush(), *_ext(masked, PLAIN_SQL), fe.Sync())
    await _ready(client)
    await client.send(fe.Bind("", "nope"), fe.Query(masked.q(MASKED_SQL)), fe.Sync(), fe.Query(masked.q(MASKED_SQL)))
    await _ready(client, 2)


async def reparse_unnamed_under_open_portal(client: RawClient, masked: MaskedSchema) -> None:
    await client.send(fe.Parse("", masked.q(MASKED_SQL)), fe.Bind("", ""), fe.Parse("", masked.q(PLAIN_SQL)),
                      fe.Describe("S", ""), fe.Execute("", 2), fe.Describe("P", ""), fe.Execute("", 0), fe.Sync())
    await _ready(client)


async def describe_mismatches(client: RawClient, masked: MaskedSchema) -> None:
    await client.send(fe.Parse("m", masked.q(MASKED_SQL)), fe.Parse("u", masked.q(PLAIN_SQL)),
                      fe.Describe("S", "u"), fe.Describe("S", "m"), fe.Bind("", "m"), fe.Describe("S", "u"),
                      fe.Describe("P", "nothing"), fe.Execute("", 0), fe.Sync())
    await _ready(client)
    await client.send(fe.Bind("x", "u"), fe.Describe("P", "x"), fe.Bind("", "m"), fe.Execute("", 0), fe.Sync())
    await _ready(client)


@pytest.mark.parametrize("codes", [(0,), (1,), (0, 1, 1, 0, 1, 1, 0, 1, 0), (1,) * 12, (2,), (1, 0)])
def test_result_format_codes(masked: MaskedSchema, codes: tuple[int, ...]) -> None:
    """(2,): the server accepts the Bind and describes format 2; pgproxy ends the session (nothing leaks)."""
    async def scenario(client: RawClient, masked: MaskedSchema) -> None:
        await client.send(*_ext(masked, MASKED_SQL, formats=codes), fe.Sync())
        await _ready(client)
        await client.send(fe.Parse("f", masked.q(MASKED_SQL)), fe.Bind("", "f", result_format_codes=codes),
                          fe.Execute("", 0), fe.Sync())
        await _ready(client)

    check(masked, scenario, healthy=codes != (2,))


async def suspended_close_rebind(client: RawClient, masked: MaskedSchema) -> None:
    await client.send(fe.Query("BEGIN"), fe.Parse("m", masked.q(MASKED_SQL)), fe.Parse("u", masked.q(PLAIN_SQL)),
                      fe.Bind("p", "u"), fe.Execute("p", 1), fe.Close("P", "p"), fe.Bind("p", "m"),
                      fe.Execute("p", 1), fe.Execute("p", 1), fe.Close("P", "p"), fe.Bind("p", "u"),
                      fe.Execute("p", 0), fe.Bind("q", "m", result_format_codes=(1,)), fe.Execute("q", 1),
                      fe.Sync(), fe.Execute("q", 0), fe.Sync(), fe.Query("COMMIT"))
    await _ready(client, 4)


async def portals_across_savepoints(client: RawClient, masked: MaskedSchema) -> None:
    await client.send(fe.Query("BEGIN; SAVEPOINT a"), fe.Parse("m", masked.q(MASKED_SQL)),
                      fe.Parse("u", masked.q(PLAIN_SQL)), fe.Bind("p", "m"), fe.Execute("p", 1), fe.Sync(),
                      fe.Query("ROLLBACK TO a"), fe.Bind("p", "u"), fe.Execute("p", 1), fe.Sync(),
                      fe.Query("SAVEPOINT b"), fe.Bind("r", "u"), fe.Execute("r", 1), fe.Sync(),
                      fe.Query("ROLLBACK TO b"), fe.Bind("r", "m"), fe.Execute("r", 0), fe.Execute("p", 0),
                      fe.Sync(), fe.Query("COMMIT"), fe.Bind("p", "m"), fe.Execute("p", 0), fe.Sync(),
                      fe.Query("BEGIN"), fe.Bind("h", "m"), fe.Execute("h", 1), fe.Sync(), fe.Query("ROLLBACK"),
                      fe.Execute("h", 0), fe.Sync())
    await _ready(client, 14)


async def query_inside_extended_batch(client: RawClient, masked: MaskedSchema) -> None:
    await client.send(fe.Parse("m", masked.q(MASKED_SQL)), fe.Bind("", "m"), fe.Query("SELECT 2"),
                      fe.Execute("", 0), fe.Sync(), fe.Bind("", "m"), fe.Query(masked.q(PLAIN_SQL)),
                      fe.Bind("", "m"), fe.Execute("", 0), fe.Sync())
    await _ready(client, 4)


@pytest.mark.parametrize("text", [
    "SELECT 1/0; SELECT email, ssn FROM S.customers",
    "SELECT email, ssn FROM S.customers;; SELECT 1",
    ";;SELECT 1;;SELECT email, ssn FROM S.customers;;",
    "SELECT 1; SELECT email, ssn FROM S.customers",
    "SELECT email, upper(email) FROM S.customers; SELECT 1; SELECT 'x'",
    "SELECT email::int FROM S.customers; SELECT email FROM S.customers",
    "COPY (SELECT email, ssn FROM S.customers) TO STDOUT; SELECT email, ssn, upper(email) FROM S.customers",
    "SELECT 1; COPY S.customers TO STDOUT (FORMAT csv); SELECT note FROM S.customers",
    "BEGIN; DECLARE c SCROLL CURSOR FOR SELECT email, upper(email), token FROM S.customers;"
    " FETCH ALL c; MOVE BACKWARD ALL c; FETCH BACKWARD 2 c; FETCH ABSOLUTE 1 c; FETCH PRIOR c; COMMIT",
    "BEGIN; DECLARE b BINARY CURSOR FOR SELECT token, email, score FROM S.customers; FETCH ALL b; COMMIT",
    "BEGIN; SAVEPOINT s; DECLARE c CURSOR FOR SELECT 'a'::text, 'b'::text; ROLLBACK TO s;"
    " DECLARE c CURSOR FOR SELECT upper(email), lower(note) FROM S.customers; FETCH ALL c; COMMIT",
    "BEGIN; DECLARE c CURSOR FOR SELECT 'a'::text; DISCARD ALL",
    "PREPARE pp AS SELECT email, upper(ssn) FROM S.customers; EXECUTE pp; DEALLOCATE pp; SELECT 1",
])
def test_multi_statement_queries(masked: MaskedSchema, text: str) -> None:
    async def scenario(client: RawClient, masked: MaskedSchema) -> None:
        await client.send(fe.Query(masked.q(text)), fe.Query("ROLLBACK"))
        await _ready(client, 2)

    check(masked, scenario)


async def copy_via_execute(client: RawClient, masked: MaskedSchema) -> None:
    await client.send(*_ext(masked, "COPY (SELECT email, upper(email), ssn FROM S.customers) TO STDOUT"),
                      *_ext(masked, "COPY S.customers TO STDOUT (FORMAT binary)"), fe.Sync())
    await _ready(client)


async def cancel_mid_result(client: RawClient, masked: MaskedSchema) -> None:
    key = next(m for m in client.received if isinstance(m, be.BackendKeyData))
    joins = "".join(f" CROSS JOIN S.orders o{n}" for n in range(7))
    big = "SELECT c.email, upper(c.email), c.ssn FROM S.customers c" + joins  # 8748 rows
    await client.send(fe.Query(masked.q(f"{big}; SELECT pg_sleep(1); {MASKED_SQL}")))
    descriptions = 0
    while descriptions < 2:  # the masked result is out, the second statement is running
        descriptions += isinstance(await client.read_message(), be.RowDescription)
    async with await RawClient.connect(masked.proxy.port) as other:
        body = struct.pack("!II", 80877102, key.process_id) + key.secret_key
        await other.send(struct.pack("!I", len(body) + 4) + body)
        await other.expect_closed()
    answer = await client.read_until_ready()
    assert isinstance(answer[-1], be.ReadyForQuery)  # cancelled (57014) or not: the masked rows stay masked
    await client.send(*_ext(masked, big), fe.Sync(), fe.Query(masked.q(big)))  # many rows, many TCP reads
    await _ready(client, 2)


async def long_statement_names(client: RawClient, masked: MaskedSchema) -> None:
    stem = "s" * 63
    await client.send(fe.Parse(stem + "masked", masked.q(MASKED_SQL)), fe.Sync())
    await _ready(client)
    await client.send(fe.Parse(stem + "plain", masked.q(PLAIN_SQL)), fe.Sync())  # duplicate on the server
    await _ready(client)
    await client.send(fe.Bind("", stem + "plain"), fe.Execute("", 0), fe.Sync())
    await _ready(client)
    await client.query(f"DEALLOCATE {'s' * 62}é")  # the server cuts identifiers by characters
    await client.send(fe.Bind("", stem + "x"), fe.Execute("", 0), fe.Sync())
    await _ready(client)


async def long_portal_names(client: RawClient, masked: MaskedSchema) -> None:
    stem = "p" * 63
    await client.send(fe.Query("BEGIN"), fe.Parse("m", masked.q(MASKED_SQL)), fe.Parse("u", masked.q(PLAIN_SQL)),
                      fe.Bind(stem + "m", "m"), fe.Bind(stem + "u", "u"), fe.Sync(),
                      fe.Execute(stem + "u", 0), fe.Sync(), fe.Execute(stem, 0), fe.Sync(), fe.Query("COMMIT"))
    await _ready(client, 5)


async def multibyte_names(client: RawClient, masked: MaskedSchema) -> None:
    name = "n" * 62 + "é"  # SQL cuts to 62 bytes; the protocol cuts to 63 (half a character)
    await client.send(fe.Parse(name, masked.q(PLAIN_SQL)), fe.Sync())
    await _ready(client)
    await client.query(masked.q(f"DEALLOCATE {name}; PREPARE {name} AS {MASKED_SQL}"))
    await client.send(fe.Bind("", name), fe.Execute("", 0), fe.Bind("", "n" * 62), fe.Execute("", 0), fe.Sync())
    await _ready(client)
    await client.query(masked.q(f"BEGIN; DECLARE {name} CURSOR FOR {MASKED_SQL}"))
    await client.send(fe.Execute("n" * 62, 0), fe.Sync(), fe.Execute(name, 0), fe.Sync(), fe.Query("ROLLBACK"))
    await _ready(client, 3)


async def name_reuse_after_deallocate(client: RawClient, masked: MaskedSchema) -> None:
    await client.send(fe.Parse("s", masked.q(PLAIN_SQL)), fe.Describe("S", "s"), fe.Sync())
    await _ready(client)
    await client.send(fe.Query(masked.q(f"DEALLOCATE s; PREPARE s AS {MASKED_SQL}")), fe.Bind("", "s"),
                      fe.Execute("", 0), fe.Sync())
    await _ready(client, 2)
    await client.send(fe.Query("DISCARD ALL"), fe.Parse("s", masked.q(MASKED_SQL)), fe.Sync(),
                      fe.Bind("", "s"), fe.Execute("", 0), fe.Sync())
    await _ready(client, 3)
    await client.send(fe.Close("S", "s"), fe.Parse("s", masked.q(PLAIN_SQL)), fe.Describe("S", "s"), fe.Sync(),
                      fe.Query("DEALLOCATE ALL"), fe.Query(masked.q(f"PREPARE s AS {MASKED_SQL}")),
                      fe.Bind("", "s"), fe.Execute("", 0), fe.Sync())
    await _ready(client, 4)


async def execute_in_pipeline(client: RawClient, masked: MaskedSchema) -> None:
    await client.send(fe.Query(masked.q(f"PREPARE e AS {MASKED_SQL}")), fe.Parse("", "EXECUTE e"), fe.Bind("", ""),
                      fe.Execute("", 0), fe.Sync())  # no description: every column NULL
    await _ready(client, 2)


async def execute_in_pipeline_described(client: RawClient, masked: MaskedSchema) -> None:
    await client.send(fe.Query(masked.q(f"PREPARE e AS {MASKED_SQL}")), *_ext(masked, "EXECUTE e"),
                      fe.Parse("x", "EXECUTE e"), fe.Describe("S", "x"), fe.Bind("", "x", result_format_codes=(1,)),
                      fe.Execute("", 0), fe.Sync())
    await _ready(client, 2)


async def sql_execute_of_protocol_statement(client: RawClient, masked: MaskedSchema) -> None:
    await client.send(fe.Parse("ps", masked.q(MASKED_SQL)), fe.Sync(), fe.Query("EXECUTE ps"),
                      fe.Query("BEGIN; DECLARE k CURSOR FOR EXECUTE ps"), fe.Query("ROLLBACK"),
                      fe.Query("EXPLAIN (VERBOSE, ANALYZE) EXECUTE ps"))
    await _ready(client, 5)


async def cursors_across_protocols(client: RawClient, masked: MaskedSchema) -> None:
    await client.send(fe.Query("BEGIN"),
                      *_ext(masked, "DECLARE c SCROLL CURSOR FOR " + MASKED_SQL), fe.Sync(),
                      fe.Query("FETCH 2 c"), fe.Query("MOVE BACKWARD ALL c"),
                      fe.Query(masked.q("DECLARE b BINARY CURSOR FOR " + MASKED_SQL)),
                      *_ext(masked, "FETCH ALL b", formats=(0,)), *_ext(masked, "FETCH BACKWARD 1 c"), fe.Sync(),
                      fe.Execute("c", 0), fe.Sync(), fe.Query("MOVE ABSOLUTE 0 b"), fe.Execute("b", 0), fe.Sync(),
                      fe.Query("COMMIT"))
    await _ready(client, 10)


SCENARIOS: list[object] = [
    function_call_then_query,
    function_call_in_extended_batch,
    sync_pipelined_into_copy_in,
    extended_copy_in_then_query,
    copy_fail,
    pipeline_with_flush,
    execute_before_bind_confirmed,
    error_mid_pipeline_then_more,
    reparse_unnamed_under_open_portal,
    describe_mismatches,
    suspended_close_rebind,
    portals_across_savepoints,
    query_inside_extended_batch,
    copy_via_execute,
    cancel_mid_result,
    long_statement_names,
    long_portal_names,
    multibyte_names,
    name_reuse_after_deallocate,
    execute_in_pipeline,
    execute_in_pipeline_described,
    cursors_across_protocols,
    sql_execute_of_protocol_statement,
]


def check(masked: MaskedSchema, scenario: Scenario, *, healthy: bool = True) -> None:
    received, usable = asyncio.run(_drive(masked, scenario))
    assert not leaks(received), [m for m in received if isinstance(m, be.DataRow | be.CopyData)][:8]
    assert usable or not healthy, [type(m).__name__ for m in received[-12:]]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: getattr(f, "__name__", "?"))
def test_bookkeeping_attack(masked: MaskedSchema, scenario: Scenario) -> None:
    check(masked, scenario)


def test_messages_inside_copy_in_end_the_session(masked: MaskedSchema) -> None:
    check(masked, query_during_copy_in, healthy=False)
