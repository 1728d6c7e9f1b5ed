"""Holding a request for approval: where the gate stops, and how the approvers' verdict is applied.

When policy says *require approval* and the session can hold requests (an approval service exists),
the gate does not refuse the message: it stops at it (``Hold``), like it stops for a prepared statement
the server has not confirmed, and the relay keeps that message and everything after it until a
``Verdict`` arrives. The relay then feeds the same messages again; the held message is judged again
(policy may have changed meanwhile) and, if it still requires approval:

* **approved** → it passes as the client's original bytes. For a Parse, the statement it defines is
  also approved for its *first* Bind (in the same pipeline, or in the next batch, as drivers that
  prepare first and execute later do), so one statement needs one approval, not two; a second
  execution of it needs a new approval;
* **denied** → refused in place by a stand-in (``denial``) with SQLSTATE 42501, naming who denied and why;
* **expired** → refused in place with SQLSTATE 57014, as a statement timeout is;
* **cancelled** by the client (a cancel request while it waits) → withdrawn, refused with 57014 as any
  cancelled statement is;
* **returned** (a "return now" session, which does not wait) → refused at once with 42501, naming the
  pending request: the client sends the identical statement (same ``Hold.digest``) again once it is approved.

A verdict applies to the one held message it answers (by position: the first require-approval message
judged after it); it is never a standing permission. Sans-IO and pure.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace

from pgproxy.policy.engine import Decision, Effect
from pgproxy.sql.statement import Statement, StatementSource

DENIED_SQLSTATE = "42501"
EXPIRED_SQLSTATE = "57014"  # query_canceled: what a statement_timeout gives, so clients treat it alike


@dataclass(frozen=True, slots=True)
class Hold:
    """A message the gate stopped at because policy requires approval, and what approvers must see."""

    decision: Decision  # effect REQUIRE_APPROVAL, with its ``approval`` requirement
    statements: tuple[Statement, ...]
    message: str  # "Query", "Parse", "Bind" or "FunctionCall"
    source: StatementSource | None  # its text (literals redacted when configured) and fingerprint
    # sha256 (hex) over the message kind, the database and the client's exact bytes of it (names left out):
    # what a "return now" approval is bound to
    digest: str | None = None
    # The statement's exact text, literals included: never shown to anyone, only EXPLAINed for an estimate
    raw_text: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The approvers' answer to one held message."""

    request_id: str
    approved: bool
    approvers: tuple[str, ...] = ()  # who approved (their verified names)
    expired: bool = False
    cancelled: bool = False  # the client sent a cancel request while it waited
    denied_by: str | None = None
    reason: str | None = None  # the denier's reason
    returned: bool = False  # a "return now" session: the request waits for approval, the client does not
    expires_at: float | None = None  # when a returned request expires (epoch seconds)

    def refusal(self, held: Decision) -> tuple[Decision, str]:
        """The decision to answer a refused held message with, and its SQLSTATE."""
        if self.cancelled:
            reason = f"canceling statement due to user request; approval request {self.request_id} was withdrawn"
            return replace(held, effect=Effect.DENY, reason=reason, hint=None), EXPIRED_SQLSTATE
        if self.expired:
            reason = f"approval request {self.request_id} expired without a decision; the statement was not run"
            hint = f"ask {held.approval.describe() if held.approval else 'an approver'} sooner, or send it again"
            return replace(held, effect=Effect.DENY, reason=reason, hint=hint), EXPIRED_SQLSTATE
        if self.returned:
            before = f" (before {_utc(self.expires_at)})" if self.expires_at is not None else ""
            reason = (f"approval request {self.request_id} is waiting for approval; send the same statement again"
                      f" once it is approved{before}")
            needs = f"it needs {held.approval.describe()}" if held.approval else None
            return replace(held, effect=Effect.DENY, reason=reason, hint=needs), DENIED_SQLSTATE
        who = self.denied_by or "an approver"
        reason = f"approval request {self.request_id} was denied by {who}"
        if self.reason:
            reason += f": {self.reason}"
        return replace(held, effect=Effect.DENY, reason=reason, hint=None), DENIED_SQLSTATE


def message_digest(kind: bytes, database: str, *parts: bytes) -> str:
    """What a "return now" approval is bound to (``Hold.digest``): the message kind, the database and the
    client's exact bytes, each length-prefixed so that no two different messages share a digest."""
    digest = hashlib.sha256(kind)
    for part in (database.encode("utf-8", "surrogateescape"), *parts):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def bound_text(statement: Statement) -> bytes:
    """The statement a Bind binds, for its digest: its text when known, else its command and relations."""
    if statement.source is not None and statement.source.text:
        return statement.source.text.encode("utf-8", "surrogateescape")
    text = " ".join((statement.command, *sorted(str(relation) for relation in statement.relations)))
    return text.encode("utf-8", "surrogateescape")


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


class Holds:
    """One session's holding state: the pending hold, the verdict for it, and what it approved."""

    __slots__ = ("_approved_names", "_verdict", "enabled", "pending")

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.pending: Hold | None = None  # set when the gate stopped at a message; the relay takes it
        self._verdict: Verdict | None = None
        # Parse-approved statements awaiting their first Bind: name → (statement as defined, the approval)
        self._approved_names: dict[str, tuple[Statement, Verdict]] = {}

    def take(self) -> Hold | None:
        hold, self.pending = self.pending, None
        return hold

    def resolve(self, verdict: Verdict) -> None:
        """The answer for the hold the relay took; applied when that message is judged again."""
        self._verdict = verdict

    def settle(self, hold: Hold) -> Verdict | None:
        """For a require-approval decision: the verdict on it (approved or not), or ``None`` → stop here
        and hold (``pending`` is set)."""
        verdict, self._verdict = self._verdict, None
        if verdict is None:
            self.pending = hold
            return None
        return verdict

    def approve_name(self, name: str, statement: Statement, verdict: Verdict) -> None:
        """A Parse passed under an approval: its first Bind passes under the same approval."""
        self._approved_names[name] = (statement, verdict)

    def approved_bind(self, name: str, statement: Statement) -> Verdict | None:
        """The approval the first Bind of ``name`` inherits from its Parse (only if the name still means the
        statement that was approved: a redefinition, or the unnamed statement replaced, breaks the link)."""
        found = self._approved_names.pop(name, None)
        if found is not None and found[0] is statement:
            return found[1]
        return None
