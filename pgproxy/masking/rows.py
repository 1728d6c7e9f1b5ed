"""Rewriting DataRow messages: each masked column's value goes through its masker, the rest is copied.

The row is walked once; runs of columns without a masker (and NULLs, which stay NULL) are kept as
slices of the original payload, so an unmasked column costs one length read and no copy. The same walk
serves binary COPY tuples (``copy_out``), which share the DataRow field layout.

Anything malformed — a wrong column count, a truncated value, a negative length other than -1,
trailing bytes — or a masker that raises is a ``MaskingError``: the caller must then fail closed (drop
the row, end the query with an error), never forward the original. Pure code: no I/O, no parsing of
values (that is ``values``), no knowledge of which columns are masked.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from pgproxy.masking.values import Masker

_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")
_unpack_int16 = _INT16.unpack_from
_unpack_int32 = _INT32.unpack_from
_pack_int32 = _INT32.pack
_NULL_LENGTH = b"\xff\xff\xff\xff"

Buffer = bytes | memoryview


class MaskingError(ValueError):
    """A row (or COPY data) that cannot be masked; the caller must fail closed."""


def mask_data_row(body: bytes | memoryview, maskers: Sequence[Masker | None]) -> bytes:
    """The whole DataRow message (type byte and length included) for ``body`` with its values masked."""
    view = body if isinstance(body, memoryview) else memoryview(body)
    tuple_ = mask_tuple(view, 0, maskers)
    if tuple_ is None:
        raise MaskingError("DataRow is truncated")
    parts, size, end = tuple_
    if end != len(view):
        raise MaskingError("DataRow has bytes after its last column")
    return b"".join((b"D", _pack_int32(size + 4), *parts))


def mask_tuple(data: memoryview, pos: int, maskers: Sequence[Masker | None]) -> tuple[list[Buffer], int, int] | None:
    """Mask the int16-count-then-fields tuple at ``data[pos:]``.

    Returns the pieces of the masked tuple (count included), their total size and the offset where the
    tuple ended in ``data``; None when ``data`` ends before the tuple does (more may arrive). Raises
    ``MaskingError`` for a count that differs from ``len(maskers)`` or a negative length other than -1.
    """
    end = len(data)
    if pos + 2 > end:
        return None
    (count,) = _unpack_int16(data, pos)
    if count != len(maskers):
        raise MaskingError(f"row has {count} columns, expected {len(maskers)}")
    parts: list[Buffer] = []
    size = 0
    run_start = pos  # start of the current run of bytes copied unchanged
    pos += 2
    for masker in maskers:
        if pos + 4 > end:
            return None
        (length,) = _unpack_int32(data, pos)
        if length < 0:
            if length != -1:
                raise MaskingError(f"negative value length {length}")
            pos += 4  # NULL stays NULL
            continue
        value_end = pos + 4 + length
        if value_end > end:
            return None
        if masker is None:
            pos = value_end
            continue
        if pos > run_start:
            parts.append(data[run_start:pos])
            size += pos - run_start
        try:
            masked = masker(bytes(data[pos + 4 : value_end]))
        except Exception as exc:  # a masker must not raise; if one does, nothing is forwarded
            raise MaskingError(f"masking a value failed: {exc!r}") from exc
        if masked is None:
            parts.append(_NULL_LENGTH)
            size += 4
        else:
            parts.append(_pack_int32(len(masked)))
            parts.append(masked)
            size += 4 + len(masked)
        pos = run_start = value_end
    if pos > run_start:
        parts.append(data[run_start:pos])
        size += pos - run_start
    return parts, size, pos
