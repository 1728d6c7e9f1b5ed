"""Sans-IO login of pgproxy to PostgreSQL with pgproxy's own credentials.

Feed it the backend messages the server sends during the startup phase; it returns the bytes to
send back (startup packet, password, SCRAM exchange) and collects what the client must later see
(ParameterStatus values) and what pgproxy keeps to itself (the upstream BackendKeyData). Supports
trust, cleartext (only over an encrypted or local channel), md5 and SCRAM-SHA-256. It never opens
sockets; ``pgproxy.server.upstream`` drives it.
"""

from __future__ import annotations

import enum
import hashlib

import scramp

from pgproxy.wire import backend as be
from pgproxy.wire import frontend as fe

SCRAM_MECHANISM = "SCRAM-SHA-256"


class UpstreamLoginError(Exception):
    """The server refused the login, or asked for something pgproxy will not do."""

    def __init__(self, message: str, error: be.ErrorResponse | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.error = error


class LoginState(enum.Enum):
    AUTHENTICATING = "authenticating"
    STARTING = "starting"  # authenticated; receiving ParameterStatus / BackendKeyData
    READY = "ready"


class UpstreamLogin:
    """One login attempt. ``startup_bytes()`` first, then ``receive(msg)`` until ``state is READY``."""

    def __init__(
        self,
        *,
        user: str,
        password: str | None,
        database: str,
        settings: tuple[tuple[str, str], ...] = (),
        channel_secure: bool,
    ) -> None:
        self.user = user
        self._password = password
        self.database = database
        self.settings = settings
        self.channel_secure = channel_secure
        self.state = LoginState.AUTHENTICATING
        self.parameter_statuses: list[be.ParameterStatus] = []
        self.notices: list[be.NoticeResponse] = []
        self.backend_key: be.BackendKeyData | None = None
        self._scram: scramp.ScramClient | None = None
        self._scram_pending_final = False

    def startup_bytes(self) -> bytes:
        parameters = (("user", self.user), ("database", self.database), *self.settings)
        return fe.StartupMessage(3, 0, parameters).encode()

    def receive(self, message: be.BackendMessage) -> bytes | None:
        """Advance on one server message; return bytes to send, if any."""
        if isinstance(message, be.ErrorResponse):
            raise UpstreamLoginError(message.message or "upstream refused the login", message)
        if isinstance(message, be.NoticeResponse):
            self.notices.append(message)
            return None
        if self.state is LoginState.AUTHENTICATING:
            return self._authenticate(message)
        if self.state is LoginState.STARTING:
            self._starting(message)
            return None
        raise UpstreamLoginError(f"unexpected {type(message).__name__} after login completed")

    def _require_password(self, method: str) -> str:
        if self._password is None:
            raise UpstreamLoginError(f"upstream asks for {method} authentication but no password is configured")
        return self._password

    def _authenticate(self, message: be.BackendMessage) -> bytes | None:
        if isinstance(message, be.AuthenticationOk):
            if self._scram is not None and self._scram_pending_final:
                raise UpstreamLoginError("upstream skipped the SCRAM server signature")
            self.state = LoginState.STARTING
            return None
        if isinstance(message, be.AuthenticationCleartextPassword):
            if not self.channel_secure:
                raise UpstreamLoginError(
                    "upstream asks for a cleartext password over an unencrypted TCP connection; "
                    "use sslmode=require or SCRAM"
                )
            return fe.PasswordMessage(self._require_password("password").encode()).encode()
        if isinstance(message, be.AuthenticationMD5Password):
            password = self._require_password("md5")
            inner = hashlib.md5((password + self.user).encode(), usedforsecurity=False).hexdigest()
            outer = hashlib.md5(inner.encode() + message.salt, usedforsecurity=False).hexdigest()
            return fe.PasswordMessage(b"md5" + outer.encode()).encode()
        if isinstance(message, be.AuthenticationSASL):
            if SCRAM_MECHANISM not in message.mechanisms:
                raise UpstreamLoginError(f"upstream offers no supported SASL mechanism: {message.mechanisms}")
            self._scram = scramp.ScramClient([SCRAM_MECHANISM], self.user, self._require_password("SCRAM"))
            self._scram_pending_final = True
            first = self._scram.get_client_first().encode()
            return fe.SASLInitialResponse(SCRAM_MECHANISM, first).encode()
        if isinstance(message, be.AuthenticationSASLContinue) and self._scram is not None:
            try:
                self._scram.set_server_first(message.data.decode())
                final = self._scram.get_client_final().encode()
            except (scramp.ScramException, UnicodeDecodeError) as exc:
                raise UpstreamLoginError(f"SCRAM exchange failed: {exc}") from exc
            return fe.SASLResponse(final).encode()
        if isinstance(message, be.AuthenticationSASLFinal) and self._scram is not None:
            try:
                self._scram.set_server_final(message.data.decode())
            except (scramp.ScramException, UnicodeDecodeError) as exc:
                raise UpstreamLoginError(f"upstream failed SCRAM server verification: {exc}") from exc
            self._scram_pending_final = False
            return None
        raise UpstreamLoginError(f"unsupported upstream authentication request {type(message).__name__}")

    def _starting(self, message: be.BackendMessage) -> None:
        if isinstance(message, be.ParameterStatus):
            self.parameter_statuses.append(message)
        elif isinstance(message, be.BackendKeyData):
            self.backend_key = message
        elif isinstance(message, be.ReadyForQuery):
            self.state = LoginState.READY
        elif isinstance(message, be.NegotiateProtocolVersion):
            # We always ask for plain 3.0 without extensions; the server may still list options.
            return
        else:
            raise UpstreamLoginError(f"unexpected {type(message).__name__} during upstream startup")
