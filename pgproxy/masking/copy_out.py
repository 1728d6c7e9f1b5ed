"""Masking the data of ``COPY … TO STDOUT``: text, csv and binary formats, one CopyData payload at a time.

Each row is split into fields the way PostgreSQL's COPY FROM would read them back, each masked field's
value is recovered in its text form (COPY's escaping or quoting undone), masked, and written back with
the same escaping rules; unmasked fields are copied byte for byte. Binary COPY carries binary-format
values in DataRow's field layout (``rows.mask_tuple``).

PostgreSQL sends one row per CopyData, but nothing in the protocol promises it: an incomplete trailing
row is held back until the rest arrives (never forwarded unmasked), and ``finish`` refuses to end with
one pending. Anything that cannot be read — a column count that differs from the maskers', a stray
backslash or carriage return, a bad binary header — is a ``MaskingError``; the caller must fail closed.

Rows are handled as bytes in the client encoding. That is sound because every encoding pgproxy accepts
keeps ASCII bytes out of multibyte characters (``values.ascii_safe``); others are refused here.
Pure code: no I/O; values are masked by ``values`` maskers, never interpreted here.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence

from pgproxy.masking.rows import Buffer, MaskingError, mask_tuple
from pgproxy.masking.values import Masker, ascii_safe

_BINARY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_BINARY_HEADER = struct.Struct("!ii")  # flags, header extension length
_BINARY_OIDS_FLAG = 1 << 16
_unpack_int16 = struct.Struct("!h").unpack_from

# Text format: a backslash and what it means (the rest stand for themselves, \N included).
_TEXT_UNESCAPE = re.compile(rb"\\(?:x([0-9A-Fa-f]{1,2})|([0-7]{1,3})|(.))", re.DOTALL)
_TEXT_LETTERS = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}
_TEXT_ESCAPES = {b"\\": b"\\\\", **{code: b"\\" + letter for letter, code in _TEXT_LETTERS.items()}}
# A value whose escaped form equals the null string gets a backslash in front (read back as the
# character itself) — unless that would form an escape sequence.
_UNSAFE_AFTER_BACKSLASH = frozenset(b"bfnrtvx01234567")

_Fields = tuple[list[bytes], bytes, int]  # raw fields, line terminator, offset after the row


def _unescape_one(match: re.Match[bytes]) -> bytes:
    hex_digits, octal, other = match.groups()
    if hex_digits is not None:
        return bytes((int(hex_digits, 16),))
    if octal is not None:
        return bytes((int(octal, 8) & 0xFF,))  # PostgreSQL keeps the low 8 bits of \777
    return _TEXT_LETTERS.get(other, other)


def _one_byte(name: str, value: str, codec: str) -> bytes:
    encoded = value.encode(codec)
    if len(encoded) != 1 or encoded in b"\r\n":
        raise ValueError(f"COPY {name} must be a single one-byte character other than CR or LF, not {value!r}")
    return encoded


class CopyOutMasker:
    """Masks one COPY TO STDOUT data stream; ``maskers`` has one entry per column (None: unmasked)."""

    def __init__(
        self,
        format: str,
        maskers: Sequence[Masker | None],
        *,
        delimiter: str | None = None,
        null: str | None = None,
        quote: str | None = None,
        escape: str | None = None,
        header: bool = False,
        codec: str = "utf-8",
    ) -> None:
        self._format = format.lower()
        if self._format not in ("text", "csv", "binary"):
            raise ValueError(f"unknown COPY format {format!r}")
        if not ascii_safe(codec):
            raise ValueError(f"COPY data in {codec} cannot be split safely (ASCII bytes inside characters)")
        self._maskers = tuple(maskers)
        self._masked = tuple((i, m) for i, m in enumerate(self._maskers) if m is not None)
        self._pending = b""
        self._header = header and self._format != "binary"
        self._binary_header_done = False
        self._binary_trailer_seen = False
        csv = self._format == "csv"
        self._delimiter = _one_byte("delimiter", delimiter if delimiter is not None else ("," if csv else "\t"), codec)
        self._null = (null if null is not None else ("" if csv else "\\N")).encode(codec)
        if b"\r" in self._null or b"\n" in self._null:
            raise ValueError("COPY null string must not contain CR or LF")
        d = re.escape(self._delimiter)
        self._text_special = re.compile(rb"[\\\b\f\n\r\t\v" + d + rb"]")
        self._escaped_delimiter = b"\\" + self._delimiter
        self._quote = _one_byte("quote", quote if quote is not None else '"', codec)
        self._escape = _one_byte("escape", escape if escape is not None else quote or '"', codec)
        q, e = re.escape(self._quote), re.escape(self._escape)
        inner = rb"(?:[^" + q + rb"]++|" + q + q + rb")*+"
        if self._escape != self._quote:
            # An escape character escapes only a quote or itself; before anything else it is literal.
            inner = rb"(?:[^" + q + e + rb"]++|" + e + rb"[" + q + e + rb"]|" + e + rb"(?![" + q + e + rb"]))*+"
        self._csv_field = re.compile(rb"(?:[^" + q + d + rb"\r\n]++|" + q + inner + q + rb")*+")
        self._csv_quoted = re.compile(q + rb"(" + inner + rb")" + q)
        self._csv_escaped = re.compile(e + rb"([" + q + e + rb"])")
        self._csv_needs_quotes = re.compile(rb"[" + q + d + rb"\r\n]")

    def feed(self, data: bytes | memoryview) -> bytes:
        """The masked payload for one CopyData payload (empty while a row is incomplete)."""
        if not isinstance(data, bytes):
            data = bytes(data)  # rows are split with bytes methods
        if self._pending:
            if self._format != "binary" and b"\n" not in data:
                self._pending += data  # no row can end in this piece
                return b""
            data = self._pending + data
            self._pending = b""
        if self._format == "binary":
            return self._feed_binary(data)
        split = self._split_csv if self._format == "csv" else self._split_text
        out: list[bytes] = []
        pos = 0
        while pos < len(data):
            row = split(data, pos)
            if row is None:
                break
            fields, terminator, end = row
            if self._header:
                self._header = False
                out.append(data[pos:end])
            else:
                out.append(self._mask_row(fields, terminator))
            pos = end
        self._pending = data[pos:]
        return b"".join(out)

    def finish(self) -> bytes:
        """At CopyDone: what is left to send (nothing); raises ``MaskingError`` for an incomplete row."""
        if self._pending:
            raise MaskingError(f"COPY data ends inside a row ({len(self._pending)} bytes left)")
        return b""

    # --- text and csv -------------------------------------------------------------------------------

    def _mask_row(self, fields: list[bytes], terminator: bytes) -> bytes:
        if len(fields) != len(self._maskers):
            if not (fields == [b""] and not self._maskers):
                raise MaskingError(f"COPY row has {len(fields)} columns, expected {len(self._maskers)}")
            fields = []
        csv = self._format == "csv"
        for index, masker in self._masked:
            raw = fields[index]
            value = self._csv_value(raw) if csv else self._text_value(raw)
            if value is None:
                continue  # NULL stays NULL
            try:
                masked = masker(value)
            except Exception as exc:  # a masker must not raise; if one does, nothing is forwarded
                raise MaskingError(f"masking a value failed: {exc!r}") from exc
            fields[index] = self._csv_write(masked) if csv else self._text_write(masked)
        return self._delimiter.join(fields) + terminator

    def _split_text(self, data: bytes, pos: int) -> _Fields | None:
        newline = data.find(b"\n", pos)
        if newline < 0:
            return None
        line_end = newline - 1 if newline > pos and data[newline - 1] == 0x0D else newline
        line = data[pos:line_end]
        terminator = data[line_end : newline + 1]
        fields = line.split(self._delimiter)
        if self._escaped_delimiter in line or line.endswith(b"\\"):
            fields = self._rejoin_escaped(fields)
        return fields, terminator, newline + 1

    def _rejoin_escaped(self, parts: list[bytes]) -> list[bytes]:
        """Undo splits at escaped delimiters: a part ending in an odd number of backslashes ended in one."""
        fields: list[bytes] = []
        carried: bytes | None = None
        for part in parts:
            if carried is not None:
                part = carried + self._delimiter + part  # noqa: PLW2901 - the part continues the carried one
                carried = None
            if part.endswith(b"\\") and (len(part) - len(part.rstrip(b"\\"))) % 2:
                carried = part
            else:
                fields.append(part)
        if carried is not None:
            raise MaskingError("COPY text row ends with a lone backslash")
        return fields

    def _text_value(self, raw: bytes) -> bytes | None:
        if raw == self._null:
            return None
        return _TEXT_UNESCAPE.sub(_unescape_one, raw) if b"\\" in raw else raw

    def _text_write(self, value: bytes | None) -> bytes:
        if value is None:
            return self._null
        escaped = self._text_special.sub(self._text_escape_one, value)
        if escaped == self._null and escaped and escaped[0] not in _UNSAFE_AFTER_BACKSLASH:
            return b"\\" + escaped
        return escaped

    def _text_escape_one(self, match: re.Match[bytes]) -> bytes:
        char = match.group()
        return _TEXT_ESCAPES.get(char) or b"\\" + char  # the delimiter

    def _split_csv(self, data: bytes, pos: int) -> _Fields | None:
        newline = data.find(b"\n", pos)
        if newline < 0:
            return None
        if data.find(self._quote, pos, newline) < 0 and data.find(b"\r", pos, newline) < 0:
            return data[pos:newline].split(self._delimiter), b"\n", newline + 1  # the common case
        fields: list[bytes] = []
        start = pos
        while True:
            end = self._csv_field.match(data, start).end()  # type: ignore[union-attr]  # matches empty
            fields.append(data[start:end])
            char = data[end : end + 1]
            if char == self._delimiter:
                start = end + 1
            elif char == b"\n":
                return fields, b"\n", end + 1
            elif char == b"\r":
                following = data[end + 1 : end + 2]
                if following == b"\n":
                    return fields, b"\r\n", end + 2
                if following:
                    raise MaskingError("COPY csv row has an unquoted carriage return")
                return None
            else:
                return None  # the end of the data, or a quoted value not closed yet

    def _csv_value(self, raw: bytes) -> bytes | None:
        if self._quote not in raw:
            return None if raw == self._null else raw
        return self._csv_quoted.sub(lambda m: self._csv_escaped.sub(rb"\1", m[1]), raw)

    def _csv_write(self, value: bytes | None) -> bytes:
        if value is None:
            return self._null
        if self._csv_needs_quotes.search(value) is None and value not in (self._null, b"\\."):
            return value
        q, e = self._quote, self._escape
        if e != q:
            value = value.replace(e, e + e)
        return q + value.replace(q, e + q) + q

    # --- binary -------------------------------------------------------------------------------------

    def _feed_binary(self, data: bytes) -> bytes:
        view = memoryview(data)
        out: list[Buffer] = []
        pos = 0
        if not self._binary_header_done:
            fixed = len(_BINARY_SIGNATURE) + _BINARY_HEADER.size
            if len(data) < fixed:
                self._pending = data
                return b""
            if not data.startswith(_BINARY_SIGNATURE):
                raise MaskingError("binary COPY data has no PGCOPY signature")
            flags, extension = _BINARY_HEADER.unpack_from(data, len(_BINARY_SIGNATURE))
            if flags & _BINARY_OIDS_FLAG or extension < 0:
                raise MaskingError("binary COPY header not supported (OIDs or a bad extension length)")
            if len(data) < fixed + extension:
                self._pending = data
                return b""
            pos = fixed + extension
            out.append(view[:pos])
            self._binary_header_done = True
        while pos < len(data):
            if self._binary_trailer_seen:
                raise MaskingError("binary COPY data after the trailer")
            if pos + 2 <= len(data) and _unpack_int16(data, pos)[0] == -1:
                out.append(view[pos : pos + 2])
                pos += 2
                self._binary_trailer_seen = True
                continue
            tuple_ = mask_tuple(view, pos, self._maskers)
            if tuple_ is None:
                break
            parts, _size, pos = tuple_
            out.extend(parts)
        self._pending = data[pos:]
        return b"".join(out)
