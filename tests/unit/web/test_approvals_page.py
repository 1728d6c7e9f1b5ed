"""The approvals pages and API over ASGI: real tokens from the fake IdP, votes counted by the model, refusals
with their reasons, CSRF protection of the forms, escaping of client-chosen text, and the JSON API."""

from __future__ import annotations

import builtins
import contextlib
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from pgproxy.approvals.model import ApprovalRequest, RequestContext, RequestState, Vote, VoteRefused
from pgproxy.audit.review import JsonlAuditReader
from pgproxy.auth.identity import Identity
from pgproxy.auth.oidc import TokenVerifier
from pgproxy.policy.engine import ApprovalRequirement
from pgproxy.policy.model import Approvers
from pgproxy.web.app import build_web_app
from pgproxy.web.approvals import csrf_token
from tests.support.fake_idp import FakeIdP

SITE = "https://pgproxy.example"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class MemoryDesk:
    """The approval desk in memory: the pure model decides every vote; a vote past the deadline expires it."""

    def __init__(self, *requests: ApprovalRequest) -> None:
        self.requests = {request.id: request for request in requests}

    async def list(self, states: Sequence[RequestState] | None = None,
                   limit: int = 100) -> builtins.list[ApprovalRequest]:
        chosen = [item for item in self.requests.values() if states is None or item.state in states]
        return sorted(chosen, key=lambda item: item.created_at, reverse=True)[:limit]

    async def get(self, request_id: str) -> ApprovalRequest | None:
        return self.requests.get(request_id)

    async def vote(self, request_id: str, vote: Vote) -> ApprovalRequest:
        if request_id not in self.requests:
            raise LookupError(request_id)
        request = self.requests[request_id]
        try:
            self.requests[request_id] = request.vote(vote)
        except VoteRefused:
            self.requests[request_id] = request.expire(vote.at)
            raise
        return self.requests[request_id]


def person(fake_idp: FakeIdP, subject: str, email: str | None, *groups: str, name: str | None = None) -> Identity:
    return Identity(subject=subject, issuer=fake_idp.issuer, email=email, name=name, groups=groups, expires_at=None)


def context(sql: str = "ALTER TABLE accounts ADD COLUMN note text", **changes: object) -> RequestContext:
    base = RequestContext(
        client_address="10.1.2.3", application_name="migrate-7", database="billing", upstream_role="app_owner",
        sql=sql, category="ddl", command="ALTER TABLE", relations=("public.accounts",), rule_id="ddl-needs-dba",
        stated_reason="add the note column for ticket 42", impact="ACCESS EXCLUSIVE lock; rewrites the table",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def requirement(quorum: int = 1, timeout: int = 900) -> ApprovalRequirement:
    return ApprovalRequirement(Approvers(groups=frozenset({"dba"})), quorum, timeout)


def sample_desk(fake_idp: FakeIdP, now: float) -> MemoryDesk:
    """apr-rotate (2 approvals needed), apr-xss, apr-self (asked by a DBA), apr-old (denied an hour ago)."""
    agent = person(fake_idp, "agent-7", "agent7@example.com", "ai-agents", name="Agent Seven")
    rotate = ApprovalRequest.open(agent, requirement(2), context(), now=now - 60, request_id="apr-rotate")
    hostile = context("UPDATE accounts SET note = $1 /* </pre><script>alert(1)</script> */", command="UPDATE",
                      stated_reason="<img src=x onerror=alert(2)> fixing a ticket", category="write",
                      application_name='"><script>alert(3)</script>')
    xss = ApprovalRequest.open(agent, requirement(), hostile, now=now - 30, request_id="apr-xss")
    dora = person(fake_idp, "dora", "dora@example.com", "dba")
    own = ApprovalRequest.open(dora, requirement(), context("DROP TABLE scratch", command="DROP TABLE"),
                               now=now - 10, request_id="apr-self")
    old = ApprovalRequest.open(agent, requirement(timeout=14_400), context("TRUNCATE audit_copy", command="TRUNCATE"),
                               now=now - 7200, request_id="apr-old")
    denier = person(fake_idp, "dba9", "dba9@example.com", "dba")
    old = old.vote(Vote(denier, False, now - 3600, reason="use a partition drop instead", channel="slack"))
    return MemoryDesk(rotate, xss, own, old)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def desk(fake_idp: FakeIdP, clock: Clock) -> MemoryDesk:
    return sample_desk(fake_idp, clock.now)


def make_app(fake_idp: FakeIdP, clock: Clock, desk: MemoryDesk | None, tmp_path: Path) -> FastAPI:
    return build_web_app(reader_factory=lambda: JsonlAuditReader([tmp_path / "audit.jsonl"]),
                         verifier=TokenVerifier(fake_idp.config(), clock=clock), reviewer_groups=("auditors",),
                         secure_cookies=True, approvals=desk, clock=clock)


@pytest.fixture
def app(fake_idp: FakeIdP, clock: Clock, desk: MemoryDesk, tmp_path: Path) -> FastAPI:
    return make_app(fake_idp, clock, desk, tmp_path)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=SITE) as http:
        yield http


def dba(fake_idp: FakeIdP, name: str) -> str:
    return fake_idp.mint(name, email=f"{name}@example.com", groups=["dba"])


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@contextlib.asynccontextmanager
async def browser(app: FastAPI, token: str) -> AsyncIterator[httpx.AsyncClient]:
    """A browser signed in through the login form (the token is in its cookie)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=SITE) as http:
        login = await http.post("/login", data={"token": token, "next": "/approvals"}, headers={"origin": SITE})
        assert login.status_code == 303 and login.headers["location"] == "/approvals", login.text
        yield http


async def form_csrf(http: httpx.AsyncClient, request_id: str) -> str:
    page = await http.get(f"/approvals/{request_id}")
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
    assert found is not None, page.text
    return found[1]


async def vote_form(http: httpx.AsyncClient, request_id: str, action: str, reason: str = "") -> httpx.Response:
    csrf = await form_csrf(http, request_id)
    return await http.post(f"/approvals/{request_id}/{action}", data={"csrf": csrf, "reason": reason},
                           headers={"origin": SITE})


async def test_signed_out_people_are_sent_to_sign_in_and_the_api_needs_a_bearer_token(
    client: httpx.AsyncClient, app: FastAPI, fake_idp: FakeIdP
) -> None:
    page = await client.get("/approvals")
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fapprovals"
    post = await client.post("/approvals/apr-rotate/approve", data={"csrf": "x"}, headers={"origin": SITE})
    assert post.status_code == 303 and post.headers["location"] == "/login?next=%2Fapprovals%2Fapr-rotate%2Fapprove"
    for path in ("/api/approvals", "/api/approvals/apr-rotate"):
        response = await client.get(path)
        assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
        assert "Bearer" in response.json()["error"]
    refused = await client.get("/api/approvals", headers=bearer(fake_idp.mint("dba1", expires_in=-120)))
    assert refused.status_code == 401 and refused.json()["error"] == "token refused: token expired"
    async with browser(app, dba(fake_idp, "dba1")) as http:
        cookie_only = await http.post("/api/approvals/apr-rotate/approve", json={})
        assert cookie_only.status_code == 401 and "Authorization: Bearer" in cookie_only.json()["error"]
        back = await http.get("/approvals/apr-rotate/approve")  # where the login form returns after such a POST
        assert back.status_code == 303 and back.headers["location"] == "/approvals/apr-rotate"


async def test_any_signed_in_person_may_look_while_the_audit_log_stays_for_reviewers(
    app: FastAPI, fake_idp: FakeIdP, tmp_path: Path, clock: Clock
) -> None:
    async with browser(app, fake_idp.mint("eve", email="eve@example.com", groups=["eng"])) as http:
        assert (await http.get("/approvals")).status_code == 200
        audit = await http.get("/audit")
        assert audit.status_code == 403 and "set-cookie" not in audit.headers  # still signed in for approvals
        assert "signed in as eve@example.com" in (await http.get("/approvals/apr-rotate")).text
    without = make_app(fake_idp, clock, None, tmp_path)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=without), base_url=SITE) as plain:
        token = dba(fake_idp, "dba1")
        assert (await plain.get("/api/approvals", headers=bearer(token))).status_code == 404
        login = await plain.post("/login", data={"token": token}, headers={"origin": SITE})
        assert login.status_code == 403 and "set-cookie" not in login.headers  # audit only: reviewers sign in


async def test_the_list_shows_pending_requests_first_with_their_whole_context(
    app: FastAPI, fake_idp: FakeIdP
) -> None:
    async with browser(app, dba(fake_idp, "dba1")) as http:
        page = await http.get("/approvals")
    text = page.text
    order = [text.index(marker) for marker in ("apr-self", "apr-xss", "apr-rotate", "Recently decided", "apr-old")]
    assert page.status_code == 200 and order == sorted(order)
    rotate = text[text.index("apr-rotate"):text.index("Recently decided")]
    for shown in (
        "Agent Seven (agent7@example.com)", "10.1.2.3", "migrate-7", "billing", "app_owner", "ddl (ALTER TABLE)",
        "ALTER TABLE accounts ADD COLUMN note text", "public.accounts", "add the note column for ticket 42",
        "ACCESS EXCLUSIVE lock; rewrites the table", "ddl-needs-dba", "0 of 2 approvals", "expires in 14 min",
        "2 approvals from different people from group dba", "none yet",
    ):
        assert shown in rotate, shown
    old = text[text.index("apr-old"):]
    assert "denied 1 h ago" in old
    assert "Denied by dba9@example.com" in old and "via slack" in old and "use a partition drop instead" in old


async def test_approvers_approve_until_the_quorum_is_reached(app: FastAPI, desk: MemoryDesk, fake_idp: FakeIdP,
                                                              clock: Clock) -> None:
    async with browser(app, dba(fake_idp, "dba1")) as first:
        detail = await first.get("/approvals/apr-rotate")
        assert all(f'action="/approvals/apr-rotate/{action}"' in detail.text for action in ("approve", "deny"))
        voted = await vote_form(first, "apr-rotate", "approve", "looks right")
        assert voted.status_code == 303 and voted.headers["location"] == "/approvals/apr-rotate"
        assert desk.requests["apr-rotate"].state is RequestState.PENDING
        again = await first.get("/approvals/apr-rotate")
        assert "1 of 2 approvals" in again.text and "You approved this request" in again.text
        assert "has already voted" in again.text and 'name="csrf"' not in again.text
    clock.now += 5
    async with browser(app, dba(fake_idp, "dba2")) as second:
        assert (await vote_form(second, "apr-rotate", "approve")).status_code == 303
    request = desk.requests["apr-rotate"]
    assert request.state is RequestState.APPROVED and request.decided_at == clock.now
    assert [(vote.voter.subject, vote.voter.issuer, vote.approve, vote.reason, vote.channel, vote.at)
            for vote in request.votes] == [("dba1", fake_idp.issuer, True, "looks right", "http", clock.now - 5),
                                           ("dba2", fake_idp.issuer, True, None, "http", clock.now)]


async def test_the_requester_and_non_approvers_are_refused_with_the_reason(
    app: FastAPI, desk: MemoryDesk, fake_idp: FakeIdP
) -> None:
    before = dict(desk.requests)
    async with browser(app, dba(fake_idp, "dora")) as dora:
        page = await dora.get("/approvals/apr-self")
        assert "You cannot vote on this request: nobody approves their own request" in page.text
        assert 'name="csrf"' not in page.text  # no forms for her own request
        own = await dora.post("/approvals/apr-self/approve", data={"csrf": csrf_token(dora.cookies["pgproxy_review"])},
                              headers={"origin": SITE})
        assert own.status_code == 403
        assert "your vote did not count: nobody approves their own request" in own.text
    async with browser(app, fake_idp.mint("eve", email="eve@example.com", groups=["eng"])) as eve:
        page = await eve.get("/approvals/apr-rotate")
        assert "You cannot vote on this request: eve@example.com is not an approver of request apr-rotate" in page.text
        csrf = csrf_token(eve.cookies["pgproxy_review"])
        refused = await eve.post("/approvals/apr-rotate/deny", data={"csrf": csrf, "reason": "no"},
                                 headers={"origin": SITE})
        assert refused.status_code == 403
        assert ("your vote did not count: eve@example.com is not an approver of request apr-rotate "
                "(2 approvals from different people from group dba)") in refused.text
    assert desk.requests == before


async def test_a_denial_needs_a_reason_which_the_page_then_shows(app: FastAPI, desk: MemoryDesk,
                                                                 fake_idp: FakeIdP) -> None:
    async with browser(app, dba(fake_idp, "dba1")) as http:
        for reason in ("", "   \n "):
            empty = await vote_form(http, "apr-rotate", "deny", reason)
            assert empty.status_code == 400 and "give a reason for the denial" in empty.text
        long = await vote_form(http, "apr-rotate", "deny", "x" * 501)
        assert long.status_code == 400 and "at most 500 characters" in long.text
        assert desk.requests["apr-rotate"].votes == ()
        denied = await vote_form(http, "apr-rotate", "deny", "  not during business hours  ")
        assert denied.status_code == 303
        page = await http.get("/approvals/apr-rotate")
    request = desk.requests["apr-rotate"]
    assert request.state is RequestState.DENIED
    assert request.denial is not None and request.denial.reason == "not during business hours"
    assert "Denied by dba1@example.com" in page.text and "not during business hours" in page.text
    assert "You denied this request" in page.text and 'name="csrf"' not in page.text


async def test_forms_from_other_sites_or_without_the_session_csrf_token_are_refused(
    app: FastAPI, desk: MemoryDesk, fake_idp: FakeIdP
) -> None:
    async with browser(app, dba(fake_idp, "dba1")) as http:
        csrf = await form_csrf(http, "apr-rotate")
        assert csrf == csrf_token(http.cookies["pgproxy_review"])
        forged = {
            "another origin": ({"csrf": csrf}, {"origin": "https://evil.example"}),
            "another referer": ({"csrf": csrf}, {"referer": "https://evil.example/page"}),
            "no csrf token": ({"reason": ""}, {"origin": SITE}),
            "no csrf token nor origin": ({"reason": ""}, {}),
            "a wrong token": ({"csrf": "0" * 64}, {"origin": SITE}),
            "another session's token": ({"csrf": csrf_token(dba(fake_idp, "dba2"))}, {"origin": SITE}),
        }
        for case, (data, headers) in forged.items():
            response = await http.post("/approvals/apr-rotate/approve", data=data, headers=headers)
            assert response.status_code == 403, case
            assert "refused: this form" in response.text, case
        as_json = await http.post("/approvals/apr-rotate/approve", json={"csrf": csrf}, headers={"origin": SITE})
        assert as_json.status_code == 400
        assert desk.requests["apr-rotate"].votes == ()
        ok = await http.post("/approvals/apr-rotate/approve", data={"csrf": csrf}, headers={"origin": SITE})
        assert ok.status_code == 303 and len(desk.requests["apr-rotate"].votes) == 1


async def test_client_chosen_text_is_escaped(app: FastAPI, desk: MemoryDesk, fake_idp: FakeIdP) -> None:
    async with browser(app, dba(fake_idp, "dba1")) as http:
        assert (await vote_form(http, "apr-xss", "deny", "</q><script>alert(4)</script>")).status_code == 303
        pages = [await http.get("/approvals"), await http.get("/approvals/apr-xss"),
                 await http.get("/approvals/%3Cscript%3Ealert(5)")]
    for page in pages:
        assert "<script>" not in page.text and "<img" not in page.text
        assert page.headers["content-security-policy"].startswith("default-src 'none'")
    listing, detail, missing = pages
    assert missing.status_code == 404 and "no approval request &#39;&lt;script&gt;alert(5)&#39;" in missing.text
    for text in (listing.text, detail.text):
        assert "/* &lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt; */" in text
        assert "&lt;img src=x onerror=alert(2)&gt; fixing a ticket" in text
        assert "&#34;&gt;&lt;script&gt;alert(3)&lt;/script&gt;" in text
        assert "&lt;/q&gt;&lt;script&gt;alert(4)&lt;/script&gt;" in text


async def test_a_vote_after_the_deadline_is_refused_and_expires_the_request(
    client: httpx.AsyncClient, desk: MemoryDesk, fake_idp: FakeIdP, clock: Clock
) -> None:
    clock.now += 900  # the request's deadline was 840 s away
    auth = bearer(fake_idp.mint("dba1", email="dba1@example.com", groups=["dba"], now=clock.now))
    detail = await client.get("/approvals/apr-rotate", headers=auth)
    assert "past its deadline by 1 min" in detail.text
    assert "You cannot vote on this request: request apr-rotate is past its deadline" in detail.text
    late = await client.post("/approvals/apr-rotate/approve", data={"reason": ""}, headers=auth)  # no csrf: bearer
    assert late.status_code == 403 and "request apr-rotate expired before the vote" in late.text
    assert desk.requests["apr-rotate"].state is RequestState.EXPIRED


async def test_the_api_lists_and_shows_requests_and_unknown_ones_are_404(
    client: httpx.AsyncClient, fake_idp: FakeIdP, clock: Clock
) -> None:
    auth = bearer(dba(fake_idp, "dba1"))
    pending = (await client.get("/api/approvals", headers=auth)).json()
    assert pending["now"] == clock.now
    assert [item["id"] for item in pending["requests"]] == ["apr-self", "apr-xss", "apr-rotate"]
    everything = (await client.get("/api/approvals?state=all&limit=10", headers=auth)).json()
    assert [item["id"] for item in everything["requests"]] == ["apr-self", "apr-xss", "apr-rotate", "apr-old"]
    assert [item["id"] for item in (await client.get("/api/approvals?state=all&limit=1", headers=auth)).json()[
        "requests"]] == ["apr-self"]
    rotate = (await client.get("/api/approvals/apr-rotate", headers=auth)).json()["request"]
    assert rotate["state"] == "pending" and rotate["approvals"] == 0 and rotate["votes"] == []
    assert rotate["requester"] == {"subject": "agent-7", "issuer": fake_idp.issuer, "email": "agent7@example.com",
                                   "name": "Agent Seven"}
    assert rotate["context"] == {**asdict(context()), "relations": ["public.accounts"]}
    assert rotate["requirement"] == {"needs": "2 approvals from different people from group dba", "quorum": 2,
                                     "timeout_seconds": 900}
    assert rotate["expires_at"] == clock.now - 60 + 900 and rotate["decided_at"] is None
    old = (await client.get("/api/approvals/apr-old", headers=auth)).json()["request"]
    assert old["state"] == "denied" and old["votes"][0]["reason"] == "use a partition drop instead"
    assert old["votes"][0]["channel"] == "slack" and old["votes"][0]["approve"] is False
    missing = await client.get("/api/approvals/apr-nothing", headers=auth)
    assert missing.status_code == 404 and missing.json() == {"error": "no approval request 'apr-nothing'"}
    for path in ("/approvals/apr-nothing", "/approvals/apr-rotate/other"):
        assert (await client.get(path, headers=auth)).status_code == 404, path
    vote = await client.post("/approvals/apr-nothing/approve", data={"reason": ""}, headers=auth)
    assert vote.status_code == 404 and "no approval request &#39;apr-nothing&#39;" in vote.text
    for query in ("state=approved", "limit=0", "limit=many", "limit=501"):
        assert (await client.get(f"/api/approvals?{query}", headers=auth)).status_code == 400, query


async def test_the_api_takes_votes_with_the_callers_identity(
    client: httpx.AsyncClient, desk: MemoryDesk, fake_idp: FakeIdP
) -> None:
    dba1, dba2 = bearer(dba(fake_idp, "dba1")), bearer(dba(fake_idp, "dba2"))
    first = await client.post("/api/approvals/apr-rotate/approve", headers=dba1)
    assert first.status_code == 200
    body = first.json()["request"]
    assert body["state"] == "pending" and body["approvals"] == 1 and body["votes"][0]["voter"]["subject"] == "dba1"
    twice = await client.post("/api/approvals/apr-rotate/approve", headers=dba1)
    assert twice.status_code == 403
    assert twice.json() == {"error": "dba1@example.com has already voted on request apr-rotate"}
    second = await client.post("/api/approvals/apr-rotate/approve", json={"reason": "ok"}, headers=dba2)
    assert second.json()["request"]["state"] == "approved"
    assert desk.requests["apr-rotate"].approvers == ("dba1@example.com", "dba2@example.com")
    bad_bodies = [
        (b"{}", "application/json", "give a reason for the denial"),
        (b'{"reason": 7}', "application/json", "reason must be a string"),
        (b'{"reason": "x", "approve": true}', "application/json", "must be a JSON object"),
        (b'["reason"]', "application/json", "must be a JSON object"),
        (b"{not json", "application/json", "not valid JSON"),
        (b"reason=x", "application/x-www-form-urlencoded", "as JSON"),
    ]
    for body, media_type, message in bad_bodies:
        headers = {**dba1, "content-type": media_type}
        response = await client.post("/api/approvals/apr-xss/deny", content=body, headers=headers)
        assert response.status_code == 400 and message in response.json()["error"], body
    dora = bearer(dba(fake_idp, "dora"))
    own = await client.post("/api/approvals/apr-self/deny", json={"reason": "mine"}, headers=dora)
    assert own.status_code == 403 and own.json() == {"error": "nobody approves their own request"}
    unknown = await client.post("/api/approvals/apr-nothing/deny", json={"reason": "x"}, headers=dba1)
    assert unknown.status_code == 404
    denied = await client.post("/api/approvals/apr-xss/deny", json={"reason": "not now"}, headers=dba1)
    assert denied.status_code == 200 and denied.json()["request"]["state"] == "denied"
    denial = desk.requests["apr-xss"].denial
    assert denial is not None and (denial.voter.subject, denial.reason, denial.channel) == ("dba1", "not now", "http")
