"""The approver directory file: who a Slack user's verified email is to pgproxy, and how a bad file is
reported (file, line, field, as for policy files), including on reload."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pgproxy.approvals.directory import DIRECTORY_ISSUER, ApproverDirectory, DirectoryError, load_directory
from pgproxy.auth.identity import Identity
from pgproxy.policy.matching import identity_matches
from pgproxy.policy.model import Approvers

GOOD = """\
# who may approve from Slack
people:
  dba@example.com:
    name: Dana the DBA
    groups: [dba, oncall, dba]
  Ops.Lead@Example.COM:
    groups: [ops]
  auditor@example.com: {}
"""


def write(tmp_path: Path, text: str, name: str = "approvers.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(DirectoryError) as caught:
        load_directory(path)
    return str(caught.value).splitlines()


def test_each_email_becomes_a_directory_identity(tmp_path: Path) -> None:
    people = load_directory(write(tmp_path, GOOD))
    assert people == {
        "dba@example.com": Identity("dba@example.com", DIRECTORY_ISSUER, "dba@example.com", "Dana the DBA",
                                    ("dba", "oncall"), None),
        "ops.lead@example.com": Identity("ops.lead@example.com", DIRECTORY_ISSUER, "ops.lead@example.com", None,
                                         ("ops",), None),
        "auditor@example.com": Identity("auditor@example.com", DIRECTORY_ISSUER, "auditor@example.com", None, (),
                                        None),
    }


def test_lookups_ignore_case_and_the_identities_match_policy_approvers(tmp_path: Path) -> None:
    directory = ApproverDirectory(write(tmp_path, GOOD))
    dba = directory("DBA@Example.com")
    assert dba is not None and dba.email == "dba@example.com" and len(directory) == 3
    assert directory("nobody@example.com") is None
    assert identity_matches(Approvers(groups=frozenset({"dba"})), dba)
    assert identity_matches(Approvers(emails=frozenset({"dba@example.com"})), dba)
    ops = directory("ops.lead@example.com")
    assert ops is not None and not identity_matches(Approvers(groups=frozenset({"dba"})), ops)


def test_invalid_yaml_is_reported_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "people:\n  dba@example.com:\n    groups: [dba\n")
    [problem] = problems(path)
    assert problem.startswith(f"{path}:4: invalid YAML")


def test_unknown_fields_are_reported_with_file_line_and_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "people:\n  dba@example.com:\n    name: Dana\n    grups: [dba]\nteams: {}\n")
    assert problems(path) == [
        f"{path}:4: people[\"dba@example.com\"].grups: unknown field 'grups' (did you mean 'groups'?)",
        f"{path}:5: teams: unknown field 'teams'; expected one of people",
    ]


def test_wrong_types_missing_people_and_keys_that_are_not_emails(tmp_path: Path) -> None:
    path = write(tmp_path, "people:\n  dba@example.com:\n    groups: dba\n  dba-team:\n    groups: [dba]\n")
    assert problems(path) == [
        f"{path}:3: people[\"dba@example.com\"].groups: Input should be a valid list",
        f"{path}:4: people[\"dba-team\"]: 'dba-team' is not an email address",
    ]
    empty = write(tmp_path, "people: {}\n", "empty.yaml")
    assert problems(empty) == [f"{empty}:1: people: must list at least one entry"]
    blank = write(tmp_path, "", "blank.yaml")
    assert problems(blank) == [f"{blank}: people: required field is missing"]


def test_one_email_twice_is_refused_in_any_case(tmp_path: Path) -> None:
    path = write(tmp_path, "people:\n  dba@example.com: {groups: [dba]}\n  DBA@example.com: {groups: [admins]}\n")
    assert problems(path) == [f"{path}:3: people[\"DBA@example.com\"]: 'DBA@example.com' is listed twice "
                              "(first at line 2)"]
    duplicate = write(tmp_path, "people:\n  a@example.com: {}\n  a@example.com: {}\n", "duplicate.yaml")
    assert problems(duplicate) == [f"{duplicate}:3: people[\"a@example.com\"]: duplicate key (first at line 2)"]


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DirectoryError, match="cannot read"):
        ApproverDirectory(tmp_path / "absent.yaml")


def test_reload_takes_a_good_file_and_keeps_the_last_good_one_otherwise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, "people:\n  dba@example.com: {groups: [dba]}\n")
    directory = ApproverDirectory(path)
    assert directory.reload_if_changed() is False  # nothing changed

    path.write_text("people:\n  dba@example.com: {groups: [dba]}\n  new@example.com: {groups: [dba]}\n")
    assert directory.reload_if_changed() is True
    assert directory("new@example.com") is not None

    path.write_text("people:\n  dba@example.com: {grups: [dba]}\n")
    with caplog.at_level(logging.ERROR, logger="pgproxy.approvals.directory"):
        assert directory.reload() is False
    assert directory("new@example.com") is not None and len(directory) == 2
    assert f"{path}:2: people[\"dba@example.com\"].grups: unknown field" in caplog.text
    assert directory.reload_if_changed() is False  # the broken file is reported once, not at every check
