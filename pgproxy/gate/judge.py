"""Decisions for one session: the policy engine's verdict on each request, cached per statement.

A session's identity, database and read-only flag never change, so a statement's decision depends
only on the statement and the policy set: it is cached by the identity of the (shared, cached)
``Statement`` object and the cache is dropped whenever the policy set is replaced. While ``outage``
is set every request gets that decision instead (the audit store is down and nothing may run).

Pure: no I/O, no protocol handling (that is ``session``); logging of break-glass use only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from pgproxy.auth.identity import Identity
from pgproxy.policy.engine import Decision, Effect, decide, decide_all
from pgproxy.policy.model import PolicySet
from pgproxy.sql.statement import Statement

log = logging.getLogger(__name__)

_DECISION_CACHE_LIMIT = 4096


class PolicySource(Protocol):
    """The current policy set; ``version`` changes whenever it is replaced."""

    @property
    def version(self) -> int: ...

    @property
    def current(self) -> PolicySet: ...


class Judge:
    """The policy decisions of one session."""

    def __init__(self, policies: PolicySource, identity: Identity, database: str, *, read_only: bool) -> None:
        self.identity = identity
        self.database = database
        self.read_only = read_only
        self.outage: Decision | None = None  # set while every request must be refused (audit store down)
        self._policies = policies
        self._decisions: dict[int, tuple[Statement, Decision]] = {}
        self._decisions_version = policies.version

    def verdict(self, statements: Sequence[Statement]) -> Decision | None:
        """The decision when the request may not run as is, else None (allowed, or nothing to run)."""
        if not statements:
            return None  # an empty query runs nothing
        if self.outage is not None:
            return self.outage
        if len(statements) == 1:
            decision = self.decide(statements[0])
        else:
            # Several statements: the engine combines them (strictest wins, mixed approvals are refused).
            decision = decide_all(
                self._policies.current, self.identity, self.database, statements, read_only=self.read_only
            )
        if decision.effect is Effect.ALLOW:
            if decision.notify:
                log.warning(
                    "break-glass: %s ran %s on %s under rule %s",
                    self.identity.display,
                    decision.statement.command,
                    self.database,
                    decision.rule_id,
                )
            return None
        return decision

    def decide(self, statement: Statement) -> Decision:
        """The decision for one statement (allow included), from the session's cache when possible."""
        if self._decisions_version != self._policies.version:
            self._decisions.clear()
            self._decisions_version = self._policies.version
        cached = self._decisions.get(id(statement))
        if cached is not None and cached[0] is statement:
            return cached[1]
        decision = decide(self._policies.current, self.identity, self.database, statement, read_only=self.read_only)
        if len(self._decisions) >= _DECISION_CACHE_LIMIT:
            self._decisions.clear()
        self._decisions[id(statement)] = (statement, decision)  # holding the statement keeps its id unique
        return decision
