"""Checks of pgproxy's settings that concern one feature each: Slack approvals and web sign-in.

``pgproxy.config.Settings`` calls these from its validators; each raises ``ValueError`` with a message
naming what is wrong and what to give instead. They never put a secret's value in a message: a secret
must not reach logs or terminals. Loading only: nothing here opens sockets.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from pydantic import SecretStr

from pgproxy.approvals.directory import DirectoryError, load_directory
from pgproxy.dsn import is_loopback_host

_SLACK_CHANNEL = re.compile(r"[CGD][A-Z0-9]{2,30}")
_TOKEN_PREFIXES = {"slack_bot_token": "xoxb-", "slack_app_token": "xapp-"}


class SlackSettings(Protocol):
    approvals: bool
    web_listen: str | None
    slack_bot_token: SecretStr | None
    slack_signing_secret: SecretStr | None
    slack_channel: str | None
    slack_app_token: SecretStr | None
    approver_directory: Path | None


class WebSignInSettings(Protocol):
    web_listen: str | None
    web_oidc_client_id: str | None
    web_oidc_client_secret: SecretStr | None
    web_oidc_redirect_uri: str | None
    web_oidc_scopes: list[str]
    web_paste_login: bool
    oidc_audience: list[str]


def slack_secret(value: SecretStr | None, field_name: str) -> SecretStr | None:
    if value is None:
        return None
    prefix = _TOKEN_PREFIXES.get(field_name, "")
    secret = value.get_secret_value()
    if not secret.strip() or secret != secret.strip():
        raise ValueError("must not be empty or start or end with spaces")
    if not secret.startswith(prefix):
        kind = "a bot token" if prefix == "xoxb-" else "an app-level token"
        raise ValueError(f"expected {kind} starting with {prefix}")
    return value


def slack_channel(value: str | None) -> str | None:
    if value is not None and not _SLACK_CHANNEL.fullmatch(value):
        raise ValueError(f"expected a channel id such as C0123456789 (see the channel's details), got {value!r}")
    return value


def slack_api_url(value: str) -> str:
    url = urlsplit(value)
    if url.scheme not in ("https", "http") or not url.hostname:
        raise ValueError("expected an https:// URL")
    if url.scheme == "http" and not is_loopback_host(url.hostname):
        raise ValueError("the bot token would cross the network in clear: use https:// (http:// only to loopback)")
    return value if value.endswith("/") else value + "/"


def approver_directory(value: Path | None) -> Path | None:
    if value is None:
        return None
    if not value.is_file():
        raise ValueError(f"file not found: {value}")
    try:
        load_directory(value)
    except DirectoryError as exc:
        raise ValueError(f"the directory does not load:\n{exc}") from None
    return value


def slack_complete(settings: SlackSettings) -> None:
    """Slack settings come as a whole, and only with approvals."""
    configured = (settings.slack_bot_token, settings.slack_signing_secret, settings.slack_channel,
                  settings.slack_app_token, settings.approver_directory)
    if all(value is None for value in configured):
        return
    if not settings.approvals:
        raise ValueError("the Slack settings need approvals (--approvals): only held statements go to Slack")
    missing = [
        need for need, given in (
            ("slack_bot_token", settings.slack_bot_token),
            ("slack_channel", settings.slack_channel),
            ("slack_signing_secret (Slack sends clicks to /slack/interactions on web_listen) or slack_app_token"
             " (Socket Mode)", settings.slack_signing_secret or settings.slack_app_token),
            ("approver_directory (who Slack users are)", settings.approver_directory),
        ) if given is None
    ]  # fmt: skip
    if missing:
        raise ValueError(f"Slack approvals need {'; '.join(missing)}")
    if settings.slack_signing_secret is not None and settings.web_listen is None:
        raise ValueError("slack_signing_secret needs web_listen: Slack posts clicks to its /slack/interactions")


def web_sign_in(settings: WebSignInSettings) -> None:
    """Signing in to the web pages through the identity provider is configured consistently."""
    if settings.web_oidc_client_id is None:
        if settings.web_oidc_redirect_uri is not None or settings.web_oidc_client_secret is not None:
            raise ValueError("web_oidc_redirect_uri and web_oidc_client_secret need web_oidc_client_id")
        if not settings.web_paste_login:
            raise ValueError("web_paste_login = false needs web_oidc_client_id: people need a way to sign in")
        return
    if settings.web_listen is None:
        raise ValueError("web_oidc_client_id signs people in to the web pages: give web_listen")
    uri = urlsplit(settings.web_oidc_redirect_uri or "")
    loopback = uri.hostname in ("localhost", "127.0.0.1", "::1")
    if not (uri.scheme == "https" or (uri.scheme == "http" and loopback)) or uri.path != "/oidc/callback":
        raise ValueError("web_oidc_redirect_uri must be https://HOST:PORT/oidc/callback, as registered "
                         "with the identity provider")
    if settings.web_oidc_client_id not in settings.oidc_audience:
        raise ValueError("add web_oidc_client_id to oidc_audience: web sign-ins get ID tokens issued to it")
    if "openid" not in settings.web_oidc_scopes:
        raise ValueError("web_oidc_scopes must include openid")
