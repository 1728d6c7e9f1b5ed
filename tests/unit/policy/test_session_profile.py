"""Who may connect, and how their session runs."""

from __future__ import annotations

import pytest

from pgproxy.policy.engine import session_profile
from pgproxy.policy.model import Limits
from tests.unit.policy.build import policy, who

POLICY = policy(
    """
rules:
  - {id: readers, who: {groups: [readers]}, databases: [app], categories: [read, session, transaction, export],
     effect: allow}
  - {id: writers, who: {groups: [writers]}, databases: [app], categories: [read, write], effect: allow}
  - {id: ddl-held, who: {groups: [migrators]}, databases: [app], categories: [ddl], effect: require_approval,
     approval: {approvers: {groups: [dba]}}}
  - {id: denied-only, who: {groups: [blocked]}, databases: [app], categories: ['*'], effect: deny}
  - {id: pinned-rw, who: {groups: [pinned]}, databases: [app], categories: [read], effect: allow}
sessions:
  - id: pinned
    who: {groups: [pinned]}
    databases: [app]
    read_only: false
    upstream_role: app_writer
  - id: readers-first
    who: {groups: [readers]}
    databases: [app]
    limits: {max_rows: 100}
  - id: readers-second
    who: {groups: [readers, writers]}
    databases: ['*']
    upstream_role: never_used_for_readers
    limits: {max_rows: 5}
masks:
  - id: pii
    databases: [app]
    exempt: {groups: [dba]}
    columns: {public.customers.email: email}
  - id: writers-only
    databases: [app]
    who: {groups: [writers]}
    columns: {public.orders.amount: {strategy: redact, text: hidden}}
  - id: other-db
    databases: [billing]
    columns: {public.invoices.iban: hash}
"""
)


@pytest.mark.parametrize(
    ("groups", "database", "read_only"),
    [
        (("readers",), "app", True),  # read, session, transaction, export: all read-only categories
        (("writers",), "app", False),
        (("migrators",), "app", False),  # require_approval grants count too
        (("readers", "writers"), "app", False),
        (("pinned",), "app", False),  # explicit read_only wins over derivation
    ],
)
def test_read_only(groups: tuple[str, ...], database: str, read_only: bool) -> None:
    profile = session_profile(POLICY, who(groups=groups), database)
    assert profile is not None and profile.read_only is read_only


@pytest.mark.parametrize(
    ("groups", "database"),
    [((), "app"), (("readers",), "billing"), (("blocked",), "app"), (("dba",), "app")],
)
def test_refused_without_an_allow_or_approval_rule(groups: tuple[str, ...], database: str) -> None:
    assert session_profile(POLICY, who(groups=groups), database) is None


def test_first_matching_session_settings_apply() -> None:
    profile = session_profile(POLICY, who(groups=("readers",)), "app")
    assert profile is not None
    assert (profile.settings_id, profile.limits, profile.upstream_role) == ("readers-first", Limits(max_rows=100), None)
    writer = session_profile(POLICY, who(groups=("writers",)), "app")
    assert writer is not None
    assert (writer.settings_id, writer.upstream_role) == ("readers-second", "never_used_for_readers")
    pinned = session_profile(POLICY, who(groups=("pinned",)), "app")
    assert pinned is not None and (pinned.settings_id, pinned.limits) == ("pinned", None)
    migrator = session_profile(POLICY, who(groups=("migrators",)), "app")
    assert migrator is not None and (migrator.settings_id, migrator.limits, migrator.upstream_role) == (
        None,
        None,
        None,
    )


def test_masks_that_apply() -> None:
    def mask_ids(*groups: str) -> list[str]:
        profile = session_profile(POLICY, who(groups=groups), "app")
        assert profile is not None
        return [mask.id for mask in profile.masks]

    assert mask_ids("readers") == ["pii"]
    assert mask_ids("writers") == ["pii", "writers-only"]
    assert mask_ids("writers", "dba") == ["writers-only"]  # exempt wins over who


def test_rule_ids_list_every_rule_naming_the_identity_and_database() -> None:
    profile = session_profile(POLICY, who(groups=("readers", "blocked")), "app")
    assert profile is not None
    assert profile.rule_ids == ("readers", "denied-only")
    narrowed = POLICY.subset(profile.rule_ids)
    assert [rule.id for rule in narrowed.rules] == ["readers", "denied-only"]
