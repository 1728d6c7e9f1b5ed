"""resolve_prepared: EXECUTE takes the meaning of the prepared statement it names."""

from __future__ import annotations

import pytest

from pgproxy.sql.classify import Classifier, classify_uncached, resolve_prepared
from pgproxy.sql.statement import Category, Flag, Relation, Statement


def one(sql: str) -> Statement:
    (statement,) = classify_uncached(sql).statements
    return statement


def session(*prepares: str) -> dict[str, Statement]:
    """name → classification, as a session records SQL PREPAREs (the inner statement)."""
    table = {}
    for sql in prepares:
        statement = one(sql)
        assert statement.command == "PREPARE" and statement.prepared_name and statement.prepared
        table[statement.prepared_name] = statement.prepared
    return table


NAMES = session(
    "PREPARE readp(int) AS SELECT * FROM accounts WHERE id = $1",
    "PREPARE writep AS DELETE FROM accounts",
    "PREPARE sneaky AS WITH d AS (DELETE FROM audit RETURNING *) SELECT * FROM d",
    "PREPARE seq AS SELECT nextval('s')",
)


def test_execute_takes_the_prepared_statements_meaning() -> None:
    resolved = resolve_prepared(one("EXECUTE readp(1)"), NAMES.get)
    assert resolved.category is Category.READ and resolved.command == "EXECUTE"
    assert resolved.prepared_name == "readp" and resolved.reads == {Relation(None, "accounts")}
    assert resolved.prepared == NAMES["readp"] and resolved.reason is None
    write = resolve_prepared(one("execute WRITEP"), NAMES.get)
    assert write.category is Category.WRITE and write.writes == {Relation(None, "accounts")}
    cte = resolve_prepared(one("EXECUTE sneaky"), NAMES.get)
    assert cte.category is Category.WRITE and Flag.DATA_MODIFYING_CTE in cte.flags
    seq = resolve_prepared(one("EXECUTE seq"), NAMES.get)
    assert seq.category is Category.WRITE and seq.unsafe_functions == {"nextval"}


def test_an_unknown_name_stays_unknown() -> None:
    resolved = resolve_prepared(one("EXECUTE nope"), NAMES.get)
    assert resolved.category is Category.UNKNOWN and resolved.reason == 'prepared statement "nope" is unknown'
    assert resolved.prepared_name == "nope" and resolved.command == "EXECUTE"


def test_the_lookup_may_return_the_prepare_statement_itself() -> None:
    whole = {"writep": one("PREPARE writep AS DELETE FROM accounts")}
    assert resolve_prepared(one("EXECUTE writep"), whole.get).category is Category.WRITE


@pytest.mark.parametrize(
    ("sql", "category", "flag"),
    [
        ("EXECUTE readp(nextval('s'))", Category.WRITE, Flag.UNSAFE_FUNCTION),
        ("EXECUTE readp(set_config('role', 'admin', false)::int)", Category.PRIVILEGE, Flag.UNSAFE_FUNCTION),
        ("EXECUTE readp(my_func())", Category.PROCEDURAL, Flag.UNSAFE_FUNCTION),
        ("EXECUTE readp(length(pg_read_file('/etc/passwd')))", Category.PROCEDURAL, Flag.SERVER_FILE_FUNCTION),
    ],
)
def test_the_executes_own_parameters_are_judged_too(sql: str, category: Category, flag: Flag) -> None:
    resolved = resolve_prepared(one(sql), NAMES.get)
    assert resolved.category is category and flag in resolved.flags
    if flag is Flag.SERVER_FILE_FUNCTION:
        assert resolved.refusal


def test_explain_execute_is_resolved_inside() -> None:
    plan = resolve_prepared(one("EXPLAIN EXECUTE writep"), NAMES.get)
    assert plan.command == "EXPLAIN" and plan.category is Category.WRITE
    assert plan.explained is not None and plan.explained.category is Category.WRITE
    read_plan = resolve_prepared(one("EXPLAIN EXECUTE readp(1)"), NAMES.get)
    assert read_plan.category is Category.READ
    analyzed = resolve_prepared(one("EXPLAIN (ANALYZE) EXECUTE readp(1)"), NAMES.get)
    assert analyzed.category is Category.UTILITY and Flag.EXPLAIN_ANALYZE in analyzed.flags
    analyzed_write = resolve_prepared(one("EXPLAIN ANALYZE EXECUTE writep"), NAMES.get)
    assert analyzed_write.category is Category.WRITE and Flag.EXPLAIN_ANALYZE in analyzed_write.flags
    missing = resolve_prepared(one("EXPLAIN EXECUTE nope"), NAMES.get)
    assert missing.category is Category.UNKNOWN and missing.reason == 'prepared statement "nope" is unknown'


def test_create_table_as_execute_is_ddl_writing_its_table() -> None:
    resolved = resolve_prepared(one("CREATE TABLE copy AS EXECUTE readp(1)"), NAMES.get)
    assert resolved.category is Category.DDL and resolved.command == "CREATE TABLE AS"
    assert resolved.writes == {Relation(None, "copy")} and resolved.reads == {Relation(None, "accounts")}
    assert resolve_prepared(one("CREATE TABLE c AS EXECUTE writep"), NAMES.get).category is Category.DDL
    assert resolve_prepared(one("CREATE TABLE c AS EXECUTE nope"), NAMES.get).category is Category.UNKNOWN


@pytest.mark.parametrize(
    "sql", ["SELECT 1", "PREPARE x AS SELECT 1", "DEALLOCATE x", "DEALLOCATE ALL", "DELETE FROM t", "EXPLAIN SELECT 1"]
)
def test_statements_without_execute_are_returned_unchanged(sql: str) -> None:
    statement = one(sql)

    def never(name: str) -> Statement | None:
        raise AssertionError(name)

    assert resolve_prepared(statement, never) is statement


def test_deallocate_and_prepare_name_their_statement() -> None:
    assert one("DEALLOCATE p").prepared_name == "p" and one("DEALLOCATE p").category is Category.SESSION
    everything = one("DEALLOCATE ALL")
    assert everything.command == "DEALLOCATE ALL" and everything.prepared_name is None
    assert one('PREPARE "MixedCase" AS SELECT 1').prepared_name == "MixedCase"
    assert one("PREPARE MixedCase AS SELECT 1").prepared_name == "mixedcase"


def test_resolution_works_on_cached_classifications() -> None:
    classifier = Classifier()
    names = {}
    prepared = classifier.classify("PREPARE q AS UPDATE accounts SET x = 1").statements[0]
    assert prepared.prepared_name and prepared.prepared
    names[prepared.prepared_name] = prepared.prepared
    for _ in range(2):
        execute = classifier.classify("EXECUTE q").statements[0]
        assert execute.category is Category.UNKNOWN  # the cached value itself is never resolved in place
        assert resolve_prepared(execute, names.get).category is Category.WRITE
