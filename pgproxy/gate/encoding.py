"""Decode client text the way the server will: PostgreSQL encoding names → Python codecs.

The classifier must read exactly the characters the server reads. The server converts every
client string from ``client_encoding`` before parsing it, so pgproxy decodes with the same
encoding. Encodings whose multibyte characters may contain ASCII bytes (SJIS, BIG5, GBK, UHC,
GB18030, JOHAB) are refused: a byte that is part of a character for one decoder and a quote or
backslash for another is the classic way to make two parsers disagree. Pure, no I/O.
"""

from __future__ import annotations

import codecs

# PostgreSQL name (upper case, as reported in ParameterStatus) → Python codec.
_CODECS: dict[str, str] = {
    "UTF8": "utf-8",
    "UNICODE": "utf-8",
    "UTF_8": "utf-8",
    "LATIN1": "latin-1",
    "LATIN2": "iso8859-2",
    "LATIN3": "iso8859-3",
    "LATIN4": "iso8859-4",
    "LATIN5": "iso8859-9",
    "LATIN6": "iso8859-10",
    "LATIN7": "iso8859-13",
    "LATIN8": "iso8859-14",
    "LATIN9": "iso8859-15",
    "LATIN10": "iso8859-16",
    "ISO_8859_5": "iso8859-5",
    "ISO_8859_6": "iso8859-6",
    "ISO_8859_7": "iso8859-7",
    "ISO_8859_8": "iso8859-8",
    "WIN866": "cp866",
    "WIN874": "cp874",
    "WIN1250": "cp1250",
    "WIN1251": "cp1251",
    "WIN1252": "cp1252",
    "WIN1253": "cp1253",
    "WIN1254": "cp1254",
    "WIN1255": "cp1255",
    "WIN1256": "cp1256",
    "WIN1257": "cp1257",
    "WIN1258": "cp1258",
    "KOI8R": "koi8-r",
    "KOI8U": "koi8-u",
    "EUC_JP": "euc-jp",
    "EUC_KR": "euc-kr",
    "EUC_CN": "gb2312",
}


class UnsupportedEncoding(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"client_encoding {name} is not supported by pgproxy; use UTF8 (or a single-byte/EUC encoding)"
        )
        self.name = name


def python_codec(client_encoding: str, server_encoding: str = "UTF8") -> str:
    """The codec to decode client text with; raises :class:`UnsupportedEncoding`."""
    name = _normalise(client_encoding)
    if name == "SQL_ASCII":
        # No conversion happens: the bytes are taken as the server encoding's.
        name = _normalise(server_encoding)
        if name == "SQL_ASCII":
            return "utf-8"
    codec = _CODECS.get(name)
    if codec is None:
        raise UnsupportedEncoding(client_encoding)
    codecs.lookup(codec)  # fails loudly here rather than on the first statement
    return codec


def _normalise(name: str) -> str:
    return name.strip().upper().replace("-", "_") if name else "UTF8"
