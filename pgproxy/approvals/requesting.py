"""From a held statement to an approval request, and from a request back to the gate's verdict.

* :func:`open_request` builds the request approvers see for a ``Hold``: the session (:class:`Requester`),
  the statement's redacted text, command and relations, the rule, and the caller's stated reason;
* :func:`verdict_of` is the gate's view of a decided request;
* :func:`answer_now` answers a "return now" session, which does not wait: an approved, unused request
  for the same statement (``Hold.digest``) and the same person is used once (``consume`` is atomic, so
  of two sessions sending it together one runs it) and approves the statement; otherwise the statement
  is refused at once naming a request — the person's still-pending one for that statement, or a new one.

The backend is the approval service's (store or memory); nothing here keeps state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pgproxy.approvals.backend import ApprovalBackend
from pgproxy.approvals.impact import describe_impact
from pgproxy.approvals.model import ApprovalRequest, RequestContext, RequestState
from pgproxy.auth.identity import Identity
from pgproxy.gate.holds import Hold, Verdict

__all__ = ["Requester", "answer_now", "open_request", "stated_reason", "verdict_of"]

# A caller states why it runs a statement in a leading comment: /* reason: rotate the partition */
_STATED_REASON = re.compile(r"^\s*/\*\s*reason\s*:\s*(?P<reason>.*?)\s*\*/", re.IGNORECASE | re.DOTALL)
_REASON_LIMIT = 500


@dataclass(frozen=True, slots=True)
class Requester:
    """The session a held statement comes from."""

    identity: Identity
    database: str
    client_address: str | None
    application_name: str | None
    upstream_role: str | None
    session_id: str | None = None


def stated_reason(sql: str, application_name: str | None) -> str | None:
    """The caller's stated reason: a leading ``/* reason: … */`` comment, else its application_name."""
    found = _STATED_REASON.match(sql)
    if found is not None and found["reason"]:
        return found["reason"][:_REASON_LIMIT]
    return application_name[:_REASON_LIMIT] if application_name else None


def open_request(hold: Hold, requester: Requester, now: float, *, return_now: bool = False) -> ApprovalRequest:
    """A new pending request for ``hold``; a "return now" one is bound to the statement's digest and held by
    no session (its client does not wait)."""
    decision = hold.decision
    assert decision.approval is not None, "only require-approval decisions are held"
    statement = decision.statement
    sql = hold.source.text if hold.source is not None else f"({hold.message} {statement.command})"
    context = RequestContext(
        client_address=requester.client_address,
        application_name=requester.application_name,
        database=requester.database,
        upstream_role=requester.upstream_role,
        sql=sql,
        category=statement.category.value,
        command=statement.command,
        relations=tuple(sorted({str(r) for s in hold.statements for r in s.relations})),
        rule_id=decision.rule_id,
        stated_reason=stated_reason(sql, requester.application_name),
        impact=describe_impact(sql),
    )
    if return_now:
        assert hold.digest is not None, "a return-now hold carries its statement's digest"
        return ApprovalRequest.open(requester.identity, decision.approval, context, now=now,
                                    statement_digest=hold.digest)
    return ApprovalRequest.open(requester.identity, decision.approval, context, now=now,
                                session_id=requester.session_id)


def verdict_of(request: ApprovalRequest) -> Verdict:
    """The gate's view of a decided request."""
    denial = request.denial
    return Verdict(
        request_id=request.id,
        approved=request.state is RequestState.APPROVED,
        approvers=request.approvers,
        expired=request.state in (RequestState.EXPIRED, RequestState.WITHDRAWN),
        denied_by=(denial.voter.email or denial.voter.display) if denial is not None else None,
        reason=denial.reason if denial is not None else None,
    )


async def answer_now(backend: ApprovalBackend, fresh: ApprovalRequest, now: float) -> tuple[Verdict, bool]:
    """The verdict for a "return now" statement, and whether ``fresh`` (its new request) was stored."""
    digest, requester = fresh.statement_digest, fresh.requester
    assert digest is not None, "a return-now request is bound to its statement's digest"
    while (approved := await backend.find_approved(digest, requester, now)) is not None:
        used = await backend.consume(approved.id, now)
        if used is not None:
            return verdict_of(used), False
        # another session used it first: look again (another approval may exist)
    pending = await backend.find_pending(digest, requester, now)
    if pending is None:
        await backend.create(fresh)
        pending = fresh
    return Verdict(pending.id, approved=False, returned=True, expires_at=pending.expires_at), pending is fresh
