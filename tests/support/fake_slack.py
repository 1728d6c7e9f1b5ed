"""A fake Slack Web API for tests, spoken to by the real slack_sdk ``AsyncWebClient`` through ``base_url``.

It serves, on 127.0.0.1 at an ephemeral port, ``chat.postMessage``, ``chat.update``,
``chat.postEphemeral``, ``users.info``, ``views.open`` and ``apps.connections.open`` under ``/api/``,
checks the bearer token of each call (the bot token; the app-level token for
``apps.connections.open``), answers as Slack does (HTTP 200 with ``ok: false`` and an error code), and
records every call. Messages and views are checked against Slack's documented Block Kit limits, so a
message Slack would reject with ``invalid_blocks`` is rejected here too. Trigger ids are issued per user
and single use, as Slack's are.

It also plays Slack's side of an interaction: :meth:`FakeSlack.click` builds the ``block_actions``
payload for a button of a message it holds (with that button's real ``value``), :meth:`FakeSlack.submit`
the ``view_submission`` of a view it opened, and :func:`signed` encodes a payload and signs it exactly
as Slack does (``v0=`` + hex HMAC-SHA256 of ``v0:{timestamp}:{body}`` keyed with the signing secret),
with hashlib/hmac directly rather than slack_sdk, so the verifier under test is checked against an
independent implementation. A Socket Mode endpoint (``/link``) delivers envelopes and collects acks.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from aiohttp import WSMsgType, web
from slack_sdk.web.async_client import AsyncWebClient

__all__ = [
    "APP_TOKEN", "BOT_TOKEN", "CHANNEL", "SIGNING_SECRET", "TEAM", "Call", "FakeSlack", "block_problems", "signature",
    "signed",
]

BOT_TOKEN = "xoxb-fake-bot-token"
APP_TOKEN = "xapp-fake-app-token"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CHANNEL = "C0APPROVALS"
TEAM = "T0PGPROXY"


@dataclass(frozen=True)
class Call:
    method: str
    args: dict[str, Any]
    token: str | None


def signature(body: bytes, *, timestamp: int, secret: str = SIGNING_SECRET) -> str:
    """Slack's ``X-Slack-Signature`` for ``body`` sent at ``timestamp``."""
    basestring = b"v0:" + str(timestamp).encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), basestring, hashlib.sha256).hexdigest()


def signed(payload: Mapping[str, Any], *, timestamp: int, secret: str = SIGNING_SECRET) -> tuple[bytes, dict[str, str]]:
    """A form-encoded interaction request body and the headers Slack would send with it."""
    body = urlencode({"payload": json.dumps(payload)}).encode()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": str(timestamp),
        "X-Slack-Signature": signature(body, timestamp=timestamp, secret=secret),
    }
    return body, headers


def _texts(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if node.get("type") in ("plain_text", "mrkdwn") and "text" in node:
            yield node
        for value in node.values():
            yield from _texts(value)
    elif isinstance(node, list):
        for item in node:
            yield from _texts(item)


def block_problems(blocks: list[dict[str, Any]], *, surface: str = "message") -> list[str]:
    """What Slack's Block Kit limits would reject in ``blocks`` (empty: nothing)."""
    problems = []
    if len(blocks) > (50 if surface == "message" else 100):
        problems.append(f"{len(blocks)} blocks")
    for index, block in enumerate(blocks):
        kind = block.get("type")
        text = (block.get("text") or {}).get("text", "")
        if kind == "header" and (block["text"]["type"] != "plain_text" or len(text) > 150):
            problems.append(f"block {index}: header text")
        if kind == "section":
            if len(text) > 3000:
                problems.append(f"block {index}: section text of {len(text)}")
            fields = block.get("fields") or []
            if len(fields) > 10 or any(len(field["text"]) > 2000 for field in fields):
                problems.append(f"block {index}: fields")
            if not text and not fields:
                problems.append(f"block {index}: empty section")
        if kind == "actions":
            for element in block["elements"]:
                if len(element.get("value", "")) > 2000 or len(element.get("action_id", "")) > 255:
                    problems.append(f"block {index}: button")
    for text in _texts(blocks):
        if not text["text"]:
            problems.append("empty text object")
    return problems


class FakeSlack:
    """The fake; ``await start()`` before use, ``await close()`` after."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.users: dict[str, dict[str, Any]] = {}
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}  # (channel, ts) → current message
        self.views: dict[str, dict[str, Any]] = {}  # view id → the view as opened, plus "user"
        self.errors: dict[str, str] = {}  # method → error code answered (once) instead
        self.acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._triggers: dict[str, str] = {}  # unused trigger id → user id
        self._counter = itertools.count(1)
        self._sockets: list[web.WebSocketResponse] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/link", self._link)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        for socket in self._sockets:
            await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def client(self, token: str = BOT_TOKEN) -> AsyncWebClient:
        return AsyncWebClient(token=token, base_url=self.base_url)

    # -- test set-up and inspection ----------------------------------------------------------------
    def add_user(self, user_id: str, email: str | None, *, team_id: str = TEAM, **flags: Any) -> None:
        profile: dict[str, Any] = {"real_name": user_id, "display_name": user_id}
        if email is not None:
            profile["email"] = email
        self.users[user_id] = {"id": user_id, "team_id": team_id, "name": user_id.lower(), "deleted": False,
                               "is_bot": False, "is_restricted": False, "is_ultra_restricted": False,
                               "is_email_confirmed": True, "profile": profile, **flags}

    def calls_to(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    def click(self, user_id: str, ts: str, action_id: str, *, channel: str = CHANNEL) -> dict[str, Any]:
        """The block_actions payload of ``user_id`` pressing a button of the message ``ts``."""
        message = self.messages[(channel, ts)]
        button = next(
            element
            for block in message["blocks"] if block["type"] == "actions"
            for element in block["elements"] if element["action_id"] == action_id
        )
        trigger = f"{next(self._counter)}.{user_id}.trigger"
        self._triggers[trigger] = user_id
        return {
            "type": "block_actions",
            "team": {"id": TEAM, "domain": "pgproxy"},
            "user": {"id": user_id, "username": user_id.lower(), "team_id": TEAM},
            "api_app_id": "A0PGPROXY",
            "trigger_id": trigger,
            "container": {"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": False},
            "channel": {"id": channel, "name": "approvals"},
            "message": {"type": "message", "ts": ts, "text": message["text"], "blocks": message["blocks"]},
            "response_url": f"http://127.0.0.1:{self.port}/response/{ts}",
            "actions": [{"type": "button", "action_id": action_id, "block_id": "b1", "value": button["value"],
                         "action_ts": "1700000000.000001"}],
        }

    def submit(self, view_id: str, text: str) -> dict[str, Any]:
        """The view_submission payload of the view's user filling every text input with ``text``."""
        view = self.views[view_id]
        values = {
            block["block_id"]: {block["element"]["action_id"]: {"type": "plain_text_input", "value": text}}
            for block in view["blocks"] if block["type"] == "input"
        }
        return {
            "type": "view_submission",
            "team": {"id": TEAM, "domain": "pgproxy"},
            "user": {"id": view["user"], "username": view["user"].lower(), "team_id": TEAM},
            "api_app_id": "A0PGPROXY",
            "trigger_id": f"{next(self._counter)}.submit.trigger",
            "view": {**{k: v for k, v in view.items() if k != "user"}, "state": {"values": values}},
        }

    async def send_envelope(self, payload: dict[str, Any], kind: str = "interactive") -> dict[str, Any]:
        """Deliver an envelope over the Socket Mode connection; returns the app's ack."""
        envelope_id = f"env-{next(self._counter)}"
        self.acks[envelope_id] = asyncio.get_running_loop().create_future()
        await self._sockets[-1].send_json({"envelope_id": envelope_id, "type": kind, "payload": payload,
                                           "accepts_response_payload": kind == "interactive"})
        return await asyncio.wait_for(self.acks[envelope_id], timeout=30)

    # -- the Web API -------------------------------------------------------------------------------
    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            args.update(await request.json())
        elif request.can_read_body:
            args.update(await request.post())
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        self.calls.append(Call(method, args, token))
        expected = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if token is None:
            return web.json_response({"ok": False, "error": "not_authed"})
        if token != expected:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if method in self.errors:
            return web.json_response({"ok": False, "error": self.errors.pop(method)})
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"}, status=404)
        answer: dict[str, Any] = handler(args)
        return web.json_response(answer)

    def _check_message(self, args: dict[str, Any]) -> str | None:
        blocks = args.get("blocks")
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        if blocks is not None and block_problems(blocks):
            return "invalid_blocks"
        if not args.get("text") and not blocks:
            return "no_text"
        if len(args.get("text") or "") > 40000:
            return "msg_too_long"
        return None

    def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("channel") != CHANNEL:
            return {"ok": False, "error": "channel_not_found"}
        if error := self._check_message(args):
            return {"ok": False, "error": error}
        ts = f"1700000000.{next(self._counter):06d}"
        self.messages[(CHANNEL, ts)] = {"text": args.get("text"), "blocks": args.get("blocks") or []}
        return {"ok": True, "channel": CHANNEL, "ts": ts, "message": self.messages[(CHANNEL, ts)]}

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        key = (args.get("channel", ""), args.get("ts", ""))
        if key not in self.messages:
            return {"ok": False, "error": "message_not_found"}
        if error := self._check_message(args):
            return {"ok": False, "error": error}
        self.messages[key] = {"text": args.get("text"), "blocks": args.get("blocks") or []}
        return {"ok": True, "channel": key[0], "ts": key[1], "text": args.get("text")}

    def _chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("channel") != CHANNEL:
            return {"ok": False, "error": "channel_not_found"}
        if args.get("user") not in self.users:
            return {"ok": False, "error": "user_not_in_channel"}
        return {"ok": True, "message_ts": f"1700000000.{next(self._counter):06d}"}

    def _users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(args.get("user", ""))
        return {"ok": True, "user": user} if user is not None else {"ok": False, "error": "user_not_found"}

    def _views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        user = self._triggers.pop(args.get("trigger_id", ""), None)
        if user is None:
            return {"ok": False, "error": "invalid_trigger_id"}
        view = args.get("view")
        view = json.loads(view) if isinstance(view, str) else view
        if not isinstance(view, dict) or view.get("type") != "modal":
            return {"ok": False, "error": "invalid_arguments"}
        blocks = view.get("blocks") or []
        has_input = any(block["type"] == "input" for block in blocks)
        if (
            block_problems(blocks, surface="modal")
            or len(view["title"]["text"]) > 24
            or (has_input and "submit" not in view)
            or len(view.get("private_metadata", "")) > 3000
            or len(view.get("callback_id", "")) > 255
        ):
            return {"ok": False, "error": "invalid_arguments"}
        view_id = f"V{next(self._counter):08d}"
        self.views[view_id] = {**view, "id": view_id, "user": user}
        return {"ok": True, "view": {**view, "id": view_id}}

    def _apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/link?ticket={next(self._counter)}"}

    # -- Socket Mode -------------------------------------------------------------------------------
    async def _link(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(autoping=True)
        await socket.prepare(request)
        self._sockets.append(socket)
        await socket.send_json({"type": "hello", "num_connections": 1})
        async for message in socket:
            if message.type is not WSMsgType.TEXT:
                continue
            ack = json.loads(message.data)
            future = self.acks.get(ack.get("envelope_id", ""))
            if future is not None and not future.done():
                future.set_result(ack)
        return socket
