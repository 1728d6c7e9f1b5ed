"""Errors raised by the wire codec.

Every malformed input the codec sees is reported as a ``ProtocolError`` (or a subclass): callers can
catch exactly one exception type and answer with an ErrorResponse carrying ``sqlstate``. This module
must not import anything but the standard library.
"""

from __future__ import annotations

# SQLSTATE codes the codec reports; named after PostgreSQL's own condition names.
PROTOCOL_VIOLATION = "08P01"
PROGRAM_LIMIT_EXCEEDED = "54000"
FEATURE_NOT_SUPPORTED = "0A000"


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid protocol 3.0 message in the current context."""

    def __init__(self, message: str, sqlstate: str = PROTOCOL_VIOLATION) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate


class MessageTooLarge(ProtocolError):
    """A length prefix announced a message larger than the configured limit."""

    def __init__(self, announced: int, limit: int) -> None:
        super().__init__(
            f"message of {announced} bytes exceeds the limit of {limit} bytes", PROGRAM_LIMIT_EXCEEDED
        )
        self.announced = announced
        self.limit = limit
