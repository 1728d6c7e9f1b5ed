"""The statement gate of one session: every request is classified and decided before it goes upstream.

The relay hands over each run of complete client messages; the gate answers with the bytes to
forward (the client's original bytes, with each denied message swapped for a stand-in, see
``denial``) and how many messages it got through. It stops early only when a message refers to a
prepared statement whose definition the server has not confirmed yet (``prepared``); the relay
holds the rest until the server answers. Server messages pass through ``from_server`` so the gate
can follow prepared statements, the client's encoding, and replace the server's answers to stand-ins.

What is judged: Query (every statement; the strictest decision wins), Parse, Bind (a named statement
is judged again at each use, so a policy reload applies to it), FunctionCall. Everything else is
forwarded as is. Sans-IO: no sockets, no asyncio; decisions come from the pure policy engine.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Sequence
from dataclasses import replace

from pgproxy.auth.identity import Identity
from pgproxy.gate import denial
from pgproxy.gate.answers import follow_answers
from pgproxy.gate.barrier import SettingsBarrier, barrier_decision
from pgproxy.gate.fastpath import fast_path_statement
from pgproxy.gate.holds import Hold, Holds, Verdict, bound_text, message_digest
from pgproxy.gate.judge import Judge, PolicySource
from pgproxy.gate.limits import COUNTED, RowLimits
from pgproxy.gate.masking import GateMasking, Wait
from pgproxy.gate.prepared import PreparedStatements, meaning_of, needs_resolution, unknown_name
from pgproxy.gate.reading import GateFatal, TextReading
from pgproxy.gate.splice import Splice
from pgproxy.gate.trail import AuditTrail, trail_source, trail_sources
from pgproxy.masking.plan import ResultPlan
from pgproxy.policy.engine import Decision, Effect
from pgproxy.sql.classify import Classifier, resolve_prepared
from pgproxy.sql.statement import Category, Statement, StatementSource
from pgproxy.wire.framing import Frame

log = logging.getLogger(__name__)

_Q, _P, _B, _E, _C, _S, _F, _D = b"QPBECSFD"
_COPY_DONE, _COPY_FAIL = b"cf"
_JUDGED = frozenset(b"QPBECSFcf")
_TEXT = frozenset(b"QP")  # messages carrying statement text
_NAME_BYTES = 63  # the server keys prepared statements and portals by their first NAMEDATALEN - 1 bytes
# Server messages the gate follows: completions, errors, ReadyForQuery, ParameterStatus, CopyInResponse.
_FOLLOWED = frozenset(b"123CIsEZSG")
_unpack_oid = struct.Struct("!I").unpack_from
# Also followed when masking: every message that tells which result set rows belong to, and the rows.
_MASKED = frozenset(b"123CIsEZTDdcHntG")
_MASK_CHECKED = frozenset(b"QPBF")  # requests that run statements: a session's masks are checked at each
_NOW_MASKED = (
    "the policy now masks columns for this session; pgproxy ended it so that every result is masked: reconnect"
)
_AUDITED = frozenset(b"V")  # also followed when auditing: FunctionCallResponse ends a fast-path call


class SessionGate:
    """Classify → decide → forward or stand in, for one client session."""

    def __init__(
        self,
        *,
        classifier: Classifier,
        policies: PolicySource,
        identity: Identity,
        database: str,
        read_only: bool,
        client_encoding: str = "UTF8",
        server_encoding: str = "UTF8",
        standard_conforming_strings: str = "on",
        limits: RowLimits | None = None,
        trail: AuditTrail | None = None,
        holding: bool = False,
        masking: GateMasking | None = None,
    ) -> None:
        """Raises :class:`UnsupportedEncoding` or :class:`GateFatal` when the session cannot be judged."""
        self.judge = Judge(policies, identity, database, read_only=read_only)
        self.identity = identity
        self.database = database
        self.prepared = PreparedStatements()
        self._classifier = classifier
        self.reading = TextReading(client_encoding, server_encoding, standard_conforming_strings)
        self.stand_ins = denial.StandIns()
        self.barrier = SettingsBarrier()
        self.limits = limits if limits is not None and limits.active else None
        self.followed = _FOLLOWED | COUNTED if self.limits is not None else _FOLLOWED
        self.trail = trail
        self.holds = Holds(enabled=holding)  # with an approval service: hold, rather than refuse, for approval
        if trail is not None:
            self.followed = self.followed | _AUDITED
        # A session the policy gives no masks does without result masking (no cost); should a policy
        # reload give it masks, it is ended at its next statement (see ``_judge``).
        self._unmasked_until = masking if masking is not None and not masking.masks else None
        self.masking = masking if self._unmasked_until is None else None
        masking = self.masking
        self._judged = _JUDGED
        if masking is not None:
            self.followed = self.followed | _MASKED
            self._judged = _JUDGED | {_D}

    # -- client → server -----------------------------------------------------------------------
    def from_client(self, data: bytes, frames: Sequence[Frame], first: int = 0) -> tuple[bytes, int]:
        """Judge ``frames[first:]``; return the bytes to forward and the index of the first frame not handled.

        The returned index is ``len(frames)`` unless a message must wait for the server's answers.
        """
        splice: Splice | None = None
        begin = frames[first][1] - 5 if first < len(frames) else len(data)
        index = first
        for index in range(first, len(frames)):
            kind, start, end = frames[index]
            if kind not in self._judged:
                continue
            try:
                outcome = self._judge(kind, data, start, end)
            except (ValueError, IndexError, struct.error) as exc:
                raise GateFatal("08P01", f"invalid {chr(kind)!r} message from the client") from exc
            if isinstance(outcome, _Wait):
                break
            if outcome is not None:
                if splice is None:
                    splice = Splice(data, begin)
                splice.swap(start - 5, end, outcome)
        else:
            index = len(frames)
        stop = frames[index][1] - 5 if index < len(frames) else len(data)
        if splice is not None:
            return splice.until(stop), index
        return (data[begin:stop] if (begin or stop != len(data)) else data), index

    def _judge(self, kind: int, data: bytes, start: int, end: int) -> bytes | _Wait | None:
        """None: forward the message as is; bytes: forward this stand-in instead; _WAIT: hold it."""
        prepared = self.prepared
        if self._unmasked_until is not None and kind in _MASK_CHECKED and self._unmasked_until.masks:
            raise GateFatal("57P01", _NOW_MASKED)
        if self.barrier.until is not None and kind in _TEXT:
            if not self.barrier.refuses:
                return _WAIT
            refused = barrier_decision()
            if kind == _Q:
                self._sent_query(())
                return self._stand_in(refused, denial.query_stand_in)
            raw_name = data[start : data.index(b"\x00", start, end)]
            prepared.sent_parse(self._name(raw_name), None)
            if self.masking is not None:
                self.masking.results.parse()
            return self._stand_in(refused, lambda marker: denial.parse_stand_in(raw_name, marker))
        if kind == _Q:
            text = self._text(data, start, end)
            judged = self._statements(text)
            if judged is None:
                return _WAIT
            statements, key = judged
            decision = self.judge.verdict(statements)
            plans = None
            if self.masking is not None:
                screened = self.masking.screen_query(statements, text, key, decision)
                if isinstance(screened, Wait):
                    return _WAIT
                statements, plans, decision = screened
            verdict = None
            if decision is not None and decision.effect is Effect.REQUIRE_APPROVAL and self.holds.enabled:
                digest = message_digest(b"Q", self.database, data[start:end])
                verdict = self._settle(decision, statements, "Query", text, key, digest=digest)
                if verdict is None:
                    return _WAIT
                decision = None if verdict.approved else decision
            if self.trail is not None:
                self._audit_query(text, key, statements, decision, verdict)
            if decision is not None:
                self._sent_query(())
                return self._stand_in(decision, denial.query_stand_in, verdict)
            self._sent_query(statements, plans)
            self.barrier.after_query(statements, prepared.boundaries)
            return None
        if kind == _P:
            name_end = data.index(b"\x00", start, end)
            query_end = data.find(b"\x00", name_end + 1, end)
            raw_name = data[start:name_end]
            name = self._name(raw_name)
            text = self._decode(data[name_end + 1 : query_end if query_end >= 0 else end])
            judged = self._statements(text)
            if judged is None:
                return _WAIT
            statements, key = judged
            decision = self.judge.verdict(statements)
            meaning = meaning_of(statements)
            if self.masking is not None:
                screened_parse = self.masking.screen_parse(meaning, text, key, decision)
                if isinstance(screened_parse, Wait):
                    return _WAIT
                meaning, decision = screened_parse
            verdict = None
            if decision is not None and decision.effect is Effect.REQUIRE_APPROVAL and self.holds.enabled:
                # its text and parameter types: not its name
                digest = message_digest(b"P", self.database, data[name_end + 1 : end])
                verdict = self._settle(decision, statements, "Parse", text, key, digest=digest)
                if verdict is None:
                    return _WAIT
                decision = None if verdict.approved else decision
            if self.trail is not None:
                source = trail_source(text, key, len(statements), self.trail.redact_literals)
                if decision is not None:
                    self.trail.parse_denied(meaning, decision, source, discarded=prepared.skipping, approval=verdict)
                else:
                    meaning = replace(meaning, source=source)  # Binds record the text it was prepared with
            if self.masking is not None:
                self.masking.results.parse()
                self.masking.after_statements((meaning,))
            if decision is not None:
                prepared.sent_parse(name, None)
                return self._stand_in(decision, lambda marker: denial.parse_stand_in(raw_name, marker), verdict)
            if verdict is not None:
                self.holds.approve_name(name, meaning, verdict)
            prepared.sent_parse(name, meaning)
            return None
        if kind == _B:
            portal_end = data.index(b"\x00", start, end)
            name_end = data.index(b"\x00", portal_end + 1, end)
            raw_portal = data[start:portal_end]
            name = self._name(data[portal_end + 1 : name_end])
            portal = self._name(raw_portal)
            found = prepared.lookup(name)
            if found.must_wait:
                return _WAIT
            statement = found.statement or unknown_name(name)
            decision = self.judge.verdict((statement,))
            verdict = None
            if decision is not None and decision.effect is Effect.REQUIRE_APPROVAL and self.holds.enabled:
                verdict = self.holds.approved_bind(name, statement) or self._settle(
                    decision, (statement,), "Bind", statement.source, None,
                    digest=message_digest(b"B", self.database, data[name_end + 1 : end], bound_text(statement)),
                )
                if verdict is None:
                    return _WAIT
                decision = None if verdict.approved else decision
            if self.trail is not None:
                self.trail.bind(
                    portal, statement, decision or self.judge.decide(statement), statement.source,
                    discarded=prepared.skipping, approval=verdict,
                )
            if self.masking is not None:
                self.masking.bind(portal, statement if decision is None else None, data, start, end)
            if decision is not None:
                prepared.sent_bind(portal, None)
                return self._stand_in(decision, lambda marker: denial.bind_stand_in(raw_portal, marker), verdict)
            prepared.sent_bind(portal, statement)
            return None
        if kind == _E:
            portal = self._name(data[start : data.find(b"\x00", start, end)])
            if self.trail is not None:
                self.trail.execute(portal, discarded=prepared.skipping)
            if self.masking is not None:
                self.masking.results.execute(portal)
            prepared.sent_execute(portal)
            self.barrier.after_execute(prepared.portal(portal), prepared.boundaries)
        elif kind == _S:
            if self.trail is not None and not prepared.copy_in:
                self.trail.sync()
            if self.masking is not None:
                self.masking.results.sync(prepared.copy_in)
            prepared.sent_sync()
            self.barrier.after_sync()
        elif kind == _C:
            name = self._name(data[start + 1 : end - 1])
            if self.masking is not None:
                self.masking.results.close(None if data[start] == ord("S") else name)
            if data[start] == ord("S"):
                prepared.sent_close_statement(name)
            else:
                prepared.sent_close_portal(name)
                if self.trail is not None and not prepared.skipping:
                    self.trail.close_portal(name)
        elif kind == _F:
            call = fast_path_statement(_unpack_oid(data, start)[0])
            decision = self.judge.verdict((call,))
            if self.masking is not None:
                decision = self.masking.screen_call(call, decision)
            if self.trail is not None:
                self.trail.function_call(call, decision or self.judge.decide(call), discarded=prepared.skipping)
            prepared.sent_function_call()
            if self.masking is not None:
                self.masking.results.function_call()
            if decision is not None:
                return self._stand_in(decision, denial.query_stand_in)
        elif kind in (_COPY_DONE, _COPY_FAIL):
            prepared.sent_copy_end()
            if self.masking is not None:
                self.masking.results.copy_end()
        elif kind == _D and self.masking is not None:
            name = self._name(data[start + 1 : end - 1])
            of_statement = data[start] == ord("S")
            self.masking.describe(of_statement, name, prepared.lookup(name).statement if of_statement else None)
        return None

    def _sent_query(self, statements: tuple[Statement, ...], plans: list[ResultPlan] | None = None) -> None:
        self.prepared.sent_query(statements)
        if self.masking is not None:
            self.masking.results.query(plans or [])
            self.masking.after_statements(statements)

    def _name(self, raw: bytes) -> str:
        """A statement or portal name as the server keys it: cut to 63 bytes (NAMEDATALEN - 1)."""
        if not raw:
            return ""  # the unnamed statement or portal: what most drivers use
        if self.reading.codec != "utf-8":
            raw = raw.decode(self.reading.codec, "surrogateescape").encode("utf-8", "surrogateescape")
        return raw[:_NAME_BYTES].decode("utf-8", "surrogateescape")

    # -- classification and decisions ------------------------------------------------------------
    def _text(self, data: bytes, start: int, end: int) -> str | Statement:
        nul = data.find(b"\x00", start, end)
        return self._decode(data[start : nul if nul >= 0 else end])

    def _decode(self, raw: bytes) -> str | Statement:
        try:
            return raw.decode(self.reading.codec)
        except UnicodeDecodeError:
            return Statement(Category.UNKNOWN, "?", reason=f"the text is not valid {self.reading.codec}")

    def _statements(self, text: str | Statement) -> tuple[tuple[Statement, ...], str | None] | None:
        """The statements of ``text`` with EXECUTE resolved, and the text's shape key; None when a name's
        meaning is not settled yet."""
        if isinstance(text, Statement):
            return (text,), None
        classification, key = self._classifier.classify_keyed(text)
        statements = classification.statements
        if not any(needs_resolution(statement) for statement in statements):
            return statements, key
        waits: list[str] = []

        def lookup(name: str) -> Statement | None:
            found = self.prepared.lookup(name)
            if found.must_wait:
                waits.append(name)
            return found.statement

        resolved = tuple(resolve_prepared(statement, lookup) for statement in statements)
        return None if waits else (resolved, key)

    def _audit_query(
        self, text: str | Statement, key: str | None, statements: Sequence[Statement], refused: Decision | None,
        approval: Verdict | None,
    ) -> None:
        assert self.trail is not None
        decisions = [refused or self.judge.decide(statement) for statement in statements]
        sources = trail_sources(text, key, len(statements), self.trail.redact_literals)
        self.trail.query(statements, decisions, sources, discarded=self.prepared.skipping, approval=approval)

    def _settle(
        self,
        decision: Decision,
        statements: tuple[Statement, ...],
        message: str,
        text: str | Statement | StatementSource | None,
        key: str | None,
        *,
        digest: str,
    ) -> Verdict | None:
        """The approvers' verdict on this held message, or None: hold it (the relay asks them)."""
        raw = text if isinstance(text, str) else None
        if isinstance(text, StatementSource) or text is None:
            source = text
        else:
            source = trail_source(text, key, len(statements), True)  # approvers see no literals
        return self.holds.settle(Hold(decision, statements, message, source, digest, raw))

    def _stand_in(self, decision: Decision, build: Callable[[str], bytes], verdict: Verdict | None = None) -> bytes:
        if verdict is not None and not verdict.approved:
            refusal, sqlstate = verdict.refusal(decision)
            codec = self.reading.codec
            error = denial.error_response(sqlstate, refusal.reason, detail=None, hint=refusal.hint, codec=codec)
            return self.stand_ins.add(error, build)
        stand_in = self.stand_ins.add(denial.decision_error(decision, self.reading.codec), build)
        statement = decision.statement
        log.info(
            "%s %s for %s on %s (rule %s)",
            "held (approval required)" if decision.effect is Effect.REQUIRE_APPROVAL else "denied",
            statement.command,
            self.identity.display,
            self.database,
            decision.rule_id,
        )
        return stand_in

    # -- server → client -----------------------------------------------------------------------
    def from_server(self, data: bytes, frames: Sequence[Frame]) -> bytes:
        """Follow the server's answers; return the bytes for the client (stand-in errors replaced, masked
        rows). Raises :class:`LimitExceeded` when a row goes over the session's limits."""
        return follow_answers(self, data, frames)


class _Wait:
    """The message cannot be judged until the server has answered earlier requests."""


_WAIT = _Wait()
