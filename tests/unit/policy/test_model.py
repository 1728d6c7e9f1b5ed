"""Single values and cross-field rules of the policy model."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pgproxy.policy.model import (
    ALL_CATEGORIES,
    ColumnMask,
    MaskStrategy,
    PolicySet,
    Rule,
    parse_duration,
)
from pgproxy.sql.statement import Category
from tests.unit.policy.build import policy


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(90, 90), ("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("1h0m5s", 3605)],
)
def test_durations(text: object, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "3x", "1.5h", True, -5, 0, "8d", 8 * 24 * 3600, "h30"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def rule(**overrides: object) -> Rule:
    fields: dict[str, object] = {
        "id": "r",
        "who": {"everyone": True},
        "databases": ["app"],
        "categories": ["read"],
        "effect": "allow",
    }
    fields.update(overrides)
    return Rule.model_validate(fields)


def test_star_expands_to_every_category_but_unknown() -> None:
    assert rule(categories=["*"]).granted == ALL_CATEGORIES
    assert Category.UNKNOWN not in ALL_CATEGORIES
    assert rule(categories=["*", "unknown"]).granted == frozenset(Category)
    assert rule(categories=["read", "read"]).granted == {Category.READ}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"id": "Upper"}, "an id is"),
        ({"id": "pgproxy:mine"}, "reserved"),
        ({"id": "-x"}, "an id is"),
        ({"who": {}}, "name at least one of"),
        ({"who": {"everyone": True, "groups": ["a"]}}, "cannot be combined"),
        ({"who": {"groups": []}}, "at least 1 item"),
        ({"who": {"emails": ["not-an-email"]}}, "not an email address"),
        ({"who": {"email_domains": ["@example.com"]}}, "not a domain name"),
        ({"databases": []}, "at least 1 item"),
        ({"databases": [" "]}, "must not be empty"),
        ({"tables": ["customers"]}, "schema.table"),
        ({"tables": ["a.b.c"]}, "schema.table"),
        ({"categories": ["reads"]}, "unknown category 'reads'"),
        ({"effect": "permit"}, "Input should be 'allow', 'deny' or 'require_approval'"),
        ({"effect": "require_approval"}, "needs 'approval'"),
        ({"approval": {"approvers": {"groups": ["dba"]}}}, "only belongs to require_approval rules"),
        ({"effect": "deny", "notify": True}, "'notify' applies to"),
        ({"notify": "yes"}, "valid boolean"),
        (
            {"effect": "require_approval", "approval": {"approvers": {"emails": ["a@x.org"]}, "quorum": 2}},
            "only 1 is named",
        ),
        ({"effect": "require_approval", "approval": {"approvers": {"everyone": True}}}, "Extra inputs"),
        ({"effect": "require_approval", "approval": {"approvers": {}}}, "name at least one of"),
        ({"effect": "require_approval", "approval": {"approvers": {"groups": ["d"]}, "quorum": 0}}, "greater than"),
        ({"colour": "red"}, "Extra inputs"),
    ],
)
def test_rule_errors(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        rule(**overrides)


def test_approval_defaults() -> None:
    held = rule(effect="require_approval", approval={"approvers": {"groups": ["dba"]}})
    assert held.approval is not None
    assert (held.approval.quorum, held.approval.timeout) == (1, 1800)
    # Groups can hold any number of people, so a large quorum is accepted.
    assert rule(effect="require_approval", approval={"approvers": {"groups": ["dba"]}, "quorum": 5}).approval


def test_emails_and_domains_are_stored_lower_case() -> None:
    who = rule(who={"emails": ["Ann@Example.com"], "email_domains": ["Example.COM"]}).who
    assert who.emails == frozenset({"ann@example.com"})
    assert who.email_domains == frozenset({"example.com"})


def test_mask_strategies_and_shorthand() -> None:
    policy_set = policy(
        """
rules: [{id: r, who: {everyone: true}, databases: [app], categories: [read], effect: allow}]
masks:
  - id: m
    databases: [app]
    columns:
      public.customers.email: email
      public.customers.ssn: {strategy: partial, keep_last: 4}
      public.customers.note: {strategy: redact, text: "[removed]"}
      public.customers.token: hash
      public.customers.dob: "null"
"""
    )
    (mask,) = policy_set.masks
    assert mask.who.everyone and mask.exempt is None and not mask.refuse_predicates
    assert mask.column("public", "customers", "email") == ColumnMask(strategy=MaskStrategy.EMAIL)
    ssn = mask.column("public", "customers", "ssn")
    assert ssn is not None and ssn.kept == (0, 4)
    note = mask.column("public", "customers", "note")
    assert note is not None and note.replacement == "[removed]"
    dob = mask.column("public", "customers", "dob")
    assert dob is not None and dob.strategy is MaskStrategy.NULL
    assert mask.column("public", "customers", "name") is None


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ('{"public.customers.email": "scramble"}', "Input should be 'redact'"),
        ('{"customers.email": "email"}', "schema.table.column"),
        ('{"public.*.email": "email"}', "schema.table.column"),
        ('{"public.c.e": {"strategy": "hash", "keep_last": 2}}', "belongs to the partial strategy"),
        ('{"public.c.e": {"strategy": "partial", "text": "x"}}', "belongs to the redact strategy"),
        ('{"public.c.e": {"strategy": "partial", "keep_first": -1}}', "greater than or equal to 0"),
        ("{}", "at least 1 item"),
    ],
)
def test_mask_errors(columns: str, message: str) -> None:
    from pgproxy.policy.model import Mask

    with pytest.raises(ValidationError, match=message):
        Mask.model_validate_json(f'{{"id": "m", "databases": ["app"], "columns": {columns}}}')


def test_exempting_everyone_is_refused() -> None:
    from pgproxy.policy.model import Mask

    with pytest.raises(ValidationError, match="exempts everyone"):
        Mask.model_validate({"id": "m", "databases": ["a"], "exempt": {"everyone": True}, "columns": {"a.b.c": "hash"}})


@pytest.mark.parametrize(
    ("session", "message"),
    [
        ({"upstream_role": "bad role"}, "role name"),
        ({"upstream_role": "x" * 64}, "role name"),
        ({"limits": {}}, "set max_rows"),
        ({"limits": {"max_rows": 0}}, "greater than"),
        ({"limits": {"max_rows": "10"}}, "valid integer"),
        ({"read_only": 1}, "valid boolean"),
    ],
)
def test_session_errors(session: dict[str, object], message: str) -> None:
    from pgproxy.policy.model import SessionSettings

    with pytest.raises(ValidationError, match=message):
        SessionSettings.model_validate({"id": "s", "who": {"everyone": True}, "databases": ["a"], **session})


def test_ids_are_unique_across_rules_sessions_and_masks() -> None:
    r = rule(id="same")
    with pytest.raises(ValueError, match="duplicate id 'same'"):
        PolicySet(rules=(r, r))
    from pgproxy.policy.model import SessionSettings

    session = SessionSettings.model_validate({"id": "same", "who": {"everyone": True}, "databases": ["a"]})
    with pytest.raises(ValueError, match="duplicate id 'same'"):
        PolicySet(rules=(r,), sessions=(session,))
