"""TLS contexts: toward clients (pgproxy's certificate) and toward upstream (libpq sslmode semantics).

Only builds ``ssl.SSLContext`` objects; connecting and handshaking happen in the callers.
"""

from __future__ import annotations

import ssl

from pgproxy.dsn import UpstreamTarget


def client_facing_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """Server-side context for clients that send SSLRequest."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    # PostgreSQL 17's direct TLS negotiation uses this ALPN name; harmless for older clients.
    context.set_alpn_protocols(["postgresql"])
    return context


def upstream_context(target: UpstreamTarget) -> ssl.SSLContext | None:
    """Client-side context for ``target.sslmode``; None when TLS is not to be attempted."""
    # libpq's "allow" tries plaintext first; pgproxy does the same but does not retry with TLS when
    # the server refuses plaintext (use prefer or require for such servers).
    if target.sslmode in ("disable", "allow") or target.is_unix_socket:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if target.sslmode in ("verify-ca", "verify-full"):
        if target.sslrootcert and target.sslrootcert != "system":
            context.load_verify_locations(target.sslrootcert)
        else:
            context.load_default_certs()
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = target.sslmode == "verify-full"
    else:
        # prefer / require encrypt without authenticating the server, as libpq does.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if target.sslcert:
        context.load_cert_chain(target.sslcert, target.sslkey)
    return context


def tls_required(target: UpstreamTarget) -> bool:
    """Whether a server that answers 'N' to SSLRequest must be refused."""
    return target.sslmode in ("require", "verify-ca", "verify-full") and not target.is_unix_socket
