"""Round trips and known bytes for every protocol 3.0 message class of ``pgproxy.wire``.

Every class has a hypothesis strategy; ``decode(encode(m)) == m`` must hold for all of them, both from
``bytes`` and from a ``memoryview`` payload (what a relay hands over without copying). The table-driven
tests pin the encoding against bytes written by hand from the protocol documentation.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgproxy.wire import backend as be
from pgproxy.wire import frontend as fe
from pgproxy.wire.codec import Payload
from pgproxy.wire.framing import MessageFramer, StartupFramer

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies ----------------------------------------------------------------------------------------

text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=24)
nonempty_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=16)
int16 = st.integers(-(2**15), 2**15 - 1)
int32 = st.integers(-(2**31), 2**31 - 1)
uint32 = st.integers(0, 2**32 - 1)
fmt = st.sampled_from([0, 1])
formats = st.lists(fmt, max_size=5).map(tuple)
value = st.none() | st.binary(max_size=24)
values = st.lists(value, max_size=6).map(tuple)
oids = st.lists(uint32, max_size=6).map(tuple)
kind = st.sampled_from(["S", "P"])
cancel_key = st.binary(min_size=4, max_size=256)


@st.composite
def values_with_formats(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[bytes | None, ...]]:
    """Values plus a format-code list of a legal length: none, one for all, or one per value."""
    vals = draw(values)
    count = draw(st.sampled_from(sorted({0, 1, len(vals)})))
    return tuple(draw(st.lists(fmt, min_size=count, max_size=count))), vals


@st.composite
def binds(draw: st.DrawFn) -> fe.Bind:
    param_formats, params = draw(values_with_formats())
    return fe.Bind(draw(text), draw(text), param_formats, params, draw(formats))


@st.composite
def function_calls(draw: st.DrawFn) -> fe.FunctionCall:
    arg_formats, args = draw(values_with_formats())
    return fe.FunctionCall(draw(uint32), arg_formats, args, draw(fmt))


startup_parameters = st.lists(st.tuples(nonempty_text, text), max_size=5, unique_by=lambda p: p[0]).map(tuple)

startup_packets: st.SearchStrategy[fe.StartupPacket] = st.one_of(
    st.builds(fe.StartupMessage, st.just(3), st.integers(0, 0xFFFF), startup_parameters),
    st.just(fe.SSLRequest()),
    st.just(fe.GSSENCRequest()),
    st.builds(fe.CancelRequest, int32, cancel_key),
)

# 'p' messages other than PasswordMessage need their own decoder, so they are tested separately.
frontend_messages: st.SearchStrategy[fe.FrontendMessage] = st.one_of(
    st.builds(fe.Query, text),
    st.builds(fe.Parse, text, text, oids),
    binds(),
    st.builds(fe.Describe, kind, text),
    st.builds(fe.Execute, text, int32),
    st.builds(fe.Close, kind, text),
    st.just(fe.Sync()),
    st.just(fe.Flush()),
    st.just(fe.Terminate()),
    st.builds(fe.CopyData, st.binary(max_size=64)),
    st.just(fe.CopyDone()),
    st.builds(fe.CopyFail, text),
    function_calls(),
    st.builds(fe.PasswordMessage, st.binary(max_size=32)),
)

authentication_messages: st.SearchStrategy[be.AuthenticationMessage] = st.one_of(
    st.just(be.AuthenticationOk()),
    st.just(be.AuthenticationKerberosV5()),
    st.just(be.AuthenticationCleartextPassword()),
    st.builds(be.AuthenticationMD5Password, st.binary(min_size=4, max_size=4)),
    st.just(be.AuthenticationGSS()),
    st.builds(be.AuthenticationGSSContinue, st.binary(max_size=32)),
    st.just(be.AuthenticationSSPI()),
    st.builds(be.AuthenticationSASL, st.lists(nonempty_text, max_size=3).map(tuple)),
    st.builds(be.AuthenticationSASLContinue, st.binary(max_size=32)),
    st.builds(be.AuthenticationSASLFinal, st.binary(max_size=32)),
)

# Any non-NUL byte is a legal field code; unknown ones must survive a round trip.
notice_fields = st.lists(st.tuples(st.characters(min_codepoint=1, max_codepoint=255), text), max_size=8).map(
    tuple
)

field_descriptions = st.builds(be.FieldDescription, text, uint32, int16, uint32, int16, int32, fmt)

backend_messages: st.SearchStrategy[be.BackendMessage] = st.one_of(
    authentication_messages,
    st.builds(be.BackendKeyData, int32, cancel_key),
    st.just(be.ParseComplete()),
    st.just(be.BindComplete()),
    st.just(be.CloseComplete()),
    st.builds(be.CommandComplete, text),
    st.builds(be.CopyData, st.binary(max_size=64)),
    st.just(be.CopyDone()),
    st.builds(be.CopyInResponse, fmt, formats),
    st.builds(be.CopyOutResponse, fmt, formats),
    st.builds(be.CopyBothResponse, fmt, formats),
    st.builds(be.DataRow, values),
    st.just(be.EmptyQueryResponse()),
    st.builds(be.ErrorResponse, notice_fields),
    st.builds(be.NoticeResponse, notice_fields),
    st.builds(be.FunctionCallResponse, value),
    st.builds(be.NegotiateProtocolVersion, int32, st.lists(text, max_size=4).map(tuple)),
    st.just(be.NoData()),
    st.builds(be.NotificationResponse, int32, text, text),
    st.builds(be.ParameterDescription, oids),
    st.builds(be.ParameterStatus, text, text),
    st.just(be.PortalSuspended()),
    st.builds(be.ReadyForQuery, st.sampled_from(["I", "T", "E"])),
    st.builds(be.RowDescription, st.lists(field_descriptions, max_size=4).map(tuple)),
)


# --- helpers -------------------------------------------------------------------------------------------


def split_typed(wire: bytes) -> tuple[int, bytes]:
    """Frame ``wire`` with the real framer and insist it is exactly one complete message."""
    complete, frames = MessageFramer().feed(wire)
    assert complete == wire
    assert len(frames) == 1
    frame = frames[0]
    assert frame[2] == len(wire)
    return frame[0], wire[frame[1] : frame[2]]


def split_startup(wire: bytes) -> bytes:
    framer = StartupFramer()
    framer.feed(wire)
    payload = framer.next_packet()
    assert payload is not None
    assert framer.take_rest() == b""
    return payload


def roundtrip(message: Any, decode: Callable[[int, Payload], object]) -> None:
    wire = message.encode()
    type_byte, payload = split_typed(wire)
    assert type_byte == message.type_code[0]
    assert decode(type_byte, payload) == message
    assert decode(type_byte, memoryview(wire)[5:]) == message


# --- round trips ---------------------------------------------------------------------------------------


@SETTINGS
@given(frontend_messages)
def test_frontend_roundtrip(message: fe.FrontendMessage) -> None:
    roundtrip(message, fe.decode_frontend)


@SETTINGS
@given(backend_messages)
def test_backend_roundtrip(message: be.BackendMessage) -> None:
    roundtrip(message, be.decode_backend)


@SETTINGS
@given(startup_packets)
def test_startup_roundtrip(packet: fe.StartupPacket) -> None:
    payload = split_startup(packet.encode())
    assert fe.decode_startup(payload) == packet
    assert fe.decode_startup(memoryview(payload)) == packet


@SETTINGS
@given(st.builds(fe.SASLInitialResponse, text, st.none() | st.binary(max_size=64)))
def test_sasl_initial_response_roundtrip(message: fe.SASLInitialResponse) -> None:
    type_byte, payload = split_typed(message.encode())
    assert type_byte == ord("p")
    assert fe.decode_sasl_initial_response(payload) == message


@SETTINGS
@given(st.builds(fe.SASLResponse, st.binary(max_size=64)))
def test_sasl_response_roundtrip(message: fe.SASLResponse) -> None:
    type_byte, payload = split_typed(message.encode())
    assert type_byte == ord("p")
    assert fe.decode_sasl_response(payload) == message


def test_copy_messages_are_shared_between_directions() -> None:
    assert fe.CopyData is be.CopyData
    assert fe.CopyDone is be.CopyDone


# --- known bytes ---------------------------------------------------------------------------------------


def i32(n: int) -> bytes:
    return struct.pack("!i", n)


FRONTEND_KNOWN: list[tuple[fe.FrontendMessage, bytes]] = [
    (fe.Query("SELECT 1"), b"Q\x00\x00\x00\x0dSELECT 1\x00"),
    (fe.Sync(), b"S\x00\x00\x00\x04"),
    (fe.Flush(), b"H\x00\x00\x00\x04"),
    (fe.Terminate(), b"X\x00\x00\x00\x04"),
    (fe.Parse("", "SELECT $1", (23,)), b"P\x00\x00\x00\x15\x00SELECT $1\x00\x00\x01\x00\x00\x00\x17"),
    (
        fe.Bind("", "s1", (1,), (b"\x00\x00\x00\x2a", None), (0,)),
        b"B\x00\x00\x00\x1e\x00s1\x00\x00\x01\x00\x01\x00\x02"
        b"\x00\x00\x00\x04\x00\x00\x00\x2a\xff\xff\xff\xff\x00\x01\x00\x00",
    ),
    (fe.Describe("P", ""), b"D\x00\x00\x00\x06P\x00"),
    (fe.Execute("", 0), b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"),
    (fe.Close("S", "s1"), b"C\x00\x00\x00\x08Ss1\x00"),
    (fe.CopyData(b"1\tx\n"), b"d\x00\x00\x00\x081\tx\n"),
    (fe.CopyDone(), b"c\x00\x00\x00\x04"),
    (fe.CopyFail("boom"), b"f\x00\x00\x00\x09boom\x00"),
    (
        fe.FunctionCall(764, (0,), (b"7",), 1),
        b"F\x00\x00\x00\x15\x00\x00\x02\xfc\x00\x01\x00\x00\x00\x01\x00\x00\x00\x017\x00\x01",
    ),
    (fe.PasswordMessage(b"secret"), b"p\x00\x00\x00\x0bsecret\x00"),
]

BACKEND_KNOWN: list[tuple[be.BackendMessage, bytes]] = [
    (be.ReadyForQuery("I"), b"Z\x00\x00\x00\x05I"),
    (be.AuthenticationOk(), b"R\x00\x00\x00\x08\x00\x00\x00\x00"),
    (be.AuthenticationCleartextPassword(), b"R\x00\x00\x00\x08\x00\x00\x00\x03"),
    (be.AuthenticationMD5Password(b"\x01\x02\x03\x04"), b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x01\x02\x03\x04"),
    (be.AuthenticationSASL(("SCRAM-SHA-256",)), b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00"),
    (be.AuthenticationSASLFinal(b"v=abc"), b"R\x00\x00\x00\x0d\x00\x00\x00\x0cv=abc"),
    (be.BackendKeyData(4242, b"\xde\xad\xbe\xef"), b"K\x00\x00\x00\x0c\x00\x00\x10\x92\xde\xad\xbe\xef"),
    (be.ParameterStatus("client_encoding", "UTF8"), b"S\x00\x00\x00\x19client_encoding\x00UTF8\x00"),
    (be.CommandComplete("SELECT 1"), b"C\x00\x00\x00\x0dSELECT 1\x00"),
    (be.EmptyQueryResponse(), b"I\x00\x00\x00\x04"),
    (be.DataRow((b"1", None)), b"D\x00\x00\x00\x0f\x00\x02\x00\x00\x00\x011\xff\xff\xff\xff"),
    (
        be.RowDescription((be.FieldDescription("?column?", 0, 0, 23, 4, -1, 0),)),
        b"T\x00\x00\x00\x21\x00\x01?column?\x00"
        b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00",
    ),
    (be.ParameterDescription((23, 25)), b"t\x00\x00\x00\x0e\x00\x02\x00\x00\x00\x17\x00\x00\x00\x19"),
    (be.CopyOutResponse(0, (0, 0)), b"H\x00\x00\x00\x0b\x00\x00\x02\x00\x00\x00\x00"),
    (be.FunctionCallResponse(None), b"V\x00\x00\x00\x08\xff\xff\xff\xff"),
    (
        be.NegotiateProtocolVersion(0, ("_pq_.x",)),
        b"v\x00\x00\x00\x13\x00\x00\x00\x00\x00\x00\x00\x01_pq_.x\x00",
    ),
    (be.NotificationResponse(7, "ch", "hi"), b"A\x00\x00\x00\x0e\x00\x00\x00\x07ch\x00hi\x00"),
    (
        be.ErrorResponse.build("ERROR", "42501", "denied", hint="ask"),
        b"E\x00\x00\x00\x27SERROR\x00VERROR\x00C42501\x00Mdenied\x00Hask\x00\x00",
    ),
]

STARTUP_KNOWN: list[tuple[fe.StartupPacket, bytes]] = [
    (fe.SSLRequest(), b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),
    (fe.GSSENCRequest(), b"\x00\x00\x00\x08\x04\xd2\x16\x30"),
    (
        fe.CancelRequest(4242, b"\xde\xad\xbe\xef"),
        b"\x00\x00\x00\x10\x04\xd2\x16\x2e" + i32(4242) + b"\xde\xad\xbe\xef",
    ),
    (
        fe.StartupMessage(3, 0, (("user", "alice"), ("database", "db"))),
        b"\x00\x00\x00\x20\x00\x03\x00\x00user\x00alice\x00database\x00db\x00\x00",
    ),
]


@pytest.mark.parametrize(("message", "wire"), FRONTEND_KNOWN, ids=lambda x: type(x).__name__)
def test_frontend_known_bytes(message: fe.FrontendMessage, wire: bytes) -> None:
    assert message.encode() == wire
    assert fe.decode_frontend(wire[0], wire[5:]) == message


@pytest.mark.parametrize(("message", "wire"), BACKEND_KNOWN, ids=lambda x: type(x).__name__)
def test_backend_known_bytes(message: be.BackendMessage, wire: bytes) -> None:
    assert message.encode() == wire
    assert be.decode_backend(wire[0], wire[5:]) == message


@pytest.mark.parametrize(("packet", "wire"), STARTUP_KNOWN, ids=lambda x: type(x).__name__)
def test_startup_known_bytes(packet: fe.StartupPacket, wire: bytes) -> None:
    assert packet.encode() == wire
    assert fe.decode_startup(wire[4:]) == packet


def test_sasl_initial_response_known_bytes() -> None:
    message = fe.SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc")
    wire = b"p\x00\x00\x00\x21SCRAM-SHA-256\x00\x00\x00\x00\x0bn,,n=,r=abc"
    assert message.encode() == wire
    assert fe.decode_sasl_initial_response(wire[5:]) == message
    no_data = fe.SASLInitialResponse("SCRAM-SHA-256", None)
    assert fe.decode_sasl_initial_response(no_data.encode()[5:]).data is None
    assert no_data.encode().endswith(b"\xff\xff\xff\xff")


# --- helpers on the message classes --------------------------------------------------------------------


def test_startup_params_property() -> None:
    message = fe.StartupMessage(3, 0, (("user", "alice"), ("database", "db")))
    assert message.params == {"user": "alice", "database": "db"}


def test_error_build_fields_and_properties() -> None:
    error = be.ErrorResponse.build(
        "FATAL", "28000", "token expired", detail="exp=1", hint="log in again", position="5", R="auth"
    )
    assert error.severity == "FATAL"
    assert error.sqlstate == "28000"
    assert error.message == "token expired"
    assert error.detail == "exp=1"
    assert error.hint == "log in again"
    assert error.get("P") == "5"
    assert error.get("R") == "auth"
    assert error.fields[:4] == (("S", "FATAL"), ("V", "FATAL"), ("C", "28000"), ("M", "token expired"))
    notice = be.NoticeResponse.build("NOTICE", "00000", "waiting for approval")
    assert isinstance(notice, be.NoticeResponse)
    assert notice.detail is None
    assert notice.hint is None
    same_fields_other_class: object = be.ErrorResponse(notice.fields)
    assert notice != same_fields_other_class


def test_error_build_rejects_unknown_field_names() -> None:
    with pytest.raises(TypeError):
        be.ErrorResponse.build("ERROR", "XX000", "x", nonsense="y")
    with pytest.raises(TypeError):
        be.ErrorResponse.build("ERROR", "XX000", "x", M="again")


def test_severity_prefers_the_non_localized_field() -> None:
    localized = be.ErrorResponse((("S", "FEHLER"), ("V", "ERROR"), ("C", "42P01"), ("M", "x")))
    assert localized.severity == "ERROR"
    old_server = be.ErrorResponse((("S", "ERROR"), ("C", "42P01"), ("M", "x")))
    assert old_server.severity == "ERROR"


@pytest.mark.parametrize(
    "bad",
    [
        lambda: fe.Query("a\x00b").encode(),
        lambda: fe.Describe("X", "").encode(),
        lambda: fe.StartupMessage(3, 0, (("", "x"),)).encode(),
        lambda: be.ReadyForQuery("Q").encode(),
        lambda: be.AuthenticationMD5Password(b"abc").encode(),
        lambda: be.AuthenticationSASL(("",)).encode(),
        lambda: be.ErrorResponse((("\x00", "x"),)).encode(),
    ],
)
def test_encode_refuses_what_the_wire_cannot_express(bad: Callable[[], bytes]) -> None:
    with pytest.raises(ValueError):
        bad()
