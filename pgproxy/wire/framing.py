"""Split a byte stream into complete protocol messages without copying them.

Two framings exist in protocol 3.0: the untyped startup-phase packets (int32 length, payload) sent once
by a client, and the typed messages (one type byte, int32 length, payload) used for everything else.
The framer only finds boundaries and enforces size limits; decoding the payload is left to
``frontend``/``backend``. It never interprets message contents and performs no I/O.

Hot-path note: a relay hands ``MessageFramer.feed`` each chunk it reads and forwards the returned
``complete`` bytes in one write. Only a trailing partial message is copied into the internal buffer.
"""

from __future__ import annotations

import struct

from pgproxy.wire.errors import MessageTooLarge, ProtocolError

_INT32 = struct.Struct("!i")
_unpack_int32 = _INT32.unpack_from

# PostgreSQL itself refuses startup packets above 10000 bytes (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_PACKET = 10_000
# Default cap for one typed message; the server's own limit for most messages is 1 GB - 1.
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024


# One complete message inside a chunk: (type byte, payload start, payload end). A plain tuple rather than
# a NamedTuple: building a NamedTuple per message was a quarter of the relay's framing cost.
Frame = tuple[int, int, int]


class MessageFramer:
    """Incrementally frames typed messages (type byte + int32 length including itself)."""

    __slots__ = ("_buffered_total", "_chunks", "_needed", "_pending", "max_message_size")

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE) -> None:
        self.max_message_size = max_message_size
        self._pending = b""
        # A large message arrives in many reads: collect them and join once it is complete, rather
        # than re-concatenating the growing prefix on every read (quadratic copying).
        self._chunks: list[bytes] = []
        self._needed = 0  # total bytes of pending + chunks that complete the first message, if known
        self._buffered_total = 0

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message held back until the rest arrives."""
        return len(self._pending) + sum(len(chunk) for chunk in self._chunks)

    def take_pending(self) -> bytes:
        """Hand over (and forget) the bytes of an incomplete trailing message."""
        pending = b"".join([self._pending, *self._chunks])
        self._pending, self._chunks, self._needed = b"", [], 0
        return pending

    def feed(self, data: bytes) -> tuple[bytes, list[Frame]]:
        """Add ``data``; return the bytes of all now-complete messages and their frames.

        Raises ``ProtocolError`` for a length below 4 and ``MessageTooLarge`` above the limit, as soon
        as the header is seen (before the body is buffered).
        """
        if self._pending:
            if self._needed:
                self._chunks.append(data)
                self._buffered_total += len(data)
                if self._buffered_total < self._needed:
                    return b"", []
                data = b"".join([self._pending, *self._chunks])
                self._chunks, self._needed = [], 0
            else:
                data = self._pending + data
        frames: list[Frame] = []
        append = frames.append
        limit = self.max_message_size
        total = len(data)
        pos = 0
        while total - pos >= 5:
            length = _unpack_int32(data, pos + 1)[0]
            if length < 4:
                raise ProtocolError(f"invalid message length {length}")
            if length > limit:
                raise MessageTooLarge(length, limit)
            end = pos + 1 + length
            if end > total:
                break
            append((data[pos], pos + 5, end))
            pos = end
        if pos == total:
            self._pending = b""
            return data, frames
        self._pending = data[pos:]
        if total - pos >= 5:  # the header of the incomplete message is known: wait for all of it
            self._needed = 1 + _unpack_int32(data, pos + 1)[0]
            self._buffered_total = total - pos
        return data[:pos], frames


class StartupFramer:
    """Frames the untyped startup-phase packets (SSLRequest, StartupMessage, CancelRequest, ...)."""

    __slots__ = ("_pending", "max_packet_size")

    def __init__(self, max_packet_size: int = MAX_STARTUP_PACKET) -> None:
        self.max_packet_size = max_packet_size
        self._pending = b""

    def feed(self, data: bytes) -> None:
        self._pending += data

    def next_packet(self) -> bytes | None:
        """Return the next complete packet's payload (without its length), or None if incomplete."""
        if len(self._pending) < 4:
            return None
        length = _unpack_int32(self._pending, 0)[0]
        if length < 8:
            raise ProtocolError(f"invalid startup packet length {length}")
        if length > self.max_packet_size:
            raise MessageTooLarge(length, self.max_packet_size)
        if len(self._pending) < length:
            return None
        payload = self._pending[4:length]
        self._pending = self._pending[length:]
        return payload

    def take_rest(self) -> bytes:
        """Hand over (and forget) whatever was received after the last packet."""
        rest, self._pending = self._pending, b""
        return rest
