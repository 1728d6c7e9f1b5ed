"""`(expr).name` may call the one-argument function `name`: it is judged as a call, in every spelling."""

from __future__ import annotations

import pytest

from pgproxy.sql.classify import classify_uncached
from pgproxy.sql.statement import Category

CALLS = [
    ("SELECT ('gate_seq'::regclass).nextval", Category.WRITE),
    ("SELECT ('gate_seq').nextval", Category.WRITE),
    ("SELECT (v.x).nextval FROM (VALUES ('s'::regclass)) AS v(x)", Category.WRITE),
    ("SELECT 1 FROM t WHERE (('s'::regclass).nextval) > 0", Category.WRITE),
    ("SELECT (777::oid).lo_unlink", Category.WRITE),
    ("SELECT (42).pg_terminate_backend", Category.UTILITY),
    ("SELECT (1::bigint).pg_advisory_lock", Category.UTILITY),
    ("SELECT (5).pg_sleep", Category.UTILITY),
    ("SELECT ('select 1'::text).ts_stat", Category.PROCEDURAL),
    ("SELECT (('x')::text).my_function", Category.PROCEDURAL),
    ("SELECT * FROM t WHERE id IN (SELECT (('s'::regclass)).nextval)", Category.WRITE),
    ("WITH c AS (SELECT ('s'::regclass).nextval AS n) SELECT n FROM c", Category.WRITE),
]


def spellings(sql: str) -> list[str]:
    return [
        sql,
        sql.lower(),
        sql.replace(" ", "\n  "),
        sql.replace("(", "( ").replace(")", " )"),
        f"/* c */ {sql} -- c",
    ]


@pytest.mark.parametrize(("sql", "category"), CALLS)
def test_functional_notation_is_a_call(sql: str, category: Category) -> None:
    for text in spellings(sql):
        statement = classify_uncached(text).statements[0]
        assert statement.category is category, text
        assert statement.unsafe_functions, text


def test_server_file_functions_in_functional_notation_are_refused() -> None:
    statement = classify_uncached("SELECT ('/etc/passwd'::text).pg_read_file").statements[0]
    assert statement.refusal is not None
