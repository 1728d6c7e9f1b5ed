"""Sans-IO startup phase of a client connecting to pgproxy.

The handshake turns the client's first bytes into events — TLS wanted, GSS wanted, a cancel
request, the startup packet, the password — and produces the bytes to answer with. The driver
(``pgproxy.server.connection``) decides policy (accept TLS? plaintext allowed? is the token good?)
and performs the I/O. It must not verify tokens or open sockets itself.

Security note: bytes that arrive after an SSLRequest but before the TLS handshake are refused
(the buffer-injection class of CVE-2021-23214), since they were sent in the clear.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pgproxy.wire import backend as be
from pgproxy.wire import frontend as fe
from pgproxy.wire.errors import ProtocolError
from pgproxy.wire.framing import MessageFramer, StartupFramer

# OIDC tokens with many group claims reach several KB; nothing legitimate needs more.
MAX_PASSWORD_MESSAGE = 64 * 1024
PASSWORD_MESSAGE = ord("p")
PROTOCOL_3_0 = 3 << 16  # the only version pgproxy speaks; newer minors are negotiated down


class Phase(enum.Enum):
    NEGOTIATING = "negotiating"  # SSLRequest / GSSENCRequest / StartupMessage / CancelRequest expected
    TLS_PENDING = "tls_pending"  # answered 'S'; waiting for the driver to finish the TLS handshake
    STARTED = "started"  # startup packet received; the driver decides what to ask
    AWAITING_PASSWORD = "awaiting_password"  # noqa: S105 -- a state name, not a secret
    DONE = "done"


@dataclass(frozen=True, slots=True)
class TLSRequested:
    pass


@dataclass(frozen=True, slots=True)
class GSSEncryptionRequested:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequested:
    process_id: int
    secret_key: bytes


@dataclass(frozen=True, slots=True)
class StartupReceived:
    message: fe.StartupMessage


@dataclass(frozen=True, slots=True)
class PasswordReceived:
    password: str


HandshakeEvent = TLSRequested | GSSEncryptionRequested | CancelRequested | StartupReceived | PasswordReceived


class ClientHandshake:
    """Events in, answer bytes out, for one client connection's startup phase."""

    def __init__(self) -> None:
        self.phase = Phase.NEGOTIATING
        self.tls_active = False
        self._startup = StartupFramer()
        self._typed = MessageFramer(MAX_PASSWORD_MESSAGE)
        self._tls_asked = False
        self._gss_asked = False
        self._typed_data: list[bytes] = []

    def receive_data(self, data: bytes) -> None:
        if self.phase in (Phase.AWAITING_PASSWORD, Phase.DONE):
            self._typed_data.append(data)
        else:
            self._startup.feed(data)

    def next_event(self) -> HandshakeEvent | None:
        """The next event, or None when more bytes are needed. Raises ProtocolError on bad input."""
        if self.phase is Phase.NEGOTIATING:
            payload = self._startup.next_packet()
            return None if payload is None else self._negotiate(fe.decode_startup(payload))
        if self.phase is Phase.AWAITING_PASSWORD:
            return self._password()
        return None

    def _negotiate(
        self, packet: fe.StartupMessage | fe.SSLRequest | fe.GSSENCRequest | fe.CancelRequest
    ) -> HandshakeEvent:
        if isinstance(packet, fe.SSLRequest):
            if self._tls_asked or self.tls_active:
                raise ProtocolError("duplicate SSLRequest")
            self._tls_asked = True
            self.phase = Phase.TLS_PENDING
            return TLSRequested()
        if isinstance(packet, fe.GSSENCRequest):
            if self._gss_asked or self.tls_active:
                raise ProtocolError("unexpected GSSENCRequest")
            self._gss_asked = True
            return GSSEncryptionRequested()
        if isinstance(packet, fe.CancelRequest):
            self.phase = Phase.DONE
            return CancelRequested(packet.process_id, packet.secret_key)
        self.phase = Phase.STARTED
        return StartupReceived(packet)

    def answer_tls(self, accept: bool) -> bytes:
        """The one-byte answer to an SSLRequest. After b"S" call ``tls_established`` once TLS is up."""
        if self.phase is not Phase.TLS_PENDING:
            raise ProtocolError("no SSLRequest to answer")
        if accept and self._startup.take_rest():
            raise ProtocolError("received unencrypted data after SSL request")
        if not accept:
            self.phase = Phase.NEGOTIATING
        return b"S" if accept else b"N"

    def tls_established(self) -> None:
        self.tls_active = True
        self.phase = Phase.NEGOTIATING

    @staticmethod
    def answer_gss() -> bytes:
        return b"N"

    def request_password(self) -> bytes:
        """Ask for a cleartext password (the OIDC token); later bytes are typed messages."""
        if self.phase is not Phase.STARTED:
            raise ProtocolError("password requested before the startup packet")
        self.phase = Phase.AWAITING_PASSWORD
        self._typed_data = [self._startup.take_rest()]
        return be.AuthenticationCleartextPassword().encode()

    def _password(self) -> PasswordReceived | None:
        data = b"".join(self._typed_data)
        self._typed_data = []
        complete, frames = self._typed.feed(data)
        if not frames:
            return None
        kind, start, end = frames[0]
        if kind != PASSWORD_MESSAGE:
            raise ProtocolError(f"expected a password message, received message type {chr(kind)!r}")
        if len(frames) > 1 or end != len(complete) or self._typed.buffered:
            # A client must wait for AuthenticationOk before sending anything else.
            raise ProtocolError("unexpected data after the password message")
        message = fe.decode_frontend(kind, complete[start:end])
        if not isinstance(message, fe.PasswordMessage):
            raise ProtocolError("expected a password message")
        try:
            password = message.password.decode()
        except UnicodeDecodeError as exc:
            raise ProtocolError("password is not valid UTF-8") from exc
        self.phase = Phase.DONE
        return PasswordReceived(password)

    @staticmethod
    def negotiation_needed(message: fe.StartupMessage) -> bytes | None:
        """NegotiateProtocolVersion bytes when the client asked for a newer minor or _pq_ options."""
        options = tuple(name for name, _ in message.parameters if name.startswith("_pq_."))
        if message.protocol_minor == 0 and not options:
            return None
        return be.NegotiateProtocolVersion(PROTOCOL_3_0, options).encode()
