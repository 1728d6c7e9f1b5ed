"""The Slack channel for approvals: post and update request messages, and take votes from button clicks.

:class:`SlackChannel` posts a request with ``chat.postMessage`` (the returned ``ts`` is the caller's to
keep in ``request.extra[SLACK_TS]``) and rewrites it with ``chat.update`` as votes arrive. It also handles
Slack's interactivity requests (:meth:`~SlackChannel.handle_interaction`), in this order, before
anything counts:

1. the request signature and timestamp are checked with slack_sdk's ``SignatureVerifier`` (HMAC-SHA256
   of ``v0:{timestamp}:{body}`` with the app's signing secret, compared in constant time; older or newer
   than five minutes is refused): failures answer 401;
2. the clicking Slack user is looked up with ``users.info`` (cached for ``user_ttl`` seconds); deleted
   users, bots and apps, guests, users of another workspace (when ``team_id`` is set), users without a
   confirmed email, and emails the ``directory`` does not know are refused;
3. Approve casts an approval through ``cast``; Deny opens a form (``views.open``) asking for a reason,
   and the form's submission casts the denial.

Votes are applied by the ``cast`` callback (the store), whose :class:`~pgproxy.approvals.model.VoteRefused`
is shown only to the clicker, as an ephemeral message (or as an error inside the deny form). On success
the message is updated to show the outcome. A failed update or ephemeral reply is logged and does not
undo a vote.

This module must not decide who may vote (``model`` and the store do, with the identity verified here)
nor hold requests itself; it must not trust anything in a payload whose signature did not verify.
Socket Mode delivers payloads without signatures; it calls :meth:`~SlackChannel.handle_payload`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qs

from slack_sdk.errors import SlackApiError
from slack_sdk.signature import Clock, SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from pgproxy.approvals.model import ApprovalRequest, Vote, VoteRefused
from pgproxy.approvals.slack_blocks import (
    APPROVE_ACTION,
    DENY_ACTION,
    DENY_CALLBACK,
    REASON_ACTION,
    REASON_BLOCK,
    deny_modal,
    escape,
    fallback_text,
    request_message,
)
from pgproxy.auth.identity import Identity

__all__ = [
    "SLACK_CHANNEL",
    "SLACK_TS",
    "Cast",
    "Directory",
    "InteractionResult",
    "Load",
    "Outcome",
    "SlackChannel",
]

log = logging.getLogger(__name__)

_USER_CACHE_SIZE = 1024  # entries; expired ones are dropped when it is reached

SLACK_TS = "slack_ts"  # request.extra key of the message's ts
SLACK_CHANNEL = "slack_channel"  # request.extra key of the channel id, when not the configured one

Cast = Callable[[str, Vote], Awaitable[ApprovalRequest]]  # applies a vote, raises VoteRefused
Load = Callable[[str], Awaitable[ApprovalRequest | None]]  # the current request, None when unknown
Directory = Callable[[str], Identity | None]  # verified email (lower-cased) → the identity rules match


class Outcome(StrEnum):
    BAD_SIGNATURE = "bad-signature"  # 401: forged, stale or unsigned
    MALFORMED = "malformed"  # 400: signed, but not an interaction payload
    IGNORED = "ignored"  # 200: not one of ours
    REFUSED = "refused"  # 200: the clicker was told why their vote did not count
    FORM_OPENED = "form-opened"  # 200: the deny form is open
    FORM_ERROR = "form-error"  # 200 with response_action errors: shown inside the deny form
    VOTED = "voted"  # 200: the vote counted


@dataclass(frozen=True, slots=True)
class InteractionResult:
    """How to answer Slack: ``status``, and ``body`` as JSON (None: an empty body), plus what happened."""

    status: int
    outcome: Outcome
    body: dict[str, Any] | None = None
    request: ApprovalRequest | None = None  # after the vote, when one counted
    reason: str | None = None  # why it was refused

    @property
    def content(self) -> bytes:
        return b"" if self.body is None else json.dumps(self.body).encode()

    @property
    def content_type(self) -> str:
        return "text/plain" if self.body is None else "application/json"


class _At(Clock):
    """The verifier's clock, fixed at the time the caller passes."""

    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


@dataclass(frozen=True, slots=True)
class _SlackUser:
    email: str | None
    refusal: str | None
    fetched_at: float


class SlackChannel:
    """Posts requests to one channel (an id such as ``C0123456789``) and takes votes from it."""

    def __init__(
        self,
        client: AsyncWebClient,
        *,
        channel_id: str,
        signing_secret: str,
        directory: Directory,
        cast: Cast,
        load: Load,
        team_id: str | None = None,
        user_ttl: float = 300.0,
    ) -> None:
        self._client = client
        self._channel_id = channel_id
        self._signing_secret = signing_secret
        SignatureVerifier(signing_secret)  # refuses an empty secret now rather than at the first click
        self._directory = directory
        self._cast = cast
        self._load = load
        self._team_id = team_id
        self._user_ttl = user_ttl
        self._users: dict[str, _SlackUser] = {}

    # -- messages -------------------------------------------------------------------------------
    async def post(self, request: ApprovalRequest) -> str:
        """Post ``request`` to the channel; returns the message ``ts`` (keep it as ``extra[SLACK_TS]``)."""
        response = await self._client.chat_postMessage(
            channel=self._channel_id,
            text=fallback_text(request),
            blocks=request_message(request),
            unfurl_links=False,
            unfurl_media=False,
        )
        return str(response["ts"])

    async def update(self, request: ApprovalRequest) -> None:
        """Rewrite the request's message for its current state; raises KeyError without ``extra[SLACK_TS]``."""
        await self._rewrite(request, request.extra.get(SLACK_CHANNEL, self._channel_id), request.extra[SLACK_TS])

    async def _rewrite(self, request: ApprovalRequest, channel: str, ts: str) -> None:
        await self._client.chat_update(
            channel=channel, ts=ts, text=fallback_text(request), blocks=request_message(request)
        )

    # -- interactivity --------------------------------------------------------------------------
    async def handle_interaction(self, body: bytes, headers: Mapping[str, str], now: float) -> InteractionResult:
        """Answer one request to the interactivity URL (``body`` as received, form-encoded)."""
        verifier = SignatureVerifier(self._signing_secret, clock=_At(now))
        try:
            valid = verifier.is_valid_request(body, headers)
        except (ValueError, UnicodeDecodeError):  # a timestamp that is no integer, a body that is no UTF-8
            valid = False
        if not valid:
            return InteractionResult(401, Outcome.BAD_SIGNATURE, reason="invalid Slack signature")
        try:
            payload = json.loads(parse_qs(body.decode("utf-8"), strict_parsing=True)["payload"][0])
        except (ValueError, KeyError):
            payload = None
        if not isinstance(payload, dict):
            return InteractionResult(400, Outcome.MALFORMED, reason="no interaction payload")
        return await self.handle_payload(payload, now)

    async def handle_payload(self, payload: Mapping[str, Any], now: float) -> InteractionResult:
        """Act on an interaction payload whose origin is already authenticated (signature or Socket Mode)."""
        try:
            interaction = _parse(payload, self._channel_id)
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            log.warning("malformed Slack interaction payload: %r", error)
            return InteractionResult(400, Outcome.MALFORMED, reason="malformed interaction payload")
        if interaction is None:
            return InteractionResult(200, Outcome.IGNORED)
        if interaction.reason is not None:
            return await self._on_deny_form(interaction, interaction.reason, now)
        return await self._on_click(interaction, now)

    async def _on_click(self, click: _Interaction, now: float) -> InteractionResult:
        voter = await self._identify(click.user_id, now)
        if isinstance(voter, str):
            return await self._refuse(click, voter)
        if click.approve:
            vote = Vote(voter=voter, approve=True, at=now, channel="slack")
            try:
                request = await self._cast(click.request_id, vote)
            except VoteRefused as refused:
                return await self._refuse(click, refused.reason)
            await self._show(request, click)
            return InteractionResult(200, Outcome.VOTED, request=request)

        # Deny: check now, so that nobody fills in a form for a vote that cannot count.
        current = await self._load(click.request_id)
        if current is None:
            return await self._refuse(click, f"request {click.request_id} is unknown")
        problem = current.may_vote(voter)
        if problem is None and now >= current.expires_at:
            problem = f"request {click.request_id} has expired"
        if problem is not None:
            return await self._refuse(click, problem)
        metadata = json.dumps({"request": click.request_id, "channel": click.channel, "ts": click.ts})
        try:
            await self._client.views_open(
                trigger_id=click.trigger_id, view=deny_modal(current, private_metadata=metadata)
            )
        except SlackApiError as error:
            log.warning("could not open the deny form for %s: %s", click.request_id, error.response.get("error"))
            return await self._refuse(click, "the deny form could not be opened; try again")
        return InteractionResult(200, Outcome.FORM_OPENED)

    async def _on_deny_form(self, form: _Interaction, reason: str, now: float) -> InteractionResult:
        if not reason:
            return _form_error("give a reason: the requester sees it")
        voter = await self._identify(form.user_id, now)
        if isinstance(voter, str):
            return _form_error(voter)
        vote = Vote(voter=voter, approve=False, at=now, reason=reason, channel="slack")
        try:
            request = await self._cast(form.request_id, vote)
        except VoteRefused as refused:
            return _form_error(refused.reason)
        await self._show(request, form)
        return InteractionResult(200, Outcome.VOTED, request=request)

    # -- helpers --------------------------------------------------------------------------------
    async def _identify(self, user_id: str, now: float) -> Identity | str:
        """The identity behind a Slack user, or why there is none (worded for that user)."""
        user = self._users.get(user_id)
        if user is None or now - user.fetched_at >= self._user_ttl or now < user.fetched_at:
            try:
                response = await self._client.users_info(user=user_id)
            except SlackApiError as error:  # not cached: it may be transient
                log.warning("users.info failed for %s: %s", user_id, error.response.get("error"))
                return "your Slack account could not be looked up; try again"
            user = self._judge(response.get("user") or {}, now)
            if len(self._users) >= _USER_CACHE_SIZE:
                self._users = {key: kept for key, kept in self._users.items() if now - kept.fetched_at < self._user_ttl}
            self._users[user_id] = user
        if user.refusal is not None or user.email is None:
            return user.refusal or "your Slack account has no email address"
        identity = self._directory(user.email.lower())
        if identity is None:
            return f"{user.email} is not known to pgproxy as an approver"
        return identity

    def _judge(self, user: Mapping[str, Any], now: float) -> _SlackUser:
        profile = user.get("profile") or {}
        email = profile.get("email")
        refusal = None
        if user.get("deleted"):
            refusal = "deactivated Slack accounts cannot vote"
        elif user.get("is_bot") or user.get("is_app_user"):
            refusal = "bots and apps cannot vote"
        elif user.get("is_restricted") or user.get("is_ultra_restricted") or user.get("is_stranger"):
            refusal = "guest and external Slack accounts cannot vote"
        elif self._team_id is not None and user.get("team_id") != self._team_id:
            refusal = "only members of the approvers' Slack workspace can vote"
        elif not isinstance(email, str) or not email:
            refusal = "your Slack account shows pgproxy no email address (scope users:read.email)"
        elif user.get("is_email_confirmed") is False:
            refusal = "your Slack email address is not confirmed"
        return _SlackUser(email if isinstance(email, str) and email else None, refusal, now)

    async def _refuse(self, click: _Interaction, reason: str) -> InteractionResult:
        text = f"Your vote on {escape(click.request_id)} did not count: {escape(reason)}"
        try:
            await self._client.chat_postEphemeral(channel=click.channel, user=click.user_id, text=text)
        except SlackApiError as error:
            log.warning("could not tell %s why their vote was refused: %s", click.user_id, error.response.get("error"))
        return InteractionResult(200, Outcome.REFUSED, reason=reason)

    async def _show(self, request: ApprovalRequest, interaction: _Interaction) -> None:
        ts = request.extra.get(SLACK_TS) or interaction.ts
        if not ts:
            log.warning("no Slack message to update for %s", request.id)
            return
        try:
            await self._rewrite(request, request.extra.get(SLACK_CHANNEL, interaction.channel), ts)
        except SlackApiError as error:
            log.warning("could not update the Slack message of %s: %s", request.id, error.response.get("error"))


@dataclass(frozen=True, slots=True)
class _Interaction:
    """What pgproxy reads from a button click or a deny form submission."""

    request_id: str
    user_id: str
    channel: str
    ts: str | None  # the request's message
    approve: bool
    trigger_id: str = ""  # clicks: for opening the deny form
    reason: str | None = None  # deny form submissions: the reason typed (maybe empty)


def _parse(payload: Mapping[str, Any], default_channel: str) -> _Interaction | None:
    """The click or submission in ``payload``; None when it is not one of pgproxy's; raises when malformed."""
    kind = payload.get("type")
    if kind == "block_actions":
        action = next((a for a in payload["actions"] if a.get("action_id") in (APPROVE_ACTION, DENY_ACTION)), None)
        if action is None:
            return None
        ts = (payload.get("container") or {}).get("message_ts") or (payload.get("message") or {}).get("ts")
        return _Interaction(
            request_id=str(action["value"]),
            user_id=str(payload["user"]["id"]),
            channel=str((payload.get("channel") or {}).get("id") or default_channel),
            ts=str(ts) if ts else None,
            approve=action["action_id"] == APPROVE_ACTION,
            trigger_id=str(payload["trigger_id"]),
        )
    view = payload.get("view")
    if kind == "view_submission" and isinstance(view, dict) and view.get("callback_id") == DENY_CALLBACK:
        metadata = json.loads(view["private_metadata"])
        reason = view["state"]["values"][REASON_BLOCK][REASON_ACTION].get("value") or ""
        return _Interaction(
            request_id=str(metadata["request"]),
            user_id=str(payload["user"]["id"]),
            channel=str(metadata.get("channel") or default_channel),
            ts=str(metadata["ts"]) if metadata.get("ts") else None,
            approve=False,
            reason=str(reason).strip(),
        )
    return None


def _form_error(message: str) -> InteractionResult:
    """Keep the deny form open with ``message`` under the reason field."""
    body = {"response_action": "errors", "errors": {REASON_BLOCK: message[:500]}}
    return InteractionResult(200, Outcome.FORM_ERROR, body=body, reason=message)
