"""Masked catalogs (``pgproxy.masking.resolve``) and statement plans (``pgproxy.masking.plan``) on a catalog
snapshot built by hand: views (and views over views) get their columns' rules, partitions inherit their
parent's masks, untraceable views and the statistics views are refused, and every statement is planned
from the classifier's real ``Statement`` for it."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from pgproxy.masking.plan import NO_PLAN, CopyPlan, Planner, Refused, ResultPlan
from pgproxy.masking.resolve import build_masked_catalog
from pgproxy.masking.rules import DEFAULT_REDACTION, ColumnRule
from pgproxy.masking.snapshot import CatalogSnapshot, Column, Relation, TypeInfo
from pgproxy.policy.model import Mask, MaskStrategy
from pgproxy.sql.classify import Classifier

INT4, TEXT, NUMERIC, NAME, ANYARRAY = 23, 25, 1700, 19, 2277
CUSTOMERS, ORDERS, CONTACTS, CONTACT_EMAILS, WHOLE_ROWS, CUSTOMERS_2024, PG_STATS = (
    16400, 16401, 16402, 16403, 16404, 16405, 12000,
)
SEARCH_PATH = ("pg_catalog", "app", "public")


def columns(*spec: tuple[str, int]) -> tuple[Column, ...]:
    return tuple(Column(name, attnum, type_oid) for attnum, (name, type_oid) in enumerate(spec, start=1))


CUSTOMER_COLUMNS = columns(
    ("id", INT4), ("name", TEXT), ("email", TEXT), ("ssn", TEXT), ("phone", TEXT), ("score", INT4)
)
# As pg_get_viewdef writes them with search_path=pg_catalog: every name schema-qualified.
CONTACTS_SQL = (
    " SELECT customers.id,\n    customers.email,\n    lower(customers.email) AS lowered\n   FROM app.customers;"
)
CONTACT_EMAILS_SQL = " SELECT contacts.email,\n    contacts.lowered\n   FROM app.contacts;"
WHOLE_ROWS_SQL = " SELECT c.id,\n    (c.*)::text AS c\n   FROM app.customers c;"

RELATIONS = (
    Relation(CUSTOMERS, "app", "customers", "r", CUSTOMER_COLUMNS),
    Relation(ORDERS, "app", "orders", "r", columns(("id", INT4), ("customer_id", INT4), ("total", NUMERIC))),
    Relation(CONTACTS, "app", "contacts", "v", columns(("id", INT4), ("email", TEXT), ("lowered", TEXT)), CONTACTS_SQL),
    Relation(CONTACT_EMAILS, "app", "contact_emails", "v", columns(("email", TEXT), ("lowered", TEXT)),
             CONTACT_EMAILS_SQL),
    Relation(WHOLE_ROWS, "app", "whole_rows", "v", columns(("id", INT4), ("c", TEXT)), WHOLE_ROWS_SQL),
    Relation(CUSTOMERS_2024, "app", "customers_2024", "r", CUSTOMER_COLUMNS),
    Relation(PG_STATS, "pg_catalog", "pg_stats", "v", columns(("schemaname", NAME), ("most_common_vals", ANYARRAY))),
)
TYPES = MappingProxyType({
    INT4: TypeInfo(INT4, "int4", "N", INT4), TEXT: TypeInfo(TEXT, "text", "S", TEXT),
    NUMERIC: TypeInfo(NUMERIC, "numeric", "N", NUMERIC),
})
MASKS = (
    Mask.model_validate({
        "id": "pii", "databases": ["*"],
        "columns": {
            "app.customers.email": "email",
            "app.customers.name": {"strategy": "partial", "keep_first": 1, "keep_last": 1},
            "app.customers.phone": "null",
            "app.customers.score": "hash",
        },
    }),
    Mask.model_validate({
        "id": "ssn-guard", "databases": ["*"], "refuse_predicates": True,
        "columns": {"app.customers.ssn": {"strategy": "redact", "text": "[hidden]"}},
    }),
)

EMAIL = ColumnRule(MaskStrategy.EMAIL, "app.customers.email")
EMAIL_DERIVED = ColumnRule(MaskStrategy.REDACT, "app.customers.email", DEFAULT_REDACTION, derived=True)
NAME_PARTIAL = ColumnRule(MaskStrategy.PARTIAL, "app.customers.name", keep_first=1, keep_last=1)
SSN = ColumnRule(MaskStrategy.REDACT, "app.customers.ssn", "[hidden]")
PHONE = ColumnRule(MaskStrategy.NULL, "app.customers.phone")
SCORE = ColumnRule(MaskStrategy.HASH, "app.customers.score")
STAR = (None, NAME_PARTIAL, EMAIL, SSN, PHONE, SCORE)


def snapshot(relations: tuple[Relation, ...] = RELATIONS) -> CatalogSnapshot:
    return CatalogSnapshot("shop", relations, TYPES, parents=MappingProxyType({CUSTOMERS_2024: (CUSTOMERS,)}))


CATALOG = build_masked_catalog(snapshot(), MASKS)
CLASSIFIER = Classifier()


def plan(sql: str, planner: Planner | None = None) -> ResultPlan | Refused:
    statements = CLASSIFIER.classify(sql).statements
    assert len(statements) == 1
    return (planner or Planner(CATALOG, SEARCH_PATH)).plan(statements[0], sql)


def planned(sql: str) -> ResultPlan:
    result = plan(sql)
    assert isinstance(result, ResultPlan), result
    return result


def refused(sql: str) -> str:
    result = plan(sql)
    assert isinstance(result, Refused), result
    return result.reason


# -- resolve -----------------------------------------------------------------------------------------------


def test_table_rules_follow_the_masks() -> None:
    rules = CATALOG.rules
    assert rules["app.customers.email"] == EMAIL
    assert rules["app.customers.name"] == NAME_PARTIAL
    assert rules["app.customers.ssn"] == SSN
    assert "app.customers.id" not in rules
    assert not any(key.startswith("app.orders.") for key in rules)
    assert CATALOG.active


def test_view_columns_get_plain_and_derived_rules() -> None:
    assert CATALOG.rules["app.contacts.email"] == EMAIL  # the column unchanged: its strategy as written
    assert CATALOG.rules["app.contacts.lowered"] == EMAIL_DERIVED  # computed: email becomes redaction
    assert "app.contacts.id" not in CATALOG.rules


def test_view_over_a_view_inherits_the_inner_views_rules() -> None:
    assert CATALOG.rules["app.contact_emails.email"] == EMAIL
    assert CATALOG.rules["app.contact_emails.lowered"] == EMAIL_DERIVED


def test_partitions_take_their_parents_masks_and_guards() -> None:
    for column, rule in zip(CUSTOMER_COLUMNS, STAR, strict=True):
        assert CATALOG.rules.get(f"app.customers_2024.{column.name}") == rule
    assert CATALOG.predicate_guarded == {"app.customers.ssn", "app.customers_2024.ssn"}


def test_refused_relations_and_their_reasons() -> None:
    refused_relations = CATALOG.refused_relations
    assert "whole-row reference" in refused_relations[("app", "whole_rows")]
    assert "sample values" in refused_relations[("pg_catalog", "pg_stats")]
    assert ("pg_catalog", "pg_statistic") in refused_relations  # refused whether the snapshot has it or not
    assert ("app", "contacts") not in refused_relations


def test_by_attribute_keys_are_table_oid_and_attnum() -> None:
    by_attribute = CATALOG.by_attribute
    assert by_attribute[(CUSTOMERS, 3)] == EMAIL
    assert by_attribute[(CUSTOMERS_2024, 2)] == NAME_PARTIAL
    assert by_attribute[(CONTACTS, 3)] == EMAIL_DERIVED
    assert by_attribute[(CONTACT_EMAILS, 1)] == EMAIL
    assert (CUSTOMERS, 1) not in by_attribute
    assert not any(oid == ORDERS for oid, _ in by_attribute)
    assert CATALOG.masked_relations == {
        ("app", "customers"), ("app", "customers_2024"), ("app", "contacts"), ("app", "contact_emails"),
    }


def test_no_masks_no_masking() -> None:
    catalog = build_masked_catalog(snapshot(), ())
    assert not catalog.active
    assert not catalog.rules
    assert not catalog.refused_relations
    assert plan("SELECT * FROM pg_stats", Planner(catalog, SEARCH_PATH)) is NO_PLAN


# A view whose definition reads a later view (CREATE OR REPLACE VIEW can make an older view read a newer
# one; the catalog is read in OID order) must get the same rules as when it comes after it.
EARLY = Relation(16390, "app", "early", "v", columns(("id", INT4), ("lowered", TEXT)),
                 " SELECT customers.id,\n    contacts.lowered\n   FROM app.customers\n"
                 "     JOIN app.contacts ON contacts.id = customers.id;")
EARLY_ROWS = Relation(16391, "app", "early_rows", "v", columns(("id", INT4), ("c", TEXT)),
                      " SELECT customers.id,\n    whole_rows.c\n   FROM app.customers\n"
                      "     JOIN app.whole_rows ON whole_rows.id = customers.id;")


def test_view_order_does_not_matter_when_the_read_view_comes_first() -> None:
    catalog = build_masked_catalog(snapshot((*RELATIONS, EARLY, EARLY_ROWS)), MASKS)
    assert catalog.rules["app.early.lowered"] == EMAIL_DERIVED
    assert "app.whole_rows" in catalog.refused_relations[("app", "early_rows")]


def test_view_traced_before_the_view_it_reads_gets_its_rules() -> None:
    catalog = build_masked_catalog(snapshot((EARLY, *RELATIONS)), MASKS)
    assert catalog.rules.get("app.early.lowered") == EMAIL_DERIVED


def test_view_traced_before_a_refused_view_it_reads_is_refused() -> None:
    catalog = build_masked_catalog(snapshot((EARLY_ROWS, *RELATIONS)), MASKS)
    assert ("app", "early_rows") in catalog.refused_relations
    assert isinstance(plan("SELECT c FROM early_rows", Planner(catalog, SEARCH_PATH)), Refused)


# -- plans of reads ----------------------------------------------------------------------------------------


def test_plain_and_derived_outputs() -> None:
    result = planned("SELECT id, email, lower(email), name || '' AS n, score FROM customers")
    assert result.columns == (None, EMAIL, EMAIL_DERIVED, NAME_PARTIAL.as_derived(), SCORE)
    assert NAME_PARTIAL.as_derived().strategy is MaskStrategy.REDACT
    assert result.reads_masked


def test_star_expands_to_every_column() -> None:
    assert planned("SELECT * FROM app.customers").columns == STAR
    assert planned("SELECT * FROM customers_2024").columns == STAR
    assert planned("SELECT * FROM contacts").columns == (None, EMAIL, EMAIL_DERIVED)


def test_join_and_aliases() -> None:
    result = planned("SELECT o.total, c.email AS e FROM orders o JOIN customers c ON c.id = o.customer_id")
    assert result.columns == (None, EMAIL)


def test_cte_and_subquery_carry_the_rule() -> None:
    assert planned("WITH x AS (SELECT email AS e FROM customers) SELECT e FROM x").columns == (EMAIL,)
    assert planned("SELECT s.e FROM (SELECT upper(email) AS e FROM customers) s").columns == (EMAIL_DERIVED,)


def test_union_mixes_sources_into_the_strictest_derived_rule() -> None:
    (column,) = planned("SELECT email FROM customers UNION SELECT name FROM customers").columns or ()
    assert column is not None
    assert (column.strategy, column.derived) == (MaskStrategy.REDACT, True)
    assert column.source == "app.customers.email, app.customers.name"


def test_filter_on_an_unguarded_masked_column_only_withholds_errors() -> None:
    result = planned("SELECT id FROM customers WHERE email = 'x'")
    assert result.columns == (None,)
    assert result.reads_masked


@pytest.mark.parametrize("sql", ["SELECT id FROM orders", "SELECT 1", "SELECT now()", "BEGIN", "SHOW work_mem",
                                 "EXPLAIN SELECT email FROM customers", "CREATE VIEW v AS SELECT email FROM customers"])
def test_statements_reading_no_masked_relation_need_no_plan(sql: str) -> None:
    result = plan(sql)
    assert result is NO_PLAN
    assert not result.needed


def test_plans_are_cached_by_text() -> None:
    planner = Planner(CATALOG, SEARCH_PATH)
    sql = "SELECT email FROM customers"
    first = plan(sql, planner)
    assert plan(sql, planner) is first
    assert plan("SELECT name FROM customers", planner) is not first
    assert Planner(CATALOG, SEARCH_PATH).plan(CLASSIFIER.classify(sql).statements[0], sql) is not first


def test_masked_statement_without_text_is_refused() -> None:
    (statement,) = CLASSIFIER.classify("SELECT email FROM customers").statements
    result = Planner(CATALOG, SEARCH_PATH).plan(statement, None)
    assert isinstance(result, Refused)
    assert "cannot trace" in result.reason


def test_unknown_relations_are_reported() -> None:
    (statement,) = CLASSIFIER.classify("SELECT * FROM nowhere JOIN customers ON true").statements
    assert [str(r) for r in Planner(CATALOG, SEARCH_PATH).unknown(statement)] == ["nowhere"]


# -- refusals ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sql", "reason"), [
    ("SELECT c FROM customers c", "whole-row reference"),
    ("SELECT row_to_json(c) FROM customers c", "whole-row reference"),
    ("SELECT * FROM whole_rows", "it reads app.whole_rows, which pgproxy cannot mask"),
    ("SELECT * FROM pg_stats", "it reads pg_catalog.pg_stats"),
    ("SELECT most_common_vals FROM pg_catalog.pg_stats WHERE tablename = 'orders'", "sample values"),
    ("DO $$ BEGIN PERFORM 1; END $$", "it runs code (DO)"),
    ("CALL app.refresh()", "it runs code"),
    ("SELECT app.leak(email) FROM customers", "it runs code (app.leak)"),
    ("SELECT * FROM app.rows_of() f, customers", "it runs code (app.rows_of)"),
    ("SET search_path = evil, app", "changing search_path"),
    ("SET LOCAL search_path TO evil", "changing search_path"),
    ("SELECT set_config('search_path', 'evil', false)", "changing search_path"),
    ("SELECT pg_notify('c', email) FROM customers", "it calls pg_notify, which could carry masked values"),
    ("SELECT lo_from_bytea(0, convert_to(email, 'UTF8')) FROM customers", "it calls lo_from_bytea"),
    ("SELECT setval('s', length(email)) FROM customers", "it calls setval"),
    ("EXPLAIN ANALYZE SELECT 1 FROM customers WHERE ssn LIKE '1%'", "EXPLAIN ANALYZE counts the rows"),
    ("ALTER SCHEMA app RENAME TO elsewhere", "ALTER SCHEMA could move masked tables"),
    ("ALTER VIEW contacts RENAME COLUMN lowered TO l", "it reads masked columns and"),
    ("ALTER TABLE customers RENAME COLUMN email TO e", "it reads masked columns and"),
    ("SELECT id FROM customers WHERE ssn = '1'",
     "filters, joins, groups, orders or computes with masked column app.customers.ssn"),
    ("SELECT id FROM customers ORDER BY ssn", "app.customers.ssn"),
    ("SELECT id FROM customers_2024 WHERE ssn LIKE '1%'", "app.customers_2024.ssn"),
    ("CREATE TABLE copy AS SELECT email FROM customers", "would store values of masked column app.customers.email"),
    ("INSERT INTO customers (name) SELECT email FROM customers", "would store values of masked column"),
    ("UPDATE orders SET total = length(customers.name) FROM customers", "app.customers.name"),
])
def test_refusals(sql: str, reason: str) -> None:
    assert reason in refused(sql)


def test_procedural_code_is_refused_even_without_masked_relations() -> None:
    assert "it runs code" in refused("SELECT app.anything()")


def test_writes_of_unmasked_values_are_planned() -> None:
    result = planned("INSERT INTO orders (id) SELECT id FROM customers")
    assert result.columns == ()
    assert not result.reads_masked


# -- COPY --------------------------------------------------------------------------------------------------


def copy_plan(sql: str) -> CopyPlan:
    result = planned(sql)
    assert result.copy is not None
    assert result.columns == result.copy.rules
    assert result.reads_masked
    return result.copy


def test_copy_table_text() -> None:
    copy = copy_plan("COPY customers TO STDOUT")
    assert (copy.format, copy.header, copy.delimiter) == ("text", False, None)
    assert copy.rules == STAR
    assert copy.types == (INT4, TEXT, TEXT, TEXT, TEXT, INT4)


def test_copy_column_list_keeps_its_order_and_options() -> None:
    copy = copy_plan("COPY app.customers (email, id, score) TO STDOUT WITH (FORMAT csv, HEADER, DELIMITER ';', "
                     "NULL 'nil', QUOTE '''', ESCAPE '\\', ENCODING 'LATIN1')")
    assert copy.rules == (EMAIL, None, SCORE)
    assert copy.types == (TEXT, INT4, INT4)
    assert (copy.format, copy.header, copy.delimiter, copy.null) == ("csv", True, ";", "nil")
    assert (copy.quote, copy.escape, copy.encoding) == ("'", "\\", "LATIN1")


@pytest.mark.parametrize(("sql", "form", "header"), [
    ("COPY customers TO STDOUT CSV HEADER", "csv", True),
    ("COPY customers TO STDOUT (FORMAT csv, HEADER false)", "csv", False),
    ("COPY customers TO STDOUT BINARY", "binary", False),
    ("COPY customers TO STDOUT (FORMAT binary)", "binary", False),
])
def test_copy_formats(sql: str, form: str, header: bool) -> None:
    copy = copy_plan(sql)
    assert (copy.format, copy.header) == (form, header)


def test_copy_query_traces_its_columns() -> None:
    copy = copy_plan("COPY (SELECT email, id, lower(email) FROM customers) TO STDOUT (FORMAT binary)")
    assert copy.rules == (EMAIL, None, EMAIL_DERIVED)
    assert copy.types == (TEXT, 0, 0)  # computed or unmasked columns: type unknown
    assert copy.format == "binary"


def test_copy_refusals_and_copy_in() -> None:
    assert "whole-row reference" in refused("COPY (SELECT c::text FROM customers c) TO STDOUT")
    assert "app.customers.ssn" in refused("COPY (SELECT id FROM customers WHERE ssn = '1') TO STDOUT")
    assert plan("COPY customers FROM STDIN") is NO_PLAN
    assert plan("COPY orders TO STDOUT") is NO_PLAN


# -- cursors and prepared statements -----------------------------------------------------------------------


def test_declare_carries_its_querys_plan() -> None:
    result = planned("DECLARE cur CURSOR WITH HOLD FOR SELECT id, email FROM customers")
    assert result.declares == "cur"
    assert result.holds and not result.binary
    assert result.cursor_plan is not None
    assert result.cursor_plan.columns == (None, EMAIL)
    assert result.reads_masked


def test_declare_of_unmasked_query_and_binary_cursor() -> None:
    result = planned("DECLARE b BINARY CURSOR FOR SELECT id FROM orders")
    assert (result.declares, result.binary, result.holds) == ("b", True, False)
    assert result.cursor_plan is NO_PLAN
    assert "whole-row" in refused("DECLARE w CURSOR FOR SELECT c FROM customers c")


@pytest.mark.parametrize(("sql", "expected"), [
    ("FETCH 10 FROM cur", ResultPlan(fetches="cur")),
    ("FETCH ALL IN cur", ResultPlan(fetches="cur")),
    ("MOVE 5 IN cur", NO_PLAN),
    ("CLOSE cur", ResultPlan(closes="cur")),
    ("CLOSE ALL", ResultPlan(closes="")),
])
def test_fetch_move_close(sql: str, expected: ResultPlan) -> None:
    assert plan(sql) == expected


def test_prepare_plans_its_query() -> None:
    assert planned("PREPARE p AS SELECT id, email FROM customers").columns == (None, EMAIL)
    assert "app.customers.ssn" in refused("PREPARE q AS SELECT id FROM customers WHERE ssn = $1")

