"""Session lifecycle through pgproxy: graceful shutdown, token expiry, and backpressure."""

from __future__ import annotations

import concurrent.futures
import socket
import ssl
import time
from collections.abc import Callable

import psycopg
import pytest

from pgproxy.server.connection import ClientConnection
from pgproxy.wire import backend as be
from pgproxy.wire import frontend as fe
from pgproxy.wire.framing import MessageFramer
from tests.support.pg_plugin import RealPostgres
from tests.support.proxy_plugin import ProxyFactory, RunningProxy

pytestmark = pytest.mark.integration


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(0.05)


def test_graceful_shutdown_finishes_in_flight_statements(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory()
    idle = psycopg.connect(proxy.conninfo(), autocommit=True)
    busy = psycopg.connect(proxy.conninfo(), autocommit=True)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(lambda: busy.execute("SELECT pg_sleep(1.5), 'finished'").fetchone())
        wait_until(lambda: any(c.relay is not None and not c.relay.idle for c in proxy.server.connections))
        shutdown = proxy.call_soon(lambda: __import__("asyncio").ensure_future(proxy.server.shutdown(30)))
        # The in-flight statement completes with its result even though shutdown has begun.
        assert running.result(timeout=30) == ("", "finished")
    wait_until(shutdown.done)
    with pytest.raises(psycopg.OperationalError):  # the idle session was ended ...
        idle.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):  # ... and no new connection is accepted
        psycopg.connect(proxy.conninfo(), connect_timeout=3)
    idle.close()
    busy.close()


def test_graceful_shutdown_grace_period_ends_long_statements(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory()
    busy = psycopg.connect(proxy.conninfo(), autocommit=True)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(lambda: busy.execute("SELECT pg_sleep(60)").fetchone())
        wait_until(lambda: any(c.relay is not None and not c.relay.idle for c in proxy.server.connections))
        proxy.call(proxy.server.shutdown(0.5))
        with pytest.raises(psycopg.OperationalError, match="shutting down"):
            running.result(timeout=30)
    busy.close()


def test_session_ends_when_its_token_expires(proxy: RunningProxy) -> None:
    token = proxy.idp.mint("short-lived", expires_in=2)
    with psycopg.connect(proxy.conninfo(token), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError, match="token expired"):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                conn.execute("SELECT 1")
                time.sleep(0.2)


def test_session_outlives_token_when_configured(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(session_outlives_token=True)
    token = proxy.idp.mint("long-session", expires_in=1)
    with psycopg.connect(proxy.conninfo(token), autocommit=True) as conn:
        time.sleep(1.5)
        assert conn.execute("SELECT 'still here'").fetchone() == ("still here",)


def _raw_login(proxy: RunningProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.sendall(fe.SSLRequest().encode())
    assert sock.recv(1) == b"S"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_socket(sock)
    tls.sendall(fe.StartupMessage(3, 0, (("user", "slow"), ("database", "pgproxy_test"))).encode())
    framer = MessageFramer()
    password_sent = False
    while True:
        complete, frames = framer.feed(tls.recv(65536))
        for frame in frames:
            message = be.decode_backend(frame[0], complete[frame[1] : frame[2]])
            if isinstance(message, be.AuthenticationCleartextPassword) and not password_sent:
                tls.sendall(fe.PasswordMessage(proxy.idp.mint("slow-reader").encode()).encode())
                password_sent = True
            elif isinstance(message, be.ReadyForQuery):
                return tls
            elif isinstance(message, be.ErrorResponse):
                raise AssertionError(message.message)


def test_slow_client_backpressure_bounds_proxy_memory(proxy: RunningProxy, postgres: RealPostgres) -> None:
    """A client that stops reading must stop pgproxy reading upstream, not make it buffer the result."""
    rows, width = 100_000, 1000  # ~100 MB of result: far above any buffer pgproxy should hold
    tls = _raw_login(proxy)
    tls.sendall(fe.Query(f"SELECT repeat('x', {width}) FROM generate_series(1, {rows})").encode())

    def slow_session() -> ClientConnection | None:
        return next((c for c in proxy.server.connections if c.identity and c.identity.subject == "slow-reader"), None)

    def upstream_paused() -> bool:
        session = slow_session()
        if session is None or session.relay is None or session.relay.upstream.transport is None:
            return False
        return not session.relay.upstream.transport.is_reading()

    wait_until(upstream_paused)
    time.sleep(0.5)  # give a non-pausing relay the chance to keep buffering

    def client_buffer() -> int:
        session = slow_session()
        assert session is not None and session.endpoint.transport is not None
        return session.endpoint.transport.get_write_buffer_size()

    buffered = proxy.call_soon(client_buffer)
    assert buffered < 8 * 1024 * 1024, f"pgproxy buffered {buffered} bytes for a slow client"
    # Now read everything: all rows arrive, in order, and the session is still healthy.
    framer, data_rows = MessageFramer(), 0
    done = False
    while not done:
        _, frames = framer.feed(tls.recv(1 << 20))
        for frame in frames:
            if frame[0] == ord("D"):
                data_rows += 1
            elif frame[0] == ord("Z"):
                done = True
    assert data_rows == rows
    tls.close()


def test_connections_over_the_limit_are_refused_and_others_keep_working(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(max_connections=2)
    first = psycopg.connect(proxy.conninfo(), autocommit=True)
    second = psycopg.connect(proxy.conninfo(), autocommit=True)
    with pytest.raises(psycopg.OperationalError, match="too many clients"):
        psycopg.connect(proxy.conninfo())
    assert first.execute("SELECT 1").fetchone() == (1,)
    second.close()
    wait_until(lambda: proxy.call_soon(lambda: len(proxy.server.connections)) < 2)
    with psycopg.connect(proxy.conninfo(), autocommit=True) as third:
        assert third.execute("SELECT 2").fetchone() == (2,)
    first.close()
