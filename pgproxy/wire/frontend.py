"""Messages a client (frontend) sends: one frozen dataclass per message, each with ``encode()``, and decoders.

``decode_frontend(type_byte, payload)`` decodes a typed message framed by ``MessageFramer``;
``decode_startup`` (from ``startup``) decodes the untyped startup-phase packets. The 'p' message means
different things depending on the authentication exchange in progress, so ``decode_frontend`` returns the
raw ``PasswordMessage`` and the caller, who knows the context, may use ``decode_sasl_initial_response``
or ``decode_sasl_response`` instead.

Decoders check structure only (lengths, counts, terminators, enumerated codes) and raise
``ProtocolError`` for anything malformed. Pure codec: no I/O, standard library only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

from pgproxy.wire.codec import (
    Payload,
    Reader,
    cstring,
    encode_count,
    encode_format_codes,
    encode_int16,
    encode_int32,
    encode_uint32,
    encode_uint32_array,
    encode_values,
    frame,
)
from pgproxy.wire.copy import CopyData, CopyDone
from pgproxy.wire.errors import ProtocolError
from pgproxy.wire.frontend_auth import (
    PasswordMessage,
    SASLInitialResponse,
    SASLResponse,
    decode_password,
    decode_sasl_initial_response,
    decode_sasl_response,
)
from pgproxy.wire.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    StartupPacket,
    decode_startup,
)

__all__ = [
    "Bind",
    "CancelRequest",
    "Close",
    "CopyData",
    "CopyDone",
    "CopyFail",
    "Describe",
    "Execute",
    "Flush",
    "FrontendMessage",
    "FunctionCall",
    "GSSENCRequest",
    "Parse",
    "PasswordMessage",
    "Query",
    "SASLInitialResponse",
    "SASLResponse",
    "SSLRequest",
    "StartupMessage",
    "StartupPacket",
    "Sync",
    "Terminate",
    "decode_frontend",
    "decode_sasl_initial_response",
    "decode_sasl_response",
    "decode_startup",
]


@dataclass(frozen=True, slots=True)
class Query:
    """Simple-protocol query: one string that may hold several statements."""

    sql: str
    type_code: ClassVar[bytes] = b"Q"

    def encode(self) -> bytes:
        return frame(b"Q", cstring(self.sql))


@dataclass(frozen=True, slots=True)
class Parse:
    """Extended protocol: prepare ``query`` as ``statement`` ('' is the unnamed statement)."""

    statement: str
    query: str
    param_type_oids: tuple[int, ...] = ()
    type_code: ClassVar[bytes] = b"P"

    def encode(self) -> bytes:
        oids = self.param_type_oids
        return frame(
            b"P",
            cstring(self.statement)
            + cstring(self.query)
            + encode_count(len(oids))
            + encode_uint32_array(oids),
        )


@dataclass(frozen=True, slots=True)
class Bind:
    """Extended protocol: bind parameter values to ``statement``, creating ``portal``."""

    portal: str
    statement: str
    param_format_codes: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_format_codes: tuple[int, ...] = ()
    type_code: ClassVar[bytes] = b"B"

    def encode(self) -> bytes:
        return frame(
            b"B",
            cstring(self.portal)
            + cstring(self.statement)
            + encode_format_codes(self.param_format_codes)
            + encode_values(self.params)
            + encode_format_codes(self.result_format_codes),
        )


def _encode_kind(kind: str) -> bytes:
    if kind not in ("S", "P"):
        raise ValueError(f"kind must be 'S' (statement) or 'P' (portal), not {kind!r}")
    return kind.encode("ascii")


@dataclass(frozen=True, slots=True)
class Describe:
    """Ask for the description of a prepared statement (kind 'S') or portal (kind 'P')."""

    kind: str
    name: str
    type_code: ClassVar[bytes] = b"D"

    def encode(self) -> bytes:
        return frame(b"D", _encode_kind(self.kind) + cstring(self.name))


@dataclass(frozen=True, slots=True)
class Execute:
    """Run ``portal``; ``max_rows`` 0 means no limit."""

    portal: str
    max_rows: int = 0
    type_code: ClassVar[bytes] = b"E"

    def encode(self) -> bytes:
        return frame(b"E", cstring(self.portal) + encode_int32(self.max_rows))


@dataclass(frozen=True, slots=True)
class Close:
    """Close a prepared statement (kind 'S') or portal (kind 'P')."""

    kind: str
    name: str
    type_code: ClassVar[bytes] = b"C"

    def encode(self) -> bytes:
        return frame(b"C", _encode_kind(self.kind) + cstring(self.name))


@dataclass(frozen=True, slots=True)
class Sync:
    type_code: ClassVar[bytes] = b"S"

    def encode(self) -> bytes:
        return _EMPTY_BYTES[b"S"]


@dataclass(frozen=True, slots=True)
class Flush:
    type_code: ClassVar[bytes] = b"H"

    def encode(self) -> bytes:
        return _EMPTY_BYTES[b"H"]


@dataclass(frozen=True, slots=True)
class Terminate:
    type_code: ClassVar[bytes] = b"X"

    def encode(self) -> bytes:
        return _EMPTY_BYTES[b"X"]


@dataclass(frozen=True, slots=True)
class CopyFail:
    """The client aborts a COPY FROM STDIN with this reason."""

    message: str
    type_code: ClassVar[bytes] = b"f"

    def encode(self) -> bytes:
        return frame(b"f", cstring(self.message))


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """Legacy fast-path function call (still used by libpq's large-object API)."""

    function_oid: int
    arg_format_codes: tuple[int, ...] = ()
    args: tuple[bytes | None, ...] = ()
    result_format: int = 0
    type_code: ClassVar[bytes] = b"F"

    def encode(self) -> bytes:
        return frame(
            b"F",
            encode_uint32(self.function_oid)
            + encode_format_codes(self.arg_format_codes)
            + encode_values(self.args)
            + encode_int16(self.result_format),
        )


FrontendMessage: TypeAlias = (
    Query
    | Parse
    | Bind
    | Describe
    | Execute
    | Close
    | Sync
    | Flush
    | Terminate
    | CopyData
    | CopyDone
    | CopyFail
    | FunctionCall
    | PasswordMessage
    | SASLInitialResponse
    | SASLResponse
)


def decode_frontend(type_byte: int, payload: Payload) -> FrontendMessage:
    """Decode one typed frontend message (``Frame.type`` and its payload bytes)."""
    decoder = _DECODERS.get(type_byte)
    if decoder is None:
        raise ProtocolError(f"invalid frontend message type {_show_type(type_byte)}")
    return decoder(payload)


def _show_type(type_byte: int) -> str:
    return repr(chr(type_byte)) if 0x20 < type_byte < 0x7F else f"0x{type_byte:02x}"


def _read_kind(r: Reader) -> str:
    kind = r.read_byte()
    if kind not in (0x53, 0x50):  # 'S', 'P'
        raise r.error(f"kind {_show_type(kind)} is neither 'S' nor 'P'")
    return chr(kind)


def _check_format_count(r: Reader, formats: tuple[int, ...], values: tuple[bytes | None, ...]) -> None:
    # One code applies to all values, none means all text; anything else must match one-to-one.
    if len(formats) > 1 and len(formats) != len(values):
        raise r.error(f"{len(formats)} format codes for {len(values)} values")


def _decode_query(payload: Payload) -> Query:
    r = Reader(payload, "Query")
    sql = r.read_cstring()
    r.expect_end()
    return Query(sql)


def _decode_parse(payload: Payload) -> Parse:
    r = Reader(payload, "Parse")
    statement = r.read_cstring()
    query = r.read_cstring()
    oids = r.read_uint32_array(r.read_count(4))
    r.expect_end()
    return Parse(statement, query, oids)


def _decode_bind(payload: Payload) -> Bind:
    r = Reader(payload, "Bind")
    portal = r.read_cstring()
    statement = r.read_cstring()
    param_formats = r.read_format_codes()
    params = r.read_values()
    _check_format_count(r, param_formats, params)
    result_formats = r.read_format_codes()
    r.expect_end()
    return Bind(portal, statement, param_formats, params, result_formats)


def _decode_describe(payload: Payload) -> Describe:
    r = Reader(payload, "Describe")
    kind = _read_kind(r)
    name = r.read_cstring()
    r.expect_end()
    return Describe(kind, name)


def _decode_execute(payload: Payload) -> Execute:
    r = Reader(payload, "Execute")
    portal = r.read_cstring()
    max_rows = r.read_int32()
    r.expect_end()
    return Execute(portal, max_rows)


def _decode_close(payload: Payload) -> Close:
    r = Reader(payload, "Close")
    kind = _read_kind(r)
    name = r.read_cstring()
    r.expect_end()
    return Close(kind, name)


def _decode_copy_fail(payload: Payload) -> CopyFail:
    r = Reader(payload, "CopyFail")
    message = r.read_cstring()
    r.expect_end()
    return CopyFail(message)


def _decode_function_call(payload: Payload) -> FunctionCall:
    r = Reader(payload, "FunctionCall")
    oid = r.read_uint32()
    arg_formats = r.read_format_codes()
    args = r.read_values()
    _check_format_count(r, arg_formats, args)
    result_format = r.read_format_code()
    r.expect_end()
    return FunctionCall(oid, arg_formats, args, result_format)


def _empty_decoder(name: str, instance: FrontendMessage) -> Callable[[Payload], FrontendMessage]:
    # Payload-less messages are immutable, so one shared instance per class is enough.
    def decode(payload: Payload) -> FrontendMessage:
        if len(payload):
            raise ProtocolError(f"invalid {name} message: {len(payload)} unexpected bytes")
        return instance

    return decode


_EMPTY_BYTES = {code: frame(code, b"") for code in (b"S", b"H", b"X")}

_DECODERS: dict[int, Callable[[Payload], FrontendMessage]] = {
    ord("Q"): _decode_query,
    ord("P"): _decode_parse,
    ord("B"): _decode_bind,
    ord("D"): _decode_describe,
    ord("E"): _decode_execute,
    ord("C"): _decode_close,
    ord("S"): _empty_decoder("Sync", Sync()),
    ord("H"): _empty_decoder("Flush", Flush()),
    ord("X"): _empty_decoder("Terminate", Terminate()),
    ord("d"): CopyData.decode,
    ord("c"): CopyDone.decode,
    ord("f"): _decode_copy_fail,
    ord("F"): _decode_function_call,
    ord("p"): decode_password,
}
