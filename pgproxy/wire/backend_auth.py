"""The server's authentication requests: message type 'R', told apart by an Int32 subcode.

One frozen dataclass per subcode, each with ``encode()``; ``decode_authentication`` reads the subcode
and the rest of the payload. Unknown subcodes (including the long-removed SCM credential request, 6)
are a ``ProtocolError``: a proxy must not relay an authentication exchange it does not understand.
Pure codec: no I/O, standard library only. Re-exported by ``pgproxy.wire.backend``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

from pgproxy.wire.codec import Payload, Reader, cstring, encode_int32, frame


def _auth(subcode: int, data: bytes = b"") -> bytes:
    return frame(b"R", encode_int32(subcode) + data)


@dataclass(frozen=True, slots=True)
class AuthenticationOk:
    subcode: ClassVar[int] = 0
    type_code: ClassVar[bytes] = b"R"

    def encode(self) -> bytes:
        return _auth(0)


@dataclass(frozen=True, slots=True)
class AuthenticationKerberosV5:
    subcode: ClassVar[int] = 2
    type_code: ClassVar[bytes] = b"R"

    def encode(self) -> bytes:
        return _auth(2)


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword:
    subcode: ClassVar[int] = 3
    type_code: ClassVar[bytes] = b"R"

    def encode(self) -> bytes:
        return _auth(3)


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password:
    """Asks for md5(md5(password + user) + salt); ``salt`` is 4 bytes."""

    salt: bytes
    subcode: ClassVar[int] = 5
    type_code: ClassVar[bytes] = b"R"

    def encode(self) -> bytes:
        if len(self.salt) != 4:
            raise ValueError(f"MD5 salt must be 4 bytes, not {len(self.salt)}")
        return _auth(5, self.salt)


@dataclass(frozen=True, slots=True)
class AuthenticationGSS:
    subcode: ClassVar[int] = 7
    type_code: ClassVar[bytes] = b"R"

    def encode(self) -> bytes:
        return _auth(7)


@dataclass(frozen=True, slots=True)
class AuthenticationGSSContinue:
    data: bytes
    subcode: ClassVar[int] = 8
    type_code: ClassVar[bytes] = b"R"

    def encode(self) -> bytes:
        return _auth(8, self.data)


@dataclass(frozen=True, slots=True)
class AuthenticationSSPI:
    subcode: ClassVar[int] = 9
    type_code: ClassVar[bytes] = b"R"

    def encode(self) -> bytes:
        return _auth(9)


@dataclass(frozen=True, slots=True)
class AuthenticationSASL:
    """Starts SASL; ``mechanisms`` in the server's order of preference."""

    mechanisms: tuple[str, ...]
    subcode: ClassVar[int] = 10
    type_code: ClassVar[bytes] = b"R"

    def encode(self) -> bytes:
        if not all(self.mechanisms):
            # An empty name is the list terminator on the wire.
            raise ValueError("SASL mechanism names must not be empty")
        return _auth(10, b"".join(cstring(m) for m in self.mechanisms) + b"\x00")


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue:
    data: bytes
    subcode: ClassVar[int] = 11
    type_code: ClassVar[bytes] = b"R"

    def encode(self) -> bytes:
        return _auth(11, self.data)


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal:
    data: bytes
    subcode: ClassVar[int] = 12
    type_code: ClassVar[bytes] = b"R"

    def encode(self) -> bytes:
        return _auth(12, self.data)


AuthenticationMessage: TypeAlias = (
    AuthenticationOk
    | AuthenticationKerberosV5
    | AuthenticationCleartextPassword
    | AuthenticationMD5Password
    | AuthenticationGSS
    | AuthenticationGSSContinue
    | AuthenticationSSPI
    | AuthenticationSASL
    | AuthenticationSASLContinue
    | AuthenticationSASLFinal
)


def decode_authentication(payload: Payload) -> AuthenticationMessage:
    """Decode the payload of an 'R' message."""
    r = Reader(payload, "Authentication")
    subcode = r.read_int32()
    decoder = _DECODERS.get(subcode)
    if decoder is None:
        raise r.error(f"unsupported authentication request {subcode}")
    return decoder(r)


def _no_data(instance: AuthenticationMessage) -> Callable[[Reader], AuthenticationMessage]:
    def decode(r: Reader) -> AuthenticationMessage:
        r.expect_end()
        return instance

    return decode


def _decode_md5(r: Reader) -> AuthenticationMessage:
    salt = r.read_bytes(4)
    r.expect_end()
    return AuthenticationMD5Password(salt)


def _decode_sasl(r: Reader) -> AuthenticationMessage:
    mechanisms: list[str] = []
    while name := r.read_cstring():
        mechanisms.append(name)
    r.expect_end()
    return AuthenticationSASL(tuple(mechanisms))


_DECODERS: dict[int, Callable[[Reader], AuthenticationMessage]] = {
    0: _no_data(AuthenticationOk()),
    2: _no_data(AuthenticationKerberosV5()),
    3: _no_data(AuthenticationCleartextPassword()),
    5: _decode_md5,
    7: _no_data(AuthenticationGSS()),
    8: lambda r: AuthenticationGSSContinue(r.read_rest()),
    9: _no_data(AuthenticationSSPI()),
    10: _decode_sasl,
    11: lambda r: AuthenticationSASLContinue(r.read_rest()),
    12: lambda r: AuthenticationSASLFinal(r.read_rest()),
}
