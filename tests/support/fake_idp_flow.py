"""The fake identity provider's authorization code flow with PKCE: its ``/authorize`` and ``/token`` endpoints.

There is no login form: the test says who signs in next (``FakeIdP.next_login``, claims such as ``{"sub",
"email", "name", "groups"}``; ``None`` answers ``login_required``) or which error the provider answers
(``FakeIdP.authorize_error``). ``/authorize`` checks the client, its registered redirect URI (a mismatch is
a 400 page, never a redirect), ``response_type=code``, ``scope`` with ``openid`` and
``code_challenge_method=S256``, keeps the challenge and nonce with a single-use code, and redirects back
with ``code`` and ``state``. ``/token`` checks the code (once: a replay fails), the client (HTTP Basic
when it has a secret), the redirect URI, and that the SHA-256 of ``code_verifier`` is the challenge; it
answers an ID token signed with the IdP's current key, ``aud`` = the client id, carrying the nonce.

Failure knobs on ``FakeIdP``: ``token_status`` (the token endpoint fails with that status) and
``id_token_claims`` (claims merged into every ID token, e.g. a wrong ``nonce``). ``authorize_requests``
and ``token_requests`` record what clients sent, so tests can check the PKCE values and client auth.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote_plus, urlencode

if TYPE_CHECKING:
    from tests.support.fake_idp import FakeIdP


@dataclass(frozen=True)
class Client:
    client_id: str
    redirect_uri: str
    secret: str | None = None


@dataclass(frozen=True)
class _Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    login: dict[str, Any]


@dataclass(frozen=True)
class TokenRequest:
    form: dict[str, str]
    authorization: str | None


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _basic(authorization: str | None) -> tuple[str, str] | None:
    """RFC 6749 2.3.1 client_secret_basic: id and secret form-encoded, then HTTP Basic."""
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    user, _, password = base64.b64decode(encoded).decode().partition(":")
    return unquote_plus(user), unquote_plus(password)


def _fields(text: str) -> dict[str, str]:
    return {key: values[-1] for key, values in parse_qs(text, keep_blank_values=True).items()}


class CodeFlow:
    """The endpoints' logic; ``FakeIdP`` routes ``/authorize`` and ``/token`` here from its server thread."""

    def __init__(self, idp: FakeIdP) -> None:
        self._idp = idp
        self._lock = threading.Lock()
        self._grants: dict[str, _Grant] = {}
        self.clients: dict[str, Client] = {}
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[TokenRequest] = []

    def register(self, client_id: str, redirect_uri: str, secret: str | None = None) -> Client:
        client = Client(client_id, redirect_uri, secret)
        with self._lock:
            self.clients[client_id] = client
        return client

    def authorize(self, query: str) -> tuple[int, dict[str, Any]]:
        params = _fields(query)
        with self._lock:
            self.authorize_requests.append(params)
            client = self.clients.get(params.get("client_id", ""))
        if client is None:
            return 400, {"error": "unauthorized_client"}
        if params.get("redirect_uri") != client.redirect_uri:
            return 400, {"error": "invalid_request", "error_description": "redirect_uri is not registered"}
        state = params.get("state")

        def back(**values: str) -> tuple[int, dict[str, Any]]:
            answer = {**values, **({"state": state} if state is not None else {})}
            return 302, {"location": f"{client.redirect_uri}?{urlencode(answer)}"}

        if params.get("response_type") != "code":
            return back(error="unsupported_response_type")
        if "openid" not in params.get("scope", "").split():
            return back(error="invalid_scope")
        if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
            return back(error="invalid_request", error_description="PKCE with S256 is required")
        if self._idp.authorize_error is not None:
            return back(error=self._idp.authorize_error, error_description="the user said no")
        if self._idp.next_login is None:
            return back(error="login_required")
        code = secrets.token_urlsafe(24)
        grant = _Grant(client.client_id, client.redirect_uri, params["code_challenge"], params.get("nonce"),
                       dict(self._idp.next_login))
        with self._lock:
            self._grants[code] = grant
        return back(code=code)

    def token(self, body: bytes, authorization: str | None) -> tuple[int, dict[str, Any]]:
        form = _fields(body.decode("utf-8", "replace"))
        with self._lock:
            self.token_requests.append(TokenRequest(form, authorization))
            grant = self._grants.pop(form.get("code", ""), None)  # single use, whatever follows
        if self._idp.token_status != 200:
            return self._idp.token_status, {"error": "server_error"}
        if form.get("grant_type") != "authorization_code":
            return 400, {"error": "unsupported_grant_type"}
        if grant is None:
            return 400, {"error": "invalid_grant", "error_description": "unknown or used code"}
        client = self.clients[grant.client_id]
        if client.secret is not None and _basic(authorization) != (client.client_id, client.secret):
            return 401, {"error": "invalid_client"}
        if form.get("client_id") != grant.client_id or form.get("redirect_uri") != grant.redirect_uri:
            return 400, {"error": "invalid_grant", "error_description": "client or redirect_uri differs"}
        if not hmac.compare_digest(_s256(form.get("code_verifier", "")), grant.challenge):
            return 400, {"error": "invalid_grant", "error_description": "code_verifier does not match"}
        login = dict(grant.login)
        sub = str(login.pop("sub"))
        extra = {"azp": grant.client_id, **({"nonce": grant.nonce} if grant.nonce else {}), **login,
                 **self._idp.id_token_claims}
        id_token = self._idp.mint(sub, aud=grant.client_id, extra_claims=extra)
        return 200, {"access_token": secrets.token_urlsafe(24), "token_type": "Bearer", "expires_in": 300,
                     "id_token": id_token}
