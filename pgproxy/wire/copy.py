"""COPY sub-protocol messages that both peers send with the same layout: CopyData ('d') and CopyDone ('c').

One class serves both directions, so ``frontend.CopyData is backend.CopyData``; direction is known from
which stream a frame came from. Pure codec: no I/O, standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pgproxy.wire.codec import Payload, frame
from pgproxy.wire.errors import ProtocolError


@dataclass(frozen=True, slots=True)
class CopyData:
    """A chunk of COPY data; chunk boundaries carry no meaning, rows may span chunks."""

    data: bytes
    type_code: ClassVar[bytes] = b"d"

    def encode(self) -> bytes:
        return frame(b"d", self.data)

    @classmethod
    def decode(cls, payload: Payload) -> CopyData:
        return cls(payload if isinstance(payload, bytes) else bytes(payload))


@dataclass(frozen=True, slots=True)
class CopyDone:
    type_code: ClassVar[bytes] = b"c"

    def encode(self) -> bytes:
        return _COPY_DONE_BYTES

    @classmethod
    def decode(cls, payload: Payload) -> CopyDone:
        if len(payload):
            raise ProtocolError(f"invalid CopyDone message: {len(payload)} unexpected bytes")
        return _COPY_DONE


_COPY_DONE = CopyDone()
_COPY_DONE_BYTES = frame(b"c", b"")
