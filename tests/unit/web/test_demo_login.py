"""``pgproxy demo``'s sign-in over ASGI: the demo issuer's login form and token endpoint on the web app, the
app's own OIDC client going through them (PKCE, single-use codes), and the ID tokens the real verifier accepts."""

from __future__ import annotations

import base64
import hashlib
import html
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from pgproxy.audit.review import JsonlAuditReader
from pgproxy.auth.demo_issuer import DemoIssuer, DemoLogin
from pgproxy.auth.oidc import TokenVerifier
from pgproxy.web.app import build_web_app
from pgproxy.web.oidc_login import OIDCLogin
from tests.unit.audit.factories import review_log, sealed_chain
from tests.unit.web.test_audit_page import Clock

SITE = "https://127.0.0.1:8443"
REDIRECT_URI = f"{SITE}/oidc/callback"
VERIFIER = "v" * 20 + "-._~" + "0123456789" * 3  # 54 characters of the PKCE alphabet
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> DemoIssuer:
    return DemoIssuer.load_or_create(tmp_path_factory.mktemp("demo") / "issuer")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def demo(issuer: DemoIssuer, clock: Clock) -> DemoLogin:
    return DemoLogin(issuer, redirect_uri=REDIRECT_URI, clock=clock)


@pytest.fixture
def app(issuer: DemoIssuer, demo: DemoLogin, tmp_path: Path) -> FastAPI:
    log = tmp_path / "audit.jsonl"
    log.write_text("".join(record.to_json() + "\n" for record in sealed_chain(review_log())), encoding="utf-8")
    verifier = TokenVerifier(issuer.oidc_config())
    served: list[FastAPI] = []  # the token endpoint is this very app, reached in-process

    def to_this_app() -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=served[0]))

    login = OIDCLogin(issuer.issuer, demo.client_id, None, REDIRECT_URI, verifier, http_client=to_this_app,
                      authorization_endpoint=f"{SITE}/demo/authorize", token_endpoint=f"{SITE}/demo/token",
                      name="the demo issuer")
    served.append(build_web_app(reader_factory=lambda: JsonlAuditReader([log]), verifier=verifier,
                                reviewer_groups=("auditors",), secure_cookies=True, oidc_login=login,
                                demo_login=demo))
    return served[0]


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=SITE) as client:
        yield client


def hidden_fields(page: str, person: str) -> dict[str, str]:
    """The fields of the login form that signs in ``person``."""
    for form in re.findall(r"<form .*?</form>", page, flags=re.DOTALL):
        fields = {html.unescape(name): html.unescape(value)
                  for name, value in re.findall(r'name="([^"]+)" value="([^"]*)"', form)}
        if fields.get("person") == person:
            return fields
    raise AssertionError(f"no form for {person}")


async def sign_in_as(browser: httpx.AsyncClient, person: str) -> httpx.Response:
    login = await browser.get("/login?next=%2Faudit")
    assert "Sign in with the demo issuer" in login.text
    started = await browser.get("/login?auto=1&next=%2Faudit")
    assert started.headers["location"].startswith(f"{SITE}/demo/authorize?")
    chooser = await browser.get(started.headers["location"])
    assert chooser.status_code == 200
    for shown in ("Agent X &lt;agent-x@example.com&gt;", "Dana (DBA)", "Ali (auditor)", "groups: auditors"):
        assert shown in chooser.text
    chosen = await browser.post("/demo/authorize", data=hidden_fields(chooser.text, person),
                                headers={"origin": SITE})
    assert chosen.status_code == 303 and chosen.headers["location"].startswith(f"{REDIRECT_URI}?code=")
    return await browser.get(chosen.headers["location"])


def authorization(**changes: str) -> dict[str, str]:
    fields = {"response_type": "code", "client_id": "pgproxy", "redirect_uri": REDIRECT_URI, "scope": "openid",
              "state": "s-1", "nonce": "n-1", "code_challenge": CHALLENGE, "code_challenge_method": "S256"}
    return {key: value for key, value in {**fields, **changes}.items() if value}


async def a_code(browser: httpx.AsyncClient, person: str = "auditor") -> str:
    chosen = await browser.post("/demo/authorize", data={**authorization(), "person": person},
                                headers={"origin": SITE})
    assert chosen.status_code == 303
    return httpx.URL(chosen.headers["location"]).params["code"]


def exchange(code: str, verifier: str = VERIFIER) -> dict[str, str]:
    return {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI, "client_id": "pgproxy",
            "code_verifier": verifier}


async def test_the_auditor_signs_in_without_pasting_a_token(browser: httpx.AsyncClient) -> None:
    done = await sign_in_as(browser, "auditor")
    assert done.status_code == 200 and 'content="0; url=/audit"' in done.text
    page = await browser.get("/audit")
    assert page.status_code == 200 and "signed in as ali@example.com" in page.text


async def test_the_agent_is_refused_the_audit_log(browser: httpx.AsyncClient) -> None:
    refused = await sign_in_as(browser, "agent")
    assert refused.status_code == 403 and "agent-x@example.com is not in a reviewer group" in refused.text
    assert "pgproxy_review" not in browser.cookies


async def test_codes_are_single_use_short_lived_and_bound_to_the_challenge(
    browser: httpx.AsyncClient, issuer: DemoIssuer, clock: Clock
) -> None:
    code = await a_code(browser)
    answer = await browser.post("/demo/token", data=exchange(code))
    assert answer.status_code == 200 and answer.json()["token_type"] == "Bearer"
    assert answer.headers["cache-control"] == "no-store" and answer.headers["pragma"] == "no-cache"
    identity = await TokenVerifier(issuer.oidc_config()).verify(answer.json()["id_token"])
    assert (identity.email, identity.groups) == ("ali@example.com", ("auditors",))
    replay = await browser.post("/demo/token", data=exchange(code))
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    wrong = await browser.post("/demo/token", data=exchange(await a_code(browser), verifier=VERIFIER[::-1]))
    assert wrong.status_code == 400 and "code_verifier does not match" in wrong.json()["error_description"]
    late = await a_code(browser)
    clock.now += 121
    expired = await browser.post("/demo/token", data=exchange(late))
    assert expired.status_code == 400 and "unknown, used or expired" in expired.json()["error_description"]
    grant = await browser.post("/demo/token", data={**exchange(await a_code(browser)), "grant_type": "password"})
    assert grant.status_code == 400 and grant.json()["error"] == "unsupported_grant_type"


@pytest.mark.parametrize(("changes", "reason"), [
    ({"client_id": "someone"}, "unauthorized_client"),
    ({"redirect_uri": "https://evil.example/oidc/callback"}, "redirect_uri must be"),
    ({"code_challenge_method": "plain"}, "PKCE is required"),
    ({"code_challenge": ""}, "PKCE is required"),
    ({"scope": "email"}, "invalid_scope"),
    ({"response_type": "token"}, "unsupported_response_type"),
    ({"state": ""}, "a state is required"),
])
async def test_bad_authorization_requests_are_shown_never_redirected(
    browser: httpx.AsyncClient, changes: dict[str, str], reason: str
) -> None:
    shown = await browser.get("/demo/authorize", params=authorization(**changes))
    assert shown.status_code == 400 and reason in html.unescape(shown.text)
    posted = await browser.post("/demo/authorize", data={**authorization(**changes), "person": "auditor"},
                                headers={"origin": SITE})
    assert posted.status_code == 400 and "location" not in posted.headers


async def test_the_chooser_refuses_other_sites_and_unknown_people(browser: httpx.AsyncClient) -> None:
    forged = await browser.post("/demo/authorize", data={**authorization(), "person": "auditor"},
                                headers={"origin": "https://evil.example"})
    assert forged.status_code == 403 and "location" not in forged.headers
    nobody = await browser.post("/demo/authorize", data={**authorization(), "person": "root"},
                                headers={"origin": SITE})
    assert nobody.status_code == 400 and "choose one of the demo people" in nobody.text


async def test_without_demo_login_there_is_no_demo_issuer(issuer: DemoIssuer, tmp_path: Path) -> None:
    app = build_web_app(reader_factory=lambda: JsonlAuditReader([tmp_path / "a.jsonl"]),
                        verifier=TokenVerifier(issuer.oidc_config()), reviewer_groups=("auditors",),
                        secure_cookies=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=SITE) as client:
        assert (await client.get("/demo/authorize", params=authorization())).status_code == 404
        assert (await client.post("/demo/token", data=exchange("x"))).status_code == 404
        assert (await client.get("/oidc/callback?code=x&state=y")).status_code == 404
