"""Startup-phase packets a client sends before typed messages: StartupMessage, SSLRequest, GSSENCRequest,
CancelRequest.

These packets have no type byte; the first Int32 of the payload (after the length) is a request code.
``decode_startup`` takes the payload exactly as ``StartupFramer.next_packet()`` returns it. Only the
structure is checked here (layout, terminators, duplicate names, protocol major version); whether a
``user`` is present or a minor version is acceptable is the session layer's call. Pure codec: no I/O,
standard library only. Re-exported by ``pgproxy.wire.frontend``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, TypeAlias

from pgproxy.wire.codec import Payload, Reader, cstring, encode_int32, untyped_frame
from pgproxy.wire.errors import FEATURE_NOT_SUPPORTED, ProtocolError

PROTOCOL_3_0 = 3 << 16  # 196608
CANCEL_REQUEST_CODE = (1234 << 16) | 5678  # 80877102
SSL_REQUEST_CODE = (1234 << 16) | 5679  # 80877103
GSSENC_REQUEST_CODE = (1234 << 16) | 5680  # 80877104

# Protocol 3.0 keys are 4 bytes; 3.2 made them variable, with these bounds in the spec.
MIN_CANCEL_KEY = 4
MAX_CANCEL_KEY = 256


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """Protocol version and connection parameters (user, database, options, ``_pq_.*`` extensions...)."""

    protocol_major: int = 3
    protocol_minor: int = 0
    parameters: tuple[tuple[str, str], ...] = ()

    @property
    def params(self) -> dict[str, str]:
        return dict(self.parameters)

    def encode(self) -> bytes:
        parts = [encode_int32((self.protocol_major << 16) | self.protocol_minor)]
        for name, value in self.parameters:
            if not name:
                # An empty name is the list terminator on the wire; emitting one would truncate the list.
                raise ValueError("startup parameter names must not be empty")
            parts.append(cstring(name))
            parts.append(cstring(value))
        parts.append(b"\x00")
        return untyped_frame(b"".join(parts))


@dataclass(frozen=True, slots=True)
class SSLRequest:
    code: ClassVar[int] = SSL_REQUEST_CODE

    def encode(self) -> bytes:
        return untyped_frame(encode_int32(SSL_REQUEST_CODE))


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    code: ClassVar[int] = GSSENC_REQUEST_CODE

    def encode(self) -> bytes:
        return untyped_frame(encode_int32(GSSENC_REQUEST_CODE))


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Sent on a fresh connection to cancel the query running on another one (process_id, secret_key)."""

    process_id: int
    secret_key: bytes
    code: ClassVar[int] = CANCEL_REQUEST_CODE

    def encode(self) -> bytes:
        payload = encode_int32(CANCEL_REQUEST_CODE) + encode_int32(self.process_id) + self.secret_key
        return untyped_frame(payload)


StartupPacket: TypeAlias = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest


def decode_startup(payload: Payload) -> StartupPacket:
    """Decode one startup-phase packet (the bytes after its Int32 length)."""
    r = Reader(payload, "startup packet")
    code = r.read_uint32()
    if code == SSL_REQUEST_CODE:
        r.what = "SSLRequest"
        r.expect_end()
        return _SSL_REQUEST
    if code == GSSENC_REQUEST_CODE:
        r.what = "GSSENCRequest"
        r.expect_end()
        return _GSSENC_REQUEST
    if code == CANCEL_REQUEST_CODE:
        r.what = "CancelRequest"
        process_id = r.read_int32()
        key = r.read_rest()
        if not MIN_CANCEL_KEY <= len(key) <= MAX_CANCEL_KEY:
            raise r.error(f"secret key of {len(key)} bytes (must be {MIN_CANCEL_KEY}..{MAX_CANCEL_KEY})")
        return CancelRequest(process_id, key)
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        # Same wording and SQLSTATE as the server's "unsupported frontend protocol" error.
        raise ProtocolError(
            f"unsupported frontend protocol {major}.{minor}: only protocol 3 is supported",
            FEATURE_NOT_SUPPORTED,
        )
    r.what = "StartupMessage"
    return StartupMessage(major, minor, _read_parameters(r))


def _read_parameters(r: Reader) -> tuple[tuple[str, str], ...]:
    parameters: list[tuple[str, str]] = []
    seen: set[str] = set()
    while True:
        name = r.read_cstring()
        if not name:
            break
        if name in seen:
            raise r.error(f"duplicate parameter {name!r}")
        seen.add(name)
        parameters.append((name, r.read_cstring()))
    # The server insists the terminator is the packet's last byte; so do we.
    r.expect_end()
    return tuple(parameters)


_SSL_REQUEST = SSLRequest()
_GSSENC_REQUEST = GSSENCRequest()
