"""The established-session relay: frame both directions, forward complete messages, track idleness.

Hot path. Each chunk read is framed (so later stages can see whole messages); the session's gate
judges the client's requests (see ``pgproxy.gate``) and the complete messages are forwarded in one
``write``, copied only where a denied message is swapped for its stand-in. When the gate must wait
for the server (a prepared statement not yet confirmed), the rest of the client's input is held and
the client is not read until the server has answered. The relay counts the
requests that expect a ReadyForQuery (Query, Sync, FunctionCall) so it knows when the session is
idle — the only safe moment to end it for shutdown or token expiry. Flow control: when one side's
write buffer fills, reading from the other side stops until it drains, so a slow client never
makes pgproxy hold a whole result set in memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from pgproxy.approvals.service import PendingApproval
from pgproxy.audit.jsonl import AuditStoreUnavailable
from pgproxy.audit.service import AuditService
from pgproxy.gate.denial import OUTAGE_SQLSTATE, outage_decision
from pgproxy.gate.holds import Hold, Verdict
from pgproxy.gate.limits import LimitExceeded
from pgproxy.gate.reading import GateFatal
from pgproxy.gate.session import SessionGate
from pgproxy.server.endpoint import Endpoint, RelaySink
from pgproxy.session.inflight import InFlight
from pgproxy.wire import backend as be
from pgproxy.wire.errors import ProtocolError
from pgproxy.wire.framing import MessageFramer

log = logging.getLogger(__name__)

_TERMINATE = ord("X")
_READY_FOR_QUERY = ord("Z")
_TRANSACTION_STATES = frozenset(b"ITE")
# Every message type a server may send after startup (protocol 3.0). Anything else fails closed:
# the client must never receive bytes pgproxy could not have framed and inspected.
_BACKEND_TYPES = frozenset(b"RK23CdcGHWDIEVvnNAtS1sZT")
_OUTAGE = outage_decision()
_LOST_STORE = "pgproxy lost its audit store while a statement waited to be logged; it was not run"
# A server message can legitimately be as large as 1 GB (a huge DataRow); the client limit is ours.
UPSTREAM_MESSAGE_LIMIT = 1 << 30


class Relay:
    """Connects a client endpoint and an upstream endpoint once both are past startup."""

    def __init__(
        self,
        client: Endpoint,
        upstream: Endpoint,
        *,
        max_client_message: int,
        on_finished: Callable[[], None],
        gate: SessionGate | None = None,
        audit: AuditService | None = None,
        approvals: Callable[[Hold], PendingApproval] | None = None,
        load_catalog: Callable[[str], Awaitable[object]] | None = None,
    ) -> None:
        self.client = client
        self.gate = gate
        self.audit = audit if gate is not None and gate.trail is not None else None
        # Intents being made durable, and the judged bytes that wait for them (audit before forwarding).
        self._audit_wait: asyncio.Future[object] | None = None
        self._waiting_bytes = b""
        self._client_paused = False  # paused because messages are held (not for backpressure)
        self._approvals = approvals  # asks approvers about a held request (None: nothing is held)
        self._approval: PendingApproval | None = None  # the request the held messages wait for
        self._before_hold = b""  # judged messages of the same run as the held one, forwarded with it
        self._hold: Hold | None = None  # what the pending approval is about (recorded if the client leaves)
        self._load_catalog = load_catalog  # reads a database's catalog for masking (None: no masking)
        self._catalog_wait: asyncio.Future[object] | None = None  # a reading the held messages wait for
        self.end_reason: str | None = None
        # Client messages the gate could not judge yet (a prepared statement the server has not
        # confirmed): (chunk, its frames, index of the first unhandled frame), forwarded in order later.
        self._held: list[tuple[bytes, list[tuple[int, int, int]], int]] = []
        self.upstream = upstream
        self.in_flight = InFlight()
        self.transaction_status = "I"
        self._client_framer = MessageFramer(max_client_message)
        self._upstream_framer = MessageFramer(UPSTREAM_MESSAGE_LIMIT)
        self._on_finished = on_finished
        self._finished = False
        self._end_when_idle: be.ErrorResponse | None = None
        self._end_waits_for_transaction = False
        self.client_terminated = False

    def start(self, client_leftover: bytes, upstream_leftover: bytes) -> None:
        client_pending = self.client.attach(
            RelaySink(self.from_client, self._closed, self._pause(self.upstream), self._resume(self.upstream))
        )
        upstream_pending = self.upstream.attach(
            RelaySink(self.from_upstream, self._closed, self._pause(self.client), self._resume(self.client))
        )
        if self.client.closed or self.upstream.closed:
            self.finish()
            return
        if upstream_leftover or upstream_pending:
            self.from_upstream(upstream_leftover + upstream_pending)
        if client_leftover or client_pending:
            self.from_client(client_leftover + client_pending)

    @property
    def idle(self) -> bool:
        return self.in_flight.idle

    @property
    def awaiting_ready(self) -> int:
        """Requests forwarded upstream and not yet answered (0 when idle)."""
        return self.in_flight.outstanding

    # -- client → upstream ---------------------------------------------------------------------
    def from_client(self, data: bytes) -> None:
        try:
            complete, frames = self._client_framer.feed(data)
        except ProtocolError as exc:
            self.fail_client(exc.sqlstate, exc.message)
            return
        if not complete:
            return
        if self._held or self._audit_wait is not None or self._approval is not None or self._catalog_wait is not None:
            # A client sending more while earlier requests wait: stop reading it (bounded memory).
            self._held.append((complete, frames, 0))
            self._pause_client()
            return
        self._forward_client(complete, frames, 0)

    def _forward_client(self, chunk: bytes, frames: list[tuple[int, int, int]], first: int) -> bool:
        """Judge and forward ``frames[first:]`` of ``chunk``; False when the rest had to be held."""
        gate = self.gate
        stop = len(frames)
        out = chunk
        audit = self.audit
        if gate is not None:
            if audit is not None:
                gate.judge.outage = None if audit.accepting else _OUTAGE
            try:
                out, stop = gate.from_client(chunk, frames, first)
            except GateFatal as exc:
                self.fail_client(exc.sqlstate, exc.message)
                return False
        if gate is not None and gate.holds.pending is not None:
            self._ask_approvers(gate.holds.take())
        if gate is not None and gate.masking is not None and gate.masking.wants_catalog:
            self._read_catalog(gate.masking.database)
        client_sent = self.in_flight.client_sent
        for index in range(first, stop):
            kind = frames[index][0]
            client_sent(kind)
            if kind == _TERMINATE:
                self.client_terminated = True
        if audit is not None and self._wait_for_intents(audit, out):
            # Not paused for the wait itself: a client that waits for its answer sends nothing meanwhile,
            # and one that does is paused then (pausing and resuming costs two system calls).
            if stop < len(frames):
                self._held.insert(0, (chunk, frames, stop))
                self._pause_client()
            return False
        self._send_upstream(out)
        if stop < len(frames):
            # Wait for the server's answers; stop reading the client meanwhile (bounded memory).
            self._held.insert(0, (chunk, frames, stop))
            self._pause_client()
            return False
        return True

    def _wait_for_intents(self, audit: AuditService, out: bytes) -> bool:
        """Submit the intents of what was just judged; True when ``out`` must wait until they are durable."""
        assert self.gate is not None and self.gate.trail is not None
        trail = self.gate.trail
        if not trail.has_intents:
            return False
        intents = trail.take_intents()
        if not audit.healthy:
            if audit.fail_open:
                audit.record(intents)  # written when the store is back
            else:
                # Only stand-ins are forwarded during an outage: nothing runs, and nothing can be written.
                log.warning("audit store unavailable: %d refused statement(s) not recorded", len(intents))
            return False
        try:
            future = audit.enqueue(intents)
        except AuditStoreUnavailable:
            self.fail_client(OUTAGE_SQLSTATE, _LOST_STORE)
            return True
        self._audit_wait = future
        self._waiting_bytes = out
        future.add_done_callback(self._intents_written)
        return True

    def _intents_written(self, future: asyncio.Future[object]) -> None:
        self._audit_wait = None
        out, self._waiting_bytes = self._waiting_bytes, b""
        if self._finished:
            return
        failed = future.cancelled() or future.exception() is not None
        if failed and not (self.audit is not None and self.audit.fail_open):
            self.fail_client(OUTAGE_SQLSTATE, _LOST_STORE)
            return
        self._send_upstream(out)
        self._release_held()

    def _send_upstream(self, out: bytes) -> None:
        """Forward judged bytes — unless a statement after them waits for approval: then the messages
        before it in the same run wait with it (the whole pipeline is held, not only its tail)."""
        if not out:
            return
        if self._approval is not None:
            self._before_hold += out
            return
        self.upstream.write(out)
        if self.gate is not None and self.gate.trail is not None:
            self.gate.trail.forwarded()

    def _hold_ended(self) -> None:
        out, self._before_hold = self._before_hold, b""
        self._send_upstream(out)
        self._release_held()

    def _ask_approvers(self, hold: Hold | None) -> None:
        """The gate stopped at a message that needs approval: ask, tell the client, wait for the verdict."""
        if hold is None or self._approvals is None:
            return
        try:
            pending = self._approvals(hold)
        except Exception:
            log.exception("could not open an approval request")
            self.fail_client("58000", "pgproxy could not open an approval request; the statement was not run")
            return
        self._approval = pending
        self._hold = hold
        if pending.notice:  # none for a "return now" session: its refusal names the request
            self.client.write(be.NoticeResponse.build("NOTICE", "00000", pending.notice).encode())
        pending.verdict.add_done_callback(self._approvers_decided)

    def cancel_hold(self) -> None:
        """The client sent a cancel request: a statement waiting for approval stops waiting (57014)."""
        pending = self._approval
        if pending is None or self._finished:
            return
        self._approval = None
        pending.withdraw()
        assert self.gate is not None
        self.gate.holds.resolve(Verdict(pending.request_id, approved=False, cancelled=True))
        self._hold_ended()

    def _approvers_decided(self, future: asyncio.Future[Verdict]) -> None:
        if self._approval is None or self._approval.verdict is not future:
            return  # cancelled by the client meanwhile: already answered
        self._approval = None
        if self._finished or future.cancelled():
            return
        error = future.exception()
        if error is not None:
            log.error("approval request failed: %s", error)
            self.fail_client("58000", "pgproxy lost the approval request; the statement was not run")
            return
        assert self.gate is not None
        self.gate.holds.resolve(future.result())
        self._hold_ended()

    def _read_catalog(self, database: str) -> None:
        """The gate needs a (fresh) catalog reading to plan masking: read it; held messages wait for it."""
        assert self.gate is not None and self.gate.masking is not None
        self.gate.masking.wants_catalog = False
        if self._catalog_wait is not None or self._load_catalog is None:
            return
        self._catalog_wait = asyncio.ensure_future(self._load_catalog(database))
        self._catalog_wait.add_done_callback(self._catalog_read)

    def _catalog_read(self, future: asyncio.Future[object]) -> None:
        self._catalog_wait = None
        if self._finished:
            return
        assert self.gate is not None and self.gate.masking is not None
        failed = future.cancelled() or future.exception() is not None
        if failed:
            log.warning("could not read the catalog for masking: %s", "cancelled" if future.cancelled() else
                        future.exception())
        self.gate.masking.catalog_failed = failed
        self._release_held()

    def _pause_client(self) -> None:
        if self._client_paused:
            return
        self._client_paused = True
        if self.client.transport is not None and not self.client.transport.is_closing():
            self.client.transport.pause_reading()

    def _release_held(self) -> None:
        """Forward held client messages now that the server has answered; stop again if still needed."""
        if self._audit_wait is not None or self._approval is not None or self._catalog_wait is not None:
            return  # their turn comes when the intents before them are durable, or approvers decided
        while self._held:
            chunk, frames, first = self._held.pop(0)
            if not self._forward_client(chunk, frames, first) or self._finished:
                return
        if self._client_paused:
            self._client_paused = False
            if self.client.transport is not None and not self.client.transport.is_closing():
                self.client.transport.resume_reading()

    # -- upstream → client ---------------------------------------------------------------------
    def from_upstream(self, data: bytes) -> None:
        try:
            complete, frames = self._upstream_framer.feed(data)
        except ProtocolError as exc:
            self._upstream_violation(exc.message)
            return
        server_sent = self.in_flight.server_sent
        for kind, start, end in frames:
            if kind not in _BACKEND_TYPES:
                self._upstream_violation(f"unknown message type {kind:#04x}")
                return
            if kind == _READY_FOR_QUERY:
                if end - start != 1 or complete[start] not in _TRANSACTION_STATES:
                    self._upstream_violation("malformed ReadyForQuery")
                    return
                self.transaction_status = chr(complete[start])
            server_sent(kind)
        if self.gate is not None and complete:
            try:
                complete = self.gate.from_server(complete, frames)
            except GateFatal as exc:
                self.fail_client(exc.sqlstate, exc.message)
                return
            except LimitExceeded as exc:
                log.info("%s", exc.message)
                self.client.write(exc.allowed)
                self.fail_client(exc.sqlstate, exc.message)
                return
            if self.audit is not None:
                trail = self.gate.trail
                assert trail is not None
                if trail.has_outcomes:
                    self.audit.record(trail.take_outcomes())
        if complete:
            self.client.write(complete)
        if self._held:
            self._release_held()
        if self._end_when_idle is not None and self._ending_point():
            self._end(self._end_when_idle)

    def _upstream_violation(self, detail: str) -> None:
        log.error("upstream protocol violation: %s", detail)
        self.fail_client("08P01", "pgproxy received an invalid message from the server")

    # -- ending --------------------------------------------------------------------------------
    def end_when_idle(self, error: be.ErrorResponse, *, let_transaction_finish: bool = False) -> None:
        """Send ``error`` (FATAL) and close once no request is in flight (and, if asked, no transaction)."""
        self._end_waits_for_transaction = let_transaction_finish
        if self._ending_point():
            self._end(error)
            return
        self._end_when_idle = error

    def _ending_point(self) -> bool:
        if not self.in_flight.idle:
            return False
        return not self._end_waits_for_transaction or self.transaction_status == "I"

    def end_now(self, error: be.ErrorResponse) -> None:
        self._end(error)

    def fail_client(self, sqlstate: str, message: str) -> None:
        self._end(be.ErrorResponse.build("FATAL", sqlstate, message))

    def _end(self, error: be.ErrorResponse) -> None:
        if self._finished:
            return
        self.end_reason = f"{error.sqlstate}: {error.message}"
        self.client.write(error.encode())
        self.finish()

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self.end_reason is None:
            self.end_reason = "the client ended the session" if self.client_terminated else "the connection closed"
        if self._approval is not None:
            self._approval.withdraw()  # the client is gone: its request no longer waits for anyone
            if self._hold is not None and self.gate is not None and self.gate.trail is not None:
                self.gate.trail.withdrawn(self._hold, self._approval.request_id)
            self._approval = None
        if self.audit is not None and self.gate is not None and self.gate.trail is not None:
            self.audit.record(self.gate.trail.take_intents() + self.gate.trail.session_ended())
        if not self.upstream.closed:
            if not self.client_terminated:
                self.upstream.write(b"X\x00\x00\x00\x04")  # Terminate: end the backend cleanly
            self.upstream.close()
        self.client.close()
        self._on_finished()

    def _closed(self, exc: Exception | None) -> None:
        self.finish()

    @staticmethod
    def _pause(other: Endpoint) -> Callable[[], None]:
        """Backpressure: this side's write buffer is full, so stop reading from the other side."""

        def pause() -> None:
            if other.transport is not None and not other.transport.is_closing():
                other.transport.pause_reading()

        return pause

    def _resume(self, other: Endpoint) -> Callable[[], None]:
        def resume() -> None:
            if other is self.client and self._client_paused:
                return  # the client stays paused until its held messages can go
            if other.transport is not None and not other.transport.is_closing():
                other.transport.resume_reading()

        return resume
