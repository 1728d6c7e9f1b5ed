"""Authentication responses a client sends, all as message type 'p'.

The same type byte carries a cleartext/MD5 password, a GSSAPI/SSPI token, a SASLInitialResponse or a
SASLResponse; which one depends on the authentication request the server sent last, which only the
session layer knows. ``decode_frontend`` therefore yields ``PasswordMessage`` and the caller re-decodes
with ``decode_sasl_initial_response``/``decode_sasl_response`` when SASL is in progress.
Pure codec: no I/O, standard library only. Re-exported by ``pgproxy.wire.frontend``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pgproxy.wire.codec import Payload, Reader, cstring, encode_nullable, frame


@dataclass(frozen=True, slots=True)
class PasswordMessage:
    """A 'p' message read without context: a cleartext/MD5 password, or a GSSAPI/SSPI token.

    ``password`` is the payload with one trailing NUL removed if there is one; ``encode`` adds it back,
    which is the form of password messages (GSS tokens are not NUL-terminated; relay those raw).
    """

    password: bytes
    type_code: ClassVar[bytes] = b"p"

    def encode(self) -> bytes:
        return frame(b"p", self.password + b"\x00")


@dataclass(frozen=True, slots=True)
class SASLInitialResponse:
    """First SASL message: the chosen mechanism and optional client-first data (None: no data)."""

    mechanism: str
    data: bytes | None
    type_code: ClassVar[bytes] = b"p"

    def encode(self) -> bytes:
        return frame(b"p", cstring(self.mechanism) + encode_nullable(self.data))


@dataclass(frozen=True, slots=True)
class SASLResponse:
    """A later SASL message; ``data`` is mechanism-specific."""

    data: bytes
    type_code: ClassVar[bytes] = b"p"

    def encode(self) -> bytes:
        return frame(b"p", self.data)


def decode_sasl_initial_response(payload: Payload) -> SASLInitialResponse:
    """Decode a 'p' payload sent in answer to AuthenticationSASL."""
    r = Reader(payload, "SASLInitialResponse")
    mechanism = r.read_cstring()
    data = r.read_nullable()
    r.expect_end()
    return SASLInitialResponse(mechanism, data)


def decode_sasl_response(payload: Payload) -> SASLResponse:
    """Decode a 'p' payload sent in answer to AuthenticationSASLContinue."""
    return SASLResponse(payload if isinstance(payload, bytes) else bytes(payload))


def decode_password(payload: Payload) -> PasswordMessage:
    """Decode a 'p' payload without knowing the authentication context (what ``decode_frontend`` does)."""
    raw = payload if isinstance(payload, bytes) else bytes(payload)
    return PasswordMessage(raw[:-1] if raw.endswith(b"\x00") else raw)
