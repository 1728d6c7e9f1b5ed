"""Slack Socket Mode for approvals: take button clicks and form submissions over a WebSocket.

For deployments that cannot expose an interactivity URL to Slack, :class:`SlackSocketRunner` opens a
Socket Mode connection with slack_sdk's asyncio client (the aiohttp backend; the ``websockets`` backend
when aiohttp is not installed) and feeds every ``interactive`` envelope to the same handling as the
HTTP endpoint, :meth:`~pgproxy.approvals.slack.SlackChannel.handle_payload`, then acknowledges the
envelope with the handler's answer (for the deny form: ``response_action`` errors, or nothing to close
it). Other envelope types (events, slash commands) are acknowledged and otherwise ignored.

Why there is no signature check here: Slack signs only the HTTP requests it sends to an app's URL.
In Socket Mode nothing comes in: pgproxy itself asks ``apps.connections.open`` for a WebSocket URL,
authenticating with the app-level token (``xapp-…``, scope ``connections:write``), and connects to that
short-lived URL over TLS. Envelopes arriving on that connection come from Slack because only Slack
could have handed out the URL to the holder of the token; they carry no ``X-Slack-Signature``. So the
app-level token is the secret to protect in this mode, as the signing secret is for the HTTP endpoint.
Everything after authentication (who clicked, whether their vote counts) is checked exactly as for
HTTP.

This module must not interpret payloads itself (that is ``slack``) nor post messages (the channel does,
through the bot token's web client).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from pgproxy.approvals.slack import SlackChannel

__all__ = ["SlackSocketRunner", "socket_mode_backend"]

log = logging.getLogger(__name__)


def socket_mode_backend() -> Callable[..., Any]:
    """slack_sdk's asyncio Socket Mode client class: aiohttp's, else websockets'.

    Raises ImportError naming both packages when neither is installed.
    """
    try:
        from slack_sdk.socket_mode.aiohttp import SocketModeClient  # noqa: PLC0415 (optional backend)

        return SocketModeClient
    except ImportError:
        pass
    try:
        from slack_sdk.socket_mode.websockets import (  # noqa: PLC0415 (optional backend)
            SocketModeClient as WebsocketsSocketModeClient,
        )

        return WebsocketsSocketModeClient
    except ImportError as error:
        raise ImportError("Slack Socket Mode needs the aiohttp or the websockets package") from error


class SlackSocketRunner:
    """One Socket Mode connection feeding interactive payloads to a :class:`SlackChannel`.

    ``web_client`` is used only to ask for the WebSocket URL (with ``app_token``, not its own token);
    ``clock`` gives the vote time (seconds since the epoch).
    """

    def __init__(
        self,
        channel: SlackChannel,
        *,
        app_token: str,
        web_client: AsyncWebClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not app_token.startswith("xapp-"):
            raise ValueError("Socket Mode needs an app-level token (xapp-…), not a bot token")
        self._channel = channel
        self._app_token = app_token
        self._web_client = web_client
        self._clock = clock
        self._client: Any = None  # slack_sdk's client classes are not annotated

    @property
    def connected(self) -> bool:
        return self._client is not None and not self._client.closed

    async def start(self) -> None:
        """Connect; raises slack_sdk's SlackApiError at once when Slack refuses the app token."""
        if self._client is not None:
            raise RuntimeError("the Socket Mode runner is already started")
        backend = socket_mode_backend()
        client: Any = backend(app_token=self._app_token, web_client=self._web_client or AsyncWebClient())
        client.socket_mode_request_listeners.append(self._on_request)
        try:
            # Ask for the URL first: the client's own connect() would retry a refused token forever.
            client.wss_uri = await client.issue_new_wss_url()
            await client.connect()
        except BaseException:
            await client.close()
            raise
        self._client = client

    async def close(self) -> None:
        """Disconnect (idempotent)."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _on_request(self, client: AsyncBaseSocketModeClient, request: SocketModeRequest) -> None:
        body: dict[str, Any] | None = None
        if request.type == "interactive":
            try:
                result = await self._channel.handle_payload(request.payload, self._clock())
                body = result.body
            except Exception:  # acknowledge anyway: Slack would otherwise retry into the same failure
                log.exception("Slack interaction %s failed", request.envelope_id)
        await client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id, payload=body))
