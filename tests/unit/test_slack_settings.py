"""The Slack settings of `pgproxy run`: what a complete configuration is (HTTP endpoint or Socket Mode),
what is refused and why, and that the secrets never show in errors, reprs or on the command line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from pgproxy.cli import build_parser
from pgproxy.config import SLACK_API_URL, Settings, SettingsError, load_settings

BOT_TOKEN = "xoxb-1234-5678-bot-token-under-test"
APP_TOKEN = "xapp-1-A0-99-app-token-under-test"
SIGNING_SECRET = "signing-secret-under-test-0123456789"
SECRETS = (BOT_TOKEN, APP_TOKEN, SIGNING_SECRET)


@pytest.fixture(autouse=True)
def no_pgproxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("PGPROXY_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    path = tmp_path / "approvers.yaml"
    path.write_text("people:\n  dba@example.com: {groups: [dba]}\n")
    return path


@pytest.fixture
def settings(tmp_path: Path, directory: Path) -> dict[str, Any]:
    """A complete configuration with Slack's HTTP endpoint."""
    policies = tmp_path / "policies"
    policies.mkdir()
    return {
        "upstream": "postgresql://pgproxy@127.0.0.1:5432/app", "oidc_issuer": "https://idp.example.com",
        "oidc_audience": "pgproxy", "allow_plaintext_loopback": True, "policies": policies,
        "audit_jsonl": tmp_path / "audit.jsonl", "approvals": True, "web_listen": "127.0.0.1:6433",
        "slack_bot_token": BOT_TOKEN, "slack_signing_secret": SIGNING_SECRET, "slack_channel": "C0123456789",
        "approver_directory": directory,
    }


def refusal(overrides: dict[str, Any]) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(overrides)
    message = str(caught.value)
    assert not any(secret in message for secret in SECRETS), message
    return message


def test_a_complete_http_configuration_loads_and_hides_its_secrets(settings: dict[str, Any]) -> None:
    loaded = load_settings(settings)
    assert loaded.slack and loaded.slack_channel == "C0123456789" and loaded.slack_api_url == SLACK_API_URL
    assert loaded.slack_bot_token is not None and loaded.slack_bot_token.get_secret_value() == BOT_TOKEN
    assert loaded.slack_signing_secret is not None and loaded.slack_signing_secret.get_secret_value() == SIGNING_SECRET
    shown = repr(loaded) + str(loaded) + loaded.model_dump_json()
    assert not any(secret in shown for secret in SECRETS)


def test_secrets_come_from_the_environment(settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPROXY_SLACK_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("PGPROXY_SLACK_SIGNING_SECRET", SIGNING_SECRET)
    del settings["slack_bot_token"], settings["slack_signing_secret"]
    loaded = load_settings(settings)
    assert loaded.slack_bot_token is not None and loaded.slack_bot_token.get_secret_value() == BOT_TOKEN


def test_socket_mode_needs_no_signing_secret(settings: dict[str, Any]) -> None:
    del settings["slack_signing_secret"]
    loaded = load_settings({**settings, "slack_app_token": APP_TOKEN})
    assert loaded.slack and loaded.slack_signing_secret is None
    assert loaded.slack_app_token is not None and loaded.slack_app_token.get_secret_value() == APP_TOKEN


def test_slack_needs_approvals(settings: dict[str, Any]) -> None:
    del settings["approvals"]
    assert "the Slack settings need approvals (--approvals)" in refusal(settings)


@pytest.mark.parametrize(
    ("dropped", "expected"),
    [
        (("slack_bot_token",), "Slack approvals need slack_bot_token"),
        (("slack_channel",), "Slack approvals need slack_channel"),
        (("slack_signing_secret",), "Slack approvals need slack_signing_secret (Slack sends clicks to "
                                    "/slack/interactions on web_listen) or slack_app_token (Socket Mode)"),
        (("approver_directory",), "Slack approvals need approver_directory (who Slack users are)"),
        (("slack_bot_token", "slack_channel"), "Slack approvals need slack_bot_token; slack_channel"),
    ],
)
def test_an_incomplete_slack_configuration_says_what_is_missing(
    settings: dict[str, Any], dropped: tuple[str, ...], expected: str
) -> None:
    for name in dropped:
        del settings[name]
    assert expected in refusal(settings)


def test_a_directory_alone_is_an_incomplete_slack_configuration(settings: dict[str, Any]) -> None:
    for name in ("slack_bot_token", "slack_signing_secret", "slack_channel"):
        del settings[name]
    assert "Slack approvals need slack_bot_token; slack_channel" in refusal(settings)


def test_tokens_of_the_wrong_kind_are_refused_without_echoing_them(settings: dict[str, Any]) -> None:
    message = refusal({**settings, "slack_bot_token": APP_TOKEN})
    assert "invalid setting 'slack_bot_token' (PGPROXY_SLACK_BOT_TOKEN or the config file)" in message
    assert "expected a bot token starting with xoxb-" in message
    message = refusal({**settings, "slack_app_token": BOT_TOKEN})
    assert "expected an app-level token starting with xapp-" in message
    assert "must not be empty" in refusal({**settings, "slack_signing_secret": " "})


def test_validation_errors_never_carry_the_values(settings: dict[str, Any]) -> None:
    for wrong in ({"slack_bot_token": APP_TOKEN}, {"approvals": False}, {"slack_channel": "#approvals"}):
        with pytest.raises(ValidationError) as caught:
            Settings(**{**settings, **wrong})
        assert not any(secret in str(caught.value) for secret in SECRETS), str(caught.value)


def test_the_channel_is_an_id_not_a_name(settings: dict[str, Any]) -> None:
    message = refusal({**settings, "slack_channel": "#approvals"})
    assert "invalid setting 'slack_channel' (--slack-channel / PGPROXY_SLACK_CHANNEL)" in message
    assert "expected a channel id such as C0123456789" in message


def test_the_api_url_is_https_except_to_loopback(settings: dict[str, Any]) -> None:
    assert "in clear" in refusal({**settings, "slack_api_url": "http://slack.example.com/api/"})
    assert "expected an https:// URL" in refusal({**settings, "slack_api_url": "slack.com/api"})
    assert load_settings({**settings, "slack_api_url": "http://127.0.0.1:8080/api"}).slack_api_url == (
        "http://127.0.0.1:8080/api/")
    assert load_settings({**settings, "slack_api_url": "https://slack-proxy.internal/api/"}).slack_api_url == (
        "https://slack-proxy.internal/api/")


def test_an_invalid_directory_stops_pgproxy_with_file_and_line(settings: dict[str, Any], directory: Path) -> None:
    directory.write_text("people:\n  dba@example.com:\n    grups: [dba]\n")
    message = refusal(settings)
    assert "invalid setting 'approver_directory' (--approver-directory / PGPROXY_APPROVER_DIRECTORY)" in message
    assert f"{directory}:3: people[\"dba@example.com\"].grups: unknown field 'grups'" in message
    assert "file not found" in refusal({**settings, "approver_directory": directory.parent / "absent.yaml"})


def test_run_has_flags_for_the_slack_settings_but_none_taking_a_secret(directory: Path) -> None:
    parser = build_parser()
    args = parser.parse_args(["run", "--slack-channel", "C0123456789", "--approver-directory", str(directory),
                              "--slack-api-url", "https://slack-proxy.internal/api/"])
    assert (args.slack_channel, args.approver_directory) == ("C0123456789", directory)
    for flag in ("--slack-bot-token", "--slack-signing-secret", "--slack-app-token"):
        with pytest.raises(SystemExit):
            parser.parse_args(["run", flag, "value"])
