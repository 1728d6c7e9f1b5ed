"""The approvals pages and API: see what held statements wait for, and approve or deny them over HTTP.

:func:`add_approval_routes` adds to the web app (``build_web_app`` calls it when given an approval desk):

* ``GET /approvals`` — pending requests, then recently decided ones, each with everything an approver
  needs: who asks and from where, database and upstream role, the SQL (literals already redacted),
  category, relations, the stated reason, the estimated impact, the rule, what is needed, when it
  expires, and the votes so far;
* ``GET /approvals/{id}`` — one request with Approve and Deny forms (a denial needs a reason);
  ``POST /approvals/{id}/approve`` and ``POST /approvals/{id}/deny`` take those forms (a GET of either,
  where the login form returns to after such a POST found no session, leads back to the request);
* ``GET /api/approvals?state=pending|all&limit=N``, ``GET /api/approvals/{id}``,
  ``POST /api/approvals/{id}/approve`` and ``…/deny`` (JSON body ``{"reason": "…"}``) — the same as
  JSON, for ``pgproxy approvals`` and scripts; only with ``Authorization: Bearer``.

Anyone with a valid token may look (``auth`` checks the token, not groups); whose vote counts is the
approval model's decision (:meth:`ApprovalRequest.vote`: never the requester, only the policy's approvers,
once each). A vote is cast with the identity the token proves and ``channel="http"``; a refused vote is
403 with the model's reason, an unknown request 404.

Forms are protected against cross-site request forgery three ways: the cookie is ``SameSite=Strict``,
a POST whose ``Origin``/``Referer`` names another site is refused, and a cookie-authenticated POST must
carry a CSRF token, a MAC keyed with the signed-in token itself (:func:`csrf_token`), which only a
page served to that cookie's holder contains; it changes when the token does.

Request texts (SQL, stated reasons, application names, deny reasons) are chosen by clients and voters:
the templates escape them, and the API returns them as JSON strings. This module must not decide who
may vote, store requests itself, or keep tokens beyond the request.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from pgproxy.approvals.model import ApprovalRequest, RequestState, Vote, VoteRefused, same_person
from pgproxy.auth.identity import Identity
from pgproxy.web.auth import COOKIE, Denied, ReviewerAuth, same_origin
from pgproxy.web.views import error_page, render

__all__ = ["MAX_REASON", "ApprovalDesk", "add_approval_routes", "countdown", "csrf_token", "request_dict"]

MAX_REASON = 500  # characters of a vote's reason (the requester's client is shown a denial's reason)
RECENT_DECIDED = 25  # decided requests listed under the pending ones
DEFAULT_LIMIT, MAX_LIMIT = 100, 500
_MAX_BODY = 16 * 1024
_DECIDED = (RequestState.APPROVED, RequestState.DENIED, RequestState.EXPIRED, RequestState.WITHDRAWN)


class ApprovalDesk(Protocol):
    """What the pages need from the approval service: read requests, cast verified votes."""

    async def list(
        self, states: Sequence[RequestState] | None = None, limit: int = 100
    ) -> builtins.list[ApprovalRequest]:
        """Requests in ``states`` (None: all), newest first, at most ``limit``."""
        ...

    async def get(self, request_id: str) -> ApprovalRequest | None: ...

    async def vote(self, request_id: str, vote: Vote) -> ApprovalRequest:
        """The request after ``vote``; raises ``VoteRefused`` (with the reason) or ``LookupError`` (no such id)."""
        ...


# -- wording ------------------------------------------------------------------------------------------------


def span(seconds: float) -> str:
    """A duration for people: ``45 s``, ``14 min 32 s``, ``2 h 5 min``, ``3 d 4 h``."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"


def countdown(request: ApprovalRequest, now: float) -> str:
    """``expires in 14 min 32 s`` while pending; otherwise how long ago it was decided."""
    if request.state is RequestState.PENDING:
        left = request.expires_at - now
        return f"expires in {span(left)}" if left > 0 else f"past its deadline by {span(-left)}"
    decided = request.decided_at if request.decided_at is not None else request.expires_at
    return f"{request.state.value} {span(now - decided)} ago"


def utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def person(identity: Identity) -> str:
    """``Name (email)``, else the email, else ``subject (issuer)``."""
    if identity.email:
        return f"{identity.name} ({identity.email})" if identity.name else identity.email
    return f"{identity.name or identity.subject} ({identity.issuer})"


def progress(request: ApprovalRequest) -> str:
    quorum = request.requirement.quorum
    return f"{len(request.approvals)} of {quorum} approval{'' if quorum == 1 else 's'}"


def request_url(request_id: str, action: str = "") -> str:
    return "/approvals/" + quote(request_id, safe="") + (f"/{action}" if action else "")


# -- JSON ---------------------------------------------------------------------------------------------------


def _identity_dict(identity: Identity) -> dict[str, Any]:
    return {"subject": identity.subject, "issuer": identity.issuer, "email": identity.email, "name": identity.name}


def request_dict(request: ApprovalRequest) -> dict[str, Any]:
    """A request as the API returns it (times in seconds since the epoch; no channel bookkeeping)."""
    context = request.context
    return {
        "id": request.id,
        "state": request.state.value,
        "requester": _identity_dict(request.requester),
        "context": {
            "client_address": context.client_address,
            "application_name": context.application_name,
            "database": context.database,
            "upstream_role": context.upstream_role,
            "sql": context.sql,
            "category": context.category,
            "command": context.command,
            "relations": list(context.relations),
            "rule_id": context.rule_id,
            "stated_reason": context.stated_reason,
            "impact": context.impact,
        },
        "requirement": {
            "needs": request.requirement.describe(),
            "quorum": request.requirement.quorum,
            "timeout_seconds": request.requirement.timeout_seconds,
        },
        "approvals": len(request.approvals),
        "created_at": request.created_at,
        "expires_at": request.expires_at,
        "decided_at": request.decided_at,
        "votes": [
            {"voter": _identity_dict(vote.voter), "approve": vote.approve, "at": vote.at, "reason": vote.reason,
             "channel": vote.channel}
            for vote in request.votes
        ],
    }


# -- requests -----------------------------------------------------------------------------------------------


def csrf_token(session_token: str) -> str:
    """The CSRF token of a browser session: a MAC under the signed-in token (which only its holder knows)."""
    return hmac.new(session_token.encode(), b"pgproxy approvals form", hashlib.sha256).hexdigest()


async def _body(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_BODY:
            raise ValueError("request body too large")
    return body


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _form(request: Request) -> dict[str, str]:
    if _media_type(request) != "application/x-www-form-urlencoded":
        raise ValueError("expected a form (application/x-www-form-urlencoded)")
    fields = parse_qs((await _body(request)).decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=8)
    return {key: values[-1] for key, values in fields.items()}


async def _json_reason(request: Request) -> str | None:
    """The ``reason`` of an API vote's JSON body (an empty body has none); ValueError when malformed."""
    body = await _body(request)
    if not body.strip():
        return None
    if _media_type(request) != "application/json":
        raise ValueError("send the body as JSON (Content-Type: application/json)")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("the body is not valid JSON") from None
    if not isinstance(data, dict) or set(data) - {"reason"}:
        raise ValueError('the body must be a JSON object {"reason": "…"}')
    reason = data.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise ValueError("reason must be a string")
    return reason


def _reason(text: str | None, *, approve: bool) -> str | None:
    """The vote's reason, stripped; ValueError when a denial has none or it is too long."""
    reason = (text or "").strip() or None
    if reason is None and not approve:
        raise ValueError("give a reason for the denial: the requester is shown it")
    if reason is not None and len(reason) > MAX_REASON:
        raise ValueError(f"the reason is too long (at most {MAX_REASON} characters)")
    return reason


def _json_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _via_cookie(request: Request) -> bool:
    return "authorization" not in request.headers  # ReviewerAuth reads the header first


def add_approval_routes(
    app: FastAPI, *, desk: ApprovalDesk, auth: ReviewerAuth, clock: Callable[[], float] = time.time
) -> None:
    """Add the approvals pages and API to ``app``; ``auth`` must admit any verified identity."""

    def page(template: str, request: Request, viewer: Identity, *, status: int = 200, **context: Any) -> HTMLResponse:
        cookie = request.cookies.get(COOKIE) if _via_cookie(request) else None
        return render(template, status=status, reviewer=viewer, now=clock(), csrf=csrf_token(cookie) if cookie else "",
                      countdown=countdown, utc=utc, person=person, progress=progress, request_url=request_url,
                      **context)

    async def detail(request: Request, viewer: Identity, request_id: str, *, status: int = 200,
                     error: str | None = None) -> HTMLResponse:
        found = await desk.get(request_id)
        if found is None:
            return page("approval.html", request, viewer, status=404, item=None, request_id=request_id,
                        error=f"no approval request {request_id!r}", refusal=None, mine=None)
        mine = next((vote for vote in found.votes if same_person(vote.voter, viewer)), None)
        refusal = found.may_vote(viewer)
        if refusal is None and clock() >= found.expires_at:
            refusal = f"request {found.id} is past its deadline"
        return page("approval.html", request, viewer, status=status, item=found, request_id=request_id,
                    error=error, refusal=refusal, mine=mine)

    async def form_vote(request: Request, request_id: str, approve: bool) -> Response:
        viewer = await auth.authenticate(request)
        if not same_origin(request):
            return await detail(request, viewer, request_id, status=403,
                                error="refused: this form was sent from another site")
        try:
            form = await _form(request)
        except ValueError as exc:
            return await detail(request, viewer, request_id, status=400, error=str(exc))
        cookie = request.cookies.get(COOKIE, "") if _via_cookie(request) else None
        if cookie is not None and not hmac.compare_digest(form.get("csrf", ""), csrf_token(cookie)):
            return await detail(request, viewer, request_id, status=403,
                                error="refused: this form is not from your session; reload the page and try again")
        try:
            reason = _reason(form.get("reason"), approve=approve)
        except ValueError as exc:
            return await detail(request, viewer, request_id, status=400, error=str(exc))
        try:
            await desk.vote(request_id, Vote(viewer, approve, clock(), reason, channel="http"))
        except LookupError:
            return await detail(request, viewer, request_id, status=404)
        except VoteRefused as refused:
            return await detail(request, viewer, request_id, status=403,
                                error=f"your vote did not count: {refused.reason}")
        return RedirectResponse(request_url(request_id), status_code=303)

    async def api_viewer(request: Request) -> Identity:
        if _via_cookie(request):
            raise Denied(401, "the approvals API needs Authorization: Bearer <token>")
        return await auth.authenticate(request)

    async def api_vote(request: Request, request_id: str, approve: bool) -> Response:
        viewer = await api_viewer(request)
        try:
            reason = _reason(await _json_reason(request), approve=approve)
        except ValueError as exc:
            return _json_error(400, str(exc))
        now = clock()
        try:
            after = await desk.vote(request_id, Vote(viewer, approve, now, reason, channel="http"))
        except LookupError:
            return _json_error(404, f"no approval request {request_id!r}")
        except VoteRefused as refused:
            return _json_error(403, refused.reason)
        return JSONResponse({"now": now, "request": request_dict(after)})

    @app.get("/approvals")
    async def approvals_page(request: Request) -> Response:
        viewer = await auth.authenticate(request)
        pending = await desk.list([RequestState.PENDING], DEFAULT_LIMIT)
        decided = await desk.list(_DECIDED, RECENT_DECIDED)
        return page("approvals.html", request, viewer, pending=pending, decided=decided)

    @app.get("/approvals/{request_id}")
    async def approval_page(request: Request, request_id: str) -> Response:
        return await detail(request, await auth.authenticate(request), request_id)

    @app.get("/approvals/{request_id}/{action}")
    async def back_to_the_request(request_id: str, action: str) -> Response:
        # Where the login form returns to after a vote's POST found no session: the request's page.
        if action not in ("approve", "deny"):
            return error_page(404, "Not found", f"no such page: {action!r}")
        return RedirectResponse(request_url(request_id), status_code=303)

    @app.post("/approvals/{request_id}/approve")
    async def approve_form(request: Request, request_id: str) -> Response:
        return await form_vote(request, request_id, True)

    @app.post("/approvals/{request_id}/deny")
    async def deny_form(request: Request, request_id: str) -> Response:
        return await form_vote(request, request_id, False)

    @app.get("/api/approvals")
    async def approvals_api(request: Request) -> Response:
        await api_viewer(request)
        params = request.query_params
        state = params.get("state") or "pending"
        if state not in ("pending", "all"):
            return _json_error(400, f"state: {state!r} is not pending or all")
        text = params.get("limit") or str(DEFAULT_LIMIT)
        if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
            return _json_error(400, f"limit: {text!r} is not a number from 1 to {MAX_LIMIT}")
        now = clock()
        found = await desk.list([RequestState.PENDING] if state == "pending" else None, int(text))
        return JSONResponse({"now": now, "requests": [request_dict(item) for item in found]})

    @app.get("/api/approvals/{request_id}")
    async def approval_api(request: Request, request_id: str) -> Response:
        await api_viewer(request)
        now = clock()
        found = await desk.get(request_id)
        if found is None:
            return _json_error(404, f"no approval request {request_id!r}")
        return JSONResponse({"now": now, "request": request_dict(found)})

    @app.post("/api/approvals/{request_id}/approve")
    async def approve_api(request: Request, request_id: str) -> Response:
        return await api_vote(request, request_id, True)

    @app.post("/api/approvals/{request_id}/deny")
    async def deny_api(request: Request, request_id: str) -> Response:
        return await api_vote(request, request_id, False)
