"""A local token issuer for ``pgproxy demo`` and ``pgproxy token``: no IdP needed to try pgproxy.

It keeps an RSA-2048 signing key (``demo-issuer-key.pem``, PKCS#8 PEM, mode 0600) and its public
``jwks.json`` in one directory, and mints RS256 JWTs. The key id is the key's RFC 7638 thumbprint, so it is
stable for as long as the key file lives.

The issuer is the fixed identifier :data:`DEMO_ISSUER` (``https://pgproxy-demo.invalid``). It is never
fetched: ``.invalid`` is reserved (RFC 2606) and cannot resolve, and verifiers read ``jwks.json`` from
disk (see :meth:`DemoIssuer.oidc_config`). Anyone who can read the key file can mint any identity: this is
for demos and tests, never for production.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwt

from pgproxy.auth.oidc import OIDCConfig

__all__ = ["DEMO_AUDIENCE", "DEMO_ISSUER", "DemoIssuer"]

DEMO_ISSUER = "https://pgproxy-demo.invalid"
DEMO_AUDIENCE = "pgproxy"
KEY_FILE = "demo-issuer-key.pem"
JWKS_FILE = "jwks.json"


class DemoIssuer:
    """Signs demo tokens. Build it with :meth:`load_or_create`."""

    def __init__(self, private_key: rsa.RSAPrivateKey, directory: Path) -> None:
        self._directory = directory
        self._pem = private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii")
        numbers = private_key.public_key().public_numbers()
        public = {"e": _b64_uint(numbers.e), "kty": "RSA", "n": _b64_uint(numbers.n)}
        thumbprint = hashlib.sha256(json.dumps(public, sort_keys=True, separators=(",", ":")).encode())
        self._kid = base64.urlsafe_b64encode(thumbprint.digest()).rstrip(b"=").decode("ascii")
        self._jwk: dict[str, Any] = {**public, "use": "sig", "alg": "RS256", "kid": self._kid}

    @classmethod
    def load_or_create(cls, directory: Path) -> DemoIssuer:
        """Load the key from ``directory``, or create one there; (re)write ``jwks.json`` to match it."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_path = directory / KEY_FILE
        try:
            pem = key_path.read_bytes()
        except FileNotFoundError:
            private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            try:  # O_EXCL: never clobber a key another process just created; 0600 from the start
                fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return cls.load_or_create(directory)
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
        else:
            if key_path.stat().st_mode & 0o077:
                key_path.chmod(0o600)
        loaded = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise ValueError(f"{key_path} does not hold an RSA private key")
        issuer = cls(loaded, directory)
        issuer._write_jwks()
        return issuer

    @property
    def issuer(self) -> str:
        return DEMO_ISSUER

    @property
    def audience(self) -> str:
        return DEMO_AUDIENCE

    @property
    def kid(self) -> str:
        return self._kid

    @property
    def jwks_path(self) -> Path:
        return self._directory / JWKS_FILE

    @property
    def key_path(self) -> Path:
        return self._directory / KEY_FILE

    def oidc_config(self, **overrides: Any) -> OIDCConfig:
        """An :class:`OIDCConfig` that verifies this issuer's tokens from its ``jwks.json`` file."""
        settings: dict[str, Any] = {
            "issuer": self.issuer, "audience": (self.audience,), "jwks": str(self.jwks_path),
            "algorithms": ("RS256",),
        }
        return OIDCConfig(**{**settings, **overrides})

    def mint(
        self,
        subject: str,
        *,
        email: str | None = None,
        name: str | None = None,
        groups: Sequence[str] = (),
        ttl_seconds: int = 3600,
    ) -> str:
        """A signed RS256 token for ``subject``, valid from now for ``ttl_seconds``."""
        if not subject:
            raise ValueError("subject must not be empty")
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer, "aud": self.audience, "sub": subject,
            "iat": now, "nbf": now, "exp": now + ttl_seconds, "jti": uuid.uuid4().hex,
        }
        if email is not None:
            claims["email"] = email
        if name is not None:
            claims["name"] = name
        if groups:
            claims["groups"] = [groups] if isinstance(groups, str) else list(groups)
        return jwt.encode(claims, self._pem, algorithm="RS256", headers={"kid": self._kid})

    def _write_jwks(self) -> None:
        body = json.dumps({"keys": [self._jwk]}, indent=2) + "\n"
        path = self.jwks_path
        if path.exists() and path.read_text(encoding="utf-8") == body:
            return
        tmp = path.with_name(f".{JWKS_FILE}.{os.getpid()}.tmp")
        tmp.write_text(body, encoding="utf-8")
        tmp.chmod(0o644)
        tmp.replace(path)


def _b64_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
