"""``pgproxy demo``'s sign-in: the demo issuer's login form and token endpoint, on the web pages' own server.

:func:`add_demo_login_routes` serves the HTTP side of a ``pgproxy.auth.demo_issuer.DemoLogin``:

* ``GET /demo/authorize`` — the authorization endpoint: checks the request (client, redirect URI, scope,
  PKCE with S256, state) and shows a form listing the demo people; a refused request is shown as an error
  page, never sent back to its (untrusted) redirect URI;
* ``POST /demo/authorize`` — the person chosen: redirects to the redirect URI with a single-use code and
  the state (forms sent from another site are refused);
* ``POST /demo/token`` — the token endpoint: a code and its ``code_verifier`` for an ID token (JSON, or an
  OAuth error body with status 400).

:func:`demo_sign_in` builds the pair the web app needs: the ``DemoLogin`` and an ``OIDCLogin`` whose
endpoints are these routes (no discovery: the demo issuer's name never resolves) and which reaches the
token endpoint over HTTPS trusting the demo's self-signed certificate, without proxies.

Only for ``pgproxy demo``: whoever reaches the form may sign in as any demo person. This module must not
log codes or tokens, and must not be mounted outside the demo.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

from pgproxy.auth.demo_issuer import DemoIssuer, DemoLogin, DemoLoginError
from pgproxy.web.auth import Verifier, read_form, same_origin
from pgproxy.web.oidc_login import CALLBACK_PATH, OIDCLogin
from pgproxy.web.views import error_page, render

AUTHORIZE_PATH = "/demo/authorize"
EXCHANGE_PATH = "/demo/token"  # the demo token endpoint
_REQUEST_FIELDS = ("response_type", "client_id", "redirect_uri", "scope", "state", "nonce", "code_challenge",
                   "code_challenge_method")


def demo_sign_in(
    issuer: DemoIssuer, verifier: Verifier, *, site: str, cafile: Path | None = None
) -> tuple[OIDCLogin, DemoLogin]:
    """Sign-in through the demo issuer for the web pages served at ``site`` (``https://127.0.0.1:PORT``).

    ``cafile``: the certificate the site serves (self-signed), trusted for the token request.
    """
    site = site.rstrip("/")
    demo = DemoLogin(issuer, redirect_uri=site + CALLBACK_PATH)
    trust: ssl.SSLContext | bool = True if cafile is None else ssl.create_default_context(cafile=str(cafile))

    def client() -> httpx.AsyncClient:
        return httpx.AsyncClient(verify=trust, timeout=5.0, follow_redirects=False, trust_env=False)

    login = OIDCLogin(issuer.issuer, demo.client_id, None, demo.redirect_uri, verifier,
                      authorization_endpoint=site + AUTHORIZE_PATH, token_endpoint=site + EXCHANGE_PATH,
                      http_client=client, name="the demo issuer")
    return login, demo


def add_demo_login_routes(app: FastAPI, demo: DemoLogin) -> None:
    """Add the demo issuer's authorization and token endpoints to ``app``."""

    def refused(exc: DemoLoginError) -> Response:
        return error_page(400, "Sign-in request refused", f"{exc.error}: {exc.description}")

    @app.get(AUTHORIZE_PATH, include_in_schema=False)
    async def authorize_form(request: Request) -> Response:
        params = {key: request.query_params.get(key, "") for key in _REQUEST_FIELDS}
        try:
            demo.authorization_request(params)
        except DemoLoginError as exc:
            return refused(exc)
        return render("demo_login.html", fields=params, people=demo.people, action=AUTHORIZE_PATH)

    @app.post(AUTHORIZE_PATH, include_in_schema=False)
    async def authorize(request: Request) -> Response:
        if not same_origin(request):
            return error_page(403, "Refused", "this form was sent from another site")
        try:
            form = await read_form(request, max_fields=len(_REQUEST_FIELDS) + 1)
        except ValueError as exc:
            return error_page(400, "Bad request", str(exc))
        try:
            location = demo.issue_code(demo.authorization_request(form), form.get("person", ""))
        except DemoLoginError as exc:
            return refused(exc)
        return RedirectResponse(location, status_code=303)

    @app.post(EXCHANGE_PATH, include_in_schema=False)
    async def token(request: Request) -> Response:
        try:
            form = await read_form(request)
            body = demo.exchange(form)
        except ValueError as exc:
            return _token_response({"error": "invalid_request", "error_description": str(exc)}, 400)
        except DemoLoginError as exc:
            return _token_response({"error": exc.error, "error_description": exc.description}, 400)
        return _token_response(body, 200)


def _token_response(body: dict[str, object], status: int) -> Response:
    """A token endpoint's answer: never cached (RFC 6749 5.1; the app adds Cache-Control: no-store)."""
    return JSONResponse(body, status_code=status, headers={"pragma": "no-cache"})
