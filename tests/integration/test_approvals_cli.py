"""`pgproxy approvals list|show|approve|deny` as an approver runs it: against the web app served by uvicorn
(``WebServer``, port 0) over plain HTTP on loopback and over HTTPS with a private CA, tokens from a file,
stdin or the environment, exit codes, refusals with their reasons, and escaped terminal output."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pgproxy.approvals import cli as approvals_cli
from pgproxy.approvals.model import ApprovalRequest, RequestState
from pgproxy.audit.review import JsonlAuditReader
from pgproxy.auth.oidc import TokenVerifier
from pgproxy.devcerts import write_self_signed
from pgproxy.reporting import Report
from pgproxy.web.app import build_web_app
from pgproxy.web.server import WebServer
from tests.support.fake_idp import FakeIdP
from tests.unit.web.test_approvals_page import MemoryDesk, context, person, requirement, sample_desk

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


def clean_env(**extra: str) -> dict[str, str]:
    drop = ("PGPROXY_", "SSL_CERT_", "REQUESTS_CA_BUNDLE", "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")
    env = {key: value for key, value in os.environ.items() if not key.upper().startswith(drop)}
    return env | {"NO_PROXY": "*"} | extra


async def pgproxy(*arguments: str, env: dict[str, str], stdin: bytes = b"") -> Run:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pgproxy.cli", "approvals", *arguments,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    out, err = await process.communicate(stdin)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


def token_file(directory: Path, name: str, token: str) -> Path:
    path = directory / f"{name}.token"
    path.touch(mode=0o600)
    path.write_text(token + "\n", encoding="utf-8")
    return path


def dba_token(fake_idp: FakeIdP, name: str) -> str:
    return fake_idp.mint(name, email=f"{name}@example.com", groups=["dba"])


@pytest.fixture
def desk(fake_idp: FakeIdP) -> MemoryDesk:
    return sample_desk(fake_idp, time.time())


async def serve(desk: MemoryDesk, fake_idp: FakeIdP, tmp_path: Path, tls: bool) -> WebServer:
    app = build_web_app(reader_factory=lambda: JsonlAuditReader([tmp_path / "audit.jsonl"]),
                        verifier=TokenVerifier(fake_idp.config()), reviewer_groups=("auditors",),
                        secure_cookies=tls, approvals=desk)
    cert, key = write_self_signed(tmp_path / "tls") if tls else (None, None)
    server = WebServer(app, port=0, certfile=cert, keyfile=key)
    await server.start()
    return server


@pytest.fixture
async def server(desk: MemoryDesk, fake_idp: FakeIdP, tmp_path: Path) -> AsyncIterator[WebServer]:
    web = await serve(desk, fake_idp, tmp_path, tls=False)
    try:
        yield web
    finally:
        await web.stop()


@pytest.fixture
def env(server: WebServer, fake_idp: FakeIdP) -> dict[str, str]:
    """dba1's environment: the URL and the token in variables."""
    return clean_env(PGPROXY_APPROVALS_URL=server.url, PGPROXY_TOKEN=dba_token(fake_idp, "dba1"))


async def test_list_and_show_print_every_request_with_its_context(env: dict[str, str]) -> None:
    listed = await pgproxy("list", env=env)
    assert listed.code == 0, listed.err
    lines = listed.out.splitlines()
    assert lines[0].split() == ["ID", "STATE", "REQUESTED", "BY", "DATABASE", "WHAT", "APPROVALS", "WHEN", "SQL"]
    assert [line.split()[0] for line in lines[1:]] == ["apr-self", "apr-xss", "apr-rotate"]
    assert "0 of 2 approvals" in lines[3] and re.search(r"expires in 1[34] min", lines[3])
    assert "Agent Seven <agent7@example.com>" in lines[3] and "ALTER TABLE accounts ADD COLUMN note text" in lines[3]
    everything = await pgproxy("list", "--state", "all", "--json", env=env)
    requests = [json.loads(line) for line in everything.out.splitlines()]
    assert [item["id"] for item in requests] == ["apr-self", "apr-xss", "apr-rotate", "apr-old"]
    assert requests[3]["votes"][0]["reason"] == "use a partition drop instead"
    shown = await pgproxy("show", "apr-old", env=env)
    assert shown.code == 0, shown.err
    for text in ("request apr-old: denied, 0 of 1 approval, denied 1 h ago",
                 "requested by:   Agent Seven <agent7@example.com>",
                 "client:         10.1.2.3, application_name migrate-7", "database:       billing as app_owner",
                 "statement:      ddl (TRUNCATE), rule ddl-needs-dba", "relations:      public.accounts",
                 "needs:          1 approval from group dba (never the requester)",
                 "impact:         ACCESS EXCLUSIVE lock; rewrites the table",
                 "stated reason:\n    add the note column for ticket 42",
                 "sql (literals redacted):\n    TRUNCATE audit_copy",
                 "denied by dba9@example.com at ", "via slack:\n    use a partition drop instead"):
        assert text in shown.out, text
    page_url = env | {"PGPROXY_APPROVALS_URL": env["PGPROXY_APPROVALS_URL"] + "/approvals/"}  # as clients are told
    as_json = json.loads((await pgproxy("show", "apr-rotate", "--json", env=page_url)).out)
    assert as_json["state"] == "pending" and as_json["requirement"]["quorum"] == 2
    missing = await pgproxy("show", "apr-nothing", env=env)
    assert (missing.code, missing.out, missing.err.strip()) == (1, "", "no approval request 'apr-nothing'")


async def test_votes_count_for_approvers_and_are_refused_with_the_reason(
    env: dict[str, str], desk: MemoryDesk, fake_idp: FakeIdP, server: WebServer, tmp_path: Path
) -> None:
    first = await pgproxy("approve", "apr-rotate", "--reason", "checked the migration", env=env)
    assert first.code == 0, first.err
    assert first.out.startswith(
        "your approval counted: request apr-rotate is still pending (1 of 2 approvals; expires in")
    again = await pgproxy("approve", "apr-rotate", env=env)
    assert again.code == 1 and again.err.strip() == (
        "your vote did not count: dba1@example.com has already voted on request apr-rotate")
    dora = clean_env(PGPROXY_APPROVALS_URL=server.url)
    dora_file = token_file(tmp_path, "dora", dba_token(fake_idp, "dora"))
    own = await pgproxy("approve", "apr-self", "--token-file", str(dora_file), env=dora)
    assert own.code == 1 and own.err.strip() == "your vote did not count: nobody approves their own request"
    no_reason = await pgproxy("deny", "apr-rotate", env=env)
    assert no_reason.code == 2 and "--reason" in no_reason.err
    blank = await pgproxy("deny", "apr-rotate", "--reason", "  ", env=env)
    assert blank.code == 2 and "give --reason TEXT" in blank.err
    dba2 = dba_token(fake_idp, "dba2").encode()
    denied = await pgproxy("deny", "apr-rotate", "--reason", "not before the freeze ends", "--token-file", "-",
                           env=dora, stdin=dba2)
    assert denied.code == 0, denied.err
    assert denied.out.strip() == "your denial counted: request apr-rotate is now denied (1 of 2 approvals)"
    request = desk.requests["apr-rotate"]
    assert request.state is RequestState.DENIED
    assert [(vote.voter.subject, vote.approve, vote.reason, vote.channel) for vote in request.votes] == [
        ("dba1", True, "checked the migration", "http"), ("dba2", False, "not before the freeze ends", "http")]
    unknown = await pgproxy("approve", "apr-nothing", env=env)
    assert unknown.code == 1 and "no approval request 'apr-nothing'" in unknown.err


async def test_client_chosen_text_cannot_drive_the_terminal(
    env: dict[str, str], desk: MemoryDesk, fake_idp: FakeIdP
) -> None:
    agent = person(fake_idp, "agent-7", "agent7@example.com")
    hostile = ApprovalRequest.open(
        agent, requirement(), context("SELECT 1 /* \x1b[2J\x1b]0;pwned\x07 */", stated_reason="ok\u202eevil",
                                      application_name="app\x1b[31m"),
        now=time.time(), request_id="apr-ansi")
    desk.requests[hostile.id] = hostile
    for arguments in (("list",), ("show", "apr-ansi")):
        run = await pgproxy(*arguments, env=env)
        assert run.code == 0 and "\x1b" not in run.out and "\u202e" not in run.out and "\x07" not in run.out
        assert "\\x1b[2J\\x1b]0;pwned\\x07" in run.out
    shown = (await pgproxy("show", "apr-ansi", env=env)).out
    assert "ok\\u202eevil" in shown and "application_name app\\x1b[31m" in shown


async def test_usage_errors_and_refused_tokens_exit_2(
    env: dict[str, str], server: WebServer, fake_idp: FakeIdP, tmp_path: Path
) -> None:
    no_url = await pgproxy("list", env=clean_env(PGPROXY_TOKEN="x"))
    assert no_url.code == 2 and "no approvals URL" in no_url.err
    no_token = await pgproxy("list", "--url", server.url, env=clean_env())
    assert no_token.code == 2 and "no token: give --token-file FILE (or set PGPROXY_TOKEN)" in no_token.err
    on_the_line = await pgproxy("list", "--token", "abc", env=env)
    assert on_the_line.code == 2 and "unrecognized arguments: --token" in on_the_line.err
    plain = await pgproxy("list", "--url", "http://pgproxy.example:6433", env=env)
    assert plain.code == 2 and "refusing to send a token over plain HTTP" in plain.err
    missing_file = await pgproxy("list", "--token-file", str(tmp_path / "absent"), env=env)
    assert missing_file.code == 2 and "cannot read the token file" in missing_file.err
    expired = clean_env(PGPROXY_APPROVALS_URL=server.url,
                        PGPROXY_TOKEN=fake_idp.mint("dba1", groups=["dba"], expires_in=-120))
    refused = await pgproxy("list", env=expired)
    assert refused.code == 2
    assert refused.err.strip() == "pgproxy: the server refused the token: token refused: token expired"
    for limit in ("0", "501"):
        assert (await pgproxy("list", "--limit", limit, env=env)).code == 2


async def test_nothing_pending_exits_1(fake_idp: FakeIdP, tmp_path: Path) -> None:
    empty = await serve(MemoryDesk(), fake_idp, tmp_path, tls=False)
    try:
        where = approvals_cli.endpoint(empty.url, None, None, {"PGPROXY_TOKEN": dba_token(fake_idp, "dba1")})
        report = await approvals_cli.list_requests(where)
        assert (report.text, report.exit_code) == ("no pending approval requests", 1)
        assert (await approvals_cli.list_requests(where, as_json=True)) == Report("", 1)
    finally:
        await empty.stop()


async def test_https_verifies_the_server_against_the_system_store_or_the_given_ca(
    desk: MemoryDesk, fake_idp: FakeIdP, tmp_path: Path
) -> None:
    secure = await serve(desk, fake_idp, tmp_path, tls=True)
    try:
        assert secure.url.startswith("https://127.0.0.1:")
        env = clean_env(PGPROXY_APPROVALS_URL=secure.url, PGPROXY_TOKEN=dba_token(fake_idp, "dba1"))
        untrusted = await pgproxy("list", env=env)
        assert untrusted.code == 2 and "certificate verify failed" in untrusted.err
        trusted = await pgproxy("list", "--cacert", str(tmp_path / "tls" / "server.crt"), env=env)
        assert trusted.code == 0, trusted.err
        assert [line.split()[0] for line in trusted.out.splitlines()[1:]] == ["apr-self", "apr-xss", "apr-rotate"]
        voted = await pgproxy("approve", "apr-xss", "--cacert", str(tmp_path / "tls" / "server.crt"), env=env)
        assert voted.code == 0 and desk.requests["apr-xss"].state is RequestState.APPROVED
        bad_ca = await pgproxy("list", "--cacert", str(tmp_path / "none.pem"), env=env)
        assert bad_ca.code == 2 and "cannot load the CA certificates" in bad_ca.err
    finally:
        await secure.stop()
