"""Row limits of a session: how many rows one statement may return, and one COPY … TO STDOUT.

The gate counts DataRow and CopyData messages from the server per statement (a portal fetched in
several Execute batches counts as one statement) and reports the first message over the limit. The
caller then ends the session: rows already relayed cannot be recalled, and any quieter reaction
(dropping the rest, cancelling upstream) would race the server or leave the client and the server
disagreeing about which requests ran. Pure counting, no I/O.
"""

from __future__ import annotations

_DATA_ROW, _COPY_DATA = 0x44, 0x64  # 'D', 'd'
_RESULT_ENDS = frozenset(b"CEZ")  # CommandComplete, ErrorResponse, ReadyForQuery
COUNTED = frozenset(b"DdCEZ")


class LimitExceeded(Exception):
    """The server sent more rows than the session may receive; ``allowed`` bytes may still be relayed."""

    def __init__(self, allowed: bytes, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.allowed = allowed
        self.sqlstate = sqlstate
        self.message = message


class RowLimits:
    __slots__ = ("_copied", "_rows", "max_export_rows", "max_rows", "source")

    def __init__(self, max_rows: int | None, max_export_rows: int | None, source: str) -> None:
        self.max_rows = max_rows
        self.max_export_rows = max_export_rows
        self.source = source  # the policy entry that set the limits, for the error message
        self._rows = 0
        self._copied = 0

    @property
    def active(self) -> bool:
        return self.max_rows is not None or self.max_export_rows is not None

    def over(self, kind: int) -> str | None:
        """Count one server message; the reason when it goes over a limit, else None."""
        if kind == _DATA_ROW:
            self._rows += 1
            if self.max_rows is not None and self._rows > self.max_rows:
                return f"the statement returned more than {self.max_rows} rows (max_rows of {self.source})"
        elif kind == _COPY_DATA:
            self._copied += 1
            if self.max_export_rows is not None and self._copied > self.max_export_rows:
                return f"the export returned more than {self.max_export_rows} rows (max_export_rows of {self.source})"
        elif kind in _RESULT_ENDS:
            self._rows = 0
            self._copied = 0
        return None
