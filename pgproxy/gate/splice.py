"""A run of complete protocol messages with some of them swapped for other bytes, copied only if needed.

The gate forwards the bytes it was given as they are unless it swaps a message (a denial's stand-in on
the way up, pgproxy's error on the way down). ``Splice`` remembers the swaps and joins the pieces once.
Pure; it knows nothing of message types.
"""

from __future__ import annotations


class Splice:
    __slots__ = ("_copied_to", "_data", "_pieces")

    def __init__(self, data: bytes, begin: int = 0) -> None:
        self._data = data
        self._pieces: list[bytes] = []
        self._copied_to = begin  # everything before this offset is in ``_pieces`` (or not wanted)

    def swap(self, message_start: int, message_end: int, replacement: bytes) -> None:
        """Put ``replacement`` where the message ``data[message_start:message_end]`` was (in order)."""
        self._pieces.append(self._data[self._copied_to : message_start])
        self._pieces.append(replacement)
        self._copied_to = message_end

    def until(self, stop: int) -> bytes:
        """The bytes from ``begin`` up to ``stop``, with the swaps made."""
        return b"".join([*self._pieces, self._data[self._copied_to : stop]])
