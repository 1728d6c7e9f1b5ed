"""Forwarding durable audit records to a SIEM: one JSON line per record, on stdout or to syslog.

A forwarder is called with records already durable in the audit store (so a SIEM never sees a record
the log lacks), in chain order; each line is the record's exact JSON (``AuditRecord.to_json()``), so
the forwarded copy can be checked against the chain too. Syslog messages use facility ``local0``,
severity ``info``, tag ``pgproxy-audit``, over the local socket or UDP (RFC 3164 framing as Python's
``SysLogHandler`` writes it). Forwarding is best effort: it must not block or fail the proxy, and it
is never the record of truth.
"""

from __future__ import annotations

import logging
import logging.handlers
import socket
import sys
from collections.abc import Sequence
from typing import TextIO

from pgproxy.audit.record import AuditRecord

log = logging.getLogger(__name__)


class StreamForwarder:
    """JSON lines to a text stream (stdout by default), flushed per batch."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def __call__(self, records: Sequence[AuditRecord]) -> None:
        stream = self._stream or sys.stdout
        stream.write("".join(record.to_json() + "\n" for record in records))
        stream.flush()


class SyslogForwarder:
    """One syslog message per record, to a local socket path or ``HOST:PORT`` over UDP."""

    def __init__(self, address: str) -> None:
        host, sep, port = address.rpartition(":")
        udp = bool(sep) and port.isdigit() and not address.startswith("/")
        target: str | tuple[str, int] = (host.strip("[]"), int(port)) if udp else address
        self._handler = logging.handlers.SysLogHandler(
            address=target, facility=logging.handlers.SysLogHandler.LOG_LOCAL0, socktype=socket.SOCK_DGRAM
        )
        self._handler.ident = "pgproxy-audit: "
        self._handler.setFormatter(logging.Formatter("%(message)s"))

    def __call__(self, records: Sequence[AuditRecord]) -> None:
        for record in records:
            self._handler.emit(
                logging.LogRecord("pgproxy.audit", logging.INFO, __file__, 0, record.to_json(), None, None)
            )

    def close(self) -> None:
        self._handler.close()


def build_forwarder(kind: str, syslog_address: str) -> StreamForwarder | SyslogForwarder | None:
    """The forwarder a setting names (``none``, ``stdout``, ``syslog``)."""
    if kind == "stdout":
        return StreamForwarder()
    if kind == "syslog":
        return SyslogForwarder(syslog_address)
    return None
