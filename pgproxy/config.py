"""pgproxy's settings: flags, ``PGPROXY_*`` environment variables or a TOML config file.

Precedence: command-line flags, then environment, then the config file, then defaults. Every
setting is validated when pgproxy starts; an invalid one stops it with a message naming the
setting, its flag and its environment variable. Secrets (the Slack tokens and signing secret) are
``SecretStr``: their values appear in no repr and no error message. Loading only: nothing here opens
sockets (the approver directory file is read to validate it).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from pgproxy import config_checks as checks
from pgproxy.audit.pg_schema import checked_schema
from pgproxy.dsn import DSNError, UpstreamTarget, parse_dsn

SLACK_API_URL = "https://slack.com/api/"
# Settings without a command-line flag: command lines are visible to every user of the machine.
SECRET_SETTINGS = frozenset({"slack_bot_token", "slack_signing_secret", "slack_app_token", "mask_key"})


class SettingsError(Exception):
    """Settings are invalid; the message names each offending setting."""


class Settings(BaseSettings):
    # hide_input_in_errors: a validation error must never print a secret (tokens, DSN passwords).
    model_config = SettingsConfigDict(
        env_prefix="PGPROXY_", extra="forbid", validate_default=True, hide_input_in_errors=True
    )
    config_file: ClassVar[Path | None] = None

    listen: str = Field("127.0.0.1:6432", description="address:port clients connect to")
    upstream: str = Field(description="PostgreSQL connection string pgproxy logs in with (its own role)")
    tls_cert: Path | None = Field(None, description="certificate (PEM) presented to clients")
    tls_key: Path | None = Field(None, description="private key (PEM) for --tls-cert")
    oidc_issuer: str = Field(description="expected `iss` of client tokens")
    oidc_audience: Annotated[list[str], NoDecode] = Field(description="accepted `aud` values (comma separated)")
    oidc_jwks: str | None = Field(None, description="JWKS URL or file; default: discovered from the issuer")
    oidc_algorithms: Annotated[list[str], NoDecode] = Field(
        ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"],
        description="accepted token signature algorithms (asymmetric only)",
    )
    groups_claim: str = Field("groups", description="claim (dotted path allowed) holding the caller's groups")
    allow_plaintext_loopback: bool = Field(False, description="accept unencrypted clients on loopback")
    session_outlives_token: bool = Field(False, description="keep sessions open after the token expires")
    max_connections: int = Field(1000, ge=1, description="client connections served at once; more get 53300")
    max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest client message accepted")
    shutdown_grace_seconds: float = Field(30.0, ge=0, description="time in-flight statements get on shutdown")
    startup_timeout_seconds: float = Field(60.0, gt=0, description="time a client has to log in")
    policies: Path = Field(Path("policies"), description="directory of policy files (*.yaml)")
    policy_poll_seconds: float = Field(
        2.0, ge=0, description="how often policy files are checked for changes (0: reload on SIGHUP only)"
    )
    audit_jsonl: Path | None = Field(None, description="append-only JSONL audit log file (created 0600)")
    audit_dsn: str | None = Field(None, description="PostgreSQL DSN of the audit database (schema audit_schema)")
    audit_schema: str = Field("pgproxy", description="schema of the audit tables in audit_dsn's database")
    audit_disabled: bool = Field(False, description="run without an audit log (never in production)")
    audit_fail_open: bool = Field(
        False, description="let statements run (records kept in memory) while the audit store is unavailable"
    )
    audit_redact_literals: bool = Field(False, description="log statement text with constants replaced by $n")
    audit_forward: str = Field("none", description="also send records as JSON lines to: none, stdout or syslog")
    audit_syslog_address: str = Field("/dev/log", description="syslog socket path or HOST:PORT (UDP)")
    web_listen: str | None = Field(None, description="HOST:PORT of the audit review page and API (off when unset)")
    audit_reviewers: Annotated[list[str], NoDecode] = Field(
        ["auditors"], description="groups whose members may use the audit review page (comma separated)"
    )
    web_oidc_client_id: str | None = Field(
        None, description="the web pages' client id at the identity provider: sign people in there (code flow + PKCE)"
    )
    web_oidc_client_secret: SecretStr | None = Field(
        None, description="the web client's secret, for a confidential client (environment or config file only)"
    )
    web_oidc_redirect_uri: str | None = Field(
        None, description="the web client's registered redirect URI: https://HOST:PORT/oidc/callback"
    )
    web_oidc_scopes: Annotated[list[str], NoDecode] = Field(
        ["openid", "email", "profile"], description="scopes the web sign-in asks for (comma separated)"
    )
    web_paste_login: bool = Field(True, description="also let people sign in to the web pages by pasting a token")
    audit_review_dsn: str | None = Field(
        None, description="DSN the review page reads the audit database with (default: audit_dsn)"
    )
    approvals: bool = Field(
        False, description="hold statements that need approval until approvers decide (else refuse them)"
    )
    approvals_dsn: str | None = Field(
        None, description="PostgreSQL DSN of the approval store shared by replicas (default: audit_dsn)"
    )
    approvals_url: str | None = Field(
        None, description="where clients are told to get a held statement approved (default: the review page)"
    )
    slack_bot_token: SecretStr | None = Field(
        None, description="Slack bot token (xoxb-…) that posts approval requests; a secret: environment or config file"
    )
    slack_signing_secret: SecretStr | None = Field(
        None, description="the Slack app's signing secret, checking clicks sent to /slack/interactions (a secret)"
    )
    slack_channel: str | None = Field(None, description="id (C0123456789) of the Slack channel requests are posted to")
    slack_app_token: SecretStr | None = Field(
        None, description="Slack app-level token (xapp-…): take clicks over Socket Mode instead (a secret)"
    )
    slack_api_url: str = Field(SLACK_API_URL, description="base URL of the Slack Web API (tests, HTTP proxies)")
    approver_directory: Path | None = Field(
        None, description="YAML file mapping approvers' emails to their groups (required with Slack)"
    )
    mask_key: SecretStr | None = Field(
        None,
        description="key of the hash masking strategy (HMAC-SHA256), at least 16 bytes; a secret: environment or"
        " config file (default: a random key per process, so hashes match only within one pgproxy run)",
    )
    mask_catalog_refresh_seconds: float = Field(
        60.0, gt=0, description="how often the catalog masking relies on is read again (DDL through pgproxy: at once)"
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls.config_file))
        return tuple(sources)

    @field_validator("oidc_audience", "oidc_algorithms", "audit_reviewers", "web_oidc_scopes", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("web_listen")
    @classmethod
    def _check_web_listen(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value

    @field_validator("audit_reviewers")
    @classmethod
    def _check_reviewers(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one reviewer group is required")
        return value

    @field_validator("upstream")
    @classmethod
    def _check_upstream(cls, value: str) -> str:
        try:
            parse_dsn(value)
        except DSNError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @field_validator("oidc_algorithms")
    @classmethod
    def _check_algorithms(cls, value: list[str]) -> list[str]:
        bad = [alg for alg in value if alg.lower() == "none" or alg.upper().startswith("HS")]
        if bad:
            raise ValueError(f"symmetric or unsigned algorithms are never accepted: {', '.join(bad)}")
        if not value:
            raise ValueError("at least one algorithm is required")
        return value

    @field_validator("oidc_audience")
    @classmethod
    def _check_audience(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one audience is required")
        return value

    @field_validator("tls_cert", "tls_key")
    @classmethod
    def _check_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file not found: {value}")
        return value

    @field_validator("policies")
    @classmethod
    def _check_policies(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"policy directory not found: {value}")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
        return value.upper()

    @field_validator("audit_forward")
    @classmethod
    def _check_forward(cls, value: str) -> str:
        if value.lower() not in ("none", "stdout", "syslog"):
            raise ValueError("expected none, stdout or syslog")
        return value.lower()

    @field_validator("audit_schema")
    @classmethod
    def _check_audit_schema(cls, value: str) -> str:
        checked_schema(value)
        return value

    @model_validator(mode="after")
    def _check_audit(self) -> Settings:
        configured = self.audit_jsonl is not None or self.audit_dsn is not None
        if self.audit_disabled and configured:
            raise ValueError("audit_disabled contradicts audit_jsonl/audit_dsn")
        if not self.audit_disabled and not configured:
            raise ValueError(
                "no audit log: give audit_jsonl (a file) and/or audit_dsn (a PostgreSQL database),"
                " or audit_disabled to run without one"
            )
        if self.web_listen is not None and not configured:
            raise ValueError("web_listen serves the audit log: give audit_jsonl or audit_dsn")
        if self.audit_jsonl is not None and not self.audit_jsonl.parent.is_dir():
            raise ValueError(f"directory of audit_jsonl not found: {self.audit_jsonl.parent}")
        return self

    @model_validator(mode="after")
    def _check_approvals(self) -> Settings:
        if self.approvals and self.web_listen is None:
            raise ValueError("approvals need a place to approve: give web_listen (the review page and API)")
        return self

    @field_validator("slack_bot_token", "slack_app_token", "slack_signing_secret")
    @classmethod
    def _check_slack_secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        return checks.slack_secret(value, info.field_name or "")

    @field_validator("mask_key")
    @classmethod
    def _check_mask_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 16:
            raise ValueError("must be at least 16 bytes (use e.g. 32 random bytes in hex)")
        return value

    @field_validator("slack_channel")
    @classmethod
    def _check_slack_channel(cls, value: str | None) -> str | None:
        return checks.slack_channel(value)

    @field_validator("slack_api_url")
    @classmethod
    def _check_slack_api_url(cls, value: str) -> str:
        return checks.slack_api_url(value)

    @field_validator("approver_directory")
    @classmethod
    def _check_directory(cls, value: Path | None) -> Path | None:
        return checks.approver_directory(value)

    @model_validator(mode="after")
    def _check_slack(self) -> Settings:
        checks.slack_complete(self)
        return self

    @property
    def slack(self) -> bool:
        """Whether approval requests go to Slack (the settings above are then complete)."""
        return self.slack_bot_token is not None

    @model_validator(mode="after")
    def _check_web_sign_in(self) -> Settings:
        checks.web_sign_in(self)
        return self

    @property
    def approvals_store_dsn(self) -> str | None:
        return self.approvals_dsn or self.audit_dsn

    @property
    def approve_at(self) -> str | None:
        if self.approvals_url is not None:
            return self.approvals_url
        if self.web_address is None:
            return None
        host, port = self.web_address
        scheme = "https" if self.tls_cert is not None else "http"
        return f"{scheme}://{host}:{port}/approvals"

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.tls_cert is None and not self.allow_plaintext_loopback:
            raise ValueError(
                "no client could connect: give tls_cert and tls_key, or allow_plaintext_loopback"
            )
        return self

    @property
    def upstream_target(self) -> UpstreamTarget:
        return parse_dsn(self.upstream)

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_listen(self.listen)

    @property
    def web_address(self) -> tuple[str, int] | None:
        return parse_listen(self.web_listen) if self.web_listen is not None else None


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    if host not in ("localhost", "*"):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not host.replace("-", "").replace(".", "").isalnum():
                raise ValueError(f"invalid listen host {host!r}") from None
    return ("0.0.0.0" if host == "*" else host), int(port_text)


def load_settings(overrides: dict[str, Any], config_file: Path | None = None) -> Settings:
    """Build settings from flags (``overrides``), environment and ``config_file``; explain failures."""
    if config_file is not None and not config_file.is_file():
        raise SettingsError(f"config file not found: {config_file}")
    Settings.config_file = config_file
    try:
        return Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None
    finally:
        Settings.config_file = None


def describe_errors(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"]) or "settings"
        where = f"--{name.replace('_', '-')} / PGPROXY_{name.upper()}" if error["loc"] else "settings"
        if name in SECRET_SETTINGS:
            where = f"PGPROXY_{name.upper()} or the config file"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"invalid setting {name!r} ({where}): {message}")
    return "\n".join(lines)
