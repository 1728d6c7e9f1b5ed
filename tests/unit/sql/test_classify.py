"""Categories, commands, relations and settings of ordinary statements, table-driven."""

from __future__ import annotations

import pglast.ast
import pytest

from pgproxy.sql.classify import HANDLERS, classify_uncached, strictest
from pgproxy.sql.functions import (
    DANGER,
    SAFE_FUNCTIONS,
    SERVER_FILE_FUNCTIONS,
    judge_function,
    judge_operator,
    recorded_category,
)
from pgproxy.sql.settings import PRIVILEGE_SETTINGS, SESSION_SETTINGS, setting_category
from pgproxy.sql.statement import (
    READ_ONLY_CATEGORIES,
    SEVERITY,
    Category,
    Flag,
    Relation,
    Statement,
    strictest_category,
)


def one(sql: str) -> Statement:
    (statement,) = classify_uncached(sql).statements
    return statement


R, W, D, P = Category.READ, Category.WRITE, Category.DDL, Category.PRIVILEGE
S, T, U, PROC, UNK = Category.SESSION, Category.TRANSACTION, Category.UTILITY, Category.PROCEDURAL, Category.UNKNOWN

COMMANDS = [
    ("SELECT 1", R, "SELECT"),
    ("VALUES (1), (2)", R, "SELECT"),
    ("TABLE t", R, "SELECT"),
    ("SHOW search_path", R, "SHOW"),
    ("SHOW ALL", R, "SHOW"),
    ("FETCH 10 FROM c", R, "FETCH"),
    ("MOVE NEXT IN c", R, "MOVE"),
    ("CLOSE c", R, "CLOSE CURSOR"),
    ("CLOSE ALL", R, "CLOSE CURSOR ALL"),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t", R, "DECLARE CURSOR"),
    ("DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE", W, "DECLARE CURSOR"),
    ("INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET b = 2", W, "INSERT"),
    ("UPDATE t SET a = 1 FROM u WHERE t.id = u.id", W, "UPDATE"),
    ("DELETE FROM t USING u WHERE t.id = u.id", W, "DELETE"),
    ("MERGE INTO t USING s ON t.a = s.a WHEN NOT MATCHED THEN INSERT VALUES (s.a)", W, "MERGE"),
    ("CREATE TABLE t (a int REFERENCES u (id))", D, "CREATE TABLE"),
    ("CREATE TABLE p1 PARTITION OF p FOR VALUES IN (1)", D, "CREATE TABLE"),
    ("CREATE VIEW v AS SELECT * FROM t", D, "CREATE VIEW"),
    ("CREATE MATERIALIZED VIEW mv AS SELECT * FROM t", D, "CREATE MATERIALIZED VIEW"),
    ("CREATE TABLE x AS SELECT * FROM t", D, "CREATE TABLE AS"),
    ("REFRESH MATERIALIZED VIEW mv", D, "REFRESH MATERIALIZED VIEW"),
    ("CREATE INDEX i ON t (lower(a))", D, "CREATE INDEX"),
    ("CREATE UNIQUE INDEX CONCURRENTLY i ON t (a)", D, "CREATE INDEX"),
    ("ALTER TABLE t ADD COLUMN b int", D, "ALTER TABLE"),
    ("ALTER INDEX i RENAME TO j", D, "ALTER INDEX"),
    ("ALTER TABLE t RENAME COLUMN a TO b", D, "ALTER TABLE"),
    ("ALTER VIEW v SET SCHEMA s", D, "ALTER VIEW"),
    ("DROP TABLE IF EXISTS t CASCADE", D, "DROP TABLE"),
    ("DROP MATERIALIZED VIEW mv", D, "DROP MATERIALIZED VIEW"),
    ("DROP FUNCTION f(int)", D, "DROP FUNCTION"),
    ("TRUNCATE t, u", D, "TRUNCATE TABLE"),
    ("COMMENT ON TABLE t IS 'x'", D, "COMMENT"),
    ("COMMENT ON COLUMN s.t.a IS 'x'", D, "COMMENT"),
    ("CREATE EXTENSION IF NOT EXISTS pgcrypto", D, "CREATE EXTENSION"),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", D, "CREATE FUNCTION"),
    ("CREATE PROCEDURE p() LANGUAGE sql AS 'SELECT 1'", D, "CREATE PROCEDURE"),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1'", P, "CREATE FUNCTION"),
    ("ALTER FUNCTION f() SECURITY DEFINER", P, "ALTER FUNCTION"),
    ("ALTER FUNCTION f() SECURITY INVOKER", D, "ALTER FUNCTION"),
    # a routine or operator named like an allow-listed built-in can be picked by later "reads"
    ("CREATE FUNCTION public.lower(varchar) RETURNS text LANGUAGE sql AS 'SELECT 1'", P, "CREATE FUNCTION"),
    ("CREATE PROCEDURE upper() LANGUAGE sql AS ''", P, "CREATE PROCEDURE"),
    ("CREATE AGGREGATE count(int) (sfunc = f, stype = int)", P, "CREATE AGGREGATE"),
    ("CREATE OPERATOR public.= (leftarg = varchar, rightarg = varchar, function = f)", P, "CREATE OPERATOR"),
    ("CREATE OPERATOR === (leftarg = int, rightarg = int, function = f)", D, "CREATE OPERATOR"),
    ("ALTER FUNCTION f(int) RENAME TO lower", P, "ALTER FUNCTION"),
    ("ALTER AGGREGATE a(int) RENAME TO max", P, "ALTER AGGREGATE"),
    ("ALTER FUNCTION lower(int) SET SCHEMA public", P, "ALTER FUNCTION"),
    ("ALTER FUNCTION f() SET SCHEMA s", D, "ALTER FUNCTION"),
    ("ALTER TABLE t RENAME TO lower", D, "ALTER TABLE"),
    ("CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()", D, "CREATE TRIGGER"),
    ("CREATE RULE r AS ON INSERT TO t DO INSTEAD NOTHING", D, "CREATE RULE"),
    ("CREATE TYPE mood AS ENUM ('a')", D, "CREATE TYPE"),
    ("CREATE AGGREGATE a(int) (sfunc = int4pl, stype = int)", D, "CREATE AGGREGATE"),
    ("CREATE SCHEMA s", D, "CREATE SCHEMA"),
    ("CREATE SEQUENCE s", D, "CREATE SEQUENCE"),
    ("CREATE DATABASE d", D, "CREATE DATABASE"),
    ("GRANT SELECT ON t TO bob", P, "GRANT"),
    ("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM bob", P, "REVOKE"),
    ("GRANT admin TO bob", P, "GRANT ROLE"),
    ("REVOKE admin FROM bob", P, "REVOKE ROLE"),
    ("CREATE ROLE r LOGIN PASSWORD 'x'", P, "CREATE ROLE"),
    ("CREATE USER u", P, "CREATE ROLE"),
    ("ALTER ROLE r SUPERUSER", P, "ALTER ROLE"),
    ("ALTER USER u SET search_path = x", P, "ALTER ROLE"),
    ("ALTER ROLE r RENAME TO s", P, "ALTER ROLE"),
    ("DROP ROLE r", P, "DROP ROLE"),
    ("DROP USER u", P, "DROP ROLE"),
    ("ALTER TABLE t OWNER TO bob", P, "ALTER TABLE"),
    ("ALTER TABLE t DISABLE ROW LEVEL SECURITY", P, "ALTER TABLE"),
    ("ALTER FUNCTION f() OWNER TO bob", P, "ALTER FUNCTION"),
    ("ALTER SCHEMA s OWNER TO bob", P, "ALTER SCHEMA"),
    ("REASSIGN OWNED BY a TO b", P, "REASSIGN OWNED"),
    ("DROP OWNED BY a", P, "DROP OWNED"),
    ("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob", P, "ALTER DEFAULT PRIVILEGES"),
    ("CREATE POLICY p ON t USING (true)", P, "CREATE POLICY"),
    ("ALTER POLICY p ON t USING (true)", P, "ALTER POLICY"),
    ("DROP POLICY p ON t", P, "DROP POLICY"),
    ("CREATE USER MAPPING FOR bob SERVER s", P, "CREATE USER MAPPING"),
    ("SECURITY LABEL ON TABLE t IS 'x'", P, "SECURITY LABEL"),
    ("ALTER SYSTEM SET work_mem = '1GB'", P, "ALTER SYSTEM"),
    ("ALTER DATABASE d SET search_path = x", P, "ALTER DATABASE"),
    ("ALTER DATABASE d OWNER TO bob", P, "ALTER DATABASE"),
    ("CREATE SCHEMA s CREATE TABLE t (a int) GRANT SELECT ON t TO bob", P, "CREATE SCHEMA"),
    ("DO 'BEGIN END'", PROC, "DO"),
    ("CALL p()", PROC, "CALL"),
    ("LOAD 'plpgsql'", PROC, "LOAD"),
    ("VACUUM FULL t", U, "VACUUM"),
    ("VACUUM (ANALYZE) t", U, "VACUUM"),
    ("ANALYZE t", U, "ANALYZE"),
    ("CLUSTER t USING i", U, "CLUSTER"),
    ("REINDEX TABLE t", U, "REINDEX"),
    ("CHECKPOINT", U, "CHECKPOINT"),
    ("LISTEN c", U, "LISTEN"),
    ("UNLISTEN *", U, "UNLISTEN"),
    ("NOTIFY c, 'x'", U, "NOTIFY"),
    ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", U, "LOCK TABLE"),
    ("BEGIN", T, "BEGIN"),
    ("START TRANSACTION", T, "START TRANSACTION"),
    ("COMMIT", T, "COMMIT"),
    ("COMMIT AND CHAIN", T, "COMMIT"),
    ("ROLLBACK", T, "ROLLBACK"),
    ("SAVEPOINT a", T, "SAVEPOINT"),
    ("RELEASE SAVEPOINT a", T, "RELEASE"),
    ("ROLLBACK TO SAVEPOINT a", T, "ROLLBACK"),
    ("PREPARE TRANSACTION 'x'", W, "PREPARE TRANSACTION"),  # outlives the session
    ("COMMIT PREPARED 'x'", W, "COMMIT PREPARED"),  # any session of the login may finish it
    ("ROLLBACK PREPARED 'x'", W, "ROLLBACK PREPARED"),
    ("SET CONSTRAINTS ALL DEFERRED", T, "SET CONSTRAINTS"),
    ("SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", T, "SET"),
    ("SET statement_timeout = 0", S, "SET"),
    ("SET LOCAL lock_timeout = '1s'", S, "SET"),
    ("RESET work_mem", S, "RESET"),
    ("SET DateStyle = ISO", S, "SET"),
    ("SET XML OPTION DOCUMENT", S, "SET"),
    ("DISCARD PLANS", S, "DISCARD PLANS"),
    ("DISCARD SEQUENCES", S, "DISCARD SEQUENCES"),
    ("DISCARD TEMP", S, "DISCARD TEMP"),
    ("DEALLOCATE p", S, "DEALLOCATE"),
    ("DEALLOCATE ALL", S, "DEALLOCATE ALL"),
    ("SET log_statement = 'none'", UNK, "SET"),
]


@pytest.mark.parametrize(("sql", "category", "command"), COMMANDS, ids=[c[0][:50] for c in COMMANDS])
def test_category_and_command(sql: str, category: Category, command: str) -> None:
    statement = one(sql)
    assert (statement.category, statement.command) == (category, command), statement
    assert (statement.reason is not None) is (category is Category.UNKNOWN)


@pytest.mark.parametrize(
    ("sql", "reads", "writes"),
    [
        (
            "SELECT * FROM a JOIN s.b ON true, LATERAL (SELECT * FROM c) x WHERE EXISTS (SELECT 1 FROM d)",
            "a s.b c d",
            "",
        ),
        ("WITH w AS (SELECT * FROM base) SELECT * FROM w, other", "base other", ""),
        ("WITH b AS (SELECT * FROM a), a AS (SELECT 1) SELECT * FROM b", "a", ""),  # b sees the table a
        ("WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a", "", ""),
        ("WITH t AS (SELECT 1) SELECT * FROM public.t", "public.t", ""),
        ("SELECT * FROM (WITH x AS (SELECT 1) SELECT * FROM x) s, x", "x", ""),
        ("INSERT INTO t SELECT * FROM u", "u", "t"),
        ("UPDATE t SET a = (SELECT max(a) FROM t)", "t", "t"),
        ("MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE", "s", "t"),
        ("COPY t FROM STDIN", "", "t"),
        ("COPY s.t TO STDOUT", "s.t", ""),
        ("CREATE VIEW v AS SELECT * FROM t", "t", "v"),
        ("CREATE TABLE c (LIKE t, b int REFERENCES r (id)) INHERITS (p)", "t r", "c p"),
        ("CREATE INDEX ON s.t (a)", "", "s.t"),
        ("DROP TABLE a, s.b", "", "a s.b"),
        ("DROP VIEW v", "", "v"),
        ("DROP FUNCTION f()", "", ""),
        ("TRUNCATE a, b", "", "a b"),
        ("ALTER TABLE p ATTACH PARTITION c FOR VALUES IN (1)", "", "p c"),
        ("COMMENT ON COLUMN s.t.a IS 'x'", "", "s.t"),
        ("GRANT SELECT ON t, s.u TO bob", "", "t s.u"),
        ("LOCK TABLE t", "t", ""),
        ("VACUUM t", "t", ""),
        ("SELECT * INTO x FROM t", "t", "x"),
        ("CREATE SCHEMA s CREATE TABLE t (a int) CREATE VIEW v AS SELECT * FROM t", "t", "s.t s.v"),
        ('SELECT * FROM "Mixed"."Case", UPPER_CASE', "Mixed.Case upper_case", ""),
    ],
)
def test_relations(sql: str, reads: str, writes: str) -> None:
    def relations(names: str) -> frozenset[Relation]:
        return frozenset(Relation(n.rpartition(".")[0] or None, n.rpartition(".")[2]) for n in names.split())

    statement = one(sql)
    assert (statement.reads, statement.writes) == (relations(reads), relations(writes))


def test_every_statement_type_of_the_grammar_is_handled() -> None:
    statement_types = {
        name
        for name, cls in vars(pglast.ast).items()
        if isinstance(cls, type) and name.endswith("Stmt") and issubclass(cls, pglast.ast.Node)
    }
    never_top_level = {"RawStmt", "SetOperationStmt", "PLAssignStmt", "ReturnStmt", "ReplicaIdentityStmt"}
    assert statement_types - set(HANDLERS) == never_top_level


def test_an_unhandled_statement_type_is_unknown() -> None:
    statement = classify_uncached("RETURN 1").statements
    assert all(s.category is Category.UNKNOWN and s.reason for s in statement)


def test_severity_ranks_read_only_categories_lowest_and_unknown_highest() -> None:
    assert set(SEVERITY) == set(Category)
    lowest = sorted(Category, key=SEVERITY.__getitem__)[: len(READ_ONLY_CATEGORIES)]
    assert set(lowest) == READ_ONLY_CATEGORIES
    assert max(Category, key=SEVERITY.__getitem__) is Category.UNKNOWN
    assert strictest_category() is Category.UNKNOWN
    assert strictest_category(Category.EXPORT, Category.WRITE) is Category.WRITE
    assert strictest_category(Category.PROCEDURAL, Category.PRIVILEGE) is Category.PRIVILEGE


def test_strictest_prefers_a_refusal_then_severity_then_the_first() -> None:
    read, drop = one("SELECT 1"), one("DROP TABLE t")
    refused = one("COPY t TO STDOUT").__class__(Category.EXPORT, "COPY", refusal="no")
    assert strictest([]) is None
    assert strictest([read, drop]) is drop
    assert strictest([drop, refused, read]) is refused
    other_drop = one("DROP TABLE u")
    assert strictest([drop, other_drop]) is drop


def test_allow_list_never_contains_a_dangerous_name() -> None:
    assert not SAFE_FUNCTIONS & set(DANGER)
    assert not SAFE_FUNCTIONS & SERVER_FILE_FUNCTIONS
    assert not PRIVILEGE_SETTINGS & SESSION_SETTINGS
    for name in ("application_name", "search_path", "role", "row_security", "backslash_quote"):
        assert name not in SESSION_SETTINGS


@pytest.mark.parametrize(
    ("parts", "category"),
    [
        (("lower",), None),
        (("pg_catalog", "lower"), None),
        (("public", "lower"), PROC),
        (("nextval",), W),
        (("public", "nextval"), PROC),
        (("set_config",), P),
        (("public", "set_config"), P),
        (("pg_sleep",), U),
        (("information_schema", "_pg_expandarray"), None),
        (("information_schema", "evil"), PROC),
        (("a", "b", "lower"), PROC),
        (("dblink",), PROC),
    ],
)
def test_function_verdicts(parts: tuple[str, ...], category: Category | None) -> None:
    assert judge_function(parts, 1).category is category


def test_operator_verdicts() -> None:
    assert judge_operator(("=",)).category is None
    assert judge_operator(("pg_catalog", "||")).category is None
    assert judge_operator(("public", "=")).category is PROC
    assert judge_operator(("===",)).category is PROC


def test_recorded_names_are_judged_no_less_strictly() -> None:
    assert recorded_category("lower", unsafe=False) is None
    assert recorded_category("nextval", unsafe=True) is W
    assert recorded_category("pg_catalog.set_config", unsafe=True) is P
    assert recorded_category("x.nextval", unsafe=True) is PROC
    assert recorded_category("pg_catalog.lower", unsafe=True) is PROC  # a quoted "pg_catalog.lower"
    assert recorded_category("operator(===)", unsafe=True) is PROC


@pytest.mark.parametrize(
    ("name", "category"),
    [
        ("ROLE", P),
        ("Search_Path", P),
        ("my.setting", P),
        ("work_mem", S),
        ("TimeZone", S),
        ("enable_seqscan", S),
        ("application_name", P),
        ("client_encoding", Category.SESSION),  # safe only through the gate's settings barrier
        ("log_statement", UNK),
    ],
)
def test_setting_categories(name: str, category: Category) -> None:
    assert setting_category(name) is category


def test_read_write_transaction_flag_only_for_read_write() -> None:
    assert Flag.READ_WRITE_TRANSACTION in one("BEGIN TRANSACTION READ WRITE").flags
    assert Flag.READ_WRITE_TRANSACTION not in one("BEGIN TRANSACTION READ ONLY").flags
    assert Flag.READ_WRITE_TRANSACTION not in one("BEGIN").flags
    assert Flag.READ_WRITE_TRANSACTION in one("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE").flags
