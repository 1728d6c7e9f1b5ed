"""Column masking through psycopg 3, text and binary cursors: every shape of query shows masked values.

Each query runs through pgproxy as an agent and the result is compared with the unmasked rows read
directly from PostgreSQL, masked by the test's own implementation of the strategies (plain columns)
or checked to carry no original value (computed columns).
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.support.masking import MaskedSchema, email, masked_row, partial

pytestmark = pytest.mark.integration

ORDER = " ORDER BY id"


def through(
    masked: MaskedSchema, query: str, *, binary: bool = False, token: str | None = None
) -> list[tuple[Any, ...]]:
    with psycopg.connect(masked.proxy.conninfo(token or masked.agent()), autocommit=True) as conn:
        conn.execute("SET application_name = 'masking-tests'")
        with conn.cursor(binary=binary) as cur:
            cur.execute(masked.q(query))
            return cur.fetchall()


def originals(masked: MaskedSchema) -> list[tuple[Any, ...]]:
    return masked.direct("SELECT * FROM customers ORDER BY id")


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_every_strategy_on_plain_columns(masked: MaskedSchema, binary: bool) -> None:
    expected = [masked_row(row) for row in originals(masked)]
    assert through(masked, "SELECT * FROM S.customers" + ORDER, binary=binary) == expected
    assert through(masked, "SELECT c.* FROM S.customers c" + ORDER, binary=binary) == expected
    assert through(masked, "TABLE S.customers" + ORDER, binary=binary) == expected


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize(
    "query",
    [
        "SELECT email FROM S.customers ORDER BY id",
        "SELECT email AS e FROM S.customers ORDER BY id",
        "SELECT x.email FROM (SELECT * FROM S.customers) x ORDER BY x.id",
        "WITH c AS (SELECT id, email FROM S.customers) SELECT email FROM c ORDER BY id",
        "SELECT c.email FROM S.customers c JOIN S.orders o ON o.customer_id = c.id"
        " GROUP BY c.id, c.email ORDER BY c.id",
        "SELECT email FROM S.contacts ORDER BY id",
    ],
    ids=["direct", "alias", "subquery", "cte", "join", "view"],
)
def test_plain_references_keep_the_strategy(masked: MaskedSchema, query: str, binary: bool) -> None:
    got = [row[0] for row in through(masked, query, binary=binary)]
    raw = [row[0] for row in masked.direct(query.replace("S.", ""))]
    assert got == [email(value) for value in raw]
    assert not set(got) & {value for value in raw if value is not None}


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize(
    "query",
    [
        "SELECT lower(email) FROM S.customers ORDER BY id",
        "SELECT email || '' FROM S.customers ORDER BY id",
        "SELECT email::varchar(200) FROM S.customers ORDER BY id",
        "SELECT CAST(email AS text) FROM S.customers ORDER BY id",
        "SELECT upper(reverse(email)) FROM S.customers ORDER BY id",
        "SELECT (SELECT max(email) FROM S.customers) FROM S.orders ORDER BY id",
        "SELECT max(email) OVER (PARTITION BY id) FROM S.customers ORDER BY id",
        "SELECT coalesce(email, 'none') FROM S.customers ORDER BY id",
        "SELECT lowered FROM S.contacts ORDER BY id",
        "SELECT string_agg(email, ',') FROM S.customers",
        "SELECT substr(email, 1, 3) FROM S.customers ORDER BY id",
    ],
)
def test_computed_values_never_show_the_original(masked: MaskedSchema, query: str, binary: bool) -> None:
    got = [row[0] for row in through(masked, query, binary=binary)]
    raw = [row[0] for row in masked.direct(query.replace("S.", ""))]
    assert len(got) == len(raw)
    secrets = {row[2] for row in originals(masked) if row[2] is not None}
    for value, original in zip(got, raw, strict=True):
        if original is None:
            assert value is None
            continue
        assert value == "***"
        assert not any(secret in str(value) for secret in secrets)


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_union_branches_all_take_the_mask(masked: MaskedSchema, binary: bool) -> None:
    """A UNION column fed by a masked column is masked in every branch, whatever the other branches read."""
    query = "SELECT email FROM S.customers UNION ALL SELECT name FROM S.customers"
    got = sorted(str(row[0]) for row in through(masked, query, binary=binary))
    raw = [row[0] for row in masked.direct(query.replace("S.", ""))]
    assert got == sorted(str(email(value)) for value in raw)


def test_hash_keeps_joins_and_groups(masked: MaskedSchema) -> None:
    rows = through(masked, "SELECT a.token, b.token FROM S.customers a JOIN S.customers b USING (id) ORDER BY a.id")
    assert all(left == right for left, right in rows)
    groups = through(masked, "SELECT token, count(*) FROM S.customers GROUP BY token ORDER BY 2")
    assert len(groups) == 4


def test_materialized_view_is_masked(masked: MaskedSchema) -> None:
    got = through(masked, "SELECT id, phone FROM S.phones ORDER BY id")
    assert got == [(id_, partial(phone)) for id_, phone in masked.direct("SELECT id, phone FROM phones ORDER BY id")]


def test_unmasked_tables_and_columns_pass_untouched(masked: MaskedSchema) -> None:
    query = "SELECT o.id, o.total, c.name FROM S.orders o JOIN S.customers c ON c.id = o.customer_id ORDER BY o.id"
    assert through(masked, query) == masked.direct(query.replace("S.", ""))


def test_dba_is_exempt(masked: MaskedSchema) -> None:
    assert through(masked, "SELECT * FROM S.customers ORDER BY id", token=masked.dba()) == originals(masked)


@pytest.mark.parametrize(
    "query",
    [
        "SELECT c FROM S.customers c",
        "SELECT row_to_json(c) FROM S.customers c",
        "SELECT to_jsonb(c.*) FROM S.customers c",
        "SELECT c::text FROM S.customers c",
        "SELECT ROW(c.*) FROM S.customers c",
        "SELECT query_to_xml('select email from S.customers', true, true, '')",
        "SELECT id FROM S.customers WHERE ssn LIKE '1%'",
        "SELECT ssn, count(*) FROM S.customers GROUP BY ssn",
        "SELECT id FROM S.customers ORDER BY ssn",
        "SELECT * FROM pg_stats WHERE tablename = 'customers'",
    ],
)
def test_unresolvable_or_inferring_statements_are_refused(masked: MaskedSchema, query: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
        through(masked, query)
    assert "pgproxy" in str(refused.value)


def test_errors_do_not_quote_masked_values(masked: MaskedSchema) -> None:
    with pytest.raises(psycopg.errors.InvalidTextRepresentation) as failed:
        through(masked, "SELECT email::int FROM S.customers")
    assert "@" not in str(failed.value)
    assert "withheld" in str(failed.value)


def test_copy_to_stdout_is_masked(masked: MaskedSchema) -> None:
    expected_rows = [masked_row(row) for row in originals(masked)]
    with psycopg.connect(masked.proxy.conninfo(masked.agent()), autocommit=True) as conn, conn.cursor() as cur:
        with cur.copy(masked.q("COPY (SELECT id, email, phone FROM S.customers ORDER BY id) TO STDOUT")) as copy:
            text_rows = [tuple(row) for row in copy.rows()]
        with cur.copy(masked.q("COPY S.customers (id, email) TO STDOUT (FORMAT csv)")) as copy:
            csv_data = b"".join(bytes(chunk) for chunk in copy)
    assert text_rows == [(str(r[0]), r[2], r[3]) for r in expected_rows]
    for row in originals(masked):
        if row[2] is not None:
            assert row[2].encode() not in csv_data
