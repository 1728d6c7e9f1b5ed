"""``policy check`` warnings: rules that can never decide, session settings that never apply."""

from __future__ import annotations

import pytest

from pgproxy.policy.analysis import covers_globs, covers_who, find_problems
from pgproxy.policy.model import Who
from tests.unit.policy.build import policy

HEADER = "rules:\n"


def findings(text: str) -> list[tuple[str, str]]:
    return [(f.entry_id, f.message) for f in find_problems(policy(text))]


def test_allow_fully_covered_by_a_broader_deny() -> None:
    found = findings(
        HEADER
        + "  - {id: no-writes, who: {everyone: true}, databases: ['*'], categories: [write, ddl], effect: deny}\n"
        + "  - {id: agents-write, who: {groups: [a]}, databases: [app], categories: [write], effect: allow}\n"
    )
    assert found == [
        ("agents-write", "never decides anything: every statement it matches is decided by rule no-writes"),
    ]


def test_a_later_deny_shadows_too_because_deny_wins_regardless_of_order() -> None:
    found = findings(
        HEADER
        + "  - {id: allow-read, who: {groups: [a]}, databases: [app], categories: [read], effect: allow}\n"
        + "  - {id: deny-all, who: {groups: [a, b]}, databases: [app, demo], categories: ['*'], effect: deny}\n"
    )
    assert [entry for entry, _ in found] == ["allow-read"]


def test_allow_covered_by_require_approval() -> None:
    found = findings(
        HEADER + "  - {id: held, who: {everyone: true}, databases: [app], categories: [ddl], effect: require_approval,"
        " approval: {approvers: {groups: [dba]}}}\n"
        + "  - {id: ddl, who: {groups: [a]}, databases: [app], categories: [ddl], effect: allow}\n"
    )
    assert found == [("ddl", "never decides anything: every statement it matches is decided by rule held")]


def test_allow_covered_by_an_earlier_allow() -> None:
    found = findings(
        HEADER + "  - {id: broad, who: {email_domains: [example.com]}, databases: ['app*'], categories: ['*'],"
        " effect: allow}\n"
        + "  - {id: narrow, who: {emails: [ann@example.com]}, databases: [app_eu], categories: [read],"
        " effect: allow, notify: true}\n"
    )
    assert [entry for entry, _ in found] == ["narrow"]


def test_redundant_deny() -> None:
    found = findings(
        HEADER
        + "  - {id: d1, who: {everyone: true}, databases: [app], tables: ['hr.*'], categories: [read], effect: deny}\n"
        + "  - {id: d2, who: {groups: [x]}, databases: [app], tables: [hr.salaries], categories: [read],"
        " effect: deny}\n"
    )
    assert found[-1] == ("d2", "is redundant: every statement it matches is already denied by rule d1")


def test_covered_per_category_by_different_rules() -> None:
    found = findings(
        HEADER
        + "  - {id: d-write, who: {everyone: true}, databases: [app], categories: [write], effect: deny}\n"
        + "  - {id: d-ddl, who: {everyone: true}, databases: [app], categories: [ddl], effect: deny}\n"
        + "  - {id: both, who: {groups: [a]}, databases: [app], categories: [write, ddl], effect: allow}\n"
    )
    assert found == [
        ("both", "never decides anything: every statement it matches is decided by rule d-ddl, d-write"),
    ]


@pytest.mark.parametrize(
    "rules",
    [
        # partial overlaps are normal policy and are not reported
        "  - {id: d, who: {everyone: true}, databases: [app], categories: [privilege], effect: deny}\n"
        "  - {id: a, who: {groups: [a]}, databases: [app], categories: ['*'], effect: allow}\n",
        # the deny names fewer people
        "  - {id: d, who: {groups: [a]}, databases: [app], categories: [read], effect: deny}\n"
        "  - {id: a, who: {groups: [a, b]}, databases: [app], categories: [read], effect: allow}\n",
        # the deny is limited to a database glob narrower than the allow's
        "  - {id: d, who: {everyone: true}, databases: ['app_*'], categories: [read], effect: deny}\n"
        "  - {id: a, who: {everyone: true}, databases: ['app*'], categories: [read], effect: allow}\n",
        # a table-scoped deny never covers an allow: statements touching no table escape it
        "  - {id: d, who: {everyone: true}, databases: [app], tables: [hr.salaries], categories: [read],"
        " effect: deny}\n"
        "  - {id: a, who: {everyone: true}, databases: [app], tables: [hr.salaries], categories: [read],"
        " effect: allow}\n",
        # an allow scoped to tables does not cover an unscoped one
        "  - {id: a1, who: {everyone: true}, databases: [app], tables: [public.*], categories: [read], effect: allow}\n"
        "  - {id: a2, who: {everyone: true}, databases: [app], categories: [read], effect: allow}\n",
        # different fields
        "  - {id: d, who: {issuers: ['https://a/']}, databases: [app], categories: [read], effect: deny}\n"
        "  - {id: a, who: {groups: [g]}, databases: [app], categories: [read], effect: allow}\n",
    ],
)
def test_no_false_warnings(rules: str) -> None:
    assert findings(HEADER + rules) == []


def test_deny_scoped_to_tables_with_only_relationless_categories_never_matches() -> None:
    found = findings(
        HEADER + "  - {id: d, who: {everyone: true}, databases: [app], tables: [hr.x], categories: [transaction],"
        " effect: deny}\n"
    )
    assert found == [("d", "can never match: it is scoped to tables, and its categories never name a table")]


def test_deny_with_a_table_wildcard_denies_every_unqualified_name() -> None:
    found = findings(
        HEADER
        + "  - {id: d, who: {everyone: true}, databases: [app], tables: ['hr.*'], categories: [read], effect: deny}\n"
    )
    assert found == [
        (
            "d",
            "denies every statement naming an unqualified table: deny rules match unqualified names by their table "
            "part alone, and hr.* matches any table name; list the tables",
        )
    ]


def test_unsatisfiable_who() -> None:
    found = findings(
        HEADER + "  - {id: r, who: {emails: [a@x.org], email_domains: [y.org]}, databases: [app], categories: [read],"
        " effect: allow}\n"
    )
    assert found == [("r", "its 'who' can never match: no listed email is in the listed email_domains")]


def test_session_settings_shadowed_by_an_earlier_entry() -> None:
    found = findings(
        HEADER
        + "  - {id: r, who: {everyone: true}, databases: [app], categories: [read], effect: allow}\n"
        + "sessions:\n"
        + "  - {id: s1, who: {groups: [a, b]}, databases: ['*']}\n"
        + "  - {id: s2, who: {groups: [a], issuers: [i]}, databases: [app], read_only: true}\n"
        + "  - {id: s3, who: {groups: [c]}, databases: [app]}\n"
    )
    assert found == [("s2", "never applies: session settings s1 come first and match every such session")]


@pytest.mark.parametrize(
    ("big", "small", "expected"),
    [
        (["*"], ["anything", "a*"], True),
        (["app"], ["app"], True),
        (["app*"], ["app_eu", "app_*"], True),
        (["app_*"], ["app*"], False),
        (["a?p"], ["app"], True),
        (["a?p"], ["a?p"], True),
        (["a[*]"], ["a*"], False),  # a glob is only covered by the same glob or a prefix wildcard
        (["app"], ["app", "demo"], False),
    ],
)
def test_covers_globs(big: list[str], small: list[str], expected: bool) -> None:
    assert covers_globs(big, small) is expected


@pytest.mark.parametrize(
    ("big", "small", "expected"),
    [
        ({"everyone": True}, {"groups": ["a"]}, True),
        ({"groups": ["a"]}, {"everyone": True}, False),
        ({"groups": ["a", "b"]}, {"groups": ["a"]}, True),
        ({"groups": ["a"]}, {"groups": ["a", "b"]}, False),
        ({"groups": ["a"]}, {"groups": ["a"], "emails": ["x@y.z"]}, True),
        ({"groups": ["a"], "emails": ["x@y.z"]}, {"groups": ["a"]}, False),
        ({"email_domains": ["y.z"]}, {"emails": ["x@y.z"]}, True),
        ({"email_domains": ["y.z"]}, {"emails": ["x@y.z", "x@q.z"]}, False),
    ],
)
def test_covers_who(big: dict[str, object], small: dict[str, object], expected: bool) -> None:
    assert covers_who(Who.model_validate(big), Who.model_validate(small)) is expected
