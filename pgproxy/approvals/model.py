"""Approval requests and their rules: who may vote, quorum of distinct people, expiry, withdrawal.

An :class:`ApprovalRequest` is an immutable value; every change (:meth:`~ApprovalRequest.vote`,
:meth:`~ApprovalRequest.expire`, :meth:`~ApprovalRequest.withdraw`) returns a new one or raises
:class:`VoteRefused` with a reason fit to show the person who tried. The rules, in the order they are
checked for a vote:

1. only a *pending* request takes votes, and only before it expires (a vote at or after ``expires_at``
   is refused; the caller then records the expiry with :meth:`~ApprovalRequest.expire`);
2. the requester never votes on their own request — the same person is the same ``(issuer, subject)`` or
   the same email (case-insensitive), so an administrator in the approver group is refused too;
3. the voter must match the policy's approvers (``pgproxy.policy.matching.identity_matches``) with the
   identity pgproxy verified (an OIDC token, or a Slack user mapped to a directory entry);
4. one vote per person: a second vote by the same person (again: same issuer+subject, or same email) is
   refused, so a quorum counts distinct people;
5. one *deny* from an eligible approver denies the request; *approve* votes approve it once ``quorum``
   distinct people have approved.

Pure: no clock reads (callers pass ``now``, seconds since the epoch), no I/O. It must not decide policy
(the requirement comes from the policy engine) nor authenticate anyone (callers pass verified identities).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from enum import StrEnum

from pgproxy.auth.identity import Identity
from pgproxy.policy.engine import ApprovalRequirement
from pgproxy.policy.matching import identity_matches


class RequestState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"  # the client went away (or gave up) before a decision


class VoteRefused(Exception):
    """A vote that does not count, and why (safe to show the voter)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Vote:
    voter: Identity
    approve: bool
    at: float
    reason: str | None = None  # required by the channels for a denial; optional for an approval
    channel: str = "http"  # where it was cast: "slack", "http", "cli"


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What approvers are shown: who, where, what (literals redacted), why, and the estimated impact."""

    client_address: str | None
    application_name: str | None
    database: str
    upstream_role: str | None
    sql: str  # the statement text with literals replaced by $n
    category: str
    command: str
    relations: tuple[str, ...]
    rule_id: str
    stated_reason: str | None = None  # the caller's own words: /* reason: … */ or application_name
    impact: str | None = None  # e.g. "estimated 1,204 rows", "ACCESS EXCLUSIVE lock; rewrites the table"


def new_request_id() -> str:
    """A short, unguessable id people can read out and paste: ``apr-`` and 16 hex digits."""
    return f"apr-{secrets.token_hex(8)}"


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    id: str
    requester: Identity
    requirement: ApprovalRequirement
    context: RequestContext
    created_at: float
    expires_at: float
    state: RequestState = RequestState.PENDING
    votes: tuple[Vote, ...] = ()
    decided_at: float | None = None
    statement_digest: str | None = None  # binds a "return now" approval to the exact text and parameters
    session_id: str | None = None  # the session holding the client (None for "return now" requests)
    extra: dict[str, str] = field(default_factory=dict, compare=False)  # channel bookkeeping (Slack ts …)

    @classmethod
    def open(
        cls,
        requester: Identity,
        requirement: ApprovalRequirement,
        context: RequestContext,
        *,
        now: float,
        request_id: str | None = None,
        statement_digest: str | None = None,
        session_id: str | None = None,
    ) -> ApprovalRequest:
        return cls(
            id=request_id or new_request_id(),
            requester=requester,
            requirement=requirement,
            context=context,
            created_at=now,
            expires_at=now + requirement.timeout_seconds,
            statement_digest=statement_digest,
            session_id=session_id,
        )

    # -- reading --------------------------------------------------------------------------------
    @property
    def decided(self) -> bool:
        return self.state is not RequestState.PENDING

    @property
    def approvals(self) -> tuple[Vote, ...]:
        return tuple(vote for vote in self.votes if vote.approve)

    @property
    def denial(self) -> Vote | None:
        return next((vote for vote in self.votes if not vote.approve), None)

    @property
    def approvers(self) -> tuple[str, ...]:
        """Who approved, as the audit log names them (email, else issuer/subject)."""
        return tuple(_name(vote.voter) for vote in self.approvals)

    def may_vote(self, voter: Identity) -> str | None:
        """Why ``voter`` may not vote on this request now (None: they may), ignoring expiry."""
        if self.decided:
            return f"request {self.id} is already {self.state.value}"
        if same_person(voter, self.requester):
            return "nobody approves their own request"
        if not identity_matches(self.requirement.approvers, voter):
            return f"{voter.display} is not an approver of request {self.id} ({self.requirement.describe()})"
        if any(same_person(voter, vote.voter) for vote in self.votes):
            return f"{voter.display} has already voted on request {self.id}"
        return None

    # -- changes --------------------------------------------------------------------------------
    def vote(self, vote: Vote) -> ApprovalRequest:
        """The request after ``vote``; raises :class:`VoteRefused` when it does not count."""
        if not self.decided and vote.at >= self.expires_at:
            raise VoteRefused(f"request {self.id} expired before the vote")
        problem = self.may_vote(vote.voter)
        if problem is not None:
            raise VoteRefused(problem)
        votes = (*self.votes, vote)
        if not vote.approve:
            return replace(self, votes=votes, state=RequestState.DENIED, decided_at=vote.at)
        approved = sum(1 for cast in votes if cast.approve) >= self.requirement.quorum
        if approved:
            return replace(self, votes=votes, state=RequestState.APPROVED, decided_at=vote.at)
        return replace(self, votes=votes)

    def expire(self, now: float) -> ApprovalRequest:
        """Expired if still pending at ``now`` (at or after ``expires_at``); otherwise unchanged."""
        if self.decided or now < self.expires_at:
            return self
        return replace(self, state=RequestState.EXPIRED, decided_at=now)

    def withdraw(self, now: float) -> ApprovalRequest:
        """Withdrawn if still pending (the client disconnected); otherwise unchanged."""
        if self.decided:
            return self
        return replace(self, state=RequestState.WITHDRAWN, decided_at=now)


def same_person(a: Identity, b: Identity) -> bool:
    """Whether two verified identities are one person: same issuer and subject, or same email."""
    if a.issuer == b.issuer and a.subject == b.subject:
        return True
    if not a.email or not b.email:  # no email (or an empty one) says nothing about who someone is
        return False
    return a.email.casefold() == b.email.casefold()


def _name(identity: Identity) -> str:
    return identity.email or f"{identity.issuer}#{identity.subject}"
