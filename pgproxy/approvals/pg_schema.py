"""The approval tables in PostgreSQL: DDL, versioned migrations, the notification channel and the grants.

Layout (schema ``pgproxy`` unless configured otherwise; it may be the schema the audit log uses)::

    <schema>.approval_requests  one row per request: state, requester, requirement, context, times,
                                statement digest, session, holder replica, consumed_at, extra
    <schema>.approval_votes     one row per counted vote, PRIMARY KEY (request_id, seq)

Versions are recorded in the schema's shared ``schema_version`` table with ``component = 'approvals'``
and applied by ``pgproxy.audit.pg_schema.apply_migrations``: every component's migrations of one schema
serialize on the same transaction-level advisory lock, so the audit log and the approval store of
several replicas may all start at once. A role that may not run DDL can open a schema that is
already current (that check only reads).

Timestamps are ``double precision`` seconds since the epoch, exactly the floats the model holds
(``to_timestamp(created_at)`` reads them as times). Identities are columns (issuer, subject, email,
name, groups in the identity provider's order, token expiry); the policy's approvers matcher is
``jsonb``. ``approval_votes`` enforces one vote per ``(issuer, subject)`` and per lower-cased email
for each request — a backstop: the store applies the model's rules under a row lock of the request.

Rows: :func:`request_row`/:func:`request_from` and :func:`vote_row`/:func:`vote_from` map the model to
the columns (``REQUEST_COLUMNS``, ``VOTE_COLUMNS``) and back, exactly: a field the model gains needs a
migration, and inserting fails until it exists.

Least privilege (:func:`grant_statements`): the store's role gets USAGE on the schema, SELECT on
``schema_version``, SELECT and INSERT on both tables, and UPDATE of only the columns a decision changes
(``state``, ``decided_at``, ``consumed_at``, ``extra``) — never DELETE or TRUNCATE, and never UPDATE of
votes or of what was requested. A reviewer gets SELECT. LISTEN and NOTIFY need no privilege.

This module runs DDL and maps rows; it must not read or write requests (the store does), and no
migration step may drop, rewrite or grant.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import fields

import asyncpg

from pgproxy.approvals.model import ApprovalRequest, RequestContext, RequestState, Vote
from pgproxy.audit.pg_schema import apply_migrations, checked_schema, current_version, quote_identifier
from pgproxy.auth.identity import Identity
from pgproxy.policy.engine import ApprovalRequirement
from pgproxy.policy.model import Approvers

__all__ = [
    "APPROVALS_MIGRATIONS",
    "APPROVALS_VERSION",
    "COMPONENT",
    "DECISION_COLUMNS",
    "REQUESTS_TABLE",
    "REQUEST_COLUMNS",
    "VOTES_TABLE",
    "VOTE_COLUMNS",
    "channel_name",
    "current_approvals_version",
    "grant_statements",
    "migrate",
    "request_from",
    "request_row",
    "vote_from",
    "vote_row",
]

COMPONENT = "approvals"
REQUESTS_TABLE = "approval_requests"
VOTES_TABLE = "approval_votes"

# Columns the store's role may UPDATE on approval_requests (everything else is written once).
DECISION_COLUMNS = ("state", "decided_at", "consumed_at", "extra")

_STATES = "'pending', 'approved', 'denied', 'expired', 'withdrawn'"

_APPROVALS_V1 = f"""
CREATE TABLE {{s}}.{REQUESTS_TABLE} (
    id                   text             PRIMARY KEY,
    state                text             NOT NULL CHECK (state IN ({_STATES})),
    requester_issuer     text             NOT NULL,
    requester_subject    text             NOT NULL,
    requester_email      text,
    requester_name       text,
    requester_groups     text[]           NOT NULL,
    requester_expires_at double precision,
    approvers            jsonb            NOT NULL,
    quorum               integer          NOT NULL CHECK (quorum > 0),
    timeout_seconds      bigint           NOT NULL,
    client_address       text,
    application_name     text,
    database             text             NOT NULL,
    upstream_role        text,
    sql                  text             NOT NULL,
    category             text             NOT NULL,
    command              text             NOT NULL,
    relations            text[]           NOT NULL,
    rule_id              text             NOT NULL,
    stated_reason        text,
    impact               text,
    created_at           double precision NOT NULL,
    expires_at           double precision NOT NULL,
    decided_at           double precision,
    statement_digest     text,
    session_id           text,
    holder               text,
    consumed_at          double precision,
    extra                jsonb            NOT NULL DEFAULT '{{{{}}}}',
    CHECK ((state = 'pending') = (decided_at IS NULL)),
    CHECK (consumed_at IS NULL OR (state = 'approved' AND statement_digest IS NOT NULL))
);
REVOKE ALL ON TABLE {{s}}.{REQUESTS_TABLE} FROM PUBLIC;
CREATE INDEX approval_requests_due ON {{s}}.{REQUESTS_TABLE} (expires_at) WHERE state = 'pending';
CREATE INDEX approval_requests_created ON {{s}}.{REQUESTS_TABLE} (created_at DESC, id DESC);
CREATE INDEX approval_requests_usable ON {{s}}.{REQUESTS_TABLE} (statement_digest)
    WHERE state = 'approved' AND consumed_at IS NULL;
CREATE INDEX approval_requests_holder ON {{s}}.{REQUESTS_TABLE} (holder, state);

CREATE TABLE {{s}}.{VOTES_TABLE} (
    request_id       text             NOT NULL REFERENCES {{s}}.{REQUESTS_TABLE} (id) ON DELETE CASCADE,
    seq              integer          NOT NULL CHECK (seq > 0),
    voter_issuer     text             NOT NULL,
    voter_subject    text             NOT NULL,
    voter_email      text,
    voter_name       text,
    voter_groups     text[]           NOT NULL,
    voter_expires_at double precision,
    approve          boolean          NOT NULL,
    reason           text,
    channel          text             NOT NULL,
    at               double precision NOT NULL,
    PRIMARY KEY (request_id, seq),
    UNIQUE (request_id, voter_issuer, voter_subject)
);
REVOKE ALL ON TABLE {{s}}.{VOTES_TABLE} FROM PUBLIC;
CREATE UNIQUE INDEX approval_votes_one_per_email ON {{s}}.{VOTES_TABLE} (request_id, lower(voter_email))
    WHERE voter_email IS NOT NULL;
"""

# (version, DDL with {s} for the quoted schema). Append new steps; never edit an applied one.
APPROVALS_MIGRATIONS: tuple[tuple[int, str], ...] = ((1, _APPROVALS_V1),)
APPROVALS_VERSION = APPROVALS_MIGRATIONS[-1][0]

# PostgreSQL channel names are identifiers: at most 63 bytes.
_MAX_CHANNEL = 63


def channel_name(schema: str) -> str:
    """The LISTEN/NOTIFY channel of ``schema``'s approvals: ``<schema>_approvals``.

    Raises :class:`ValueError` for a schema name that is not a plain lowercase identifier, or one too
    long to leave room for the suffix (PostgreSQL would silently truncate the channel on LISTEN).
    """
    checked_schema(schema)
    channel = f"{schema}_approvals"
    if len(channel) > _MAX_CHANNEL:
        raise ValueError(f"schema name {schema!r} is too long for the approvals channel (at most 53 characters)")
    return channel


async def current_approvals_version(conn: asyncpg.Connection, schema: str) -> int:
    """The applied approvals version in ``schema`` (0: not created yet)."""
    return await current_version(conn, schema, COMPONENT)


async def migrate(conn: asyncpg.Connection, schema: str) -> int:
    """Create or bring the approval tables in ``schema`` up to date; return the version.

    Raises ``pgproxy.audit.pg_schema.SchemaError`` when the schema is newer than this pgproxy, or needs
    migrating and this role may not (run it once as the schema's owner).
    """
    return await apply_migrations(conn, schema, COMPONENT, APPROVALS_MIGRATIONS)


def grant_statements(schema: str, *, role: str, reviewer: str | None = None) -> list[str]:
    """The GRANTs the store's ``role`` (and optionally a read-only ``reviewer``) need, as SQL statements.

    Run them as the tables' owner after :func:`migrate`. The store's role should not own the tables (an
    owner may rewrite votes): migrate with a separate owner role.
    """
    s = checked_schema(schema)
    r = quote_identifier(role)
    requests, votes = f"{s}.{REQUESTS_TABLE}", f"{s}.{VOTES_TABLE}"
    statements = [
        f"GRANT USAGE ON SCHEMA {s} TO {r}",
        f"GRANT SELECT ON {s}.schema_version TO {r}",
        f"GRANT SELECT, INSERT ON {requests}, {votes} TO {r}",
        f"GRANT UPDATE ({', '.join(DECISION_COLUMNS)}) ON {requests} TO {r}",
    ]
    if reviewer is not None:
        v = quote_identifier(reviewer)
        statements += [
            f"GRANT USAGE ON SCHEMA {s} TO {v}",
            f"GRANT SELECT ON {s}.schema_version, {requests}, {votes} TO {v}",
        ]
    return statements


# -- rows ------------------------------------------------------------------------------------------------

# Identity fields are stored as <prefix>_<field>; context fields and these request fields under their own names.
_IDENTITY = ("issuer", "subject", "email", "name", "groups", "expires_at")
_CONTEXT = tuple(field.name for field in fields(RequestContext))
_PLAIN = ("created_at", "expires_at", "decided_at", "statement_digest", "session_id")
REQUEST_COLUMNS = (
    "id", "state", *(f"requester_{name}" for name in _IDENTITY), "approvers", "quorum", "timeout_seconds",
    *_CONTEXT, *_PLAIN, "holder", "extra",
)  # fmt: skip
VOTE_COLUMNS = ("request_id", "seq", *(f"voter_{name}" for name in _IDENTITY), "approve", "reason", "channel", "at")


def request_row(request: ApprovalRequest, holder: str | None) -> list[object]:
    """The values of ``REQUEST_COLUMNS`` for ``request`` (its votes are rows of their own)."""
    requirement = request.requirement
    approvers = json.dumps(requirement.approvers.model_dump(mode="json", exclude_none=True))
    return [
        request.id, request.state.value, *(getattr(request.requester, name) for name in _IDENTITY),
        approvers, requirement.quorum, requirement.timeout_seconds,
        *(getattr(request.context, name) for name in _CONTEXT),
        *(getattr(request, name) for name in _PLAIN), holder, json.dumps(request.extra),
    ]  # fmt: skip


def request_from(row: asyncpg.Record, votes: Iterable[Vote]) -> ApprovalRequest:
    """The request a row of ``REQUEST_COLUMNS`` holds, with ``votes`` in the order they were cast."""
    context = {name: row[name] for name in _CONTEXT}
    return ApprovalRequest(
        id=row["id"],
        state=RequestState(row["state"]),
        requester=_identity_from(row, "requester"),
        requirement=ApprovalRequirement(
            Approvers.model_validate(json.loads(row["approvers"])), row["quorum"], row["timeout_seconds"]
        ),
        context=RequestContext(**{**context, "relations": tuple(context["relations"])}),
        votes=tuple(votes),
        extra=json.loads(row["extra"]),
        **{name: row[name] for name in _PLAIN},
    )


def vote_row(request_id: str, seq: int, vote: Vote) -> list[object]:
    """The values of ``VOTE_COLUMNS`` for the ``seq``-th vote (from 1) on a request."""
    voter = [getattr(vote.voter, name) for name in _IDENTITY]
    return [request_id, seq, *voter, vote.approve, vote.reason, vote.channel, vote.at]


def vote_from(row: asyncpg.Record) -> Vote:
    voter = _identity_from(row, "voter")
    return Vote(voter, row["approve"], row["at"], reason=row["reason"], channel=row["channel"])


def _identity_from(row: asyncpg.Record, prefix: str) -> Identity:
    values = {name: row[f"{prefix}_{name}"] for name in _IDENTITY}
    return Identity(**{**values, "groups": tuple(values["groups"])})
