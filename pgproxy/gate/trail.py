"""The audit trail of one session: a record for each statement the gate judged, and what came of it.

The gate reports what it judged and forwards (``query``, ``parse_denied``, ``bind``, ``execute``,
``function_call``, ``sync``); the trail builds the *intent* records, which the relay makes durable
before the bytes go upstream (``take_intents``). Then it follows the server's answers in the order the
server gives them: each statement of a Query and each Execute ends in CommandComplete,
EmptyQueryResponse, PortalSuspended, FunctionCallResponse or ErrorResponse, and after an error the rest
of the Query (or of the extended batch, up to Sync) does not run. Each end becomes an *outcome* record
naming its intent (``take_outcomes``): command tag, rows, SQLSTATE and message, duration.

What is one statement: each statement of a Query message; each execution of a prepared statement (an
intent at the first Execute of a portal; further Executes of a suspended portal add outcomes to it);
each FunctionCall; and each refused Parse or Bind (nothing ran, the record says why).

Sans-IO and pure apart from reading the clock: no sockets, no asyncio, no store. It must never put a
parameter value, a token or a result value in a record. Statement text is the client's own, with every
literal replaced by ``$n`` when ``redact_literals`` is set.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pglast.parser

from pgproxy.audit.record import AuditRecord, Decision, RecordKind, utc_timestamp
from pgproxy.auth.identity import Identity
from pgproxy.gate.holds import Hold, Verdict
from pgproxy.policy.engine import Decision as PolicyDecision
from pgproxy.sql.classify import statement_texts
from pgproxy.sql.statement import Statement, StatementSource

_NOT_RUN = "not run: an earlier error ended the request"
_WITHHELD = "(text withheld: pgproxy could not parse it to redact its literals)"


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """What every record of one session carries."""

    session_id: str
    client_address: str | None
    identity: Identity
    database: str
    upstream_role: str | None
    application_name: str | None


def fingerprint(normalized: str | None) -> str | None:
    """16 hex digits identifying a statement's shape: equal for texts that differ only in constants."""
    if normalized is None:
        return None
    return hashlib.blake2b(normalized.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def sources_of(text: str, normalized: str | None, count: int, *, redact: bool) -> list[StatementSource]:
    """The text and fingerprint of each of the ``count`` statements of ``text`` (its normalization given)."""
    if count <= 1:
        if normalized is None:
            try:
                normalized = pglast.parser.normalize(text)
            except Exception:
                normalized = None
        shown = text if not redact else (normalized if normalized is not None else _WITHHELD)
        return [StatementSource(shown, fingerprint(normalized))]
    parts = statement_texts(text, count)
    if parts is None:  # cannot be told apart: each record shows the whole message
        return [StatementSource(text if not redact else _WITHHELD, None)] * count
    found = []
    for part in parts:
        try:
            part_normalized: str | None = pglast.parser.normalize(part)
        except Exception:
            part_normalized = None
        found.append(sources_of(part, part_normalized, 1, redact=redact)[0])
    return found


class _Execution:
    """One statement the server will answer; its outcome is recorded when the answer arrives."""

    __slots__ = ("intent_id", "started")

    def __init__(self, intent_id: str) -> None:
        self.intent_id = intent_id
        self.started = 0.0  # set when its bytes are forwarded


class _Portal:
    __slots__ = ("approval", "decision", "intent_id", "source", "statement")

    def __init__(
        self, statement: Statement, decision: PolicyDecision, source: StatementSource | None, approval: Verdict | None
    ) -> None:
        self.statement = statement
        self.decision = decision
        self.source = source
        self.approval = approval
        self.intent_id: str | None = None  # set at its first Execute


_BOUNDARY = None  # an expected ReadyForQuery in the queue of answers


class AuditTrail:
    """Intent and outcome records for one session."""

    def __init__(
        self, facts: SessionFacts, *, redact_literals: bool, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        identity = facts.identity
        self.redact_literals = redact_literals
        self._session_id = facts.session_id
        self._common: dict[str, Any] = {
            "session_id": facts.session_id,
            "client_address": facts.client_address,
            "subject": identity.subject,
            "email": identity.email,
            "groups": identity.groups,
            "issuer": identity.issuer,
            "database": facts.database,
            "upstream_role": facts.upstream_role,
            "application_name": facts.application_name,
        }
        # Validated once (raises InvalidRecord), so that each statement's records can skip it.
        AuditRecord(kind=RecordKind.SESSION_START, time=utc_timestamp(), **self._common)
        self._clock = clock
        self._intents: list[AuditRecord] = []
        self._outcomes: list[AuditRecord] = []
        self._expected: deque[_Execution | None] = deque()
        self._unstamped: list[_Execution] = []
        self._portals: dict[str, _Portal] = {}
        self._last_end = 0.0
        self._completed_in_batch: str | None = None  # the intent completed last before the next ReadyForQuery

    # -- what the relay takes --------------------------------------------------------------------
    @property
    def has_intents(self) -> bool:
        return bool(self._intents)

    def take_intents(self) -> list[AuditRecord]:
        """Records that must be durable before the bytes just judged are forwarded."""
        intents, self._intents = self._intents, []
        return intents

    @property
    def has_outcomes(self) -> bool:
        return bool(self._outcomes)

    def session_ended(self) -> list[AuditRecord]:
        """Outcomes for what the server had not answered when the session ended, and those not taken yet."""
        while self._expected:
            execution = self._expected.popleft()
            if execution is not None:
                self._outcome(execution.intent_id, 0.0, reason="the session ended before the server answered")
        return self.take_outcomes()

    def take_outcomes(self) -> list[AuditRecord]:
        outcomes, self._outcomes = self._outcomes, []
        return outcomes

    def forwarded(self) -> None:
        """The bytes judged so far went upstream: their statements' durations start now."""
        if self._unstamped:
            now = self._clock()
            for execution in self._unstamped:
                execution.started = now
            self._unstamped.clear()

    # -- what the client sent (called by the gate) -----------------------------------------------
    def query(
        self,
        statements: Sequence[Statement],
        decisions: Sequence[PolicyDecision],
        sources: Sequence[StatementSource],
        *,
        discarded: bool,
        approval: Verdict | None = None,
    ) -> None:
        """A Query went upstream (or its stand-in, when a decision refused it)."""
        for index, statement in enumerate(statements):
            self._intent(statement, decisions[index], sources[index], index, discarded=discarded, approval=approval)
        if not discarded:
            self._expected.append(_BOUNDARY)

    def parse_denied(self, statement: Statement, decision: PolicyDecision, source: StatementSource,
                     *, discarded: bool, approval: Verdict | None = None) -> None:
        self._intent(statement, decision, source, 0, discarded=discarded, approval=approval)

    def bind(self, portal: str, statement: Statement, decision: PolicyDecision, source: StatementSource | None,
             *, discarded: bool, approval: Verdict | None = None) -> None:
        """A Bind went upstream; a refused one (its stand-in) is recorded now, an allowed one at Execute."""
        allowed = decision.effect.value == Decision.ALLOW or (approval is not None and approval.approved)
        if not allowed:
            self._portals.pop(portal, None)
            self._intent(statement, decision, source, 0, discarded=discarded, approval=approval)
        elif not discarded:
            self._portals[portal] = _Portal(statement, decision, source, approval)

    def execute(self, portal: str, *, discarded: bool) -> None:
        found = self._portals.get(portal)
        if found is None or discarded:
            return  # nothing bound here (the server answers with an error) or the server skips it
        if found.intent_id is None:
            found.intent_id = self._intent(
                found.statement, found.decision, found.source, 0, discarded=False, approval=found.approval
            )
        else:
            self._expect(found.intent_id)  # the next rows of a suspended portal

    def close_portal(self, portal: str) -> None:
        self._portals.pop(portal, None)

    def function_call(self, statement: Statement, decision: PolicyDecision, *, discarded: bool) -> None:
        self._intent(statement, decision, StatementSource(f"function call {statement.command}", None), 0,
                     discarded=discarded)
        if not discarded:
            self._expected.append(_BOUNDARY)

    def withdrawn(self, hold: Hold, request_id: str) -> None:
        """A held statement whose client went away while it waited: recorded, never run."""
        verdict = Verdict(request_id, approved=False, cancelled=True)
        for index, statement in enumerate(hold.statements or (hold.decision.statement,)):
            self._intent(statement, hold.decision, hold.source, index, discarded=True, approval=verdict,
                         not_run="not run: the client went away while the statement waited for approval")

    def sync(self) -> None:
        self._expected.append(_BOUNDARY)

    def _intent(
        self, statement: Statement, decision: PolicyDecision, source: StatementSource | None, index: int,
        *, discarded: bool, approval: Verdict | None = None,
        not_run: str = "not run: the server was discarding messages until Sync",
    ) -> str:
        values = self._common.copy()
        values.update(
            kind=RecordKind.STATEMENT,
            time=utc_timestamp(),
            statement_index=index,
            text=source.text if source is not None else None,
            fingerprint=source.fingerprint if source is not None else None,
            category=statement.category.value,
            command=statement.command,
            relations=_relations(statement),
            decision=_DECISIONS[decision.effect.value],
            rule_id=decision.rule_id,
            reason=None if decision.effect.value == Decision.ALLOW else decision.reason,
        )
        if approval is not None:  # a held statement: the approvers' answer is part of its record
            values.update(approval_id=approval.request_id, approvers=approval.approvers)
            values["reason"] = None if approval.approved else approval.refusal(decision)[0].reason
        record = AuditRecord.trusted(**values)
        self._intents.append(record)
        if discarded:
            self._outcome(record.record_id, 0.0, reason=not_run)
        else:
            self._expect(record.record_id)
        return record.record_id

    def _expect(self, intent_id: str) -> None:
        execution = _Execution(intent_id)
        self._expected.append(execution)
        self._unstamped.append(execution)

    # -- what the server answered ---------------------------------------------------------------
    def completed(self, tag: str) -> None:
        """CommandComplete."""
        execution = self._front()
        if execution is not None:
            self._end(execution, command_tag=tag, rows=_rows(tag))
            self._completed_in_batch = execution.intent_id

    def ended_without_command(self, reason: str) -> None:
        """EmptyQueryResponse, PortalSuspended or FunctionCallResponse."""
        execution = self._front()
        if execution is not None:
            self._end(execution, reason=reason)

    def failed(self, sqlstate: str | None, message: str | None) -> None:
        """ErrorResponse: the statement at the front failed; the rest of the request will not run."""
        execution = self._front()
        if execution is not None:
            self._end(execution, sqlstate=sqlstate, error_message=message)
        elif self._completed_in_batch is not None:
            # e.g. a deferred constraint failing at the implicit commit after the statement completed.
            self._outcome(self._completed_in_batch, 0.0, sqlstate=sqlstate, error_message=message,
                          reason="the transaction failed after the statement completed")
        self._completed_in_batch = None
        while self._expected and self._expected[0] is not _BOUNDARY:
            skipped = self._expected.popleft()
            assert skipped is not None
            self._outcome(skipped.intent_id, 0.0, reason=_NOT_RUN)

    def ready(self) -> None:
        """ReadyForQuery: whatever was still expected before it never ran."""
        self._completed_in_batch = None
        while self._expected:
            execution = self._expected.popleft()
            if execution is _BOUNDARY:
                return
            self._outcome(execution.intent_id, 0.0, reason=_NOT_RUN)

    def _front(self) -> _Execution | None:
        if self._expected and self._expected[0] is not _BOUNDARY:
            return self._expected.popleft()
        return None

    def _end(self, execution: _Execution, **outcome: Any) -> None:
        now = self._clock()
        started = max(execution.started, self._last_end) if execution.started else now
        self._last_end = now
        self._outcome(execution.intent_id, (now - started) * 1000.0, **outcome)

    def _outcome(self, intent_id: str, duration_ms: float, **outcome: Any) -> None:
        self._outcomes.append(
            AuditRecord.trusted(
                kind=RecordKind.OUTCOME,
                time=utc_timestamp(),
                session_id=self._session_id,
                intent_id=intent_id,
                duration_ms=round(max(0.0, duration_ms), 3),
                **outcome,
            )
        )


_DECISIONS = {decision.value: decision for decision in Decision}
_RELATIONS: dict[int, tuple[Statement, tuple[str, ...]]] = {}  # id → (statement kept alive, its relations)


def _relations(statement: Statement) -> tuple[str, ...]:
    """The statement's relations as the record lists them, sorted; remembered per (shared, cached) statement."""
    found = _RELATIONS.get(id(statement))
    if found is not None and found[0] is statement:
        return found[1]
    relations = tuple(sorted(str(relation) for relation in statement.relations))
    if len(_RELATIONS) >= 4096:
        _RELATIONS.clear()
    _RELATIONS[id(statement)] = (statement, relations)
    return relations


def _rows(tag: str) -> int | None:
    """The row count of a command tag ("SELECT 5", "INSERT 0 5", "COPY 3"); None when it has none."""
    last = tag.rpartition(" ")[2]
    return int(last) if last.isdigit() and " " in tag else None


def trail_sources(text: str | Statement, key: str | None, count: int, redact: bool) -> list[StatementSource]:
    """``sources_of`` for what the gate decoded (a Statement when the text was not valid in its encoding)."""
    if isinstance(text, Statement):
        return [StatementSource("(text not shown: not valid in the session's client_encoding)", None)] * max(count, 1)
    return sources_of(text, key, count, redact=redact)


def trail_source(text: str | Statement, key: str | None, count: int, redact: bool) -> StatementSource:
    """The text of a Parse (one statement; the server refuses several)."""
    if count > 1 and not isinstance(text, Statement):
        return StatementSource(text if not redact else _WITHHELD, None)
    return trail_sources(text, key, 1, redact)[0]


def error_fields(body: bytes, codec: str) -> tuple[str | None, str | None]:
    """The SQLSTATE and message of an ErrorResponse body (the bytes after its length)."""
    sqlstate = message = None
    for field in body.split(b"\x00"):
        if field[:1] == b"C":
            sqlstate = field[1:].decode("ascii", "replace")
        elif field[:1] == b"M":
            message = field[1:].decode(codec, "replace")
    if sqlstate is not None and not (len(sqlstate) == 5 and sqlstate.isalnum() and sqlstate.upper() == sqlstate):
        sqlstate = None  # never let a malformed code make the record invalid
    return sqlstate, message
