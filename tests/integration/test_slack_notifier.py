"""The approval service's requests in Slack: posted when opened, the message's ts kept with the request,
rewritten for every later change in order, even when the change comes first or from another replica;
a failing Slack call leaves the request as it is; Socket Mode connects in the background.

Requests live in memory (``MemoryBackend``); Slack is ``tests.support.fake_slack`` over HTTP and
WebSocket on 127.0.0.1, reached through the real slack_sdk clients.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from pgproxy.approvals.backend import MemoryBackend
from pgproxy.approvals.model import ApprovalRequest, RequestState, Vote, VoteRefused
from pgproxy.approvals.service import ApprovalService
from pgproxy.approvals.slack import SLACK_TS, SlackChannel
from pgproxy.approvals.slack_notifier import SlackNotifier, SocketModeService, vote_through
from pgproxy.approvals.slack_socket import SlackSocketRunner
from tests.support.fake_slack import APP_TOKEN, CHANNEL, SIGNING_SECRET, FakeSlack
from tests.unit.approvals.test_service import DBA1, REQUESTER, hold

pytestmark = pytest.mark.integration


async def eventually(check: Callable[[], Any], what: str) -> Any:
    """The first true result of ``check``, polled (the bound only keeps a broken run from hanging)."""
    for _ in range(1500):
        if result := check():
            return result
        await asyncio.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


class Setup:
    def __init__(self, slack: FakeSlack, backend: MemoryBackend) -> None:
        self.slack = slack
        self.backend = backend
        self.service = ApprovalService(backend, replica="a")
        self.channel = SlackChannel(slack.client(), channel_id=CHANNEL, signing_secret=SIGNING_SECRET,
                                    directory=lambda email: None, cast=vote_through(self.service),
                                    load=self.service.get)
        self.notifier = SlackNotifier(self.channel, self.service)
        self.service.on_change(self.notifier.changed)

    async def opened(self) -> ApprovalRequest:
        """A request opened through the service, once it is stored (its post may still be on its way)."""
        stored = asyncio.Event()
        self.service.on_change(lambda request: stored.set())
        pending = self.service.request(hold(), REQUESTER)
        await asyncio.wait_for(stored.wait(), 30)
        found = await self.service.get(pending.request_id)
        assert found is not None
        return found

    def message(self, ts: str) -> str:
        return json.dumps(self.slack.messages[(CHANNEL, ts)])

    async def ts_of(self, request_id: str) -> str:
        async def stored_ts() -> str | None:
            found = await self.service.get(request_id)
            return found.extra.get(SLACK_TS) if found is not None else None

        for _ in range(1500):
            if ts := await stored_ts():
                return ts
            await asyncio.sleep(0.02)
        raise AssertionError(f"no Slack ts recorded for {request_id}")


@pytest_asyncio.fixture
async def setup() -> AsyncIterator[Setup]:
    slack = FakeSlack()
    await slack.start()
    built = Setup(slack, MemoryBackend())
    await built.service.start()
    await built.notifier.start()
    yield built
    await built.notifier.stop()
    await built.service.close()
    await slack.close()


async def test_an_opened_request_is_posted_and_its_ts_kept_without_telling_the_listeners(setup: Setup) -> None:
    heard: list[RequestState] = []
    setup.service.on_change(lambda request: heard.append(request.state))
    request = await setup.opened()
    ts = await setup.ts_of(request.id)
    [post] = setup.slack.calls_to("chat.postMessage")
    assert post.args["channel"] == CHANNEL and request.id in setup.message(ts)
    assert "Waiting for approval" in setup.message(ts)
    assert heard == [RequestState.PENDING]  # recording the ts is no change the listeners hear of
    assert setup.slack.calls_to("chat.update") == []


async def test_a_vote_made_before_the_post_is_shown_after_it(setup: Setup) -> None:
    request = await setup.opened()
    await setup.service.vote(request.id, Vote(DBA1, True, request.created_at + 1))  # the post has not run yet
    ts = await setup.ts_of(request.id)
    await eventually(lambda: "*Approved* by dba1@example.com" in setup.message(ts), "the approval in Slack")
    [post] = setup.slack.calls_to("chat.postMessage")
    assert "Waiting for approval" in json.dumps(post.args["blocks"])


async def test_a_decision_on_another_replica_while_posting_is_shown(setup: Setup) -> None:
    other = ApprovalService(setup.backend.sibling("b"), replica="b")  # no Slack notifier there
    request = await setup.opened()
    await other.vote(request.id, Vote(DBA1, False, request.created_at + 1, reason="not today"))
    ts = await setup.ts_of(request.id)
    await eventually(lambda: "*Denied* by dba1@example.com" in setup.message(ts), "the denial in Slack")
    assert "not today" in setup.message(ts)


async def test_expiry_and_withdrawal_rewrite_the_message(setup: Setup) -> None:
    withdrawn = setup.service.request(hold(), REQUESTER)
    withdrawn.withdraw()
    expiring = setup.service.request(hold(timeout=0), REQUESTER)
    assert (await asyncio.wait_for(withdrawn.verdict, 30)).expired
    assert (await asyncio.wait_for(expiring.verdict, 30)).expired
    ts_withdrawn = await setup.ts_of(withdrawn.request_id)
    ts_expired = await setup.ts_of(expiring.request_id)
    await eventually(lambda: "*Withdrawn*" in setup.message(ts_withdrawn), "the withdrawal in Slack")
    await eventually(lambda: "*Expired*" in setup.message(ts_expired), "the expiry in Slack")
    assert "pgproxy_approve" not in setup.message(ts_withdrawn) + setup.message(ts_expired)


async def test_a_failed_post_changes_nothing_for_the_request(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    setup.slack.errors["chat.postMessage"] = "channel_not_found"
    with caplog.at_level(logging.INFO, logger="pgproxy.approvals.slack_notifier"):
        request = await setup.opened()
        await eventually(lambda: "could not be posted to Slack" in caplog.text, "the failure in the log")
        decided = await setup.service.vote(request.id, Vote(DBA1, True, request.created_at + 1))
        await eventually(lambda: "has no Slack message to update" in caplog.text, "the skipped update")
    assert decided.state is RequestState.APPROVED and SLACK_TS not in decided.extra
    assert setup.slack.messages == {} and setup.slack.calls_to("chat.update") == []
    assert "xoxb-" not in caplog.text


async def test_a_vote_on_an_unknown_request_is_refused_not_raised(setup: Setup) -> None:
    cast = vote_through(setup.service)
    with pytest.raises(VoteRefused, match="apr-missing is unknown"):
        await cast("apr-missing", Vote(DBA1, True, 0.0))


async def test_changes_after_stop_are_not_sent(setup: Setup) -> None:
    request = await setup.opened()
    ts = await setup.ts_of(request.id)
    await setup.notifier.stop()
    await setup.service.vote(request.id, Vote(DBA1, True, request.created_at + 1))
    await asyncio.sleep(0)
    assert setup.slack.calls_to("chat.update") == [] and "Waiting for approval" in setup.message(ts)


async def test_socket_mode_connects_in_the_background_and_retries(setup: Setup) -> None:
    setup.slack.errors["apps.connections.open"] = "internal_error"  # the first attempt fails
    runner = SlackSocketRunner(setup.channel, app_token=APP_TOKEN, web_client=setup.slack.client(token=""))
    service = SocketModeService(runner)
    await service.start()  # returns at once: pgproxy serves while Slack is away
    try:
        await eventually(lambda: service.connected, "the Socket Mode connection")
        assert len(setup.slack.calls_to("apps.connections.open")) == 2
    finally:
        await service.stop()
    assert not service.connected


async def test_socket_mode_gives_up_on_a_refused_app_token(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    runner = SlackSocketRunner(setup.channel, app_token="xapp-revoked", web_client=setup.slack.client(token=""))
    service = SocketModeService(runner)
    with caplog.at_level(logging.ERROR, logger="pgproxy.approvals.slack_notifier"):
        await service.start()
        await eventually(lambda: "Slack refused the app-level token" in caplog.text, "the refusal in the log")
    await service.stop()
    assert len(setup.slack.calls_to("apps.connections.open")) == 1 and not service.connected
    assert "xapp-revoked" not in caplog.text

