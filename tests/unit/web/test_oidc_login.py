"""Signing in through the identity provider, over ASGI: the authorization code flow with PKCE against the fake
IdP over real HTTP, its ID tokens verified by the real TokenVerifier; every way a flow can go wrong is refused
without a session cookie."""

from __future__ import annotations

import base64
import hashlib
import html
import logging
import re
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from jose import jwt

from pgproxy.audit.review import JsonlAuditReader
from pgproxy.auth.oidc import OIDCConfig, TokenVerifier
from pgproxy.web.app import build_web_app
from pgproxy.web.oidc_login import FLOW_COOKIE, OIDCLogin
from tests.support.fake_idp import FakeIdP
from tests.unit.audit.factories import review_log, sealed_chain
from tests.unit.web.test_audit_page import REVIEWERS, Clock

SITE = "https://review.example"
CLIENT_ID = "pgproxy-review"
REDIRECT_URI = f"{SITE}/oidc/callback"
RITA = {"sub": "rita", "email": "rita@example.com", "name": "Rita", "groups": ["eng", "auditors"]}


@pytest.fixture(autouse=True)
def idp(fake_idp: FakeIdP) -> Iterator[FakeIdP]:
    """The shared fake IdP with this module's client registered and Rita signing in; knobs reset after."""
    fake_idp.register_client(CLIENT_ID, REDIRECT_URI)
    fake_idp.next_login = dict(RITA)
    yield fake_idp
    fake_idp.next_login, fake_idp.authorize_error, fake_idp.token_status = None, None, 200
    fake_idp.id_token_claims = {}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    path.write_text("".join(record.to_json() + "\n" for record in sealed_chain(review_log())), encoding="utf-8")
    return path


def verifier_for(idp: FakeIdP, clock: Clock) -> TokenVerifier:
    return TokenVerifier(idp.config(audience=(idp.audience, CLIENT_ID)), clock=clock)


def make_app(idp: FakeIdP, clock: Clock, log_path: Path, *, secret: str | None = None, paste_login: bool = True,
             **login_args: Any) -> FastAPI:
    verifier = verifier_for(idp, clock)
    login = OIDCLogin(idp.issuer, CLIENT_ID, secret, REDIRECT_URI, verifier, clock=clock, **login_args)
    return build_web_app(reader_factory=lambda: JsonlAuditReader([log_path]), verifier=verifier,
                         reviewer_groups=REVIEWERS, secure_cookies=True, oidc_login=login, paste_login=paste_login)


@pytest.fixture
def app(idp: FakeIdP, clock: Clock, log_path: Path) -> FastAPI:
    return make_app(idp, clock, log_path)


def browser_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=SITE)


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with browser_for(app) as client:
        yield client


@pytest.fixture
async def idp_http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


@dataclass(frozen=True)
class Back:
    """Where the IdP sent the browser back to, and what the app had asked the IdP for."""

    url: httpx.URL
    asked: dict[str, str]


async def to_idp_and_back(browser: httpx.AsyncClient, idp_http: httpx.AsyncClient,
                          start: str = "/login?auto=1&next=%2Faudit") -> Back:
    started = await browser.get(start)
    assert started.status_code == 303, started.text
    at_idp = httpx.URL(started.headers["location"])
    answer = await idp_http.get(at_idp)
    assert answer.status_code == 302, answer.text
    return Back(httpx.URL(answer.headers["location"]), dict(at_idp.params))


def session_cookie(response: httpx.Response) -> str | None:
    """The session token the response sets (None when it sets none or clears it)."""
    for header in response.headers.get_list("set-cookie"):
        name, _, rest = header.partition("=")
        if name == "pgproxy_review":
            value = rest.split(";")[0]
            return value or None
    return None


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


# -- the flow ----------------------------------------------------------------------------------------------


async def test_signing_in_through_the_provider_sets_the_session_cookie_and_opens_the_page(
    browser: httpx.AsyncClient, idp_http: httpx.AsyncClient, idp: FakeIdP
) -> None:
    page = await browser.get("/audit?database=app")
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Faudit%3Fdatabase%3Dapp"
    form = await browser.get(page.headers["location"])
    assert "Sign in with 127.0.0.1" in form.text and 'name="token"' in form.text  # the paste form stays
    link = re.search(r'href="(/login\?auto=1[^"]*)"', form.text)
    assert link is not None
    started = await browser.get(html.unescape(link.group(1)))
    assert started.status_code == 303
    at_idp = httpx.URL(started.headers["location"])
    assert str(at_idp.copy_with(query=None)) == f"{idp.issuer}/authorize"
    asked = dict(at_idp.params)
    assert {key: asked[key] for key in ("response_type", "client_id", "redirect_uri", "scope",
                                        "code_challenge_method")} == {
        "response_type": "code", "client_id": CLIENT_ID, "redirect_uri": REDIRECT_URI,
        "scope": "openid email profile", "code_challenge_method": "S256"}
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", asked["code_challenge"])
    assert len(asked["state"]) >= 40 and len(asked["nonce"]) >= 40 and asked["state"] != asked["nonce"]
    flow_cookie = started.headers["set-cookie"]
    assert flow_cookie.startswith(f"{FLOW_COOKIE}=")
    for attribute in ("httponly", "secure", "samesite=lax", "path=/oidc/callback", "max-age=600"):
        assert attribute in flow_cookie.lower(), attribute
    assert asked["state"] not in flow_cookie and asked["nonce"] not in flow_cookie  # sealed, not readable

    answer = await idp_http.get(at_idp)
    back = httpx.URL(answer.headers["location"])
    assert str(back).startswith(f"{REDIRECT_URI}?") and back.params["state"] == asked["state"]
    done = await browser.get(back)
    assert done.status_code == 200, done.text
    assert '<meta http-equiv="refresh" content="0; url=/audit?database=app">' in done.text
    token = session_cookie(done)
    assert token is not None
    claims = jwt.get_unverified_claims(token)
    assert (claims["sub"], claims["aud"], claims["nonce"]) == ("rita", CLIENT_ID, asked["nonce"])
    cookies = done.headers.get_list("set-cookie")
    assert any(c.startswith("pgproxy_review=") and "samesite=strict" in c.lower() for c in cookies)
    assert any(c.startswith(f"{FLOW_COOKIE}=") and "max-age=0" in c.lower() for c in cookies)  # single use
    exchange = idp.flow.token_requests[-1]
    assert exchange.authorization is None  # a public client: PKCE, no secret
    assert exchange.form["grant_type"] == "authorization_code" and exchange.form["redirect_uri"] == REDIRECT_URI
    assert s256(exchange.form["code_verifier"]) == asked["code_challenge"]
    assert 43 <= len(exchange.form["code_verifier"]) <= 128
    audit = await browser.get("/audit?database=app")
    assert audit.status_code == 200 and "signed in as rita@example.com" in audit.text


async def test_discovery_is_fetched_once_and_nothing_secret_is_logged(
    browser: httpx.AsyncClient, idp_http: httpx.AsyncClient, idp: FakeIdP, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    first = await to_idp_and_back(browser, idp_http)
    done = await browser.get(first.url)
    assert done.status_code == 200
    before = idp.discovery_requests
    second = await to_idp_and_back(browser, idp_http)
    assert (await browser.get(second.url)).status_code == 200
    assert idp.discovery_requests == before
    secrets = [first.url.params["code"], second.url.params["code"], session_cookie(done) or "?",
               idp.flow.token_requests[-1].form["code_verifier"], second.asked["state"], second.asked["nonce"]]
    # What the app logs: its own records and its HTTP client's (the test's browsers log their URLs too).
    logged = "\n".join(record.getMessage() for record in caplog.records if record.name.startswith("pgproxy")
                       or "/token" in record.getMessage() or "openid-configuration" in record.getMessage())
    assert "rita@example.com signed in to the web pages through 127.0.0.1" in logged
    assert "POST http://127.0.0.1" in logged  # the token request is among them
    for secret in secrets:
        assert secret not in logged


async def test_a_confidential_client_sends_its_secret_with_http_basic(
    idp: FakeIdP, clock: Clock, log_path: Path, idp_http: httpx.AsyncClient
) -> None:
    secret = "s3cret:with/odd chars+"
    idp.register_client(CLIENT_ID, REDIRECT_URI, secret=secret)
    async with browser_for(make_app(idp, clock, log_path, secret=secret)) as browser:
        done = await browser.get((await to_idp_and_back(browser, idp_http)).url)
        assert done.status_code == 200 and session_cookie(done) is not None
        assert (idp.flow.token_requests[-1].authorization or "").startswith("Basic ")
    async with browser_for(make_app(idp, clock, log_path, secret="wrong")) as browser:
        refused = await browser.get((await to_idp_and_back(browser, idp_http)).url)
        assert refused.status_code == 401 and "refused the sign-in code: invalid_client" in refused.text
        assert session_cookie(refused) is None


async def test_with_the_provider_as_the_only_way_login_redirects_and_sign_out_stays_out(
    idp: FakeIdP, clock: Clock, log_path: Path, idp_http: httpx.AsyncClient
) -> None:
    async with browser_for(make_app(idp, clock, log_path, paste_login=False)) as browser:
        page = await browser.get("/audit")
        straight = await browser.get(page.headers["location"])
        assert straight.status_code == 303 and straight.headers["location"].startswith(f"{idp.issuer}/authorize?")
        assert (await browser.post("/login", data={"token": "x"}, headers={"origin": SITE})).status_code == 404
        back = await to_idp_and_back(browser, idp_http, "/login?next=%2Faudit")
        assert (await browser.get(back.url)).status_code == 200
        out = await browser.post("/logout", headers={"origin": SITE})
        assert out.status_code == 303 and out.headers["location"] == "/login?signed_out=1"
        form = await browser.get(out.headers["location"])
        assert form.status_code == 200 and "You are signed out." in form.text
        assert "Sign in with 127.0.0.1" in form.text and 'name="token"' not in form.text
    with pytest.raises(ValueError, match="give oidc_login"):
        build_web_app(reader_factory=lambda: JsonlAuditReader([log_path]), verifier=verifier_for(idp, clock),
                      reviewer_groups=REVIEWERS, secure_cookies=True, paste_login=False)


# -- refusals ----------------------------------------------------------------------------------------------


async def test_a_response_for_another_state_or_browser_is_refused(
    app: FastAPI, browser: httpx.AsyncClient, idp_http: httpx.AsyncClient
) -> None:
    back = await to_idp_and_back(browser, idp_http)
    async with browser_for(app) as other_browser:
        elsewhere = await other_browser.get(back.url)
        assert elsewhere.status_code == 400 and "not started in this browser" in elsewhere.text
        assert session_cookie(elsewhere) is None
    forged = await browser.get(back.url.copy_set_param("state", "A" * 43))
    assert forged.status_code == 400 and "state mismatch" in forged.text and session_cookie(forged) is None
    await to_idp_and_back(browser, idp_http)
    lure = "/oidc/callback?error=access_denied&error_description=Call+0800+555+to+unlock&state=guess"
    injected = await browser.get(lure)
    assert injected.status_code == 400 and "0800" not in injected.text  # no text shown without the state


async def test_a_replayed_code_is_refused_by_the_provider(browser: httpx.AsyncClient,
                                                          idp_http: httpx.AsyncClient) -> None:
    back = await to_idp_and_back(browser, idp_http)
    flow = browser.cookies.get(FLOW_COOKIE)
    assert flow is not None
    assert (await browser.get(back.url)).status_code == 200
    browser.cookies.set(FLOW_COOKIE, flow, domain="review.example", path="/oidc/callback")
    replay = await browser.get(back.url)
    assert replay.status_code == 401 and "refused the sign-in code: invalid_grant" in replay.text
    assert session_cookie(replay) is None


async def test_an_injected_code_fails_on_this_browsers_code_verifier(
    app: FastAPI, browser: httpx.AsyncClient, idp_http: httpx.AsyncClient
) -> None:
    victim = await to_idp_and_back(browser, idp_http)
    async with browser_for(app) as attacker_browser:
        attacker = await to_idp_and_back(attacker_browser, idp_http)
    injected = await browser.get(attacker.url.copy_set_param("state", victim.url.params["state"]))
    assert injected.status_code == 401 and "code_verifier does not match" in injected.text
    assert session_cookie(injected) is None


@pytest.mark.parametrize(("claims", "reason"), [
    ({"nonce": "another-sign-in"}, "does not carry this sign-in's nonce"),
    ({"aud": [CLIENT_ID, "pgproxy-test"], "azp": "pgproxy-test"}, f"was not issued to client '{CLIENT_ID}'"),
    ({"exp": 1_000_000}, "was refused: token expired"),
    ({"iss": "https://impostor.example"}, "was refused: issuer"),
])
async def test_id_tokens_that_do_not_fit_the_flow_are_refused(
    browser: httpx.AsyncClient, idp_http: httpx.AsyncClient, idp: FakeIdP, claims: dict[str, Any], reason: str
) -> None:
    idp.id_token_claims = claims
    refused = await browser.get((await to_idp_and_back(browser, idp_http)).url)
    assert refused.status_code == 401 and reason in html.unescape(refused.text)
    assert session_cookie(refused) is None and "Try again" in refused.text


async def test_provider_errors_and_outages_show_an_error_page(
    browser: httpx.AsyncClient, idp_http: httpx.AsyncClient, idp: FakeIdP, tmp_path: Path, log_path: Path
) -> None:
    idp.authorize_error = "access_denied"
    denied = await browser.get((await to_idp_and_back(browser, idp_http)).url)
    assert denied.status_code == 401
    assert "127.0.0.1 did not sign you in: access_denied (the user said no)" in denied.text
    idp.authorize_error = None
    idp.token_status = 500
    failing = await browser.get((await to_idp_and_back(browser, idp_http)).url)
    assert failing.status_code == 502 and "answered HTTP 500" in failing.text and session_cookie(failing) is None
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    verifier = TokenVerifier(OIDCConfig(issuer=dead, audience=(CLIENT_ID,), jwks=str(idp.write_jwks_file(
        tmp_path / "jwks.json"))))
    login = OIDCLogin(dead, CLIENT_ID, None, REDIRECT_URI, verifier)
    app = build_web_app(reader_factory=lambda: JsonlAuditReader([log_path]), verifier=verifier,
                        reviewer_groups=REVIEWERS, secure_cookies=True, oidc_login=login)
    async with browser_for(app) as other:
        unreachable = await other.get("/login?auto=1")
        assert unreachable.status_code == 502 and "cannot reach 127.0.0.1 (ConnectError)" in unreachable.text
        assert "set-cookie" not in unreachable.headers


async def test_a_flow_cookie_that_is_late_or_altered_is_refused(
    browser: httpx.AsyncClient, idp_http: httpx.AsyncClient, clock: Clock
) -> None:
    back = await to_idp_and_back(browser, idp_http)
    clock.now += 601
    late = await browser.get(back.url)
    assert late.status_code == 400 and "took too long" in late.text and session_cookie(late) is None
    clock.now -= 601
    back = await to_idp_and_back(browser, idp_http)
    flow = browser.cookies.get(FLOW_COOKIE) or ""
    altered = flow[:20] + ("A" if flow[20] != "A" else "B") + flow[21:]
    browser.cookies.clear()
    browser.cookies.set(FLOW_COOKIE, altered, domain="review.example", path="/oidc/callback")
    tampered = await browser.get(back.url)
    assert tampered.status_code == 400 and session_cookie(tampered) is None


async def test_people_outside_the_reviewer_groups_get_no_session(
    browser: httpx.AsyncClient, idp_http: httpx.AsyncClient, idp: FakeIdP
) -> None:
    idp.next_login = {"sub": "eve", "email": "eve@example.com", "groups": ["eng"]}
    refused = await browser.get((await to_idp_and_back(browser, idp_http)).url)
    assert refused.status_code == 403 and "eve@example.com is not in a reviewer group" in refused.text
    assert session_cookie(refused) is None


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:x"])
async def test_sign_in_only_returns_to_pages_of_this_site(
    browser: httpx.AsyncClient, idp_http: httpx.AsyncClient, target: str
) -> None:
    start = str(httpx.URL("/login", params={"auto": "1", "next": target}))
    done = await browser.get((await to_idp_and_back(browser, idp_http, start)).url)
    assert done.status_code == 200 and 'content="0; url=/audit"' in done.text and "evil" not in done.text


def test_a_misconfigured_client_is_refused_at_start(idp: FakeIdP, clock: Clock) -> None:
    verifier = verifier_for(idp, clock)
    with pytest.raises(ValueError, match="audiences must include the client id 'someone-else'"):
        OIDCLogin(idp.issuer, "someone-else", None, REDIRECT_URI, verifier)
    with pytest.raises(ValueError, match="verifier checks issuer"):
        OIDCLogin("https://other.example", CLIENT_ID, None, REDIRECT_URI, verifier)
    with pytest.raises(ValueError, match="redirect_uri must be"):
        OIDCLogin(idp.issuer, CLIENT_ID, None, f"{SITE}/callback", verifier)
    with pytest.raises(ValueError, match="https URL"):
        OIDCLogin(idp.issuer, CLIENT_ID, None, "http://review.example/oidc/callback", verifier)
    with pytest.raises(ValueError, match="openid"):
        OIDCLogin(idp.issuer, CLIENT_ID, None, REDIRECT_URI, verifier, scopes=("email",))
