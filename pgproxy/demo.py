"""``pgproxy demo``: a throwaway PostgreSQL with sample data, a local token issuer, pgproxy in front.

Everything a new user needs to see pgproxy work on a bare machine: the database comes from the
``pgserver`` wheel, tokens are signed by a demo key kept in the state directory, and the printed
``psql`` command is ready to paste. The review page signs people in through the demo issuer (a form to
choose the agent, the DBA or the auditor; see ``pgproxy.web.demo_login``), so nobody needs to paste a
token there. Not for production: the issuer key lives on local disk.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import asyncpg

from pgproxy.app import serve
from pgproxy.auth.demo_issuer import DemoIssuer
from pgproxy.config import Settings, load_settings
from pgproxy.devcerts import write_self_signed
from pgproxy.embedded import EmbeddedPostgres

DEMO_DATABASE = "demo"
DEMO_ROLE = "pgproxy_demo"  # pgproxy's upstream login: owns the demo data, never a superuser

SAMPLE_SCHEMA = """
CREATE TABLE customers (
    id          serial PRIMARY KEY,
    name        text NOT NULL,
    email       text NOT NULL UNIQUE,
    phone       text NOT NULL,
    country     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
    id          serial PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers(id),
    amount      numeric(10, 2) NOT NULL,
    status      text NOT NULL DEFAULT 'placed',
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO customers (name, email, phone, country) VALUES
    ('Ada Lovelace', 'ada@example.com', '+44 20 7946 0018', 'GB'),
    ('Grace Hopper', 'grace@example.org', '+1 212 555 0147', 'US'),
    ('Alan Turing', 'alan@example.net', '+44 161 496 0753', 'GB');
INSERT INTO orders (customer_id, amount, status)
    SELECT 1 + (n % 3), round((random() * 200)::numeric, 2), (ARRAY['placed','shipped','returned'])[1 + n % 3]
    FROM generate_series(1, 30) AS n;
"""


async def prepare_database(pg: EmbeddedPostgres) -> None:
    admin = await asyncpg.connect(pg.dsn)
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", DEMO_ROLE):
            await admin.execute(f"CREATE ROLE {DEMO_ROLE} LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB")
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DEMO_DATABASE):
            await admin.execute(f"CREATE DATABASE {DEMO_DATABASE} OWNER {DEMO_ROLE}")
    finally:
        await admin.close()
    owner = await asyncpg.connect(pg.dsn_for(DEMO_ROLE, DEMO_DATABASE))
    try:
        if not await owner.fetchval("SELECT to_regclass('public.customers') IS NOT NULL"):
            await owner.execute(SAMPLE_SCHEMA)
    finally:
        await owner.close()


def demo_settings(
    pg: EmbeddedPostgres, issuer: DemoIssuer, state_dir: Path, port: int, policies: Path, *, web_port: int
) -> Settings:
    cert, key = write_self_signed(state_dir / "tls")
    return load_settings(
        {
            "listen": f"127.0.0.1:{port}",
            "upstream": pg.dsn_for(DEMO_ROLE, DEMO_DATABASE) + "?sslmode=disable",
            "tls_cert": cert,
            "tls_key": key,
            "oidc_issuer": issuer.issuer,
            "oidc_audience": issuer.audience,
            "oidc_jwks": str(issuer.jwks_path),
            "allow_plaintext_loopback": True,
            "shutdown_grace_seconds": 5,
            "policies": policies,
            "audit_jsonl": state_dir / "audit.jsonl",
            "web_listen": f"127.0.0.1:{web_port}",
            "audit_reviewers": ["auditors"],
            "approvals": True,  # the agent's DDL waits for the DBA, who approves on the review page
        }
    )


def psql_command(token: str, port: int, user: str) -> str:
    conninfo = f"host=127.0.0.1 port={port} dbname={DEMO_DATABASE} user={user} sslmode=require"
    return f"PGPASSWORD={shlex.quote(token)} psql {shlex.quote(conninfo)}"


def run_demo(state_dir: Path, port: int, policies: Path, *, web_port: int) -> None:
    """Start everything, print how to connect, serve until Ctrl-C, then clean up the database."""
    from pgproxy.app import run_loop  # noqa: PLC0415 -- keep import-time light for `pgproxy --help`

    issuer = DemoIssuer.load_or_create(state_dir / "issuer")
    pg = EmbeddedPostgres()
    pg.start()
    try:
        run_loop(prepare_database(pg))
        settings = demo_settings(pg, issuer, state_dir, port, policies, web_port=web_port)
        token = issuer.mint("agent-x", email="agent-x@example.com", name="Agent X", groups=["ai-agents"])

        async def announce() -> None:
            print("pgproxy demo is running. Connect as the demo agent with:\n")
            print("  " + psql_command(token, port, "agent-x") + "\n")
            print(f"The agent may read (customers' email and phone come back masked); DDL or exports wait "
                  f"for a DBA's approval at https://127.0.0.1:{web_port}/approvals (self-signed certificate: sign "
                  f"in with the demo issuer and choose the DBA). The policies are in {policies}.")
            print(f"Mint other identities with: pgproxy token --sub NAME --email NAME@example.com "
                  f"--group GROUP --state-dir {shlex.quote(str(state_dir))}  (groups: ai-agents, dba, "
                  f"ci-deployers, auditors)")
            print(f"\nEvery statement is in the audit log {settings.audit_jsonl}:")
            print(f"  pgproxy audit search --jsonl {shlex.quote(str(settings.audit_jsonl))}")
            print(f"and on the review page https://127.0.0.1:{web_port}/audit (self-signed certificate): sign in "
                  f"with the demo issuer and choose the auditor.")
            print("Press Ctrl-C to stop (the demo database is discarded).", flush=True)

        run_loop(serve(settings, ready=announce(), demo_issuer=issuer))
    finally:
        pg.stop()

