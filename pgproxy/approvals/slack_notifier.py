"""Slack in a running pgproxy: post each request this replica opens, keep its message current, take clicks.

:class:`SlackNotifier` listens to the approval service (``ApprovalService.on_change``). A newly opened
request is posted to the channel (``SlackChannel.post``) and the message's ``ts`` is kept in the
request's ``extra`` (``ApprovalService.set_extra``), so whichever replica later counts a vote, expires
or withdraws the request can rewrite that message (``SlackChannel.update``): approvers see "approved by
…", "denied by …: reason", "expired" or "withdrawn", and the buttons go away. The changes of one request
are handled one after another, in the order they were made (an update waits for the post), each with the
request as it is *now* in the store, so a late update never shows an older state. A request decided on
another replica while its message was being posted is rewritten at once.

Every Slack call runs in a task of its own, and a failure (Slack unreachable, a refused token, a missing
channel) is only logged: the held client still waits, and the request can still be decided through the
other channels (the review page, the API, the CLI). :meth:`~SlackNotifier.stop` lets calls in flight
finish briefly, then cancels them.

:class:`SocketModeService` keeps a :class:`~pgproxy.approvals.slack_socket.SlackSocketRunner` connected
for as long as pgproxy runs (``start``/``stop``, a ``ProxyServer`` service). It connects in the
background, retrying with backoff while Slack cannot be reached, so pgproxy starts and serves without
Slack; a refused app-level token is logged as an error and not retried. :func:`vote_through` adapts the
service's ``vote`` to the channel's ``cast`` (an unknown request is a refused vote, not an error).

This module must not decide who may vote or build messages (``model`` and ``slack`` do), and must not
log a token or the signing secret: errors are logged by Slack's error code or the exception's type.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

from slack_sdk.errors import SlackApiError

from pgproxy.approvals.model import ApprovalRequest, RequestState, Vote, VoteRefused
from pgproxy.approvals.service import ApprovalService, RequestNotFound
from pgproxy.approvals.slack import SLACK_TS, Cast, SlackChannel
from pgproxy.approvals.slack_socket import SlackSocketRunner

__all__ = ["SlackNotifier", "SocketModeService", "vote_through"]

log = logging.getLogger(__name__)

_KEPT_TS = 4096  # message ts remembered here, as a fallback when storing it in the request failed
_RETRY_FIRST, _RETRY_LIMIT = 1.0, 60.0  # seconds between Socket Mode connection attempts
# Errors that retrying cannot fix: the app-level token itself is refused.
_FATAL_TOKEN_ERRORS = frozenset({"invalid_auth", "not_authed", "account_inactive", "token_revoked",
                                 "token_expired", "not_allowed_token_type"})


def vote_through(service: ApprovalService) -> Cast:
    """The channel's ``cast``: ``service.vote``, with an unknown request refused rather than raised."""

    async def cast(request_id: str, vote: Vote) -> ApprovalRequest:
        try:
            return await service.vote(request_id, vote)
        except RequestNotFound:
            raise VoteRefused(f"request {request_id} is unknown") from None

    return cast


def _why(error: BaseException) -> str:
    """A failure as it may be logged: Slack's error code, else the exception's type and text."""
    if isinstance(error, SlackApiError):
        return f"Slack answered {error.response.get('error')!r}"
    return f"{type(error).__name__}: {error}"


def _shown(request: ApprovalRequest) -> tuple[RequestState, int]:
    """What the message shows of a request: its state and how many votes it has."""
    return request.state, len(request.votes)


class SlackNotifier:
    """Posts and rewrites the Slack messages of ``service``'s requests (subscribe :meth:`changed`)."""

    def __init__(self, channel: SlackChannel, service: ApprovalService, *, stop_grace: float = 5.0) -> None:
        self._channel = channel
        self._service = service
        self._stop_grace = stop_grace
        self._tasks: set[asyncio.Task[None]] = set()
        self._last: dict[str, asyncio.Task[None]] = {}  # the latest task of each request
        self._ts: dict[str, str] = {}  # messages posted here (oldest first)
        self._stopped = False

    def changed(self, request: ApprovalRequest) -> None:
        """The service's ``on_change`` listener: handle the change in a task, after the request's previous one."""
        if self._stopped:
            log.debug("Slack notifier stopped: approval request %s %s not shown", request.id, request.state.value)
            return
        previous = self._last.get(request.id)
        task = self._spawn(self._handle(request, previous), request.id)
        self._last[request.id] = task

    async def start(self) -> None:
        """Nothing to open: messages are posted as requests open."""

    async def stop(self) -> None:
        """Stop taking changes; let Slack calls in flight finish for ``stop_grace`` seconds, then cancel them."""
        self._stopped = True
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self._stop_grace)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    # -- the work ------------------------------------------------------------------------------------
    async def _handle(self, request: ApprovalRequest, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        opened = request.state is RequestState.PENDING and not request.votes and request.id not in self._ts
        try:
            if opened and SLACK_TS not in request.extra:
                await self._post(request)
            else:
                await self._update(request)
        except Exception as error:  # Slack or the store: the held client is not concerned
            what = "posted to" if opened else "updated in"
            log.warning("approval request %s could not be %s Slack: %s", request.id, what, _why(error))

    async def _post(self, request: ApprovalRequest) -> None:
        ts = await self._channel.post(request)
        self._remember(request.id, ts)
        try:
            current = await self._service.set_extra(request.id, {SLACK_TS: ts})
        except Exception as error:
            log.warning("the Slack message of approval request %s could not be recorded: %s", request.id, _why(error))
            return
        if _shown(current) != _shown(request):  # decided elsewhere while the message was being posted
            await self._channel.update(current)

    async def _update(self, request: ApprovalRequest) -> None:
        current = await self._service.get(request.id) or request
        ts = current.extra.get(SLACK_TS) or self._ts.get(request.id)
        if ts is None:
            log.info("approval request %s %s: it has no Slack message to update", request.id, current.state.value)
            return
        await self._channel.update(replace(current, extra={**current.extra, SLACK_TS: ts}))
        if current.decided:
            self._ts.pop(request.id, None)

    # -- bookkeeping ---------------------------------------------------------------------------------
    def _remember(self, request_id: str, ts: str) -> None:
        self._ts[request_id] = ts
        while len(self._ts) > _KEPT_TS:
            del self._ts[next(iter(self._ts))]

    def _spawn(self, work: Coroutine[Any, Any, None], request_id: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work, name=f"slack {request_id}")
        self._tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            if self._last.get(request_id) is finished:
                del self._last[request_id]

        task.add_done_callback(done)
        return task


class SocketModeService:
    """A ``ProxyServer`` service keeping ``runner`` connected to Slack (see the module docstring)."""

    def __init__(self, runner: SlackSocketRunner) -> None:
        self._runner = runner
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._runner.connected

    async def start(self) -> None:
        """Start connecting in the background (pgproxy serves meanwhile)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._connect(), name="slack socket mode")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._runner.close()

    async def _connect(self) -> None:
        delay = _RETRY_FIRST
        while True:
            try:
                await self._runner.start()
            except SlackApiError as error:
                if error.response.get("error") in _FATAL_TOKEN_ERRORS:
                    log.error("Slack refused the app-level token (%s): Slack clicks are not received until "
                              "slack_app_token is fixed and pgproxy restarted", _why(error))
                    return
                log.warning("Slack Socket Mode: cannot connect (%s); retrying in %.0f s", _why(error), delay)
            except Exception as error:
                log.warning("Slack Socket Mode: cannot connect (%s); retrying in %.0f s", _why(error), delay)
            else:
                log.info("Slack Socket Mode connected: taking approval clicks over it")
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_LIMIT)
