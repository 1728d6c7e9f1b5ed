"""The example policies in ``policies/`` load, pass ``policy check`` without warnings and pass their own tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgproxy.cli import main
from pgproxy.policy.engine import Effect, decide_all, session_profile
from pgproxy.policy.loader import load_policy_dir
from pgproxy.sql.classify import Classifier
from tests.unit.policy.build import who

POLICIES = Path(__file__).resolve().parents[3] / "policies"


def test_they_load() -> None:
    policy_set = load_policy_dir(POLICIES)
    assert {"agents-read", "ci-migrations", "dba-break-glass"} <= set(policy_set.rules_by_id)


def test_check_is_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(POLICIES)]) == 0
    out = capsys.readouterr().out
    assert "warning" not in out
    assert out.endswith("no problems found\n")


def test_their_tests_pass(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["policy", "test", str(POLICIES)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "FAIL" not in out
    assert out.endswith(" passed, 0 failed\n")


def test_explain_with_the_real_classifier(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "policy", "explain", "--policies", str(POLICIES), "--sub", "agent-7", "--group", "ai-agents",
            "--database", "demo", "SELECT email FROM customers; GRANT ALL ON orders TO PUBLIC",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "statement 1: SELECT\n  category: read\n  reads: customers\n" in out
    assert "  decision: allow by rule agents-read\n" in out
    assert "statement 2: GRANT\n  category: privilege\n" in out
    assert "  masked columns: public.customers.email (customer-contact-details), " in out
    assert out.endswith("message: deny by rule agents-no-privilege (decided by statement 2)\n")


@pytest.mark.parametrize(
    ("groups", "database", "sql", "effect", "rule"),
    [
        (("ai-agents",), "demo", "SELECT name, country FROM customers ORDER BY created_at", "allow", "agents-read"),
        (("ai-agents",), "demo", "SELECT nextval('orders_id_seq')", "deny", "pgproxy:default-deny"),
        (("ai-agents",), "demo", "EXPLAIN ANALYZE DELETE FROM orders", "deny", "pgproxy:default-deny"),
        (("ai-agents",), "demo", "SET search_path = evil, public", "deny", "agents-no-privilege"),
        (("ai-agents",), "demo", "SELECT * INTO copy_of_customers FROM customers", "require_approval",
         "agents-ddl-and-exports"),
        (("ci-deployers",), "demo", "INSERT INTO orders (customer_id, amount) VALUES (1, 9.99)", "require_approval",
         "ci-migrations"),
        (("dba",), "demo", "COPY orders FROM STDIN", "allow", "dba-direct"),
        (("dba",), "demo", "COPY orders TO '/tmp/orders.csv'", "deny", "pgproxy:refused"),
        (("dba",), "demo", "DO $$ BEGIN PERFORM 1; END $$", "deny", "pgproxy:default-deny"),
        (("dba-break-glass",), "demo", "DO $$ BEGIN PERFORM 1; END $$", "allow", "dba-break-glass"),
        (("dba-break-glass",), "demo", "SELEC oops", "deny", "pgproxy:default-deny"),
    ],
)  # fmt: skip
def test_example_decisions(groups: tuple[str, ...], database: str, sql: str, effect: str, rule: str) -> None:
    policy_set = load_policy_dir(POLICIES)
    identity = who("someone", groups=groups)
    profile = session_profile(policy_set, identity, database)
    assert profile is not None
    statements = Classifier().classify(sql).statements
    decision = decide_all(policy_set, identity, database, statements, read_only=profile.read_only)
    assert (decision.effect, decision.rule_id) == (Effect(effect), rule), decision.reason
