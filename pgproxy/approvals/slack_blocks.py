"""Slack Block Kit for approval requests: the message approvers see, its updates, and the deny form.

:func:`request_message` renders an :class:`~pgproxy.approvals.model.ApprovalRequest` in any state: while
pending it shows who asks, from where, on which database and role, the SQL (literals already redacted by
the caller), category, relations, the stated reason, the estimated impact, the deciding rule, what is
needed, the expiry time and Approve / Deny buttons whose ``value`` is the request id. Once decided
(approved, denied, expired, withdrawn) the buttons are gone and a status line says who decided and why.
:func:`deny_modal` is the form that asks a denier for a reason.

Much of the text comes from the requesting client (the SQL, application_name, the stated reason, even the
database name), so every piece of it is escaped for Slack's mrkdwn (``&``, ``<``, ``>``), which leaves no
way to write a mention (``<!channel>``, ``<@U…>``) or a link; text objects carrying it are ``verbatim``
so Slack does not auto-link bare URLs or names either, and runs of backticks cannot close the SQL code
block early. Every text is clipped to Slack's documented limits (3,000 characters for a section,
2,000 for a field, 150 for a header), counted in UTF-16 units after escaping, so a long statement never
makes Slack reject the message.

Pure: builds dictionaries; no I/O, no clock reads (times come from the request). It must not decide who
may vote (that is ``model``) nor talk to Slack (that is ``slack``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from pgproxy.approvals.model import ApprovalRequest, RequestState
from pgproxy.auth.identity import Identity

__all__ = [
    "APPROVE_ACTION",
    "DENY_ACTION",
    "DENY_CALLBACK",
    "REASON_ACTION",
    "REASON_BLOCK",
    "Block",
    "clip",
    "deny_modal",
    "escape",
    "fallback_text",
    "progress",
    "request_message",
]

Block = dict[str, Any]

APPROVE_ACTION = "pgproxy_approve"
DENY_ACTION = "pgproxy_deny"
DENY_CALLBACK = "pgproxy_deny_reason"  # the deny form's callback_id
REASON_BLOCK = "pgproxy_reason"  # the deny form's input block ...
REASON_ACTION = "pgproxy_reason_input"  # ... and its text input

SECTION_LIMIT = 3000
FIELD_LIMIT = 2000
HEADER_LIMIT = 150
MAX_REASON = 500  # characters a denier may type
_QUOTE_LINES = 20
_TRUNCATED = " … (truncated)"
_BACKTICK_RUN = re.compile(r"`(?=`)")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


# ---------------------------------------------------------------------------------------------
# Text


def escape(text: str) -> str:
    """Text safe inside mrkdwn: ``&``, ``<`` and ``>`` as entities, control characters dropped."""
    text = _CONTROL.sub("", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _units(text: str) -> int:
    """Length as Slack counts it at worst: UTF-16 code units."""
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def clip(text: str, limit: int) -> str:
    """``text`` escaped and cut to at most ``limit`` units, never inside an entity, marked when cut."""
    escaped = escape(text)
    if _units(escaped) <= limit:
        return escaped
    budget = limit - len(_TRUNCATED)
    kept: list[str] = []
    used = 0
    for char in _CONTROL.sub("", text):
        piece = escape(char)
        if used + _units(piece) > budget:
            break
        kept.append(piece)
        used += _units(piece)
    return "".join(kept) + _TRUNCATED


def _code_block(sql: str, limit: int) -> str:
    fence = "```"
    body = clip(sql.strip(), limit - 2 * len(fence) - 2)
    # A zero-width space between backticks: SQL cannot close the fence and format what follows.
    body = _BACKTICK_RUN.sub("`\u200b", body)
    return f"{fence}\n{body}\n{fence}"


def _quote(text: str, limit: int) -> str:
    """A block quote of at most ``_QUOTE_LINES`` lines (the rest joined into the last one)."""
    lines = text.strip().splitlines() or [""]
    if len(lines) > _QUOTE_LINES:
        lines = [*lines[: _QUOTE_LINES - 1], " ".join(lines[_QUOTE_LINES - 1 :])]
    quoted = clip("\n".join(lines), limit - _QUOTE_LINES).splitlines() or [""]
    return "\n".join(f">{line}" for line in quoted)


def _mrkdwn(text: str) -> Block:
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def _plain(text: str, limit: int = HEADER_LIMIT) -> Block:
    text = _CONTROL.sub("", text)
    if _units(text) > limit:
        while _units(text) > limit - 1:
            text = text[:-1]
        text += "…"
    return {"type": "plain_text", "text": text, "emoji": False}


def _field(label: str, value: str) -> Block:
    return _mrkdwn(f"*{label}*\n{clip(value, FIELD_LIMIT - len(label) - 3)}")


def _section(text: str) -> Block:
    return {"type": "section", "text": _mrkdwn(text)}


def _when(epoch: float) -> str:
    """A Slack date token (shown in the reader's time zone) with a UTC fallback."""
    fallback = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(epoch)}^{{date_short_pretty}} at {{time}}|{fallback}>"


def _person(identity: Identity) -> str:
    if identity.name and identity.email:
        return f"{identity.name} ({identity.email})"
    if identity.email:
        return identity.email
    return f"{identity.name or identity.subject} ({identity.issuer})"


def progress(request: ApprovalRequest) -> str:
    """E.g. ``1 of 2 approvals``."""
    quorum = request.requirement.quorum
    return f"{len(request.approvals)} of {quorum} approval{'' if quorum == 1 else 's'}"


# ---------------------------------------------------------------------------------------------
# The request message


def fallback_text(request: ApprovalRequest) -> str:
    """The notification text (shown where blocks are not): state, command and request id only.

    The top-level text of a message is not ``verbatim``, so it carries nothing the client chose.
    """
    what = f"{request.context.command} ({request.id})"
    if request.state is RequestState.PENDING:
        return clip(f"Approval needed: {what}", SECTION_LIMIT)
    return clip(f"{request.state.value.capitalize()}: {what}", SECTION_LIMIT)


def request_message(request: ApprovalRequest) -> list[Block]:
    """The blocks for ``request`` in its current state (buttons only while pending)."""
    context = request.context
    client = " · ".join(
        (context.client_address or "unknown address", context.application_name or "no application_name")
    )
    fields = [
        _field("Requested by", _person(request.requester)),
        _field("Client", client),
        _field("Database", context.database),
        _field("Upstream role", context.upstream_role or "the session's default"),
        _field("Category", f"{context.category} ({context.command})"),
        _field("Rule", context.rule_id),
        _field("Needs", request.requirement.describe()),
        _mrkdwn(f"*Expires*\n{_when(request.expires_at)}"),
    ]
    relations = ", ".join(context.relations) or "none named"
    blocks: list[Block] = [
        {"type": "header", "text": _plain(f"Approval needed: {context.command} ({request.id})")},
        _section(_status(request)),
        {"type": "section", "fields": fields},
        _section(f"*SQL* (literals redacted)\n{_code_block(context.sql, SECTION_LIMIT - 40)}"),
        _section(f"*Relations*\n{clip(relations, SECTION_LIMIT - 20)}"),
        _section(
            "*Stated reason* (the requester's own words)\n"
            + (_quote(context.stated_reason, SECTION_LIMIT - 60) if context.stated_reason else "_none given_")
        ),
        _section(f"*Estimated impact*\n{clip(context.impact or 'not estimated', SECTION_LIMIT - 30)}"),
        {
            "type": "context",
            "elements": [_mrkdwn(f"Request `{escape(request.id)}` · the requester cannot approve it")],
        },
    ]
    if request.state is RequestState.PENDING:
        blocks.append(_buttons(request.id))
    return blocks


def _status(request: ApprovalRequest) -> str:
    approvers = clip(", ".join(request.approvers), 1000)
    state = request.state
    if state is RequestState.PENDING:
        if not request.approvals:
            return f":hourglass_flowing_sand: *Waiting for approval* ({progress(request)})"
        return f":hourglass_flowing_sand: *Approved so far by* {approvers} ({progress(request)})"
    if state is RequestState.APPROVED:
        return f":white_check_mark: *Approved* by {approvers} ({progress(request)})"
    if state is RequestState.DENIED:
        denial = request.denial
        if denial is None:
            return ":no_entry: *Denied*"
        reason = _quote(denial.reason, SECTION_LIMIT - 300) if denial.reason else ">no reason given"
        return f":no_entry: *Denied* by {clip(_name(denial.voter), 200)}:\n{reason}"
    if state is RequestState.EXPIRED:
        return f":hourglass: *Expired* without a decision ({progress(request)})"
    return ":leftwards_arrow_with_hook: *Withdrawn*: the client went away before a decision"


def _name(identity: Identity) -> str:
    return identity.email or f"{identity.issuer}#{identity.subject}"


def _buttons(request_id: str) -> Block:
    return {
        "type": "actions",
        "elements": [
            {
                "type": "button",
                "action_id": APPROVE_ACTION,
                "text": _plain("Approve"),
                "style": "primary",
                "value": request_id,
                "confirm": {
                    "title": _plain("Approve this statement?"),
                    "text": _mrkdwn("It runs as soon as enough approvers agree."),
                    "confirm": _plain("Approve"),
                    "deny": _plain("Cancel"),
                },
            },
            {
                "type": "button",
                "action_id": DENY_ACTION,
                "text": _plain("Deny"),
                "style": "danger",
                "value": request_id,
            },
        ],
    }


# ---------------------------------------------------------------------------------------------
# The deny form


def deny_modal(request: ApprovalRequest, *, private_metadata: str) -> Block:
    """A modal asking for the reason of a denial; Slack returns ``private_metadata`` on submission."""
    context = request.context
    summary = f"Deny `{escape(request.id)}`: {clip(context.command, 100)} on {clip(context.database, 200)}"
    return {
        "type": "modal",
        "callback_id": DENY_CALLBACK,
        "private_metadata": private_metadata,
        "title": _plain("Deny request", 24),
        "submit": _plain("Deny", 24),
        "close": _plain("Cancel", 24),
        "blocks": [
            _section(summary),
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "label": _plain("Why is it denied?"),
                "hint": _plain("The requester's client receives this reason with the error."),
                "element": {
                    "type": "plain_text_input",
                    "action_id": REASON_ACTION,
                    "multiline": True,
                    "min_length": 1,
                    "max_length": MAX_REASON,
                },
            },
        ],
    }
