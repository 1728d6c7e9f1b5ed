"""The policy language as data: pydantic models of one policy file and the assembled policy set.

Every model is frozen and forbids unknown keys, so a typo in a policy file is an error, never a
silently ignored setting. Validation here covers one value or one rule at a time (shapes, names,
cross-field rules such as "``approval`` iff ``effect: require_approval``"); checks that span files
(unique ids) live in :class:`PolicySet`; single values (ids, names, patterns, durations) are checked
in ``values``. This module does no I/O and knows nothing of YAML (see ``loader``) or of identities and
statements at run time (see ``engine``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pgproxy.policy.values import (
    DEFAULT_APPROVAL_TIMEOUT,
    RESERVED_ID_PREFIX,
    CategoryName,
    ColumnName,
    DatabasePattern,
    Domain,
    Duration,
    Email,
    Name,
    NameMatcher,
    NonNegative,
    Positive,
    RoleName,
    RuleId,
    TableGlob,
    TablePattern,
    Text,
    parse_duration,
)
from pgproxy.sql.statement import Category

__all__ = [
    "ALL_CATEGORIES",
    "DEFAULT_APPROVAL_TIMEOUT",
    "RESERVED_ID_PREFIX",
    "Approval",
    "Approvers",
    "ColumnMask",
    "Effect",
    "Limits",
    "Mask",
    "MaskStrategy",
    "NameMatcher",
    "PolicyFile",
    "PolicySet",
    "Rule",
    "SessionSettings",
    "Source",
    "TableGlob",
    "Who",
    "parse_duration",
]

# "*" in a rule's categories: every category except UNKNOWN, which must be listed by name.
ALL_CATEGORIES = frozenset(Category) - {Category.UNKNOWN}


class Effect(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    REQUIRE_APPROVAL = "require_approval"


class MaskStrategy(StrEnum):
    REDACT = "redact"  # replace the value with a fixed text
    PARTIAL = "partial"  # keep the first/last characters, mask the rest
    EMAIL = "email"  # keep the domain of an email address
    HASH = "hash"  # keyed HMAC: equal inputs give equal outputs, so joins still work
    NULL = "null"  # NULL


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# Identity matchers


_MATCHER_FIELDS = ("subjects", "emails", "email_domains", "groups", "issuers")


class _Matcher(_Model):
    """Fields shared by ``who`` and ``approvers``. Every given field must match; within a field, any value.

    Subjects, groups and issuers compare exactly (as the identity provider sends them); emails and email
    domains compare case-insensitively (they are stored lower-cased).
    """

    subjects: Annotated[frozenset[Name], Field(min_length=1)] | None = None
    emails: Annotated[frozenset[Email], Field(min_length=1)] | None = None
    email_domains: Annotated[frozenset[Domain], Field(min_length=1)] | None = None
    groups: Annotated[frozenset[Name], Field(min_length=1)] | None = None
    issuers: Annotated[frozenset[Name], Field(min_length=1)] | None = None

    def given(self) -> dict[str, frozenset[str]]:
        """The fields this matcher constrains, by name."""
        return {name: value for name in _MATCHER_FIELDS if (value := getattr(self, name)) is not None}

    def describe(self) -> str:
        parts = [f"{name}={','.join(sorted(values))}" for name, values in self.given().items()]
        return " ".join(parts)


class Who(_Matcher):
    """Whom a rule, session setting or mask applies to; ``everyone: true`` stands alone."""

    everyone: StrictBool = False

    @model_validator(mode="after")
    def _one_way_to_match(self) -> Who:
        if self.everyone and self.given():
            raise ValueError("'everyone: true' cannot be combined with other fields")
        if not self.everyone and not self.given():
            raise ValueError(f"name at least one of {', '.join(_MATCHER_FIELDS)}, or set 'everyone: true'")
        return self

    def describe(self) -> str:
        return "everyone" if self.everyone else super().describe()


class Approvers(_Matcher):
    """Who may approve a held statement (never the requester: the approval service enforces that)."""

    @model_validator(mode="after")
    def _someone(self) -> Approvers:
        if not self.given():
            raise ValueError(f"name at least one of {', '.join(_MATCHER_FIELDS)}")
        return self


EVERYONE = Who(everyone=True)


# Rules


class Approval(_Model):
    approvers: Approvers
    quorum: Positive = 1  # distinct people
    timeout: Duration = DEFAULT_APPROVAL_TIMEOUT  # seconds

    @field_validator("quorum")
    @classmethod
    def _reachable(cls, quorum: int, info: ValidationInfo) -> int:
        approvers = info.data.get("approvers")
        if isinstance(approvers, Approvers) and approvers.groups is None and approvers.email_domains is None:
            named = len(approvers.subjects or ()) + len(approvers.emails or ())
            if approvers.issuers is None and quorum > named:
                raise ValueError(
                    f"quorum {quorum} needs {quorum} distinct approvers but only {named} "
                    f"{'is' if named == 1 else 'are'} named"
                )
        return quorum


class Rule(_Model):
    """Who may do what, where: one entry of ``rules``."""

    id: RuleId
    description: Text | None = None
    who: Who
    databases: Annotated[tuple[DatabasePattern, ...], Field(min_length=1)]
    tables: Annotated[tuple[TablePattern, ...], Field(min_length=1)] | None = None
    categories: Annotated[tuple[CategoryName, ...], Field(min_length=1)]
    effect: Effect
    reason: Text | None = None
    hint: Text | None = None
    approval: Approval | None = Field(default=None, validate_default=True)
    notify: StrictBool = False

    @field_validator("approval")
    @classmethod
    def _approval_iff_held(cls, approval: Approval | None, info: ValidationInfo) -> Approval | None:
        effect = info.data.get("effect")
        if effect is Effect.REQUIRE_APPROVAL and approval is None:
            raise ValueError("a require_approval rule needs 'approval' (approvers, quorum, timeout)")
        if effect is not None and effect is not Effect.REQUIRE_APPROVAL and approval is not None:
            raise ValueError(f"'approval' only belongs to require_approval rules, not {effect.value} rules")
        return approval

    @field_validator("notify")
    @classmethod
    def _notify_not_on_deny(cls, notify: bool, info: ValidationInfo) -> bool:
        if notify and info.data.get("effect") is Effect.DENY:
            raise ValueError("'notify' applies to statements that run: allow or require_approval rules")
        return notify

    @cached_property
    def granted(self) -> frozenset[Category]:
        """The categories this rule covers, with ``*`` expanded."""
        result: set[Category] = set()
        for name in self.categories:
            result |= ALL_CATEGORIES if name == "*" else {Category(name)}
        return frozenset(result)

    @cached_property
    def database_matches(self) -> NameMatcher:
        return NameMatcher(self.databases)

    @cached_property
    def table_scope(self) -> tuple[TableGlob, ...] | None:
        return None if self.tables is None else tuple(TableGlob.parse(text) for text in self.tables)


# Session settings and masks


class Limits(_Model):
    max_rows: Positive | None = None  # rows one statement may return
    max_export_rows: Positive | None = None  # rows one COPY … TO STDOUT may return

    @model_validator(mode="after")
    def _something(self) -> Limits:
        if self.max_rows is None and self.max_export_rows is None:
            raise ValueError("set max_rows, max_export_rows or both (or leave 'limits' out)")
        return self


class SessionSettings(_Model):
    """Per identity and database session settings: one entry of ``sessions``; the first match applies."""

    id: RuleId
    description: Text | None = None
    who: Who
    databases: Annotated[tuple[DatabasePattern, ...], Field(min_length=1)]
    upstream_role: RoleName | None = None
    read_only: StrictBool | None = None
    limits: Limits | None = None

    @cached_property
    def database_matches(self) -> NameMatcher:
        return NameMatcher(self.databases)


def _strategy_shorthand(value: Any) -> Any:
    return {"strategy": value} if isinstance(value, str) else value


class ColumnMask(_Model):
    strategy: MaskStrategy
    text: Text | None = None  # redact: the replacement (default "***")
    keep_first: NonNegative | None = None  # partial: characters kept at the start (default 0)
    keep_last: NonNegative | None = None  # partial: characters kept at the end (default 4)

    @field_validator("text")
    @classmethod
    def _text_for_redact(cls, text: str | None, info: ValidationInfo) -> str | None:
        strategy = info.data.get("strategy")
        if text is not None and strategy is not None and strategy is not MaskStrategy.REDACT:
            raise ValueError(f"'text' belongs to the redact strategy, not {strategy.value}")
        return text

    @field_validator("keep_first", "keep_last")
    @classmethod
    def _keep_for_partial(cls, keep: int | None, info: ValidationInfo) -> int | None:
        strategy = info.data.get("strategy")
        if keep is not None and strategy is not None and strategy is not MaskStrategy.PARTIAL:
            raise ValueError(f"'{info.field_name}' belongs to the partial strategy, not {strategy.value}")
        return keep

    @property
    def replacement(self) -> str:
        return "***" if self.text is None else self.text

    @property
    def kept(self) -> tuple[int, int]:
        """partial: (characters kept at the start, characters kept at the end)."""
        return (0 if self.keep_first is None else self.keep_first, 4 if self.keep_last is None else self.keep_last)

    def describe(self) -> str:
        if self.strategy is MaskStrategy.PARTIAL:
            first, last = self.kept
            return f"partial(keep_first={first}, keep_last={last})"
        return self.strategy.value


class Mask(_Model):
    """Columns masked in results for the identities in ``who`` minus ``exempt``: one entry of ``masks``."""

    id: RuleId
    description: Text | None = None
    databases: Annotated[tuple[DatabasePattern, ...], Field(min_length=1)]
    who: Who = EVERYONE
    exempt: Who | None = None
    refuse_predicates: StrictBool = False  # refuse statements filtering, grouping, ordering or joining on them
    columns: Annotated[
        dict[ColumnName, Annotated[ColumnMask, BeforeValidator(_strategy_shorthand)]], Field(min_length=1)
    ]

    @field_validator("exempt")
    @classmethod
    def _exempt_someone(cls, exempt: Who | None) -> Who | None:
        if exempt is not None and exempt.everyone:
            raise ValueError("'exempt: {everyone: true}' exempts everyone; remove the mask instead")
        return exempt

    @cached_property
    def database_matches(self) -> NameMatcher:
        return NameMatcher(self.databases)

    def column(self, schema: str, table: str, column: str) -> ColumnMask | None:
        """The strategy for one column (names as PostgreSQL stores them), or None when it is not masked."""
        return self.columns.get(f"{schema}.{table}.{column}")


class PolicyFile(_Model):
    """One policy file."""

    rules: tuple[Rule, ...] = ()
    sessions: tuple[SessionSettings, ...] = ()
    masks: tuple[Mask, ...] = ()


# The policy set


@dataclass(frozen=True, slots=True)
class Source:
    """Where an entry was defined, for messages: file name and 1-based line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, eq=False)
class PolicySet:
    """Every rule, session setting and mask in evaluation order (files sorted by name, then file order).

    Ids are unique across all three kinds. ``sources`` maps ids to where they were defined (empty when
    the set was built in code). Construction raises :class:`ValueError` on a duplicate id.
    """

    rules: tuple[Rule, ...] = ()
    sessions: tuple[SessionSettings, ...] = ()
    masks: tuple[Mask, ...] = ()
    sources: Mapping[str, Source] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        seen: set[str] = set()
        entries: tuple[Rule | SessionSettings | Mask, ...] = (*self.rules, *self.sessions, *self.masks)
        for entry in entries:
            if entry.id in seen:
                raise ValueError(f"duplicate id {entry.id!r}")
            seen.add(entry.id)

    @classmethod
    def from_files(cls, files: Iterable[PolicyFile], sources: Mapping[str, Source] | None = None) -> PolicySet:
        files = list(files)
        return cls(
            rules=tuple(rule for f in files for rule in f.rules),
            sessions=tuple(entry for f in files for entry in f.sessions),
            masks=tuple(mask for f in files for mask in f.masks),
            sources=MappingProxyType(dict(sources or {})),
        )

    @cached_property
    def rules_by_id(self) -> Mapping[str, Rule]:
        return MappingProxyType({rule.id: rule for rule in self.rules})

    @cached_property
    def rules_by_category(self) -> Mapping[Category, tuple[Rule, ...]]:
        """For each category, the rules granting it, in order."""
        return MappingProxyType({c: tuple(r for r in self.rules if c in r.granted) for c in Category})

    def source(self, entry_id: str) -> Source | None:
        return self.sources.get(entry_id)

    def subset(self, rule_ids: Sequence[str] | frozenset[str]) -> PolicySet:
        """The same set with only the named rules (order kept): for per-session pre-filtering."""
        wanted = frozenset(rule_ids)
        return PolicySet(
            rules=tuple(rule for rule in self.rules if rule.id in wanted),
            sessions=self.sessions,
            masks=self.masks,
            sources=self.sources,
        )
