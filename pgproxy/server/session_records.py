"""The audit records of a session's life: its start, its end, and a login refused along the way.

A session's start record is durable before the client is told it is in (fail closed: when the audit
store cannot take it, the login is refused); its end and refused logins are written without waiting.
A refused login records who tried as far as pgproxy knows: the user name and database of the startup
packet, the client's address and, once the token was verified, its identity — never the token.
The statements in between are the gate's trail (``pgproxy.gate.trail``), built here with the same
session facts. No sockets: the caller passes what it knows.
"""

from __future__ import annotations

import secrets
from typing import Any

from pgproxy.audit.jsonl import AuditStoreUnavailable
from pgproxy.audit.record import AuditRecord, RecordKind, utc_timestamp
from pgproxy.audit.service import AuditService
from pgproxy.auth.identity import Identity
from pgproxy.gate.trail import AuditTrail, SessionFacts
from pgproxy.session.params import ClientStartup
from pgproxy.wire import backend as be


def client_address(peer: object) -> str:
    """``host:port`` of a TCP peer (``[v6]:port``), or ``local`` for a Unix socket."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return "local"


class SessionRecords:
    """Session-level audit records of one client connection (does nothing without an audit service)."""

    def __init__(self, audit: AuditService | None) -> None:
        self.audit = audit
        self.session_id = secrets.token_hex(8)
        self.peer: object = None
        self._upstream_role: str | None = None
        self._started = False
        self._startup: ClientStartup | None = None
        self._identity: Identity | None = None

    def trail(
        self, identity: Identity, startup: ClientStartup, upstream_role: str | None, redact_literals: bool
    ) -> AuditTrail | None:
        """The statement trail of this session, or None when nothing is audited."""
        if self.audit is None:
            return None
        facts = SessionFacts(self.session_id, client_address(self.peer), identity, startup.database,
                             upstream_role, startup.application_name)
        return AuditTrail(facts, redact_literals=redact_literals)

    async def started(self, startup: ClientStartup, identity: Identity, upstream_role: str | None) -> None:
        """Write the start record and wait until it is durable; ``AuditStoreUnavailable`` when it cannot be."""
        audit = self.audit
        if audit is None:
            return
        self._upstream_role = upstream_role
        record = AuditRecord(kind=RecordKind.SESSION_START, time=utc_timestamp(), **self._facts(startup, identity))
        if audit.healthy:
            try:
                await audit.enqueue([record])
            except AuditStoreUnavailable:
                if not audit.fail_open:
                    raise
        elif audit.fail_open:
            audit.record([record])
        else:
            raise AuditStoreUnavailable("the audit log cannot take records")
        self._started = True
        self._startup, self._identity = startup, identity

    def refused(self, startup: ClientStartup | None, identity: Identity | None, error: be.ErrorResponse) -> None:
        if self.audit is None or startup is None:
            return  # before the startup packet nobody has said who they are
        self.audit.record([AuditRecord(
            kind=RecordKind.AUTH_FAILURE, time=utc_timestamp(), sqlstate=error.sqlstate or None,
            reason=error.message, **self._facts(startup, identity),
        )])

    def ended(self, reason: str | None) -> None:
        if self.audit is None or not self._started or self._startup is None:
            return
        self.audit.record([AuditRecord(
            kind=RecordKind.SESSION_END, time=utc_timestamp(), reason=reason or "the connection closed",
            **self._facts(self._startup, self._identity),
        )])

    def _facts(self, startup: ClientStartup, identity: Identity | None) -> dict[str, Any]:
        facts: dict[str, Any] = {
            "session_id": self.session_id,
            "client_address": client_address(self.peer),
            "database": startup.database,
            "login_user": startup.user,
            "application_name": startup.application_name,
            "upstream_role": self._upstream_role,
        }
        if identity is not None:
            facts.update(subject=identity.subject, email=identity.email, groups=identity.groups,
                         issuer=identity.issuer)
        return facts
