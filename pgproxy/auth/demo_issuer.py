"""A local token issuer for ``pgproxy demo`` and ``pgproxy token``: no IdP needed to try pgproxy.

It keeps an RSA-2048 signing key (``demo-issuer-key.pem``, PKCS#8 PEM, mode 0600) and its public
``jwks.json`` in one directory, and mints RS256 JWTs. The key id is the key's RFC 7638 thumbprint, so it is
stable for as long as the key file lives.

The issuer is the fixed identifier :data:`DEMO_ISSUER` (``https://pgproxy-demo.invalid``). It is never
fetched: ``.invalid`` is reserved (RFC 2606) and cannot resolve, and verifiers read ``jwks.json`` from
disk (see :meth:`DemoIssuer.oidc_config`). Anyone who can read the key file can mint any identity: this is
for demos and tests, never for production.

:class:`DemoLogin` lets ``pgproxy demo`` sign people in to its web pages without pasting a token: the
issuer's side of the authorization code flow, whose HTTP endpoints ``pgproxy.web.demo_login`` serves.
Its login form offers the demo people (:data:`DEMO_PEOPLE`: agent, dba, auditor) instead of asking for a
password; it accepts one public client (id ``pgproxy``, one ``redirect_uri``), requires PKCE with S256, and issues
single-use codes that expire after ``code_seconds``. It keeps the codes in memory and does no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwt

from pgproxy.auth.oidc import OIDCConfig

__all__ = ["DEMO_AUDIENCE", "DEMO_ISSUER", "DEMO_PEOPLE", "DemoIssuer", "DemoLogin", "DemoLoginError"]

DEMO_ISSUER = "https://pgproxy-demo.invalid"
DEMO_AUDIENCE = "pgproxy"
KEY_FILE = "demo-issuer-key.pem"
JWKS_FILE = "jwks.json"
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url of a SHA-256 digest
_CODE_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")  # RFC 7636 4.1
_MAX_CODES = 1000


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
        nonce: str | None = None,
    ) -> str:
        """A signed RS256 token for ``subject``, valid from now for ``ttl_seconds`` (an ID token's ``nonce``)."""
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
        if nonce is not None:
            claims["nonce"] = nonce
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


@dataclass(frozen=True, slots=True)
class DemoPerson:
    """Who the demo login form signs in."""

    subject: str
    email: str
    name: str
    groups: tuple[str, ...]


DEMO_PEOPLE: Mapping[str, DemoPerson] = {
    "agent": DemoPerson("agent-x", "agent-x@example.com", "Agent X", ("ai-agents",)),
    "dba": DemoPerson("dba-dana", "dana@example.com", "Dana (DBA)", ("dba",)),
    "auditor": DemoPerson("auditor-ali", "ali@example.com", "Ali (auditor)", ("auditors",)),
}


class DemoLoginError(Exception):
    """A refused request: ``error`` is an OAuth 2.0 error code, ``description`` a sentence safe to show."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """A checked authorization request of the one registered client."""

    redirect_uri: str
    state: str
    nonce: str | None
    code_challenge: str


@dataclass(frozen=True, slots=True)
class _Grant:
    request: AuthorizationRequest
    person: DemoPerson
    expires_at: float


class DemoLogin:
    """The demo issuer's authorization server for one public client (no secret; PKCE instead)."""

    def __init__(
        self,
        issuer: DemoIssuer,
        *,
        redirect_uri: str,
        code_seconds: float = 120.0,
        ttl_seconds: int = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.redirect_uri = redirect_uri
        self.client_id = issuer.audience  # the ID token's aud is the client's id
        self._code_seconds = code_seconds
        self._ttl = ttl_seconds
        self._clock = clock
        self._grants: dict[str, _Grant] = {}

    @property
    def people(self) -> Mapping[str, DemoPerson]:
        return DEMO_PEOPLE

    def authorization_request(self, params: Mapping[str, str]) -> AuthorizationRequest:
        """Check an authorization request's parameters; raise :class:`DemoLoginError` when one is wrong."""
        if params.get("client_id") != self.client_id:
            raise DemoLoginError("unauthorized_client", f"the demo issuer knows only client {self.client_id!r}")
        if params.get("redirect_uri") != self.redirect_uri:
            raise DemoLoginError("invalid_request", f"redirect_uri must be {self.redirect_uri!r}")
        if params.get("response_type") != "code":
            raise DemoLoginError("unsupported_response_type", "only response_type=code is supported")
        if "openid" not in params.get("scope", "").split():
            raise DemoLoginError("invalid_scope", "the scope must include openid")
        challenge = params.get("code_challenge", "")
        if params.get("code_challenge_method") != "S256" or not _CHALLENGE.fullmatch(challenge):
            raise DemoLoginError("invalid_request", "PKCE is required: a code_challenge with method S256")
        state = params.get("state", "")
        if not state:
            raise DemoLoginError("invalid_request", "a state is required")
        return AuthorizationRequest(self.redirect_uri, state, params.get("nonce") or None, challenge)

    def issue_code(self, request: AuthorizationRequest, person: str) -> str:
        """Sign in the demo ``person`` (a key of :data:`DEMO_PEOPLE`): the redirect URI with code and state."""
        who = DEMO_PEOPLE.get(person)
        if who is None:
            raise DemoLoginError("access_denied", "choose one of the demo people")
        now = self._clock()
        self._grants = {code: grant for code, grant in self._grants.items() if grant.expires_at > now}
        if len(self._grants) >= _MAX_CODES:
            raise DemoLoginError("temporarily_unavailable", "too many sign-ins in progress; try again shortly")
        code = secrets.token_urlsafe(32)
        self._grants[code] = _Grant(request, who, now + self._code_seconds)
        return f"{request.redirect_uri}?{urlencode({'code': code, 'state': request.state})}"

    def exchange(self, form: Mapping[str, str]) -> dict[str, Any]:
        """The token response for a code (used at most once, even when the exchange is refused)."""
        if form.get("grant_type") != "authorization_code":
            raise DemoLoginError("unsupported_grant_type", "only authorization_code is supported")
        grant = self._grants.pop(form.get("code", ""), None)
        if grant is None or grant.expires_at <= self._clock():
            raise DemoLoginError("invalid_grant", "the code is unknown, used or expired")
        if form.get("client_id") != self.client_id:
            raise DemoLoginError("invalid_client", "the code was issued to another client")
        if form.get("redirect_uri") != grant.request.redirect_uri:
            raise DemoLoginError("invalid_grant", "redirect_uri differs from the authorization request's")
        verifier = form.get("code_verifier", "")
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if not _CODE_VERIFIER.fullmatch(verifier) or not hmac.compare_digest(digest, grant.request.code_challenge):
            raise DemoLoginError("invalid_grant", "the code_verifier does not match the code_challenge")
        who = grant.person
        token = self.issuer.mint(who.subject, email=who.email, name=who.name, groups=who.groups,
                                 ttl_seconds=self._ttl, nonce=grant.request.nonce)
        return {"access_token": token, "id_token": token, "token_type": "Bearer", "expires_in": self._ttl}


def _b64_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
