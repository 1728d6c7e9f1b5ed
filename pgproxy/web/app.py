"""The audit review web app: a server-rendered page to search the log, record details, a JSON API, exports.

``build_web_app`` returns a FastAPI app serving, at the root of its listener:

* ``GET /audit`` — the log newest first, a filter form (the CLI's filters as GET parameters: ``identity``,
  ``from``, ``to``, ``database``, ``table``, ``category``, ``decision``, ``approver``, ``text``, ``kind``,
  ``session``, ``rule``), ``limit`` per page and a ``cursor`` for the next (older) page; each statement
  with its decision, rule and outcome;
* ``GET /audit/records/{id}`` — a record with its outcomes, statement and session, or a session's entries;
* ``GET /api/audit/records`` — the same listing as JSON: ``{"entries": [{"record", "outcomes"}], "next"}``
  (also ``order=oldest``); ``GET /api/audit/records/{id}`` — a detail as JSON;
* ``GET /api/audit/export?format=jsonl|csv&…`` — every matching record, streamed as a download;
* ``GET/POST /login`` (paste a token), ``POST /logout``; ``GET /audit/static/review.css``;
* given an ``OIDCLogin``, sign-in through the identity provider (``pgproxy.web.oidc_login``): the login
  page offers "Sign in with …", and ``GET /login?auto=1`` — or any ``GET /login`` when pasting is turned
  off (``paste_login=False``), except right after signing out — starts the flow; ``GET /oidc/callback``
  finishes it, sets the same cookie as the paste form and shows a page that continues to ``next`` (a
  plain redirect would arrive as part of the provider's cross-site navigation, without the
  ``SameSite=Strict`` cookie); given a ``DemoLogin``, also the demo issuer's endpoints
  (``pgproxy.web.demo_login``);
* given an approval desk, the approvals pages and API of ``pgproxy.web.approvals`` (``/approvals``,
  ``/api/approvals``), open to every signed-in person.

Every audit route needs a reviewer (``auth``): the API answers 401/403 with a JSON ``{"error": …}`` body,
the pages redirect to the login form (401) or say who is refused (403). A log that cannot be read is 503.
Filters that do not parse are 400 with the reason. With approvals, the login form accepts any valid token
(approvers need not be reviewers), and the audit pages still refuse non-reviewers one request at a time.

This module wires requests to a reader (``reader_factory()`` is called per request) and to templates; it
must not write to the audit log, hold tokens beyond the request, or render a value without escaping.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse

from pgproxy.audit.export import ExportFormat, encode
from pgproxy.audit.query import FILTER_KEYS, Cursor, Detail, Entry, RecordFilter, parse_filter
from pgproxy.audit.review import AuditReader, AuditSourceError
from pgproxy.auth.demo_issuer import DemoLogin
from pgproxy.web.approvals import ApprovalDesk, add_approval_routes
from pgproxy.web.auth import MAX_COOKIE_TOKEN, Denied, ReviewerAuth, Verifier, read_form, safe_next, same_origin
from pgproxy.web.demo_login import add_demo_login_routes
from pgproxy.web.oidc_login import CALLBACK_PATH, FLOW_COOKIE, OIDCLogin, SignInFailed
from pgproxy.web.views import STYLESHEET, SecurityHeaders, entry_dicts, error_page, page_url, render

PAGE_LIMIT, MAX_PAGE_LIMIT, MAX_API_LIMIT = 50, 500, 1000
_LOGIN_MESSAGES = {
    "expired": "Your sign-in has expired: sign in again.",
    "refused": "Your token is no longer accepted: sign in again.",
    "signed_out": "You are signed out.",
}


@dataclass(frozen=True, slots=True)
class _Listing:
    flt: RecordFilter
    limit: int
    cursor: Cursor | None
    newest_first: bool


def _listing(params: Mapping[str, str], max_limit: int) -> _Listing:
    flt = parse_filter({key: params.get(key) for key in FILTER_KEYS})
    text = params.get("limit") or str(PAGE_LIMIT)
    if not text.isdigit() or not 1 <= int(text) <= max_limit:
        raise ValueError(f"limit: {text!r} is not a number from 1 to {max_limit}")
    cursor = Cursor.parse(params["cursor"]) if params.get("cursor") else None
    order = params.get("order") or "newest"
    if order not in ("newest", "oldest"):
        raise ValueError(f"order: {order!r} is not newest or oldest")
    return _Listing(flt, int(text), cursor, order == "newest")


async def _page(reader: AuditReader, listing: _Listing) -> tuple[list[Entry], Cursor | None]:
    """One page of entries and, when more follow, the cursor of the page's last entry."""
    entries = await reader.search(
        listing.flt, limit=listing.limit + 1, newest_first=listing.newest_first, start_after=listing.cursor
    )
    if len(entries) <= listing.limit:
        return entries, None
    entries = entries[: listing.limit]
    return entries, Cursor.of(entries[-1].record)


def _detail_dict(detail: Detail) -> dict[str, Any]:
    def record(value: Any) -> Any:
        return None if value is None else entry_dicts([Entry(value)])[0]["record"]

    return {
        "record": record(detail.record),
        "outcomes": [record(outcome) for outcome in detail.outcomes],
        "intent": record(detail.intent),
        "session": entry_dicts(detail.session),
        "truncated": detail.truncated,
    }


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _json_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def build_web_app(
    *,
    reader_factory: Callable[[], AuditReader],
    verifier: Verifier,
    reviewer_groups: Sequence[str],
    secure_cookies: bool,
    approvals: ApprovalDesk | None = None,
    oidc_login: OIDCLogin | None = None,
    paste_login: bool = True,
    demo_login: DemoLogin | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The review app; ``verifier`` checks tokens (a ``TokenVerifier``), ``reviewer_groups`` may review.

    ``approvals``: also serve the approvals pages and API over this desk, to any signed-in person.
    ``oidc_login``: also sign people in through the identity provider (its verifier must accept the
    client id as an audience); ``paste_login=False`` (only with ``oidc_login``) removes the paste form.
    ``demo_login``: serve the demo issuer's login form and token endpoint (``pgproxy demo`` only).
    """
    if not paste_login and oidc_login is None:
        raise ValueError("with paste_login off, give oidc_login: people need a way to sign in")
    auth = ReviewerAuth(verifier, reviewer_groups, secure_cookies=secure_cookies, clock=clock)
    signed_in = ReviewerAuth(verifier, None, secure_cookies=secure_cookies, clock=clock)
    sign_in = auth if approvals is None else signed_in  # who the login form lets in
    app = FastAPI(title="pgproxy audit review", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(Denied)
    async def denied(request: Request, exc: Denied) -> Response:
        response: Response
        if _is_api(request):
            response = _json_error(exc.status, exc.reason)
            if exc.status == 401:
                response.headers["www-authenticate"] = 'Bearer realm="pgproxy audit"'
        elif exc.status == 401:
            back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            reason = {"expired": "1"} if exc.expired else {"refused": "1"} if exc.from_cookie else {}
            response = RedirectResponse(page_url("/login", {"next": back, **reason}), status_code=303)
        else:
            heading = "Not a reviewer" if exc.status == 403 else "Unavailable"
            response = error_page(exc.status, heading, exc.reason)
        if exc.from_cookie and (exc.status == 401 or (exc.status == 403 and approvals is None)):
            auth.clear_cookie(response)  # a non-reviewer's cookie still serves the approvals pages
        return response

    @app.exception_handler(AuditSourceError)
    async def unreadable(request: Request, exc: AuditSourceError) -> Response:
        message = f"the audit log cannot be read: {exc}"
        return _json_error(503, message) if _is_api(request) else error_page(503, "Audit log unavailable", message)

    @app.get("/audit/static/review.css", include_in_schema=False)
    async def stylesheet() -> Response:
        return Response(STYLESHEET, media_type="text/css; charset=utf-8")

    @app.get("/")
    async def home() -> Response:
        return RedirectResponse("/audit", status_code=303)

    def login_page(status: int, message: str | None, target: str) -> Response:
        start = page_url("/login", {"auto": "1", "next": target})
        return render("login.html", status=status, message=message, next=target, paste=paste_login,
                      provider=None if oidc_login is None else oidc_login.name, provider_url=start)

    def sign_in_failed(status: int, message: str) -> Response:
        return render("error.html", status=status, status_code=status, heading="Sign-in failed", message=message,
                      reviewer=None, retry="/login?auto=1")

    @app.get("/login")
    async def login_form(request: Request) -> Response:
        params = request.query_params
        target = safe_next(params.get("next"))
        if oidc_login is not None and not params.get("signed_out") and (params.get("auto") or not paste_login):
            try:
                started = await oidc_login.start(target)
            except SignInFailed as exc:
                return sign_in_failed(exc.status, exc.reason)
            response = RedirectResponse(started.location, status_code=303)
            oidc_login.set_flow_cookie(response, started.flow_cookie, secure=secure_cookies)
            return response
        message = next((text for key, text in _LOGIN_MESSAGES.items() if params.get(key)), None)
        return login_page(200, message, target)

    @app.post("/login")
    async def login(request: Request) -> Response:
        if not paste_login:
            return error_page(404, "Not found", "pasting a token is turned off: sign in through the identity provider")
        if not same_origin(request):
            return error_page(403, "Refused", "this form was sent from another site")
        try:
            form = await read_form(request)
        except ValueError as exc:
            return error_page(400, "Bad request", str(exc))
        token, target = form.get("token", "").strip(), safe_next(form.get("next"))
        if not token:
            return login_page(401, "Paste a token to sign in.", target)
        if len(token) > MAX_COOKIE_TOKEN:
            message = "This token is too large for a browser cookie; use the API with Authorization: Bearer."
            return login_page(400, message, target)
        try:
            identity = await sign_in.check(token)
        except Denied as exc:
            if exc.status == 401:
                return login_page(401, exc.reason, target)
            return error_page(exc.status, "Not a reviewer" if exc.status == 403 else "Unavailable", exc.reason)
        response = RedirectResponse(target, status_code=303)
        auth.set_cookie(response, token, identity)
        return response

    @app.get(CALLBACK_PATH)
    async def oidc_callback(request: Request) -> Response:
        if oidc_login is None:
            return error_page(404, "Not found", "sign-in through an identity provider is not configured")
        response: Response
        try:
            signed = await oidc_login.finish(request.query_params, request.cookies.get(FLOW_COOKIE))
            if len(signed.token) > MAX_COOKIE_TOKEN:
                raise SignInFailed(400, "the ID token is too large for a browser cookie; use the API instead")
            identity = sign_in.admit(signed.identity)
        except SignInFailed as exc:
            response = sign_in_failed(exc.status, exc.reason)
        except Denied as exc:
            response = error_page(exc.status, "Not a reviewer", exc.reason)
        else:
            response = render("signed_in.html", reviewer=identity, next=signed.next)
            auth.set_cookie(response, signed.token, identity)
        oidc_login.clear_flow_cookie(response, secure=secure_cookies)  # single use, whatever happened
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        if not same_origin(request):
            return error_page(403, "Refused", "this form was sent from another site")
        response = RedirectResponse("/login" if oidc_login is None else "/login?signed_out=1", status_code=303)
        auth.clear_cookie(response)
        return response

    @app.get("/audit")
    async def audit_page(request: Request) -> Response:
        reviewer = await auth.authenticate(request)
        params = request.query_params
        values = {key: params[key] for key in FILTER_KEYS if params.get(key)}
        context: dict[str, Any] = {"values": values, "max_limit": MAX_PAGE_LIMIT, "limit": PAGE_LIMIT,
                                   "entries": [], "first_page": None, "next_page": None,
                                   "export_csv": page_url("/api/audit/export", {"format": "csv", **values}),
                                   "export_jsonl": page_url("/api/audit/export", {"format": "jsonl", **values})}
        try:
            listing = _listing(params, MAX_PAGE_LIMIT)
        except ValueError as exc:
            return render("list.html", status=400, reviewer=reviewer, error=str(exc), **context)
        entries, more = await _page(reader_factory(), listing)
        kept = {**listing.flt.to_params(), "limit": str(listing.limit)}
        context.update(entries=entries, limit=listing.limit)
        if more is not None:
            context["next_page"] = page_url("/audit", {**kept, "cursor": str(more)})
        if listing.cursor is not None:
            context["first_page"] = page_url("/audit", kept)
        return render("list.html", reviewer=reviewer, error=None, **context)

    @app.get("/audit/records/{ident:path}")
    async def record_page(request: Request, ident: str) -> Response:
        reviewer = await auth.authenticate(request)
        detail = await reader_factory().show(ident)
        if detail is None:
            return error_page(404, "Not found", f"no audit record or session {ident!r}", reviewer=reviewer)
        search = page_url("/audit", {"session": ident})
        return render("detail.html", reviewer=reviewer, ident=ident, detail=detail, session_search=search)

    @app.get("/api/audit/records")
    async def records_api(request: Request) -> Response:
        await auth.authenticate(request)
        try:
            listing = _listing(request.query_params, MAX_API_LIMIT)
        except ValueError as exc:
            return _json_error(400, str(exc))
        entries, more = await _page(reader_factory(), listing)
        return JSONResponse({"entries": entry_dicts(entries), "next": None if more is None else str(more)})

    @app.get("/api/audit/records/{ident:path}")
    async def record_api(request: Request, ident: str) -> Response:
        await auth.authenticate(request)
        detail = await reader_factory().show(ident)
        if detail is None:
            return _json_error(404, f"no audit record or session {ident!r}")
        return JSONResponse(_detail_dict(detail))

    @app.get("/api/audit/export")
    async def export_api(request: Request) -> Response:
        await auth.authenticate(request)
        try:
            fmt = ExportFormat(request.query_params.get("format") or "jsonl")
            flt = parse_filter({key: request.query_params.get(key) for key in FILTER_KEYS})
        except ValueError as exc:
            return _json_error(400, str(exc))
        chunks = encode(reader_factory().export(flt), fmt)
        first = await anext(chunks, b"")  # a log that cannot be read fails here, before the response starts

        async def body() -> AsyncIterator[bytes]:
            yield first
            async for chunk in chunks:
                yield chunk

        disposition = f'attachment; filename="pgproxy-audit.{fmt.value}"'
        return StreamingResponse(body(), media_type=fmt.media_type, headers={"content-disposition": disposition})

    if approvals is not None:
        add_approval_routes(app, desk=approvals, auth=signed_in, clock=clock)
    if demo_login is not None:
        add_demo_login_routes(app, demo_login)
    return app

