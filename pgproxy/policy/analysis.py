"""Static checks of a policy set: rules that can never decide anything, session settings that never apply.

Used by ``pgproxy policy check``. Every check is conservative in one direction: it warns only when it
can prove the rule is dead for every identity, database and statement (so a warning is always worth
fixing), and it may miss dead rules whose overlap it cannot prove (globs are compared by shape, not
by the names they could match). Pure: no I/O, no statements, no identities.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase

from pgproxy.policy.model import Effect, PolicySet, Rule, SessionSettings, Who
from pgproxy.policy.values import TableGlob, has_glob
from pgproxy.sql.statement import Category

__all__ = ["Finding", "covers_globs", "covers_who", "find_problems"]

# Categories whose statements never name a relation: a deny rule scoped to tables never matches them.
_NO_RELATIONS = frozenset({Category.TRANSACTION, Category.UNKNOWN})


@dataclass(frozen=True, slots=True)
class Finding:
    """A warning about one entry of the set."""

    entry_id: str
    message: str


def find_problems(policy_set: PolicySet) -> list[Finding]:
    """Every warning for the set, in rule order, then session order."""
    findings: list[Finding] = []
    for index, rule in enumerate(policy_set.rules):
        findings.extend(_rule_findings(policy_set.rules, index, rule))
    for index, entry in enumerate(policy_set.sessions):
        findings.extend(_session_findings(policy_set.sessions[:index], entry))
    return findings


def _rule_findings(rules: tuple[Rule, ...], index: int, rule: Rule) -> Iterator[Finding]:
    if not satisfiable(rule.who):
        yield Finding(rule.id, "its 'who' can never match: no listed email is in the listed email_domains")
        return
    if rule.effect is Effect.DENY and rule.table_scope is not None:
        broad = [str(glob) for glob in rule.table_scope if glob.table == "*"]
        if broad:
            yield Finding(
                rule.id,
                f"denies every statement naming an unqualified table: deny rules match unqualified names by "
                f"their table part alone, and {', '.join(broad)} matches any table name; list the tables",
            )
    categories = set(rule.granted)
    if rule.effect is Effect.DENY and rule.table_scope is not None:
        categories -= _NO_RELATIONS
        if not categories:
            yield Finding(
                rule.id,
                "can never match: it is scoped to tables, and its categories never name a table",
            )
            return
    covering: dict[str, None] = {}
    for category in sorted(categories):
        cover = next((other for i, other in enumerate(rules) if _decides_first(other, i, rule, index, category)), None)
        if cover is None:
            return
        covering[cover.id] = None
    names = ", ".join(covering)
    if rule.effect is Effect.DENY:
        yield Finding(rule.id, f"is redundant: every statement it matches is already denied by rule {names}")
    else:
        yield Finding(rule.id, f"never decides anything: every statement it matches is decided by rule {names}")


def _decides_first(other: Rule, other_index: int, rule: Rule, index: int, category: Category) -> bool:
    """Whether ``other`` decides every statement of ``category`` that ``rule`` matches."""
    if other is rule or category not in other.granted:
        return False
    outranks = {
        Effect.DENY: (Effect.DENY,),
        Effect.REQUIRE_APPROVAL: (Effect.DENY, Effect.REQUIRE_APPROVAL),
        Effect.ALLOW: (Effect.DENY, Effect.REQUIRE_APPROVAL, Effect.ALLOW),
    }[rule.effect]
    if other.effect not in outranks or (other.effect is rule.effect and other_index > index):
        return False
    if not covers_who(other.who, rule.who) or not covers_globs(other.databases, rule.databases):
        return False
    return _covers_tables(other, rule)


def _covers_tables(other: Rule, rule: Rule) -> bool:
    """Every statement inside ``rule``'s table scope is inside ``other``'s."""
    if other.table_scope is None:
        return True
    if rule.table_scope is None:
        return False
    if other.effect is Effect.DENY and rule.effect is not Effect.DENY:
        # A deny scope needs a touched relation, an allow scope admits statements that touch none.
        return False
    return all(any(_covers_table(big, small) for big in other.table_scope) for small in rule.table_scope)


def _covers_table(big: TableGlob, small: TableGlob) -> bool:
    return covers_globs((big.schema,), (small.schema,)) and covers_globs((big.table,), (small.table,))


def covers_globs(big: Iterable[str], small: Iterable[str]) -> bool:
    """Provably: every name matched by some pattern of ``small`` is matched by some pattern of ``big``."""
    patterns = tuple(big)
    return all(any(_covers_glob(b, s) for b in patterns) for s in small)


def _covers_glob(big: str, small: str) -> bool:
    if big in ("*", small):
        return True
    if not has_glob(small):
        return fnmatchcase(small, big)
    # "prefix*" covers any pattern that starts with the same literal prefix.
    prefix = big[:-1]
    return big.endswith("*") and not has_glob(prefix) and small.startswith(prefix)


def covers_who(big: Who, small: Who) -> bool:
    """Provably: every identity ``small`` matches, ``big`` matches too."""
    if big.everyone or not satisfiable(small):
        return True
    if small.everyone:
        return False
    for name, values in big.given().items():
        mine = small.given().get(name)
        if mine is not None and mine <= values:
            continue
        if (
            name == "email_domains"
            and small.emails is not None
            and all(email.rpartition("@")[2] in values for email in small.emails)
        ):
            continue
        return False
    return True


def satisfiable(who: Who) -> bool:
    """False when ``emails`` and ``email_domains`` are both given and no email is in those domains."""
    if who.emails is None or who.email_domains is None:
        return True
    return any(email.rpartition("@")[2] in who.email_domains for email in who.emails)


def _session_findings(earlier: tuple[SessionSettings, ...], entry: SessionSettings) -> Iterator[Finding]:
    if not satisfiable(entry.who):
        yield Finding(entry.id, "its 'who' can never match: no listed email is in the listed email_domains")
        return
    for other in earlier:
        if covers_who(other.who, entry.who) and covers_globs(other.databases, entry.databases):
            yield Finding(
                entry.id, f"never applies: session settings {other.id} come first and match every such session"
            )
            return
