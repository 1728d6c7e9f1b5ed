"""Composition root: turns validated settings into a running proxy.

The only place concrete collaborators (token verifier, TLS contexts, listener) are built; lower
layers receive them ready-made. Also picks the event loop (uvloop when installed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from pgproxy.approvals.service import ApprovalService
from pgproxy.approvals.store import ApprovalStore
from pgproxy.audit.forward import build_forwarder
from pgproxy.audit.jsonl import JsonlAuditStore
from pgproxy.audit.postgres import PostgresAuditStore
from pgproxy.audit.review import AuditReader, JsonlAuditReader, PostgresAuditReader
from pgproxy.audit.service import AuditService, AuditTarget
from pgproxy.auth.oidc import JWKSUnavailable, OIDCConfig, TokenVerifier
from pgproxy.config import Settings
from pgproxy.policy.store import PolicyStore
from pgproxy.server.connection import ProxyContext, Verifier
from pgproxy.server.listener import ProxyServer
from pgproxy.server.tls import client_facing_context
from pgproxy.web.app import build_web_app
from pgproxy.web.server import WebServer

T = TypeVar("T")
log = logging.getLogger("pgproxy")


def build_verifier(settings: Settings) -> TokenVerifier:
    return TokenVerifier(
        OIDCConfig(
            issuer=settings.oidc_issuer,
            audience=tuple(settings.oidc_audience),
            jwks=settings.oidc_jwks,
            algorithms=tuple(settings.oidc_algorithms),
            groups_claim=settings.groups_claim,
        )
    )


# How long one audit append may take before the store counts as failed (statements then fail closed).
AUDIT_APPEND_TIMEOUT_SECONDS = 10.0


def build_audit(settings: Settings) -> AuditService | None:
    """The audit service the settings name (its stores are opened when the server starts)."""
    targets = []
    if settings.audit_jsonl is not None:
        targets.append(AuditTarget(JsonlAuditStore(settings.audit_jsonl)))
    if settings.audit_dsn is not None:
        store = PostgresAuditStore(settings.audit_dsn, schema=settings.audit_schema,
                                   timeout=AUDIT_APPEND_TIMEOUT_SECONDS)
        targets.append(AuditTarget(store))
    if not targets:
        log.warning("running without an audit log (audit_disabled)")
        return None
    forward = build_forwarder(settings.audit_forward, settings.audit_syslog_address)
    return AuditService(targets, fail_open=settings.audit_fail_open, forward=forward)


def build_approvals(settings: Settings) -> ApprovalService:
    """The approval service: shared through PostgreSQL when a store DSN is set, else this process's memory."""
    dsn = settings.approvals_store_dsn
    store = ApprovalStore(dsn, schema=settings.audit_schema) if dsn is not None else None
    if store is None:
        log.warning("approval requests live in this process only (set approvals_dsn or audit_dsn to share them)")
    return ApprovalService(store, approve_at=settings.approve_at)


def build_server(
    settings: Settings, verifier: TokenVerifier | None = None, approvals: ApprovalService | None = None
) -> ProxyServer:
    """The proxy, ready to start. Raises ``PolicyLoadError`` when the policy directory is not valid."""
    policies = PolicyStore(settings.policies)
    if approvals is None and settings.approvals:
        approvals = build_approvals(settings)
    tls = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        tls = client_facing_context(str(settings.tls_cert), str(settings.tls_key))
    context = ProxyContext(
        upstream=settings.upstream_target,
        verifier=verifier or build_verifier(settings),
        policies=policies,
        tls=tls,
        allow_plaintext_loopback=settings.allow_plaintext_loopback,
        max_client_message=settings.max_message_bytes,
        startup_timeout=settings.startup_timeout_seconds,
        session_outlives_token=settings.session_outlives_token,
        audit=build_audit(settings),
        redact_literals=settings.audit_redact_literals,
        approvals=approvals,
    )
    host, port = settings.listen_address
    server = ProxyServer(context, host, port, max_connections=settings.max_connections)
    web = build_web(settings, context.verifier, approvals) if settings.web_address is not None else None
    if web is not None:
        server.services.append(web)
        if approvals is not None and settings.approvals_url is None:
            server.services.append(_ApproveAt(approvals, web))
    server.on_reload(policies.reload)
    if settings.policy_poll_seconds > 0:
        server.every(settings.policy_poll_seconds, policies.reload_if_changed)
    return server


class _ApproveAt:
    """Once the review page listens, tell waiting clients its real address (the port may have been 0)."""

    def __init__(self, approvals: ApprovalService, web: WebServer) -> None:
        self._approvals = approvals
        self._web = web

    async def start(self) -> None:
        self._approvals.approve_at = f"{self._web.url}/approvals"

    async def stop(self) -> None:
        return None


def build_web(settings: Settings, verifier: Verifier, approvals: ApprovalService | None = None) -> WebServer:
    """The audit review page and API, reading the log pgproxy writes (the database if there is one)."""
    reader_factory: Callable[[], AuditReader]
    dsn = settings.audit_review_dsn or settings.audit_dsn
    if dsn is not None:
        reader = PostgresAuditReader.connect(dsn, schema=settings.audit_schema)
        reader_factory = lambda: reader  # noqa: E731 -- the reader opens a connection per query
    else:
        assert settings.audit_jsonl is not None
        jsonl_reader = JsonlAuditReader([settings.audit_jsonl])
        reader_factory = lambda: jsonl_reader  # noqa: E731
    app = build_web_app(
        reader_factory=reader_factory,
        verifier=verifier,
        reviewer_groups=tuple(settings.audit_reviewers),
        secure_cookies=settings.tls_cert is not None,
        approvals=approvals,
    )
    address = settings.web_address
    assert address is not None
    return WebServer(app, host=address[0], port=address[1], certfile=settings.tls_cert, keyfile=settings.tls_key)


async def serve(settings: Settings, ready: Awaitable[None] | None = None) -> None:
    """Load policies, start listening and serve until SIGTERM/SIGINT (SIGHUP reloads policies)."""
    verifier = build_verifier(settings)
    server = build_server(settings, verifier)
    await warm_up_keys(verifier)
    await server.start()
    if ready is not None:
        await ready
    await server.run_until_signalled(settings.shutdown_grace_seconds)


async def warm_up_keys(verifier: TokenVerifier) -> None:
    """Fetch the signing keys before accepting clients, so a wrong issuer or JWKS shows at start.

    An unreachable identity provider is not fatal: pgproxy keeps refusing tokens (fail closed) and
    retries, rate-limited, as logins arrive.
    """
    try:
        await verifier.refresh_keys()
    except JWKSUnavailable as exc:
        log.warning("signing keys unavailable at start (%s); every login fails until they load", exc.reason)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when installed: the relay spends less CPU per message on it."""
    try:
        import uvloop  # noqa: PLC0415 -- optional dependency
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
