"""COPY TO STDOUT masking (``pgproxy.masking.copy_out``) against reference implementations written here
from the PostgreSQL documentation: an encoder doing what COPY TO does (``CopyAttributeOutText`` and
``CopyAttributeOutCSV``) and a parser doing what COPY FROM does. Masked output must parse back to the
masked values, unmasked columns must pass byte for byte, and any split of the data into CopyData
messages must give the same bytes as whole rows."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pgproxy.masking.copy_out import CopyOutMasker
from pgproxy.masking.rows import MaskingError
from pgproxy.masking.rules import ColumnRule
from pgproxy.masking.values import Masker, TypeKind, value_masker
from pgproxy.policy.model import MaskStrategy

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
Row = list[bytes | None]

# --- reference COPY TO (encoders) -------------------------------------------------------------------------

_TEXT_OUT = {0x08: b"\\b", 0x0C: b"\\f", 0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t", 0x0B: b"\\v", 0x5C: b"\\\\"}


def encode_text(rows: Sequence[Row], delimiter: bytes = b"\t", null: bytes = b"\\N") -> bytes:
    lines = []
    for row in rows:
        fields = []
        for value in row:
            if value is None:
                fields.append(null)
                continue
            out = bytearray()
            for byte in value:
                if byte in _TEXT_OUT:
                    out += _TEXT_OUT[byte]
                elif byte == delimiter[0]:
                    out += b"\\" + delimiter
                else:
                    out.append(byte)
            fields.append(bytes(out))
        lines.append(delimiter.join(fields) + b"\n")
    return b"".join(lines)


def encode_csv(
    rows: Sequence[Row], delimiter: bytes = b",", null: bytes = b"", quote: bytes = b'"', escape: bytes = b'"'
) -> bytes:
    lines = []
    for row in rows:
        fields = []
        for value in row:
            if value is None:
                fields.append(null)
                continue
            special = any(char in value for char in (delimiter, quote, b"\r", b"\n"))
            if special or value == null or (len(row) == 1 and value == b"\\."):
                out = bytearray(quote)
                for byte in value:
                    if bytes((byte,)) in (quote, escape):
                        out += escape
                    out.append(byte)
                fields.append(bytes(out + quote))
            else:
                fields.append(value)
        lines.append(delimiter.join(fields) + b"\n")
    return b"".join(lines)


# --- reference COPY FROM (parsers) ------------------------------------------------------------------------

_TEXT_IN = {ord("b"): 0x08, ord("f"): 0x0C, ord("n"): 0x0A, ord("r"): 0x0D, ord("t"): 0x09, ord("v"): 0x0B}
_OCTAL = b"01234567"
_HEX = b"0123456789abcdefABCDEF"


def parse_text(data: bytes, delimiter: bytes = b"\t", null: bytes = b"\\N") -> list[Row]:
    assert data == b"" or data.endswith(b"\n")
    rows: list[Row] = []
    for line in data.split(b"\n")[:-1]:
        row: Row = []
        raw, value, i = bytearray(), bytearray(), 0
        while True:
            if i == len(line) or line[i] == delimiter[0]:
                row.append(None if bytes(raw) == null else bytes(value))
                raw, value = bytearray(), bytearray()
                if i == len(line):
                    break
                i += 1
                continue
            if line[i] != 0x5C:
                raw.append(line[i])
                value.append(line[i])
                i += 1
                continue
            start = i
            i += 1
            char = line[i]
            if char in _OCTAL:
                end = i
                while end < len(line) and end < i + 3 and line[end] in _OCTAL:
                    end += 1
                value.append(int(line[i:end], 8) & 0xFF)
                i = end
            elif char == ord("x") and i + 1 < len(line) and line[i + 1] in _HEX:
                end = i + 1
                while end < len(line) and end < i + 3 and line[end] in _HEX:
                    end += 1
                value.append(int(line[i + 1 : end], 16))
                i = end
            else:
                value.append(_TEXT_IN.get(char, char))
                i += 1
            raw += line[start:i]
        rows.append(row)
    return rows


def parse_csv(
    data: bytes, delimiter: bytes = b",", null: bytes = b"", quote: bytes = b'"', escape: bytes = b'"'
) -> list[Row]:
    rows: list[Row] = []
    row: Row = []
    value, quoted, in_quotes, i = bytearray(), False, False, 0
    while i < len(data):
        char, following = data[i : i + 1], data[i + 1 : i + 2]
        if in_quotes:
            if char == escape and following in (quote, escape) and (escape != quote or following == quote):
                value += following
                i += 2
                continue
            if char == quote:
                in_quotes = False
            else:
                value += char
            i += 1
            continue
        if char == quote:
            in_quotes = quoted = True
        elif char in (delimiter, b"\n"):
            row.append(None if not quoted and bytes(value) == null else bytes(value))
            value, quoted = bytearray(), False
            if char == b"\n":
                rows.append(row)
                row = []
        else:
            value += char
        i += 1
    assert not in_quotes and not row and not value
    return rows


# --- strategies -------------------------------------------------------------------------------------------

SPECIALS = list("\t\n\r\\\"',;|Nx.é€ \b\v\f")
values = st.text(st.sampled_from(SPECIALS) | st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12).map(
    str.encode
)
field = st.none() | values | st.sampled_from([b"", b"\\N", b"\\.", b'"', b"NULL"])


def rows_of(width: int) -> st.SearchStrategy[list[Row]]:
    return st.lists(st.lists(field, min_size=width, max_size=width), max_size=5)


def scramble(value: bytes) -> bytes | None:
    """A masker whose output is full of characters COPY must escape or quote."""
    return b'\t\\\n\r",;' + value[::-1] + b"|\\N"


def to_null(_value: bytes) -> bytes | None:
    return None


MASKERS: list[Masker | None] = [None, scramble, to_null]


def expected_rows(rows: list[Row], maskers: Sequence[Masker | None]) -> list[Row]:
    return [
        [
            value if value is None or masker is None else masker(value)
            for value, masker in zip(row, maskers, strict=True)
        ]
        for row in rows
    ]


def feed_all(masker: CopyOutMasker, pieces: Sequence[bytes]) -> bytes:
    out = b"".join(masker.feed(piece) for piece in pieces)
    return out + masker.finish()


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


# --- text format ------------------------------------------------------------------------------------------


@SETTINGS
@given(data=st.data(), width=st.integers(1, 4), delimiter=st.sampled_from([b"\t", b",", b"|", b";"]))
def test_text_round_trip(data: st.DataObject, width: int, delimiter: bytes) -> None:
    rows = data.draw(rows_of(width))
    maskers = data.draw(st.lists(st.sampled_from(MASKERS), min_size=width, max_size=width))
    encoded = encode_text(rows, delimiter)
    masker = CopyOutMasker("text", maskers, delimiter=delimiter.decode())
    out = feed_all(masker, encoded.splitlines(keepends=True))
    assert parse_text(out, delimiter) == expected_rows(rows, maskers)
    assert parse_text(encoded, delimiter) == rows  # the references agree with each other


@SETTINGS
@given(data=st.data(), width=st.integers(1, 4))
def test_text_identity_masker_reproduces_the_bytes(data: st.DataObject, width: int) -> None:
    rows = data.draw(rows_of(width))
    encoded = encode_text(rows)
    masker = CopyOutMasker("text", [lambda value: value] * width)
    assert feed_all(masker, [encoded]) == encoded


def test_text_escapes_are_undone_before_masking() -> None:
    seen: list[bytes] = []

    def record(value: bytes) -> bytes | None:
        seen.append(value)
        return b"x"

    line = b"\\101\\x42\\x4g\\xz\\q\\b\\f\\n\\r\\t\\v\\\\\\N\\777\\\t" + b"\t\\N\tplain\n"
    masker = CopyOutMasker("text", [record, record, None])
    assert masker.feed(line) == b"x\t\\N\tplain\n"
    assert seen == [b"AB\x04gxzq\b\f\n\r\t\v\\N\xff\t"]


def test_text_escaped_delimiters_and_backslashes_split_correctly() -> None:
    rows: list[Row] = [[b"a\\", b"b\tc\\\td", b"\\\\\t"], [b"\t", b"", b"\\"]]
    encoded = encode_text(rows)
    seen: list[bytes] = []

    def record(value: bytes) -> bytes | None:
        seen.append(value)
        return value

    assert feed_all(CopyOutMasker("text", [record] * 3), [encoded]) == encoded
    assert seen == [value for row in rows for value in row]


def test_text_custom_null_string_is_kept_apart_from_values() -> None:
    masker = CopyOutMasker("text", [lambda _v: b"NULL", lambda _v: None], null="NULL")
    out = masker.feed(b"a\tb\n")
    assert out == b"\\NULL\tNULL\n"
    assert parse_text(out, null=b"NULL") == [[b"NULL", None]]


def test_text_malformed_rows_are_refused() -> None:
    with pytest.raises(MaskingError, match="columns"):
        CopyOutMasker("text", [None, scramble]).feed(b"one\n")
    with pytest.raises(MaskingError, match="backslash"):
        CopyOutMasker("text", [scramble]).feed(b"a\\b\\\n")


def test_text_header_row_passes_unchanged() -> None:
    masker = CopyOutMasker("text", [scramble], header=True)
    assert masker.feed(b"email\n") == b"email\n"
    assert masker.feed(b"a@b\n") == encode_text([[scramble(b"a@b")]])


def test_text_crlf_rows_keep_their_terminator() -> None:
    masker = CopyOutMasker("text", [None, to_null])
    assert masker.feed(b"a\tb\r\n") == b"a\t\\N\r\n"


# --- csv format -------------------------------------------------------------------------------------------

csv_options = st.sampled_from(
    [
        (b",", b"", b'"', b'"'),
        (b";", b"NULL", b'"', b'"'),
        (b"|", b"\\N", b"'", b"\\"),
        (b"\t", b"", b'"', b"!"),
    ]
)


@SETTINGS
@given(data=st.data(), width=st.integers(1, 4), options=csv_options)
def test_csv_round_trip(data: st.DataObject, width: int, options: tuple[bytes, bytes, bytes, bytes]) -> None:
    delimiter, null, quote, escape = options
    rows = data.draw(rows_of(width))
    maskers = data.draw(st.lists(st.sampled_from(MASKERS), min_size=width, max_size=width))
    encoded = encode_csv(rows, delimiter, null, quote, escape)
    masker = CopyOutMasker(
        "csv", maskers, delimiter=delimiter.decode(), null=null.decode(), quote=quote.decode(), escape=escape.decode()
    )
    pieces = [encode_csv([row], delimiter, null, quote, escape) for row in rows]  # one row per CopyData
    out = feed_all(masker, pieces)
    assert parse_csv(out, delimiter, null, quote, escape) == expected_rows(rows, maskers)
    assert parse_csv(encoded, delimiter, null, quote, escape) == rows


@SETTINGS
@given(data=st.data(), width=st.integers(2, 4))
def test_csv_identity_masker_reproduces_the_bytes(data: st.DataObject, width: int) -> None:
    rows = data.draw(rows_of(width))
    encoded = encode_csv(rows)
    assume(all(b"\\." not in row for row in rows))  # PostgreSQL quotes "\." only alone in a row; pgproxy always
    masker = CopyOutMasker("csv", [lambda value: value] * width)
    assert feed_all(masker, [encoded]) == encoded


@pytest.mark.parametrize(("quote", "escape"), [("'", "\\"), ('"', "!"), ('"', '"')])
def test_csv_escape_characters_in_masked_values(quote: str, escape: str) -> None:
    value = f"a{escape}{quote}b{escape}{escape}c{escape},{quote}{quote}".encode()
    masker = CopyOutMasker("csv", [lambda _v: value, None], quote=quote, escape=escape)
    out = masker.feed(b"x,y\n")
    assert parse_csv(out, quote=quote.encode(), escape=escape.encode()) == [[value, b"y"]]


def test_csv_null_and_empty_are_distinguished() -> None:
    masker = CopyOutMasker("csv", [lambda _v: b"", lambda _v: None, None])
    out = masker.feed(b'x,y,""\n')
    assert out == b'"",,""\n'
    assert parse_csv(out) == [[b"", None, b""]]


def test_csv_quoted_newlines_stay_inside_the_row() -> None:
    seen: list[bytes] = []

    def record(value: bytes) -> bytes | None:
        seen.append(value)
        return b"m"

    masker = CopyOutMasker("csv", [record, None])
    assert masker.feed(b'"line1\nline2 ""q""",tail\n') == b"m,tail\n"
    assert seen == [b'line1\nline2 "q"']


def test_csv_header_row_passes_unchanged_even_when_quoted_over_lines() -> None:
    masker = CopyOutMasker("csv", [scramble, None], header=True)
    header = b'"e\nmail",name\n'
    assert masker.feed(header[:4]) == b""
    assert masker.feed(header[4:] + b"a,b\n") == header + encode_csv([[scramble(b"a"), b"b"]])


def test_csv_malformed_rows_are_refused() -> None:
    with pytest.raises(MaskingError, match="columns"):
        CopyOutMasker("csv", [scramble]).feed(b"a,b\n")
    with pytest.raises(MaskingError, match="carriage return"):
        CopyOutMasker("csv", [scramble]).feed(b"a\rb\n")
    unclosed = CopyOutMasker("csv", [scramble])
    assert unclosed.feed(b'"never closed\n') == b""
    with pytest.raises(MaskingError, match="inside a row"):
        unclosed.finish()


# --- chunking ---------------------------------------------------------------------------------------------


@SETTINGS
@given(
    data=st.data(),
    fmt=st.sampled_from(["text", "csv"]),
    width=st.integers(1, 3),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
)
def test_any_split_into_copydata_gives_the_same_bytes(
    data: st.DataObject, fmt: str, width: int, cuts: list[int]
) -> None:
    rows = data.draw(rows_of(width))
    maskers = data.draw(st.lists(st.sampled_from(MASKERS), min_size=width, max_size=width))
    encoded = encode_text(rows) if fmt == "text" else encode_csv(rows)
    whole = feed_all(CopyOutMasker(fmt, maskers), [encoded])
    assert feed_all(CopyOutMasker(fmt, maskers), split_at(encoded, cuts)) == whole
    assert feed_all(CopyOutMasker(fmt, maskers), [encoded[i : i + 1] for i in range(len(encoded))]) == whole


def test_finish_refuses_an_incomplete_row() -> None:
    masker = CopyOutMasker("text", [scramble])
    assert masker.feed(b"secret") == b""
    with pytest.raises(MaskingError):
        masker.finish()


# --- binary format ----------------------------------------------------------------------------------------

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)


def binary_tuple(row: Row) -> bytes:
    out = struct.pack("!h", len(row))
    for value in row:
        out += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    return out


def binary_copy(rows: Sequence[Row], header: bytes = HEADER) -> bytes:
    return header + b"".join(binary_tuple(row) for row in rows) + b"\xff\xff"


@SETTINGS
@given(
    data=st.data(),
    width=st.integers(1, 4),
    extension=st.binary(max_size=6),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
)
def test_binary_rows_are_masked_and_framing_passes(
    data: st.DataObject, width: int, extension: bytes, cuts: list[int]
) -> None:
    rows = data.draw(st.lists(st.lists(st.none() | st.binary(max_size=10), min_size=width, max_size=width), max_size=4))
    maskers = data.draw(st.lists(st.sampled_from(MASKERS), min_size=width, max_size=width))
    header = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, len(extension)) + extension
    encoded = binary_copy(rows, header)
    out = feed_all(CopyOutMasker("binary", maskers), split_at(encoded, cuts))
    assert out == binary_copy(expected_rows(rows, maskers), header)


def test_binary_malformed_streams_are_refused() -> None:
    with pytest.raises(MaskingError, match="signature"):
        CopyOutMasker("binary", [None]).feed(b"NOTCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0))
    with pytest.raises(MaskingError, match="OIDs"):
        CopyOutMasker("binary", [None]).feed(b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 1 << 16, 0))
    with pytest.raises(MaskingError, match="columns"):
        CopyOutMasker("binary", [None]).feed(HEADER + binary_tuple([b"a", b"b"]))
    with pytest.raises(MaskingError, match="after the trailer"):
        CopyOutMasker("binary", [None]).feed(binary_copy([]) + binary_tuple([b"a"]))
    truncated = CopyOutMasker("binary", [scramble])
    assert truncated.feed(HEADER + binary_tuple([b"secret"])[:-2]) == HEADER
    with pytest.raises(MaskingError):
        truncated.finish()


# --- with the real value maskers ----------------------------------------------------------------------------


@SETTINGS
@given(numbers=st.lists(st.none() | st.integers(-(2**31), 2**31 - 1), max_size=5))
def test_hashed_ints_agree_between_text_and_binary_copy(numbers: list[int | None]) -> None:
    rule = ColumnRule(MaskStrategy.HASH, "public.t.n")
    text_masker = value_masker(rule, TypeKind.INT4, binary=False, typmod=-1, codec="utf-8", key=b"k")
    binary_masker = value_masker(rule, TypeKind.INT4, binary=True, typmod=-1, codec="utf-8", key=b"k")
    text_rows: list[Row] = [[None if n is None else str(n).encode()] for n in numbers]
    binary_rows: list[Row] = [[None if n is None else struct.pack("!i", n)] for n in numbers]
    text_out = parse_text(CopyOutMasker("text", [text_masker]).feed(encode_text(text_rows)))
    binary_out = CopyOutMasker("binary", [binary_masker]).feed(binary_copy(binary_rows))
    expected = binary_copy([[None if n is None else struct.pack("!i", int(n))] for [n] in text_out])
    assert binary_out == expected


def test_latin1_client_encoding() -> None:
    rule = ColumnRule(MaskStrategy.PARTIAL, "public.t.c", keep_first=1, keep_last=1)
    partial = value_masker(rule, TypeKind.TEXT, binary=False, typmod=-1, codec="latin-1", key=b"k")
    masker = CopyOutMasker("csv", [partial, None], delimiter="é", codec="latin-1")
    assert masker.feed("Ñandúéçà\n".encode("latin-1")) == "Ñ***úéçà\n".encode("latin-1")


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("json", [None]), {}),
        (("text", [None]), {"delimiter": "ab"}),
        (("text", [None]), {"delimiter": "€"}),
        (("csv", [None]), {"delimiter": "\n"}),
        (("csv", [None]), {"quote": "''"}),
        (("text", [None]), {"null": "a\nb"}),
        (("text", [None]), {"codec": "shift_jis"}),
    ],
)
def test_invalid_options_are_refused(args: tuple[str, list[Masker | None]], kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        CopyOutMasker(*args, **kwargs)  # type: ignore[arg-type]
