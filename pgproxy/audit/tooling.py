"""`pgproxy audit …` commands that work on a stored log: verification of JSONL audit files.

Reads files (through ``jsonl``) and returns report text with an exit code; printing and argument
parsing stay in ``pgproxy.cli``. It never writes to a log.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pgproxy.audit.chain import ChainHead
from pgproxy.audit.jsonl import AuditLogCorrupt, read_records
from pgproxy.audit.record import AuditRecord, InvalidRecord
from pgproxy.audit.verify import verify

_ANCHOR = re.compile(r"^(?P<chain>[0-9A-Za-z_.:-]{1,128}):(?P<seq>[0-9]+):(?P<hash>[0-9a-f]{64})$")


@dataclass(frozen=True, slots=True)
class Report:
    text: str
    exit_code: int


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
    report = verify(records, {anchor.chain_id: anchor for anchor in anchors})
    lines.extend(report.summary().splitlines())
    for chain in report.chains:
        if chain.head is not None and chain.broken is None:
            lines.append(f"anchor for later checks: {chain.head.chain_id}:{chain.head.seq}:{chain.head.hash}")
    return Report("\n".join(lines), 1 if unreadable or not report.ok else 0)
