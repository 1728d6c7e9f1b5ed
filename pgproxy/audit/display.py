"""How audit entries read for people on a terminal, and as JSON lines: for ``pgproxy audit search|show``.

Record values are attacker-controlled (statement text, application names, error messages), so
everything printed to a terminal goes through :func:`safe`: C0/C1 control characters, DEL and the
Unicode bidirectional overrides are shown as ``\\x1b``/``\\u202e`` escapes, never sent raw (no escape
sequence from a log can move the cursor, recolour or hide text). The JSON forms keep the exact values
(JSON escapes control characters itself).

Pure: builds strings, prints nothing, reads nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import fields

from pgproxy.audit.query import Entry
from pgproxy.audit.record import AuditRecord, RecordKind

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
_SPACES = re.compile(r"[\t\n\r\v\f ]+")
_FIELDS = tuple(item.name for item in fields(AuditRecord) if item.init)
_HEADERS = ("TIME", "IDENTITY", "DATABASE", "DECISION", "RULE", "WHAT", "OUTCOME", "TEXT")
_MAX_COLUMN = 32


def safe(text: str) -> str:
    """``text`` with every control or direction-changing character written as an escape."""
    return _UNSAFE.sub(lambda found: _escape(found[0]), text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def one_line(text: str, width: int) -> str:
    """``text`` on one line (runs of whitespace become a space), made :func:`safe`, cut to ``width``."""
    flat = safe(_SPACES.sub(" ", text).strip())
    return flat if len(flat) <= width else flat[: max(width - 1, 0)] + "…"


def identity_of(record: AuditRecord) -> str:
    """Who: the email, else the subject, else the startup user name of a failed login."""
    return record.email or record.subject or (f"({record.login_user})" if record.login_user else "")


def outcome_summary(outcomes: Sequence[AuditRecord]) -> str:
    """``SELECT 3``, ``ERROR 42501``, ``rows 12`` … for a statement's outcomes (``; ``-joined)."""
    parts = []
    for outcome in outcomes:
        words = [outcome.command_tag or ""]
        if outcome.sqlstate:
            words.append(f"ERROR {outcome.sqlstate}")
        if outcome.rows is not None and not outcome.command_tag:
            words.append(f"rows {outcome.rows}")
        parts.append(" ".join(word for word in words if word) or "done")
    return "; ".join(parts)


def what(record: AuditRecord) -> str:
    """The command and category of a statement (``DELETE/write``), else the record kind."""
    if record.kind is RecordKind.STATEMENT:
        return "/".join(part for part in (record.command, record.category) if part)
    return record.kind.value


def summary_text(record: AuditRecord) -> str:
    """The text column: the statement text, or what a session or auth record says."""
    if record.kind is RecordKind.STATEMENT:
        return record.text or ""
    if record.kind is RecordKind.OUTCOME:
        return record.error_message or f"outcome of {record.intent_id}"
    details = (record.reason, record.client_address, record.application_name and f"app {record.application_name}")
    return " ".join(detail for detail in details if detail)


def short_time(time: str) -> str:
    """``2024-05-01T12:00:00.123456Z`` → ``2024-05-01 12:00:00.123`` (UTC)."""
    return time[:10] + " " + time[11:23]


def table(entries: Sequence[Entry], *, text_width: int = 60) -> str:
    """A fixed-width table, one line per entry, columns as ``_HEADERS``; ``text_width`` cuts the text."""
    rows = [
        (
            short_time(entry.record.time),
            identity_of(entry.record),
            entry.record.database or "",
            "" if entry.record.decision is None else entry.record.decision.value,
            entry.record.rule_id or "",
            what(entry.record),
            outcome_summary(entry.outcomes) if entry.record.kind is RecordKind.STATEMENT else "",
            summary_text(entry.record),
        )
        for entry in entries
    ]
    cells = [[one_line(value, _MAX_COLUMN) for value in row[:-1]] + [one_line(row[-1], text_width)] for row in rows]
    widths = [max([len(header)] + [len(row[index]) for row in cells]) for index, header in enumerate(_HEADERS)]
    lines = [_HEADERS, *cells]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def describe(record: AuditRecord, *, indent: str = "") -> str:
    """Every set field of ``record``, one ``name: value`` line each (lists ``;``-joined), made safe."""
    lines = []
    for name in _FIELDS:
        value = getattr(record, name)
        if value is None or value in ((), ""):
            continue
        shown = "; ".join(value) if isinstance(value, tuple) else str(value)
        lines.append(f"{indent}{name}: {safe(shown)}")
    return "\n".join(lines)


def entry_json(entry: Entry) -> str:
    """One JSON line: ``{"record": <stored record JSON>, "outcomes": [<outcome record JSON>, …]}``."""
    outcomes = ",".join(outcome.to_json() for outcome in entry.outcomes)
    return f'{{"record":{entry.record.to_json()},"outcomes":[{outcomes}]}}'
