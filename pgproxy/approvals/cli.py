"""`pgproxy approvals list|show|approve|deny`: an approver's terminal client for pgproxy's approvals HTTP API.

It talks to ``/api/approvals`` (``pgproxy.web.approvals``) under ``--url`` or ``$PGPROXY_APPROVALS_URL`` (the
web listener's base URL, or the approvals page's URL ending in ``/approvals``) with the approver's own
OIDC token as ``Authorization: Bearer``, read from ``--token-file FILE`` (``-`` for stdin) or
``$PGPROXY_TOKEN``. There is no flag taking the token itself: command lines are visible to every user
of the machine (``ps``, ``/proc/*/cmdline``) and end up in shell history. The token is sent
only over HTTPS with the server's certificate verified (the system's trust store, or only the CA in
``--cacert FILE``), or over plain HTTP to a loopback address.

Each command returns report text and an exit code, as ``pgproxy.audit.tooling`` does: 0 done (or
something listed); 1 nothing pending, no such request, or a vote that did not count (with the reason);
2 a usage error, an unreachable server, a certificate or token that is refused, or an unexpected answer.
Printing and argument parsing stay in ``pgproxy.cli``.

Request texts (SQL, stated reasons, names) come from clients and voters: everything printed goes through
``pgproxy.audit.display.safe``, so no escape sequence reaches the terminal. This module must not decide
who may vote (the server does), nor write the token anywhere.
"""

from __future__ import annotations

import json
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, urlsplit

import httpx

from pgproxy.audit.display import one_line, safe
from pgproxy.dsn import is_loopback_host
from pgproxy.reporting import Report

ENV_URL, ENV_TOKEN = "PGPROXY_APPROVALS_URL", "PGPROXY_TOKEN"
TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the API is and how to reach it (the token is left out of ``repr``)."""

    url: str
    token: str = field(repr=False)
    verify: ssl.SSLContext


def endpoint(
    url: str | None,
    token_file: Path | None,
    cacert: Path | None,
    environ: Mapping[str, str],
    stdin: TextIO = sys.stdin,
) -> Endpoint:
    """The API endpoint from the options and the environment; ``ValueError`` (a usage error) when unusable."""
    url = (url or environ.get(ENV_URL) or "").strip().rstrip("/")
    if not url:
        raise ValueError(f"no approvals URL: give --url https://HOST:PORT (or set {ENV_URL})")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the approvals URL must be https://HOST[:PORT], not {url!r}")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname.lower()):
        raise ValueError("refusing to send a token over plain HTTP to another machine: use an https:// URL")
    if parts.query or parts.fragment:
        raise ValueError("the approvals URL takes no query or fragment")
    if parts.path.endswith("/approvals"):  # the page's address, as the server's approvals_url setting names it
        url = url.removesuffix("/approvals")
    if token_file is not None:
        try:
            token = stdin.read() if str(token_file) == "-" else token_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read the token file {token_file}: {exc.strerror}") from None
    else:
        token = environ.get(ENV_TOKEN, "")
    token = token.strip()
    if not token:
        raise ValueError(f"no token: give --token-file FILE (or set {ENV_TOKEN}) with your OIDC token")
    if any(char.isspace() for char in token):
        raise ValueError("the token must be one line without spaces (an OIDC token as your provider issued it)")
    try:
        verify = ssl.create_default_context(cafile=None if cacert is None else str(cacert))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the CA certificates in {cacert}: {exc}") from None
    return Endpoint(url, token, verify)


class _Failed(Exception):
    def __init__(self, report: Report) -> None:
        super().__init__(report.text)
        self.report = report


async def _call(where: Endpoint, method: str, path: str, *, params: dict[str, str] | None = None,
                body: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON answer of one API call; raises :class:`_Failed` with the report for anything but 200."""
    headers = {"authorization": f"Bearer {where.token}", "accept": "application/json"}
    try:
        async with httpx.AsyncClient(verify=where.verify, timeout=TIMEOUT_SECONDS, follow_redirects=False) as http:
            response = await http.request(method, where.url + path, params=params, json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise _Failed(Report(f"pgproxy: cannot reach {where.url}: {safe(str(exc)) or type(exc).__name__}", 2)) from None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise _Failed(Report(f"pgproxy: {where.url} answered HTTP {response.status_code} without a JSON object "
                             "(is it pgproxy's web listener with approvals enabled?)", 2))
    if response.status_code == 200:
        return answer
    error = safe(str(answer.get("error", "")))
    if response.status_code == 401:
        raise _Failed(Report(f"pgproxy: the server refused the token: {error}", 2))
    if response.status_code == 403 and method == "POST":
        raise _Failed(Report(f"your vote did not count: {error}", 1))
    if response.status_code == 404:
        raise _Failed(Report(error or f"not found: {path}", 1))
    raise _Failed(Report(f"pgproxy: HTTP {response.status_code}: {error}", 2))


def _request_path(request_id: str, action: str = "") -> str:
    return "/api/approvals/" + quote(request_id, safe="") + (f"/{action}" if action else "")


# -- wording ------------------------------------------------------------------------------------------------


def span(seconds: float) -> str:
    """A duration for people: ``45 s``, ``14 min 32 s``, ``2 h 5 min``, ``3 d 4 h``."""
    days, rest = divmod(max(0, int(seconds)), 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    for big, big_unit, small, small_unit in ((days, "d", hours, "h"), (hours, "h", minutes, "min"),
                                             (minutes, "min", secs, "s")):
        if big:
            return f"{big} {big_unit} {small} {small_unit}" if small else f"{big} {big_unit}"
    return f"{secs} s"


def _when(request: Mapping[str, Any], now: float) -> str:
    if request["state"] == "pending":
        left = float(request["expires_at"]) - now
        return f"expires in {span(left)}" if left > 0 else f"past its deadline by {span(-left)}"
    decided = request.get("decided_at") or request["expires_at"]
    return f"{request['state']} {span(now - float(decided))} ago"


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _person(who: Mapping[str, Any]) -> str:
    if who.get("email"):
        return f"{who['name']} <{who['email']}>" if who.get("name") else str(who["email"])
    return f"{who.get('name') or who['subject']} ({who['issuer']})"


def _progress(request: Mapping[str, Any]) -> str:
    quorum = int(request["requirement"]["quorum"])
    return f"{request['approvals']} of {quorum} approval{'' if quorum == 1 else 's'}"


def _table(requests: list[dict[str, Any]], now: float, width: int) -> str:
    headers = ("ID", "STATE", "REQUESTED BY", "DATABASE", "WHAT", "APPROVALS", "WHEN", "SQL")
    rows = [
        (
            safe(item["id"]), item["state"], one_line(_person(item["requester"]), 40),
            one_line(item["context"]["database"], 24), one_line(item["context"]["command"], 24), _progress(item),
            _when(item, now), one_line(item["context"]["sql"], width),
        )
        for item in requests
    ]
    widths = [max(len(row[column]) for row in [headers, *rows]) for column in range(len(headers) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(widths[column]) for column, cell in enumerate(row[:-1])) + "  " + row[-1]
        for row in [headers, *rows]
    )


def _indented(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + safe(line) for line in (text.splitlines() or [""]))


def describe(request: Mapping[str, Any], now: float) -> str:
    """Everything about one request, for a terminal."""
    context = request["context"]
    lines = [
        f"request {safe(request['id'])}: {request['state']}, {_progress(request)}, {_when(request, now)}",
        f"requested by:   {safe(_person(request['requester']))}",
        f"client:         {safe(context.get('client_address') or 'unknown address')}, "
        f"application_name {safe(context.get('application_name') or '(not set)')}",
        f"database:       {safe(context['database'])} as {safe(context.get('upstream_role') or 'the default role')}",
        f"statement:      {safe(context['category'])} ({safe(context['command'])}), rule {safe(context['rule_id'])}",
        f"relations:      {safe(', '.join(context['relations']) or 'none named')}",
        f"needs:          {safe(request['requirement']['needs'])} (never the requester)",
        f"requested at:   {_utc(float(request['created_at']))}",
        f"expires at:     {_utc(float(request['expires_at']))}",
        f"impact:         {safe(context.get('impact') or 'not estimated')}",
        "stated reason:" + ("\n" + _indented(context["stated_reason"]) if context.get("stated_reason") else " none"),
        "sql (literals redacted):",
        _indented(context["sql"]),
        "votes:" + ("" if request["votes"] else " none yet"),
    ]
    for vote in request["votes"]:
        verb = "approved" if vote["approve"] else "denied"
        lines.append(f"  {verb} by {safe(_person(vote['voter']))} at {_utc(float(vote['at']))} via "
                     f"{safe(vote['channel'])}" + (":" if vote.get("reason") else ""))
        if vote.get("reason"):
            lines.append(_indented(vote["reason"]))
    return "\n".join(lines)


# -- the commands -------------------------------------------------------------------------------------------


async def list_requests(where: Endpoint, *, state: str = "pending", as_json: bool = False,
                        limit: int = 100, text_width: int = 60) -> Report:
    """Pending (or all) requests, newest first; exit 1 when there are none."""
    try:
        answer = await _call(where, "GET", "/api/approvals", params={"state": state, "limit": str(limit)})
    except _Failed as failed:
        return failed.report
    requests = answer["requests"]
    if as_json:
        return Report("\n".join(json.dumps(item, ensure_ascii=False) for item in requests), 0 if requests else 1)
    if not requests:
        return Report("no pending approval requests" if state == "pending" else "no approval requests", 1)
    return Report(_table(requests, float(answer["now"]), text_width), 0)


async def show(where: Endpoint, request_id: str, *, as_json: bool = False) -> Report:
    """One request with its whole context and votes; exit 1 when unknown."""
    try:
        answer = await _call(where, "GET", _request_path(request_id))
    except _Failed as failed:
        return failed.report
    if as_json:
        return Report(json.dumps(answer["request"], ensure_ascii=False), 0)
    return Report(describe(answer["request"], float(answer["now"])), 0)


async def vote(where: Endpoint, request_id: str, *, approve: bool, reason: str | None = None) -> Report:
    """Approve or deny (a denial needs a reason) as the token's holder; exit 1 when the vote does not count."""
    if not approve and not (reason or "").strip():
        return Report("pgproxy: give --reason TEXT: the requester is shown why it was denied", 2)
    body = {"reason": reason} if reason else None
    try:
        answer = await _call(where, "POST", _request_path(request_id, "approve" if approve else "deny"), body=body)
    except _Failed as failed:
        return failed.report
    request = answer["request"]
    counted = "your approval counted" if approve else "your denial counted"
    if request["state"] == "pending":
        outcome = f"still pending ({_progress(request)}; {_when(request, float(answer['now']))})"
    else:
        outcome = f"now {request['state']} ({_progress(request)})"
    return Report(f"{counted}: request {safe(request['id'])} is {outcome}", 0)
