"""The approval service with requests in memory: the relay's future answers every outcome, changes reach
the listeners once, several services on one backend act as replicas, and a failing backend fails the
waiting client instead of leaving it waiting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from pgproxy.approvals.backend import MemoryBackend
from pgproxy.approvals.model import ApprovalRequest, RequestState, Vote, VoteRefused
from pgproxy.approvals.service import ApprovalService, PendingApproval, Requester, RequestNotFound
from pgproxy.auth.identity import Identity
from pgproxy.gate.holds import Hold, Verdict
from pgproxy.policy.engine import ApprovalRequirement, Decision
from pgproxy.policy.model import Approvers, Effect
from pgproxy.sql.statement import Category, Statement, StatementSource

IDP = "https://idp.example.com/"
AGENT = Identity("agent-1", IDP, "agent-1@example.com", None, ("agents",), None)
DBA1 = Identity("u-dba1", IDP, "dba1@example.com", None, ("dba",), None)
DBA2 = Identity("u-dba2", IDP, "dba2@example.com", None, ("dba",), None)
REQUESTER = Requester(AGENT, "orders", "10.0.0.7", "migrate", "app", session_id="s-1")
NOW = 1_700_000_000.0


def hold(timeout: int = 600, quorum: int = 1, sql: str = "/* reason: cleanup */ DROP TABLE old") -> Hold:
    statement = Statement(Category.DDL, "DROP TABLE")
    requirement = ApprovalRequirement(Approvers(groups=frozenset({"dba"})), quorum, timeout)
    decision = Decision(Effect.REQUIRE_APPROVAL, "ddl-needs-dba", "DDL needs a DBA", None, requirement, False,
                        statement)
    return Hold(decision, (statement,), "Query", StatementSource(sql, None))


Services = Callable[..., Awaitable[ApprovalService]]


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def services() -> AsyncIterator[Services]:
    """Started services (closed after the test)."""
    started: list[ApprovalService] = []

    async def make(**options: object) -> ApprovalService:
        service = ApprovalService(**options)  # type: ignore[arg-type]
        await service.start()
        started.append(service)
        return service

    yield make
    for service in started:
        await service.close()


async def settled(pending: PendingApproval) -> Verdict:
    return await asyncio.wait_for(pending.verdict, 30)


async def stored(service: ApprovalService, request_id: str) -> ApprovalRequest:
    """The request once its write is done (it is stored in the background)."""
    opened = asyncio.Event()
    service.on_change(lambda request: opened.set() if request.id == request_id else None)
    if (found := await service.get(request_id)) is None:
        await asyncio.wait_for(opened.wait(), 30)
        found = await service.get(request_id)
    assert found is not None
    return found


async def test_an_approval_answers_the_waiting_client_and_the_listeners_hear_each_change(
    services: Services,
) -> None:
    clock = Clock()
    service = await services(approve_at="#db-approvals", clock=clock)
    heard: list[tuple[str, RequestState, int]] = []
    service.on_change(lambda request: heard.append((request.id, request.state, len(request.votes))))

    pending = service.request(hold(quorum=2), REQUESTER)
    assert not pending.verdict.done()
    assert pending.notice == (f"pgproxy: DROP TABLE needs 2 approvals from different people from group dba (rule "
                              f"ddl-needs-dba); it waits for approval request {pending.request_id}; approve or deny "
                              "it at #db-approvals")
    request = await stored(service, pending.request_id)
    assert (request.context.stated_reason, request.session_id, request.expires_at) == ("cleanup", "s-1", NOW + 600)

    with pytest.raises(VoteRefused, match="own request"):
        await service.vote(request.id, Vote(AGENT, True, clock()))
    with pytest.raises(RequestNotFound):
        await service.vote("apr-missing", Vote(DBA1, True, clock()))
    assert (await service.vote(request.id, Vote(DBA1, True, clock()))).state is RequestState.PENDING
    assert not pending.verdict.done()
    assert (await service.vote(request.id, Vote(DBA2, True, clock()))).state is RequestState.APPROVED

    verdict = await settled(pending)
    assert (verdict.approved, verdict.approvers, verdict.expired) == (True, ("dba1@example.com", "dba2@example.com"),
                                                                      False)
    assert heard == [(request.id, RequestState.PENDING, 0), (request.id, RequestState.PENDING, 1),
                     (request.id, RequestState.APPROVED, 2)]
    assert [found.id for found in await service.list([RequestState.APPROVED])] == [request.id]
    assert await service.list([RequestState.PENDING]) == []


async def test_a_denial_names_who_and_why(services: Services) -> None:
    service = await services()
    pending = service.request(hold(), REQUESTER)
    await stored(service, pending.request_id)
    await service.vote(pending.request_id, Vote(DBA1, False, NOW, reason="peak hours"))
    verdict = await settled(pending)
    assert (verdict.approved, verdict.denied_by, verdict.reason) == (False, "dba1@example.com", "peak hours")


async def test_the_sweeper_expires_due_requests(services: Services) -> None:
    clock = Clock()
    service = await services(clock=clock, sweep_seconds=0.01)
    pending = service.request(hold(timeout=600), REQUESTER)
    await stored(service, pending.request_id)
    clock.now = NOW + 600  # due now; the request's own timer is ten minutes away
    verdict = await settled(pending)
    assert verdict.expired and not verdict.approved
    found = await service.get(pending.request_id)
    assert found is not None and (found.state, found.decided_at) == (RequestState.EXPIRED, NOW + 600)


async def test_the_deadline_timer_expires_a_request_without_a_sweeper() -> None:
    service = ApprovalService()  # not started: no sweeper, no listener
    pending = service.request(hold(timeout=0), REQUESTER)
    verdict = await settled(pending)
    assert verdict.expired
    found = await service.get(pending.request_id)
    assert found is not None and found.state is RequestState.EXPIRED
    with pytest.raises(VoteRefused, match="already expired"):
        await service.vote(pending.request_id, Vote(DBA1, True, NOW))
    await service.close()


async def test_a_vote_after_the_deadline_expires_the_request_and_is_refused(
    services: Services,
) -> None:
    clock = Clock()
    service = await services(clock=clock, sweep_seconds=3600)
    heard: list[RequestState] = []
    service.on_change(lambda request: heard.append(request.state))
    pending = service.request(hold(timeout=600), REQUESTER)
    await stored(service, pending.request_id)
    clock.now = NOW + 601
    with pytest.raises(VoteRefused, match="expired before the vote"):
        await service.vote(pending.request_id, Vote(DBA1, True, clock()))
    assert (await settled(pending)).expired
    assert heard == [RequestState.PENDING, RequestState.EXPIRED]


async def test_withdrawal_is_heard_and_ends_the_wait(services: Services) -> None:
    service = await services()
    heard: list[RequestState] = []
    service.on_change(lambda request: heard.append(request.state))
    pending = service.request(hold(), REQUESTER)
    pending.withdraw()  # at once: the withdrawal waits for the request to be stored
    assert (await settled(pending)).expired
    found = await service.get(pending.request_id)
    assert found is not None and found.state is RequestState.WITHDRAWN
    assert heard == [RequestState.PENDING, RequestState.WITHDRAWN]


async def test_a_decision_through_another_service_on_the_same_backend_reaches_the_holder(
    services: Services,
) -> None:
    backend = MemoryBackend()
    holder = await services(store=backend, replica="a")
    other = await services(store=backend.sibling("b"))  # another replica on the same requests
    heard_by_holder: list[RequestState] = []
    holder.on_change(lambda request: heard_by_holder.append(request.state))

    pending = holder.request(hold(), REQUESTER)
    await stored(holder, pending.request_id)
    await other.vote(pending.request_id, Vote(DBA1, True, NOW))
    assert (await settled(pending)).approved
    assert heard_by_holder == [RequestState.PENDING]  # the vote was heard where it was cast
    assert [found.id for found in await backend.list(holder="a")] == [pending.request_id]


async def test_a_backend_that_cannot_store_the_request_fails_the_waiting_client() -> None:
    class Broken(MemoryBackend):
        async def create(self, request: ApprovalRequest) -> None:
            raise OSError("the approval database is unreachable")

    service = ApprovalService(Broken())
    pending = service.request(hold(), REQUESTER)
    with pytest.raises(OSError, match="unreachable"):
        await settled(pending)
    await service.close()


async def test_closing_answers_whoever_still_waits() -> None:
    service = ApprovalService()
    await service.start()
    pending = service.request(hold(), REQUESTER)
    await stored(service, pending.request_id)
    await service.close()
    with pytest.raises(RuntimeError, match="closed"):
        await settled(pending)
    with pytest.raises(RuntimeError, match="closed"):
        service.request(hold(), REQUESTER)


def test_a_service_does_not_take_another_replicas_store() -> None:
    with pytest.raises(ValueError, match="replica 'a'"):
        ApprovalService(MemoryBackend(replica="a"), replica="b")
    assert ApprovalService(MemoryBackend(replica="a")).replica == "a"
    assert ApprovalService().replica
