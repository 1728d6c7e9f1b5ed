"""The export formats of the audit log: JSONL (the stored lines) and CSV (a fixed column list).

JSONL: one ``AuditRecord.to_json()`` per line followed by ``\\n``, UTF-8 — byte for byte the lines the
JSONL store writes and the text the PostgreSQL store keeps, so an export of whole chains verifies with
``pgproxy audit verify`` like the log itself.

CSV (RFC 4180: comma-separated, ``"``-quoted when needed, CRLF line ends, UTF-8, one header row), one row
per record, the columns ``CSV_COLUMNS`` in that order — every field of a record, so nothing is lost
but the exact bytes (keep the JSONL export as the evidence that verifies). Empty cell: no value. Lists
(``groups``, ``relations``, ``approvers``) are joined with ``;``; numbers are written as in the JSON form.
Spreadsheet formula injection: a text cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return is prefixed with a single quote (``'``), so ``=HYPERLINK(…)`` in a statement is shown, never run.

Pure: encodes records it is given (async iterables are consumed without asyncio); it must not read a
store nor choose which records to export (``review`` and ``query`` do).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterable, AsyncIterator
from enum import StrEnum

from pgproxy.audit.record import AuditRecord


class ExportFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"

    @property
    def media_type(self) -> str:
        return "application/jsonl; charset=utf-8" if self is ExportFormat.JSONL else "text/csv; charset=utf-8"


CSV_COLUMNS = (
    "time",
    "kind",
    "record_id",
    "session_id",
    "client_address",
    "subject",
    "email",
    "groups",
    "issuer",
    "database",
    "upstream_role",
    "application_name",
    "login_user",
    "statement_index",
    "command",
    "category",
    "relations",
    "decision",
    "rule_id",
    "approval_id",
    "approvers",
    "fingerprint",
    "text",
    "intent_id",
    "command_tag",
    "rows",
    "sqlstate",
    "error_message",
    "duration_ms",
    "reason",
    "chain_id",
    "seq",
    "prev_hash",
    "hash",
    "version",
)

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_CHUNK = 64 * 1024


def csv_cell(value: object) -> str:
    """One field as CSV cell text (before CSV quoting), neutralized against formula injection."""
    if value is None:
        return ""
    if isinstance(value, tuple):
        text = ";".join(value)
    elif isinstance(value, StrEnum):
        text = value.value
    elif isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    elif isinstance(value, int):
        return str(value)
    else:
        text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def csv_row(record: AuditRecord) -> list[str]:
    return [csv_cell(getattr(record, column)) for column in CSV_COLUMNS]


def jsonl_line(record: AuditRecord) -> str:
    return record.to_json() + "\n"


async def encode(records: AsyncIterable[AuditRecord], fmt: ExportFormat) -> AsyncIterator[bytes]:
    """``records`` in ``fmt`` as UTF-8 chunks of about 64 KiB (CSV starts with its header row).

    Yields as it goes: memory holds one chunk, whatever the number of records.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    if fmt is ExportFormat.CSV:
        writer.writerow(CSV_COLUMNS)
    async for record in records:
        if fmt is ExportFormat.CSV:
            writer.writerow(csv_row(record))
        else:
            buffer.write(jsonl_line(record))
        if buffer.tell() >= _CHUNK:
            yield buffer.getvalue().encode("utf-8")
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode("utf-8")
