"""Which rule decides: refusals, read-only sessions, deny > require_approval > allow, default deny."""

from __future__ import annotations

import itertools

import pytest

from pgproxy.policy.engine import (
    DEFAULT_DENY,
    MIXED_APPROVALS,
    READ_ONLY_SESSION,
    REFUSED,
    Decision,
    Effect,
    decide,
    decide_all,
)
from pgproxy.policy.model import PolicySet
from pgproxy.sql.statement import Category, Flag, Statement
from tests.unit.policy.build import policy, stmt, who

AGENT = who("agent-7", email="agent7@example.com", groups=("ai-agents",))

RULE_TEMPLATES = {
    "allow": "  - {{id: r-{n}, who: {{groups: [ai-agents]}}, databases: [app], categories: [read], effect: allow}}\n",
    "deny": "  - {{id: r-{n}, who: {{groups: [ai-agents]}}, databases: [app], categories: [read], effect: deny}}\n",
    "require_approval": (
        "  - {{id: r-{n}, who: {{groups: [ai-agents]}}, databases: [app], categories: [read],"
        " effect: require_approval, approval: {{approvers: {{groups: [dba]}}}}}}\n"
    ),
}
STRICTNESS = ["allow", "require_approval", "deny"]


def rules_in_order(*effects: str) -> PolicySet:
    return policy("rules:\n" + "".join(RULE_TEMPLATES[e].format(n=n) for n, e in enumerate(effects)))


def judge(policy_set: PolicySet, statement: Statement, *, read_only: bool = False) -> Decision:
    return decide(policy_set, AGENT, "app", statement, read_only=read_only)


@pytest.mark.parametrize(("first", "second"), list(itertools.product(STRICTNESS, repeat=2)))
def test_every_pair_of_effects_in_either_order(first: str, second: str) -> None:
    decision = judge(rules_in_order(first, second), stmt(Category.READ))
    winner = max((first, second), key=STRICTNESS.index)
    assert decision.effect == Effect(winner)
    # Among rules of the winning effect, the first in order decides.
    assert decision.rule_id == ("r-0" if first == winner else "r-1")


def test_nothing_matches_is_default_deny_with_reason_and_hint() -> None:
    policy_set = rules_in_order("allow")
    decision = judge(policy_set, stmt(Category.WRITE, "UPDATE", writes=("public.orders",)))
    assert decision.effect is Effect.DENY
    assert decision.rule_id == DEFAULT_DENY
    assert decision.reason == (
        "no policy rule allows write statements for agent7@example.com on database app "
        "(UPDATE (write) on public.orders)"
    )
    assert decision.hint == "you may run read-only queries (SELECT, SHOW, EXPLAIN) on database app"
    assert decision.approval is None and not decision.notify


def test_default_deny_for_an_identity_no_rule_names() -> None:
    decision = decide(rules_in_order("allow"), who("stranger"), "app", stmt(Category.READ), read_only=True)
    assert decision.rule_id == DEFAULT_DENY
    assert "stranger" in decision.reason
    assert decision.hint == "no policy rule lets stranger run statements on database app; ask an administrator"


def test_default_deny_on_another_database() -> None:
    decision = decide(rules_in_order("allow"), AGENT, "billing", stmt(Category.READ), read_only=False)
    assert decision.rule_id == DEFAULT_DENY


def test_refusal_beats_even_an_allow_everything_rule() -> None:
    policy_set = policy(
        "rules: [{id: all, who: {everyone: true}, databases: ['*'], categories: ['*', unknown], effect: allow}]"
    )
    refused = stmt(Category.IMPORT, "COPY", refusal="COPY … PROGRAM runs a program on the database server")
    decision = judge(policy_set, refused)
    assert (decision.effect, decision.rule_id) == (Effect.DENY, REFUSED)
    assert (
        decision.reason == "COPY is refused whatever the policy: COPY … PROGRAM runs a program on the database server"
    )
    assert decision.statement is refused


def test_read_write_transaction_in_a_read_only_session() -> None:
    policy_set = policy(
        "rules: [{id: tx, who: {everyone: true}, databases: [app], categories: [transaction], effect: allow}]"
    )
    begin = stmt(Category.TRANSACTION, "BEGIN", flags=(Flag.READ_WRITE_TRANSACTION,))
    assert judge(policy_set, begin, read_only=True).rule_id == READ_ONLY_SESSION
    assert judge(policy_set, begin, read_only=False).rule_id == "tx"
    assert judge(policy_set, stmt(Category.TRANSACTION), read_only=True).rule_id == "tx"


def test_refusal_comes_before_the_read_only_check() -> None:
    statement = stmt(Category.TRANSACTION, flags=(Flag.READ_WRITE_TRANSACTION,), refusal="no")
    assert judge(rules_in_order("allow"), statement, read_only=True).rule_id == REFUSED


class TestUnknown:
    def test_star_does_not_cover_unknown(self) -> None:
        policy_set = policy(
            "rules: [{id: all, who: {everyone: true}, databases: [app], categories: ['*'], effect: allow}]"
        )
        decision = judge(policy_set, stmt(Category.UNKNOWN))
        assert decision.rule_id == DEFAULT_DENY
        assert "could not classify" in decision.reason

    def test_only_a_rule_naming_unknown_allows_it(self) -> None:
        policy_set = policy(
            "rules: [{id: u, who: {everyone: true}, databases: [app], categories: [unknown], effect: allow}]"
        )
        assert judge(policy_set, stmt(Category.UNKNOWN)).rule_id == "u"

    def test_star_deny_does_not_deny_unknown_but_default_deny_does(self) -> None:
        policy_set = policy(
            "rules: [{id: d, who: {everyone: true}, databases: [app], categories: ['*'], effect: deny}]"
        )
        assert judge(policy_set, stmt(Category.UNKNOWN)).rule_id == DEFAULT_DENY
        assert judge(policy_set, stmt(Category.READ)).rule_id == "d"


class TestDecisionText:
    POLICY = """
rules:
  - id: agents-read
    who: {groups: [ai-agents]}
    databases: [app]
    categories: [read, session, transaction]
    effect: allow
  - id: agents-ddl
    who: {groups: [ai-agents]}
    databases: [app]
    categories: [ddl, export]
    effect: require_approval
    reason: schema changes are reviewed.
    approval: {approvers: {groups: [dba]}, quorum: 2, timeout: 30m}
  - id: agents-no-grants
    who: {groups: [ai-agents]}
    databases: [app]
    categories: [privilege]
    effect: deny
    reason: agents never change grants.
  - id: break-glass
    who: {groups: [break-glass]}
    databases: [app]
    categories: ['*']
    effect: allow
    notify: true
"""

    def test_deny_names_command_category_rule_and_reason(self) -> None:
        decision = judge(policy(self.POLICY), stmt(Category.PRIVILEGE, "GRANT", writes=("public.customers",)))
        assert decision.reason == (
            "GRANT (privilege) on public.customers is denied by policy rule agents-no-grants: "
            "agents never change grants."
        )
        assert decision.hint == (
            "you may run read-only queries (SELECT, SHOW, EXPLAIN) on database app; "
            "schema changes (CREATE, ALTER, DROP, TRUNCATE) and exports (COPY … TO STDOUT) need approval from group dba"
        )

    def test_require_approval_carries_the_requirement(self) -> None:
        decision = judge(policy(self.POLICY), stmt(Category.DDL, "DROP TABLE", writes=("public.orders",)))
        assert decision.effect is Effect.REQUIRE_APPROVAL
        assert decision.approval is not None
        assert decision.approval.quorum == 2
        assert decision.approval.timeout_seconds == 1800
        assert decision.approval.approvers.groups == frozenset({"dba"})
        assert decision.reason == (
            "DROP TABLE (ddl) on public.orders needs approval under policy rule agents-ddl: "
            "schema changes are reviewed."
        )
        assert decision.hint == (
            "this statement runs once it has 2 approvals from different people from group dba (not you); "
            "the request expires after 30 minutes"
        )

    def test_allow_has_no_hint_and_notify_comes_from_the_rule(self) -> None:
        allowed = judge(policy(self.POLICY), stmt(Category.READ, reads=("public.customers",)))
        assert (allowed.effect, allowed.hint, allowed.notify) == (Effect.ALLOW, None, False)
        assert allowed.reason == "SELECT (read) on public.customers is allowed by policy rule agents-read"
        glass = decide(
            policy(self.POLICY), who("ops", groups=("break-glass",)), "app", stmt(Category.PRIVILEGE), read_only=False
        )
        assert (glass.rule_id, glass.notify) == ("break-glass", True)

    def test_rule_hint_overrides_the_generated_one(self) -> None:
        policy_set = policy(
            "rules: [{id: d, who: {everyone: true}, databases: [app], categories: [write], effect: deny,"
            " hint: use the staging database}]"
        )
        assert judge(policy_set, stmt(Category.WRITE)).hint == "use the staging database"


class TestMultiStatement:
    POLICY = TestDecisionText.POLICY

    def test_strictest_wins_and_names_its_statement(self) -> None:
        read, ddl, grant = stmt(Category.READ), stmt(Category.DDL), stmt(Category.PRIVILEGE)
        policy_set = policy(self.POLICY)
        assert decide_all(policy_set, AGENT, "app", [read, ddl], read_only=False).statement is ddl
        decision = decide_all(policy_set, AGENT, "app", [read, ddl, grant, read], read_only=False)
        assert (decision.effect, decision.statement) == (Effect.DENY, grant)
        assert decide_all(policy_set, AGENT, "app", [read, read], read_only=False).effect is Effect.ALLOW

    def test_ties_go_to_the_first_statement(self) -> None:
        first, second = stmt(Category.WRITE, "INSERT"), stmt(Category.WRITE, "DELETE")
        decision = decide_all(policy(self.POLICY), AGENT, "app", [first, second], read_only=False)
        assert decision.statement is first

    def test_different_approval_requirements_are_denied_together(self) -> None:
        policy_set = policy(
            self.POLICY
            + """
  - id: agents-import
    who: {groups: [ai-agents]}
    databases: [app]
    categories: [import]
    effect: require_approval
    approval: {approvers: {groups: [security]}}
"""
        )
        ddl, copy_in = stmt(Category.DDL), stmt(Category.IMPORT)
        decision = decide_all(policy_set, AGENT, "app", [ddl, copy_in], read_only=False)
        assert (decision.effect, decision.rule_id) == (Effect.DENY, MIXED_APPROVALS)
        same = decide_all(policy_set, AGENT, "app", [ddl, stmt(Category.EXPORT)], read_only=False)
        assert (same.effect, same.rule_id) == (Effect.REQUIRE_APPROVAL, "agents-ddl")

    def test_notify_of_any_allowed_statement_marks_the_message(self) -> None:
        policy_set = policy(
            self.POLICY + "  - {id: glass-ddl, who: {groups: [ai-agents]}, databases: [app], categories: [utility],"
            " effect: allow, notify: true}\n"
        )
        decision = decide_all(policy_set, AGENT, "app", [stmt(Category.READ), stmt(Category.UTILITY)], read_only=False)
        assert (decision.effect, decision.rule_id, decision.notify) == (Effect.ALLOW, "agents-read", True)

    def test_an_empty_message_needs_no_decision(self) -> None:
        with pytest.raises(ValueError, match="at least one statement"):
            decide_all(policy(self.POLICY), AGENT, "app", [], read_only=False)
