"""Adversarial masking tests: an agent tries every way it can think of to get original values of masked
columns (or, for ``ssn`` with ``refuse_predicates``, an answer to a filter on it) out through pgproxy.

Each attack runs on the raw protocol, so every byte pgproxy relays (rows, COPY data, errors, notices,
parameter statuses) is searched for the originals in several encodings. The safe outcome is a refusal
(SQLSTATE 42501), a withheld error, or output free of originals. ``bypass`` marks cases that once got
through (materialized-view errors, triggers, shadowed built-ins, row counts, comparisons of guarded values),
with what they exploited.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
from typing import Any

import psycopg
import pytest

from pgproxy.wire import backend as be
from pgproxy.wire import frontend as fe
from tests.support.masking import ROWS, MaskedSchema
from tests.support.pg_plugin import UPSTREAM_ROLE
from tests.support.raw_client import RawClient

pytestmark = pytest.mark.integration

SEP = " ;; "  # separates the statements of one session in a parametrized case
_names = itertools.count()


def _needles() -> list[bytes]:
    """Every original masked text value (longer than 4 characters), plainly and as an attacker might encode it."""
    texts = {str(value) for row in ROWS for value in row[2:9] if value is not None and len(str(value)) > 4}
    found: set[bytes] = set()
    for text in texts:
        raw = text.encode()
        copy_text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
        found |= {raw, text.upper().encode(), text[::-1].encode(), copy_text.encode(), raw.hex().encode(),
                  base64.b64encode(raw).rstrip(b"="), hashlib.md5(raw, usedforsecurity=False).hexdigest().encode()}
    return sorted(found)


NEEDLES = _needles()


def bypass(reason: str, *values: Any) -> Any:
    """A case that once got through; ``reason`` says how (kept as the test's id suffix for the record)."""
    return pytest.param(*values)


async def _session(masked: MaskedSchema, statements: list[str]) -> list[list[be.BackendMessage]]:
    async with await RawClient.connect(masked.proxy.port) as client:
        await client.login(masked.agent())
        return [await client.query(masked.q(statement)) for statement in statements]


def session(masked: MaskedSchema, script: str) -> list[list[be.BackendMessage]]:
    """Run ``a ;; b ;; c`` as simple queries on one connection; ``{n}`` becomes a fresh name suffix."""
    return asyncio.run(_session(masked, script.replace("{n}", str(next(_names))).split(SEP)))


def leaks(answers: list[list[be.BackendMessage]]) -> list[bytes]:
    blob = b"".join(message.encode() for answer in answers for message in answer)
    return [needle for needle in NEEDLES if needle in blob]


def refused(answer: list[be.BackendMessage]) -> bool:
    return any(isinstance(m, be.ErrorResponse) and m.sqlstate == "42501" for m in answer)


def observed(answer: list[be.BackendMessage]) -> list[Any]:
    """What a client can see of one statement's answer: rows, error codes, command tags."""
    seen: list[Any] = []
    for m in answer:
        if isinstance(m, be.DataRow):
            seen.append(tuple(None if v is None else bytes(v) for v in m.values))
        elif isinstance(m, be.ErrorResponse):
            seen.append(m.sqlstate)
        elif isinstance(m, be.CommandComplete):
            seen.append(m.tag)
    return seen


# -- 1. value extraction through query shapes, read paths and errors ---------------------------------------

SHAPES = [
    # arrays, rows, json/xml, formatting, regexps
    "SELECT array_agg(email), array_agg(note), array_agg(card) FROM S.customers",
    "SELECT ARRAY[email, phone, ssn], ARRAY(SELECT note FROM S.customers) FROM S.customers",
    "SELECT ROW(email, id), (SELECT email FROM S.customers WHERE id = 1) FROM S.customers",
    "SELECT (ROW(email, id)).f1 FROM S.customers",
    "SELECT json_build_object('e', email), jsonb_agg(ssn), to_jsonb(card), json_build_array(note) FROM S.customers"
    " GROUP BY email, card, note",
    "SELECT to_json(x), json_agg(x) FROM (SELECT email FROM S.customers) x GROUP BY x",
    "SELECT x.* FROM (SELECT email, note FROM S.customers) x",
    "SELECT xmlelement(name e, email), xmlforest(card) FROM S.customers",
    "SELECT format('%s|%I|%L', email, ssn, note), concat_ws(',', email, phone, card) FROM S.customers",
    "SELECT regexp_replace(email, 'a', 'b'), regexp_matches(ssn, '(.*)'), regexp_split_to_array(note, ' ')"
    " FROM S.customers",
    "SELECT m FROM S.customers, LATERAL regexp_matches(email, '(.*)') m",
    "SELECT z FROM S.customers, LATERAL (VALUES (email), (card)) v(z)",
    "SELECT unnest(ARRAY[email, phone, card, note, ssn]) FROM S.customers",
    "SELECT * FROM unnest((SELECT array_agg(email) FROM S.customers))",
    "SELECT encode(convert_to(email, 'UTF8'), 'hex'), email::bytea, encode(card::bytea, 'base64') FROM S.customers",
    "SELECT token::text, token::varchar, score::text, -score, card::bigint, rtrim(card) FROM S.customers",
    "SELECT email COLLATE \"C\", (email), ((card)), ssn::varchar, note::varchar(5) FROM S.customers",
    # set operations, grouping, windows, recursion, DISTINCT, TABLE, sampling
    "SELECT name FROM S.customers UNION ALL SELECT email FROM S.customers",
    "SELECT email, 1 FROM S.customers UNION SELECT card, 2 FROM S.customers",
    "SELECT note FROM S.customers EXCEPT SELECT name FROM S.customers",
    "SELECT email, card FROM S.customers GROUP BY GROUPING SETS ((email), (card), ())",
    "SELECT first_value(card) OVER w, lag(email) OVER w, nth_value(note, 2) OVER w FROM S.customers"
    " WINDOW w AS (ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)",
    "WITH RECURSIVE r(e, n) AS (SELECT 'x'::text, 1 UNION ALL SELECT c.card, n + 1 FROM r, S.customers c"
    " WHERE n < 2) SELECT e FROM r",
    "WITH t(a) AS MATERIALIZED (SELECT card FROM S.customers) SELECT a FROM t",
    "SELECT DISTINCT ON (email) email, card FROM S.customers",
    "TABLE S.customers",
    "SELECT email FROM ONLY S.customers TABLESAMPLE SYSTEM (100)",
    "SELECT a FROM (SELECT card, id FROM S.customers) AS t(a, b)",
    # identifiers: quoted, unicode escapes, qualified, whole-row, column aliases
    'SELECT U&"em\\0061il", U&"c!0061rd" UESCAPE \'!\', "note", S."customers"."ssn" FROM S."customers"',
    'SELECT "EMAIL" FROM S.customers',
    "SELECT email FROM pgproxy_test.S.customers",
    "SELECT (c).email, (c.*).card FROM S.customers c",
    "SELECT b FROM S.customers c(a, b, e)",
    "SELECT m.* FROM S.customers, LATERAL (SELECT card AS z) m",
    # errors that quote values
    "SELECT email::int FROM S.customers",
    "SELECT substr(email, 1, 3)::int, to_date(note, 'YYYY') FROM S.customers",
    "SELECT card::int FROM S.customers",
    "SELECT ssn::uuid FROM S.customers",
    "SELECT email::json FROM S.customers",
    "SELECT note::xml FROM S.customers",
    "SELECT lowered::int FROM S.contacts",
    "SELECT phone::int FROM S.phones",
    "SELECT id FROM S.customers WHERE note::int > 0",
    "SELECT 1 ; SELECT card::int FROM S.customers ; SELECT 2",
    # EXPLAIN
    "EXPLAIN (VERBOSE, COSTS off) SELECT email, card FROM S.customers WHERE id = 1",
    "EXPLAIN (ANALYZE, VERBOSE, FORMAT JSON) SELECT email::int FROM S.customers",
    # COPY
    "COPY S.customers TO STDOUT",
    "COPY S.customers TO STDOUT (FORMAT csv, HEADER, DELIMITER '@', QUOTE '''', ESCAPE '\\', FORCE_QUOTE *)",
    "COPY S.customers TO STDOUT (FORMAT binary)",
    "COPY S.customers (email, note, ssn, card) TO STDOUT (FORMAT text, ENCODING 'LATIN1', NULL 'x')",
    "COPY (SELECT lower(email), note || '', md5(ssn), card FROM S.customers) TO STDOUT (FORMAT csv)",
    'COPY S.customers(U&"em\\0061il", "card") TO STDOUT',
    "COPY (SELECT * FROM S.contacts) TO STDOUT (FORMAT binary)",
    "COPY (TABLE S.phones) TO STDOUT (FORMAT csv, HEADER true)",
    "COPY S.contacts TO STDOUT",
    "copy (select card::int from S.customers) to stdout",
    # cursors, PREPARE/EXECUTE, catalog views of them
    "BEGIN ;; DECLARE c SCROLL CURSOR FOR SELECT id, email, card, note FROM S.customers ;; FETCH 2 FROM c ;;"
    " FETCH PRIOR FROM c ;; MOVE LAST IN c ;; FETCH ABSOLUTE 1 FROM c ;; FETCH ALL FROM c ;;"
    " SELECT statement FROM pg_cursors ;; COMMIT",
    "BEGIN ;; DECLARE c BINARY CURSOR FOR SELECT email, token, score, card FROM S.customers ;; FETCH ALL FROM c ;;"
    " COMMIT",
    "DECLARE h CURSOR WITH HOLD FOR SELECT card, lower(email) FROM S.customers ;; FETCH ALL FROM h ;; CLOSE h",
    "PREPARE p{n} AS SELECT id, email, card || '' FROM S.customers ;; EXECUTE p{n} ;;"
    " SELECT statement FROM pg_prepared_statements",
    "SELECT query FROM pg_stat_activity",
    # side channels: settings, notifications, large objects, statistics
    "SELECT set_config('application_name', email, false) FROM S.customers WHERE id = 1",
    "SELECT set_config('x.y', card, false) FROM S.customers WHERE id = 1 ;; SELECT current_setting('x.y', true)",
    "SELECT pg_notify('c', email) FROM S.customers",
    "LISTEN c ;; SELECT pg_notify('c', note) FROM S.customers ;; SELECT 1",
    "SELECT lo_from_bytea(0, convert_to(email, 'UTF8')) FROM S.customers",
    "ANALYZE S.customers ;; SELECT histogram_bounds FROM pg_stats WHERE tablename = 'customers'",
    "SELECT histogram_bounds::text FROM PG_CATALOG.\"pg_stats\"",
    'SELECT histogram_bounds FROM U&"pg\\005fstats"',
    "SELECT h FROM (SELECT histogram_bounds::text h FROM pg_stats) s",
    "SELECT stavalues1::text FROM pg_statistic",
    "SELECT * FROM pg_stats_ext_exprs",
    "SELECT query_to_xml('select email from S.customers', true, true, '')",
    # writes: RETURNING, copies into unmasked places, MERGE, DML with CTEs
    "BEGIN ;; UPDATE S.customers SET note = 'x' WHERE id = 1 RETURNING email, card, (SELECT email FROM S.customers"
    " WHERE id = 2) ;; ROLLBACK",
    "BEGIN ;; INSERT INTO S.customers (id, name) VALUES (1, 'z') ON CONFLICT (id) DO UPDATE SET name = customers.email"
    " ;; SELECT name FROM S.customers ;; ROLLBACK",
    "BEGIN ;; UPDATE S.customers SET (name, note) = ROW(card, 'x') ;; SELECT name FROM S.customers ;; ROLLBACK",
    "BEGIN ;; WITH x AS (SELECT id, email AS e FROM S.customers) INSERT INTO S.customers (id, name)"
    " SELECT id + 100, e FROM x ;; SELECT name FROM S.customers ;; ROLLBACK",
    "BEGIN ;; MERGE INTO S.orders o USING S.customers c ON o.customer_id = c.id WHEN MATCHED THEN"
    " UPDATE SET total = length(c.card) ;; SELECT total FROM S.orders ;; ROLLBACK",
    "CREATE TABLE S.t{n} (LIKE S.customers) ;; INSERT INTO S.t{n} SELECT * FROM S.customers ;; SELECT * FROM S.t{n}",
    "CREATE TEMP TABLE t{n} AS SELECT card FROM S.customers ;; SELECT * FROM t{n}",
    "CREATE VIEW S.v{n} AS SELECT email::int AS z FROM S.customers ;; SELECT z FROM S.v{n}",
    "CREATE VIEW S.v{n} AS SELECT card AS c, note || '' AS x FROM S.customers ;; SELECT c, x FROM S.v{n}",
    # DDL that would copy, expose or re-point masked columns
    "BEGIN ;; ALTER TABLE S.customers ALTER COLUMN email TYPE int USING email::int ;; ROLLBACK",
    "BEGIN ;; CREATE INDEX ON S.customers ((card::int)) ;; ROLLBACK",
    "BEGIN ;; ALTER TABLE S.customers ADD CONSTRAINT x CHECK (note::int > 0) ;; ROLLBACK",
    "BEGIN ;; ALTER TABLE S.customers ADD COLUMN leak text GENERATED ALWAYS AS (email || '') STORED ;;"
    " SELECT leak FROM S.customers ;; ROLLBACK",
    "BEGIN ;; ALTER TABLE S.customers RENAME COLUMN email TO mail ;; SELECT mail FROM S.customers ;; ROLLBACK",
    "CREATE TABLE S.pp{n} (id int, name text, email text, phone varchar(20), token uuid, score int, card char(16),"
    " note text, ssn text) PARTITION BY RANGE (id) ;; BEGIN ;; ALTER TABLE S.pp{n} ATTACH PARTITION S.customers"
    " FOR VALUES FROM (0) TO (1000) ;; SELECT email, card FROM S.pp{n} ;; ROLLBACK",
    "CREATE TABLE S.par{n} (email text, card char(16)) ;; BEGIN ;; ALTER TABLE S.customers INHERIT S.par{n} ;;"
    " SELECT email, card FROM S.par{n} ;; ROLLBACK",
    "CREATE TABLE S.l{n} (v text) ;; CREATE RULE r AS ON INSERT TO S.l{n} DO ALSO INSERT INTO S.l{n}"
    " SELECT email FROM S.customers ;; INSERT INTO S.l{n} VALUES ('x') ;; SELECT v FROM S.l{n}",
    "CREATE FUNCTION S.f{n}() RETURNS text LANGUAGE sql AS $$SELECT string_agg(card, ',') FROM S.customers$$ ;;"
    " CREATE TABLE S.l{n} (v text) ;; ALTER TABLE S.l{n} ALTER COLUMN v SET DEFAULT S.f{n}() ;;"
    " INSERT INTO S.l{n} DEFAULT VALUES ;; SELECT v FROM S.l{n} ;; SELECT S.f{n}()",
    "CREATE TABLE S.l{n} (v text) ;; CREATE FUNCTION S.g{n}(text, int) RETURNS bool LANGUAGE sql AS"
    " 'INSERT INTO S.l{n} VALUES ($1) RETURNING true' ;; CREATE OPERATOR S.### (leftarg = text, rightarg = int,"
    " function = S.g{n}) ;; SELECT count(*) FROM S.customers WHERE email OPERATOR(S.###) 1 ;; SELECT v FROM S.l{n}",
    "BEGIN ;; ALTER TABLE S.customers ENABLE ROW LEVEL SECURITY ;; CREATE POLICY p ON S.customers"
    " USING (email::int > 0) ;; ROLLBACK",
    "SET search_path = S, public ;; SET SCHEMA 'S' ;; RESET search_path ;; SELECT lower(email) FROM customers",
    "DO $$BEGIN RAISE NOTICE '%', (SELECT string_agg(email, ',') FROM S.customers); END$$",
    # materialized views: creation and refresh evaluate the query
    bypass("CREATE MATERIALIZED VIEW's server error is relayed verbatim (not withheld): it quotes the value",
           "BEGIN ;; CREATE MATERIALIZED VIEW S.m{n} AS SELECT email::int AS v FROM S.customers ;; ROLLBACK"),
    bypass("CREATE MATERIALIZED VIEW's server error is relayed verbatim: 'value \"4111…\" is out of range'",
           "BEGIN ;; CREATE MATERIALIZED VIEW S.m{n} AS SELECT card::int AS v FROM S.customers ;; ROLLBACK"),
    bypass("REFRESH MATERIALIZED VIEW's server error is relayed verbatim",
           "CREATE MATERIALIZED VIEW S.m{n} AS SELECT id, note::int AS v FROM S.customers WITH NO DATA ;;"
           " REFRESH MATERIALIZED VIEW S.m{n}"),
    bypass("a materialized view over a (traced) view: the creation error quotes the value",
           "CREATE VIEW S.v{n} AS SELECT ssn::int AS z FROM S.customers ;;"
           " BEGIN ;; CREATE MATERIALIZED VIEW S.m{n} AS SELECT * FROM S.v{n} ;; ROLLBACK"),
    # code that runs without being called by name
    bypass("a trigger on an unmasked table runs a function body pgproxy never analyses; it copies masked values"
           " into a table the agent reads unmasked",
           "CREATE TABLE S.l{n} (v text) ;; CREATE FUNCTION S.t{n}() RETURNS trigger LANGUAGE plpgsql AS"
           " $$BEGIN INSERT INTO S.l{n} SELECT email || ' ' || card FROM S.customers; RETURN NEW; END$$ ;;"
           " CREATE TRIGGER t{n} AFTER INSERT ON S.orders FOR EACH ROW EXECUTE FUNCTION S.t{n}() ;;"
           " BEGIN ;; INSERT INTO S.orders VALUES (99, 99, 0) ;; SELECT v FROM S.l{n} ;; ROLLBACK ;;"
           " DROP TRIGGER t{n} ON S.orders"),
]


@pytest.mark.parametrize("script", SHAPES)
def test_no_original_value_reaches_the_client(masked: MaskedSchema, script: str) -> None:
    answers = session(masked, script)
    assert not leaks(answers), [observed(answer) for answer in answers]


# -- 2. built-in names shadowed by an exact-type overload in a schema on the search path -------------------

SHADOWS = [
    ("lower", "varchar", "LANGUAGE sql AS $$INSERT INTO S.l{n} VALUES ($1) RETURNING $1$$",
     "SELECT lower(phone) FROM S.customers ;; SELECT v FROM S.l{n}"),
    ("upper", "varchar", "LANGUAGE plpgsql AS $$BEGIN RAISE NOTICE 'got %', $1; RETURN $1; END$$",
     "SELECT upper(phone) FROM S.customers"),
    ("length", "varchar", "LANGUAGE plpgsql AS $$BEGIN RAISE NOTICE 'got %', $1; RETURN 0; END$$",
     "SELECT id FROM S.customers WHERE length(phone) > 0"),
]


@pytest.mark.parametrize(("name", "argument", "body", "script"), SHADOWS, ids=[s[0] for s in SHADOWS])
def test_shadowed_builtins_carry_no_value(masked: MaskedSchema, name: str, argument: str, body: str,
                                          script: str) -> None:
    n = next(_names)
    create = f"CREATE TABLE S.l{n} (v text) ;; CREATE FUNCTION public.{name}({argument}) RETURNS "
    create += ("int " if name == "length" else "text ") + body.replace("{n}", str(n))
    try:
        answers = session(masked, create + SEP + script.replace("{n}", str(n)))
    finally:
        _drop(masked, name, argument)
    assert not leaks(answers), [observed(answer) for answer in answers]


def _drop(masked: MaskedSchema, name: str, argument: str) -> None:
    with psycopg.connect(masked.postgres.dsn(UPSTREAM_ROLE), autocommit=True) as conn:
        conn.execute(f"DROP FUNCTION IF EXISTS public.{name}({argument})")


# -- 3. values read back as row counts ---------------------------------------------------------------------


@pytest.mark.parametrize("column", ["email", "phone", "card", "note", "ssn", "token::text", "score::text"])
def test_values_cannot_be_read_back_as_row_counts(masked: MaskedSchema, column: str) -> None:
    query = (f"SELECT (SELECT count(*) FROM S.customers c, generate_series(1, ascii(substr(c.{column}, i, 1)))"
             f" WHERE c.id = 1) FROM generate_series(1, 40) i ORDER BY i")
    [answer] = session(masked, query)
    counts = [row[0] for row in observed(answer) if isinstance(row, tuple)]
    text = "".join(chr(int(v)) for v in counts if v not in (None, b"0"))
    original = masked.direct(f"SELECT {column} FROM customers WHERE id = 1")[0][0]
    assert str(original) not in text


# -- 4. filters on a refuse_predicates column (ssn): the answer must not depend on the filter -------------

ORACLES = [
    "SELECT id FROM S.customers WHERE ssn LIKE '{p}%'",
    "SELECT id FROM S.customers WHERE id = 1 AND U&\"ss\\006e\" LIKE '{p}%'",
    "SELECT id FROM S.customers JOIN (VALUES ('{p}23-45-6789')) v(s) ON v.s = ssn",
    "SELECT id FROM S.customers WHERE EXISTS (SELECT 1 FROM S.customers c2 WHERE c2.ssn LIKE '{p}%')",
    "SELECT (SELECT count(*) FROM S.customers WHERE ssn LIKE '{p}%')",
    "SELECT id, (SELECT 'y' WHERE ssn LIKE '{p}%') FROM S.customers",
    "SELECT id, EXISTS (SELECT 1 WHERE ssn LIKE '{p}%'), ARRAY(SELECT 1 WHERE ssn LIKE '{p}%') FROM S.customers",
    "SELECT count(*) FROM S.customers HAVING max(ssn) > '{p}'",
    "SELECT id, count(*) OVER (PARTITION BY ssn > '{p}') FROM S.customers",
    "SELECT id FROM S.customers ORDER BY ssn > '{p}', id LIMIT 1 OFFSET 0",
    "SELECT DISTINCT ON (ssn > '{p}') id FROM S.customers",
    "SELECT id, ssn LIKE '{p}%', ssn = '{p}23-45-6789', ssn > '{p}' FROM S.customers",
    "SELECT id, coalesce(nullif(ssn, '{p}23-45-6789'), 'M'), greatest(ssn, '{p}') FROM S.customers",
    "SELECT count(*) FILTER (WHERE ssn LIKE '{p}%'), string_agg(name, ',' ORDER BY ssn > '{p}') FROM S.customers",
    "SELECT id, repeat('x', (ssn LIKE '{p}%')::int) FROM S.customers",
    "PREPARE q{n} AS SELECT id FROM S.customers WHERE ssn LIKE '{p}%' ;; EXECUTE q{n}",
    "BEGIN ;; DECLARE d CURSOR FOR SELECT id FROM S.customers WHERE ssn LIKE '{p}%' ;; FETCH ALL FROM d ;; COMMIT",
    "COPY (SELECT id FROM S.customers WHERE ssn LIKE '{p}%') TO STDOUT",
    "EXPLAIN ANALYSE SELECT id FROM S.customers WHERE ssn LIKE '{p}%'",
    "EXPLAIN (ANALYZE 1, TIMING off, COSTS off, SUMMARY off) SELECT id FROM S.customers WHERE ssn LIKE '{p}%'",
    "BEGIN ;; UPDATE S.customers SET name = name WHERE ssn LIKE '{p}%' ;; ROLLBACK",
    "BEGIN ;; DELETE FROM S.customers WHERE ssn LIKE '{p}%' ;; ROLLBACK",
    "BEGIN ;; MERGE INTO S.orders o USING S.customers c ON o.customer_id = c.id WHEN MATCHED AND c.ssn LIKE '{p}%'"
    " THEN DELETE ;; ROLLBACK",
    "BEGIN ;; INSERT INTO S.orders (id) SELECT 1 FROM S.customers WHERE ssn LIKE '{p}%' ;; ROLLBACK",
    bypass("INTERSECT compares the literal with every ssn: one row (masked) or none",
           "SELECT '{p}23-45-6789' INTERSECT SELECT ssn FROM S.customers"),
    bypass("EXCEPT compares the literal with every ssn", "SELECT '{p}23-45-6789' EXCEPT SELECT ssn FROM S.customers"),
    bypass("UNION (distinct) merges equal values: the row count answers 'is this ssn present'",
           "SELECT ssn FROM S.customers UNION SELECT '{p}23-45-6789'"),
    bypass("a set-returning function in the select list turns a condition on ssn into rows",
           "SELECT id, generate_series(1, CASE WHEN ssn LIKE '{p}%' THEN 1 ELSE 0 END) FROM S.customers"),
    bypass("unnest of a conditional array turns a condition on ssn into rows",
           "SELECT id, unnest(CASE WHEN ssn LIKE '{p}%' THEN ARRAY[1] ELSE '{}'::int[] END) FROM S.customers"),
    bypass("an SRF in a LATERAL join, counted: count(*) is not masked",
           "SELECT count(*) FROM S.customers, LATERAL generate_series(1, (ssn LIKE '{p}%')::int)"),
    bypass("a computed value keeps its NULL-ness: NULL where the CASE does not match, *** where it does",
           "SELECT id, CASE WHEN ssn LIKE '{p}%' THEN 'y' END FROM S.customers"),
    bypass("nullif(ssn, guess) is NULL exactly where ssn equals the guess",
           "SELECT id, nullif(ssn, '{p}23-45-6789') FROM S.customers"),
    bypass("division by zero on a condition: the SQLSTATE (22012) is kept, so error/no error answers it",
           "SELECT id, 1 / (CASE WHEN ssn LIKE '{p}%' THEN 0 ELSE 1 END) FROM S.customers WHERE id = 1"),
    bypass("a view's definition may filter on ssn: reading the view (its unmasked id) answers the filter",
           "CREATE VIEW S.w{n} AS SELECT id FROM S.customers WHERE ssn LIKE '{p}%' ;; SELECT id FROM S.w{n}"),
    bypass("a materialized view's definition may filter on ssn",
           "CREATE MATERIALIZED VIEW S.w{n} AS SELECT id FROM S.customers WHERE ssn LIKE '{p}%' ;;"
           " SELECT id FROM S.w{n}"),
]


@pytest.mark.parametrize("template", ORACLES)
def test_filters_on_ssn_are_refused_or_answer_nothing(masked: MaskedSchema, template: str) -> None:
    matching = session(masked, template.replace("{p}", "1"))  # ids 1 and 3 start with 1, one is 123-45-6789
    missing = session(masked, template.replace("{p}", "5"))  # no ssn starts with 5
    if any(refused(answer) for answer in matching):
        assert any(refused(answer) for answer in missing)
        return
    assert [observed(a) for a in matching] == [observed(a) for a in missing]


# -- 5. the extended protocol: statements re-parsed under a bound portal, formats, max-rows -----------------


async def _reparsed(masked: MaskedSchema) -> list[be.BackendMessage]:
    async with await RawClient.connect(masked.proxy.port) as client:
        await client.login(masked.agent())
        await client.send(
            fe.Parse("s", masked.q("SELECT email, card, note FROM S.customers ORDER BY id")),
            fe.Bind("p", "s", result_format_codes=(1,)), fe.Close("S", "s"),
            fe.Parse("s", "SELECT 'a'::text, 'b'::char(16), 'c'::text"), fe.Describe("S", "s"),
            fe.Execute("p", 1), fe.Execute("p", 0), fe.Sync(),
        )
        first = await client.read_until_ready()
        await client.send(fe.Bind("", "s"), fe.Execute("", 0), fe.Close("S", "s"),
                          fe.Parse("", masked.q("SELECT card, ssn FROM S.customers")),
                          fe.Bind("", "", result_format_codes=(0, 1)), fe.Execute("", 2), fe.Sync())
        return first + await client.read_until_ready()


def test_portals_keep_their_own_statement_masks(masked: MaskedSchema) -> None:
    answer = asyncio.run(_reparsed(masked))
    assert not leaks([answer]), observed(answer)
