"""Loading a policy directory: every problem reported with file, line and field path."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgproxy.policy.loader import PolicyLoadError, Problem, load_policy_dir, load_yaml_text
from pgproxy.policy.model import PolicyFile, Source

GOOD = """\
rules:
  - id: agents-read
    who: {groups: [ai-agents]}
    databases: [app]
    categories: [read]
    effect: allow
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def problems(directory: Path) -> list[str]:
    with pytest.raises(PolicyLoadError) as caught:
        load_policy_dir(directory)
    assert str(caught.value) == "\n".join(str(p) for p in caught.value.problems)
    return [str(problem) for problem in caught.value.problems]


def test_loads_yaml_and_yml_files_sorted_ignoring_subdirectories_and_other_files(tmp_path: Path) -> None:
    write(tmp_path, "b.yml", GOOD.replace("agents-read", "b-rule"))
    write(tmp_path, "a.yaml", GOOD.replace("agents-read", "a-rule"))
    write(tmp_path, "notes.txt", "not: [valid")
    (tmp_path / "tests").mkdir()
    write(tmp_path / "tests", "cases.yaml", "cases: nonsense")
    policy_set = load_policy_dir(tmp_path)
    assert [rule.id for rule in policy_set.rules] == ["a-rule", "b-rule"]
    assert policy_set.source("b-rule") == Source(str(tmp_path / "b.yml"), 2)


def test_missing_directory(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope") == [f"{tmp_path / 'nope'}: policy directory does not exist"]


def test_a_file_is_not_a_directory(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", GOOD)
    assert problems(path) == [f"{path}: policy directory is not a directory"]


def test_empty_directory(tmp_path: Path) -> None:
    write(tmp_path, "README.md", "# policies")
    assert problems(tmp_path) == [f"{tmp_path}: no policy files (*.yaml, *.yml) in this directory"]


def test_files_without_rules(tmp_path: Path) -> None:
    write(tmp_path, "empty.yaml", "# nothing yet\n")
    write(tmp_path, "sessions.yaml", "sessions: [{id: s, who: {everyone: true}, databases: [app]}]\n")
    assert problems(tmp_path) == [f"{tmp_path}: the policy set has no rules: every statement would be denied"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            GOOD.replace("effect: allow", "effect: alow"),
            "p.yaml:6: rules[0].effect: Input should be 'allow', 'deny' or 'require_approval'",
        ),
        (GOOD.replace("    effect: allow\n", ""), "p.yaml:2: rules[0].effect: required field is missing"),
        (
            GOOD.replace("[read]", "[read, wirte]"),
            "p.yaml:5: rules[0].categories[1]: unknown category 'wirte'; expected one of read, write, ddl, privilege, "
            "export, import, session, transaction, procedural, utility, unknown, or '*'",
        ),
        (GOOD + "    efect: deny\n", "p.yaml:7: rules[0].efect: unknown field 'efect' (did you mean 'effect'?)"),
        (
            GOOD + "    colour: red\n",
            "p.yaml:7: rules[0].colour: unknown field 'colour'; expected one of id, description, who, databases, "
            "tables, "
            "categories, effect, reason, hint, approval, notify",
        ),
        (GOOD + "polices: []\n", "p.yaml:7: polices: unknown field 'polices'; expected one of rules, sessions, masks"),
        (
            GOOD.replace("{groups: [ai-agents]}", "{groups: [ai-agents], everyone: true}"),
            "p.yaml:3: rules[0].who: 'everyone: true' cannot be combined with other fields",
        ),
        (
            GOOD.replace("{groups: [ai-agents]}", "\n      emails: [ann]"),
            "p.yaml:4: rules[0].who.emails[0]: 'ann' is not an email address",
        ),
        (
            GOOD.replace("effect: allow", "effect: require_approval"),
            "p.yaml:2: rules[0].approval: a require_approval rule needs 'approval' (approvers, quorum, timeout)",
        ),
        (
            GOOD.replace(
                "effect: allow",
                "effect: require_approval\n    approval:\n      approvers: {groups: [dba]}\n      timeout: soon",
            ),
            "p.yaml:9: rules[0].approval.timeout: 'soon' is not a duration; write seconds or a text such as '90s', "
            "'30m', '2h', '1h30m'",
        ),
        (
            GOOD.replace("databases: [app]", "databases: []"),
            "p.yaml:4: rules[0].databases: must list at least one entry",
        ),
        (
            GOOD.replace("databases: [app]", "databases: [app, 5]"),
            "p.yaml:4: rules[0].databases[1]: Input should be a valid string",
        ),
        (
            "rules:\n  - " + GOOD.split("- ", 1)[1] + "masks:\n  - id: m\n    databases: [app]\n    columns:\n"
            "      public.customers.email: scramble\n",
            "p.yaml:11: masks[0].columns[\"public.customers.email\"].strategy: Input should be 'redact', 'partial', "
            "'email', 'hash' or 'null'",
        ),
        (
            GOOD + "masks:\n  - id: m\n    databases: [app]\n    columns:\n      email: hash\n",
            "p.yaml:11: masks[0].columns.email: 'email' is not a 'schema.table.column' name (no patterns)",
        ),
        ("rules: {id: x}\n", "p.yaml:1: rules: Input should be a valid tuple"),
    ],
)
def test_validation_problems_name_file_line_and_field(tmp_path: Path, text: str, expected: str) -> None:
    write(tmp_path, "p.yaml", text)
    assert f"{tmp_path}/{expected}" in problems(tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "rules:\n  - id: a\n\teffect: allow\n",
            "p.yaml:3: invalid YAML: while scanning for the next token found "
            "character '\\t' that cannot start any token (indent with spaces, not tabs)",
        ),
        (
            "rules: [\n",
            "p.yaml:2: invalid YAML: while parsing a flow node expected the node content, but found '<stream end>'",
        ),
        (
            GOOD + "---\n" + GOOD,
            "p.yaml:7: invalid YAML: expected a single document in the stream but found another document",
        ),
        ("- just\n- a list\n", "p.yaml:1: the file must be a mapping (e.g. 'rules: [...]')"),
        (GOOD + "    databases: [demo]\n", "p.yaml:7: rules[0].databases: duplicate key (first at line 4)"),
        (GOOD + "rules: []\n", "p.yaml:7: rules: duplicate key (first at line 1)"),
        (
            GOOD.replace("who:", "on:"),
            "p.yaml:3: rules[0]: keys must be plain text (quote keys such as 'on', 'yes', '1')",
        ),
        (
            "rules: !!python/object:os.system {}\n",
            "p.yaml:1: invalid YAML: could not determine a constructor for the "
            "tag 'tag:yaml.org,2002:python/object:os.system'",
        ),
    ],
)
def test_yaml_problems_name_file_and_line(tmp_path: Path, text: str, expected: str) -> None:
    write(tmp_path, "p.yaml", text)
    assert problems(tmp_path) == [f"{tmp_path}/{expected}"]


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_bytes(b"rules: [\xff]\n")
    assert problems(tmp_path) == [f"{tmp_path}/p.yaml: not UTF-8 text (invalid start byte at byte 8)"]


def test_duplicate_ids_within_and_across_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", GOOD + GOOD.split("\n", 1)[1])
    write(
        tmp_path,
        "b.yaml",
        "sessions:\n  - id: agents-read\n    who: {everyone: true}\n    databases: [app]\n",
    )
    assert problems(tmp_path) == [
        f"{tmp_path}/a.yaml:7: rules[1].id: duplicate id 'agents-read' (first defined at {tmp_path}/a.yaml:2)",
        f"{tmp_path}/b.yaml:2: sessions[0].id: duplicate id 'agents-read' (first defined at {tmp_path}/a.yaml:2)",
    ]


def test_every_broken_file_is_reported_at_once(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", GOOD.replace("allow", "permit"))
    write(tmp_path, "b.yaml", "rules: [")
    write(tmp_path, "c.yaml", GOOD.replace("agents-read", "c"))
    found = problems(tmp_path)
    assert [line.split(":")[0] for line in found] == [str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")]


def test_anchors_and_merge_keys_keep_their_lines(tmp_path: Path) -> None:
    text = """\
defaults: &agents
  who: {groups: [ai-agents]}
  databases: [app]
rules:
  - <<: *agents
    id: a
    categories: [read]
    effect: allow
"""
    # Merge keys work, but unknown top-level keys (the anchor's holder) are still refused.
    write(tmp_path, "p.yaml", text)
    assert problems(tmp_path) == [
        f"{tmp_path}/p.yaml:1: defaults: unknown field 'defaults'; expected one of rules, sessions, masks"
    ]
    write(
        tmp_path,
        "p.yaml",
        text.replace(
            "defaults: &agents\n  who",
            "rules:\n  - &agents\n    id: base\n    categories: [read]\n    effect: allow\n    who",
        ).replace("  databases: [app]\nrules:\n", "    databases: [app]\n"),
    )
    policy_set = load_policy_dir(tmp_path)
    assert [(rule.id, rule.databases) for rule in policy_set.rules] == [("base", ("app",)), ("a", ("app",))]


def test_problem_without_line_or_path() -> None:
    assert str(Problem("x.yaml", None, "", "gone")) == "x.yaml: gone"
    assert str(Problem("x.yaml", 3, "rules", "bad")) == "x.yaml:3: rules: bad"


def test_load_yaml_text_of_an_empty_document_uses_defaults() -> None:
    model, root = load_yaml_text("", PolicyFile, "empty.yaml")
    assert model == PolicyFile() and root is None
