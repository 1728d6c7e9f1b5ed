"""Slack approvals as an operator runs them: `pgproxy` configured through its settings with a Slack bot
token, signing secret, channel and approver directory; an agent's psql waits on a DROP TABLE; the request
appears in Slack; a DBA clicks in Slack and psql gets its answer.

Slack is ``tests.support.fake_slack`` (its Web API over HTTP on 127.0.0.1, in a thread of its own) reached
through ``slack_api_url`` by pgproxy's real slack_sdk client; the clicks Slack would send are signed as
Slack signs them and posted to pgproxy's ``/slack/interactions`` over HTTPS, or delivered over Socket Mode.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from pgproxy.approvals.directory import DIRECTORY_ISSUER
from pgproxy.approvals.model import ApprovalRequest, RequestState, Vote
from pgproxy.approvals.service import ApprovalService
from pgproxy.approvals.slack import SLACK_TS
from pgproxy.approvals.slack_blocks import APPROVE_ACTION, DENY_ACTION
from pgproxy.approvals.slack_notifier import SocketModeService
from pgproxy.audit import Decision, RecordKind
from pgproxy.auth.identity import Identity
from pgproxy.web.server import WebServer
from tests.integration.test_approval_holds import (
    agent_token,
    in_background,
    psql,
    scratch_database,
    scratch_table,
    write_policies,
)
from tests.support.fake_slack import APP_TOKEN, BOT_TOKEN, CHANNEL, SIGNING_SECRET, FakeSlack, signed
from tests.support.pg_plugin import RealPostgres
from tests.support.proxy_plugin import ProxyFactory, RunningProxy, database_audit_records

pytestmark = pytest.mark.integration

T = TypeVar("T")

# The requester (agent-1) is in the directory as a DBA too: nobody approves their own request.
DIRECTORY = """\
people:
  dba@example.com: {name: Dana the DBA, groups: [dba]}
  agent-1@example.com: {groups: [dba]}
"""


class SlackThread:
    """The fake Slack, serving from an event loop in a thread of its own (pgproxy runs in another)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fake-slack", daemon=True)
        self._thread.start()
        self.fake = FakeSlack()
        self.call(self.fake.start())
        self.fake.add_user("UDBA", "DBA@example.com")  # Slack keeps the case people typed
        self.fake.add_user("UAGENT", "agent-1@example.com")

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    def run(self, function: Callable[[], T]) -> T:
        """``function()`` on the fake's loop (its state is only touched there)."""

        async def invoke() -> T:
            return function()

        return self.call(invoke())

    def message_about(self, text: str) -> tuple[str, dict[str, Any]] | None:
        """The ts and content of the message that mentions ``text``, once there is one."""
        found = self.run(lambda: [(ts, json.loads(json.dumps(message)))
                                  for (_, ts), message in self.fake.messages.items() if text in json.dumps(message)])
        return found[0] if found else None

    def message(self, ts: str) -> dict[str, Any]:
        return self.run(lambda: json.loads(json.dumps(self.fake.messages[(CHANNEL, ts)])))

    def close(self) -> None:
        self.call(self.fake.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def slack() -> Iterator[SlackThread]:
    running = SlackThread()
    yield running
    running.close()


@pytest.fixture
def start_proxy(
    proxy_factory: ProxyFactory, slack: SlackThread, tmp_path: Path
) -> Iterator[Callable[..., RunningProxy]]:
    """pgproxy holding DDL for a DBA's approval, with Slack configured; stopped before the fake Slack is."""
    started: list[RunningProxy] = []
    directory = tmp_path / "approvers.yaml"
    directory.write_text(DIRECTORY)

    def start(**overrides: Any) -> RunningProxy:
        settings: dict[str, Any] = {
            "approvals": True, "web_listen": "127.0.0.1:0", "policies": write_policies(tmp_path, "5m"),
            "slack_bot_token": BOT_TOKEN, "slack_signing_secret": SIGNING_SECRET, "slack_channel": CHANNEL,
            "slack_api_url": slack.fake.base_url, "approver_directory": directory,
        }
        started.append(proxy_factory(**(settings | overrides)))
        return started[-1]

    yield start
    for proxy in started:
        proxy.stop(grace=1)


@pytest.fixture
def audit_database(postgres: RealPostgres) -> Iterator[str]:
    with scratch_database(postgres, f"pgproxy_slack_{uuid.uuid4().hex[:8]}") as dsn:
        yield dsn


def eventually(check: Callable[[], T | None], what: str) -> T:
    """The first true result of ``check``, polled (the bound only keeps a broken run from hanging)."""
    deadline = time.monotonic() + 30
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def approvals_of(proxy: RunningProxy) -> ApprovalService:
    service = proxy.server.context.approvals
    assert service is not None
    return service


def current(proxy: RunningProxy, request_id: str) -> ApprovalRequest:
    found = proxy.call(approvals_of(proxy).get(request_id))
    assert found is not None
    return found


def click(proxy: RunningProxy, slack: SlackThread, payload: dict[str, Any], *, secret: str = SIGNING_SECRET,
          at: float | None = None, body: bytes | None = None) -> httpx.Response:
    """POST an interaction to pgproxy as Slack does: form-encoded, signed with ``secret`` at ``at``."""
    signed_body, headers = signed(payload, timestamp=int(time.time() if at is None else at), secret=secret)
    web = next(service for service in proxy.server.services if isinstance(service, WebServer))
    trust = ssl.create_default_context(cafile=str(proxy.settings.tls_cert))
    return httpx.post(f"https://127.0.0.1:{web.port}/slack/interactions",
                      content=signed_body if body is None else body, headers=headers, verify=trust, timeout=30)


def texts(message: dict[str, Any]) -> str:
    """Every text of a message's blocks, one per line."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") in ("mrkdwn", "plain_text"):
                found.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(message["blocks"])
    return "\n".join(found)


def request_id_of(message: dict[str, Any]) -> str:
    [actions] = [block for block in message["blocks"] if block["type"] == "actions"]
    values = {element["value"] for element in actions["elements"]}
    assert len(values) == 1
    return str(values.pop())


def psql_verbose(proxy: RunningProxy, token: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["psql", "-X", proxy.conninfo(token), "-v", "VERBOSITY=verbose", "-c", command],
                          capture_output=True, text=True, timeout=60, check=False)


def test_a_dba_approves_in_slack_and_the_held_drop_runs(
    start_proxy: Callable[..., RunningProxy], slack: SlackThread, postgres: RealPostgres, audit_database: str
) -> None:
    proxy = start_proxy(audit_dsn=audit_database, audit_jsonl=None)  # requests in the PostgreSQL store
    with scratch_table(postgres) as exists:
        name = exists.name  # type: ignore[attr-defined]
        thread, result = in_background(
            lambda: psql(proxy, agent_token(proxy), f"/* reason: drop the old copy */ DROP TABLE {name}"))
        ts, message = eventually(lambda: slack.message_about(name), "the request in Slack")
        request_id = request_id_of(message)
        request = current(proxy, request_id)
        shown = texts(message)
        assert "Waiting for approval" in shown and f"Approval needed: DROP TABLE ({request_id})" in shown
        assert "*Requested by*\nagent-1@example.com" in shown
        assert f"DROP TABLE {name}" in shown and "*Rule*\nagents-ddl" in shown
        assert "*Needs*\n1 approval from group dba" in shown and ">drop the old copy" in shown
        assert f"*Estimated impact*\n{request.context.impact or 'not estimated'}" in shown
        eventually(lambda: current(proxy, request_id).extra.get(SLACK_TS) == ts, "the message's ts in the store")
        assert exists(), "the statement ran before anyone approved it"

        answer = click(proxy, slack, slack.run(lambda: slack.fake.click("UDBA", ts, APPROVE_ACTION)))
        assert (answer.status_code, answer.content) == (200, b"")
        thread.join(60)
        completed = result["value"]
        assert completed.returncode == 0, completed.stderr
        assert not exists()

    decided = current(proxy, request_id)
    [vote] = decided.votes
    assert decided.state is RequestState.APPROVED and (vote.channel, vote.approve) == ("slack", True)
    assert vote.voter == Identity("dba@example.com", DIRECTORY_ISSUER, "dba@example.com", "Dana the DBA", ("dba",),
                                  None)
    updated = texts(slack.message(ts))
    assert "*Approved* by dba@example.com (1 of 1 approval)" in updated
    assert not [block for block in slack.message(ts)["blocks"] if block["type"] == "actions"]  # no more buttons
    records = [r for r in database_audit_records(audit_database)
               if r.kind is RecordKind.STATEMENT and r.approval_id == request_id]
    assert [(r.decision, r.approvers) for r in records] == [(Decision.REQUIRE_APPROVAL, ("dba@example.com",))]


def test_forgeries_and_the_requester_are_refused_and_a_denial_from_the_form_fails_the_statement(
    start_proxy: Callable[..., RunningProxy], slack: SlackThread, postgres: RealPostgres
) -> None:
    proxy = start_proxy()  # requests in memory
    with scratch_table(postgres) as exists:
        name = exists.name  # type: ignore[attr-defined]
        thread, result = in_background(lambda: psql_verbose(proxy, agent_token(proxy), f"DROP TABLE {name}"))
        ts, message = eventually(lambda: slack.message_about(name), "the request in Slack")
        request_id = request_id_of(message)
        approve = slack.run(lambda: slack.fake.click("UDBA", ts, APPROVE_ACTION))
        slack_calls = slack.run(lambda: len(slack.fake.calls))

        forged = click(proxy, slack, approve, secret="not-the-signing-secret")
        stale = click(proxy, slack, approve, at=time.time() - 600)
        body, _ = signed(approve, timestamp=int(time.time()))
        tampered = click(proxy, slack, approve, body=body.replace(b"UDBA", b"UDBX"))
        oversized = click(proxy, slack, approve, body=b"payload=" + b"x" * (2 * 1024 * 1024))
        assert [r.status_code for r in (forged, stale, tampered, oversized)] == [401, 401, 401, 413]
        assert slack.run(lambda: len(slack.fake.calls)) == slack_calls  # nothing was looked up or posted
        assert current(proxy, request_id).votes == () and slack.message(ts) == message

        own = click(proxy, slack, slack.run(lambda: slack.fake.click("UAGENT", ts, APPROVE_ACTION)))
        assert (own.status_code, own.content) == (200, b"")
        [ephemeral] = [call.args for call in slack.run(lambda: slack.fake.calls_to("chat.postEphemeral"))]
        assert ephemeral["user"] == "UAGENT" and "nobody approves their own request" in ephemeral["text"]
        assert current(proxy, request_id).state is RequestState.PENDING and exists()

        opened = click(proxy, slack, slack.run(lambda: slack.fake.click("UDBA", ts, DENY_ACTION)))
        assert (opened.status_code, opened.content) == (200, b"")
        [view_id] = slack.run(lambda: list(slack.fake.views))
        submitted = click(proxy, slack, slack.run(lambda: slack.fake.submit(view_id, "not during the freeze")))
        assert (submitted.status_code, submitted.content) == (200, b"")  # an empty answer closes the form
        thread.join(60)
        completed = result["value"]
        assert (f"ERROR:  42501: approval request {request_id} was denied by dba@example.com: not during the freeze"
                in completed.stderr), completed.stderr
        assert exists()

    denied = current(proxy, request_id)
    assert denied.state is RequestState.DENIED and [v.reason for v in denied.votes] == ["not during the freeze"]
    updated = texts(slack.message(ts))
    assert "*Denied* by dba@example.com:\n>not during the freeze" in updated


def test_when_slack_fails_the_client_still_waits_and_other_channels_decide(
    start_proxy: Callable[..., RunningProxy], slack: SlackThread, postgres: RealPostgres,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = start_proxy()
    slack.run(lambda: slack.fake.errors.update({"chat.postMessage": "channel_not_found"}))
    service = approvals_of(proxy)
    with caplog.at_level(logging.INFO, logger="pgproxy"), scratch_table(postgres) as exists:
        name = exists.name  # type: ignore[attr-defined]
        thread, result = in_background(lambda: psql(proxy, agent_token(proxy), f"DROP TABLE {name}"))
        [request] = eventually(lambda: proxy.call(service.list([RequestState.PENDING])), "the pending request")
        eventually(lambda: "could not be posted to Slack: Slack answered 'channel_not_found'" in caplog.text,
                   "the failed post in the log")
        assert slack.run(lambda: dict(slack.fake.messages)) == {} and exists()
        dba = Identity("dba-1", proxy.idp.issuer, "dba@example.com", None, ("dba",), None)
        proxy.call(service.vote(request.id, Vote(dba, True, time.time())))
        thread.join(60)
        assert result["value"].returncode == 0, result["value"].stderr
        assert not exists()
    assert BOT_TOKEN not in caplog.text and SIGNING_SECRET not in caplog.text


def test_socket_mode_takes_the_click_without_an_http_endpoint(
    start_proxy: Callable[..., RunningProxy], slack: SlackThread, postgres: RealPostgres
) -> None:
    proxy = start_proxy(slack_signing_secret=None, slack_app_token=APP_TOKEN)
    [socket_mode] = [service for service in proxy.server.services if isinstance(service, SocketModeService)]
    eventually(lambda: proxy.call_soon(lambda: socket_mode.connected), "the Socket Mode connection")
    assert click(proxy, slack, {"type": "block_actions"}).status_code == 404  # no Request URL in this mode
    with scratch_table(postgres) as exists:
        name = exists.name  # type: ignore[attr-defined]
        thread, result = in_background(lambda: psql(proxy, agent_token(proxy), f"DROP TABLE {name}"))
        ts, _ = eventually(lambda: slack.message_about(name), "the request in Slack")
        approve = slack.run(lambda: slack.fake.click("UDBA", ts, APPROVE_ACTION))
        ack = slack.call(slack.fake.send_envelope(approve))
        assert "payload" not in ack
        thread.join(60)
        assert result["value"].returncode == 0, result["value"].stderr
        assert not exists()
    assert "*Approved* by dba@example.com" in texts(slack.message(ts))
