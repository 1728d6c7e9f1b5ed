"""Composition root: turns validated settings into a running proxy.

The only place concrete collaborators (token verifier, TLS contexts, listener) are built; lower
layers receive them ready-made. Also picks the event loop (uvloop when installed).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
from slack_sdk.web.async_client import AsyncWebClient

from pgproxy.approvals.directory import ApproverDirectory
from pgproxy.approvals.service import ApprovalService
from pgproxy.approvals.slack import SlackChannel
from pgproxy.approvals.slack_notifier import SlackNotifier, SocketModeService, vote_through
from pgproxy.approvals.slack_socket import SlackSocketRunner
from pgproxy.approvals.store import ApprovalStore
from pgproxy.audit.forward import build_forwarder
from pgproxy.audit.jsonl import JsonlAuditStore
from pgproxy.audit.postgres import PostgresAuditStore
from pgproxy.audit.review import AuditReader, JsonlAuditReader, PostgresAuditReader
from pgproxy.audit.service import AuditService, AuditTarget
from pgproxy.auth.demo_issuer import DemoIssuer, DemoLogin
from pgproxy.auth.oidc import JWKSUnavailable, OIDCConfig, TokenVerifier
from pgproxy.config import Settings
from pgproxy.masking.catalog import Catalogs
from pgproxy.policy.model import MaskStrategy
from pgproxy.policy.store import PolicyStore
from pgproxy.server.connection import MaskingSetup, ProxyContext, Verifier
from pgproxy.server.listener import ProxyServer, Service
from pgproxy.server.tls import client_facing_context
from pgproxy.web.app import build_web_app
from pgproxy.web.demo_login import demo_sign_in
from pgproxy.web.oidc_login import OIDCLogin
from pgproxy.web.server import WebServer
from pgproxy.web.slack_endpoint import add_slack_routes

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
    target = settings.upstream

    def estimate_connect(database: str) -> Awaitable[asyncpg.Connection]:
        """pgproxy's own login, for EXPLAIN-based estimates of held writes (see approvals/estimate.py)."""
        return asyncpg.connect(target, database=database)

    return ApprovalService(store, approve_at=settings.approve_at, estimate_connect=estimate_connect)


@dataclass(frozen=True, slots=True)
class SlackApprovals:
    """The Slack channel of approvals, the directory it names voters with, and the services keeping it going."""

    channel: SlackChannel
    directory: ApproverDirectory
    services: tuple[Service, ...]


def build_slack(settings: Settings, approvals: ApprovalService) -> SlackApprovals:
    """Post ``approvals``' requests to Slack and take votes from it (``settings.slack`` must be true).

    Raises ``DirectoryError`` when the approver directory does not load.
    """
    token, channel_id, directory_file = settings.slack_bot_token, settings.slack_channel, settings.approver_directory
    assert token is not None and channel_id is not None and directory_file is not None, "incomplete Slack settings"
    directory = ApproverDirectory(directory_file)
    # Socket Mode only: no URL takes signed requests, so the channel's secret is one nobody knows.
    signing = settings.slack_signing_secret
    secret = signing.get_secret_value() if signing is not None else secrets.token_hex(32)
    channel = SlackChannel(
        AsyncWebClient(token=token.get_secret_value(), base_url=settings.slack_api_url),
        channel_id=channel_id,
        signing_secret=secret,
        directory=directory,
        cast=vote_through(approvals),
        load=approvals.get,
    )
    notifier = SlackNotifier(channel, approvals)
    approvals.on_change(notifier.changed)
    services: list[Service] = [notifier]
    if settings.slack_app_token is not None:
        runner = SlackSocketRunner(channel, app_token=settings.slack_app_token.get_secret_value(),
                                   web_client=AsyncWebClient(base_url=settings.slack_api_url))
        services.append(SocketModeService(runner))
    log.info("approval requests go to Slack channel %s (%d people in %s)", channel_id, len(directory), directory_file)
    return SlackApprovals(channel, directory, tuple(services))


def build_server(
    settings: Settings,
    verifier: TokenVerifier | None = None,
    approvals: ApprovalService | None = None,
    demo_issuer: DemoIssuer | None = None,
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
        masking=build_masking(settings, policies),
    )
    host, port = settings.listen_address
    server = ProxyServer(context, host, port, max_connections=settings.max_connections)
    slack = build_slack(settings, approvals) if approvals is not None and settings.slack else None
    channel = slack.channel if slack is not None else None
    web = (build_web(settings, context.verifier, approvals, channel, demo_issuer)
           if settings.web_address is not None else None)
    if web is not None:
        server.services.append(web)
        if approvals is not None and settings.approvals_url is None:
            server.services.append(_ApproveAt(approvals, web))
    if context.masking is not None:
        server.services.append(_CatalogRefresh(context.masking.catalogs))
    server.on_reload(policies.reload)
    if settings.policy_poll_seconds > 0:
        server.every(settings.policy_poll_seconds, policies.reload_if_changed)
    if slack is not None:
        server.services.extend(slack.services)
        server.on_reload(slack.directory.reload)
        if settings.policy_poll_seconds > 0:
            server.every(settings.policy_poll_seconds, slack.directory.reload_if_changed)
    return server


def build_masking(settings: Settings, policies: PolicyStore) -> MaskingSetup:
    """Catalog readings through pgproxy's own login, and the key of the hash strategy."""
    target = settings.upstream

    def catalog_connect(database: str) -> Awaitable[asyncpg.Connection]:
        return asyncpg.connect(target, database=database)

    catalogs = Catalogs(catalog_connect, refresh_seconds=settings.mask_catalog_refresh_seconds)
    if settings.mask_key is not None:
        return MaskingSetup(catalogs, key=settings.mask_key.get_secret_value().encode())
    if any(mask.strategy is MaskStrategy.HASH for entry in policies.current.masks for mask in entry.columns.values()):
        log.warning("no mask_key is set: hashed columns use a random key, so hashes differ between pgproxy runs")
    return MaskingSetup(catalogs)


class _CatalogRefresh:
    """Reads every database's catalog again now and then, while the proxy runs."""

    def __init__(self, catalogs: Catalogs) -> None:
        self._catalogs = catalogs

    async def start(self) -> None:
        self._catalogs.start()

    async def stop(self) -> None:
        await self._catalogs.close()


class _ApproveAt:
    """Once the review page listens, tell waiting clients its real address (the port may have been 0)."""

    def __init__(self, approvals: ApprovalService, web: WebServer) -> None:
        self._approvals = approvals
        self._web = web

    async def start(self) -> None:
        self._approvals.approve_at = f"{self._web.url}/approvals"

    async def stop(self) -> None:
        return None


def build_web_sign_in(
    settings: Settings, verifier: Verifier, demo_issuer: DemoIssuer | None = None
) -> tuple[OIDCLogin | None, DemoLogin | None]:
    """How browsers sign in besides pasting a token: through the identity provider, or the demo issuer."""
    address = settings.web_address
    assert address is not None
    if demo_issuer is not None:
        scheme = "https" if settings.tls_cert is not None else "http"
        return demo_sign_in(demo_issuer, verifier, site=f"{scheme}://{address[0]}:{address[1]}",
                            cafile=settings.tls_cert)
    if settings.web_oidc_client_id is None or settings.web_oidc_redirect_uri is None:
        return None, None
    secret = settings.web_oidc_client_secret
    login = OIDCLogin(settings.oidc_issuer, settings.web_oidc_client_id,
                      None if secret is None else secret.get_secret_value(), settings.web_oidc_redirect_uri,
                      verifier, scopes=tuple(settings.web_oidc_scopes))
    return login, None


def build_web(
    settings: Settings,
    verifier: Verifier,
    approvals: ApprovalService | None = None,
    slack: SlackChannel | None = None,
    demo_issuer: DemoIssuer | None = None,
) -> WebServer:
    """The audit review page and API, reading the log pgproxy writes (the database if there is one).

    With ``slack`` and a signing secret, also Slack's interactivity endpoint (``POST /slack/interactions``).
    """
    reader_factory: Callable[[], AuditReader]
    dsn = settings.audit_review_dsn or settings.audit_dsn
    if dsn is not None:
        reader = PostgresAuditReader.connect(dsn, schema=settings.audit_schema)
        reader_factory = lambda: reader  # noqa: E731 -- the reader opens a connection per query
    else:
        assert settings.audit_jsonl is not None
        jsonl_reader = JsonlAuditReader([settings.audit_jsonl])
        reader_factory = lambda: jsonl_reader  # noqa: E731
    oidc_login, demo_login = build_web_sign_in(settings, verifier, demo_issuer)
    app = build_web_app(
        reader_factory=reader_factory,
        verifier=verifier,
        reviewer_groups=tuple(settings.audit_reviewers),
        secure_cookies=settings.tls_cert is not None,
        approvals=approvals,
        oidc_login=oidc_login,
        paste_login=settings.web_paste_login,
        demo_login=demo_login,
    )
    if slack is not None and settings.slack_signing_secret is not None:
        add_slack_routes(app, slack)
    address = settings.web_address
    assert address is not None
    return WebServer(app, host=address[0], port=address[1], certfile=settings.tls_cert, keyfile=settings.tls_key)


async def serve(
    settings: Settings, ready: Awaitable[None] | None = None, *, demo_issuer: DemoIssuer | None = None
) -> None:
    """Load policies, start listening and serve until SIGTERM/SIGINT (SIGHUP reloads policies).

    ``demo_issuer``: ``pgproxy demo`` only, the web pages sign people in through it.
    """
    verifier = build_verifier(settings)
    server = build_server(settings, verifier, demo_issuer=demo_issuer)
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
