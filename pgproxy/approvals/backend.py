"""Where the approval service keeps requests: the backend interface, and requests in this process's memory.

:class:`ApprovalBackend` is what ``pgproxy.approvals.service`` needs of a backend; the PostgreSQL
:class:`~pgproxy.approvals.store.ApprovalStore` is one. :class:`MemoryBackend` is the other, used when
no store is configured (a single pgproxy process, tests); it has the same operations with the same
meaning:

* every change goes through the pure model (``pgproxy.approvals.model``): a vote by its rules, refused
  with :class:`~pgproxy.approvals.model.VoteRefused`; a vote when ``now`` is at or after the deadline
  expires the request and is refused; expiry of every due request; withdrawal of a pending one;
* a "return now" approval (a request with a ``statement_digest``) is found by digest and requester
  (``find_approved``, ``find_pending``; same issuer and subject) and used once (``consume``, atomic);
* channel bookkeeping (a Slack message's ``ts``) is merged into ``request.extra`` by ``set_extra``;
* an unknown id raises the store's :class:`~pgproxy.approvals.store.RequestNotFound` (reading returns None);
* every change is announced to the :meth:`~MemoryBackend.listen` callbacks with the request id, on the
  event loop's next turn, as a committed change is announced by the store's LISTEN/NOTIFY.

Changes are applied one at a time (nothing here awaits between reading and writing a request), so the
model's rules hold under concurrency as they do under the store's row locks. Requests are lost with the
process and are not shared with other processes (:meth:`~MemoryBackend.sibling` shares them with another
service in this process, as replicas share a store).

This module must not decide who may vote (``model`` does), authenticate voters or talk to approvers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Protocol

from pgproxy.approvals.model import ApprovalRequest, RequestState, Vote, VoteRefused
from pgproxy.approvals.store import RequestNotFound
from pgproxy.auth.identity import Identity

__all__ = ["ApprovalBackend", "Listening", "MemoryBackend", "MemoryListener", "Requests"]

log = logging.getLogger(__name__)

Requests = list[ApprovalRequest]


class Listening(Protocol):
    """A running listener (``ApprovalListener``, ``MemoryListener``)."""

    async def close(self) -> None: ...


class ApprovalBackend(Protocol):
    """Where requests live: ``ApprovalStore`` or ``MemoryBackend`` (same meanings, same exceptions)."""

    replica: str | None  # recorded as the holder of the requests created through it

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def create(self, request: ApprovalRequest) -> None: ...
    async def vote(self, request_id: str, vote: Vote, now: float) -> ApprovalRequest: ...
    async def expire_due(self, now: float) -> Requests: ...
    async def withdraw(self, request_id: str, now: float) -> ApprovalRequest: ...
    async def consume(self, request_id: str, now: float) -> ApprovalRequest | None: ...
    async def set_extra(self, request_id: str, values: Mapping[str, str]) -> ApprovalRequest: ...
    async def get(self, request_id: str) -> ApprovalRequest | None: ...
    async def list(self, *, states: Iterable[RequestState] | None = None, limit: int = 100) -> Requests: ...
    async def find_approved(self, statement_digest: str, requester: Identity, now: float) -> ApprovalRequest | None: ...
    async def find_pending(self, statement_digest: str, requester: Identity, now: float) -> ApprovalRequest | None: ...
    async def listen(
        self, callback: Callable[[str], object], *, on_reconnect: Callable[[], object] | None = None
    ) -> Listening: ...


class MemoryListener:
    """A callback registered with :meth:`MemoryBackend.listen`; :meth:`close` stops it."""

    def __init__(self, backend: MemoryBackend, callback: Callable[[str], object]) -> None:
        self._backend = backend
        self._callback = callback
        self.closed = False

    async def close(self) -> None:
        self.closed = True
        self._backend.forget(self)

    def deliver(self, request_id: str) -> None:
        if self.closed:
            return
        try:
            self._callback(request_id)
        except Exception:
            log.exception("approvals listener in memory: callback failed")


class MemoryBackend:
    """Requests in a dict, changed only through the model; ``replica`` is recorded as their holder."""

    def __init__(self, *, replica: str | None = None) -> None:
        self.replica = replica
        self._requests: dict[str, ApprovalRequest] = {}
        self._holders: dict[str, str | None] = {}
        self._consumed: dict[str, float] = {}  # "return now" requests used, and when
        self._listeners: list[MemoryListener] = []

    async def open(self) -> None:
        """Nothing to open; present so the service treats both backends alike."""

    async def close(self) -> None:
        """Nothing to close: the requests stay, and each listener is stopped by closing it."""

    def sibling(self, replica: str) -> MemoryBackend:
        """Another replica's backend on the same requests and notifications (as two stores on one schema)."""
        other = MemoryBackend(replica=replica)
        other._requests, other._holders, other._listeners = self._requests, self._holders, self._listeners
        other._consumed = self._consumed
        return other

    # -- changes -------------------------------------------------------------------------------------
    async def create(self, request: ApprovalRequest) -> None:
        """Keep a new request; raises :class:`ValueError` if its id is taken."""
        if request.id in self._requests:
            raise ValueError(f"approval request {request.id} already exists")
        self._requests[request.id] = request
        self._holders[request.id] = self.replica
        self._notify(request.id)

    async def vote(self, request_id: str, vote: Vote, now: float) -> ApprovalRequest:
        """Count ``vote`` by the model's rules; raises ``VoteRefused`` or :class:`RequestNotFound`."""
        request = self._found(request_id)
        after = request.expire(now)
        if after is not request:
            self._replace(request, after)
            raise VoteRefused(f"request {request_id} expired before the vote")
        after = request.vote(vote)
        self._replace(request, after)
        return after

    async def expire_due(self, now: float) -> Requests:
        """Expire every pending request due at ``now``; return those this call expired."""
        due = sorted(
            (r for r in self._requests.values() if not r.decided and r.expires_at <= now),
            key=lambda r: (r.expires_at, r.id),
        )
        expired = [request.expire(now) for request in due]
        for before, after in zip(due, expired, strict=True):
            self._replace(before, after)
        return expired

    async def withdraw(self, request_id: str, now: float) -> ApprovalRequest:
        """Withdraw a pending request; a decided one is returned unchanged."""
        request = self._found(request_id)
        after = request.withdraw(now)
        self._replace(request, after)
        return after

    async def consume(self, request_id: str, now: float) -> ApprovalRequest | None:
        """Use an approved "return now" request once: the request if this call used it, else None (not
        approved, no statement digest, already used, or ``now`` at or after its ``expires_at``)."""
        request = self._requests.get(request_id)
        if request is None or not self._usable(request, now):
            return None
        self._consumed[request_id] = now
        self._notify(request_id)
        return request

    async def set_extra(self, request_id: str, values: Mapping[str, str]) -> ApprovalRequest:
        """Merge ``values`` into the request's ``extra`` (channel bookkeeping); raises :class:`RequestNotFound`."""
        request = self._found(request_id)
        after = replace(request, extra={**request.extra, **values})
        self._replace(request, after)
        return after

    # -- reading -------------------------------------------------------------------------------------
    async def get(self, request_id: str) -> ApprovalRequest | None:
        return self._requests.get(request_id)

    async def list(
        self,
        *,
        states: Iterable[RequestState] | None = None,
        limit: int = 100,
        since: float | None = None,
        holder: str | None = None,
    ) -> Requests:
        """At most ``limit`` requests, newest first, filtered by state, ``created_at >= since`` and holder."""
        wanted = None if states is None else {RequestState(state) for state in states}
        chosen = [
            request
            for request in self._requests.values()
            if (wanted is None or request.state in wanted)
            and (since is None or request.created_at >= since)
            and (holder is None or self._holders.get(request.id) == holder)
        ]
        chosen.sort(key=lambda request: (request.created_at, request.id), reverse=True)
        return chosen[: max(limit, 0)]

    async def find_approved(self, statement_digest: str, requester: Identity, now: float) -> ApprovalRequest | None:
        """An approved, unused request of ``requester`` for this digest before its ``expires_at``; latest decided."""
        found = [r for r in self._requests.values() if r.statement_digest == statement_digest
                 and _same(r.requester, requester) and self._usable(r, now)]
        return max(found, key=lambda r: (r.decided_at or 0.0, r.id), default=None)

    async def find_pending(self, statement_digest: str, requester: Identity, now: float) -> ApprovalRequest | None:
        """A pending request of ``requester`` for this digest before its ``expires_at``; the newest."""
        found = [r for r in self._requests.values() if r.statement_digest == statement_digest
                 and _same(r.requester, requester) and r.state is RequestState.PENDING and now < r.expires_at]
        return max(found, key=lambda r: (r.created_at, r.id), default=None)

    # -- notifications -------------------------------------------------------------------------------
    async def listen(
        self, callback: Callable[[str], object], *, on_reconnect: Callable[[], object] | None = None
    ) -> MemoryListener:
        """Call ``callback(request_id)`` after each change (``on_reconnect`` is never called: nothing drops)."""
        listener = MemoryListener(self, callback)
        self._listeners.append(listener)
        return listener

    def forget(self, listener: MemoryListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # -- internals -----------------------------------------------------------------------------------
    def _found(self, request_id: str) -> ApprovalRequest:
        request = self._requests.get(request_id)
        if request is None:
            raise RequestNotFound(request_id)
        return request

    def _usable(self, request: ApprovalRequest, now: float) -> bool:
        return (request.state is RequestState.APPROVED and request.statement_digest is not None
                and request.id not in self._consumed and now < request.expires_at)

    def _replace(self, before: ApprovalRequest, after: ApprovalRequest) -> None:
        if after is before:
            return  # the model returns the request itself when nothing changed: nothing to announce
        self._requests[after.id] = after
        self._notify(after.id)

    def _notify(self, request_id: str) -> None:
        loop = asyncio.get_running_loop()
        for listener in list(self._listeners):
            loop.call_soon(listener.deliver, request_id)


def _same(a: Identity, b: Identity) -> bool:
    """The store's test for the requester of a "return now" request: same issuer and subject."""
    return (a.issuer, a.subject) == (b.issuer, b.subject)
