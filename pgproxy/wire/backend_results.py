"""Backend messages that carry a statement's result: RowDescription, DataRow, CommandComplete,
EmptyQueryResponse and the COPY responses that start a COPY sub-protocol.

These are the messages the masking path reads for every query, so the decoders favour few calls per
value. Structure only is checked; any malformation is a ``ProtocolError``, on which the proxy must fail
closed (a row it cannot decode is a row it cannot mask). Pure codec: no I/O, standard library only.
Re-exported by ``pgproxy.wire.backend``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from pgproxy.wire.codec import (
    CHARACTER_NOT_IN_REPERTOIRE,
    Payload,
    Reader,
    cstring,
    encode_count,
    encode_format_codes,
    encode_values,
    frame,
)
from pgproxy.wire.errors import ProtocolError


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse:
    type_code: ClassVar[bytes] = b"I"

    def encode(self) -> bytes:
        return _EMPTY_QUERY_RESPONSE_BYTES


@dataclass(frozen=True, slots=True)
class CommandComplete:
    """``tag`` such as "SELECT 3", "INSERT 0 1", "UPDATE 2"."""

    tag: str
    type_code: ClassVar[bytes] = b"C"

    def encode(self) -> bytes:
        return frame(b"C", cstring(self.tag))


@dataclass(frozen=True, slots=True)
class _CopyResponse:
    overall_format: int = 0
    column_format_codes: tuple[int, ...] = ()

    def _encode(self, type_code: bytes) -> bytes:
        return frame(type_code, bytes((self.overall_format,)) + encode_format_codes(self.column_format_codes))


@dataclass(frozen=True, slots=True)
class CopyInResponse(_CopyResponse):
    type_code: ClassVar[bytes] = b"G"

    def encode(self) -> bytes:
        return self._encode(b"G")


@dataclass(frozen=True, slots=True)
class CopyOutResponse(_CopyResponse):
    type_code: ClassVar[bytes] = b"H"

    def encode(self) -> bytes:
        return self._encode(b"H")


@dataclass(frozen=True, slots=True)
class CopyBothResponse(_CopyResponse):
    type_code: ClassVar[bytes] = b"W"

    def encode(self) -> bytes:
        return self._encode(b"W")


@dataclass(frozen=True, slots=True)
class DataRow:
    """One result row; None is SQL NULL. Values are in the formats the RowDescription announced."""

    values: tuple[bytes | None, ...]
    type_code: ClassVar[bytes] = b"D"

    def encode(self) -> bytes:
        return frame(b"D", encode_values(self.values))


class FieldDescription(NamedTuple):
    """One result column. ``table_oid``/``column_attr`` are 0 when the column is not a plain table column."""

    name: str
    table_oid: int
    column_attr: int
    type_oid: int
    type_size: int
    type_modifier: int
    format_code: int


# table OID, attribute number, type OID, type size, type modifier, format code.
_FIELD = struct.Struct("!IhIhih")
_FIELD_SIZE = _FIELD.size
_unpack_field = _FIELD.unpack_from
_new_field = FieldDescription._make


@dataclass(frozen=True, slots=True)
class RowDescription:
    fields: tuple[FieldDescription, ...]
    type_code: ClassVar[bytes] = b"T"

    def encode(self) -> bytes:
        parts = [encode_count(len(self.fields))]
        for f in self.fields:
            parts.append(cstring(f.name))
            parts.append(
                _FIELD.pack(
                    f.table_oid, f.column_attr, f.type_oid, f.type_size, f.type_modifier, f.format_code
                )
            )
        return frame(b"T", b"".join(parts))


def decode_command_complete(payload: Payload) -> CommandComplete:
    r = Reader(payload, "CommandComplete")
    tag = r.read_cstring()
    r.expect_end()
    return CommandComplete(tag)


def decode_empty_query_response(payload: Payload) -> EmptyQueryResponse:
    if len(payload):
        raise ProtocolError(f"invalid EmptyQueryResponse message: {len(payload)} unexpected bytes")
    return _EMPTY_QUERY_RESPONSE


def _read_copy_response(payload: Payload, what: str) -> tuple[int, tuple[int, ...]]:
    r = Reader(payload, what)
    overall = r.read_byte()
    if overall > 1:
        raise r.error(f"overall format {overall} is neither 0 (text) nor 1 (binary)")
    columns = r.read_format_codes()
    r.expect_end()
    return overall, columns


def decode_copy_in_response(payload: Payload) -> CopyInResponse:
    return CopyInResponse(*_read_copy_response(payload, "CopyInResponse"))


def decode_copy_out_response(payload: Payload) -> CopyOutResponse:
    return CopyOutResponse(*_read_copy_response(payload, "CopyOutResponse"))


def decode_copy_both_response(payload: Payload) -> CopyBothResponse:
    return CopyBothResponse(*_read_copy_response(payload, "CopyBothResponse"))


def decode_data_row(payload: Payload) -> DataRow:
    r = Reader(payload, "DataRow")
    values = r.read_values()
    r.expect_end()
    return DataRow(values)


def decode_row_description(payload: Payload) -> RowDescription:
    # Decoded once per result set before any row can be masked, so the loop is inlined rather than
    # going through one Reader call per field; errors still come from the Reader.
    r = Reader(payload, "RowDescription")
    # A field is at least its name's NUL plus the fixed part.
    count = r.read_count(1 + _FIELD_SIZE)
    buf = r.read_rest()
    end = len(buf)
    pos = 0
    fields: list[FieldDescription] = []
    append = fields.append
    for _ in range(count):
        nul = buf.find(0, pos)
        if nul < 0 or nul + 1 + _FIELD_SIZE > end:
            raise r.error(f"field {len(fields) + 1} of {count} is truncated")
        try:
            name = buf[pos:nul].decode("utf-8")
        except UnicodeDecodeError:
            raise r.error("column name is not valid UTF-8", CHARACTER_NOT_IN_REPERTOIRE) from None
        pos = nul + 1 + _FIELD_SIZE
        field = _new_field((name, *_unpack_field(buf, nul + 1)))
        if field.format_code not in (0, 1):
            raise r.error(f"column {name!r} has format code {field.format_code}")
        append(field)
    if pos != end:
        raise r.error(f"{end - pos} unexpected trailing bytes")
    return RowDescription(tuple(fields))


_EMPTY_QUERY_RESPONSE = EmptyQueryResponse()
_EMPTY_QUERY_RESPONSE_BYTES = frame(b"I", b"")
