"""Messages the server (backend) sends: one frozen dataclass per message, each with ``encode()``, and
``decode_backend(type_byte, payload)`` for a typed message framed by ``MessageFramer``.

The authentication family ('R') lives in ``backend_auth``, ErrorResponse/NoticeResponse in
``backend_notice``, the result messages (RowDescription, DataRow, CommandComplete, COPY responses...) in
``backend_results`` and CopyData/CopyDone (shared with the frontend) in ``copy``; all are re-exported here.
Decoders check structure only and raise ``ProtocolError`` for anything malformed; the proxy must fail
closed on a result it cannot read (a row it cannot decode is a row it cannot mask).
Pure codec: no I/O, standard library only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

from pgproxy.wire.backend_auth import (
    AuthenticationCleartextPassword,
    AuthenticationGSS,
    AuthenticationGSSContinue,
    AuthenticationKerberosV5,
    AuthenticationMD5Password,
    AuthenticationMessage,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    AuthenticationSSPI,
    decode_authentication,
)
from pgproxy.wire.backend_notice import (
    ErrorResponse,
    NoticeResponse,
    decode_error_response,
    decode_notice_response,
)
from pgproxy.wire.backend_results import (
    CommandComplete,
    CopyBothResponse,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    EmptyQueryResponse,
    FieldDescription,
    RowDescription,
    decode_command_complete,
    decode_copy_both_response,
    decode_copy_in_response,
    decode_copy_out_response,
    decode_data_row,
    decode_empty_query_response,
    decode_row_description,
)
from pgproxy.wire.codec import (
    Payload,
    Reader,
    cstring,
    encode_count,
    encode_int32,
    encode_nullable,
    encode_uint32_array,
    frame,
)
from pgproxy.wire.copy import CopyData, CopyDone
from pgproxy.wire.errors import ProtocolError
from pgproxy.wire.startup import MAX_CANCEL_KEY, MIN_CANCEL_KEY

__all__ = [
    "AuthenticationCleartextPassword",
    "AuthenticationGSS",
    "AuthenticationGSSContinue",
    "AuthenticationKerberosV5",
    "AuthenticationMD5Password",
    "AuthenticationMessage",
    "AuthenticationOk",
    "AuthenticationSASL",
    "AuthenticationSASLContinue",
    "AuthenticationSASLFinal",
    "AuthenticationSSPI",
    "BackendKeyData",
    "BackendMessage",
    "BindComplete",
    "CloseComplete",
    "CommandComplete",
    "CopyBothResponse",
    "CopyData",
    "CopyDone",
    "CopyInResponse",
    "CopyOutResponse",
    "DataRow",
    "EmptyQueryResponse",
    "ErrorResponse",
    "FieldDescription",
    "FunctionCallResponse",
    "NegotiateProtocolVersion",
    "NoData",
    "NoticeResponse",
    "NotificationResponse",
    "ParameterDescription",
    "ParameterStatus",
    "ParseComplete",
    "PortalSuspended",
    "ReadyForQuery",
    "RowDescription",
    "decode_backend",
]


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    """Identifies the session for CancelRequest; the key is 4 bytes in 3.0, up to 256 in 3.2."""

    process_id: int
    secret_key: bytes
    type_code: ClassVar[bytes] = b"K"

    def encode(self) -> bytes:
        return frame(b"K", encode_int32(self.process_id) + self.secret_key)


@dataclass(frozen=True, slots=True)
class ParseComplete:
    type_code: ClassVar[bytes] = b"1"

    def encode(self) -> bytes:
        return _EMPTY_BYTES[b"1"]


@dataclass(frozen=True, slots=True)
class BindComplete:
    type_code: ClassVar[bytes] = b"2"

    def encode(self) -> bytes:
        return _EMPTY_BYTES[b"2"]


@dataclass(frozen=True, slots=True)
class CloseComplete:
    type_code: ClassVar[bytes] = b"3"

    def encode(self) -> bytes:
        return _EMPTY_BYTES[b"3"]


@dataclass(frozen=True, slots=True)
class NoData:
    type_code: ClassVar[bytes] = b"n"

    def encode(self) -> bytes:
        return _EMPTY_BYTES[b"n"]


@dataclass(frozen=True, slots=True)
class PortalSuspended:
    type_code: ClassVar[bytes] = b"s"

    def encode(self) -> bytes:
        return _EMPTY_BYTES[b"s"]


@dataclass(frozen=True, slots=True)
class FunctionCallResponse:
    value: bytes | None
    type_code: ClassVar[bytes] = b"V"

    def encode(self) -> bytes:
        return frame(b"V", encode_nullable(self.value))


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion:
    """The server's answer to a newer minor version or unknown ``_pq_.`` options in StartupMessage.

    ``newest_version`` is the full protocol number the server speaks (major << 16 | minor), as
    PostgreSQL sends it: 196608 for 3.0. libpq rejects anything below 3.0.
    """

    newest_version: int
    unrecognized_options: tuple[str, ...] = ()
    type_code: ClassVar[bytes] = b"v"

    def encode(self) -> bytes:
        options = self.unrecognized_options
        body = encode_int32(self.newest_version) + encode_int32(len(options))
        return frame(b"v", body + b"".join(cstring(o) for o in options))


@dataclass(frozen=True, slots=True)
class NotificationResponse:
    process_id: int
    channel: str
    payload: str
    type_code: ClassVar[bytes] = b"A"

    def encode(self) -> bytes:
        return frame(b"A", encode_int32(self.process_id) + cstring(self.channel) + cstring(self.payload))


@dataclass(frozen=True, slots=True)
class ParameterDescription:
    type_oids: tuple[int, ...]
    type_code: ClassVar[bytes] = b"t"

    def encode(self) -> bytes:
        return frame(b"t", encode_count(len(self.type_oids)) + encode_uint32_array(self.type_oids))


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    name: str
    value: str
    type_code: ClassVar[bytes] = b"S"

    def encode(self) -> bytes:
        return frame(b"S", cstring(self.name) + cstring(self.value))


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    """``status``: 'I' idle, 'T' in a transaction block, 'E' in a failed transaction block."""

    status: str
    type_code: ClassVar[bytes] = b"Z"

    def encode(self) -> bytes:
        if self.status not in ("I", "T", "E"):
            raise ValueError(f"transaction status must be I, T or E, not {self.status!r}")
        return frame(b"Z", self.status.encode("ascii"))


BackendMessage: TypeAlias = (
    AuthenticationMessage
    | BackendKeyData
    | BindComplete
    | CloseComplete
    | CommandComplete
    | CopyData
    | CopyDone
    | CopyInResponse
    | CopyOutResponse
    | CopyBothResponse
    | DataRow
    | EmptyQueryResponse
    | ErrorResponse
    | NoticeResponse
    | FunctionCallResponse
    | NegotiateProtocolVersion
    | NoData
    | NotificationResponse
    | ParameterDescription
    | ParameterStatus
    | ParseComplete
    | PortalSuspended
    | ReadyForQuery
    | RowDescription
)


def decode_backend(type_byte: int, payload: Payload) -> BackendMessage:
    """Decode one typed backend message (``Frame.type`` and its payload bytes)."""
    decoder = _DECODERS.get(type_byte)
    if decoder is None:
        shown = repr(chr(type_byte)) if 0x20 < type_byte < 0x7F else f"0x{type_byte:02x}"
        raise ProtocolError(f"invalid backend message type {shown}")
    return decoder(payload)


def _decode_backend_key_data(payload: Payload) -> BackendKeyData:
    r = Reader(payload, "BackendKeyData")
    process_id = r.read_int32()
    key = r.read_rest()
    if not MIN_CANCEL_KEY <= len(key) <= MAX_CANCEL_KEY:
        raise r.error(f"secret key of {len(key)} bytes (must be {MIN_CANCEL_KEY}..{MAX_CANCEL_KEY})")
    return BackendKeyData(process_id, key)


def _decode_function_call_response(payload: Payload) -> FunctionCallResponse:
    r = Reader(payload, "FunctionCallResponse")
    value = r.read_nullable()
    r.expect_end()
    return FunctionCallResponse(value)


def _decode_negotiate_protocol_version(payload: Payload) -> NegotiateProtocolVersion:
    r = Reader(payload, "NegotiateProtocolVersion")
    newest_version = r.read_int32()
    count = r.read_int32()
    # Each option takes at least its NUL, which bounds a bogus count before we loop on it.
    if not 0 <= count <= r.remaining:
        raise r.error(f"option count {count} does not fit the remaining {r.remaining} bytes")
    options = tuple(r.read_cstring() for _ in range(count))
    r.expect_end()
    return NegotiateProtocolVersion(newest_version, options)


def _decode_notification_response(payload: Payload) -> NotificationResponse:
    r = Reader(payload, "NotificationResponse")
    process_id = r.read_int32()
    channel = r.read_cstring()
    message = r.read_cstring()
    r.expect_end()
    return NotificationResponse(process_id, channel, message)


def _decode_parameter_description(payload: Payload) -> ParameterDescription:
    r = Reader(payload, "ParameterDescription")
    oids = r.read_uint32_array(r.read_count(4))
    r.expect_end()
    return ParameterDescription(oids)


def _decode_parameter_status(payload: Payload) -> ParameterStatus:
    r = Reader(payload, "ParameterStatus")
    name = r.read_cstring()
    value = r.read_cstring()
    r.expect_end()
    return ParameterStatus(name, value)


def _decode_ready_for_query(payload: Payload) -> ReadyForQuery:
    r = Reader(payload, "ReadyForQuery")
    status = _STATUSES.get(r.read_byte())
    if status is None:
        raise r.error("transaction status is not one of I, T, E")
    r.expect_end()
    return status


def _empty_decoder(name: str, instance: BackendMessage) -> Callable[[Payload], BackendMessage]:
    # Payload-less messages are immutable, so one shared instance per class is enough.
    def decode(payload: Payload) -> BackendMessage:
        if len(payload):
            raise ProtocolError(f"invalid {name} message: {len(payload)} unexpected bytes")
        return instance

    return decode


_EMPTY_BYTES = {code: frame(code, b"") for code in (b"1", b"2", b"3", b"n", b"s")}
_STATUSES = {ord(s): ReadyForQuery(s) for s in "ITE"}

_DECODERS: dict[int, Callable[[Payload], BackendMessage]] = {
    ord("R"): decode_authentication,
    ord("K"): _decode_backend_key_data,
    ord("1"): _empty_decoder("ParseComplete", ParseComplete()),
    ord("2"): _empty_decoder("BindComplete", BindComplete()),
    ord("3"): _empty_decoder("CloseComplete", CloseComplete()),
    ord("C"): decode_command_complete,
    ord("d"): CopyData.decode,
    ord("c"): CopyDone.decode,
    ord("G"): decode_copy_in_response,
    ord("H"): decode_copy_out_response,
    ord("W"): decode_copy_both_response,
    ord("D"): decode_data_row,
    ord("I"): decode_empty_query_response,
    ord("E"): decode_error_response,
    ord("N"): decode_notice_response,
    ord("V"): _decode_function_call_response,
    ord("v"): _decode_negotiate_protocol_version,
    ord("n"): _empty_decoder("NoData", NoData()),
    ord("s"): _empty_decoder("PortalSuspended", PortalSuspended()),
    ord("A"): _decode_notification_response,
    ord("t"): _decode_parameter_description,
    ord("S"): _decode_parameter_status,
    ord("Z"): _decode_ready_for_query,
    ord("T"): decode_row_description,
}
