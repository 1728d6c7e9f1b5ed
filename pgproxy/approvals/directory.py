"""The approver directory: who a Slack user is to pgproxy, read from a YAML file the operator keeps.

A vote from Slack counts only for a person pgproxy can name. The Slack channel
(``pgproxy.approvals.slack``) learns the clicker's verified email from Slack and asks the directory for
the identity that policy ``approvers`` are matched against. The file maps emails to groups::

    people:
      dba@example.com:
        name: Dana Admin          # optional, shown with their votes
        groups: [dba]             # the groups policy rules name in approvers

:class:`ApproverDirectory` loads it into ``email (lower-cased) -> Identity`` with issuer
``slack-directory``, subject the lower-cased email, that email, the name and the groups, and is the
``directory`` callable of :class:`~pgproxy.approvals.slack.SlackChannel`. The file is validated with
pydantic and read with the policy loader's safe YAML reader, so a problem is reported with the file, the
line and the field (``people.yaml:4: people["dba@example.com"].grups: unknown field 'grups' (did you mean
'groups'?)``), as for policy files. Keys that are not email addresses, and one email listed twice in
different cases, are refused too. :meth:`~ApproverDirectory.reload` (on SIGHUP, or when the file
changed) replaces the entries only with a file that loads; otherwise the previous entries stay and the
problem is logged.

This module must not decide who may vote (the request model and the policy do, with the identity found
here) nor talk to Slack; an email missing here simply has no identity.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from pgproxy.auth.identity import Identity
from pgproxy.policy.loader import PolicyLoadError, Problem, load_yaml_file, locate

__all__ = ["DIRECTORY_ISSUER", "ApproverDirectory", "DirectoryError", "load_directory"]

log = logging.getLogger(__name__)

DIRECTORY_ISSUER = "slack-directory"  # the issuer of every identity the directory hands out

_EMAIL = re.compile(r"[^@\s<>|]+@[^@\s<>|]+\.[^@\s<>|.]+")


def _email(value: str) -> str:
    if not _EMAIL.fullmatch(value):
        raise ValueError(f"{value!r} is not an email address")
    return value


Group = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class Person(BaseModel):
    """One approver as written in the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)] | None = None
    groups: list[Group] = Field(default_factory=list)


class DirectoryFile(BaseModel):
    """The whole file: ``people``, keyed by email."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    people: dict[Annotated[str, AfterValidator(_email)], Person] = Field(min_length=1)


class DirectoryError(Exception):
    """The directory file does not load; ``problems`` says where and why (file, line, field)."""

    def __init__(self, problems: tuple[Problem, ...] | list[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


def load_directory(path: str | Path) -> dict[str, Identity]:
    """Read ``path`` into ``email (lower-cased) -> Identity``; raises :class:`DirectoryError`."""
    path = Path(path)
    try:
        parsed, root = load_yaml_file(path, DirectoryFile)
    except PolicyLoadError as exc:
        raise DirectoryError(exc.problems) from None
    people: dict[str, Identity] = {}
    written: dict[str, str] = {}
    problems: list[Problem] = []
    for email, person in parsed.people.items():
        key = email.lower()
        if key in written:
            line, field_path = locate(root, ("people", email))
            first, _ = locate(root, ("people", written[key]))
            problems.append(Problem(str(path), line, field_path, f"{email!r} is listed twice (first at line {first})"))
            continue
        written[key] = email
        people[key] = Identity(
            subject=key,
            issuer=DIRECTORY_ISSUER,
            email=key,
            name=person.name,
            groups=tuple(dict.fromkeys(person.groups)),
            expires_at=None,
        )
    if problems:
        raise DirectoryError(problems)
    return people


class ApproverDirectory:
    """The identities of a directory file, looked up by verified email (the channel's ``directory``)."""

    def __init__(self, path: str | Path) -> None:
        """Load ``path`` now; raises :class:`DirectoryError` when it does not load."""
        self.path = Path(path)
        self._stamp = self._file_stamp()
        self._people = load_directory(self.path)

    def __call__(self, email: str) -> Identity | None:
        return self._people.get(email.lower())

    def __len__(self) -> int:
        return len(self._people)

    def reload(self) -> bool:
        """Read the file again; keep the current entries (and log why) when it does not load."""
        stamp = self._file_stamp()
        try:
            people = load_directory(self.path)
        except DirectoryError as exc:
            log.error("approver directory %s not reloaded; keeping %d people:\n%s", self.path, len(self), exc)
            self._stamp = stamp  # do not report the same broken file at every check
            return False
        self._people, self._stamp = people, stamp
        log.info("approver directory %s reloaded: %d people", self.path, len(people))
        return True

    def reload_if_changed(self) -> bool:
        """Reload when the file's size or modification time changed since the last load."""
        if self._file_stamp() == self._stamp:
            return False
        return self.reload()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            status = os.stat(self.path)
        except OSError:
            return None
        return status.st_mtime_ns, status.st_size
