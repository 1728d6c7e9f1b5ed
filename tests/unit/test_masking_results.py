"""Result masking (``pgproxy.gate.results.ResultMasker``) driven message by message: the client's requests
as the gate reports them, then the server's answers as whole encoded messages (payload from offset 5).
Plans come from the real planner on a catalog snapshot built here; ``bind_result_formats`` on real Binds."""

from __future__ import annotations

import struct
from types import MappingProxyType

import pytest

from pgproxy.gate.masking import bind_result_formats
from pgproxy.gate.results import PreparedResult, ResultMasker
from pgproxy.masking.plan import NO_PLAN, Planner, ResultPlan
from pgproxy.masking.resolve import build_masked_catalog
from pgproxy.masking.snapshot import CatalogSnapshot, Column, Relation, TypeInfo
from pgproxy.policy.model import Mask
from pgproxy.sql.classify import Classifier
from pgproxy.wire.backend import (
    BindComplete,
    CommandComplete,
    CopyData,
    CopyDone,
    CopyOutResponse,
    DataRow,
    ErrorResponse,
    FieldDescription,
    FunctionCallResponse,
    ParameterDescription,
    ParseComplete,
    PortalSuspended,
    ReadyForQuery,
    RowDescription,
)
from pgproxy.wire.backend_notice import decode_error_response
from pgproxy.wire.backend_results import decode_data_row
from pgproxy.wire.frontend import Bind

INT4, TEXT = 23, 25
CUSTOMERS, ORDERS, UNKNOWN_TABLE = 16400, 16401, 99999
ADA = b"ada@example.com"
MASKED_ADA = b"***@example.com"
WITHHELD = "pgproxy withheld the server's error message because the statement reads masked columns"

SNAPSHOT = CatalogSnapshot(
    "shop",
    (
        Relation(CUSTOMERS, "app", "customers", "r", (
            Column("id", 1, INT4), Column("name", 2, TEXT), Column("email", 3, TEXT), Column("score", 4, INT4),
        )),
        Relation(ORDERS, "app", "orders", "r", (Column("id", 1, INT4), Column("total", 2, INT4))),
    ),
    MappingProxyType({INT4: TypeInfo(INT4, "int4", "N", INT4), TEXT: TypeInfo(TEXT, "text", "S", TEXT)}),
)
MASKS = (Mask.model_validate({
    "id": "pii", "databases": ["*"],
    "columns": {"app.customers.email": "email", "app.customers.name": "partial", "app.customers.score": "hash"},
}),)
CATALOG = build_masked_catalog(SNAPSHOT, MASKS)
PLANNER = Planner(CATALOG, ("pg_catalog", "app"))
CLASSIFIER = Classifier()

# (table OID, attnum, type) of columns as RowDescription reports them
ID = (CUSTOMERS, 1, INT4)
NAME = (CUSTOMERS, 2, TEXT)
EMAIL = (CUSTOMERS, 3, TEXT)
SCORE = (CUSTOMERS, 4, INT4)
ORDER_ID = (ORDERS, 1, INT4)
COMPUTED_TEXT = (0, 0, TEXT)
COMPUTED_INT = (0, 0, INT4)


def plan(sql: str) -> ResultPlan:
    (statement,) = CLASSIFIER.classify(sql).statements
    result = PLANNER.plan(statement, sql)
    assert isinstance(result, ResultPlan), result
    return result


def fields(*columns: tuple[int, int, int]) -> tuple[tuple[int, int, int, int], ...]:
    return tuple((*column, -1) for column in columns)


def masker() -> ResultMasker:
    result = ResultMasker(b"test-key", "utf-8")
    result.catalog = CATALOG
    return result


def feed(session: ResultMasker, message: bytes) -> bytes | None:
    return session.server_message(message[0], message, 5, len(message))


def description(*columns: tuple[int, int, int], binary: bool = False) -> bytes:
    return RowDescription(tuple(
        FieldDescription(f"c{i}", oid, attnum, type_oid, -1, -1, int(binary))
        for i, (oid, attnum, type_oid) in enumerate(columns)
    )).encode()


def row(session: ResultMasker, *values: bytes | None) -> tuple[bytes | None, ...] | None:
    """The values the client receives for a DataRow; None when the row is relayed as it came."""
    out = feed(session, DataRow(values).encode())
    return None if out is None else decode_data_row(out[5:]).values


def done(session: ResultMasker, tag: str = "SELECT 1") -> None:
    assert feed(session, CommandComplete(tag).encode()) is None


def ready(session: ResultMasker, status: str = "I") -> None:
    assert feed(session, ReadyForQuery(status).encode()) is None


def error(sqlstate: str, message: str) -> bytes:
    return ErrorResponse.build("ERROR", sqlstate, message).encode()


# -- simple query ------------------------------------------------------------------------------------------


def test_only_the_masked_statement_of_a_query_is_rewritten() -> None:
    session = masker()
    session.query([plan("SELECT id FROM orders"), plan("SELECT id, email FROM customers")])
    assert plan("SELECT id FROM orders") is NO_PLAN
    feed(session, description(ORDER_ID))
    assert row(session, b"10") is None  # raw bytes: nothing to mask
    done(session)
    feed(session, description(ID, EMAIL))
    assert row(session, b"1", ADA) == (b"1", MASKED_ADA)
    assert row(session, b"2", None) == (b"2", None)
    done(session)
    ready(session)
    assert row(session, b"1", ADA) is None  # nothing is being answered any more


def test_catalog_rule_applies_without_a_plan() -> None:
    session = masker()
    session.query([NO_PLAN])
    feed(session, description(ORDER_ID, EMAIL, NAME))
    assert row(session, b"10", ADA, b"Adelaide") == (b"10", MASKED_ADA, b"****aide")


def test_computed_column_is_masked_from_the_plan() -> None:
    session = masker()
    session.query([plan("SELECT id, lower(email), upper(name) FROM customers")])
    feed(session, description(ID, COMPUTED_TEXT, COMPUTED_TEXT))
    assert row(session, b"1", ADA, b"ADELAIDE") == (b"1", b"***", b"***")


def test_plan_and_description_disagreeing_masks_every_column() -> None:
    session = masker()
    session.query([plan("SELECT lower(email) FROM customers")])
    feed(session, description(COMPUTED_INT, COMPUTED_TEXT))
    assert row(session, b"1", b"ada") == (None, None)


def test_unknown_table_oid_is_nulled_in_results_reading_masked_relations() -> None:
    session = masker()
    session.query([plan("SELECT o.id, c.email FROM orders o, customers c")])
    feed(session, description(ORDER_ID, (UNKNOWN_TABLE, 2, TEXT)))
    assert row(session, b"10", b"secret") == (b"10", None)


def test_results_of_statements_reading_no_masked_relation_are_not_decoded() -> None:
    """NO_PLAN: the planner resolved every relation; only a column naming a masked table is still checked."""
    session = masker()
    session.query([NO_PLAN])
    feed(session, description(ORDER_ID, (UNKNOWN_TABLE, 2, TEXT)))
    assert session.maskers is None
    assert row(session, b"10", b"plain") is None  # relayed as it came


def test_hash_is_keyed_and_stable() -> None:
    session = masker()
    session.query([plan("SELECT score, score FROM customers")])
    feed(session, description(SCORE, SCORE))
    first = row(session, b"71", b"71")
    assert first is not None
    assert first[0] == first[1] != b"71"
    assert int(first[0] or b"x") >= -(2**31)
    other = ResultMasker(b"other-key", "utf-8")
    other.catalog = CATALOG
    other.query([NO_PLAN])
    feed(other, description(SCORE))
    assert row(other, b"71") != first[:1]


def test_no_catalog_rewrites_nothing() -> None:
    session = ResultMasker(b"k", "utf-8")
    session.query([plan("SELECT id, lower(email) FROM customers")])
    feed(session, description(EMAIL, COMPUTED_TEXT))
    assert row(session, ADA, b"ada") is None
    assert feed(session, error("22P02", f'invalid input syntax: "{ADA.decode()}"')) is None


def test_error_of_a_masked_statement_is_withheld_with_its_sqlstate() -> None:
    session = masker()
    session.query([plan("SELECT email::int FROM customers")])
    out = feed(session, error("22P02", 'invalid input syntax for type integer: "ada@example.com"'))
    assert out is not None
    answer = decode_error_response(out[5:])
    assert answer.get("C") == "22P02"
    assert answer.message == WITHHELD
    assert b"ada" not in out
    ready(session)


def test_error_of_an_unmasked_statement_is_untouched() -> None:
    session = masker()
    session.query([plan("SELECT id FROM orders"), plan("SELECT email FROM customers")])
    assert feed(session, error("42703", 'column "nope" does not exist')) is None
    ready(session)
    session.query([plan("SELECT email FROM customers")])
    feed(session, description(EMAIL))
    assert row(session, ADA) == (MASKED_ADA,)  # the failed query's requests are all answered


def test_copy_out_text_rows_are_masked_and_copy_done_passes() -> None:
    session = masker()
    session.query([plan("COPY customers (email, id) TO STDOUT")])
    assert feed(session, CopyOutResponse(0, (0, 0)).encode()) is None
    chunks = [feed(session, CopyData(part).encode()) for part in (b"ada@example.com\t1\nb", b"ob@x.org\t2\n")]
    tail = feed(session, CopyDone().encode())
    assert tail is not None
    assert tail.endswith(CopyDone().encode())
    payload = b"".join(CopyData.decode(memoryview(c)[5:]).data for c in chunks if c)
    assert payload == b"***@example.com\t1\n***@x.org\t2\n"
    done(session, "COPY 2")
    ready(session)
    assert feed(session, CopyData(b"ada@example.com\n").encode()) is None  # COPY is over


def test_copy_of_unmasked_columns_is_relayed() -> None:
    session = masker()
    session.query([plan("COPY customers (id) TO STDOUT")])
    feed(session, CopyOutResponse(0, (0,)).encode())
    assert feed(session, CopyData(b"1\n").encode()) is None
    assert feed(session, CopyDone().encode()) is None


# -- extended protocol -------------------------------------------------------------------------------------


def test_described_statement_then_binary_bind_without_describe() -> None:
    session = masker()
    prepared = PreparedResult(plan("SELECT id, score, email FROM customers"))
    session.parse()
    session.describe_statement(prepared)
    session.sync(copy_in=False)
    assert feed(session, ParseComplete().encode()) is None
    assert feed(session, ParameterDescription(()).encode()) is None
    feed(session, description(ID, SCORE, EMAIL))
    ready(session)
    assert prepared.fields == fields(ID, SCORE, EMAIL)

    session.bind("", prepared, (0, 1, 1))
    session.execute("")
    session.sync(copy_in=False)
    feed(session, BindComplete().encode())
    binary = row(session, b"1", struct.pack("!i", 71), ADA)
    assert binary is not None
    assert binary[0] == b"1" and binary[2] == MASKED_ADA
    assert binary[1] is not None and len(binary[1]) == 4
    done(session)
    ready(session)

    session.bind("", prepared, ())  # the same value in text: the same hash
    session.execute("")
    feed(session, BindComplete().encode())
    text = row(session, b"1", b"71", ADA)
    assert text is not None
    assert int(text[1] or b"x") == struct.unpack("!i", binary[1])[0]


def test_suspended_portal_stays_masked_on_the_next_execute() -> None:
    session = masker()
    prepared = PreparedResult(plan("SELECT id, lower(email) FROM customers"))
    session.bind("p", prepared, ())
    session.describe_portal("p")
    session.execute("p")
    feed(session, BindComplete().encode())
    feed(session, description(ID, COMPUTED_TEXT))
    assert row(session, b"1", b"ada") == (b"1", b"***")
    assert feed(session, PortalSuspended().encode()) is None
    session.execute("p")
    assert row(session, b"2", b"bob") == (b"2", b"***")
    done(session)
    session.sync(copy_in=False)
    ready(session, "T")
    assert prepared.fields is not None  # a portal's Describe tells its statement's columns too


def test_failed_bind_keeps_the_confirmed_portals_masking() -> None:
    session = masker()
    masked = PreparedResult(plan("SELECT id, lower(email) FROM customers"))
    masked.fields = fields(ID, COMPUTED_TEXT)
    session.bind("p", masked, ())
    session.execute("p")
    session.sync(copy_in=False)
    feed(session, BindComplete().encode())
    assert row(session, b"1", b"ada") == (b"1", b"***")
    feed(session, PortalSuspended().encode())
    ready(session, "T")

    unmasked = PreparedResult(NO_PLAN)
    unmasked.fields = fields(ORDER_ID, COMPUTED_TEXT)
    session.bind("p", unmasked, ())  # the same name: the server refuses it
    session.execute("p")
    assert feed(session, error("42P03", 'cursor "p" already exists')) is None  # a Bind error is not withheld
    session.execute("p")  # sent after the error, before Sync: the server skips it
    session.sync(copy_in=False)
    ready(session, "E")

    session.execute("p")
    assert row(session, b"2", b"bob") == (b"2", b"***")


def test_portals_end_with_the_transaction_but_hold_cursors_stay() -> None:
    session = masker()
    session.query([plan("DECLARE h CURSOR WITH HOLD FOR SELECT id, lower(email) FROM customers")])
    done(session, "DECLARE CURSOR")
    ready(session, "I")
    prepared = PreparedResult(plan("SELECT id, email FROM customers"))
    prepared.fields = fields(ID, EMAIL)
    session.bind("p", prepared, ())
    session.execute("p")
    feed(session, BindComplete().encode())
    assert row(session, b"1", ADA) == (b"1", MASKED_ADA)
    feed(session, PortalSuspended().encode())
    session.sync(copy_in=False)
    ready(session, "I")

    session.execute("p")  # p ended with its transaction: pgproxy no longer knows what it returns
    assert row(session, b"1", ADA) == (None, None)
    feed(session, error("34000", 'portal "p" does not exist'))
    session.sync(copy_in=False)
    ready(session)

    session.query([plan("FETCH 1 FROM h")])
    feed(session, description(ID, COMPUTED_TEXT))
    assert row(session, b"1", b"ada") == (b"1", b"***")  # the cursor's own plan


def test_cursor_without_hold_ends_at_commit() -> None:
    session = masker()
    session.query([NO_PLAN, plan("DECLARE c CURSOR FOR SELECT id, lower(email) FROM customers")])
    done(session, "BEGIN")
    done(session, "DECLARE CURSOR")
    ready(session, "T")
    session.query([plan("FETCH 1 FROM c")])
    feed(session, description(ID, COMPUTED_TEXT))
    assert row(session, b"1", b"ada") == (b"1", b"***")
    done(session, "FETCH 1")
    ready(session, "T")
    session.query([NO_PLAN])
    done(session, "COMMIT")
    ready(session, "I")
    session.query([plan("FETCH 1 FROM c")])
    feed(session, description(ID, COMPUTED_TEXT, COMPUTED_INT))
    assert row(session, b"1", b"ada", b"5") == (b"1", None, None)  # origin unknown: computed columns nulled


def test_closed_cursor_is_forgotten() -> None:
    session = masker()
    session.query([plan("DECLARE h CURSOR WITH HOLD FOR SELECT lower(email) FROM customers"), plan("CLOSE h")])
    done(session, "DECLARE CURSOR")
    done(session, "CLOSE CURSOR")
    ready(session)
    session.query([plan("FETCH 1 FROM h")])
    feed(session, description(COMPUTED_INT))
    assert row(session, b"5") == (None,)


def test_execute_of_an_undescribed_statement_masks_by_plan_only() -> None:
    session = masker()
    session.bind("", PreparedResult(plan("SELECT id, lower(email) FROM customers")), ())
    session.execute("")
    feed(session, BindComplete().encode())
    assert row(session, b"1", b"ada") == (b"1", None)  # types unknown: NULL is the one valid value


def test_function_call_is_answered_in_order() -> None:
    session = masker()
    session.function_call()
    session.query([plan("SELECT email FROM customers")])
    assert feed(session, FunctionCallResponse(b"42").encode()) is None
    ready(session)
    feed(session, description(EMAIL))
    assert row(session, ADA) == (MASKED_ADA,)


# -- Bind result formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bind", [
    Bind("", "", (), (), ()),
    Bind("p", "s", (1,), (b"\x00\x00\x00\x01", None), (1,)),
    Bind("portal", "stmt", (0, 1, 0), (b"abc", None, b""), (0, 1, 1)),
    Bind("", "s", (), (None, None, None), (1, 0)),
])
def test_bind_result_formats(bind: Bind) -> None:
    data = bind.encode()
    assert bind_result_formats(data, 5, len(data)) == bind.result_format_codes


def test_bind_result_formats_reads_only_its_body() -> None:
    data = b"xx" + Bind("p", "s", (), (b"v\x00v", None), (1,)).encode() + b"tail"
    assert bind_result_formats(data, 7, len(data) - 4) == (1,)


def test_bind_over_a_stale_cursor_name_uses_the_new_portal() -> None:
    session = masker()
    session.query([NO_PLAN, plan("DECLARE h CURSOR WITH HOLD FOR SELECT id FROM orders")])
    done(session, "BEGIN")
    done(session, "DECLARE CURSOR")
    ready(session, "T")
    session.query([NO_PLAN])
    done(session, "ROLLBACK")  # the server drops h: its transaction did not commit
    ready(session, "I")
    prepared = PreparedResult(plan("SELECT id, email FROM customers"))
    prepared.fields = fields(ID, EMAIL)
    session.bind("h", prepared, ())  # so a protocol portal may take its name
    session.execute("h")
    session.sync(copy_in=False)
    feed(session, BindComplete().encode())
    assert row(session, b"1", ADA) == (b"1", MASKED_ADA)


def test_text_is_masked_in_the_client_encoding_in_force() -> None:
    """Partial masking counts characters: after ``SET client_encoding`` the masker decodes with the new one."""
    session = ResultMasker(b"test-key", "latin-1")
    session.catalog = CATALOG
    value = "éé1234".encode()  # 8 bytes in UTF-8, 6 characters
    session.query([plan("SELECT name FROM customers")])
    feed(session, description(NAME))
    assert row(session, value) == (b"****1234",)  # read as LATIN1: 8 characters
    done(session)
    ready(session)
    session.client_codec("utf-8")
    session.query([plan("SELECT name FROM customers")])
    feed(session, description(NAME))
    assert row(session, value) == (b"**1234",)
