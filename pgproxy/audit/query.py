"""What a reviewer asks of the audit log: a record filter, its parser, listing positions and joined entries.

:class:`RecordFilter` says which records a search, a show or an export wants; :func:`parse_filter` builds
one from the strings a command line or an HTTP query carries (``FILTER_KEYS``), with a ``ValueError``
naming the bad value. Every field left ``None`` matches everything; the set fields must all match:

* ``identity`` — the record's ``subject`` or ``email`` equals it, ignoring case;
* ``since``/``until`` — ``since`` ≤ time < ``until`` (a datetime, or any text :func:`parse_time` takes);
* ``database``, ``session_id``, ``rule_id`` — equal; ``category`` — equal, ignoring case; ``decision``;
* ``table`` — a name in ``relations``, ignoring case: a bare name (``accounts``) matches it bare or in any
  schema (``public.accounts``); a qualified name matches itself, and the bare name (which the classifier
  records when the statement did not qualify it, whatever schema it resolved to);
* ``approver`` — one of ``approvers``, ignoring case; ``text`` — a substring of ``text``, ignoring case;
* ``kinds`` — the record's kind is one of them.

Outcome records are lean (session, ``intent_id``, outcome fields, time): they match only on what they
carry. A filter naming a statement field (``category``, ``decision``, ``rule_id``, ``table``,
``approver``, ``text``) selects statement records only, and one naming ``identity`` or ``database``
selects no outcome, since outcomes do not carry them. Reviewers see a statement together with its
outcomes: a listing (:class:`Entry`) attaches to each statement the outcome records naming it, and lists
outcome records on their own only when ``kinds`` asks for them explicitly; an export adds to the matching
records the outcomes of the statements it exported (``selection.ExportSelection``).

Listings run newest or oldest first by :class:`Cursor` — ``(time, record_id)``, unique and stable while
records are appended — so pages continue after the last entry shown.

Pure: no I/O, no clock. It must not read stores (``review`` does) nor decide who may search.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pgproxy.audit.record import AuditRecord, Decision, RecordKind, utc_timestamp

# The keys parse_filter accepts: the CLI's --options and the web page's GET parameters.
FILTER_KEYS = (
    "identity", "from", "to", "database", "table", "category", "decision", "approver", "text", "kind", "session",
    "rule",
)
_STATEMENT_FIELDS = ("category", "decision", "rule_id", "table", "approver", "text")


def parse_time(text: str) -> datetime:
    """An ISO-8601 date or date-time as an aware UTC datetime; naive values are UTC, a date is its midnight."""
    value = text.strip()
    if len(value) > 10 and value[10] in "tT ":  # also take a lower-case t/z and a space separator
        value = value[:10] + "T" + value[11:]
    if value.endswith("z"):
        value = value[:-1] + "Z"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: use an ISO-8601 date or date-time such as 2024-05-01, "
            "2024-05-01T12:30:00Z or 2024-05-01T14:30:00+02:00 (without a zone: UTC)"
        ) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _time(value: datetime | str | None, name: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        return parse_time(value)
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    raise TypeError(f"{name} must be a datetime or a time string, not {type(value).__name__}")


def _relation_matches(wanted: str, relation: str) -> bool:
    relation = relation.lower()
    if relation == wanted:
        return True
    if "." not in wanted:
        return relation.endswith("." + wanted)
    return "." not in relation and wanted.rsplit(".", 1)[1] == relation


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordFilter:
    """Which records a reviewer wants (see the module docstring). ``RecordFilter()`` matches every record."""

    identity: str | None = None
    since: datetime | str | None = None  # normalized to an aware UTC datetime
    until: datetime | str | None = None
    database: str | None = None
    table: str | None = None
    category: str | None = None
    decision: Decision | None = None
    approver: str | None = None
    text: str | None = None
    kinds: frozenset[RecordKind] = frozenset()
    session_id: str | None = None
    rule_id: str | None = None
    _since_key: str | None = field(init=False, repr=False, compare=False, default=None)
    _until_key: str | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        since, until = _time(self.since, "since"), _time(self.until, "until")
        if since is not None and until is not None and since >= until:
            raise ValueError("the start of the time range must be earlier than its end")
        object.__setattr__(self, "since", since)
        object.__setattr__(self, "until", until)
        object.__setattr__(self, "_since_key", None if since is None else utc_timestamp(since))
        object.__setattr__(self, "_until_key", None if until is None else utc_timestamp(until))
        object.__setattr__(self, "kinds", frozenset(RecordKind(kind) for kind in self.kinds))
        if self.decision is not None:
            object.__setattr__(self, "decision", Decision(self.decision))

    @property
    def window(self) -> tuple[datetime | None, datetime | None]:
        """``(since, until)`` as aware UTC datetimes."""
        since, until = self.since, self.until
        assert not isinstance(since, str) and not isinstance(until, str)  # normalized by __post_init__
        return since, until

    @property
    def is_empty(self) -> bool:
        """Whether the filter selects every record (an export of it holds whole chains)."""
        return self == RecordFilter()

    @property
    def names_statement_fields(self) -> bool:
        return any(getattr(self, name) is not None for name in _STATEMENT_FIELDS)

    @property
    def selects_outcomes(self) -> bool:
        """Whether an outcome record can match on its own fields."""
        kinds_ok = not self.kinds or RecordKind.OUTCOME in self.kinds
        return kinds_ok and self.identity is None and self.database is None and not self.names_statement_fields

    @property
    def wants_outcomes(self) -> bool:
        """Whether outcomes belong in the output at all (``kinds`` unset or naming them)."""
        return not self.kinds or RecordKind.OUTCOME in self.kinds

    def matches(self, record: AuditRecord) -> bool:
        """Whether ``record``'s own fields satisfy every condition (outcomes: see the module docstring)."""
        if self.kinds and record.kind not in self.kinds:
            return False
        if self._since_key is not None and record.time < self._since_key:
            return False
        if self._until_key is not None and record.time >= self._until_key:
            return False
        if self.session_id is not None and record.session_id != self.session_id:
            return False
        if self.identity is not None:
            wanted = self.identity.lower()
            if (record.subject or "").lower() != wanted and (record.email or "").lower() != wanted:
                return False
        if self.database is not None and record.database != self.database:
            return False
        if not self.names_statement_fields:
            return True
        return record.kind is RecordKind.STATEMENT and self._matches_statement(record)

    def _matches_statement(self, record: AuditRecord) -> bool:
        if self.category is not None and (record.category or "").lower() != self.category.lower():
            return False
        if self.decision is not None and record.decision is not self.decision:
            return False
        if self.rule_id is not None and record.rule_id != self.rule_id:
            return False
        if self.table is not None:
            wanted = self.table.lower()
            if not any(_relation_matches(wanted, relation) for relation in record.relations):
                return False
        if self.approver is not None:
            wanted = self.approver.lower()
            if all(approver.lower() != wanted for approver in record.approvers):
                return False
        return self.text is None or self.text.casefold() in (record.text or "").casefold()

    def lists(self, record: AuditRecord) -> bool:
        """Whether ``record`` is an entry of a listing: it matches and is not an outcome (unless asked for)."""
        if record.kind is RecordKind.OUTCOME and RecordKind.OUTCOME not in self.kinds:
            return False
        return self.matches(record)

    def to_params(self) -> dict[str, str]:
        """The filter as ``FILTER_KEYS`` strings (the inverse of :func:`parse_filter`), unset keys left out."""
        since, until = self.window
        values = {
            "identity": self.identity,
            "from": None if since is None else utc_timestamp(since),
            "to": None if until is None else utc_timestamp(until),
            "database": self.database,
            "table": self.table,
            "category": self.category,
            "decision": None if self.decision is None else self.decision.value,
            "approver": self.approver,
            "text": self.text,
            "kind": ",".join(sorted(self.kinds)) or None,
            "session": self.session_id,
            "rule": self.rule_id,
        }
        return {key: value for key, value in values.items() if value is not None}


def parse_filter(values: Mapping[str, str | None]) -> RecordFilter:
    """A :class:`RecordFilter` from ``FILTER_KEYS`` strings; empty or missing values are unset.

    ``kind`` is a comma-separated list; ``decision`` one of allow, deny, require_approval. Raises
    ``ValueError`` naming the key and what it accepts.
    """
    unknown = set(values) - set(FILTER_KEYS)
    if unknown:
        raise ValueError(f"unknown filter {', '.join(sorted(unknown))} (filters: {', '.join(FILTER_KEYS)})")
    given = {key: value.strip() for key, value in values.items() if value is not None and value.strip()}
    since = until = None
    try:
        since = parse_time(given["from"]) if "from" in given else None
    except ValueError as exc:
        raise ValueError(f"from: {exc}") from None
    try:
        until = parse_time(given["to"]) if "to" in given else None
    except ValueError as exc:
        raise ValueError(f"to: {exc}") from None
    if since is not None and until is not None and since >= until:
        raise ValueError(f"from ({given['from']}) must be earlier than to ({given['to']}); to is exclusive")
    decision = None
    if "decision" in given:
        try:
            decision = Decision(given["decision"].lower().replace("-", "_"))
        except ValueError:
            choices = ", ".join(item.value for item in Decision)
            raise ValueError(f"decision: {given['decision']!r} is not one of {choices}") from None
    kinds: set[RecordKind] = set()
    for name in given.get("kind", "").split(","):
        if name.strip():
            try:
                kinds.add(RecordKind(name.strip().lower()))
            except ValueError:
                choices = ", ".join(item.value for item in RecordKind)
                raise ValueError(f"kind: {name.strip()!r} is not one of {choices}") from None
    return RecordFilter(
        identity=given.get("identity"),
        since=since,
        until=until,
        database=given.get("database"),
        table=given.get("table"),
        category=given["category"].lower() if "category" in given else None,
        decision=decision,
        approver=given.get("approver"),
        text=given.get("text"),
        kinds=frozenset(kinds),
        session_id=given.get("session"),
        rule_id=given.get("rule"),
    )


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """A position in a listing: the ``(time, record_id)`` of an entry. Its text form is ``TIME,RECORD_ID``."""

    time: str
    record_id: str

    @classmethod
    def of(cls, record: AuditRecord) -> Cursor:
        return cls(record.time, record.record_id)

    @classmethod
    def parse(cls, text: str) -> Cursor:
        time, _, record_id = text.partition(",")
        try:
            AuditRecord(kind=RecordKind.SESSION_START, time=time, record_id=record_id)
        except ValueError:
            raise ValueError(f"invalid position {text!r}: expected TIME,RECORD_ID of a listed record") from None
        return cls(time, record_id)

    @property
    def at(self) -> datetime:
        return datetime.fromisoformat(self.time)

    def __str__(self) -> str:
        return f"{self.time},{self.record_id}"


@dataclass(frozen=True, slots=True)
class Entry:
    """A listed record with the outcome records that name it (``intent_id``), in stored order."""

    record: AuditRecord
    outcomes: tuple[AuditRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class Detail:
    """What a reader's ``show`` found. For a record id: ``record``, its ``outcomes``, the ``intent`` an
    outcome completes, and in ``session`` its session's start/end records. For a session id: ``record`` is
    None and ``session`` holds the session's entries, oldest first (``truncated``: more exist)."""

    record: AuditRecord | None
    outcomes: tuple[AuditRecord, ...] = ()
    intent: AuditRecord | None = None
    session: tuple[Entry, ...] = ()
    truncated: bool = False
