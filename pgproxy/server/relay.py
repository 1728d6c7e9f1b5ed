"""The established-session relay: frame both directions, forward complete messages, track idleness.

Hot path. Each chunk read is framed (so later stages can see whole messages) and the complete
messages are forwarded in one ``write`` without copying or decoding them. The relay counts the
requests that expect a ReadyForQuery (Query, Sync, FunctionCall) so it knows when the session is
idle — the only safe moment to end it for shutdown or token expiry. Flow control: when one side's
write buffer fills, reading from the other side stops until it drains, so a slow client never
makes pgproxy hold a whole result set in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

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
    ) -> None:
        self.client = client
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
        client_sent = self.in_flight.client_sent
        for kind, _, _ in frames:
            client_sent(kind)
            if kind == _TERMINATE:
                self.client_terminated = True
        if complete:
            self.upstream.write(complete)

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
        if complete:
            self.client.write(complete)
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
        self.client.write(error.encode())
        self.finish()

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
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
            if other.transport is not None and not other.transport.is_closing():
                other.transport.resume_reading()

        return resume
