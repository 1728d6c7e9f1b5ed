"""Which client requests are still waiting for the server: the basis for "this session is idle".

Sans-IO and pure. The relay reports the type byte of every client message it forwards and of every
server message it relays; the tracker models the server's own rules so that requests the server
will never answer are not waited for:

- Query, FunctionCall and Sync are each answered by one ReadyForQuery;
- after an error in an extended-protocol batch the server discards every message up to the next
  Sync (a Query or FunctionCall sent in between gets no ReadyForQuery of its own);
- during COPY FROM STDIN the server ignores Sync and Flush until CopyDone or CopyFail.

Known gap: a Sync pipelined *before* the COPY data (libpq's extended-protocol COPY) is counted
although the server ignores it, so such a session is not seen as idle; the relay's deadlines bound
that. Counting too much is the safe direction: counting too little would end a session mid-result.

Idle means nothing forwarded is unanswered: the only moment a session can be ended without cutting
a result in half. It must not look at message contents.
"""

from __future__ import annotations

from collections import deque

_QUERY, _FUNCTION_CALL, _SYNC = ord("Q"), ord("F"), ord("S")
_EXTENDED = frozenset(b"PBDEC")  # Parse, Bind, Describe, Execute, Close: answered at the next Sync
_COPY_END = frozenset(b"cf")  # CopyDone, CopyFail
_ERROR, _COPY_IN, _READY = ord("E"), ord("G"), ord("Z")
# Marks a run of extended-protocol messages not yet closed by a Sync.
_BATCH = ord("x")


class InFlight:
    """Requests forwarded upstream and not yet answered, in order."""

    __slots__ = ("_copy_ends_sent", "_copy_in", "_pending", "_skipping")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._copy_in = False
        self._copy_ends_sent = 0  # CopyDone/CopyFail sent before the server's CopyInResponse arrived
        self._skipping = False  # the server discards client messages until the next Sync

    @property
    def idle(self) -> bool:
        return not self._pending

    @property
    def outstanding(self) -> int:
        """Forwarded requests (and unsynced extended batches) still waiting for the server."""
        return len(self._pending)

    def client_sent(self, kind: int) -> None:
        pending = self._pending
        if self._skipping:
            if kind == _SYNC:
                self._skipping = False
                pending.append(kind)
            return
        if kind in (_QUERY, _FUNCTION_CALL):
            pending.append(kind)
        elif kind in _EXTENDED:
            if not pending or pending[-1] != _BATCH:
                pending.append(_BATCH)
        elif kind == _SYNC:
            if not self._copy_in:
                pending.append(kind)
        elif kind in _COPY_END:
            if self._copy_in:
                self._copy_in = False
            else:
                self._copy_ends_sent += 1

    def server_sent(self, kind: int) -> None:
        pending = self._pending
        if kind == _READY:
            while pending and pending[0] == _BATCH:
                pending.popleft()
            if pending:
                pending.popleft()
        elif kind == _ERROR:
            self._copy_in = False
            if pending and pending[0] == _BATCH:
                # The server now skips everything up to the batch's Sync, which alone is answered.
                while pending and pending[0] != _SYNC:
                    pending.popleft()
                if not pending:  # that Sync has not been sent yet: skip with the server until it is
                    self._skipping = True
        elif kind == _COPY_IN:
            if self._copy_ends_sent:
                self._copy_ends_sent -= 1  # the client already finished this COPY
            else:
                self._copy_in = True
