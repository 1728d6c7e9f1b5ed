"""Who, database and table matching."""

from __future__ import annotations

import pytest

from pgproxy.auth.identity import Identity
from pgproxy.policy.engine import DEFAULT_DENY, Effect, database_matches, decide, identity_matches, relation_in_scope
from pgproxy.policy.model import TableGlob, Who
from pgproxy.sql.statement import Category, Statement
from tests.unit.policy.build import policy, rel, stmt, who

ALICE = who("alice-sub", email="Alice@Example.COM", groups=("dba", "eng"), issuer="https://idp.example.com/")
BOB = who("bob-sub", email="bob@other.org", groups=("eng",), issuer="https://other-idp.example.com/")
NO_EMAIL = who("svc-1", groups=("ci",))


def matcher(text: str) -> Who:
    return Who.model_validate_json(text)


@pytest.mark.parametrize(
    ("spec", "identity", "expected"),
    [
        ('{"everyone": true}', NO_EMAIL, True),
        ('{"subjects": ["alice-sub"]}', ALICE, True),
        ('{"subjects": ["ALICE-SUB"]}', ALICE, False),  # subjects compare exactly
        ('{"subjects": ["x", "bob-sub"]}', BOB, True),  # any listed value
        ('{"emails": ["alice@example.com"]}', ALICE, True),  # emails compare case-insensitively
        ('{"emails": ["ALICE@EXAMPLE.COM"]}', ALICE, True),
        ('{"emails": ["alice@example.com"]}', NO_EMAIL, False),  # no email, no match
        ('{"email_domains": ["example.com"]}', ALICE, True),
        ('{"email_domains": ["EXAMPLE.com"]}', ALICE, True),
        ('{"email_domains": ["ample.com"]}', ALICE, False),  # whole domain, not a suffix
        ('{"email_domains": ["example.com"]}', NO_EMAIL, False),
        ('{"groups": ["eng"]}', BOB, True),
        ('{"groups": ["DBA"]}', ALICE, False),  # groups compare exactly
        ('{"groups": ["ops", "dba"]}', ALICE, True),
        ('{"groups": ["ops"]}', NO_EMAIL, False),
        ('{"issuers": ["https://idp.example.com/"]}', ALICE, True),
        ('{"issuers": ["https://idp.example.com/"]}', BOB, False),
        # every given field must match
        ('{"groups": ["eng"], "issuers": ["https://idp.example.com/"]}', ALICE, True),
        ('{"groups": ["eng"], "issuers": ["https://idp.example.com/"]}', BOB, False),
        ('{"groups": ["dba"], "email_domains": ["other.org"]}', ALICE, False),
        ('{"subjects": ["alice-sub"], "emails": ["alice@example.com"], "groups": ["eng"]}', ALICE, True),
    ],
)
def test_who(spec: str, identity: Identity, expected: bool) -> None:
    assert identity_matches(matcher(spec), identity) is expected


@pytest.mark.parametrize(
    ("patterns", "database", "expected"),
    [
        (["app"], "app", True),
        (["app"], "App", False),
        (["app"], "app2", False),
        (["app_*"], "app_eu", True),
        (["app_?"], "app_eu", False),
        (["*"], "anything", True),
        (["demo", "app"], "app", True),
        (["[ab]pp"], "bpp", True),
    ],
)
def test_databases(patterns: list[str], database: str, expected: bool) -> None:
    assert database_matches(patterns, database) is expected


PUBLIC = (TableGlob("public", "*"),)
ORDERS_ANYWHERE = (TableGlob("*", "orders"),)
HR = (TableGlob("hr", "salaries"),)


@pytest.mark.parametrize(
    ("scope", "relation", "deny", "expected"),
    [
        (PUBLIC, "public.customers", False, True),
        (PUBLIC, "sales.customers", False, False),
        (PUBLIC, "customers", False, True),  # unqualified resolves to public
        (PUBLIC, "pg_class", False, False),  # might be pg_catalog.pg_class
        ((TableGlob("pg_catalog", "*"), TableGlob("public", "*")), "pg_class", False, True),
        (HR, "salaries", False, False),  # allow: unqualified is not in hr
        (HR, "salaries", True, True),  # deny: unqualified matches the table part in any schema
        (HR, "hr.salaries", True, True),
        (HR, "public.salaries", True, False),
        (HR, "bonuses", True, False),
        (ORDERS_ANYWHERE, "shop.orders", False, True),
        (ORDERS_ANYWHERE, "orders", False, True),
        ((TableGlob("public", "cust*"),), "customers", False, True),
        ((TableGlob("public", "cust*"),), "orders", False, False),
        ((TableGlob("pub?ic", "*"),), "public.x", False, True),
        ((TableGlob("public", "Customers"),), "public.customers", False, False),  # names compare exactly
    ],
)
def test_relation_in_scope(scope: tuple[TableGlob, ...], relation: str, deny: bool, expected: bool) -> None:
    assert relation_in_scope(rel(relation), scope, deny=deny) is expected


SCOPED = policy(
    """
rules:
  - id: no-salaries
    who: {everyone: true}
    databases: [app]
    tables: [hr.salaries, "*.secrets"]
    categories: [read, write]
    effect: deny
  - id: read-public
    who: {everyone: true}
    databases: [app]
    tables: [public.*]
    categories: [read]
    effect: allow
  - id: read-hr-with-approval
    who: {groups: [hr]}
    databases: [app]
    tables: [hr.*]
    categories: [read]
    effect: require_approval
    approval: {approvers: {groups: [hr-leads]}}
"""
)


@pytest.mark.parametrize(
    ("reads", "groups", "expected"),
    [
        ((), (), "read-public"),  # SELECT 1 touches no table: inside every allow scope
        (("customers",), (), "read-public"),
        (("public.customers", "public.orders"), (), "read-public"),
        (("public.customers", "sales.leads"), (), DEFAULT_DENY),  # one relation outside the allow scope
        (("public.customers", "hr.salaries"), (), "no-salaries"),  # any relation inside the deny scope
        (("salaries",), (), "no-salaries"),  # unqualified: conservative for deny
        (("public.salaries",), (), "read-public"),  # qualified elsewhere: not the denied table
        (("vault.secrets",), (), "no-salaries"),
        (("hr.reviews",), ("hr",), "read-hr-with-approval"),
        (("hr.reviews", "public.customers"), ("hr",), DEFAULT_DENY),  # neither scope holds both
        (("reviews",), ("hr",), "read-public"),  # unqualified resolves to public, not hr
    ],
)
def test_table_scopes_decide(reads: tuple[str, ...], groups: tuple[str, ...], expected: str) -> None:
    decision = decide(SCOPED, who(groups=groups), "app", stmt(Category.READ, reads=reads), read_only=False)
    assert decision.rule_id == expected


def test_deny_reason_names_the_denied_relations() -> None:
    statement = stmt(Category.READ, reads=("public.customers", "hr.salaries"))
    decision = decide(SCOPED, who(), "app", statement, read_only=False)
    assert decision.reason.startswith("SELECT (read) on hr.salaries is denied by policy rule no-salaries")
    assert decision.hint is not None and decision.hint.startswith("leave out hr.salaries; ")


def test_messages_list_qualified_and_unqualified_names_together() -> None:
    statement = stmt(Category.WRITE, "UPDATE", reads=("customers", "public.orders", "zeta"), writes=("a.b",))
    decision = decide(SCOPED, who(), "app", statement, read_only=False)
    assert decision.reason == (
        "no policy rule allows write statements for user-1 on database app "
        "(UPDATE (write) on a.b, customers, public.orders and 1 more)"
    )


def test_relations_of_explained_statements_count() -> None:
    inner = stmt(Category.READ, reads=("hr.salaries",))
    explain = Statement(Category.READ, "EXPLAIN", explained=inner)
    assert decide(SCOPED, who(), "app", explain, read_only=False).rule_id == "no-salaries"


def test_writes_count_like_reads() -> None:
    statement = stmt(Category.WRITE, "UPDATE", writes=("salaries",))
    decision = decide(SCOPED, who(), "app", statement, read_only=False)
    assert (decision.effect, decision.rule_id) == (Effect.DENY, "no-salaries")
