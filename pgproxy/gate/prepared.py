"""Which prepared statement each name stands for on the server, kept in step with the server's answers.

A named statement (protocol Parse, or SQL ``PREPARE``) is classified once, when its text passes
through, and every later Bind or ``EXECUTE`` is judged by that classification. That is only sound if
pgproxy's idea of what a name means is the server's: a Parse can fail (duplicate name, bad SQL, or
skipped after an earlier error), a Close can be skipped, a ``DEALLOCATE`` can fail. So definitions
and removals are recorded as *pending* effects and become facts only when the server confirms them
(ParseComplete, CloseComplete, CommandComplete); a failure drops the pending effects it covers and
the view is rebuilt from what is confirmed.

Lookups see every pending effect as if it will succeed. That is safe inside one batch (after an
error the server skips the rest of the batch, so a Bind that relies on a failed Parse never runs),
but not across batches: a lookup whose answer depends on an effect still pending in an *earlier*
batch reports ``must_wait`` and the caller holds the client's stream until the server has answered.

Sans-IO and pure: the caller reports what it forwarded and what the server sent back. Any sequence
of server messages this model does not expect clears every name (later uses are then unknown, which
policy denies): it must never guess.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from pgproxy.sql.statement import Category, Statement, strictest

log = logging.getLogger(__name__)

# Effects on the name table. ``None`` as a name means "every name" (DEALLOCATE ALL, DISCARD ALL).
Effect = tuple[str | None, Statement | None]  # (name, statement to define) or (name, None) to remove

_PARSE, _CLOSE, _EXECUTE, _QUERY, _FUNCTION, _SYNC = "P", "C", "E", "Q", "F", "S"
_COPY_END = "c"  # the client's CopyDone/CopyFail sent before the server's CopyInResponse: a marker only
_MARKERS = frozenset({_QUERY, _FUNCTION, _SYNC})
_NO_EFFECTS: list[Effect] = []  # each answered by one ReadyForQuery


class _Request:
    """One forwarded request whose answer is followed (a plain class: one is made per message)."""

    __slots__ = ("batch", "completed", "effects", "kind", "per_statement")

    def __init__(
        self,
        kind: str,
        batch: int,
        effects: list[Effect] = _NO_EFFECTS,
        per_statement: list[list[Effect]] | None = None,
    ) -> None:
        self.kind = kind
        self.batch = batch
        self.effects = effects  # applied when the request completes (never mutated: shared when empty)
        self.per_statement = per_statement  # Query only: each statement's effects, applied at its CommandComplete
        self.completed = 0  # Query: CommandCompletes seen so far

    def all_effects(self) -> list[Effect]:
        if self.per_statement is None:
            return self.effects
        return [effect for effects in self.per_statement[self.completed :] for effect in effects]


@dataclass(frozen=True, slots=True)
class Lookup:
    statement: Statement | None  # None: the name is not (or no longer) defined
    must_wait: bool  # the answer depends on a batch the server has not answered yet


class PreparedStatements:
    """The name → classification table of one session."""

    __slots__ = ("_batch", "_confirmed", "_copy_in", "_pending", "_portals", "_skipping")

    def __init__(self) -> None:
        self._confirmed: dict[str, Statement] = {}
        self._pending: deque[_Request] = deque()
        self._portals: dict[str, Statement | None] = {}
        self._batch = 0  # number of batch boundaries (Sync, Query, FunctionCall) forwarded so far
        self._skipping = False  # the server discards client messages until the next Sync
        self._copy_in = False  # the server is in COPY FROM STDIN and ignores Sync

    # -- lookups -------------------------------------------------------------------------------
    def lookup(self, name: str) -> Lookup:
        """What ``name`` will mean once everything forwarded so far has run, assuming it succeeds."""
        statement = self._confirmed.get(name)
        must_wait = False
        current = self._batch
        for request in self._pending:
            for effect_name, defined in request.all_effects():
                if effect_name is not None and effect_name != name:
                    continue
                if request.batch < current:
                    must_wait = True  # the server may yet refuse it, and the batch is already closed
                statement = _after(name, statement, effect_name, defined)
        return Lookup(statement, must_wait)

    def portal(self, name: str) -> Statement | None:
        return self._portals.get(name)

    @property
    def idle(self) -> bool:
        return not self._pending

    @property
    def skipping(self) -> bool:
        """The server is discarding client messages until the next Sync (after an extended-protocol error)."""
        return self._skipping

    @property
    def copy_in(self) -> bool:
        """The server is in COPY FROM STDIN, where it ignores Sync."""
        return self._copy_in

    @property
    def boundaries(self) -> int:
        """Requests forwarded that the server answers with ReadyForQuery (Query, Sync, FunctionCall)."""
        return self._batch

    # -- what pgproxy forwarded ----------------------------------------------------------------
    def sent_parse(self, name: str, statement: Statement | None) -> None:
        """A Parse went upstream; ``statement`` None means it is expected to fail (a denial)."""
        if statement is None:
            # The server discards the unnamed statement before it parses; a named one is untouched.
            self._append(_PARSE, [("", None)] if name == "" else _NO_EFFECTS)
        else:
            self._append(_PARSE, [(name, statement)])

    def sent_close_statement(self, name: str) -> None:
        self._append(_CLOSE, [(name, None)])

    def sent_close_portal(self, name: str) -> None:
        if not self._skipping:
            self._portals.pop(name, None)
        self._append(_CLOSE, _NO_EFFECTS)

    def sent_bind(self, portal: str, statement: Statement | None) -> None:
        if not self._skipping:
            self._portals[portal] = statement

    def sent_execute(self, portal: str) -> None:
        statement = self._portals.get(portal)
        self._append(_EXECUTE, statement_effects(statement) if statement is not None else _NO_EFFECTS)

    def sent_query(self, statements: tuple[Statement, ...]) -> None:
        """A Query went upstream; each statement's effects apply when that statement completes."""
        if self._skipping:
            return  # ignored by the server
        request = _Request(_QUERY, self._batch, per_statement=[statement_effects(s) for s in statements])
        self._pending.append(request)
        self._batch += 1

    def sent_function_call(self) -> None:
        self._boundary(_FUNCTION)

    def sent_sync(self) -> None:
        if self._copy_in:
            return  # the server ignores Sync during COPY FROM STDIN
        self._skipping = False
        self._boundary(_SYNC)

    def sent_copy_end(self) -> None:
        if self._copy_in:
            self._copy_in = False
        else:
            # Pipelined ahead of the CopyInResponse: marks where the Syncs the server ignores end.
            self._append(_COPY_END, _NO_EFFECTS)

    def _append(self, kind: str, effects: list[Effect]) -> None:
        if not self._skipping:
            self._pending.append(_Request(kind, self._batch, effects))

    def _boundary(self, kind: str) -> None:
        if self._skipping:
            return  # ignored by the server, answered by nothing
        self._pending.append(_Request(kind, self._batch))
        self._batch += 1

    # -- what the server answered --------------------------------------------------------------
    def parse_complete(self) -> None:
        self._complete(_PARSE)

    def close_complete(self) -> None:
        self._complete(_CLOSE)

    def command_complete(self) -> None:
        front = self._front()
        if front is None:
            return
        if front.kind == _EXECUTE:
            self._complete(_EXECUTE)
        elif front.kind == _QUERY and front.per_statement is not None:
            if front.completed < len(front.per_statement):
                for effect in front.per_statement[front.completed]:
                    self._apply(effect)
            front.completed += 1
        else:
            self._desync(f"CommandComplete while waiting for {front.kind}")

    def execute_finished_without_command(self) -> None:
        """EmptyQueryResponse or PortalSuspended: an Execute ended without completing a command."""
        front = self._front()
        if front is not None and front.kind == _EXECUTE:
            self._pending.popleft()

    def copy_in_started(self) -> None:
        """The server is in COPY FROM STDIN: Syncs already forwarded behind the COPY (and before the
        client's CopyDone/CopyFail, if sent) are ignored by the server, so they are not waited for."""
        self._copy_in = True
        kept = list(self._pending)[:1]
        rest = list(self._pending)[1:]
        for index, request in enumerate(rest):
            if request.kind == _COPY_END:
                self._copy_in = False  # the client has ended the COPY already
                kept.extend(rest[index + 1 :])
                break
            if request.kind != _SYNC:
                kept.append(request)
        self._pending = deque(kept)

    def error(self) -> None:
        self._copy_in = False
        front = self._front()
        if front is None:
            return
        if front.kind in (_QUERY, _FUNCTION):
            if front.per_statement is not None:
                front.per_statement = front.per_statement[: front.completed]  # later statements never ran
            return
        # Extended protocol: this request failed and the server skips everything up to the next Sync.
        while self._pending and self._pending[0].kind != _SYNC:
            self._drop(self._pending.popleft())
        if not self._pending:
            self._skipping = True

    def ready(self) -> None:
        while self._pending:
            request = self._pending.popleft()
            if request.kind in _MARKERS:
                break
            self._drop(request)  # never answered, so it did not take effect
        self._front()

    # -- internals -----------------------------------------------------------------------------
    def _front(self) -> _Request | None:
        while self._pending and self._pending[0].kind == _COPY_END:
            self._pending.popleft()  # the COPY it would have ended never started
        return self._pending[0] if self._pending else None

    def _complete(self, kind: str) -> None:
        front = self._front()
        if front is None or front.kind != kind:
            self._desync(f"completion of {kind} while waiting for {front.kind if front else 'nothing'}")
            return
        self._pending.popleft()
        for effect in front.effects:
            self._apply(effect)

    def _apply(self, effect: Effect) -> None:
        name, statement = effect
        if name is None:
            self._confirmed.clear()
            return
        after = _after(name, self._confirmed.get(name), name, statement)
        if after is None:
            self._confirmed.pop(name, None)
        else:
            self._confirmed[name] = after

    def _drop(self, request: _Request) -> None:
        if request.kind == _PARSE and any(name == "" for name, _ in request.effects):
            # A failed Parse of the unnamed statement has already discarded the previous one.
            self._confirmed.pop("", None)

    def _desync(self, detail: str) -> None:
        log.warning("prepared-statement tracking lost step with the server (%s); forgetting every name", detail)
        self._confirmed.clear()
        self._pending.clear()
        self._portals.clear()


def _after(
    name: str, current: Statement | None, effect_name: str | None, defined: Statement | None
) -> Statement | None:
    """The meaning of ``name`` after one effect, by the server's rules."""
    if effect_name is None or defined is None:
        return None  # removed (DEALLOCATE, Close, DISCARD ALL)
    if name == "":
        return defined  # the unnamed statement is simply replaced
    return current if current is not None else defined  # a named statement is never redefined


def statement_effects(statement: Statement) -> list[Effect]:
    """What a statement does to the name table when it completes (never mutate the result)."""
    command = statement.command
    if command == "PREPARE" and statement.prepared_name is not None and statement.prepared is not None:
        return [(statement.prepared_name, statement.prepared)]
    if command == "DEALLOCATE" and statement.prepared_name is not None:
        return [(statement.prepared_name, None)]
    if command in ("DEALLOCATE ALL", "DISCARD ALL"):
        return [(None, None)]
    return _NO_EFFECTS


_EMPTY = Statement(Category.READ, "EMPTY")  # an empty query string: the server answers EmptyQueryResponse


def meaning_of(statements: tuple[Statement, ...]) -> Statement:
    """What a Parse's text defines: its statement (the strictest, should a client send several)."""
    if not statements:
        return _EMPTY
    if len(statements) == 1:
        return statements[0]
    return strictest(statements) or statements[0]  # the server refuses several commands in one Parse


def needs_resolution(statement: Statement) -> bool:
    """Whether the statement refers to a prepared statement by name (EXECUTE, also inside EXPLAIN …)."""
    return (
        statement.command == "EXECUTE"
        or statement.explained is not None
        or (statement.prepared_name is not None and statement.command not in ("PREPARE", "DEALLOCATE"))
    )


def unknown_name(name: str) -> Statement:
    return Statement(Category.UNKNOWN, "EXECUTE", prepared_name=name, reason=f'prepared statement "{name}" is unknown')
