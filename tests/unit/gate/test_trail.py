"""The audit trail on real message bytes: which intents a run of client messages gives, and which outcome
each server answer gives — including the sequences drivers rarely produce (suspended portals, errors
mid-batch, answers cut off by the session's end)."""

from __future__ import annotations

from pathlib import Path

from pgproxy.audit import AuditRecord, Decision, RecordKind
from pgproxy.auth.identity import Identity
from pgproxy.gate.session import SessionGate
from pgproxy.gate.trail import AuditTrail, SessionFacts, sources_of
from pgproxy.policy.store import PolicyStore
from pgproxy.sql.classify import Classifier
from pgproxy.wire import backend as be
from pgproxy.wire import frontend as fe
from pgproxy.wire.framing import MessageFramer

POLICIES = Path(__file__).parents[2] / "support" / "policies" / "enforcing"
WRITER = Identity("w-1", "https://idp.invalid", "w@example.com", None, ("writers",), None)


class Session:
    """A gate with an audit trail, fed client messages and server answers as bytes."""

    def __init__(self, *, redact: bool = False) -> None:
        facts = SessionFacts("s-1", "127.0.0.1:5000", WRITER, "pgproxy_test", None, "tests")
        self.trail = AuditTrail(facts, redact_literals=redact)
        self.gate = SessionGate(
            classifier=Classifier(), policies=PolicyStore(POLICIES), identity=WRITER, database="pgproxy_test",
            read_only=False, trail=self.trail,
        )
        self.records: list[AuditRecord] = []

    def client(self, *messages: fe.FrontendMessage) -> list[AuditRecord]:
        data, frames = MessageFramer().feed(b"".join(message.encode() for message in messages))
        self.gate.from_client(data, frames)
        intents = self.trail.take_intents()
        self.trail.forwarded()
        self.records += intents
        return intents

    def server(self, *messages: be.BackendMessage) -> list[AuditRecord]:
        data, frames = MessageFramer().feed(b"".join(message.encode() for message in messages))
        self.gate.from_server(data, frames)
        outcomes = self.trail.take_outcomes()
        self.records += outcomes
        return outcomes


def error(sqlstate: str, message: str) -> be.ErrorResponse:
    return be.ErrorResponse.build("ERROR", sqlstate, message)


READY = be.ReadyForQuery("I")


def test_each_statement_of_a_query_gets_its_outcome_and_those_after_an_error_are_not_run() -> None:
    session = Session()
    intents = session.client(fe.Query("SELECT 1; SELECT 1/0; SELECT 3"))
    assert [(r.statement_index, r.text) for r in intents] == [(0, "SELECT 1"), (1, "SELECT 1/0"), (2, "SELECT 3")]
    outcomes = session.server(be.CommandComplete("SELECT 1"), error("22012", "division by zero"), READY)
    assert [(o.intent_id, o.command_tag, o.rows, o.sqlstate) for o in outcomes] == [
        (intents[0].record_id, "SELECT 1", 1, None),
        (intents[1].record_id, None, None, "22012"),
        (intents[2].record_id, None, None, None),
    ]
    assert outcomes[1].error_message == "division by zero"
    assert outcomes[2].reason is not None and outcomes[2].reason.startswith("not run")


def test_one_intent_per_execution_with_the_prepared_text_and_suspended_portals_add_outcomes() -> None:
    session = Session()
    assert session.client(fe.Parse("s", "SELECT * FROM gate_items WHERE id > $1"), fe.Sync()) == []
    session.server(be.ParseComplete(), READY)
    first = session.client(fe.Bind("", "s", params=(b"1",)), fe.Execute("", 2), fe.Execute("", 2), fe.Sync())
    assert [(r.text, r.decision, r.relations) for r in first] == [
        ("SELECT * FROM gate_items WHERE id > $1", Decision.ALLOW, ("gate_items",))]
    outcomes = session.server(be.BindComplete(), be.PortalSuspended(), be.CommandComplete("SELECT 1"), READY)
    assert [(o.intent_id, o.command_tag, o.reason is not None) for o in outcomes] == [
        (first[0].record_id, None, True), (first[0].record_id, "SELECT 1", False)]
    again = session.client(fe.Bind("", "s", params=(b"2",)), fe.Execute(""), fe.Sync())
    assert len(again) == 1 and again[0].record_id != first[0].record_id
    assert again[0].fingerprint == first[0].fingerprint


def test_an_error_in_an_extended_batch_is_the_outcome_of_the_execution_it_stopped() -> None:
    session = Session()
    intents = session.client(
        fe.Parse("", "SELECT $1::int"), fe.Bind("", "", params=(b"x",)), fe.Execute(""),
        fe.Parse("", "SELECT 2"), fe.Bind("", ""), fe.Execute(""), fe.Sync(),
    )
    assert len(intents) == 2
    outcomes = session.server(be.ParseComplete(), error("22P02", 'invalid input syntax for type integer: "x"'), READY)
    assert [(o.intent_id, o.sqlstate) for o in outcomes] == [
        (intents[0].record_id, "22P02"), (intents[1].record_id, None)]


def test_a_refused_statement_is_recorded_with_its_rule_and_the_error_the_client_got() -> None:
    session = Session()
    [intent] = session.client(fe.Query("SELECT * FROM gate_secrets"))
    assert (intent.decision, intent.rule_id, intent.category) == (Decision.DENY, "writers-not-secrets", "read")
    forwarded_marker = next(iter(session.gate.stand_ins.errors))  # the stand-in the server will reject
    [outcome] = session.server(error("42601", f'syntax error at or near "{forwarded_marker.decode()}"'), READY)
    assert outcome.sqlstate == "42501" and outcome.error_message is not None
    assert "writers-not-secrets" in outcome.error_message


def test_a_failure_after_the_statement_completed_is_added_to_its_outcomes() -> None:
    session = Session()
    [intent] = session.client(fe.Query("INSERT INTO gate_items VALUES (9, 'x')"))
    outcomes = session.server(
        be.CommandComplete("INSERT 0 1"), error("23503", "deferred constraint violated"), READY)
    assert [(o.intent_id, o.command_tag, o.sqlstate) for o in outcomes] == [
        (intent.record_id, "INSERT 0 1", None), (intent.record_id, None, "23503")]


def test_statements_unanswered_when_the_session_ends_get_an_outcome() -> None:
    session = Session()
    intents = session.client(fe.Query("SELECT pg_sleep(10); SELECT 2"))
    ended = session.trail.session_ended()
    assert [o.intent_id for o in ended] == [r.record_id for r in intents]
    assert all(o.kind is RecordKind.OUTCOME and o.reason for o in ended)


def test_messages_the_server_discards_after_an_error_are_recorded_as_not_run() -> None:
    session = Session()
    session.client(fe.Parse("", "SELECT 1/0"), fe.Bind("", ""), fe.Execute(""))
    session.server(be.ParseComplete(), be.BindComplete(), error("22012", "division by zero"))
    [late] = session.client(fe.Query("SELECT 'discarded'"))
    [outcome] = session.trail.take_outcomes()  # known at once: no answer will come
    assert outcome.intent_id == late.record_id and outcome.reason is not None and "discarding" in outcome.reason


def test_redaction_replaces_every_constant_and_keeps_the_fingerprint() -> None:
    plain = sources_of("SELECT 'secret', 42 FROM t WHERE a = 'x'", None, 1, redact=False)[0]
    redacted = sources_of("SELECT 'other', 7 FROM t WHERE a = 'y'", None, 1, redact=True)[0]
    assert redacted.text == "SELECT $1, $2 FROM t WHERE a = $3"
    assert plain.fingerprint == redacted.fingerprint and plain.text.startswith("SELECT 'secret'")
    withheld = sources_of("SELEC 'secret'", None, 1, redact=True)[0]
    assert "secret" not in withheld.text and withheld.fingerprint is None
    parts = sources_of("SELECT 'a;b'; SELECT 2", None, 2, redact=True)
    assert [part.text for part in parts] == ["SELECT $1", "SELECT $1"]
