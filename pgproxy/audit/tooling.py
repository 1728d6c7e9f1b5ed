"""`pgproxy audit …` commands that work on a stored log: verify JSONL files; search, show and export.

Reads logs (through ``jsonl`` and ``review``) and returns report text with an exit code — 0 found/ok,
1 broken (verify) or nothing found (search, show), 2 a usage error or a log that cannot be read;
printing and argument parsing stay in ``pgproxy.cli``. An export streams to the file it is given.
It never writes to a log.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import asyncpg

from pgproxy.audit import display
from pgproxy.audit.chain import ChainHead
from pgproxy.audit.export import ExportFormat, encode
from pgproxy.audit.jsonl import AuditLogCorrupt, read_records
from pgproxy.audit.postgres import AuditTableCorrupt, PostgresAuditStore
from pgproxy.audit.query import Detail, RecordFilter
from pgproxy.audit.record import AuditRecord, InvalidRecord, RecordKind
from pgproxy.audit.review import AuditReader, AuditSourceError, JsonlAuditReader, PostgresAuditReader
from pgproxy.audit.verify import verify
from pgproxy.reporting import Report

_ANCHOR = re.compile(r"^(?P<chain>[0-9A-Za-z_.:-]{1,128}):(?P<seq>[0-9]+):(?P<hash>[0-9a-f]{64})$")


def parse_anchor(text: str) -> ChainHead:
    """``CHAIN:SEQ:HASH`` (a chain head published elsewhere) → ChainHead; ValueError when malformed."""
    found = _ANCHOR.match(text.strip())
    if found is None:
        raise ValueError(f"anchor {text!r} is not CHAIN:SEQ:HASH (64 lower-case hex digits)")
    return ChainHead(found["chain"], int(found["seq"]), found["hash"])


def verify_files(paths: Sequence[Path], anchors: Sequence[ChainHead] = ()) -> Report:
    """Verify every chain in the given JSONL files; exit 0 when intact, 1 when broken or unreadable.

    Each chain's records must be in one file in order (one writer per file). A chain head given as an
    anchor also proves that nothing was cut from the end of that chain.
    """
    lines: list[str] = []
    records: list[AuditRecord] = []
    unreadable = False
    for path in paths:
        try:
            records.extend(read_records(path))
        except FileNotFoundError:
            lines.append(f"{path}: no such file")
            unreadable = True
        except (AuditLogCorrupt, InvalidRecord) as exc:
            lines.append(f"{path}: unreadable record: {exc}")
            unreadable = True
    return _verified(records, anchors, lines, unreadable=unreadable)


async def verify_database(dsn: str, schema: str, anchors: Sequence[ChainHead] = ()) -> Report:
    """Verify every chain in a PostgreSQL audit store (read in chain order, as stored, with SELECT only)."""
    store = PostgresAuditStore(dsn, schema=schema)
    lines: list[str] = []
    try:
        records = await store.fetch()
    except AuditTableCorrupt as exc:
        return Report(f"{schema}.audit_log: unreadable record: {exc}", 1)
    except (OSError, asyncpg.PostgresError) as exc:
        return Report(f"cannot read the audit database: {exc}", 2)
    return _verified(records, anchors, lines, unreadable=False)


def _verified(
    records: list[AuditRecord], anchors: Sequence[ChainHead], lines: list[str], *, unreadable: bool
) -> Report:
    report = verify(records, {anchor.chain_id: anchor for anchor in anchors})
    lines.extend(report.summary().splitlines())
    for chain in report.chains:
        if chain.head is not None and chain.broken is None:
            lines.append(f"anchor for later checks: {chain.head.chain_id}:{chain.head.seq}:{chain.head.hash}")
    return Report("\n".join(lines), 1 if unreadable or not report.ok else 0)


# -- review: search, show, export --------------------------------------------------------------------------

ENV_DSN, ENV_JSONL, ENV_SCHEMA = "PGPROXY_AUDIT_DSN", "PGPROXY_AUDIT_JSONL", "PGPROXY_AUDIT_SCHEMA"


def open_reader(
    jsonl: Sequence[Path], dsn: str | None, schema: str | None, environ: Mapping[str, str]
) -> AuditReader:
    """The reader for ``--jsonl FILE…`` or ``--dsn DSN``, else ``PGPROXY_AUDIT_DSN``, else ``PGPROXY_AUDIT_JSONL``.

    Raises ``ValueError`` (a usage error) when both or neither are given.
    """
    if jsonl and dsn:
        raise ValueError("give --jsonl FILE or --dsn DSN, not both")
    if not jsonl and not dsn:
        dsn = environ.get(ENV_DSN) or None
        if dsn is None and environ.get(ENV_JSONL):
            jsonl = [Path(environ[ENV_JSONL])]
    if jsonl:
        return JsonlAuditReader(jsonl)
    if dsn is None:
        raise ValueError(f"no audit log: give --jsonl FILE or --dsn DSN (or set {ENV_DSN} or {ENV_JSONL})")
    return PostgresAuditReader.connect(dsn, schema=schema or environ.get(ENV_SCHEMA) or "pgproxy")


async def search(
    reader: AuditReader,
    flt: RecordFilter,
    *,
    limit: int,
    newest_first: bool = True,
    as_json: bool = False,
    text_width: int = 60,
) -> Report:
    """Matching entries as a table (or JSON lines); exit 0 when any was found, 1 when none."""
    try:
        entries = await reader.search(flt, limit=limit, newest_first=newest_first)
    except AuditSourceError as exc:
        return Report(f"pgproxy: {exc}", 2)
    if not entries:
        return Report("" if as_json else "no matching audit records", 1)
    if as_json:
        return Report("\n".join(display.entry_json(entry) for entry in entries), 0)
    text = display.table(entries, text_width=text_width)
    if len(entries) == limit:
        text += f"\n(the first {limit}: there may be more; narrow the filters or raise --limit)"
    return Report(text, 0)


async def show(reader: AuditReader, ident: str, *, as_json: bool = False) -> Report:
    """A record (with its outcomes, statement and session) or a session's entries; exit 1 when not found."""
    try:
        detail = await reader.show(ident)
    except AuditSourceError as exc:
        return Report(f"pgproxy: {exc}", 2)
    if detail is None:
        return Report(f"no audit record or session with id {display.safe(ident)!r}", 1)
    if as_json:
        return Report(_detail_json(detail), 0)
    return Report(_detail_text(detail), 0)


def _detail_text(detail: Detail) -> str:
    if detail.record is None:
        more = "\n(more records in this session: use search --session)" if detail.truncated else ""
        return display.table(detail.session, text_width=100) + more
    parts = [display.describe(detail.record)]
    for outcome in detail.outcomes:
        parts.append("outcome:\n" + display.describe(outcome, indent="  "))
    if detail.record.kind is RecordKind.STATEMENT and not detail.outcomes:
        parts.append("outcome: none recorded (still running, or cut off)")
    if detail.intent is not None:
        parts.append("statement:\n" + display.describe(detail.intent, indent="  "))
    for entry in detail.session:
        parts.append(f"{entry.record.kind.value}:\n" + display.describe(entry.record, indent="  "))
    return "\n".join(parts)


def _detail_json(detail: Detail) -> str:
    def optional(record: AuditRecord | None) -> str:
        return "null" if record is None else record.to_json()

    outcomes = ",".join(record.to_json() for record in detail.outcomes)
    session = ",".join(display.entry_json(entry) for entry in detail.session)
    return (
        f'{{"record":{optional(detail.record)},"outcomes":[{outcomes}],"intent":{optional(detail.intent)},'
        f'"session":[{session}],"truncated":{"true" if detail.truncated else "false"}}}'
    )


async def export(reader: AuditReader, flt: RecordFilter, fmt: ExportFormat, out: BinaryIO) -> Report:
    """Write the export to ``out`` as it is read; the report (for stderr) counts the records."""
    count = 0

    async def counted() -> AsyncIterator[AuditRecord]:
        nonlocal count
        async for record in reader.export(flt):
            count += 1
            yield record

    try:
        async for chunk in encode(counted(), fmt):
            out.write(chunk)
    except AuditSourceError as exc:
        return Report(f"pgproxy: {exc} (the export stopped after {count} records and is incomplete)", 2)
    out.flush()
    whole = " (the whole log: its chains verify with `pgproxy audit verify`)" if flt.is_empty else ""
    return Report(f"exported {count} audit records as {fmt.value}{whole}", 0)


async def export_to(
    reader: AuditReader, flt: RecordFilter, fmt: str, output: Path | None, stdout: BinaryIO
) -> Report:
    """:func:`export` to ``output`` (created or truncated, mode 0600 when created) or to ``stdout``."""
    if output is None:
        return await export(reader, flt, ExportFormat(fmt), stdout)
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        return Report(f"pgproxy: cannot write {output}: {exc.strerror}", 2)
    with os.fdopen(fd, "wb") as file:
        return await export(reader, flt, ExportFormat(fmt), file)
