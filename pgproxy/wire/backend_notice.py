"""ErrorResponse ('E') and NoticeResponse ('N'): a list of (one-character field code, text) pairs.

Fields keep the order and the codes the server sent, unknown codes included (the protocol tells clients
to ignore codes they do not know, so a proxy should pass them on). ``build`` is how the proxy makes its
own errors and notices. Pure codec: no I/O, standard library only. Re-exported by ``pgproxy.wire.backend``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from pgproxy.wire.codec import Payload, Reader, cstring, frame

SEVERITY = "S"
SEVERITY_NONLOCALIZED = "V"
SQLSTATE = "C"
MESSAGE = "M"
DETAIL = "D"
HINT = "H"

# Keyword names accepted by ``build`` for the optional fields, mapped to their wire codes.
FIELD_CODES: dict[str, str] = {
    "position": "P",
    "internal_position": "p",
    "internal_query": "q",
    "where": "W",
    "schema_name": "s",
    "table_name": "t",
    "column_name": "c",
    "data_type_name": "d",
    "constraint_name": "n",
    "file": "F",
    "line": "L",
    "routine": "R",
}


@dataclass(frozen=True, slots=True)
class _NoticeBase:
    fields: tuple[tuple[str, str], ...]

    def get(self, code: str) -> str | None:
        """The value of field ``code`` (first occurrence), or None when absent."""
        for key, value in self.fields:
            if key == code:
                return value
        return None

    @property
    def severity(self) -> str:
        """Non-localized severity (ERROR, FATAL, PANIC, WARNING, NOTICE, ...) when sent, else localized."""
        return self.get(SEVERITY_NONLOCALIZED) or self.get(SEVERITY) or ""

    @property
    def sqlstate(self) -> str:
        return self.get(SQLSTATE) or ""

    @property
    def message(self) -> str:
        return self.get(MESSAGE) or ""

    @property
    def detail(self) -> str | None:
        return self.get(DETAIL)

    @property
    def hint(self) -> str | None:
        return self.get(HINT)

    @classmethod
    def build(
        cls,
        severity: str,
        sqlstate: str,
        message: str,
        *,
        detail: str | None = None,
        hint: str | None = None,
        **others: str,
    ) -> Self:
        """Make a message the way the server would: S and V both set to ``severity``.

        ``others`` takes the names in ``FIELD_CODES`` (``position="12"``, ``table_name=...``) or a
        one-character wire code for fields this module has no name for.
        """
        fields = [
            (SEVERITY, severity),
            (SEVERITY_NONLOCALIZED, severity),
            (SQLSTATE, sqlstate),
            (MESSAGE, message),
        ]
        if detail is not None:
            fields.append((DETAIL, detail))
        if hint is not None:
            fields.append((HINT, hint))
        for name, value in others.items():
            code = FIELD_CODES.get(name)
            if code is None:
                if len(name) != 1 or name in "SVCMDH":
                    raise TypeError(f"unknown notice field {name!r}")
                code = name
            fields.append((code, value))
        return cls(tuple(fields))

    def _encode_fields(self) -> bytes:
        parts = []
        for code, value in self.fields:
            raw = code.encode("latin-1")
            if len(raw) != 1 or raw == b"\x00":
                raise ValueError(f"field code must be one non-NUL byte, not {code!r}")
            parts.append(raw + cstring(value))
        parts.append(b"\x00")
        return b"".join(parts)


@dataclass(frozen=True, slots=True)
class ErrorResponse(_NoticeBase):
    type_code: ClassVar[bytes] = b"E"

    def encode(self) -> bytes:
        return frame(b"E", self._encode_fields())


@dataclass(frozen=True, slots=True)
class NoticeResponse(_NoticeBase):
    type_code: ClassVar[bytes] = b"N"

    def encode(self) -> bytes:
        return frame(b"N", self._encode_fields())


def _read_fields(r: Reader) -> tuple[tuple[str, str], ...]:
    fields: list[tuple[str, str]] = []
    while code := r.read_byte():
        # latin-1 maps every byte to one character, so unknown codes round-trip exactly.
        fields.append((chr(code), r.read_cstring()))
    r.expect_end()
    return tuple(fields)


def decode_error_response(payload: Payload) -> ErrorResponse:
    return ErrorResponse(_read_fields(Reader(payload, "ErrorResponse")))


def decode_notice_response(payload: Payload) -> NoticeResponse:
    return NoticeResponse(_read_fields(Reader(payload, "NoticeResponse")))
