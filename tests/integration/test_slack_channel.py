"""The Slack channel against a fake Slack Web API, through the real slack_sdk clients and signature checks.

Requests live in a small in-memory store that applies votes with the real request model; Slack's side
(messages, users, views, signed interaction requests, a Socket Mode connection) is played by
``tests.support.fake_slack`` over HTTP and WebSocket on 127.0.0.1.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import pytest_asyncio
from slack_sdk.errors import SlackApiError

from pgproxy.approvals.model import ApprovalRequest, RequestContext, RequestState, Vote, VoteRefused
from pgproxy.approvals.slack import SLACK_TS, Outcome, SlackChannel
from pgproxy.approvals.slack_blocks import APPROVE_ACTION, DENY_ACTION, DENY_CALLBACK
from pgproxy.approvals.slack_socket import SlackSocketRunner
from pgproxy.auth.identity import Identity
from pgproxy.policy.engine import ApprovalRequirement
from pgproxy.policy.model import Approvers
from tests.support.fake_slack import APP_TOKEN, CHANNEL, SIGNING_SECRET, TEAM, FakeSlack, signature, signed

NOW = 1_700_000_000
ISSUER = "https://idp.example.com/"


def person(subject: str, email: str, *groups: str) -> Identity:
    return Identity(subject, ISSUER, email, None, groups, None)


# The requester is a DBA too: nobody approves their own request, administrators included.
PEOPLE = {
    "ada@example.com": person("u-ada", "ada@example.com", "dev", "dba"),
    "dba1@example.com": person("u-dba1", "dba1@example.com", "dba"),
    "dba2@example.com": person("u-dba2", "dba2@example.com", "dba"),
    "dev@example.com": person("u-dev", "dev@example.com", "dev"),
}


@dataclass
class Store:
    """The store's part, as the channel sees it: cast a vote, load a request."""

    requests: dict[str, ApprovalRequest] = field(default_factory=dict)
    casts: list[tuple[str, Vote]] = field(default_factory=list)

    async def cast(self, request_id: str, vote: Vote) -> ApprovalRequest:
        self.casts.append((request_id, vote))
        if request_id not in self.requests:
            raise VoteRefused(f"request {request_id} is unknown")
        self.requests[request_id] = self.requests[request_id].vote(vote)
        return self.requests[request_id]

    async def load(self, request_id: str) -> ApprovalRequest | None:
        return self.requests.get(request_id)


@dataclass
class World:
    slack: FakeSlack
    store: Store
    channel: SlackChannel

    async def open(self, quorum: int = 2, **context: Any) -> ApprovalRequest:
        fields: dict[str, Any] = {
            "client_address": "10.1.2.3", "application_name": "psql", "database": "orders",
            "upstream_role": "app_writer", "sql": "DELETE FROM orders WHERE id = $1", "category": "write",
            "command": "DELETE", "relations": ("public.orders",), "rule_id": "hold-deletes",
            "stated_reason": "remove a duplicate order", "impact": "estimated 1 row",
        }
        fields.update(context)
        requirement = ApprovalRequirement(Approvers(groups=frozenset({"dba"})), quorum, 900)
        request = ApprovalRequest.open(PEOPLE["ada@example.com"], requirement, RequestContext(**fields), now=NOW)
        ts = await self.channel.post(request)
        request = replace(request, extra={SLACK_TS: ts})
        self.store.requests[request.id] = request
        return request

    async def interact(self, payload: dict[str, Any], now: int = NOW + 10) -> Any:
        body, headers = signed(payload, timestamp=now)
        return await self.channel.handle_interaction(body, headers, now)

    def message(self, request: ApprovalRequest) -> str:
        return json.dumps(self.slack.messages[(CHANNEL, request.extra[SLACK_TS])], ensure_ascii=False)

    def ephemerals(self, user: str) -> list[str]:
        return [call.args["text"] for call in self.slack.calls_to("chat.postEphemeral") if call.args["user"] == user]


@pytest_asyncio.fixture
async def world() -> AsyncIterator[World]:
    slack = FakeSlack()
    await slack.start()
    slack.add_user("UADA", "ada@example.com")
    slack.add_user("UDBA1", "DBA1@example.com")  # Slack keeps the case people typed
    slack.add_user("UDBA2", "dba2@example.com")
    slack.add_user("UDEV", "dev@example.com")
    slack.add_user("USTRANGER", "stranger@example.com")
    store = Store()
    channel = SlackChannel(
        slack.client(), channel_id=CHANNEL, signing_secret=SIGNING_SECRET,
        directory=PEOPLE.get, cast=store.cast, load=store.load, team_id=TEAM,
    )
    yield World(slack, store, channel)
    await slack.close()


async def test_post_sends_the_request_with_the_bot_token(world: World) -> None:
    request = await world.open(sql="DELETE FROM orders WHERE note = '<!channel>'",
                               stated_reason="<https://evil.example|approve here> <@UDBA1>")
    [call] = world.slack.calls_to("chat.postMessage")
    assert call.token == "xoxb-fake-bot-token" and call.args["channel"] == CHANNEL
    assert call.args["unfurl_links"] is False
    text = world.message(request)
    assert request.id in text and "DELETE FROM orders" in text and "remove a duplicate" not in text
    assert "<!channel>" not in text and "<https://evil" not in text and "<@UDBA1>" not in text
    assert "&lt;!channel&gt;" in text and "&lt;https://evil.example|approve here&gt;" in text


async def test_approvals_count_toward_quorum_and_update_the_message(world: World) -> None:
    request = await world.open(quorum=2)
    ts = request.extra[SLACK_TS]
    first = await world.interact(world.slack.click("UDBA1", ts, APPROVE_ACTION))
    assert (first.status, first.outcome, first.content) == (200, Outcome.VOTED, b"")
    assert world.store.requests[request.id].approvers == ("dba1@example.com",)
    assert "Approved so far by* dba1@example.com (1 of 2 approvals)" in world.message(request)

    second = await world.interact(world.slack.click("UDBA2", ts, APPROVE_ACTION))
    assert second.outcome is Outcome.VOTED and second.request is not None
    assert second.request.state is RequestState.APPROVED
    message = world.message(request)
    assert "*Approved* by dba1@example.com, dba2@example.com (2 of 2 approvals)" in message
    assert APPROVE_ACTION not in message and DENY_ACTION not in message  # no buttons once decided
    assert world.ephemerals("UDBA1") == world.ephemerals("UDBA2") == []


async def test_a_second_click_by_the_same_person_does_not_count(world: World) -> None:
    request = await world.open(quorum=2)
    await world.interact(world.slack.click("UDBA1", request.extra[SLACK_TS], APPROVE_ACTION))
    again = await world.interact(world.slack.click("UDBA1", request.extra[SLACK_TS], APPROVE_ACTION))
    assert again.outcome is Outcome.REFUSED and "already voted" in (again.reason or "")
    assert len(world.store.requests[request.id].approvals) == 1
    [told] = world.ephemerals("UDBA1")
    assert told.startswith(f"Your vote on {request.id} did not count") and "already voted" in told


@pytest.mark.parametrize(
    ("user", "why"),
    [
        ("UADA", "nobody approves their own request"),  # the requester, though in group dba
        ("UDEV", "is not an approver"),
        ("USTRANGER", "stranger@example.com is not known to pgproxy"),
    ],
)
async def test_people_who_may_not_approve_are_told_and_nothing_counts(world: World, user: str, why: str) -> None:
    request = await world.open(quorum=1)
    result = await world.interact(world.slack.click(user, request.extra[SLACK_TS], APPROVE_ACTION))
    assert (result.status, result.outcome) == (200, Outcome.REFUSED)
    assert world.store.requests[request.id].votes == ()
    [told] = world.ephemerals(user)
    assert why in told
    assert "Waiting for approval" in world.message(request)


@pytest.mark.parametrize(
    ("flags", "email", "why"),
    [
        ({}, None, "no email address"),
        ({"deleted": True}, "dba2@example.com", "deactivated"),
        ({"is_bot": True}, "dba2@example.com", "bots and apps"),
        ({"is_restricted": True}, "dba2@example.com", "guest"),
        ({"is_ultra_restricted": True}, "dba2@example.com", "guest"),
        ({"team_id": "T0OTHER"}, "dba2@example.com", "workspace"),
        ({"is_email_confirmed": False}, "dba2@example.com", "not confirmed"),
    ],
)
async def test_slack_accounts_that_cannot_vote(
    world: World, flags: dict[str, Any], email: str | None, why: str
) -> None:
    world.slack.add_user("UODD", email, **flags)
    request = await world.open(quorum=1)
    result = await world.interact(world.slack.click("UODD", request.extra[SLACK_TS], APPROVE_ACTION))
    assert result.outcome is Outcome.REFUSED and why in (result.reason or "")
    assert world.store.casts == []
    assert why in world.ephemerals("UODD")[0]


async def test_forged_requests_are_rejected_before_anything_happens(world: World) -> None:
    request = await world.open(quorum=1)
    payload = world.slack.click("UDBA1", request.extra[SLACK_TS], APPROVE_ACTION)
    body, headers = signed(payload, timestamp=NOW, secret="not-the-signing-secret")
    assert (await world.channel.handle_interaction(body, headers, NOW)).status == 401

    body, headers = signed(payload, timestamp=NOW)
    tampered = body.replace(b"UDBA1", b"UDBA2")
    assert (await world.channel.handle_interaction(tampered, headers, NOW)).status == 401
    unsigned = {"X-Slack-Request-Timestamp": str(NOW)}
    assert (await world.channel.handle_interaction(body, unsigned, NOW)).status == 401
    garbled = {**headers, "X-Slack-Request-Timestamp": "soon"}
    assert (await world.channel.handle_interaction(body, garbled, NOW)).status == 401
    not_utf8 = b"\xff" + body
    assert (await world.channel.handle_interaction(not_utf8, headers, NOW)).status == 401

    assert world.store.casts == [] and world.slack.calls_to("users.info") == []
    assert world.slack.calls_to("chat.postEphemeral") == []


@pytest.mark.parametrize("age", [301, -301, 3600])
async def test_stale_or_future_timestamps_are_rejected(world: World, age: int) -> None:
    request = await world.open(quorum=1)
    body, headers = signed(world.slack.click("UDBA1", request.extra[SLACK_TS], APPROVE_ACTION), timestamp=NOW - age)
    result = await world.channel.handle_interaction(body, headers, NOW)
    assert (result.status, result.outcome) == (401, Outcome.BAD_SIGNATURE)
    assert world.store.casts == []


async def test_a_recent_signed_request_within_five_minutes_counts(world: World) -> None:
    request = await world.open(quorum=1)
    body, headers = signed(world.slack.click("UDBA1", request.extra[SLACK_TS], APPROVE_ACTION), timestamp=NOW)
    result = await world.channel.handle_interaction(body, headers, NOW + 299)
    assert result.outcome is Outcome.VOTED


async def test_deny_opens_a_form_and_its_submission_denies_with_the_reason(world: World) -> None:
    request = await world.open(quorum=2)
    opened = await world.interact(world.slack.click("UDBA1", request.extra[SLACK_TS], DENY_ACTION))
    assert opened.outcome is Outcome.FORM_OPENED and world.store.casts == []
    [view_id] = world.slack.views
    assert world.slack.views[view_id]["callback_id"] == DENY_CALLBACK
    assert world.slack.views[view_id]["user"] == "UDBA1"

    reason = "not during the sale <!channel> <https://evil.example|x>"
    result = await world.interact(world.slack.submit(view_id, reason))
    assert (result.status, result.outcome, result.content) == (200, Outcome.VOTED, b"")  # closes the form
    denied = world.store.requests[request.id]
    assert denied.state is RequestState.DENIED and denied.denial is not None
    assert denied.denial.reason == reason and denied.denial.voter.email == "dba1@example.com"
    message = world.message(request)
    assert "*Denied* by dba1@example.com" in message and "not during the sale &lt;!channel&gt;" in message
    assert "<!channel>" not in message and APPROVE_ACTION not in message


async def test_an_empty_reason_keeps_the_form_open(world: World) -> None:
    request = await world.open()
    await world.interact(world.slack.click("UDBA1", request.extra[SLACK_TS], DENY_ACTION))
    [view_id] = world.slack.views
    result = await world.interact(world.slack.submit(view_id, "   "))
    assert result.outcome is Outcome.FORM_ERROR
    assert json.loads(result.content)["response_action"] == "errors"
    assert world.store.requests[request.id].state is RequestState.PENDING


async def test_non_approvers_get_no_deny_form(world: World) -> None:
    request = await world.open()
    result = await world.interact(world.slack.click("UDEV", request.extra[SLACK_TS], DENY_ACTION))
    assert result.outcome is Outcome.REFUSED and world.slack.calls_to("views.open") == []
    assert "is not an approver" in world.ephemerals("UDEV")[0]


async def test_a_form_submitted_after_the_decision_shows_why_in_the_form(world: World) -> None:
    request = await world.open(quorum=1)
    await world.interact(world.slack.click("UDBA1", request.extra[SLACK_TS], DENY_ACTION))
    [view_id] = world.slack.views
    await world.interact(world.slack.click("UDBA2", request.extra[SLACK_TS], APPROVE_ACTION))
    result = await world.interact(world.slack.submit(view_id, "too risky"))
    assert result.outcome is Outcome.FORM_ERROR
    assert "already approved" in json.loads(result.content)["errors"]["pgproxy_reason"]
    assert world.store.requests[request.id].state is RequestState.APPROVED


async def test_expired_requests_take_no_votes(world: World) -> None:
    request = await world.open(quorum=1)
    late = NOW + 900
    approve = await world.interact(world.slack.click("UDBA1", request.extra[SLACK_TS], APPROVE_ACTION), now=late)
    deny = await world.interact(world.slack.click("UDBA2", request.extra[SLACK_TS], DENY_ACTION), now=late)
    assert approve.outcome is deny.outcome is Outcome.REFUSED
    assert "expired" in (approve.reason or "") and "expired" in (deny.reason or "")
    assert world.slack.calls_to("views.open") == []


async def test_slack_users_are_looked_up_once_per_ttl(world: World) -> None:
    first = await world.open(quorum=2)
    second = await world.open(quorum=2)
    await world.interact(world.slack.click("UDBA1", first.extra[SLACK_TS], APPROVE_ACTION), now=NOW + 10)
    await world.interact(world.slack.click("UDBA1", second.extra[SLACK_TS], APPROVE_ACTION), now=NOW + 200)
    assert [call.args["user"] for call in world.slack.calls_to("users.info")] == ["UDBA1"]
    third = await world.open(quorum=2)
    await world.interact(world.slack.click("UDBA1", third.extra[SLACK_TS], APPROVE_ACTION), now=NOW + 310)
    assert [call.args["user"] for call in world.slack.calls_to("users.info")] == ["UDBA1", "UDBA1"]
    assert all(len(world.store.requests[r.id].approvals) == 1 for r in (first, second, third))


async def test_slack_outages_refuse_without_caching(world: World) -> None:
    request = await world.open(quorum=1)
    world.slack.errors["users.info"] = "ratelimited"
    refused = await world.interact(world.slack.click("UDBA1", request.extra[SLACK_TS], APPROVE_ACTION))
    assert refused.outcome is Outcome.REFUSED and world.store.casts == []
    counted = await world.interact(world.slack.click("UDBA1", request.extra[SLACK_TS], APPROVE_ACTION))
    assert counted.outcome is Outcome.VOTED


async def test_other_payloads_are_acknowledged_or_rejected(world: World) -> None:
    ignored = await world.interact({"type": "view_closed", "view": {"callback_id": "x"}})
    assert (ignored.status, ignored.outcome) == (200, Outcome.IGNORED)
    other = await world.interact({"type": "block_actions", "user": {"id": "UDBA1"}, "actions": [{"action_id": "x"}]})
    assert (other.status, other.outcome) == (200, Outcome.IGNORED)
    body = b"text=hello"
    headers = {"X-Slack-Request-Timestamp": str(NOW), "X-Slack-Signature": signature(body, timestamp=NOW)}
    missing = await world.channel.handle_interaction(body, headers, NOW)
    assert (missing.status, missing.outcome) == (400, Outcome.MALFORMED)
    broken = await world.interact({"type": "block_actions", "actions": [{"action_id": APPROVE_ACTION}]})
    assert (broken.status, broken.outcome) == (400, Outcome.MALFORMED)


async def test_update_rewrites_the_message_for_an_outcome(world: World) -> None:
    request = await world.open(quorum=1)
    await world.channel.update(request.withdraw(NOW + 5))
    assert "*Withdrawn*" in world.message(request) and APPROVE_ACTION not in world.message(request)


async def test_socket_mode_feeds_clicks_to_the_same_handling(world: World) -> None:
    request = await world.open(quorum=1)
    runner = SlackSocketRunner(world.channel, app_token=APP_TOKEN, web_client=world.slack.client(token=""),
                               clock=lambda: NOW + 20)
    await runner.start()
    try:
        [opened] = world.slack.calls_to("apps.connections.open")
        assert opened.token == APP_TOKEN
        ack = await world.slack.send_envelope(world.slack.click("UDBA1", request.extra[SLACK_TS], DENY_ACTION))
        assert "payload" not in ack
        [view_id] = world.slack.views
        ack = await world.slack.send_envelope(world.slack.submit(view_id, ""))
        assert ack["payload"]["response_action"] == "errors"
        ack = await world.slack.send_envelope(world.slack.submit(view_id, "use the batch job"))
        assert "payload" not in ack
        assert world.store.requests[request.id].state is RequestState.DENIED
        ack = await world.slack.send_envelope({"event": {"type": "app_mention"}}, kind="events_api")
        assert "payload" not in ack
    finally:
        await runner.close()
    assert not runner.connected


async def test_socket_mode_refuses_a_bot_token_and_reports_a_refused_app_token(world: World) -> None:
    with pytest.raises(ValueError, match="app-level token"):
        SlackSocketRunner(world.channel, app_token="xoxb-fake-bot-token")
    runner = SlackSocketRunner(world.channel, app_token="xapp-revoked", web_client=world.slack.client(token=""))
    with pytest.raises(SlackApiError) as raised:
        await runner.start()
    assert raised.value.response["error"] == "invalid_auth" and not runner.connected
