"""``pgproxy policy check | explain | test`` through ``pgproxy.cli.main``, with a stand-in classifier."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgproxy.cli import main
from pgproxy.policy import tooling
from pgproxy.sql.statement import Category, Classification, Flag
from tests.unit.policy.build import stmt

POLICY = """\
rules:
  - id: agents-read
    who: {groups: [ai-agents]}
    databases: [app]
    tables: [public.*]
    categories: [read, transaction]
    effect: allow
  - id: agents-ddl
    who: {groups: [ai-agents]}
    databases: [app]
    categories: [ddl]
    effect: require_approval
    approval: {approvers: {groups: [dba]}, timeout: 1h}
  - id: agents-no-grants
    who: {groups: [ai-agents]}
    databases: [app]
    categories: [privilege]
    effect: deny
sessions:
  - id: agents
    who: {groups: [ai-agents]}
    databases: [app]
    limits: {max_rows: 500}
masks:
  - id: pii
    databases: [app]
    columns: {public.customers.email: email}
"""

CLASSIFIED = {
    "SELECT name FROM customers": (stmt(Category.READ, reads=("customers",)),),
    "DROP TABLE orders": (stmt(Category.DDL, "DROP TABLE", writes=("orders",)),),
    "GRANT ALL ON orders TO x": (stmt(Category.PRIVILEGE, "GRANT", writes=("orders",)),),
    "SELECT 1; DROP TABLE orders": (stmt(Category.READ), stmt(Category.DDL, "DROP TABLE", writes=("orders",))),
    "BEGIN READ WRITE": (stmt(Category.TRANSACTION, flags=(Flag.READ_WRITE_TRANSACTION,)),),
}


def fake_classify(sql: str) -> Classification:
    return Classification(CLASSIFIED.get(sql, (stmt(Category.UNKNOWN),)))


@pytest.fixture(autouse=True)
def stand_in_classifier(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tooling, "default_classify", lambda: fake_classify)


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    (tmp_path / "agents.yaml").write_text(POLICY, encoding="utf-8")
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["policy", *argv])
    out, err = capsys.readouterr()
    return code, out + err


class TestCheck:
    def test_clean_policy(self, policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
        code, out = run(capsys, "check", str(policies))
        assert code == 0
        assert out == (
            f"{policies}/agents.yaml\n"
            "  rule agents-read: allow; who: groups=ai-agents; databases: app; categories: read, transaction; "
            "tables: public.*\n"
            "  rule agents-ddl: require_approval; who: groups=ai-agents; databases: app; categories: ddl; "
            "approvers: groups=dba (quorum 1, timeout 1 hour)\n"
            "  rule agents-no-grants: deny; who: groups=ai-agents; databases: app; categories: privilege\n"
            "  session agents; who: groups=ai-agents; databases: app; limits: max_rows=500\n"
            "  mask pii; who: everyone; databases: app; columns: public.customers.email=email\n"
            "1 file, 3 rules, 1 session setting, 1 mask: no problems found\n"
        )

    def test_warnings_fail_the_check(self, policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
        (policies / "zz-late.yaml").write_text(
            "rules:\n"
            "  - {id: agents-grant, who: {groups: [ai-agents]}, databases: [app], categories: [privilege],"
            " effect: allow}\n",
            encoding="utf-8",
        )
        (policies / "empty.yml").write_text("# reserved\n", encoding="utf-8")
        code, out = run(capsys, "check", str(policies))
        assert code == 1
        assert f"{policies}/empty.yml\n  (no entries)\n" in out
        assert (
            f"{policies}/zz-late.yaml:2: warning: agents-grant never decides anything: every statement it matches is "
            "decided by rule agents-no-grants\n"
        ) in out
        assert out.endswith("3 files, 4 rules, 1 session setting, 1 mask: 1 warning\n")

    def test_load_errors(self, policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
        (policies / "agents.yaml").write_text(POLICY.replace("effect: deny", "effect: nope"), encoding="utf-8")
        code, out = run(capsys, "check", str(policies))
        assert code == 1
        assert out == (
            f"{policies}/agents.yaml:18: rules[2].effect: Input should be 'allow', 'deny' or 'require_approval'\n"
            f"policies in {policies} do not load: 1 problem\n"
        )

    def test_missing_directory(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        code, out = run(capsys, "check", str(tmp_path / "none"))
        assert code == 1
        assert "policy directory does not exist" in out


class TestExplain:
    def test_allowed_read(self, policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
        code, out = run(
            capsys,
            "explain",
            "--policies",
            str(policies),
            "--sub",
            "agent-7",
            "--email",
            "a7@example.com",
            "--group",
            "ai-agents",
            "--database",
            "app",
            "SELECT name FROM customers",
        )
        assert code == 0
        assert out == (
            "identity: subject=agent-7 issuer=https://issuer.invalid/ email=a7@example.com groups=ai-agents\n"
            "database: app\n"
            "session: admitted\n"
            "  read-only: no\n"
            "  upstream role: (pgproxy's own login)\n"
            "  limits: max_rows=500\n"
            "  masked columns: public.customers.email (pii)\n"
            "  rules that apply: agents-read, agents-ddl, agents-no-grants\n"
            "  session settings: agents\n"
            "statement 1: SELECT\n"
            "  category: read\n"
            "  reads: customers\n"
            "  writes: -\n"
            "  functions: -\n"
            "  flags: -\n"
            "  decision: allow by rule agents-read\n"
            "  reason: SELECT (read) on customers is allowed by policy rule agents-read\n"
        )

    def test_multi_statement_with_identity_spec(self, policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
        code, out = run(
            capsys,
            "explain",
            "--policies",
            str(policies),
            "--identity",
            "{sub: agent-7, groups: [ai-agents]}",
            "-d",
            "app",
            "SELECT 1; DROP TABLE orders",
        )
        assert code == 0
        assert "statement 2: DROP TABLE\n  category: ddl\n  reads: -\n  writes: orders\n" in out
        assert "  decision: require_approval by rule agents-ddl\n" in out
        assert "  approval: 1 approval from group dba within 1 hour\n" in out
        assert out.endswith("message: require_approval by rule agents-ddl (decided by statement 2)\n")

    def test_refused_session_still_explains(self, policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
        code, out = run(
            capsys, "explain", "--policies", str(policies), "--email", "x@example.com", "-d", "app", "BEGIN READ WRITE"
        )
        assert code == 0
        assert "session: refused (no allow or require_approval rule names this identity on database app)\n" in out
        assert "  flags: read_write_transaction\n  decision: deny by rule pgproxy:read-only-session\n" in out

    def test_bad_identity_spec(self, policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
        code, out = run(
            capsys,
            "explain",
            "--policies",
            str(policies),
            "--identity",
            "{sub: a, group: [x]}",
            "-d",
            "app",
            "SELECT 1",
        )
        assert code == 2
        assert "--identity:1: group: unknown field 'group' (did you mean 'groups'?)" in out

    def test_load_error(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        code, out = run(capsys, "explain", "--policies", str(tmp_path), "--sub", "a", "-d", "app", "SELECT 1")
        assert (code, out) == (
            1,
            f"{tmp_path}: no policy files (*.yaml, *.yml) in this directory\n"
            f"policies in {tmp_path} do not load: 1 problem\n",
        )


CASES = """\
cases:
  - name: agents read
    identity: {sub: agent-7, groups: [ai-agents]}
    database: app
    sql: SELECT name FROM customers
    expect: allow
  - name: agents drop with approval
    identity: {sub: agent-7, groups: [ai-agents]}
    database: app
    sql: DROP TABLE orders
    expect: {effect: require_approval, rule: agents-ddl}
  - name: strangers are refused
    identity: {sub: stranger}
    database: app
    expect: {connect: false}
  - name: agents session
    identity: {sub: agent-7, groups: [ai-agents]}
    database: app
    expect: {connect: true, read_only: false}
"""


class TestTest:
    def test_passing_cases(self, policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
        (policies / "tests").mkdir()
        (policies / "tests" / "agents.yaml").write_text(CASES, encoding="utf-8")
        code, out = run(capsys, "test", str(policies))
        assert code == 0
        assert out == (
            f"{policies}/tests/agents.yaml\n"
            "  ok   agents read: allow by rule agents-read\n"
            "  ok   agents drop with approval: require_approval by rule agents-ddl\n"
            "  ok   strangers are refused: session refused\n"
            "  ok   agents session: session admitted (read-only: no)\n"
            "4 passed, 0 failed\n"
        )

    def test_failing_cases(self, policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
        (policies / "tests").mkdir()
        (policies / "tests" / "agents.yaml").write_text(
            CASES.replace("expect: allow", "expect: {effect: allow, rule: other}").replace(
                "expect: {connect: false}", "expect: {connect: true}"
            )
            + "  - name: grant\n    identity: {sub: s, groups: [ai-agents]}\n    database: app\n"
            "    sql: GRANT ALL ON orders TO x\n    expect: require_approval\n"
            + "  - name: refused but expects allow\n    identity: {sub: s}\n    database: app\n"
            "    sql: SELECT name FROM customers\n    expect: allow\n",
            encoding="utf-8",
        )
        code, out = run(capsys, "test", str(policies))
        assert code == 1
        assert "  FAIL agents read: allow by rule agents-read\n       expected rule other, got agents-read\n" in out
        assert "  FAIL strangers are refused: session refused\n       expected the session to be admitted\n" in out
        assert (
            "  FAIL grant: deny by rule agents-no-grants\n       expected require_approval: GRANT (privilege) on "
            "orders is denied by policy rule agents-no-grants\n"
        ) in out
        assert "  FAIL refused but expects allow: session refused, deny by rule pgproxy:default-deny\n" in out
        assert "expected allow, but the session is refused" in out
        assert out.endswith("2 passed, 4 failed\n")

    def test_case_file_errors(self, policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
        (policies / "tests").mkdir()
        (policies / "tests" / "a.yaml").write_text(CASES, encoding="utf-8")
        (policies / "tests" / "b.yaml").write_text(
            "cases:\n  - name: x\n    identity: {sub: a}\n    database: app\n    expect: {effect: allow}\n"
            "  - name: y\n    identity: {sub: a}\n    database: app\n    expect: {connect: false, effect: deny}\n",
            encoding="utf-8",
        )
        code, out = run(capsys, "test", str(policies))
        assert code == 1
        assert f"{policies}/tests/b.yaml:2: cases[0]: a case that expects a decision needs 'sql'\n" in out
        assert (
            f"{policies}/tests/b.yaml:9: cases[1].expect: 'connect: false' expects a refused session; it cannot also "
            "expect a decision\n"
        ) in out
        assert out.endswith("4 passed, 0 failed, 2 problems in test files\n")

    def test_no_tests(self, policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
        code, out = run(capsys, "test", str(policies))
        assert (code, out) == (1, f"{policies}/tests: no test files (*.yaml, *.yml)\n")


def test_identity_from_options_merges_flags_over_the_spec() -> None:
    identity = tooling.identity_from_options(
        spec="{sub: a, email: a@x.org, groups: [g1], iss: 'https://idp/'}", email="b@x.org", groups=["g2"]
    )
    assert (identity.subject, identity.email, identity.groups, identity.issuer) == (
        "a",
        "b@x.org",
        ("g1", "g2"),
        "https://idp/",
    )
    assert tooling.identity_from_options(email="e@x.org").subject == "e@x.org"
    assert tooling.identity_from_options().subject == "anonymous"
