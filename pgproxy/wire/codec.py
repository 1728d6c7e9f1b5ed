"""Shared primitives of the protocol 3.0 codec: a bounds-checked payload ``Reader`` and frame builders.

Pure functions over bytes: no I/O, nothing outside the standard library. Malformed input from the peer
always surfaces as ``ProtocolError`` so a caller catches one exception type and answers with an
ErrorResponse. Misuse by our own code (a NUL inside a string we are asked to encode, an integer out of
range) raises ``ValueError``/``struct.error`` instead: that is a local bug, not the peer's fault.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

from pgproxy.wire.errors import ProtocolError

# PostgreSQL answers undecodable text with this code ("invalid byte sequence for encoding"), not 08P01.
CHARACTER_NOT_IN_REPERTOIRE = "22021"

INT16 = struct.Struct("!h")
UINT16 = struct.Struct("!H")
INT32 = struct.Struct("!i")
UINT32 = struct.Struct("!I")

_unpack_int16 = INT16.unpack_from
_unpack_uint16 = UINT16.unpack_from
_unpack_int32 = INT32.unpack_from
_unpack_uint32 = UINT32.unpack_from
_pack_int16 = INT16.pack
_pack_uint16 = UINT16.pack
_pack_int32 = INT32.pack

Payload = bytes | bytearray | memoryview

TEXT_FORMAT = 0
BINARY_FORMAT = 1


class Reader:
    """Sequential reader over one message payload; every read is bounds-checked.

    ``what`` names the message in error texts, so a client's error says which message was malformed.
    """

    __slots__ = ("_buf", "_end", "_pos", "what")

    def __init__(self, payload: Payload, what: str = "message") -> None:
        # One copy for views keeps every later slice a plain ``bytes`` and lets us use bytes.find.
        self._buf = payload if isinstance(payload, bytes) else bytes(payload)
        self._pos = 0
        self._end = len(self._buf)
        self.what = what

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    def error(self, detail: str, sqlstate: str | None = None) -> ProtocolError:
        """Build (not raise) a ``ProtocolError`` prefixed with the message name."""
        if sqlstate is None:
            return ProtocolError(f"invalid {self.what} message: {detail}")
        return ProtocolError(f"invalid {self.what} message: {detail}", sqlstate)

    def _advance(self, size: int) -> int:
        pos = self._pos
        if pos + size > self._end:
            raise self.error(f"truncated: need {size} bytes at offset {pos}, have {self._end - pos}")
        self._pos = pos + size
        return pos

    def read_byte(self) -> int:
        return self._buf[self._advance(1)]

    def read_int16(self) -> int:
        value: int = _unpack_int16(self._buf, self._advance(2))[0]
        return value

    def read_uint16(self) -> int:
        value: int = _unpack_uint16(self._buf, self._advance(2))[0]
        return value

    def read_int32(self) -> int:
        value: int = _unpack_int32(self._buf, self._advance(4))[0]
        return value

    def read_uint32(self) -> int:
        value: int = _unpack_uint32(self._buf, self._advance(4))[0]
        return value

    def read_struct(self, layout: struct.Struct) -> tuple[Any, ...]:
        return layout.unpack_from(self._buf, self._advance(layout.size))

    def read_cstring_bytes(self) -> bytes:
        pos = self._pos
        nul = self._buf.find(0, pos)
        if nul < 0:
            raise self.error(f"string at offset {pos} is not NUL-terminated")
        self._pos = nul + 1
        return self._buf[pos:nul]

    def read_cstring(self) -> str:
        pos = self._pos
        raw = self.read_cstring_bytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(
                f"string at offset {pos} is not valid UTF-8", CHARACTER_NOT_IN_REPERTOIRE
            ) from None

    def read_bytes(self, n: int) -> bytes:
        if n < 0:
            raise self.error(f"negative length {n}")
        pos = self._advance(n)
        return self._buf[pos : pos + n]

    def read_rest(self) -> bytes:
        pos, self._pos = self._pos, self._end
        return self._buf[pos:] if pos else self._buf

    def expect_end(self) -> None:
        if self._pos != self._end:
            raise self.error(f"{self._end - self._pos} unexpected trailing bytes")

    def read_count(self, min_item_size: int) -> int:
        """Read an Int16 item count and check the items can fit in what is left.

        PostgreSQL reads these counts as unsigned (up to 65535 parameters). Checking against the
        remaining bytes means a bogus count fails before anything is allocated for it.
        """
        count = self.read_uint16()
        if count * min_item_size > self._end - self._pos:
            raise self.error(f"count {count} exceeds the remaining {self._end - self._pos} bytes")
        return count

    def read_uint32_array(self, count: int) -> tuple[int, ...]:
        values: tuple[int, ...] = struct.unpack_from(f"!{count}I", self._buf, self._advance(4 * count))
        return values

    def read_format_codes(self) -> tuple[int, ...]:
        """Read an Int16 count followed by that many Int16 format codes, each 0 (text) or 1 (binary)."""
        count = self.read_count(2)
        codes: tuple[int, ...] = struct.unpack_from(f"!{count}h", self._buf, self._advance(2 * count))
        for code in codes:
            if code not in (TEXT_FORMAT, BINARY_FORMAT):
                raise self.error(f"format code {code} is neither 0 (text) nor 1 (binary)")
        return codes

    def read_format_code(self) -> int:
        code = self.read_int16()
        if code not in (TEXT_FORMAT, BINARY_FORMAT):
            raise self.error(f"format code {code} is neither 0 (text) nor 1 (binary)")
        return code

    def read_nullable(self) -> bytes | None:
        """Read an Int32 length (-1 for NULL) and that many bytes."""
        length = self.read_int32()
        if length == -1:
            return None
        if length < 0:
            raise self.error(f"invalid value length {length}")
        return self.read_bytes(length)

    def read_values(self) -> tuple[bytes | None, ...]:
        """Read an Int16 count followed by (Int32 length or -1, bytes) values: DataRow, Bind, FunctionCall.

        This is on the result-row hot path, hence the hand-inlined loop.
        """
        count = self.read_count(4)
        buf = self._buf
        end = self._end
        pos = self._pos
        values: list[bytes | None] = []
        append = values.append
        for _ in range(count):
            if pos + 4 > end:
                self._pos = pos
                raise self.error(f"truncated value length at offset {pos}")
            length = _unpack_int32(buf, pos)[0]
            pos += 4
            if length < 0:
                if length != -1:
                    raise self.error(f"invalid value length {length}")
                append(None)
                continue
            stop = pos + length
            if stop > end:
                raise self.error(f"value of {length} bytes at offset {pos} runs past the end")
            append(buf[pos:stop])
            pos = stop
        self._pos = pos
        return tuple(values)


def frame(type_byte: bytes, payload: bytes) -> bytes:
    """A complete typed message: type byte, Int32 length (counting itself), payload."""
    return type_byte + _pack_int32(len(payload) + 4) + payload


def untyped_frame(payload: bytes) -> bytes:
    """A complete startup-phase packet: Int32 length (counting itself), payload."""
    return _pack_int32(len(payload) + 4) + payload


def cstring(s: str) -> bytes:
    """``s`` as UTF-8 plus the terminating NUL; a NUL inside ``s`` would split the field, so refuse it."""
    raw = s.encode("utf-8")
    if b"\x00" in raw:
        raise ValueError(f"string to encode contains a NUL byte: {s!r}")
    return raw + b"\x00"


def encode_int16(n: int) -> bytes:
    return _pack_int16(n)


def encode_int32(n: int) -> bytes:
    return _pack_int32(n)


def encode_uint32(n: int) -> bytes:
    return UINT32.pack(n)


def encode_count(n: int) -> bytes:
    return _pack_uint16(n)


def encode_format_codes(codes: tuple[int, ...]) -> bytes:
    return _pack_uint16(len(codes)) + struct.pack(f"!{len(codes)}h", *codes)


def encode_nullable(value: bytes | None) -> bytes:
    if value is None:
        return b"\xff\xff\xff\xff"
    return _pack_int32(len(value)) + value


def encode_values(values: tuple[bytes | None, ...]) -> bytes:
    parts = [_pack_uint16(len(values))]
    parts.extend(encode_nullable(v) for v in values)
    return b"".join(parts)


def encode_cstrings(strings: Iterable[str]) -> bytes:
    return b"".join(cstring(s) for s in strings)


def encode_uint32_array(values: tuple[int, ...]) -> bytes:
    return struct.pack(f"!{len(values)}I", *values)
