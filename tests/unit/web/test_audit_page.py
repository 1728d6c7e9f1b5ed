"""The audit review app over ASGI: reviewer authentication with real tokens, listing, escaping, exports."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from pgproxy.audit import AuditRecord, verify
from pgproxy.audit.review import JsonlAuditReader
from pgproxy.auth.oidc import TokenVerifier
from pgproxy.web.app import build_web_app
from tests.support.fake_idp import FakeIdP
from tests.unit.audit.factories import XSS, review_log, sealed_chain

REVIEWERS = ("auditors", "security")
SITE = "https://review.example"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    path.write_text("".join(record.to_json() + "\n" for record in sealed_chain(review_log())), encoding="utf-8")
    return path


@pytest.fixture
def stored(log_path: Path) -> bytes:
    return log_path.read_bytes()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_app(fake_idp: FakeIdP, clock: Clock, *paths: Path) -> FastAPI:
    return build_web_app(
        reader_factory=lambda: JsonlAuditReader(paths),
        verifier=TokenVerifier(fake_idp.config(), clock=clock),
        reviewer_groups=REVIEWERS,
        secure_cookies=True,
    )


@pytest.fixture
async def client(fake_idp: FakeIdP, clock: Clock, log_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(fake_idp, clock, log_path))
    async with httpx.AsyncClient(transport=transport, base_url=SITE) as http:
        yield http


@pytest.fixture
def reviewer(fake_idp: FakeIdP) -> str:
    return fake_idp.mint("rita", email="rita@example.com", groups=["eng", "security"])


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def sign_in(client: httpx.AsyncClient, token: str, target: str = "/audit") -> httpx.Response:
    return await client.post("/login", data={"token": token, "next": target}, headers={"origin": SITE})


def record_ids(body: dict[str, object]) -> list[str]:
    entries = body["entries"]
    assert isinstance(entries, list)
    return [entry["record"]["record_id"] for entry in entries]


# -- who may see the log -----------------------------------------------------------------------------------


async def test_without_a_token_the_api_is_401_and_pages_send_to_the_login_form(client: httpx.AsyncClient) -> None:
    for path in ("/api/audit/records", "/api/audit/records/ada-read", "/api/audit/export?format=csv"):
        response = await client.get(path)
        assert response.status_code == 401
        assert response.json()["error"].startswith("sign in with a token")
        assert response.headers["www-authenticate"].startswith("Bearer")
    page = await client.get("/audit?identity=ada@example.com")
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=%2Faudit%3Fidentity%3Dada%40example.com"
    form = await client.get(page.headers["location"])
    assert form.status_code == 200 and 'name="token"' in form.text
    assert 'value="/audit?identity=ada@example.com"' in form.text


async def test_refused_tokens_are_401_with_the_reason(client: httpx.AsyncClient, fake_idp: FakeIdP) -> None:
    tokens = {
        "unknown signing key": fake_idp.mint_with_unknown_key("rita", groups=["auditors"]),
        "algorithm 'none' not allowed": fake_idp.mint_alg_none("rita", groups=["auditors"]),
        "token expired": fake_idp.mint("rita", groups=["auditors"], expires_in=-120),
        "aud": fake_idp.mint("rita", groups=["auditors"], aud="another-service"),
        "malformed": "not-a-jwt",
    }
    for reason, token in tokens.items():
        response = await client.get("/api/audit/records", headers=bearer(token))
        assert response.status_code == 401, reason
        assert reason in response.json()["error"]
    basic = await client.get("/api/audit/records", headers={"authorization": "Basic cml0YTpwdw=="})
    assert basic.status_code == 401 and "Bearer" in basic.json()["error"]


async def test_people_outside_the_reviewer_groups_are_403(client: httpx.AsyncClient, fake_idp: FakeIdP) -> None:
    outsider = fake_idp.mint("eve", email="eve@example.com", groups=["eng", "auditors-readonly"])
    api = await client.get("/api/audit/records", headers=bearer(outsider))
    assert api.status_code == 403
    assert api.json() == {"error": "eve@example.com is not in a reviewer group of this audit log"}
    page = await client.get("/audit", headers=bearer(outsider))
    assert page.status_code == 403 and "not in a reviewer group" in page.text and "ada@example.com" not in page.text
    login = await sign_in(client, outsider)
    assert login.status_code == 403 and "set-cookie" not in login.headers
    nobody = build_web_app(reader_factory=lambda: JsonlAuditReader(["x"]), verifier=TokenVerifier(fake_idp.config()),
                           reviewer_groups=(), secure_cookies=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=nobody), base_url=SITE) as http:
        token = fake_idp.mint("root", groups=["admin", "auditors"])
        assert (await http.get("/api/audit/records", headers=bearer(token))).status_code == 403


async def test_login_keeps_the_token_in_a_strict_cookie_and_shows_the_log(
    client: httpx.AsyncClient, reviewer: str
) -> None:
    login = await sign_in(client, reviewer, "/audit?database=app")
    assert login.status_code == 303 and login.headers["location"] == "/audit?database=app"
    cookie = login.headers["set-cookie"]
    assert cookie.startswith(f"pgproxy_review={reviewer};")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "secure", "path", "max-age", "samesite"} <= attributes
    assert "samesite=strict" in cookie.lower()
    max_age = int(cookie.lower().split("max-age=")[1].split(";")[0])
    assert 250 < max_age <= 300  # the token's remaining lifetime
    page = await client.get(login.headers["location"])
    assert page.status_code == 200
    assert "signed in as rita@example.com" in page.text
    assert "DELETE FROM accounts" in page.text and "ERROR 42501" in page.text and "no-deletes" in page.text
    assert "no outcome recorded" in page.text  # ada-sleep is still running
    assert "billing.invoices" not in page.text  # filtered to database app
    assert 'name="database" value="app"' in page.text


async def test_an_expired_cookie_sends_the_reviewer_back_to_login(
    client: httpx.AsyncClient, reviewer: str, clock: Clock
) -> None:
    await sign_in(client, reviewer)
    assert (await client.get("/audit")).status_code == 200
    clock.now += 400  # the token lived 300 s; the verifier allows 30 s of clock skew
    page = await client.get("/audit/records/ada-read")
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=%2Faudit%2Frecords%2Fada-read&expired=1"
    assert "pgproxy_review=" in page.headers["set-cookie"] and "max-age=0" in page.headers["set-cookie"].lower()
    assert "has expired" in (await client.get(page.headers["location"])).text
    assert (await client.get("/api/audit/records")).status_code == 401  # the cookie is gone


async def test_logout_clears_the_cookie_and_forms_from_other_sites_are_refused(
    client: httpx.AsyncClient, reviewer: str
) -> None:
    forged = await client.post("/login", data={"token": reviewer}, headers={"origin": "https://evil.example"})
    assert forged.status_code == 403 and "set-cookie" not in forged.headers
    await sign_in(client, reviewer)
    assert (await client.post("/logout", headers={"origin": "https://evil.example"})).status_code == 403
    assert (await client.get("/api/audit/records")).status_code == 200
    out = await client.post("/logout", headers={"origin": SITE})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert (await client.get("/api/audit/records")).status_code == 401


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:x"])
async def test_login_only_redirects_within_the_site(client: httpx.AsyncClient, reviewer: str, target: str) -> None:
    response = await sign_in(client, reviewer, target)
    assert response.status_code == 303 and response.headers["location"] == "/audit"


# -- what reviewers see ------------------------------------------------------------------------------------


async def test_the_api_filters_pages_and_joins_outcomes(client: httpx.AsyncClient, reviewer: str) -> None:
    auth = bearer(reviewer)
    body = (await client.get("/api/audit/records?identity=ada@example.com&kind=statement", headers=auth)).json()
    assert record_ids(body) == ["ada-sleep", "ada-delete", "ada-read"] and body["next"] is None
    delete = body["entries"][1]
    assert delete["record"]["decision"] == "deny" and delete["outcomes"][0]["sqlstate"] == "42501"
    seen: list[str] = []
    query = "/api/audit/records?limit=3&order=oldest"
    while True:
        page = (await client.get(query, headers=auth)).json()
        seen += record_ids(page)
        if page["next"] is None:
            break
        query = "/api/audit/records?" + str(httpx.QueryParams({"limit": 3, "order": "oldest", "cursor": page["next"]}))
    assert seen == [
        "ada-start", "ada-read", "ada-delete", "bob-start", "bob-alter", "bob-xss", "mallory-failed", "ada-sleep",
        "bob-end", "ada-end",
    ]
    held = (await client.get("/api/audit/records?approver=carol@example.com&table=invoices", headers=auth)).json()
    assert record_ids(held) == ["bob-alter"]


async def test_record_text_and_reflected_filters_are_escaped(client: httpx.AsyncClient, reviewer: str) -> None:
    await sign_in(client, reviewer)
    for path in ("/audit", "/audit/records/bob-xss", "/audit/records/s-bob", '/audit?text="><script>alert(2)</script>'):
        page = await client.get(path)
        assert page.status_code == 200, path
        assert "<script>" not in page.text, path
        assert page.headers["content-security-policy"].startswith("default-src 'none'")
        assert page.headers["x-content-type-options"] == "nosniff" and page.headers["cache-control"] == "no-store"
    detail = await client.get("/audit/records/bob-xss")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in detail.text
    assert "&#34;http://evil.example&#34;" in detail.text or "&quot;http://evil.example&quot;" in detail.text
    reflected = await client.get('/audit?text="><script>alert(2)</script>')
    assert 'value="&#34;&gt;&lt;script&gt;alert(2)&lt;/script&gt;"' in reflected.text


async def test_details_of_a_record_and_a_session(client: httpx.AsyncClient, reviewer: str) -> None:
    auth = bearer(reviewer)
    detail = (await client.get("/api/audit/records/bob-alter", headers=auth)).json()
    assert detail["record"]["approvers"] == ["carol@example.com", "Dave@example.com"]
    assert [o["record_id"] for o in detail["outcomes"]] == ["bob-alter-done"]
    assert [e["record"]["record_id"] for e in detail["session"]] == ["bob-start", "bob-end"]
    session = (await client.get("/api/audit/records/s-ada", headers=auth)).json()
    assert session["record"] is None and len(session["session"]) == 5
    missing = await client.get("/api/audit/records/nothing-here", headers=auth)
    assert missing.status_code == 404 and "nothing-here" in missing.json()["error"]
    page = await client.get("/audit/records/ada-delete-done", headers=auth)
    assert page.status_code == 200 and "DELETE FROM accounts" in page.text and "42501" in page.text
    assert (await client.get("/audit/records/nothing-here", headers=auth)).status_code == 404


async def test_exports_download_as_csv_and_as_jsonl_that_verifies(
    client: httpx.AsyncClient, reviewer: str, stored: bytes
) -> None:
    auth = bearer(reviewer)
    csv_download = await client.get("/api/audit/export?format=csv&identity=BOB@example.com", headers=auth)
    assert csv_download.status_code == 200
    assert csv_download.headers["content-type"].startswith("text/csv")
    assert csv_download.headers["content-disposition"] == 'attachment; filename="pgproxy-audit.csv"'
    rows = list(csv.DictReader(io.StringIO(csv_download.text, newline="")))
    assert [row["record_id"] for row in rows] == ["bob-start", "bob-alter", "bob-xss", "bob-xss-done", "bob-alter-done"]
    assert rows[0]["application_name"].startswith("'=")
    assert rows[2]["text"] == XSS
    whole = await client.get("/api/audit/export", headers=auth)
    assert whole.status_code == 200 and whole.content == stored
    records = [AuditRecord.from_json(line) for line in whole.content.splitlines()]
    assert verify(records).ok


async def test_bad_filters_are_400_and_an_unreadable_log_is_503(
    client: httpx.AsyncClient, reviewer: str, fake_idp: FakeIdP, clock: Clock, tmp_path: Path
) -> None:
    auth = bearer(reviewer)
    bad = await client.get("/api/audit/records?from=yesterday", headers=auth)
    assert bad.status_code == 400 and bad.json()["error"].startswith("from: invalid time 'yesterday'")
    assert (await client.get("/api/audit/records?limit=0", headers=auth)).status_code == 400
    assert (await client.get("/api/audit/records?cursor=nope", headers=auth)).status_code == 400
    assert (await client.get("/api/audit/export?format=xml", headers=auth)).status_code == 400
    page = await client.get("/audit?decision=maybe", headers=auth)
    assert page.status_code == 400 and "is not one of allow, deny, require_approval" in page.text
    broken = make_app(fake_idp, clock, tmp_path / "gone.jsonl")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=broken), base_url=SITE) as http:
        for path in ("/api/audit/records", "/api/audit/export?format=csv"):
            response = await http.get(path, headers=auth)
            assert response.status_code == 503 and "gone.jsonl: no such file" in response.json()["error"]
        assert (await http.get("/audit", headers=auth)).status_code == 503


async def test_the_json_bodies_are_the_stored_records(client: httpx.AsyncClient, reviewer: str, stored: bytes) -> None:
    by_id = {json.loads(line)["record_id"]: json.loads(line) for line in stored.splitlines()}
    body = (await client.get("/api/audit/records?limit=100", headers=bearer(reviewer))).json()
    assert len(body["entries"]) == 10
    for entry in body["entries"]:
        assert entry["record"] == by_id[entry["record"]["record_id"]]
        assert entry["outcomes"] == [by_id[outcome["record_id"]] for outcome in entry["outcomes"]]
