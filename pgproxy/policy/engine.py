"""The decision engine: which rule decides a statement, and what a session looks like.

Pure functions over a loaded :class:`~pgproxy.policy.model.PolicySet`, an
:class:`~pgproxy.auth.identity.Identity` and classified statements. No I/O, no clocks, no state of
its own (patterns are compiled once on the model objects); the proxy caches decisions per session and
statement. It must never parse SQL (the classifier did) nor read files (the loader did).

Precedence for one statement, first that applies:

1. the classifier refused it (``statement.refusal``)       → deny ``pgproxy:refused``
2. read-only session and a READ WRITE transaction          → deny ``pgproxy:read-only-session``
3. a matching deny rule (the first in order)               → deny
4. a matching require_approval rule (the first)            → require_approval
5. a matching allow rule (the first)                       → allow
6. nothing matches                                         → deny ``pgproxy:default-deny``
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from pgproxy.auth.identity import Identity
from pgproxy.policy.matching import (
    applicable_rules,
    applies,
    database_matches,
    identity_matches,
    relation_in_scope,
    rule_matches,
    scoped_relations,
    touched_relations,
)
from pgproxy.policy.model import (
    Approvers,
    Effect,
    Limits,
    Mask,
    PolicySet,
    Rule,
)
from pgproxy.policy.wording import (
    CATEGORY_PHRASES,
    describe_approvers,
    describe_duration,
    describe_statement,
    in_order,
    list_categories,
    named,
)
from pgproxy.sql.statement import READ_ONLY_CATEGORIES, Category, Flag, Relation, Statement

__all__ = [
    "DEFAULT_DENY",
    "MIXED_APPROVALS",
    "READ_ONLY_SESSION",
    "REFUSED",
    "ApprovalRequirement",
    "Decision",
    "Effect",
    "SessionProfile",
    "applicable_rules",
    "database_matches",
    "decide",
    "decide_all",
    "describe_approvers",
    "describe_duration",
    "identity_matches",
    "relation_in_scope",
    "rule_matches",
    "session_profile",
]

REFUSED = "pgproxy:refused"
READ_ONLY_SESSION = "pgproxy:read-only-session"
DEFAULT_DENY = "pgproxy:default-deny"
MIXED_APPROVALS = "pgproxy:mixed-approvals"

_STRICTNESS = {Effect.ALLOW: 0, Effect.REQUIRE_APPROVAL: 1, Effect.DENY: 2}


@dataclass(frozen=True, slots=True)
class ApprovalRequirement:
    """What a held statement needs: ``quorum`` distinct approvers matching ``approvers`` within the timeout."""

    approvers: Approvers
    quorum: int
    timeout_seconds: int

    def describe(self) -> str:
        count = "1 approval" if self.quorum == 1 else f"{self.quorum} approvals from different people"
        return f"{count} from {describe_approvers(self.approvers)}"


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on a statement (or on a whole message, then for its strictest statement).

    ``reason`` is for humans and names the category, the command and relations where relevant; ``hint``
    tells the caller what it may do instead (None for allow). ``statement`` is the deciding statement.
    """

    effect: Effect
    rule_id: str
    reason: str
    hint: str | None
    approval: ApprovalRequirement | None
    notify: bool
    statement: Statement


@dataclass(frozen=True, slots=True)
class SessionProfile:
    """How a session of one identity on one database runs."""

    upstream_role: str | None
    read_only: bool
    limits: Limits | None
    masks: tuple[Mask, ...]
    rule_ids: tuple[str, ...]  # every rule (any effect) whose who and databases match, in order
    settings_id: str | None  # the ``sessions`` entry that applied, if any


# ---------------------------------------------------------------------------------------------
# Decisions


def decide(
    policy_set: PolicySet, identity: Identity, database: str, statement: Statement, *, read_only: bool
) -> Decision:
    """Judge one statement; see the module docstring for the precedence."""
    if statement.refusal is not None:
        return Decision(
            Effect.DENY,
            REFUSED,
            f"{statement.command} is refused whatever the policy: {statement.refusal}",
            "no policy rule can allow this; move data through the client (COPY … FROM STDIN / TO STDOUT) "
            "rather than server files or programs",
            None,
            False,
            statement,
        )
    if read_only and Flag.READ_WRITE_TRANSACTION in statement.flags:
        return Decision(
            Effect.DENY,
            READ_ONLY_SESSION,
            f"{statement.command} asks for a read-write transaction, but this session on database {database} "
            "is read-only",
            "start transactions without READ WRITE; this session may only read",
            None,
            False,
            statement,
        )

    relations = touched_relations(statement)
    held: Rule | None = None
    allowed: Rule | None = None
    for rule in policy_set.rules_by_category[statement.category]:
        if not applies(rule, identity, database):
            continue
        inside, deciding = scoped_relations(rule, relations)
        if not inside:
            continue
        if rule.effect is Effect.DENY:
            relevant = deciding or in_order(relations)
            return _denied_by(policy_set, rule, statement, identity=identity, database=database, relations=relevant)
        if rule.effect is Effect.REQUIRE_APPROVAL:
            held = held or rule
        else:
            allowed = allowed or rule
    if held is not None:
        return _held_by(held, statement, relations)
    if allowed is not None:
        what = describe_statement(statement, in_order(relations))
        reason = f"{what} is allowed by policy rule {allowed.id}" + (f": {allowed.reason}" if allowed.reason else "")
        return Decision(Effect.ALLOW, allowed.id, reason, None, None, allowed.notify, statement)
    return _default_deny(policy_set, identity, database, statement, in_order(relations))


def decide_all(
    policy_set: PolicySet, identity: Identity, database: str, statements: Sequence[Statement], *, read_only: bool
) -> Decision:
    """Judge every statement of one message; the strictest decision (deny > require_approval > allow) wins.

    Ties go to the earliest statement. ``notify`` is set when any statement's allowing rule asks for it
    (unless the message is denied). Statements held by rules with different approval requirements are
    denied as a whole (``pgproxy:mixed-approvals``): one approval cannot stand for two different sets of
    approvers. Raises :class:`ValueError` for an empty sequence: an empty query runs nothing and needs no
    decision.
    """
    if not statements:
        raise ValueError("decide_all needs at least one statement")
    decisions = [decide(policy_set, identity, database, s, read_only=read_only) for s in statements]
    strictest = decisions[0]
    for decision in decisions[1:]:
        if _STRICTNESS[decision.effect] > _STRICTNESS[strictest.effect]:
            strictest = decision
    if strictest.effect is Effect.DENY:
        return strictest
    if strictest.effect is Effect.REQUIRE_APPROVAL:
        approvals = {d.approval for d in decisions if d.approval is not None}
        if len(approvals) > 1:
            rules = ", ".join(dict.fromkeys(d.rule_id for d in decisions if d.approval is not None))
            return Decision(
                Effect.DENY,
                MIXED_APPROVALS,
                f"statements in this message need approval under different rules ({rules})",
                "send the statements that need approval one message at a time",
                None,
                False,
                strictest.statement,
            )
    if not strictest.notify and any(d.notify for d in decisions):
        return replace(strictest, notify=True)
    return strictest


def _denied_by(
    policy_set: PolicySet,
    rule: Rule,
    statement: Statement,
    *,
    identity: Identity,
    database: str,
    relations: Sequence[Relation],
) -> Decision:
    reason = f"{describe_statement(statement, relations)} is denied by policy rule {rule.id}"
    if rule.reason:
        reason += f": {rule.reason}"
    hint = rule.hint
    if hint is None:
        hint = _alternatives(policy_set, identity, database, excluding=statement.category)
        if rule.table_scope is not None and relations:
            hint = f"leave out {', '.join(str(r) for r in relations)}; {hint}"
    return Decision(Effect.DENY, rule.id, reason, hint, None, False, statement)


def _held_by(rule: Rule, statement: Statement, relations: frozenset[Relation]) -> Decision:
    assert rule.approval is not None  # guaranteed by the model
    approval = ApprovalRequirement(rule.approval.approvers, rule.approval.quorum, rule.approval.timeout)
    reason = f"{describe_statement(statement, in_order(relations))} needs approval under policy rule {rule.id}"
    if rule.reason:
        reason += f": {rule.reason}"
    hint = rule.hint or (
        f"this statement runs once it has {approval.describe()} (not you); "
        f"the request expires after {describe_duration(approval.timeout_seconds)}"
    )
    return Decision(Effect.REQUIRE_APPROVAL, rule.id, reason, hint, approval, rule.notify, statement)


def _default_deny(
    policy_set: PolicySet, identity: Identity, database: str, statement: Statement, relations: Sequence[Relation]
) -> Decision:
    category = statement.category
    if category is Category.UNKNOWN:
        reason = (
            f"pgproxy could not classify this statement{named(statement.command)}, and no policy rule allows "
            f"unknown statements for {identity.display} on database {database}"
        )
    else:
        reason = (
            f"no policy rule allows {category.value} statements for {identity.display} on database {database} "
            f"({describe_statement(statement, relations)})"
        )
    hint = _alternatives(policy_set, identity, database, excluding=category)
    return Decision(Effect.DENY, DEFAULT_DENY, reason, hint, None, False, statement)


def _alternatives(policy_set: PolicySet, identity: Identity, database: str, *, excluding: Category) -> str:
    """What this identity may do on this database, in words, for hints."""
    rules = applicable_rules(policy_set, identity, database)
    denied = set().union(*(r.granted for r in rules if r.effect is Effect.DENY and r.table_scope is None))
    allowed: dict[Category, list[str] | None] = {}
    held: dict[Category, Rule] = {}
    for rule in rules:
        for category in rule.granted - denied:
            if rule.effect is Effect.ALLOW:
                scope = allowed.setdefault(category, [])
                if scope is not None:
                    if rule.tables is None:
                        allowed[category] = None  # some rule allows it on every table
                    else:
                        scope.extend(rule.tables)
            elif rule.effect is Effect.REQUIRE_APPROVAL:
                held.setdefault(category, rule)
    parts = []
    may = list_categories(allowed, excluding)
    if may:
        parts.append(f"you may run {may} on database {database}")
    need = list_categories(dict.fromkeys(held), excluding)
    if need:
        first = held[next(c for c in CATEGORY_PHRASES if c in held and c is not excluding)]
        assert first.approval is not None
        parts.append(f"{need} need approval from {describe_approvers(first.approval.approvers)}")
    if not parts:
        return f"no policy rule lets {identity.display} run statements on database {database}; ask an administrator"
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# Sessions


def session_profile(policy_set: PolicySet, identity: Identity, database: str) -> SessionProfile | None:
    """The session settings for this identity on this database, or None when it may not connect.

    A session is possible when at least one allow or require_approval rule names the identity and the
    database. Settings come from the first matching ``sessions`` entry; when it sets no ``read_only`` (or
    none matches), read-only is derived: True when every category those rules grant is a read-only one.
    """
    rules = applicable_rules(policy_set, identity, database)
    granting = [rule for rule in rules if rule.effect is not Effect.DENY]
    if not granting:
        return None
    settings = next((s for s in policy_set.sessions if applies(s, identity, database)), None)
    read_only = settings.read_only if settings is not None else None
    if read_only is None:
        read_only = all(rule.granted <= READ_ONLY_CATEGORIES for rule in granting)
    masks = tuple(
        mask
        for mask in policy_set.masks
        if applies(mask, identity, database) and not (mask.exempt and identity_matches(mask.exempt, identity))
    )
    return SessionProfile(
        upstream_role=settings.upstream_role if settings else None,
        read_only=read_only,
        limits=settings.limits if settings else None,
        masks=masks,
        rule_ids=tuple(rule.id for rule in rules),
        settings_id=settings.id if settings else None,
    )
