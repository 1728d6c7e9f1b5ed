"""Dial PostgreSQL as pgproxy: TCP or Unix socket, TLS per sslmode, then the login exchange.

Drives the sans-IO ``UpstreamLogin`` over an ``Endpoint``; also sends CancelRequests. It never
reads client traffic and never decides policy.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pgproxy.dsn import UpstreamTarget
from pgproxy.server.endpoint import ConnectionClosed, Endpoint
from pgproxy.server.tls import tls_required, upstream_context
from pgproxy.session.upstream import LoginState, UpstreamLogin, UpstreamLoginError
from pgproxy.wire import backend as be
from pgproxy.wire import frontend as fe
from pgproxy.wire.errors import ProtocolError
from pgproxy.wire.framing import MessageFramer


@dataclass(slots=True)
class UpstreamSession:
    """A logged-in upstream connection, ready for the relay."""

    endpoint: Endpoint
    login: UpstreamLogin
    leftover: bytes  # bytes after ReadyForQuery that the relay must process first


async def _connect(target: UpstreamTarget) -> tuple[Endpoint, bool]:
    """Open the socket and negotiate TLS; return the endpoint and whether the channel is secure."""
    loop = asyncio.get_running_loop()
    if target.is_unix_socket:
        _, endpoint = await loop.create_unix_connection(Endpoint, target.unix_socket_path)
        return endpoint, True
    _, endpoint = await loop.create_connection(Endpoint, target.host, target.port)
    context = upstream_context(target)
    if context is None:
        return endpoint, False
    endpoint.write(fe.SSLRequest().encode())
    answer = await endpoint.read()
    if answer[:1] == b"S":
        if len(answer) > 1:
            endpoint.abort()
            raise UpstreamLoginError("upstream sent unencrypted data after accepting SSL")
        assert endpoint.transport is not None
        hostname = target.host if context.check_hostname else None
        tls_transport = await loop.start_tls(endpoint.transport, endpoint, context, server_hostname=hostname)
        assert tls_transport is not None
        endpoint.upgrade(tls_transport)
        return endpoint, True
    if answer[:1] == b"N" and len(answer) == 1 and not tls_required(target):
        return endpoint, False
    endpoint.abort()
    raise UpstreamLoginError(f"upstream {target.describe()} does not accept TLS (sslmode={target.sslmode})")


async def open_upstream(
    target: UpstreamTarget, *, database: str, settings: tuple[tuple[str, str], ...]
) -> UpstreamSession:
    """Connect and log in; raises UpstreamLoginError (server refusal) or OSError/TimeoutError."""
    async with asyncio.timeout(target.connect_timeout):
        endpoint, secure = await _connect(target)
        try:
            login = UpstreamLogin(
                user=target.user,
                password=target.password,
                database=database,
                settings=settings,
                channel_secure=secure,
            )
            endpoint.write(login.startup_bytes())
            framer = MessageFramer()
            while True:
                complete, frames = framer.feed(await endpoint.read())
                for kind, start, end in frames:
                    message = be.decode_backend(kind, complete[start:end])
                    reply = login.receive(message)
                    if reply is not None:
                        endpoint.write(reply)
                    if login.state is LoginState.READY:
                        rest = complete[end:]
                        return UpstreamSession(endpoint, login, rest + framer.take_pending())
        except (UpstreamLoginError, ProtocolError, ConnectionClosed, asyncio.CancelledError, TimeoutError):
            endpoint.abort()
            raise


async def send_cancel(target: UpstreamTarget, process_id: int, secret_key: bytes) -> None:
    """Deliver a CancelRequest for an upstream backend; the server answers by closing."""
    async with asyncio.timeout(target.connect_timeout):
        endpoint, _ = await _connect(target)
        try:
            endpoint.write(fe.CancelRequest(process_id, secret_key).encode())
            while True:
                await endpoint.read()
        except ConnectionClosed:
            pass
        finally:
            endpoint.close()


__all__ = ["LoginState", "UpstreamSession", "open_upstream", "send_cancel"]
