"""SessionGate on bytes: what is forwarded, what stands in for a denial, what is held, what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgproxy.auth.identity import Identity
from pgproxy.gate.encoding import UnsupportedEncoding
from pgproxy.gate.reading import GateFatal
from pgproxy.gate.session import SessionGate
from pgproxy.policy.store import PolicyStore
from pgproxy.sql.classify import Classifier
from pgproxy.wire import backend as be
from pgproxy.wire import frontend as fe
from pgproxy.wire.framing import MessageFramer

POLICIES = Path(__file__).parents[2] / "support" / "policies" / "enforcing"


def gate(client_encoding: str = "UTF8", standard_conforming_strings: str = "on") -> SessionGate:
    identity = Identity("w-1", "https://idp.invalid", "w@example.com", None, ("writers",), None)
    return SessionGate(
        classifier=Classifier(),
        policies=PolicyStore(POLICIES),
        identity=identity,
        database="pgproxy_test",
        read_only=False,
        client_encoding=client_encoding,
        standard_conforming_strings=standard_conforming_strings,
    )


def through(gate: SessionGate, *messages: fe.FrontendMessage) -> tuple[bytes, int, int]:
    data, frames = MessageFramer().feed(b"".join(message.encode() for message in messages))
    forwarded, handled = gate.from_client(data, frames)
    return forwarded, handled, len(frames)


def test_allowed_messages_are_forwarded_as_the_same_bytes() -> None:
    messages = (fe.Query("SELECT 1"), fe.Parse("s", "SELECT $1::int"), fe.Sync())
    original = b"".join(message.encode() for message in messages)
    forwarded, handled, total = through(gate(), *messages)
    assert forwarded == original and handled == total


def test_a_denied_query_is_replaced_by_a_stand_in_and_its_error_by_pgproxys() -> None:
    session = gate()
    forwarded, _, _ = through(session, fe.Query("SELECT * FROM gate_secrets"))
    assert b"gate_secrets" not in forwarded
    marker = forwarded[5:-1].decode()
    assert marker.startswith("pgproxy_denied_")
    server_error = be.ErrorResponse.build("ERROR", "42601", f'syntax error at or near "{marker}"').encode()
    ready = be.ReadyForQuery("I").encode()
    data, frames = MessageFramer().feed(server_error + ready)
    relayed = session.from_server(data, frames)
    error_data, error_frames = MessageFramer().feed(relayed)
    kind, start, end = error_frames[0]
    error = be.decode_backend(kind, error_data[start:end])
    assert isinstance(error, be.ErrorResponse)
    assert error.sqlstate == "42501" and "writers-not-secrets" in error.message and error.hint
    assert relayed.endswith(ready)


def test_an_error_without_a_pending_marker_passes_unchanged() -> None:
    session = gate()
    through(session, fe.Query("SELECT * FROM gate_secrets"))
    other = be.ErrorResponse.build("ERROR", "42601", 'syntax error at or near "pgproxy_denied_0000000000000000"')
    data, frames = MessageFramer().feed(other.encode())
    assert session.from_server(data, frames) == other.encode()


def test_a_denied_parse_keeps_the_statement_name() -> None:
    forwarded, _, _ = through(gate(), fe.Parse("stmt_7", "DELETE FROM gate_secrets"))
    assert forwarded.startswith(b"P") and b"stmt_7\x00pgproxy_denied_" in forwarded


def test_a_bind_waits_for_a_parse_of_an_earlier_batch() -> None:
    session = gate()
    forwarded, handled, total = through(
        session, fe.Parse("s1", "SELECT 1"), fe.Sync(), fe.Bind("", "s1"), fe.Execute("", 0), fe.Sync()
    )
    assert handled == 2 and total == 5  # Parse and Sync went; the Bind waits for ParseComplete
    assert forwarded == fe.Parse("s1", "SELECT 1").encode() + fe.Sync().encode()
    answers = be.ParseComplete().encode() + be.ReadyForQuery("I").encode()
    session.from_server(*MessageFramer().feed(answers))
    data, frames = MessageFramer().feed(
        b"".join(
            m.encode() for m in (fe.Parse("s1", "SELECT 1"), fe.Sync(), fe.Bind("", "s1"), fe.Execute("", 0), fe.Sync())
        )
    )
    forwarded, handled = session.from_client(data, frames, 2)
    assert handled == 5 and forwarded.startswith(fe.Bind("", "s1").encode())


@pytest.mark.parametrize("encoding", ["SJIS", "BIG5", "GBK", "UHC", "GB18030", "JOHAB", "MULE_INTERNAL"])
def test_encodings_that_hide_ascii_bytes_are_refused(encoding: str) -> None:
    with pytest.raises(UnsupportedEncoding):
        gate(client_encoding=encoding)


def test_text_is_decoded_in_the_client_encoding() -> None:
    session = gate(client_encoding="LATIN1")
    data, frames = MessageFramer().feed(b"Q\x00\x00\x00\x1cSELECT * FROM gate_secr\xe9t\x00")
    forwarded, _ = session.from_client(data, frames)
    assert forwarded == data  # "gate_secrét" is another table: allowed


def test_string_syntax_must_be_standard() -> None:
    with pytest.raises(GateFatal):
        gate(standard_conforming_strings="off")
    session = gate()
    status = be.ParameterStatus("standard_conforming_strings", "off").encode()
    with pytest.raises(GateFatal):
        session.from_server(*MessageFramer().feed(status))


def test_a_malformed_parse_ends_the_session() -> None:
    data, frames = MessageFramer().feed(b"P\x00\x00\x00\x08abcd")
    with pytest.raises(GateFatal) as raised:
        gate().from_client(data, frames)
    assert raised.value.sqlstate == "08P01"


def test_statement_names_are_cut_like_the_server_cuts_them() -> None:
    session = gate()
    long_name = "n" * 63
    through(session, fe.Parse(long_name + "1", "SELECT 1"), fe.Sync())
    session.from_server(*MessageFramer().feed(be.ParseComplete().encode() + be.ReadyForQuery("I").encode()))
    # "…2" is the same statement to the server
    assert session.prepared.lookup(long_name).statement is not None
    forwarded, handled, total = through(session, fe.Bind("", long_name + "2"), fe.Execute("", 0), fe.Sync())
    assert handled == total and forwarded.startswith(b"B")


@pytest.mark.parametrize(
    ("setting", "status"),
    [
        ("SET standard_conforming_strings = off", ("standard_conforming_strings", "off")),
        ("SET client_encoding = 'SJIS'", ("client_encoding", "SJIS")),
        ("SET NAMES 'BIG5'", ("client_encoding", "BIG5")),
    ],
)
def test_text_behind_a_reading_change_waits_and_the_session_ends(setting: str, status: tuple[str, str]) -> None:
    session = gate()
    smuggled = fe.Query("SELECT 'x\\' , $$' ; DELETE FROM t; -- $$")
    forwarded, handled, total = through(session, fe.Query(setting), smuggled)
    assert (handled, total) == (1, 2) and forwarded == fe.Query(setting).encode()  # the second waits
    answer = be.ParameterStatus(*status).encode() + be.ReadyForQuery("I").encode()
    with pytest.raises(GateFatal) as raised:
        session.from_server(*MessageFramer().feed(answer))
    assert raised.value.sqlstate == "0A000"


def test_text_in_the_same_extended_batch_behind_a_reading_change_is_refused() -> None:
    session = gate()
    forwarded, handled, total = through(
        session,
        fe.Parse("", "SET standard_conforming_strings = off"),
        fe.Bind("", ""),
        fe.Execute("", 0),
        fe.Parse("", "SELECT 1"),
        fe.Sync(),
    )
    assert handled == total
    assert b"SELECT 1" not in forwarded and b"pgproxy_denied_" in forwarded


def test_a_harmless_reading_setting_lets_text_through_once_answered() -> None:
    session = gate()
    forwarded, handled, _ = through(session, fe.Query("SET client_encoding = 'UTF8'"), fe.Query("SELECT 1"))
    assert handled == 1
    session.from_server(
        *MessageFramer().feed(be.ParameterStatus("client_encoding", "UTF8").encode() + be.ReadyForQuery("I").encode())
    )
    data, frames = MessageFramer().feed(
        fe.Query("SET client_encoding = 'UTF8'").encode() + fe.Query("SELECT 1").encode()
    )
    forwarded, handled = session.from_client(data, frames, 1)
    assert handled == 2 and forwarded == fe.Query("SELECT 1").encode()
