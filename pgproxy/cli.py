"""The ``pgproxy`` command: ``run``, ``demo``, ``token``, ``policy …`` and ``audit verify|search|show|export``.

Parses arguments and hands off; the work lives in ``app``, ``demo`` and ``auth.demo_issuer``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pgproxy.audit.query import FILTER_KEYS
from pgproxy.config import Settings, SettingsError, load_settings

# Flags for `pgproxy run`, one per setting; values default to None so env/config-file values win.
RUN_FLAGS: dict[str, dict[str, Any]] = {
    "listen": {"metavar": "HOST:PORT"},
    "upstream": {"metavar": "DSN"},
    "tls_cert": {"metavar": "PEM", "type": Path},
    "tls_key": {"metavar": "PEM", "type": Path},
    "oidc_issuer": {"metavar": "URL"},
    "oidc_audience": {"metavar": "AUD[,AUD]"},
    "oidc_jwks": {"metavar": "URL|FILE"},
    "oidc_algorithms": {"metavar": "ALG[,ALG]"},
    "groups_claim": {"metavar": "CLAIM"},
    "allow_plaintext_loopback": {"action": "store_const", "const": True},
    "session_outlives_token": {"action": "store_const", "const": True},
    "max_connections": {"metavar": "N", "type": int},
    "max_message_bytes": {"metavar": "N", "type": int},
    "shutdown_grace_seconds": {"metavar": "S", "type": float},
    "startup_timeout_seconds": {"metavar": "S", "type": float},
    "policies": {"metavar": "DIR", "type": Path},
    "policy_poll_seconds": {"metavar": "S", "type": float},
    "audit_jsonl": {"metavar": "FILE", "type": Path},
    "audit_dsn": {"metavar": "DSN"},
    "audit_schema": {"metavar": "SCHEMA"},
    "audit_disabled": {"action": "store_const", "const": True},
    "audit_fail_open": {"action": "store_const", "const": True},
    "audit_redact_literals": {"action": "store_const", "const": True},
    "audit_forward": {"metavar": "none|stdout|syslog"},
    "audit_syslog_address": {"metavar": "PATH|HOST:PORT"},
    "web_listen": {"metavar": "HOST:PORT"},
    "web_oidc_client_id": {"metavar": "CLIENT_ID"},
    "web_oidc_redirect_uri": {"metavar": "URL"},
    "web_oidc_scopes": {"metavar": "SCOPE[,SCOPE]"},
    # web_oidc_client_secret is a secret and web_paste_login a rarely changed switch: environment or config file.
    "audit_reviewers": {"metavar": "GROUP[,GROUP]"},
    "audit_review_dsn": {"metavar": "DSN"},
    "approvals": {"action": "store_const", "const": True},
    "approvals_dsn": {"metavar": "DSN"},
    "approvals_url": {"metavar": "URL"},
    # slack_bot_token, slack_signing_secret and slack_app_token are secrets: environment or config file only.
    "slack_channel": {"metavar": "CHANNEL_ID"},
    "slack_api_url": {"metavar": "URL"},
    "approver_directory": {"metavar": "YAML", "type": Path},
    # mask_key is a secret: environment or config file only.
    "mask_catalog_refresh_seconds": {"metavar": "SECONDS", "type": float},
    "log_level": {"metavar": "LEVEL"},
}


def default_state_dir() -> Path:
    if "PGPROXY_STATE_DIR" in os.environ:
        return Path(os.environ["PGPROXY_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "pgproxy"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgproxy", description="Identity-aware PostgreSQL access proxy")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the proxy")
    run.add_argument("--config", type=Path, metavar="TOML", help="config file (flags and env override it)")
    for name, options in RUN_FLAGS.items():
        field = Settings.model_fields[name]
        run.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None,
                         help=f"{field.description} [PGPROXY_{name.upper()}]", **options)

    demo = commands.add_parser("demo", help="embedded PostgreSQL + sample data + pgproxy on 127.0.0.1:6432")
    demo.add_argument("--port", type=int, default=6432)
    demo.add_argument("--web-port", type=int, default=None, help="the audit review page's port (default: --port + 1)")
    demo.add_argument("--state-dir", type=Path, default=None, help="where the demo key and cert live")
    demo.add_argument("--policies", type=Path, default=Path("policies"), metavar="DIR",
                      help="policy directory (default: ./policies, the examples shipped with pgproxy)")

    token = commands.add_parser("token", help="mint a token signed by the demo issuer")
    token.add_argument("--sub", required=True)
    token.add_argument("--email")
    token.add_argument("--name")
    token.add_argument("--group", action="append", default=[], dest="groups")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.add_argument("--state-dir", type=Path, default=None)

    policy = commands.add_parser("policy", help="check, explain and test policy files")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True)
    check = policy_commands.add_parser("check", help="validate a policy directory and warn about dead rules")
    check.add_argument("directory", nargs="?", type=Path, default=Path("policies"), metavar="DIR")
    explain = policy_commands.add_parser("explain", help="show how SQL is classified and decided for an identity")
    explain.add_argument("--policies", type=Path, default=Path("policies"), metavar="DIR", dest="directory")
    explain.add_argument("--identity", metavar="YAML", help="e.g. '{sub: agent-7, groups: [ai-agents]}'")
    explain.add_argument("--sub")
    explain.add_argument("--email")
    explain.add_argument("--name")
    explain.add_argument("--issuer")
    explain.add_argument("--group", action="append", default=[], dest="groups")
    explain.add_argument("--database", "-d", required=True)
    explain.add_argument("sql", metavar="SQL")
    test = policy_commands.add_parser("test", help="run the cases in DIR/tests/*.yaml")
    test.add_argument("directory", nargs="?", type=Path, default=Path("policies"), metavar="DIR")

    audit = commands.add_parser("audit", help="work with the audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser("verify", help="check the hash chains of JSONL files or the audit database")
    verify.add_argument("files", nargs="*", type=Path, metavar="FILE")
    verify.add_argument("--dsn", help="verify the audit database instead (default $PGPROXY_AUDIT_DSN if no FILE)")
    verify.add_argument("--schema", default=None, help="schema of the audit tables (default pgproxy)")
    verify.add_argument("--anchor", action="append", default=[], metavar="CHAIN:SEQ:HASH",
                        help="a chain head recorded earlier (proves nothing was cut from the end); repeatable")
    search = audit_commands.add_parser("search", help="list audit records matching filters, newest first")
    _audit_source_options(search)
    _audit_filter_options(search)
    search.add_argument("--limit", type=int, default=50, metavar="N", help="at most N entries (default 50)")
    search.add_argument("--oldest-first", action="store_true", help="list the oldest matches first")
    search.add_argument("--json", action="store_true", help="JSON lines: {record, outcomes} per entry")
    search.add_argument("--width", type=int, default=60, metavar="N", help="cut statement text to N characters")
    show = audit_commands.add_parser("show", help="one record with its outcomes and session, or a whole session")
    _audit_source_options(show)
    show.add_argument("id", metavar="ID", help="a record_id, or a session_id")
    show.add_argument("--json", action="store_true", help="one JSON object: record, outcomes, intent, session")
    export = audit_commands.add_parser("export", help="write matching records as JSONL or CSV")
    _audit_source_options(export)
    _audit_filter_options(export)
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--output", "-o", type=Path, metavar="FILE", help="write here (created 0600), not stdout")

    approvals = commands.add_parser("approvals", help="list, show, approve and deny held statements over HTTPS")
    approvals_commands = approvals.add_subparsers(dest="approvals_command", required=True)
    listing = approvals_commands.add_parser("list", help="pending approval requests (or all), newest first",
                                           allow_abbrev=False)
    listing.add_argument("--state", choices=("pending", "all"), default="pending")
    listing.add_argument("--limit", type=int, default=100, metavar="N", help="at most N requests (default 100)")
    listing.add_argument("--json", action="store_true", help="one JSON object per request and line")
    listing.add_argument("--width", type=int, default=60, metavar="N", help="cut the SQL to N characters")
    details = approvals_commands.add_parser("show", help="one request: who, where, the SQL, the reason, the votes",
                                           allow_abbrev=False)
    details.add_argument("id", metavar="ID")
    details.add_argument("--json", action="store_true", help="the request as one JSON object")
    approve = approvals_commands.add_parser("approve", help="approve a request as the token's holder",
                                            allow_abbrev=False)
    approve.add_argument("id", metavar="ID")
    approve.add_argument("--reason", metavar="TEXT", help="an optional comment kept with the vote")
    deny = approvals_commands.add_parser("deny", help="deny a request; the requester is shown the reason",
                                        allow_abbrev=False)
    deny.add_argument("id", metavar="ID")
    deny.add_argument("--reason", metavar="TEXT", required=True, help="why (required; at most 500 characters)")
    for command in (listing, details, approve, deny):  # no abbreviations: `--token X` must not mean --token-file
        _approvals_connection_options(command)
    return parser


def _approvals_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="pgproxy's web listener, e.g. https://pgproxy.internal:6433 (or its "
                                      "…/approvals page) [PGPROXY_APPROVALS_URL]")
    parser.add_argument("--token-file", type=Path, metavar="FILE",
                        help="a file holding your OIDC token, - for stdin [else PGPROXY_TOKEN]; never put the "
                             "token itself on the command line, where other users can see it")
    parser.add_argument("--cacert", type=Path, metavar="FILE",
                        help="trust only the CA certificates in FILE (PEM) for the server's certificate")


def _audit_source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jsonl", action="append", default=[], type=Path, metavar="FILE",
                        help="JSONL audit file (repeatable; oldest first) [PGPROXY_AUDIT_JSONL]")
    parser.add_argument("--dsn", help="PostgreSQL audit database (a role with SELECT is enough) [PGPROXY_AUDIT_DSN]")
    parser.add_argument("--schema", help="schema of the audit tables (default pgproxy) [PGPROXY_AUDIT_SCHEMA]")


def _audit_filter_options(parser: argparse.ArgumentParser) -> None:
    helps = {
        "identity": "subject or email (exact, any case)", "from": "start time, inclusive (ISO-8601; naive = UTC)",
        "to": "end time, exclusive", "table": "a relation the statement names (bare or schema-qualified)",
        "decision": "allow, deny or require_approval", "approver": "one of the statement's approvers",
        "text": "substring of the statement text (any case)", "kind": "record kinds, comma-separated",
    }
    for name in FILTER_KEYS:
        parser.add_argument(f"--{name}", dest=f"filter_{name}", metavar=name.upper(), help=helps.get(name))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "policy":
        return _policy(args)
    if args.command == "audit":
        return _audit(args)
    if args.command == "approvals":
        return _approvals(args)
    state_dir = args.state_dir or default_state_dir()
    if args.command == "demo":
        from pgproxy.app import configure_logging  # noqa: PLC0415
        from pgproxy.demo import run_demo  # noqa: PLC0415

        if not args.policies.is_dir():
            print(f"pgproxy: policy directory not found: {args.policies} (run from the pgproxy checkout, "
                  "or pass --policies DIR)", file=sys.stderr)
            return 2
        configure_logging("WARNING")
        run_demo(state_dir, args.port, args.policies, web_port=args.web_port or args.port + 1)
        return 0
    from pgproxy.auth.demo_issuer import DemoIssuer  # noqa: PLC0415

    issuer = DemoIssuer.load_or_create(state_dir / "issuer")
    print(issuer.mint(args.sub, email=args.email, name=args.name, groups=args.groups, ttl_seconds=args.ttl))
    return 0


def _run(args: argparse.Namespace) -> int:
    overrides = {name: getattr(args, name) for name in RUN_FLAGS}
    try:
        settings = load_settings(overrides, args.config)
    except SettingsError as exc:
        print(f"pgproxy: {exc}", file=sys.stderr)
        return 2
    from pgproxy.app import configure_logging, run_loop, serve  # noqa: PLC0415
    from pgproxy.audit.service import AuditOpenError  # noqa: PLC0415
    from pgproxy.policy.loader import PolicyLoadError  # noqa: PLC0415

    configure_logging(settings.log_level)
    try:
        run_loop(serve(settings))
    except PolicyLoadError as exc:
        print(f"pgproxy: the policies in {settings.policies} are not valid; not starting:\n{exc}", file=sys.stderr)
        return 2
    except AuditOpenError as exc:
        print(f"pgproxy: cannot open the audit log; not starting: {exc}", file=sys.stderr)
        return 2
    return 0


def _audit(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    from pgproxy.audit import tooling  # noqa: PLC0415
    from pgproxy.audit.query import RecordFilter, parse_filter  # noqa: PLC0415

    if args.audit_command == "verify":
        try:
            anchors = [tooling.parse_anchor(text) for text in args.anchor]
        except ValueError as exc:
            print(f"pgproxy: {exc}", file=sys.stderr)
            return 2
        dsn = args.dsn or (os.environ.get(tooling.ENV_DSN) if not args.files else None)
        if bool(dsn) == bool(args.files):
            print("pgproxy: give JSONL files or --dsn (not both)", file=sys.stderr)
            return 2
        if dsn:
            schema = args.schema or os.environ.get(tooling.ENV_SCHEMA) or "pgproxy"
            report = asyncio.run(tooling.verify_database(dsn, schema, anchors))
        else:
            report = tooling.verify_files(args.files, anchors)
        print(report.text)
        return report.exit_code
    try:
        reader = tooling.open_reader(args.jsonl, args.dsn, args.schema, os.environ)
        flt = RecordFilter()
        if args.audit_command != "show":
            flt = parse_filter({name: getattr(args, f"filter_{name}") for name in FILTER_KEYS})
        if args.audit_command == "search" and args.limit < 1:
            raise ValueError("--limit must be at least 1")
    except ValueError as exc:
        print(f"pgproxy: {exc}", file=sys.stderr)
        return 2
    if args.audit_command == "search":
        report = asyncio.run(tooling.search(reader, flt, limit=args.limit, newest_first=not args.oldest_first,
                                            as_json=args.json, text_width=args.width))
    elif args.audit_command == "show":
        report = asyncio.run(tooling.show(reader, args.id, as_json=args.json))
    else:
        report = asyncio.run(tooling.export_to(reader, flt, args.format, args.output, sys.stdout.buffer))
    if report.text:
        to_stderr = report.exit_code != 0 or args.audit_command == "export"
        print(report.text, file=sys.stderr if to_stderr else sys.stdout)
    return report.exit_code


def _approvals(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    from pgproxy.approvals import cli as approvals_cli  # noqa: PLC0415

    try:
        where = approvals_cli.endpoint(args.url, args.token_file, args.cacert, os.environ)
        if args.approvals_command == "list" and args.limit < 1:
            raise ValueError("--limit must be at least 1")
    except ValueError as exc:
        print(f"pgproxy: {exc}", file=sys.stderr)
        return 2
    if args.approvals_command == "list":
        report = asyncio.run(approvals_cli.list_requests(where, state=args.state, as_json=args.json,
                                                         limit=args.limit, text_width=args.width))
    elif args.approvals_command == "show":
        report = asyncio.run(approvals_cli.show(where, args.id, as_json=args.json))
    else:
        approve = args.approvals_command == "approve"
        report = asyncio.run(approvals_cli.vote(where, args.id, approve=approve, reason=args.reason))
    if report.text:
        print(report.text, file=sys.stdout if report.exit_code == 0 else sys.stderr)
    return report.exit_code


def _policy(args: argparse.Namespace) -> int:
    from pgproxy.policy import tooling  # noqa: PLC0415
    from pgproxy.policy.loader import PolicyLoadError  # noqa: PLC0415

    if args.policy_command == "check":
        report = tooling.check(args.directory)
    elif args.policy_command == "test":
        report = tooling.run_tests(args.directory)
    else:
        try:
            identity = tooling.identity_from_options(
                spec=args.identity, sub=args.sub, email=args.email, groups=args.groups,
                issuer=args.issuer, name=args.name,
            )
        except PolicyLoadError as exc:
            print(f"pgproxy: {exc}", file=sys.stderr)
            return 2
        report = tooling.explain(args.directory, identity, args.database, args.sql)
    print(report.text, end="")
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
