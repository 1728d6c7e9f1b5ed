"""The approval service of one pgproxy replica: opens requests for held statements, counts votes, answers.

The relay calls :meth:`ApprovalService.request` when its gate holds a message (``pgproxy.gate.holds``)
and gets at once a :class:`PendingApproval`: the request id, the NOTICE text for the client, and a
future resolving to the gate's ``Verdict``. The request is written in a task; if that fails, the future
gets the exception (the relay ends the session). A client that goes away withdraws its request
(:meth:`PendingApproval.withdraw`, also in a task).

Requests live in a backend: an :class:`~pgproxy.approvals.store.ApprovalStore` (PostgreSQL: durable,
shared by replicas) when given, else a :class:`~pgproxy.approvals.backend.MemoryBackend` (this process
only); both apply the pure model (``pgproxy.approvals.model``) to every change and announce it. A
replica *holds* the requests its own clients wait for; any replica, or anything writing to the store,
may decide them:

* on a change notification for a held request the service reads it and, once decided, resolves its
  future (``verdict_of``); when the store's listening connection comes back (notifications may have
  been lost) every held request is read again; a failed read is retried at the next sweep;
* every ``sweep_seconds`` the sweeper expires the due requests of all replicas, and a timer per held
  request does so at its deadline as a backstop; if the backend cannot be reached then, the client gets
  the error, never an approval;
* votes (:meth:`~ApprovalService.vote`) come from channels (HTTP API, Slack, CLI) with identities they
  verified, on any replica: ``VoteRefused`` when one does not count, ``RequestNotFound`` for unknown ids.

Listeners (:meth:`~ApprovalService.on_change`) hear once of each change *this service made* (a request
opened, a vote counted, an expiry it swept, a withdrawal), so across replicas one of them hears of it
(e.g. to update a Slack message); changes other programs write to the store, and channel bookkeeping
(:meth:`~ApprovalService.set_extra`), are not heard.
:meth:`~ApprovalService.start` (on the relay's event loop) opens the backend, its listener and the
sweeper; :meth:`~ApprovalService.close` lets pending writes finish briefly, answers still-waiting
clients with an error, and closes the backend.

It must not authenticate voters, decide policy or who may vote (the model does), or speak the wire protocol.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg

from pgproxy.approvals.backend import ApprovalBackend, Listening, MemoryBackend, Requests
from pgproxy.approvals.estimate import estimate_rows
from pgproxy.approvals.model import ApprovalRequest, RequestState, Vote, VoteRefused
from pgproxy.approvals.requesting import Requester, answer_now, open_request, stated_reason, verdict_of
from pgproxy.approvals.store import RequestNotFound
from pgproxy.gate.holds import Hold, Verdict

__all__ = ["ApprovalBackend", "ApprovalService", "PendingApproval", "RequestNotFound", "Requester", "stated_reason",
           "verdict_of"]

log = logging.getLogger(__name__)
EstimateConnect = Callable[[str], Awaitable[asyncpg.Connection]]  # database name → pgproxy's own connection

_BACKEND_TIMEOUT = 10.0  # seconds one backend call on behalf of a waiting client may take
_CLOSE_GRACE = 5.0  # seconds close() lets pending writes (withdrawals of ending sessions) finish


@dataclass(eq=False)
class PendingApproval:
    """An open request the relay waits for."""

    request_id: str
    notice: str
    verdict: asyncio.Future[Verdict]
    _service: ApprovalService = field(repr=False)
    returns: bool = False  # "return now": the client is answered at once; its request outlives the session

    def withdraw(self) -> None:
        if not self.returns:
            self._service.withdraw(self.request_id)


@dataclass(eq=False, slots=True)
class _Held:
    """A request this replica's client waits for."""

    future: asyncio.Future[Verdict]
    expires_at: float
    timer: asyncio.TimerHandle | None = None
    creating: asyncio.Task[None] | None = None  # the write that stores it, while it runs


class ApprovalService:
    """Approval requests in ``store`` (in memory when None) and the futures this replica's sessions wait on."""

    def __init__(self, store: ApprovalBackend | None = None, *, approve_at: str | None = None,
                 replica: str | None = None, clock: Callable[[], float] = time.time,
                 sweep_seconds: float = 1.0, estimate_connect: EstimateConnect | None = None) -> None:
        backend: ApprovalBackend = store if store is not None else MemoryBackend()
        if replica is not None and backend.replica not in (None, replica):
            raise ValueError(f"the store belongs to replica {backend.replica!r}, not {replica!r}")
        if sweep_seconds <= 0:
            raise ValueError("sweep_seconds must be positive")
        self.replica: str = replica or backend.replica or _default_replica()
        backend.replica = self.replica
        self._backend = backend
        self.approve_at = approve_at  # where approvers act, told to the client (a URL, "#db-approvals" …)
        self._clock = clock
        self._sweep_seconds = sweep_seconds
        self._held: dict[str, _Held] = {}
        self._stale: set[str] = set()  # held requests whose last read failed: read again at the next sweep
        self._tasks: set[asyncio.Task[None]] = set()
        self._listeners: list[Callable[[ApprovalRequest], object]] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._listening: Listening | None = None
        self._started = self._closed = False
        self._estimate_connect = estimate_connect  # database → a connection for EXPLAIN-based row estimates

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the backend, listen to its changes and start sweeping; raises when the store cannot be opened."""
        if self._started or self._closed:
            raise RuntimeError(f"approval service {self.replica} was already started")
        await self._backend.open()
        try:
            self._listening = await self._backend.listen(self._notified, on_reconnect=self._resync)
        except BaseException:
            await self._backend.close()
            raise
        self._started = True
        self._sweeper = asyncio.create_task(self._sweep_forever(), name=f"approvals sweeper {self.replica}")

    async def close(self) -> None:
        """Stop sweeping, let pending writes finish (briefly), fail whoever still waits, close the backend."""
        if self._closed:
            return
        self._closed = True
        if self._listening is not None:
            await self._listening.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.wait([self._sweeper])
        deadline = asyncio.get_running_loop().time() + _CLOSE_GRACE
        while self._tasks and (left := deadline - asyncio.get_running_loop().time()) > 0:
            await asyncio.wait(set(self._tasks), timeout=left)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        for request_id in list(self._held):
            self._answer(request_id, RuntimeError("the approval service was closed"))
        await self._backend.close()

    # -- the relay's side ----------------------------------------------------------------------
    def request(self, hold: Hold, requester: Requester, *, return_now: bool = False) -> PendingApproval:
        """Open a request for ``hold``; it is stored in the background (a failure resolves the future).

        With ``return_now`` the future resolves as soon as the backend answers (:func:`answer_now`): the
        statement approved once, or refused naming the request it waits for; the notice is empty."""
        if self._closed:
            raise RuntimeError("the approval service is closed")
        decision = hold.decision
        assert decision.approval is not None, "only require-approval decisions are held"
        statement = decision.statement
        now = self._clock()
        request = open_request(hold, requester, now, return_now=return_now)
        if return_now:
            future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
            self._spawn(self._answer_now(request, future))
            return PendingApproval(request.id, "", future, self, returns=True)
        loop = asyncio.get_running_loop()
        held = _Held(loop.create_future(), request.expires_at)
        self._held[request.id] = held
        held.timer = loop.call_later(max(0.0, request.expires_at - now), self._deadline, request.id)
        estimate: Callable[[], Awaitable[str | None]] | None = None
        if request.context.impact is None and (connect := self._estimate_connect) is not None:
            database, role, sql = requester.database, requester.upstream_role, hold.raw_text or request.context.sql
            estimate = lambda: estimate_rows(lambda: connect(database), sql, role=role)  # noqa: E731
        held.creating = self._spawn(self._create(request, requester, estimate))
        where = f"; approve or deny it at {self.approve_at}" if self.approve_at else ""
        notice = (
            f"pgproxy: {statement.command} needs {decision.approval.describe()} (rule {decision.rule_id});"
            f" it waits for approval request {request.id}{where}"
        )
        return PendingApproval(request.id, notice, held.future, self)

    def withdraw(self, request_id: str) -> None:
        """The client went away: withdraw its request in the background (a decided one stays as it is)."""
        self._spawn(self._withdraw(request_id))

    # -- the approvers' side ---------------------------------------------------------------------
    async def vote(self, request_id: str, vote: Vote) -> ApprovalRequest:
        """Count a vote; raises ``VoteRefused`` when it does not count, ``RequestNotFound`` for an unknown id."""
        now = self._clock()
        try:
            after = await self._backend.vote(request_id, vote, now)
        except VoteRefused:
            found = await self._backend.get(request_id)  # a vote after the deadline expired it: a change made here
            if found is not None and found.state is RequestState.EXPIRED and found.decided_at == now:
                self._decided(found)
            raise
        if after.decided:
            self._decided(after)
        else:
            self._changed(after)
        return after

    async def get(self, request_id: str) -> ApprovalRequest | None:
        return await self._backend.get(request_id)

    async def set_extra(self, request_id: str, values: Mapping[str, str]) -> ApprovalRequest:
        """Merge a channel's bookkeeping (a Slack message's ts) into the request; listeners do not hear of it."""
        return await self._backend.set_extra(request_id, values)

    async def list(self, states: Iterable[RequestState] | None = None, limit: int = 100) -> Requests:
        """At most ``limit`` requests of every replica, newest first, optionally only in ``states``."""
        return await self._backend.list(states=states, limit=limit)

    def on_change(self, listener: Callable[[ApprovalRequest], object]) -> None:
        """Call ``listener(request)`` after each change this service makes (see the module docstring)."""
        self._listeners.append(listener)

    # -- writing ---------------------------------------------------------------------------------
    async def _create(
        self, request: ApprovalRequest, requester: Requester, estimate: Callable[[], Awaitable[str | None]] | None
    ) -> None:
        if estimate is not None and (impact := await estimate()) is not None:  # bounded: never raises
            request = replace(request, context=replace(request.context, impact=impact))
        try:
            async with asyncio.timeout(_BACKEND_TIMEOUT):
                await self._backend.create(request)
        except Exception as exc:
            log.error("approval request %s could not be stored: %s", request.id, exc)
            self._answer(request.id, exc)
            return
        finally:
            held = self._held.get(request.id)
            if held is not None:
                held.creating = None
        log.info("approval request %s opened for %s: %s", request.id, requester.identity.display,
                 request.context.sql[:200])
        self._changed(request)

    async def _answer_now(self, fresh: ApprovalRequest, future: asyncio.Future[Verdict]) -> None:
        try:
            async with asyncio.timeout(_BACKEND_TIMEOUT):
                verdict, opened = await answer_now(self._backend, fresh, fresh.created_at)
        except Exception as exc:
            log.error("return-now approval for %s failed: %s", fresh.requester.display, exc)
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(verdict)
        if opened:
            log.info("approval request %s opened (return now) for %s: %s", fresh.id, fresh.requester.display,
                     fresh.context.sql[:200])
            self._changed(fresh)
        elif verdict.approved:
            log.info("approval request %s used (return now) by %s", verdict.request_id, fresh.requester.display)

    async def _withdraw(self, request_id: str) -> None:
        held = self._held.get(request_id)
        if held is not None and held.creating is not None:
            await asyncio.wait([held.creating])  # it must be stored before it can be withdrawn
        now = self._clock()
        try:
            async with asyncio.timeout(_BACKEND_TIMEOUT):
                after = await self._backend.withdraw(request_id, now)
        except Exception as exc:
            if not isinstance(exc, RequestNotFound):  # not found: never stored, its client was told
                log.warning("approval request %s could not be withdrawn: %s", request_id, exc)
            self._answer(request_id, exc)
            return
        if after.state is RequestState.WITHDRAWN and after.decided_at == now:
            self._decided(after)
        else:
            self._observe(after)

    def _deadline(self, request_id: str) -> None:
        held = self._held.get(request_id)
        if held is not None and not self._closed:
            held.timer = None
            self._spawn(self._expire_held(request_id, held))

    async def _expire_held(self, request_id: str, held: _Held) -> None:
        """The backstop at a held request's deadline: expire it in the backend and read it back."""
        if held.creating is not None:
            await asyncio.wait([held.creating])
        if self._held.get(request_id) is not held:
            return  # it could not be stored, and its client was told
        try:
            async with asyncio.timeout(_BACKEND_TIMEOUT):
                await self._expire(max(self._clock(), held.expires_at))
                await self._refresh(request_id)
        except Exception as exc:
            log.error("approval request %s could not be expired: %s", request_id, exc)
            self._answer(request_id, exc)
            return
        if self._held.get(request_id) is held and held.timer is None and not self._closed:
            # Still pending: a vote held its row, or the sweeper of a replica with another clock skipped it.
            held.timer = asyncio.get_running_loop().call_later(self._sweep_seconds, self._deadline, request_id)

    async def _expire(self, now: float) -> None:
        for request in await self._backend.expire_due(now):
            self._decided(request)

    # -- learning of changes ---------------------------------------------------------------------
    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_seconds)
            try:
                async with asyncio.timeout(_BACKEND_TIMEOUT):
                    await self._expire(self._clock())
            except Exception as exc:
                log.warning("approvals sweep of replica %s failed: %s", self.replica, exc)
            stale, self._stale = self._stale, set()
            await self._catch_up(stale)

    def _notified(self, request_id: str) -> None:
        if request_id in self._held and not self._closed:
            self._spawn(self._catch_up([request_id]))

    def _resync(self) -> None:
        """The store's listener is back: notifications may have been lost; read every held request again."""
        if self._held and not self._closed:
            log.info("approvals listener of replica %s reconnected: reading %d request(s)", self.replica,
                     len(self._held))
            self._spawn(self._catch_up(list(self._held)))

    async def _catch_up(self, request_ids: Iterable[str]) -> None:
        for request_id in request_ids:
            try:
                async with asyncio.timeout(_BACKEND_TIMEOUT):
                    await self._refresh(request_id)
            except Exception as exc:
                log.warning("approval request %s could not be read (again at the next sweep): %s", request_id, exc)
                self._stale.add(request_id)

    async def _refresh(self, request_id: str) -> None:
        if request_id in self._held and (request := await self._backend.get(request_id)) is not None:
            self._observe(request)

    # -- answering -------------------------------------------------------------------------------
    def _decided(self, request: ApprovalRequest) -> None:
        """A decision this service made: answer the waiting client (if held here), tell the listeners."""
        log.info("approval request %s %s", request.id, request.state.value)
        self._observe(request)
        self._changed(request)

    def _observe(self, request: ApprovalRequest) -> None:
        """Answer the client waiting for ``request`` here, once it is decided."""
        if request.decided:
            self._answer(request.id, verdict_of(request))

    def _answer(self, request_id: str, answer: Verdict | BaseException) -> None:
        held = self._held.pop(request_id, None)
        self._stale.discard(request_id)
        if held is not None and held.timer is not None:
            held.timer.cancel()
        if held is None or held.future.done():
            return
        if isinstance(answer, Verdict):
            held.future.set_result(answer)
        else:
            held.future.set_exception(answer)

    def _changed(self, request: ApprovalRequest) -> None:
        for listener in self._listeners:
            try:
                listener(request)
            except Exception:
                log.exception("approval listener failed")

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("approval task failed", exc_info=task.exception())


def _default_replica() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
