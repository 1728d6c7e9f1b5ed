"""Hostile input for the wire codec: whatever bytes arrive, only ``ProtocolError`` may escape.

Covers random streams through ``MessageFramer``, random and mutated payloads for every decoder, every
prefix of valid messages, oversized and undersized length fields (rejected from the header alone), bogus
startup protocol versions, and the framer's splitting of byte-at-a-time and many-in-one-chunk input.
"""

from __future__ import annotations

import contextlib
import itertools
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgproxy.wire import backend as be
from pgproxy.wire import frontend as fe
from pgproxy.wire.codec import Payload
from pgproxy.wire.errors import FEATURE_NOT_SUPPORTED, PROTOCOL_VIOLATION, MessageTooLarge, ProtocolError
from pgproxy.wire.framing import Frame, MessageFramer, StartupFramer

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FRONTEND_TYPES = b"QPBDECSHXdcfFp"
BACKEND_TYPES = b"RK123CdcGHWDIENVvnAtSsZT"


def i32(n: int) -> bytes:
    return struct.pack("!i", n)


def typed(type_byte: bytes, payload: bytes) -> bytes:
    return type_byte + i32(len(payload) + 4) + payload


def decode_quietly(decode: Callable[[int, Payload], object], type_byte: int, payload: Payload) -> None:
    """Decode; a ``ProtocolError`` is an acceptable answer, any other exception fails the test."""
    with contextlib.suppress(ProtocolError):
        decode(type_byte, payload)


# One valid message of every kind; ``strict`` marks layouts where any truncation must be detected
# (the others end in an opaque "rest of the payload" that may legitimately be shorter).
FRONTEND_CORPUS: list[tuple[fe.FrontendMessage, bool]] = [
    (fe.Query("SELECT * FROM t WHERE a = 'ü'"), True),
    (fe.Parse("s1", "SELECT $1, $2", (23, 25)), True),
    (fe.Bind("p1", "s1", (0, 1), (b"42", None), (1,)), True),
    (fe.Describe("S", "s1"), True),
    (fe.Execute("p1", 100), True),
    (fe.Close("P", "p1"), True),
    (fe.Sync(), True),
    (fe.Flush(), True),
    (fe.Terminate(), True),
    (fe.CopyData(b"1\tx\n2\ty\n"), False),
    (fe.CopyDone(), True),
    (fe.CopyFail("client gave up"), True),
    (fe.FunctionCall(764, (1,), (b"\x00\x00\x00\x07", None), 1), True),
    (fe.PasswordMessage(b"eyJhbGciOi.token"), False),
]

BACKEND_CORPUS: list[tuple[be.BackendMessage, bool]] = [
    (be.AuthenticationOk(), True),
    (be.AuthenticationMD5Password(b"salt"), True),
    (be.AuthenticationSASL(("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")), True),
    (be.AuthenticationSASLContinue(b"r=abc,s=def,i=4096"), False),
    (be.BackendKeyData(77, b"\x01\x02\x03\x04"), True),
    (be.ParseComplete(), True),
    (be.BindComplete(), True),
    (be.CloseComplete(), True),
    (be.CommandComplete("INSERT 0 1"), True),
    (be.CopyData(b"row\n"), False),
    (be.CopyDone(), True),
    (be.CopyInResponse(0, (0, 0)), True),
    (be.CopyOutResponse(1, (1,)), True),
    (be.CopyBothResponse(0, ()), True),
    (be.DataRow((b"alice", None, b"")), True),
    (be.EmptyQueryResponse(), True),
    (be.ErrorResponse.build("ERROR", "42501", "denied", detail="d", hint="h"), True),
    (be.NoticeResponse.build("NOTICE", "00000", "waiting"), True),
    (be.FunctionCallResponse(b"\x00\x01"), True),
    (be.NegotiateProtocolVersion(0, ("_pq_.a", "_pq_.b")), True),
    (be.NoData(), True),
    (be.NotificationResponse(1, "jobs", "42"), True),
    (be.ParameterDescription((23, 25)), True),
    (be.ParameterStatus("TimeZone", "UTC"), True),
    (be.PortalSuspended(), True),
    (be.ReadyForQuery("T"), True),
    (be.RowDescription((be.FieldDescription("email", 16384, 2, 25, -1, -1, 0),)), True),
]

STARTUP_CORPUS: list[tuple[fe.StartupPacket, bool]] = [
    (fe.StartupMessage(3, 0, (("user", "alice"), ("database", "db"))), True),
    (fe.SSLRequest(), True),
    (fe.GSSENCRequest(), True),
    (fe.CancelRequest(77, b"\x01\x02\x03\x04"), True),
]


def corpus_cases() -> Iterator[tuple[str, Any, bool, Callable[[int, Payload], object]]]:
    for fe_message, strict in FRONTEND_CORPUS:
        yield f"fe-{type(fe_message).__name__}", fe_message, strict, fe.decode_frontend
    for be_message, strict in BACKEND_CORPUS:
        yield f"be-{type(be_message).__name__}", be_message, strict, be.decode_backend


CORPUS_CASES = list(corpus_cases())


# --- random input never raises anything but ProtocolError -------------------------------------------


def feed_in_chunks(framer: MessageFramer, data: bytes, cuts: list[int]) -> Iterator[tuple[bytes, Frame]]:
    last = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        complete, frames = framer.feed(data[last:cut])
        last = max(last, cut)
        for frame in frames:
            yield complete, frame


@SETTINGS
@given(
    data=st.binary(max_size=400),
    cuts=st.lists(st.integers(0, 400), max_size=6),
    limit=st.sampled_from([5, 16, 100, 1 << 20]),
)
def test_random_stream_through_framer_and_decoders(data: bytes, cuts: list[int], limit: int) -> None:
    framer = MessageFramer(limit)
    try:
        for complete, frame in feed_in_chunks(framer, data, cuts):
            payload = memoryview(complete)[frame[1] : frame[2]]
            decode_quietly(fe.decode_frontend, frame[0], payload)
            decode_quietly(be.decode_backend, frame[0], payload)
    except ProtocolError:
        pass


# Random bytes rarely form a valid header; these streams do, so the decoders see random payloads.
framed_garbage = st.lists(
    st.tuples(st.sampled_from(sorted(set(FRONTEND_TYPES + BACKEND_TYPES))), st.binary(max_size=80)),
    max_size=6,
)


@SETTINGS
@given(messages=framed_garbage, cuts=st.lists(st.integers(0, 600), max_size=6))
def test_well_framed_garbage_payloads(messages: list[tuple[int, bytes]], cuts: list[int]) -> None:
    stream = b"".join(typed(bytes((t,)), p) for t, p in messages)
    seen = []
    for complete, frame in feed_in_chunks(MessageFramer(), stream, cuts):
        payload = complete[frame[1] : frame[2]]
        seen.append((frame[0], payload))
        decode_quietly(fe.decode_frontend, frame[0], payload)
        decode_quietly(be.decode_backend, frame[0], payload)
    assert seen == messages


@SETTINGS
@given(type_byte=st.integers(0, 255), payload=st.binary(max_size=120))
def test_random_payload_any_type(type_byte: int, payload: bytes) -> None:
    decode_quietly(fe.decode_frontend, type_byte, payload)
    decode_quietly(be.decode_backend, type_byte, payload)


startup_codes = st.sampled_from([196608, 196610, 80877102, 80877103, 80877104, 0]).map(i32)


@SETTINGS
@given(payload=st.binary(max_size=120) | st.builds(bytes.__add__, startup_codes, st.binary(max_size=120)))
def test_random_startup_payloads(payload: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        fe.decode_startup(payload)


@SETTINGS
@given(payload=st.binary(max_size=120))
def test_random_sasl_payloads(payload: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        fe.decode_sasl_initial_response(payload)
    assert fe.decode_sasl_response(payload).data == payload


@SETTINGS
@given(
    case=st.sampled_from(CORPUS_CASES),
    mutations=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_mutated_valid_payloads(
    case: tuple[str, Any, bool, Callable[[int, Payload], object]], mutations: list[tuple[int, int]]
) -> None:
    _, message, _, decode = case
    payload = bytearray(message.encode()[5:])
    if not payload:
        payload.append(0)
    for position, byte in mutations:
        payload[position % len(payload)] = byte
    decode_quietly(decode, message.type_code[0], bytes(payload))


@SETTINGS
@given(
    packet=st.sampled_from([p for p, _ in STARTUP_CORPUS]),
    mutations=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_mutated_startup_payloads(packet: fe.StartupPacket, mutations: list[tuple[int, int]]) -> None:
    payload = bytearray(packet.encode()[4:])
    for position, byte in mutations:
        payload[position % len(payload)] = byte
    with contextlib.suppress(ProtocolError):
        fe.decode_startup(bytes(payload))


# --- truncation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message", "strict", "decode"), CORPUS_CASES, ids=[c[0] for c in CORPUS_CASES]
)
def test_every_prefix_of_a_valid_message(
    name: str, message: Any, strict: bool, decode: Callable[[int, Payload], object]
) -> None:
    wire = message.encode()
    for cut in range(len(wire)):
        framer = MessageFramer()
        complete, frames = framer.feed(wire[:cut])
        assert (complete, frames) == (b"", [])
        assert framer.buffered == cut
    for cut in range(len(wire) - 5):
        truncated = wire[5 : 5 + cut]
        if strict:
            with pytest.raises(ProtocolError):
                decode(wire[0], truncated)
        else:
            decode_quietly(decode, wire[0], truncated)


@pytest.mark.parametrize(("packet", "strict"), STARTUP_CORPUS, ids=lambda x: type(x).__name__)
def test_every_prefix_of_a_startup_packet(packet: fe.StartupPacket, strict: bool) -> None:
    wire = packet.encode()
    for cut in range(len(wire)):
        framer = StartupFramer()
        framer.feed(wire[:cut])
        assert framer.next_packet() is None
    for cut in range(len(wire) - 4):
        with pytest.raises(ProtocolError):
            fe.decode_startup(wire[4 : 4 + cut])


# --- length fields -------------------------------------------------------------------------------------


@pytest.mark.parametrize("announced", [1001, 1 << 20, 2**31 - 1])
def test_oversized_message_rejected_from_header_alone(announced: int) -> None:
    framer = MessageFramer(max_message_size=1000)
    with pytest.raises(MessageTooLarge) as caught:
        framer.feed(b"Q" + i32(announced))
    assert caught.value.announced == announced
    assert caught.value.sqlstate == "54000"


def test_oversized_message_after_complete_ones() -> None:
    framer = MessageFramer(max_message_size=100)
    with pytest.raises(MessageTooLarge):
        framer.feed(fe.Sync().encode() + b"Q" + i32(101))


def test_oversized_startup_packet_rejected_from_header_alone() -> None:
    framer = StartupFramer()
    framer.feed(i32(10_001))
    with pytest.raises(MessageTooLarge):
        framer.next_packet()


@pytest.mark.parametrize("length", [-1, -(2**31), 0, 3])
def test_message_length_below_four(length: int) -> None:
    with pytest.raises(ProtocolError) as caught:
        MessageFramer().feed(b"Q" + i32(length))
    assert not isinstance(caught.value, MessageTooLarge)
    assert caught.value.sqlstate == PROTOCOL_VIOLATION


@pytest.mark.parametrize("length", [-1, 0, 4, 7])
def test_startup_length_below_eight(length: int) -> None:
    framer = StartupFramer()
    framer.feed(i32(length) + b"\x00" * 8)
    with pytest.raises(ProtocolError) as caught:
        framer.next_packet()
    assert caught.value.sqlstate == PROTOCOL_VIOLATION


# --- startup semantics the codec enforces --------------------------------------------------------------


@pytest.mark.parametrize(("major", "minor"), [(1234, 5681), (2, 0), (4, 0), (0, 0), (65535, 65535)])
def test_unsupported_protocol_version(major: int, minor: int) -> None:
    payload = struct.pack("!HH", major, minor) + b"user\x00alice\x00\x00"
    with pytest.raises(ProtocolError) as caught:
        fe.decode_startup(payload)
    assert caught.value.sqlstate == FEATURE_NOT_SUPPORTED
    assert f"{major}.{minor}" in caught.value.message


def test_newer_minor_version_is_left_to_the_caller() -> None:
    packet = fe.decode_startup(struct.pack("!HH", 3, 2) + b"user\x00alice\x00_pq_.x\x001\x00\x00")
    assert isinstance(packet, fe.StartupMessage)
    assert (packet.protocol_major, packet.protocol_minor) == (3, 2)


def test_1234_5678_is_a_cancel_request_and_checks_its_layout() -> None:
    # 1234.5678 is the CancelRequest code, so a wrong layout is a protocol violation, not a version error.
    with pytest.raises(ProtocolError) as caught:
        fe.decode_startup(struct.pack("!HH", 1234, 5678) + b"\x00\x00")
    assert caught.value.sqlstate == PROTOCOL_VIOLATION
    long_key = fe.decode_startup(struct.pack("!HHi", 1234, 5678, 9) + b"k" * 32)
    assert long_key == fe.CancelRequest(9, b"k" * 32)
    with pytest.raises(ProtocolError):
        fe.decode_startup(struct.pack("!HHi", 1234, 5678, 9) + b"k" * 257)


@pytest.mark.parametrize(
    "payload",
    [
        i32(196608) + b"user\x00alice\x00user\x00bob\x00\x00",  # duplicate name
        i32(196608) + b"user\x00alice\x00",  # no terminator
        i32(196608) + b"user\x00alice\x00\x00junk",  # bytes after the terminator
        i32(196608) + b"user\x00\xff\xfe\x00\x00",  # not UTF-8
        i32(80877103) + b"\x00",  # SSLRequest with a body
    ],
)
def test_malformed_startup_packets(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        fe.decode_startup(payload)


@pytest.mark.parametrize(
    ("type_byte", "payload"),
    [
        (b"D", b"X\x00"),  # Describe kind
        (b"C", b"\x00\x00"),  # Close kind
        # Two format codes for three parameters.
        (b"B", b"\x00\x00\x00\x02\x00\x00\x00\x00\x00\x03" + i32(-1) * 3 + b"\x00\x00"),
        (b"B", b"\x00\x00\x00\x01\x00\x02\x00\x00\x00\x00"),  # format code 2
        (b"B", b"\x00\x00\x00\x00\x00\x01" + i32(-2) + b"\x00\x00"),  # length -2
        (b"B", b"\x00\x00\x00\x00\xff\xff"),  # 65535 params announced, none present
        (b"P", b"\x00SELECT 1\x00\x7f\xff"),  # 32767 type OIDs announced, none present
        (b"F", i32(1) + b"\x00\x00\x00\x00\x00\x02"),  # result format 2
        (b"Q", b"SELECT 1"),  # no NUL
        (b"Q", b"SELECT 1\x00\x00"),  # trailing byte
        (b"S", b"\x00"),  # Sync with a body
        (b"z", b""),  # unknown type
    ],
)
def test_malformed_frontend_messages(type_byte: bytes, payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        fe.decode_frontend(type_byte[0], payload)


@pytest.mark.parametrize(
    ("type_byte", "payload"),
    [
        (b"R", i32(6)),  # SCM credentials: unsupported
        (b"R", i32(5) + b"abc"),  # short MD5 salt
        (b"R", i32(10) + b"SCRAM-SHA-256\x00"),  # mechanism list without terminator
        (b"K", i32(1) + b"abc"),  # 3-byte cancel key
        (b"Z", b"Q"),  # transaction status
        (b"T", b"\x00\x01x\x00" + b"\x00" * 16 + b"\x00\x02"),  # column format 2
        (b"T", b"\xff\xff"),  # 65535 columns announced, none present
        (b"D", b"\x00\x01" + i32(10) + b"abc"),  # value runs past the end
        (b"v", i32(0) + i32(2**31 - 1)),  # absurd option count
        (b"v", i32(0) + i32(-1)),  # negative option count
        (b"G", b"\x02\x00\x00"),  # overall format 2
        (b"E", b"SERROR\x00"),  # missing final terminator
        (b"V", i32(-5)),  # negative length other than -1
        (b"x", b""),  # unknown type
    ],
)
def test_malformed_backend_messages(type_byte: bytes, payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        be.decode_backend(type_byte[0], payload)


def test_sasl_initial_response_lengths() -> None:
    with pytest.raises(ProtocolError):
        fe.decode_sasl_initial_response(b"SCRAM-SHA-256\x00" + i32(-2))
    with pytest.raises(ProtocolError):
        fe.decode_sasl_initial_response(b"SCRAM-SHA-256\x00" + i32(5) + b"abc")


def test_invalid_utf8_reports_character_not_in_repertoire() -> None:
    with pytest.raises(ProtocolError) as caught:
        fe.decode_frontend(ord("Q"), b"SELECT '\xc3\x28'\x00")
    assert caught.value.sqlstate == "22021"


def test_every_union_member_has_a_decoder() -> None:
    from typing import get_args

    for cls in get_args(fe.FrontendMessage):
        try:
            fe.decode_frontend(cls.type_code[0], b"")
        except ProtocolError as e:
            assert "message type" not in e.message, cls
    for cls in get_args(be.BackendMessage):
        try:
            be.decode_backend(cls.type_code[0], b"")
        except ProtocolError as e:
            assert "message type" not in e.message, cls


# --- framer splitting ----------------------------------------------------------------------------------

STREAM_MESSAGES = [m for m, _ in BACKEND_CORPUS]
STREAM = b"".join(m.encode() for m in STREAM_MESSAGES)


def collect(framer: MessageFramer, chunks: list[bytes]) -> tuple[bytes, list[be.BackendMessage]]:
    relayed = bytearray()
    decoded: list[be.BackendMessage] = []
    for chunk in chunks:
        complete, frames = framer.feed(chunk)
        relayed += complete
        decoded.extend(be.decode_backend(f[0], memoryview(complete)[f[1] : f[2]]) for f in frames)
        # Everything handed back ends on a message boundary; only the partial tail stays buffered.
        assert (frames[-1][2] if frames else 0) == len(complete)
    return bytes(relayed), decoded


def test_framer_one_byte_at_a_time() -> None:
    framer = MessageFramer()
    relayed, decoded = collect(framer, [STREAM[i : i + 1] for i in range(len(STREAM))])
    assert relayed == STREAM
    assert decoded == STREAM_MESSAGES
    assert framer.buffered == 0


def test_framer_all_messages_in_one_chunk() -> None:
    framer = MessageFramer()
    complete, frames = framer.feed(STREAM)
    assert complete is STREAM  # no copy when the chunk ends on a boundary
    assert [be.decode_backend(f[0], complete[f[1] : f[2]]) for f in frames] == STREAM_MESSAGES


@SETTINGS
@given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=20))
def test_framer_arbitrary_chunking(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(bounds)]
    framer = MessageFramer()
    relayed, decoded = collect(framer, chunks)
    assert relayed == STREAM
    assert decoded == STREAM_MESSAGES
    assert framer.buffered == 0


def test_startup_framer_hands_over_what_follows() -> None:
    framer = StartupFramer()
    ssl = fe.SSLRequest().encode()
    startup = fe.StartupMessage(3, 0, (("user", "alice"),)).encode()
    framer.feed(ssl + startup + b"Q")
    first = framer.next_packet()
    second = framer.next_packet()
    assert first is not None
    assert second is not None
    assert fe.decode_startup(first) == fe.SSLRequest()
    assert fe.decode_startup(second) == fe.StartupMessage(3, 0, (("user", "alice"),))
    assert framer.next_packet() is None
    assert framer.take_rest() == b"Q"
