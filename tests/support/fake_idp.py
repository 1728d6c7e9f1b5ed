"""A fake OIDC identity provider for tests.

It holds RSA signing keys (plus one EC P-256 key for ES256) and serves, from a daemon thread on
127.0.0.1 at an ephemeral port, ``/.well-known/openid-configuration`` and ``/jwks.json``. Tokens are
signed here with ``cryptography`` directly rather than python-jose, so the verifier under test is checked
against an independent implementation, and hostile tokens (alg ``none``, HS256 keyed with the public key,
unknown keys) can be forged.

Counters ``jwks_requests`` and ``discovery_requests`` let tests check the verifier's refetch rate limit;
``jwks_status``, ``discovery_issuer`` and ``jwks_redirect`` simulate an outage, a lying discovery
document and a redirect.

It also signs people in to web pages: ``/authorize`` and ``/token`` run the authorization code flow with
PKCE for clients registered with :meth:`FakeIdP.register_client`; ``next_login`` says who signs in next
(see ``tests.support.fake_idp_flow``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from pgproxy.auth.oidc import OIDCConfig
from tests.support.fake_idp_flow import Client, CodeFlow

__all__ = ["FakeIdP", "SigningKey", "b64url", "encode_jwt"]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512,
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64_uint(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private: PrivateKey

    def public_jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            numbers = public.public_numbers()
            return {"kty": "RSA", "use": "sig", "kid": self.kid,
                    "n": _b64_uint(numbers.n), "e": _b64_uint(numbers.e)}
        ec_numbers = public.public_numbers()
        size = (public.curve.key_size + 7) // 8
        return {"kty": "EC", "use": "sig", "kid": self.kid, "crv": "P-256",
                "x": b64url(ec_numbers.x.to_bytes(size, "big")),
                "y": b64url(ec_numbers.y.to_bytes(size, "big"))}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _sign(alg: str, key: PrivateKey, data: bytes) -> bytes:
    hash_alg = _HASHES[alg[2:]]()
    if alg.startswith(("RS", "PS")) and isinstance(key, rsa.RSAPrivateKey):
        if alg.startswith("RS"):
            return key.sign(data, padding.PKCS1v15(), hash_alg)
        pss = padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size)
        return key.sign(data, pss, hash_alg)
    if alg.startswith("ES") and isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hash_alg)))
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    raise ValueError(f"cannot sign {alg} with {type(key).__name__}")


def encode_jwt(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """``header.payload.signature`` where ``sign(signing_input: bytes) -> bytes``."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode('ascii')))}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    idp: FakeIdP


class _Handler(BaseHTTPRequestHandler):
    def _idp(self) -> FakeIdP:
        assert isinstance(self.server, _Server)
        return self.server.idp

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/authorize":
            self._answer(*self._idp().flow.authorize(query))
        else:
            self._answer(*self._idp()._respond(self.path))

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path == "/token":
            self._answer(*self._idp().flow.token(body, self.headers.get("authorization")))
        else:
            self._answer(404, {"error": "not found"})

    def _answer(self, status: int, document: object) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        if status == 302 and isinstance(document, dict):
            self.send_header("Location", str(document["location"]))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass


class FakeIdP:
    """Start with :meth:`start` (or use as a context manager); :meth:`close` when done."""

    def __init__(self, *, audience: str = "pgproxy-test") -> None:
        self.audience = audience
        self.jwks_requests = 0
        self.discovery_requests = 0
        self.jwks_status = 200
        self.discovery_issuer: str | None = None
        self.jwks_redirect: str | None = None
        self.next_login: dict[str, Any] | None = None  # who /authorize signs in next
        self.authorize_error: str | None = None  # else /authorize answers this error
        self.token_status = 200  # else /token fails with this status
        self.id_token_claims: dict[str, Any] = {}  # merged into every ID token /token issues
        self.flow = CodeFlow(self)
        self._lock = threading.Lock()
        self._keys = [SigningKey("rsa-1", rsa.generate_private_key(public_exponent=65537, key_size=2048))]
        self._ec_key = SigningKey("ec-1", ec.generate_private_key(ec.SECP256R1()))
        self._unknown: SigningKey | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> FakeIdP:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.idp = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-idp", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeIdP:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what it serves --------------------------------------------------------------------------
    @property
    def issuer(self) -> str:
        assert self._server is not None, "FakeIdP not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/jwks.json"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def kid(self) -> str:
        """The kid RS/PS tokens are minted with now."""
        return self._keys[-1].kid

    @property
    def public_pem(self) -> bytes:
        return self._keys[-1].public_pem()

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [k.public_jwk() for k in [*self._keys, self._ec_key]]}

    def write_jwks_file(self, path: Path) -> Path:
        path.write_text(json.dumps(self.jwks()), encoding="utf-8")
        return path

    def config(self, **overrides: Any) -> OIDCConfig:
        """A verifier config for this IdP; JWKS by discovery unless ``jwks=`` is given."""
        settings: dict[str, Any] = {"issuer": self.issuer, "audience": (self.audience,)}
        return OIDCConfig(**{**settings, **overrides})

    def register_client(self, client_id: str, redirect_uri: str, secret: str | None = None) -> Client:
        """A web client that may sign people in here (registering again replaces it)."""
        return self.flow.register(client_id, redirect_uri, secret)

    def _respond(self, path: str) -> tuple[int, object]:
        with self._lock:
            if path == "/.well-known/openid-configuration":
                self.discovery_requests += 1
                return 200, {"issuer": self.discovery_issuer or self.issuer, "jwks_uri": self.jwks_url,
                             "authorization_endpoint": f"{self.issuer}/authorize",
                             "token_endpoint": f"{self.issuer}/token",
                             "code_challenge_methods_supported": ["S256"],
                             "id_token_signing_alg_values_supported": ["RS256", "PS256", "ES256"]}
            if path == "/jwks.json":
                self.jwks_requests += 1
                if self.jwks_redirect is not None:
                    return 302, {"location": self.jwks_redirect}
                if self.jwks_status != 200:
                    return self.jwks_status, {"error": "unavailable"}
                return 200, {"keys": [k.public_jwk() for k in [*self._keys, self._ec_key]]}
        return 404, {"error": "not found"}

    # -- keys ------------------------------------------------------------------------------------
    def rotate(self) -> str:
        """Add a new RSA key to the JWKS and mint with it from now on; returns its kid."""
        key = SigningKey(f"rsa-{len(self._keys) + 1}",
                         rsa.generate_private_key(public_exponent=65537, key_size=2048))
        with self._lock:
            self._keys.append(key)
        return key.kid

    # -- tokens ----------------------------------------------------------------------------------
    def claims(
        self,
        sub: str = "agent-x",
        *,
        email: str | None = None,
        name: str | None = None,
        groups: Sequence[str] | None = None,
        aud: str | list[str] | None = None,
        iss: str | None = None,
        expires_in: float | None = 300,
        not_before: float | None = None,
        now: float | None = None,
        extra_claims: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Claims for a token: times are seconds relative to ``now`` (default: the wall clock);
        ``expires_in=None`` omits ``exp``, ``not_before=None`` omits ``nbf``."""
        base = int(time.time() if now is None else now)
        claims: dict[str, Any] = {"iss": iss or self.issuer, "aud": aud or self.audience, "sub": sub,
                                  "iat": base}
        if expires_in is not None:
            claims["exp"] = base + int(expires_in)
        if not_before is not None:
            claims["nbf"] = base + int(not_before)
        if email is not None:
            claims["email"] = email
        if name is not None:
            claims["name"] = name
        if groups is not None:
            claims["groups"] = list(groups)
        claims.update(extra_claims or {})
        return claims

    def mint(
        self,
        sub: str = "agent-x",
        *,
        email: str | None = None,
        name: str | None = None,
        groups: Sequence[str] | None = None,
        aud: str | list[str] | None = None,
        iss: str | None = None,
        expires_in: float | None = 300,
        not_before: float | None = None,
        now: float | None = None,
        kid: str | None = None,
        include_kid: bool = True,
        alg: str = "RS256",
        extra_claims: dict[str, Any] | None = None,
        key: PrivateKey | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        """A signed token (claims as in :meth:`claims`). RS*/PS* use the current RSA key, ES256 the EC
        key, unless ``key`` is given; ``kid`` overrides the header's key id, ``include_kid=False`` omits
        it; ``headers`` are merged into the header last."""
        signer = self._ec_key if alg.startswith("ES") else self._keys[-1]
        private = key or signer.private
        header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
        if include_kid:
            header["kid"] = kid or signer.kid
        header.update(headers or {})
        claims = self.claims(sub, email=email, name=name, groups=groups, aud=aud, iss=iss,
                             expires_in=expires_in, not_before=not_before, now=now, extra_claims=extra_claims)
        return encode_jwt(header, claims, lambda data: _sign(alg, private, data))

    def mint_alg_none(self, sub: str = "agent-x", **claim_args: Any) -> str:
        """An unsigned token (``alg: none``, empty signature) naming the current kid."""
        header = {"alg": "none", "typ": "JWT", "kid": self.kid}
        return encode_jwt(header, self.claims(sub, **claim_args), lambda data: b"")

    def mint_hs256_with_public_key(self, sub: str = "agent-x", **claim_args: Any) -> str:
        """The key-confusion attack: HS256 keyed with the PEM of the IdP's public RSA key."""
        secret = self.public_pem
        header = {"alg": "HS256", "typ": "JWT", "kid": self.kid}
        return encode_jwt(header, self.claims(sub, **claim_args),
                          lambda data: hmac.new(secret, data, hashlib.sha256).digest())

    def mint_with_unknown_key(
        self, sub: str = "agent-x", *, kid: str = "unknown-1", **claim_args: Any
    ) -> str:
        """RS256, signed by a key that is not (and never will be) in the JWKS."""
        if self._unknown is None:
            self._unknown = SigningKey(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return self.mint(sub, kid=kid, key=self._unknown.private, **claim_args)
