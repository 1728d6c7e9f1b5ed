"""Signing people in to the web pages through the identity provider: the authorization code flow with PKCE.

:class:`OIDCLogin` is the relying party's half of the flow; ``pgproxy.web.app`` wires it to ``GET /login``
and ``GET /oidc/callback``:

1. :meth:`OIDCLogin.start` finds the provider's ``authorization_endpoint`` (OIDC discovery, cached, unless
   given explicitly), draws a random ``state``, ``nonce`` and PKCE ``code_verifier`` (64 characters; the
   request carries only its S256 ``code_challenge``), and returns the authorization URL plus a *flow
   cookie* holding state, nonce, verifier, the page to return to and the time. The cookie value is
   sealed with AES-GCM under a key drawn when the app starts: the browser can neither read nor alter
   it, and it is ``HttpOnly``, ``SameSite=Lax`` (sent on the provider's redirect back, a top-level GET),
   ``Path=/oidc/callback`` and short-lived.
2. :meth:`OIDCLogin.finish` opens the flow cookie (refused when missing, altered or older than
   ``flow_seconds``), compares ``state`` in constant time, reports a provider ``error``, exchanges the
   ``code`` at the ``token_endpoint`` (``client_secret_basic`` when a secret is configured, always with
   the ``code_verifier``), and verifies the returned ``id_token`` with the same ``TokenVerifier`` as
   every other token (signature, ``iss``, ``aud``, expiry) — so its audience list must include the
   ``client_id`` — then checks the token is for this client and carries the flow's ``nonce``.

The flow cookie's key lives in this process: replicas behind one address need sticky sessions or the
same ``flow_key``. Each failure is a :class:`SignInFailed` whose status (400 for a flow that cannot be
trusted, 401 for a refusal, 502/503 when the provider cannot be reached) and reason are safe to show.

This module must not log, show or store a token, an authorization code, a code verifier or a flow
cookie's content, must not follow redirects from the provider's endpoints, and must not talk to an
endpoint that is not https (plain http only on a loopback host).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlencode, urlsplit

import httpx
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from starlette.responses import Response

from pgproxy.auth.errors import JWKSUnavailable, TokenRejected
from pgproxy.auth.identity import Identity
from pgproxy.auth.jwks_source import check_url
from pgproxy.auth.oidc import TokenVerifier
from pgproxy.web.auth import Verifier

log = logging.getLogger(__name__)

CALLBACK_PATH = "/oidc/callback"
FLOW_COOKIE = "pgproxy_sign_in"
_AAD = b"pgproxy web sign-in flow"
_MAX_RESPONSE = 256 * 1024
_SAFE_TEXT = re.compile(r"[^\x20-\x7e]")
_LOOPBACK_MOUNTS: dict[str, httpx.AsyncBaseTransport | None] = {
    "all://localhost": None, "all://127.0.0.1": None, "all://[::1]": None,  # never through a proxy
}


class SignInFailed(Exception):
    """The sign-in did not complete: ``status`` 400, 401, 502 or 503 and a ``reason`` safe to show."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Started:
    """Where to send the browser (``location``) and the sealed flow cookie to set on that redirect."""

    location: str
    flow_cookie: str


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A verified ID token, who it names, and the page (a path on this site) to return to."""

    token: str
    identity: Identity
    next: str


@dataclass(frozen=True, slots=True)
class _Flow:
    state: str
    nonce: str
    verifier: str
    next: str
    started: float


def default_http_client(timeout: float = 5.0) -> httpx.AsyncClient:
    """An HTTP client for the provider: environment proxies except for loopback hosts, no redirects."""
    return httpx.AsyncClient(timeout=timeout, follow_redirects=False, mounts=_LOOPBACK_MOUNTS)


class OIDCLogin:
    """One OIDC client registration: its provider, client id (and secret), and redirect URI.

    ``redirect_uri`` must end in ``/oidc/callback``. ``authorization_endpoint``/``token_endpoint`` skip
    discovery. ``verifier`` checks the ID tokens; when it is a ``TokenVerifier``, its issuer must be
    ``issuer`` and its audiences must include ``client_id`` (else :class:`ValueError`). ``name`` is
    shown as "Sign in with NAME" (default: the issuer's host).
    """

    def __init__(
        self,
        issuer: str,
        client_id: str,
        client_secret: str | None,
        redirect_uri: str,
        verifier: Verifier,
        *,
        scopes: Sequence[str] = ("openid", "email", "profile"),
        http_client: Callable[[], httpx.AsyncClient] = default_http_client,
        authorization_endpoint: str | None = None,
        token_endpoint: str | None = None,
        name: str | None = None,
        flow_seconds: float = 600.0,
        flow_key: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not issuer or not client_id:
            raise ValueError("issuer and client_id must not be empty")
        check_url(redirect_uri, "redirect_uri")
        if urlsplit(redirect_uri).path != CALLBACK_PATH or urlsplit(redirect_uri).query:
            raise ValueError(f"redirect_uri must be https://HOST[:PORT]{CALLBACK_PATH}, got {redirect_uri!r}")
        if "openid" not in scopes or any(not scope or " " in scope for scope in scopes):
            raise ValueError("scopes must include 'openid' and hold no spaces")
        for endpoint, what in ((authorization_endpoint, "authorization_endpoint"), (token_endpoint, "token_endpoint")):
            if endpoint is not None:
                check_url(endpoint, what)
        if authorization_endpoint is None or token_endpoint is None:
            check_url(issuer, "issuer (used for OIDC discovery)")
        if isinstance(verifier, TokenVerifier):
            if verifier.config.issuer != issuer:
                raise ValueError(f"the verifier checks issuer {verifier.config.issuer!r}, not {issuer!r}")
            if client_id not in verifier.config.audience:
                raise ValueError(f"the verifier's audiences must include the client id {client_id!r}: "
                                 "ID tokens are issued to the client")
        if flow_seconds <= 0 or (flow_key is not None and len(flow_key) != 32):
            raise ValueError("flow_seconds must be positive and flow_key 32 bytes")
        self.issuer, self.client_id, self.redirect_uri = issuer, client_id, redirect_uri
        self.name = name or urlsplit(issuer).hostname or issuer
        self._secret = client_secret
        self._verifier = verifier
        self._scope = " ".join(scopes)
        self._http = http_client
        self._explicit = (authorization_endpoint, token_endpoint)
        self._endpoints: tuple[str, str] | None = None
        self._discovering = asyncio.Lock()
        self._flow_seconds = flow_seconds
        self._seal = AESGCM(flow_key or AESGCM.generate_key(bit_length=256))
        self._clock = clock

    # -- the flow ----------------------------------------------------------------------------------------

    async def start(self, next_page: str) -> Started:
        """Begin a sign-in that returns to ``next_page`` (already checked to be a path on this site)."""
        authorize, _ = await self._provider()
        flow = _Flow(secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(48), next_page,
                     self._clock())
        challenge = _b64(hashlib.sha256(flow.verifier.encode("ascii")).digest())
        query = urlencode({
            "response_type": "code", "client_id": self.client_id, "redirect_uri": self.redirect_uri,
            "scope": self._scope, "state": flow.state, "nonce": flow.nonce,
            "code_challenge": challenge, "code_challenge_method": "S256",
        })
        return Started(f"{authorize}{'&' if '?' in authorize else '?'}{query}", self._seal_flow(flow))

    async def finish(self, params: Mapping[str, str], flow_cookie: str | None) -> SignedIn:
        """Complete the sign-in from the callback's query ``params`` and the browser's flow cookie."""
        flow = self._open_flow(flow_cookie)
        if flow is None:
            raise SignInFailed(400, "this sign-in was not started in this browser or took too long; start again")
        if not hmac.compare_digest(params.get("state", "").encode(), flow.state.encode()):
            raise SignInFailed(400, "the sign-in response does not belong to this browser's sign-in (state "
                                    "mismatch); start again")
        if params.get("error"):
            detail = _printable(params.get("error_description", ""))
            raise SignInFailed(401, f"{self.name} did not sign you in: {_printable(params['error'])}"
                                    + (f" ({detail})" if detail else ""))
        code = params.get("code", "")
        if not code:
            raise SignInFailed(400, "the sign-in response has no authorization code")
        token = await self._exchange(code, flow.verifier)
        try:
            identity = await self._verifier.verify(token)
        except JWKSUnavailable:
            raise SignInFailed(503, f"the signing keys of {self.name} cannot be loaded now; try again") from None
        except TokenRejected as exc:
            raise SignInFailed(401, f"the ID token from {self.name} was refused: {exc.reason}") from None
        claims = _payload(token)  # the signature was verified just above
        audiences = [claims.get("aud")] if isinstance(claims.get("aud"), str) else claims.get("aud") or []
        if self.client_id not in audiences or claims.get("azp", self.client_id) != self.client_id:
            raise SignInFailed(401, f"the ID token from {self.name} was not issued to client {self.client_id!r}")
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(nonce.encode(), flow.nonce.encode()):
            raise SignInFailed(401, f"the ID token from {self.name} does not carry this sign-in's nonce")
        log.info("%s signed in to the web pages through %s", identity.display, self.name)
        return SignedIn(token, identity, flow.next)

    # -- cookies -----------------------------------------------------------------------------------------

    def set_flow_cookie(self, response: Response, value: str, *, secure: bool) -> None:
        response.set_cookie(FLOW_COOKIE, value, max_age=int(self._flow_seconds), path=CALLBACK_PATH,
                            secure=secure, httponly=True, samesite="lax")

    @staticmethod
    def clear_flow_cookie(response: Response, *, secure: bool) -> None:
        response.delete_cookie(FLOW_COOKIE, path=CALLBACK_PATH, secure=secure, httponly=True, samesite="lax")

    def _seal_flow(self, flow: _Flow) -> str:
        plain = json.dumps({"s": flow.state, "n": flow.nonce, "v": flow.verifier, "r": flow.next,
                            "t": flow.started}, separators=(",", ":")).encode()
        iv = os.urandom(12)
        return _b64(iv + self._seal.encrypt(iv, plain, _AAD))

    def _open_flow(self, value: str | None) -> _Flow | None:
        if not value or len(value) > 4096:
            return None
        try:
            sealed = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            fields = json.loads(self._seal.decrypt(sealed[:12], sealed[12:], _AAD))
            flow = _Flow(fields["s"], fields["n"], fields["v"], fields["r"], float(fields["t"]))
        except (InvalidTag, ValueError, TypeError, KeyError):
            return None
        age = self._clock() - flow.started
        return flow if -60 <= age <= self._flow_seconds else None

    # -- the provider ------------------------------------------------------------------------------------

    async def _provider(self) -> tuple[str, str]:
        """``(authorization_endpoint, token_endpoint)``: as configured, else discovered once."""
        explicit_authorize, explicit_token = self._explicit
        if explicit_authorize is not None and explicit_token is not None:
            return explicit_authorize, explicit_token
        async with self._discovering:
            if self._endpoints is None:
                document = await self._discover()
                found = []
                for key, explicit in (("authorization_endpoint", explicit_authorize),
                                      ("token_endpoint", explicit_token)):
                    value = explicit or document.get(key)
                    if not isinstance(value, str):
                        raise SignInFailed(502, f"the discovery document of {self.name} has no {key}")
                    try:
                        check_url(value, f"discovered {key}")
                    except ValueError as exc:
                        raise SignInFailed(502, str(exc)) from None
                    found.append(value)
                self._endpoints = (found[0], found[1])
            return self._endpoints

    async def _discover(self) -> dict[str, Any]:
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            async with self._http() as client:
                response = await client.get(url, headers={"accept": "application/json"})
        except httpx.HTTPError as exc:
            raise SignInFailed(502, f"cannot reach {self.name} ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise SignInFailed(502, f"{self.name}'s discovery document answered HTTP {response.status_code}")
        document = _json(response)
        if document is None or document.get("issuer") != self.issuer:
            raise SignInFailed(502, f"the discovery document at {url} is not {self.issuer!r}'s")
        methods = document.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise SignInFailed(502, f"{self.name} does not offer PKCE with S256")
        return document

    async def _exchange(self, code: str, code_verifier: str) -> str:
        """The ID token the token endpoint returns for ``code`` (never logged nor echoed)."""
        _, endpoint = await self._provider()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri,
                "client_id": self.client_id, "code_verifier": code_verifier}
        headers = {"accept": "application/json"}
        if self._secret is not None:  # client_secret_basic
            basic = f"{_form_encode(self.client_id)}:{_form_encode(self._secret)}".encode()
            headers["authorization"] = "Basic " + base64.b64encode(basic).decode("ascii")
        try:
            async with self._http() as client:
                response = await client.post(endpoint, data=form, headers=headers)
        except httpx.HTTPError as exc:
            raise SignInFailed(502, f"cannot reach the token endpoint of {self.name} ({type(exc).__name__})") from None
        body = _json(response)
        if response.status_code in (400, 401) and body is not None and isinstance(body.get("error"), str):
            detail = _printable(str(body.get("error_description") or ""))
            raise SignInFailed(401, f"{self.name} refused the sign-in code: {_printable(body['error'])}"
                                    + (f" ({detail})" if detail else ""))
        if response.status_code != 200 or body is None:
            raise SignInFailed(502, f"the token endpoint of {self.name} answered HTTP {response.status_code}")
        token = body.get("id_token")
        if not isinstance(token, str) or not token:
            raise SignInFailed(401, f"{self.name} returned no ID token (is 'openid' among the client's scopes?)")
        return token


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _form_encode(value: str) -> str:
    """RFC 6749 2.3.1: the client id and secret are form-encoded before HTTP Basic encoding."""
    return quote_plus(value, safe="")


def _json(response: httpx.Response) -> dict[str, Any] | None:
    if len(response.content) > _MAX_RESPONSE:
        return None
    try:
        document = response.json()
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _payload(token: str) -> dict[str, Any]:
    segment = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return claims if isinstance(claims, dict) else {}


def _printable(text: str, limit: int = 200) -> str:
    """Provider-chosen text, cut short and stripped of control characters (the page escapes it too)."""
    cleaned = _SAFE_TEXT.sub("?", text)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"
