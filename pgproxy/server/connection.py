"""One client connection from its first byte to its last: negotiate, authenticate, dial, relay.

The startup phase runs as one task per connection (TLS, the OIDC token as password, upstream
login); once the session is established the ``Relay`` takes over through protocol callbacks and
the task ends. Every refusal reaches the client as an ErrorResponse with a SQLSTATE and a reason
it can act on; the token itself is never logged or echoed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pgproxy.approvals.service import ApprovalService, PendingApproval, Requester
from pgproxy.audit.jsonl import AuditStoreUnavailable
from pgproxy.audit.service import AuditService
from pgproxy.auth.identity import Identity
from pgproxy.auth.oidc import TokenRejected
from pgproxy.dsn import UpstreamTarget
from pgproxy.gate.encoding import UnsupportedEncoding, python_codec
from pgproxy.gate.holds import Hold
from pgproxy.gate.judge import PolicySource
from pgproxy.gate.masking import GateMasking
from pgproxy.gate.reading import GateFatal
from pgproxy.gate.session import SessionGate
from pgproxy.masking.catalog import Catalogs, CatalogUnavailable
from pgproxy.masking.registry import PlannerRegistry
from pgproxy.policy.engine import SessionProfile, session_profile
from pgproxy.server.admission import is_loopback, row_limits, upstream_session_settings
from pgproxy.server.cancel import CancelRegistry, UpstreamKey
from pgproxy.server.endpoint import ConnectionClosed, Endpoint
from pgproxy.server.relay import Relay
from pgproxy.server.session_records import SessionRecords, client_address
from pgproxy.server.upstream import open_upstream, send_cancel
from pgproxy.session import client as hs
from pgproxy.session.params import ClientStartup, StartupRefused, stamped_application_name, vet_startup
from pgproxy.session.upstream import UpstreamLoginError
from pgproxy.sql.classify import Classifier
from pgproxy.wire import backend as be
from pgproxy.wire.errors import ProtocolError
from pgproxy.wire.frontend import StartupMessage

log = logging.getLogger(__name__)


def _token_expired_error() -> be.ErrorResponse:
    return be.ErrorResponse.build("FATAL", "28000", "OIDC token expired; reconnect with a fresh token")


# How long an expired session may take to reach an idle moment before it is ended anyway.
TOKEN_EXPIRY_GRACE_SECONDS = 5.0


class Verifier(Protocol):
    async def verify(self, token: str) -> Identity: ...


@dataclass(slots=True)
class ProxyContext:
    """What every connection needs; built once by the composition root."""

    upstream: UpstreamTarget
    verifier: Verifier
    policies: PolicySource
    tls: ssl.SSLContext | None
    allow_plaintext_loopback: bool
    max_client_message: int
    startup_timeout: float = 60.0  # PostgreSQL's authentication_timeout default
    session_outlives_token: bool = False
    cancels: CancelRegistry = field(default_factory=CancelRegistry)
    classifier: Classifier = field(default_factory=Classifier)  # shared: its cache serves every session
    audit: AuditService | None = None  # None: no audit log (only when explicitly configured so)
    redact_literals: bool = False  # audit records show statements with constants replaced by $n
    approvals: ApprovalService | None = None  # None: statements needing approval are refused, not held
    masking: MaskingSetup | None = None  # None: no column is masked (no policy names one)


@dataclass(frozen=True, slots=True)
class MaskingSetup:
    """What column masking shares across sessions: catalog readings, planners, the hash key."""

    catalogs: Catalogs
    registry: PlannerRegistry = field(default_factory=PlannerRegistry)
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))


class Refusal(Exception):
    """End the startup phase with this error to the client."""

    def __init__(self, sqlstate: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.error = be.ErrorResponse.build("FATAL", sqlstate, message, hint=hint)


class ClientConnection:
    """The lifecycle of one client connection."""

    def __init__(
        self, context: ProxyContext, on_done: Callable[[ClientConnection], None], *, over_limit: bool = False
    ) -> None:
        self.context = context
        self.over_limit = over_limit
        self.endpoint = Endpoint(self._connected)
        self.relay: Relay | None = None
        self.identity: Identity | None = None
        self.startup: ClientStartup | None = None
        self.peer: object = None
        self._on_done = on_done
        self._task: asyncio.Task[None] | None = None
        self._cancel_id: int | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._handshake = hs.ClientHandshake()
        self._done = False
        self.records = SessionRecords(context.audit)

    def _connected(self, endpoint: Endpoint) -> None:
        assert endpoint.transport is not None
        self.peer = endpoint.transport.get_extra_info("peername")
        self.records.peer = self.peer
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            async with asyncio.timeout(self.context.startup_timeout):
                established = await self._startup_phase()
            if established is not None:
                await established()
                return
        except Refusal as refusal:
            log.info("refused connection from %s: %s", self.peer, refusal.error.message)
            self.records.refused(self.startup, self.identity, refusal.error)
            self.endpoint.write(refusal.error.encode())
        except ProtocolError as exc:
            log.info("protocol error from %s: %s", self.peer, exc.message)
            self.endpoint.write(be.ErrorResponse.build("FATAL", exc.sqlstate, exc.message).encode())
        except TimeoutError:
            self.endpoint.write(
                be.ErrorResponse.build("FATAL", "08006", "timeout expired during connection startup").encode()
            )
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            self.endpoint.write(be.ErrorResponse.build("FATAL", "57P01", "pgproxy is shutting down").encode())
            self.endpoint.close()
            self._finished()
            raise
        except Exception:
            log.exception("unexpected error during startup of a connection from %s", self.peer)
            self.endpoint.write(be.ErrorResponse.build("FATAL", "XX000", "internal error in pgproxy").encode())
        self.endpoint.close()
        self._finished()

    async def _startup_phase(self) -> Callable[[], Awaitable[None]] | None:
        """Run the handshake; return the step that establishes the session, or None when done."""
        handshake = self._handshake
        while True:
            event = handshake.next_event()
            if event is None:
                handshake.receive_data(await self.endpoint.read())
            elif isinstance(event, hs.TLSRequested):
                await self._answer_tls()
            elif isinstance(event, hs.GSSEncryptionRequested):
                self.endpoint.write(handshake.answer_gss())
            elif isinstance(event, hs.CancelRequested):
                await self._cancel(event)
                return None
            elif isinstance(event, hs.StartupReceived):
                self._accept_startup(event.message)
            else:
                identity = await self._verify(event.password)
                return lambda: self._establish(identity)

    async def _answer_tls(self) -> None:
        accept = self.context.tls is not None
        self.endpoint.write(self._handshake.answer_tls(accept))
        if not accept:
            return
        assert self.endpoint.transport is not None and self.context.tls is not None
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                self.endpoint.transport, self.endpoint, self.context.tls, server_side=True
            )
        except (ssl.SSLError, OSError) as exc:
            raise ConnectionClosed(f"TLS handshake failed: {exc}") from exc
        if transport is None:
            raise ConnectionClosed("TLS handshake failed")
        self.endpoint.upgrade(transport)
        self._handshake.tls_established()

    def _accept_startup(self, message: StartupMessage) -> None:
        if not self._handshake.tls_active and not (
            self.context.allow_plaintext_loopback and is_loopback(self.peer)
        ):
            reason = "pgproxy requires TLS" if self.context.tls else "pgproxy accepts no connection from here"
            raise Refusal(
                "28000",
                f"{reason}: unencrypted connections are only allowed from loopback when configured",
                hint="connect with sslmode=require" if self.context.tls else None,
            )
        if self.over_limit:
            log.warning("refused a connection from %s: --max-connections reached", self.peer)
            raise Refusal("53300", "sorry, too many clients already (pgproxy --max-connections)")
        negotiation = self._handshake.negotiation_needed(message)
        if negotiation is not None:
            self.endpoint.write(negotiation)
        try:
            self.startup = vet_startup(message.parameters)
        except StartupRefused as exc:
            raise Refusal(exc.sqlstate, exc.message) from exc
        self.endpoint.write(self._handshake.request_password())

    async def _verify(self, token: str) -> Identity:
        try:
            identity = await self.context.verifier.verify(token.strip())
        except TokenRejected as exc:
            assert self.startup is not None
            log.info("token rejected for user %r from %s: %s", self.startup.user, self.peer, exc.reason)
            raise Refusal(
                "28P01",
                f"OIDC token rejected: {exc.reason}",
                hint="send a current OIDC token from your identity provider as the password",
            ) from exc
        self.identity = identity
        return identity

    async def _establish(self, identity: Identity) -> None:
        startup = self.startup
        assert startup is not None
        target = self.context.upstream
        profile = self._admit(identity, startup)
        settings = (
            *startup.settings,
            ("application_name", stamped_application_name(identity.display, startup.application_name)),
            *upstream_session_settings(profile),
        )
        try:
            upstream = await open_upstream(target, database=startup.database, settings=settings)
        except UpstreamLoginError as exc:
            if exc.error is not None and not (exc.error.sqlstate or "").startswith("28"):
                # e.g. 3D000 database does not exist: the client's own mistake, shown as the server said it.
                raise Refusal(exc.error.sqlstate or "08006", exc.message) from exc
            log.error("upstream login to %s failed: %s", target.describe(), exc.message)
            raise Refusal("08006", "pgproxy could not log in to the database server") from exc
        except (OSError, TimeoutError) as exc:
            log.error("cannot reach upstream %s: %s", target.describe(), exc)
            raise Refusal("08006", "pgproxy could not connect to the database server") from exc
        except ConnectionClosed as exc:
            log.error("upstream %s closed the connection during login", target.describe())
            raise Refusal("08006", "the database server closed the connection during login") from exc
        except ProtocolError as exc:
            log.error("upstream %s sent an invalid message during login: %s", target.describe(), exc.message)
            raise Refusal("08P01", "pgproxy received an invalid message from the database server") from exc
        try:
            gate = self._gate(identity, startup, profile, upstream.login.parameter_statuses)
        except UnsupportedEncoding as exc:
            upstream.endpoint.close()
            raise Refusal("0A000", str(exc)) from exc
        except GateFatal as exc:
            upstream.endpoint.close()
            raise Refusal(exc.sqlstate, exc.message) from exc
        if self.context.masking is not None and profile.masks:
            try:  # read the catalog now rather than at the first statement (shared by later sessions)
                await self.context.masking.catalogs.ready(startup.database)
            except CatalogUnavailable as exc:
                log.warning("%s; statements reading tables will be refused until it can be read", exc)
        try:
            await self.records.started(startup, identity, profile.upstream_role)
        except AuditStoreUnavailable as exc:
            upstream.endpoint.close()
            raise Refusal("58000", "pgproxy cannot write its audit log, so it admits no session now") from exc
        key = upstream.login.backend_key
        cancel_id, cancel_secret = (0, b"\x00\x00\x00\x00")
        if key is not None:
            cancel_id, cancel_secret = self.context.cancels.register(
                UpstreamKey(target, key.process_id, key.secret_key, on_cancel=self._cancel_hold)
            )
            self._cancel_id = cancel_id
        greeting = [be.AuthenticationOk().encode()]
        greeting += [status.encode() for status in upstream.login.parameter_statuses]
        greeting += [notice.encode() for notice in upstream.login.notices]
        greeting.append(be.BackendKeyData(cancel_id, cancel_secret).encode())
        greeting.append(be.ReadyForQuery("I").encode())
        self.endpoint.write(b"".join(greeting))
        log.info(
            "session established: %s (%s) from %s to database %r",
            identity.display, identity.subject, self.peer, startup.database,
        )
        self.relay = Relay(
            self.endpoint,
            upstream.endpoint,
            max_client_message=self.context.max_client_message,
            on_finished=self._finished,
            gate=gate,
            audit=self.context.audit,
            approvals=self._approvals(identity, startup, profile),
            load_catalog=self.context.masking.catalogs.ready if self.context.masking is not None else None,
        )
        self._schedule_expiry(identity)
        self.relay.start(b"", upstream.leftover)

    def _admit(self, identity: Identity, startup: ClientStartup) -> SessionProfile:
        """The session's policy profile; a caller no rule lets into this database is refused here."""
        profile = session_profile(self.context.policies.current, identity, startup.database)
        if profile is None:
            log.info("no policy rule admits %s to database %r", identity.display, startup.database)
            raise Refusal(
                "28000",
                f'pgproxy: no policy rule grants {identity.display} access to database "{startup.database}"',
                hint="ask the database owners to add a policy rule for you, or connect to a database you may use",
            )
        return profile

    def _gate(
        self, identity: Identity, startup: ClientStartup, profile: SessionProfile,
        statuses: Sequence[be.ParameterStatus],
    ) -> SessionGate:
        reported = {status.name: status.value for status in statuses}
        return SessionGate(
            classifier=self.context.classifier,
            policies=self.context.policies,
            identity=identity,
            database=startup.database,
            read_only=profile.read_only,
            client_encoding=reported.get("client_encoding", "UTF8"),
            server_encoding=reported.get("server_encoding", "UTF8"),
            standard_conforming_strings=reported.get("standard_conforming_strings", "off"),
            limits=row_limits(profile),
            trail=self.records.trail(identity, startup, profile.upstream_role, self.context.redact_literals),
            holding=self.context.approvals is not None,
            masking=self._masking(identity, startup, reported),
        )

    def _masking(self, identity: Identity, startup: ClientStartup, reported: Mapping[str, str]) -> GateMasking | None:
        setup = self.context.masking
        if setup is None:
            return None
        return GateMasking(
            policies=self.context.policies,
            identity=identity,
            database=startup.database,
            catalogs=setup.catalogs,
            registry=setup.registry,
            key=setup.key,
            login_role=self.context.upstream.user,
            codec=python_codec(reported.get("client_encoding", "UTF8"), reported.get("server_encoding", "UTF8")),
        )

    def _approvals(
        self, identity: Identity, startup: ClientStartup, profile: SessionProfile
    ) -> Callable[[Hold], PendingApproval] | None:
        service = self.context.approvals
        if service is None:
            return None
        requester = Requester(identity, startup.database, client_address(self.peer), startup.application_name,
                              profile.upstream_role, self.records.session_id)
        return_now = startup.approval_mode == "return"
        return lambda hold: service.request(hold, requester, return_now=return_now)


    def _schedule_expiry(self, identity: Identity) -> None:
        if self.context.session_outlives_token or identity.expires_at is None:
            return
        delay = identity.expires_at - time.time()
        self._expiry = asyncio.get_running_loop().call_later(max(0.0, delay), self._token_expired)

    def _token_expired(self) -> None:
        if self.relay is not None:
            # A client that always pipelines its next statement is never idle: after a short grace
            # the session ends regardless, so a token's lifetime bounds the session's.
            self._expiry = asyncio.get_running_loop().call_later(TOKEN_EXPIRY_GRACE_SECONDS, self._end_expired)
            log.info("token of %s expired; ending its session", self.identity.display if self.identity else "?")
            self.relay.end_when_idle(_token_expired_error())

    def _end_expired(self) -> None:
        if self.relay is not None:
            self.relay.end_now(_token_expired_error())

    def _cancel_hold(self) -> None:
        if self.relay is not None:
            self.relay.cancel_hold()

    async def _cancel(self, event: hs.CancelRequested) -> None:
        upstream = self.context.cancels.resolve(event.process_id, event.secret_key)
        if upstream is None:
            log.info("ignored a cancel request with an unknown key from %s", self.peer)
            return
        if upstream.on_cancel is not None:
            upstream.on_cancel()  # a statement held for approval is pgproxy's to cancel
        try:
            await send_cancel(upstream.target, upstream.process_id, upstream.secret_key)
        except (OSError, TimeoutError, UpstreamLoginError, ConnectionClosed) as exc:
            log.warning("could not forward a cancel request upstream: %s", exc)

    def shutdown(self, grace: bool) -> None:
        """Stop this connection: at its next idle moment (grace) or now."""
        error = be.ErrorResponse.build("FATAL", "57P01", "terminating connection: pgproxy is shutting down")
        if self.relay is not None:
            if grace:
                self.relay.end_when_idle(error, let_transaction_finish=True)
            else:
                self.relay.end_now(error)
        elif self._task is not None and not self._task.done():
            self._task.cancel()

    def _finished(self) -> None:
        if self._done:
            return
        self._done = True
        self.records.ended(self.relay.end_reason if self.relay is not None else None)
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._cancel_id is not None:
            self.context.cancels.unregister(self._cancel_id)
            self._cancel_id = None
        self._on_done(self)
