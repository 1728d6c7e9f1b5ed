"""Slack's interactivity Request URL on pgproxy's web listener: ``POST /slack/interactions``.

:func:`add_slack_routes` adds the route to the app ``pgproxy.web.app.build_web_app`` built. Slack sends
each button click and deny-form submission there, form-encoded and signed with the app's signing
secret. The route hands the raw body and the headers, untouched, to
:meth:`~pgproxy.approvals.slack.SlackChannel.handle_interaction`, which checks the signature and the
timestamp before reading anything, and answers with the channel's result as it is: 401 for a forged,
stale or unsigned request, 400 for a signed request that holds no interaction, 200 otherwise (with a
JSON body when the deny form must show an error). The route needs no login: Slack's signature is the
authentication, so it takes no cookie and no token.

Bodies are read up to ``max_body`` bytes (Slack's interaction payloads are far smaller): a larger one is
answered 413 without being read further, so nobody can make pgproxy buffer an unbounded request before
the signature is checked. A failure while handling an interaction (the approval store or Slack
unreachable) is logged and answered 500: Slack then shows the clicker an error.

This module must not interpret payloads, check signatures itself or decide anything about votes (the
channel does); it must not log bodies or headers, which carry the signature.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fastapi import FastAPI, Request, Response

from pgproxy.approvals.slack import SlackChannel

__all__ = ["MAX_INTERACTION_BODY", "SLACK_INTERACTIONS_PATH", "add_slack_routes"]

log = logging.getLogger(__name__)

SLACK_INTERACTIONS_PATH = "/slack/interactions"
MAX_INTERACTION_BODY = 1024 * 1024  # bytes


class _TooLarge(Exception):
    pass


async def _body(request: Request, limit: int) -> bytes:
    """The raw request body, refused (``_TooLarge``) beyond ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def add_slack_routes(
    app: FastAPI,
    channel: SlackChannel,
    *,
    clock: Callable[[], float] = time.time,
    max_body: int = MAX_INTERACTION_BODY,
) -> None:
    """Add ``POST /slack/interactions``, answered by ``channel`` (``clock`` checks the request's age)."""

    @app.post(SLACK_INTERACTIONS_PATH, include_in_schema=False)
    async def slack_interactions(request: Request) -> Response:
        try:
            body = await _body(request, max_body)
        except _TooLarge:
            return Response(b"", status_code=413, media_type="text/plain")
        try:
            result = await channel.handle_interaction(body, request.headers, clock())
        except Exception as error:  # the vote was not counted; Slack tells the clicker it failed
            log.error("Slack interaction failed: %s: %s", type(error).__name__, error)
            return Response(b"", status_code=500, media_type="text/plain")
        if result.status != 200:
            log.info("Slack interaction refused (%d): %s", result.status, result.reason)
        return Response(result.content, status_code=result.status, media_type=result.content_type)
