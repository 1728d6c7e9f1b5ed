"""Who is connecting: OIDC token verification and the resulting :class:`~pgproxy.auth.identity.Identity`.

``identity`` is pure (stdlib only); ``oidc`` does the I/O (JWKS over HTTPS or from a file) and the
cryptography through python-jose; ``demo_issuer`` is a local signing key for ``pgproxy demo`` and
``pgproxy token``.
"""
