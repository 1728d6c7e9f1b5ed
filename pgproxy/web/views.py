"""The review pages' HTML: Jinja2 templates (``templates/``), their helpers, and the response headers.

Every template is rendered with autoescaping on and strict undefined variables: record values (statement
text, application names, error messages) are attacker-controlled and reach the page only as escaped
text — never as markup, attribute syntax or URLs (links to records are built here, each path segment
percent-encoded). The pages use no JavaScript; :class:`SecurityHeaders` sends a Content-Security-Policy
that permits none (and only this site's stylesheet, forms and frames of nobody), ``nosniff``,
``no-referrer`` and ``no-store`` (audit data stays out of caches) on every response.

This module renders what it is given: it must not read the audit log nor decide who may see it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pgproxy.audit import display
from pgproxy.audit.query import Entry
from pgproxy.audit.record import AuditRecord, Decision

HERE = Path(__file__).resolve().parent
STYLESHEET = (HERE / "static" / "review.css").read_text(encoding="utf-8")

_FIELDS = tuple(item.name for item in fields(AuditRecord) if item.init)
_HEADERS = (
    (b"content-security-policy", b"default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                                 b"frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
)

# (GET parameter, label, placeholder) of the filter form, in the order shown.
FILTER_FIELDS = (
    ("identity", "Identity", "subject or email"),
    ("from", "From (UTC)", "2024-05-01 or …T12:00:00Z"),
    ("to", "To (exclusive)", "2024-06-01"),
    ("database", "Database", ""),
    ("table", "Table", "accounts or public.accounts"),
    ("category", "Category", "read, write, ddl…"),
    ("decision", "Decision", ""),
    ("approver", "Approver", ""),
    ("text", "SQL contains", ""),
    ("rule", "Rule", ""),
    ("session", "Session", ""),
    ("kind", "Kinds", "statement,auth_failure…"),
)


def record_url(ident: str) -> str:
    return "/audit/records/" + quote(ident, safe="")


def page_url(path: str, params: dict[str, str]) -> str:
    return path + ("?" + urlencode(params) if params else "")


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def fields_of(record: AuditRecord) -> list[tuple[str, str]]:
    """``(name, value)`` of every set field, lists joined with ``, ``, in the record's field order."""
    shown = []
    for name in _FIELDS:
        value = getattr(record, name)
        if value is None or value in ((), ""):
            continue
        shown.append((name, ", ".join(value) if isinstance(value, tuple) else str(value)))
    return shown


_ENVIRONMENT = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENVIRONMENT.globals.update(
    record_url=record_url,
    short_time=display.short_time,
    identity_of=display.identity_of,
    outcome_summary=display.outcome_summary,
    what=display.what,
    summary_text=display.summary_text,
    cut=_cut,
    fields_of=fields_of,
    filter_fields=FILTER_FIELDS,
    decisions=tuple(decision.value for decision in Decision),
)


def render(template: str, *, status: int = 200, reviewer: Any = None, **context: Any) -> HTMLResponse:
    """``template`` rendered with ``context`` (``reviewer``: the signed-in Identity, shown in the header)."""
    html = _ENVIRONMENT.get_template(template).render(reviewer=reviewer, **context)
    return HTMLResponse(html, status_code=status)


def error_page(status: int, heading: str, message: str, *, reviewer: Any = None) -> HTMLResponse:
    return render("error.html", status=status, status_code=status, heading=heading, message=message,
                  reviewer=reviewer)


class SecurityHeaders:
    """ASGI middleware adding the security headers above to every HTTP response (streams included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in _HEADERS if name not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


def entry_dicts(entries: Sequence[Entry]) -> list[dict[str, Any]]:
    """Entries as JSON-ready dicts ``{"record": {...}, "outcomes": [...]}`` (the stored record JSON)."""
    return [json.loads(display.entry_json(entry)) for entry in entries]
