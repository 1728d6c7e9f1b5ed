"""Signing in to the web pages as a browser does: the app served by uvicorn (``WebServer``) on loopback, an HTTP
client following every redirect through the identity provider — the fake IdP, or ``pgproxy demo``'s own demo
issuer over HTTPS — and landing on the audit page with its session cookie."""

from __future__ import annotations

import html
import re
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from pgproxy.audit.review import JsonlAuditReader
from pgproxy.auth.demo_issuer import DemoIssuer
from pgproxy.auth.oidc import TokenVerifier
from pgproxy.devcerts import write_self_signed
from pgproxy.web.app import build_web_app
from pgproxy.web.demo_login import demo_sign_in
from pgproxy.web.oidc_login import OIDCLogin
from pgproxy.web.server import WebServer
from tests.support.fake_idp import FakeIdP
from tests.unit.audit.factories import review_log, sealed_chain

pytestmark = pytest.mark.integration

CLIENT_ID = "pgproxy-web-it"


def unused_port() -> int:
    """A port free right now: the redirect URI registered with the provider must name the port in advance."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    path.write_text("".join(record.to_json() + "\n" for record in sealed_chain(review_log())), encoding="utf-8")
    return path


@pytest.fixture
async def served(fake_idp: FakeIdP, log_path: Path) -> AsyncIterator[WebServer]:
    port = unused_port()
    redirect_uri = f"http://127.0.0.1:{port}/oidc/callback"
    fake_idp.register_client(CLIENT_ID, redirect_uri)
    verifier = TokenVerifier(fake_idp.config(audience=(fake_idp.audience, CLIENT_ID)))
    login = OIDCLogin(fake_idp.issuer, CLIENT_ID, None, redirect_uri, verifier)
    app = build_web_app(reader_factory=lambda: JsonlAuditReader([log_path]), verifier=verifier,
                        reviewer_groups=("auditors",), secure_cookies=False, oidc_login=login, paste_login=False)
    server = WebServer(app, port=port)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        fake_idp.next_login = None


def continue_to(page: httpx.Response) -> str:
    """Where the signed-in page sends the browser on (its meta refresh)."""
    found = re.search(r'<meta http-equiv="refresh" content="0; url=([^"]+)">', page.text)
    assert found is not None, page.text
    return html.unescape(found.group(1))


async def test_a_browser_follows_the_redirects_through_the_provider_to_the_page(
    served: WebServer, fake_idp: FakeIdP
) -> None:
    fake_idp.next_login = {"sub": "rita", "email": "rita@example.com", "groups": ["auditors"]}
    async with httpx.AsyncClient(base_url=served.url, follow_redirects=True, trust_env=False) as browser:
        landed = await browser.get("/audit?identity=ada@example.com")
        assert landed.status_code == 200, landed.text
        assert [step.status_code for step in landed.history] == [303, 303, 302]
        assert str(landed.history[2].url).startswith(f"{fake_idp.issuer}/authorize?")
        assert landed.url.path == "/oidc/callback"
        assert continue_to(landed) == "/audit?identity=ada@example.com"
        page = await browser.get(continue_to(landed))
        assert page.status_code == 200 and not page.history
        assert "signed in as rita@example.com" in page.text and "ada@example.com" in page.text
        out = await browser.post("/logout", headers={"origin": served.url})
        assert out.status_code == 200 and "You are signed out." in out.text  # no automatic sign-in again
        assert (await browser.get("/api/audit/records", follow_redirects=False)).status_code == 401


async def test_someone_the_provider_does_not_sign_in_lands_on_an_error_page(
    served: WebServer, fake_idp: FakeIdP
) -> None:
    fake_idp.next_login = None
    async with httpx.AsyncClient(base_url=served.url, follow_redirects=True, trust_env=False) as browser:
        landed = await browser.get("/audit")
        assert landed.status_code == 401 and "did not sign you in: login_required" in landed.text
        assert "pgproxy_review" not in browser.cookies


async def test_the_demo_signs_people_in_over_https_without_a_pasted_token(tmp_path: Path, log_path: Path) -> None:
    issuer = DemoIssuer.load_or_create(tmp_path / "issuer")
    cert, key = write_self_signed(tmp_path / "tls")
    port = unused_port()
    site = f"https://127.0.0.1:{port}"
    verifier = TokenVerifier(issuer.oidc_config())
    login, demo = demo_sign_in(issuer, verifier, site=site, cafile=cert)
    app = build_web_app(reader_factory=lambda: JsonlAuditReader([log_path]), verifier=verifier,
                        reviewer_groups=("auditors",), secure_cookies=True, oidc_login=login, demo_login=demo)
    server = WebServer(app, port=port, certfile=cert, keyfile=key)
    await server.start()
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        async with httpx.AsyncClient(base_url=site, verify=trust, follow_redirects=True, trust_env=False) as browser:
            chooser = await browser.get("/login?auto=1&next=%2Faudit")
            assert chooser.status_code == 200 and chooser.url.path == "/demo/authorize"
            form = next(form for form in re.findall(r"<form .*?</form>", chooser.text, flags=re.DOTALL)
                        if 'value="auditor"' in form)
            fields = {html.unescape(name): html.unescape(value)
                      for name, value in re.findall(r'name="([^"]+)" value="([^"]*)"', form)}
            signed_in = await browser.post("/demo/authorize", data=fields, headers={"origin": site})
            assert signed_in.status_code == 200 and signed_in.url.path == "/oidc/callback", signed_in.text
            page = await browser.get(continue_to(signed_in))
            assert page.status_code == 200 and "signed in as ali@example.com" in page.text
    finally:
        await server.stop()
