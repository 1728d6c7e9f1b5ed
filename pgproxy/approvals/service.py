"""The approval service of one pgproxy process: opens requests for held statements, counts votes, answers.

The relay calls :meth:`ApprovalService.request` when its gate holds a message (``pgproxy.gate.holds``);
it gets a :class:`PendingApproval` — the request id, the NOTICE text for the client, and a future that
resolves to the gate's ``Verdict`` — and waits. Votes arrive from channels (the HTTP API, Slack, the
CLI) through :meth:`ApprovalService.vote` with identities they verified; the pure model
(``pgproxy.approvals.model``) decides whether a vote counts. A request expires at its deadline (a timer
per request) and is withdrawn when its client disconnects. Listeners (:meth:`on_change`) hear of every
change, e.g. to update a Slack message.

This implementation keeps requests in this process's memory: a restart loses pending requests (their
clients are disconnected anyway) and replicas do not share them. It must not authenticate voters,
decide policy, or speak the wire protocol.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pgproxy.approvals.model import ApprovalRequest, RequestContext, RequestState, Vote
from pgproxy.auth.identity import Identity
from pgproxy.gate.holds import Hold, Verdict

log = logging.getLogger(__name__)

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


@dataclass(eq=False)
class PendingApproval:
    """An open request the relay waits for."""

    request_id: str
    notice: str
    verdict: asyncio.Future[Verdict]
    _service: ApprovalService = field(repr=False)

    def withdraw(self) -> None:
        self._service.withdraw(self.request_id)


class ApprovalService:
    """Open approval requests and the futures their sessions wait on."""

    def __init__(self, *, approve_at: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self._approve_at = approve_at  # where approvers act, told to the client (a URL, "#db-approvals" …)
        self._clock = clock
        self._requests: dict[str, ApprovalRequest] = {}
        self._waiting: dict[str, asyncio.Future[Verdict]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._listeners: list[Callable[[ApprovalRequest], object]] = []

    # -- the relay's side ----------------------------------------------------------------------
    def request(self, hold: Hold, requester: Requester) -> PendingApproval:
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
        )
        now = self._clock()
        request = ApprovalRequest.open(
            requester.identity, decision.approval, context, now=now, session_id=requester.session_id
        )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Verdict] = loop.create_future()
        self._requests[request.id] = request
        self._waiting[request.id] = future
        self._timers[request.id] = loop.call_later(max(0.0, request.expires_at - now), self._expire, request.id)
        where = f"; approve or deny it at {self._approve_at}" if self._approve_at else ""
        notice = (
            f"pgproxy: {statement.command} needs {decision.approval.describe()} (rule {decision.rule_id});"
            f" it waits for approval request {request.id}{where}"
        )
        log.info("approval request %s opened for %s: %s", request.id, requester.identity.display, sql[:200])
        self._changed(request)
        return PendingApproval(request.id, notice, future, self)

    def withdraw(self, request_id: str) -> None:
        request = self._requests.get(request_id)
        if request is not None and not request.decided:
            self._settle(request.withdraw(self._clock()))

    # -- the approvers' side ---------------------------------------------------------------------
    def get(self, request_id: str) -> ApprovalRequest | None:
        return self._requests.get(request_id)

    def pending(self) -> list[ApprovalRequest]:
        return [request for request in self._requests.values() if not request.decided]

    def requests(self) -> list[ApprovalRequest]:
        """Every request this process opened, oldest first (decided ones included)."""
        return list(self._requests.values())

    def vote(self, request_id: str, vote: Vote) -> ApprovalRequest:
        """Apply a vote; raises ``KeyError`` for an unknown request, ``VoteRefused`` when it does not count."""
        request = self._requests[request_id].expire(vote.at)
        if request.state is RequestState.EXPIRED and request is not self._requests[request_id]:
            self._settle(request)
        updated = request.vote(vote)
        if updated.decided:
            self._settle(updated)
        else:
            self._requests[request_id] = updated
            self._changed(updated)
        return updated

    def on_change(self, listener: Callable[[ApprovalRequest], object]) -> None:
        self._listeners.append(listener)

    # -- internals -------------------------------------------------------------------------------
    def _expire(self, request_id: str) -> None:
        request = self._requests.get(request_id)
        if request is not None and not request.decided:
            self._settle(request.expire(max(self._clock(), request.expires_at)))

    def _settle(self, request: ApprovalRequest) -> None:
        self._requests[request.id] = request
        timer = self._timers.pop(request.id, None)
        if timer is not None:
            timer.cancel()
        future = self._waiting.pop(request.id, None)
        if future is not None and not future.done():
            future.set_result(verdict_of(request))
        log.info("approval request %s %s", request.id, request.state.value)
        self._changed(request)

    def _changed(self, request: ApprovalRequest) -> None:
        for listener in self._listeners:
            try:
                listener(request)
            except Exception:
                log.exception("approval listener failed")


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
