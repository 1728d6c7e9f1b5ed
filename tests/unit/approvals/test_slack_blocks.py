"""The Slack message for an approval request: its content, escaping of client-supplied text, limits, outcomes."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import pytest

from pgproxy.approvals.model import ApprovalRequest, RequestContext, Vote
from pgproxy.approvals.slack_blocks import (
    APPROVE_ACTION,
    DENY_ACTION,
    DENY_CALLBACK,
    REASON_ACTION,
    REASON_BLOCK,
    clip,
    deny_modal,
    escape,
    fallback_text,
    request_message,
)
from pgproxy.auth.identity import Identity
from pgproxy.policy.engine import ApprovalRequirement
from pgproxy.policy.model import Approvers
from tests.support.fake_slack import block_problems

NOW = 1_700_000_000.0
REQUESTER = Identity("u-ada", "https://idp.example.com/", "ada@example.com", "Ada Lovelace", ("dev",), None)
DBA1 = Identity("u-dba1", "https://idp.example.com/", "dba1@example.com", None, ("dba",), None)
DBA2 = Identity("u-dba2", "https://idp.example.com/", "dba2@example.com", None, ("dba",), None)


def make_request(quorum: int = 2, **context: Any) -> ApprovalRequest:
    fields: dict[str, Any] = {
        "client_address": "10.1.2.3",
        "application_name": "migrate-tool",
        "database": "orders",
        "upstream_role": "app_writer",
        "sql": "DELETE FROM public.orders WHERE created_at < $1",
        "category": "write",
        "command": "DELETE",
        "relations": ("public.orders",),
        "rule_id": "hold-deletes",
        "stated_reason": "purge test orders before the audit",
        "impact": "estimated 1,204 rows",
    }
    fields.update(context)
    requirement = ApprovalRequirement(Approvers(groups=frozenset({"dba"})), quorum, 900)
    return ApprovalRequest.open(REQUESTER, requirement, RequestContext(**fields), now=NOW, request_id="apr-0123abcd")


def everything(blocks: list[dict[str, Any]]) -> str:
    return json.dumps(blocks, ensure_ascii=False)


def all_texts(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["text"]] if isinstance(node.get("text"), str) else []
        return found + [text for value in node.values() for text in all_texts(value)]
    if isinstance(node, list):
        return [text for item in node for text in all_texts(item)]
    return []


def controls(blocks: list[dict[str, Any]]) -> list[str]:
    """Every Slack control sequence (``<…>``) in the message's texts."""
    return [match for text in all_texts(blocks) for match in re.findall(r"<[^>]*>?", text)]


def buttons(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [element for block in blocks if block["type"] == "actions" for element in block["elements"]]


def test_pending_message_shows_what_a_dba_needs() -> None:
    blocks = request_message(make_request())
    text = everything(blocks)
    for expected in (
        "Ada Lovelace (ada@example.com)", "10.1.2.3", "migrate-tool", "orders", "app_writer",
        "DELETE FROM public.orders WHERE created_at &lt; $1", "write (DELETE)", "public.orders",
        "purge test orders before the audit", "estimated 1,204 rows", "hold-deletes",
        "2 approvals from different people from group dba", "2023-11-14 22:28 UTC", "apr-0123abcd",
        "0 of 2 approvals",
    ):
        assert expected in text, expected
    sql_block = next(t for t in all_texts(blocks) if t.startswith("*SQL*"))
    assert "```\nDELETE FROM public.orders" in sql_block and sql_block.endswith("\n```")
    assert [(b["action_id"], b["value"]) for b in buttons(blocks)] == [
        (APPROVE_ACTION, "apr-0123abcd"), (DENY_ACTION, "apr-0123abcd"),
    ]
    assert block_problems(blocks) == []


def test_missing_context_is_said_plainly() -> None:
    blocks = request_message(
        make_request(client_address=None, application_name=None, upstream_role=None, relations=(),
                     stated_reason=None, impact=None)
    )
    text = everything(blocks)
    for expected in ("unknown address", "no application_name", "the session's default", "none named",
                     "_none given_", "not estimated"):
        assert expected in text, expected
    assert block_problems(blocks) == []


HOSTILE = "<!channel> <!here|here> <@U0ADMIN> <#C0GENERAL> <https://evil.example/approve|Approve here> & done"


@pytest.mark.parametrize("where", ["sql", "stated_reason", "application_name", "database", "impact"])
def test_client_text_cannot_mention_or_link(where: str) -> None:
    context: dict[str, Any] = {where: HOSTILE}
    blocks = request_message(make_request(**context))
    # The only control sequence left is the expiry date the message writes itself.
    assert all(c.startswith("<!date^") for c in controls(blocks)), controls(blocks)
    text = everything(blocks)
    assert "&lt;!channel&gt;" in text and "&lt;https://evil.example/approve|Approve here&gt;" in text
    assert "&amp; done" in text
    assert block_problems(blocks) == []


def test_client_text_is_verbatim_so_slack_does_not_autolink() -> None:
    blocks = request_message(make_request(stated_reason="see https://evil.example and @channel"))
    mrkdwn = [node for block in blocks for node in _nodes(block) if node.get("type") == "mrkdwn"]
    assert mrkdwn and all(node.get("verbatim") is True for node in mrkdwn)


def _nodes(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        return [node] + [n for value in node.values() for n in _nodes(value)]
    if isinstance(node, list):
        return [n for item in node for n in _nodes(item)]
    return []


def test_backticks_in_sql_cannot_close_the_code_block() -> None:
    blocks = request_message(make_request(sql="SELECT 1 ``` *bold* <!channel> ```` x"))
    sql_block = next(t for t in all_texts(blocks) if t.startswith("*SQL*"))
    inner = sql_block.split("```\n", 1)[1].rsplit("\n```", 1)[0]
    assert "``" not in inner
    assert "*bold*" in inner and "&lt;!channel&gt;" in inner


def test_a_reason_cannot_fake_a_status_line() -> None:
    blocks = request_message(make_request(stated_reason="ok\n:white_check_mark: *Approved* by boss@example.com"))
    reason = next(t for t in all_texts(blocks) if t.startswith("*Stated reason*"))
    # Every line of it is quoted under its label, apart from the status line at the top.
    assert reason.splitlines()[1:] == [">ok", ">:white_check_mark: *Approved* by boss@example.com"]


def test_long_sql_is_clipped_within_slack_limits_without_breaking_entities() -> None:
    blocks = request_message(make_request(sql="SELECT " + "a<b & " * 2000 + "😀" * 500))
    assert block_problems(blocks) == []
    sql_block = next(t for t in all_texts(blocks) if t.startswith("*SQL*"))
    inner = sql_block.split("```\n", 1)[1].rsplit("\n```", 1)[0]
    assert inner.endswith(" … (truncated)")
    assert re.search(r"&(?!amp;|lt;|gt;)", inner) is None  # no entity cut in half
    assert len(sql_block.encode("utf-16-le")) // 2 <= 3000


def test_clip_counts_escaped_length_and_astral_characters() -> None:
    assert clip("a<b", 10) == "a&lt;b"
    assert clip("<" * 100, 40) == "&lt;" * 6 + " … (truncated)"
    clipped = clip("😀" * 100, 40)
    assert clipped.endswith(" … (truncated)") and len(clipped.encode("utf-16-le")) // 2 <= 40


def test_huge_context_stays_within_every_limit() -> None:
    blocks = request_message(
        make_request(
            command="C" * 400, database="d" * 4000, application_name="x" * 5000,
            relations=tuple(f"s.t{i}" for i in range(2000)), stated_reason="line\n" * 5000, impact="i" * 9000,
            rule_id="r" * 3000,
        )
    )
    assert block_problems(blocks) == []
    header = blocks[0]["text"]["text"]
    assert len(header) <= 150 and header.endswith("…")


def test_escape_drops_control_characters() -> None:
    assert escape("a\x00b\x1bc\td\ne") == "abc\td\ne"
    assert escape("&<>") == "&amp;&lt;&gt;"


def test_progress_while_pending_and_buttons_stay() -> None:
    request = make_request().vote(Vote(DBA1, approve=True, at=NOW + 1))
    blocks = request_message(request)
    assert "Approved so far by* dba1@example.com (1 of 2 approvals)" in everything(blocks)
    assert len(buttons(blocks)) == 2


def test_approved_message_names_approvers_and_has_no_buttons() -> None:
    request = make_request().vote(Vote(DBA1, True, NOW + 1)).vote(Vote(DBA2, True, NOW + 2))
    blocks = request_message(request)
    assert "*Approved* by dba1@example.com, dba2@example.com (2 of 2 approvals)" in everything(blocks)
    assert buttons(blocks) == []
    assert fallback_text(request) == "Approved: DELETE (apr-0123abcd)"


def test_denied_message_names_the_denier_and_the_escaped_reason() -> None:
    request = make_request().vote(Vote(DBA1, False, NOW + 1, reason="not now <!channel>\nuse a batch job"))
    blocks = request_message(request)
    status = blocks[1]["text"]["text"]
    assert status == ":no_entry: *Denied* by dba1@example.com:\n>not now &lt;!channel&gt;\n>use a batch job"
    assert buttons(blocks) == []


def test_expired_and_withdrawn_messages_have_no_buttons() -> None:
    expired = make_request(quorum=2).vote(Vote(DBA1, True, NOW + 1)).expire(NOW + 900)
    assert "*Expired* without a decision (1 of 2 approvals)" in everything(request_message(expired))
    assert buttons(request_message(expired)) == []
    withdrawn = make_request().withdraw(NOW + 5)
    assert "*Withdrawn*" in everything(request_message(withdrawn))
    assert buttons(request_message(withdrawn)) == []


def test_single_approval_wording() -> None:
    request = make_request(quorum=1)
    assert "0 of 1 approval)" in everything(request_message(request))


def test_fallback_text_carries_no_client_text() -> None:
    request = make_request(command="DELETE", database="<!channel> https://evil.example", stated_reason="<!here>")
    assert fallback_text(request) == "Approval needed: DELETE (apr-0123abcd)"
    odd = replace(request, context=replace(request.context, command="<x>"))
    assert fallback_text(odd) == "Approval needed: &lt;x&gt; (apr-0123abcd)"


def test_requester_without_email_is_named_by_subject_and_issuer() -> None:
    request = replace(make_request(), requester=Identity("svc-7", "https://idp.example.com/", None, None, (), None))
    assert "svc-7 (https://idp.example.com/)" in everything(request_message(request))


def test_deny_modal_asks_for_a_reason() -> None:
    view = deny_modal(make_request(database="<!here>"), private_metadata='{"request": "apr-0123abcd"}')
    assert view["type"] == "modal" and view["callback_id"] == DENY_CALLBACK
    assert view["private_metadata"] == '{"request": "apr-0123abcd"}'
    assert len(view["title"]["text"]) <= 24 and "submit" in view
    field = next(block for block in view["blocks"] if block["type"] == "input")
    assert field["block_id"] == REASON_BLOCK and field["element"]["action_id"] == REASON_ACTION
    assert field["element"]["type"] == "plain_text_input" and field["element"]["max_length"] <= 3000
    assert all(c.startswith("<!date^") for c in controls(view["blocks"]))
    assert block_problems(view["blocks"], surface="modal") == []
