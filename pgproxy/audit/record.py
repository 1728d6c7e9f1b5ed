"""One audit record, its JSON form and its canonical serialization for hashing.

An :class:`AuditRecord` is an immutable value: what happened (``kind``), when, in which session, by whom,
and for statement records what was decided and what came of it. Records are created *unsealed* (``seq`` 0,
empty ``chain_id``/``prev_hash``/``hash``); :class:`pgproxy.audit.chain.Chain` seals them.

This module is pure: no I/O, no asyncio, no clock reads except in :func:`utc_timestamp` when called
without an argument and the random ``record_id`` default. It must never hold secrets: there is no field
for a token or a password, and callers must not put one in ``text``, ``reason`` or ``error_message``
(masked values never reach the audit log either).

Canonical form (what the chain hashes)
--------------------------------------

``canonical_bytes(record)`` is the RFC 8785 (JSON Canonicalization Scheme) serialization of the record's
JSON object *without* its ``hash`` member, encoded as UTF-8. Concretely, for the value types a record
can hold:

* one JSON object; members sorted by key (all keys are ASCII, so code-point and UTF-16 order agree);
  no whitespace anywhere; ``,`` and ``:`` as separators;
* a member whose value is ``null`` or an empty array is **omitted** (so optional fields added in a later
  format version do not change the hash of older records); empty strings are kept;
* strings: ``"``/``\\`` escaped with a backslash, U+0008/0009/000A/000C/000D as ``\\b \\t \\n \\f \\r``,
  other U+0000..U+001F as ``\\u00xx`` (lowercase hex), every other character literally (including
  U+007F and U+2028); lone surrogates are refused at construction;
* integers (``version``, ``seq``, ``statement_index``, ``rows``) in plain decimal, 0 ≤ n < 2**53;
* ``duration_ms`` is rounded to 3 decimals (microseconds) at construction and written as the shortest
  decimal that round-trips the IEEE double, without exponent and without a trailing ``.0``
  (``12.5``, ``3``, ``0.001``) — the ECMAScript number form RFC 8785 prescribes; 0 ≤ value < 1e15;
* arrays (``groups``, ``relations``, ``approvers``) keep their order.

The record hash is ``sha256(prev_hash_ascii || canonical_bytes).hexdigest()`` (lowercase hex), see
``chain.py``. A store or an external verifier reproduces it with any RFC 8785 implementation, or with
Python's ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` after dropping
``hash``, nulls and empty arrays and writing ``duration_ms`` as above. ``to_json()`` is exactly the
canonical form with ``hash`` included, so a JSONL line minus its ``hash`` member is the hashed text.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from json.encoder import encode_basestring
from typing import Any, TypeVar

FORMAT_VERSION = 1
MAX_SAFE_INT = 2**53 - 1
MAX_DURATION_MS = 1e15

_E = TypeVar("_E", bound=StrEnum)

_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_HASH = re.compile(r"[0-9a-f]{64}")
_ID = re.compile(r"[0-9A-Za-z_.:-]{1,128}")
_SQLSTATE = re.compile(r"[0-9A-Z]{5}")


class RecordKind(StrEnum):
    SESSION_START = "session_start"
    SESSION_END = "session_end"
    AUTH_FAILURE = "auth_failure"
    STATEMENT = "statement"  # the intent: written (durably) before the statement is forwarded
    OUTCOME = "outcome"  # what came of a statement; ``intent_id`` names its statement record


class Decision(StrEnum):
    """The policy decision for a statement (the values of ``pgproxy.policy.model.Effect``)."""

    ALLOW = "allow"
    DENY = "deny"
    REQUIRE_APPROVAL = "require_approval"


class InvalidRecord(ValueError):
    """A record value or a JSON text that is not a valid audit record."""


_second: list[Any] = [-1, ""]  # the last second formatted, and its text


def utc_timestamp(when: datetime | None = None) -> str:
    """``when`` (an aware datetime; now if omitted) as the record time: ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    if when is None:
        seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
        if seconds != _second[0]:  # formatting the date costs more than the rest: once per second
            _second[:] = [seconds, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(seconds))]
        return f"{_second[1]}{nanos // 1000:06d}Z"
    if when.tzinfo is None:
        raise InvalidRecord("audit times must be timezone-aware")
    return when.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def new_record_id() -> str:
    """32 hex digits, unique: 16 random per process, then a counter (no system call per record)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


# Not slotted: copying a record for sealing and reading its members for encoding are then single
# operations on its ``__dict__`` (the proxy builds and seals two records per statement).
@dataclass(frozen=True, kw_only=True)
class AuditRecord:
    """One audit event. Fields a kind does not use stay ``None`` or empty."""

    kind: RecordKind
    time: str
    record_id: str = field(default_factory=new_record_id)
    version: int = FORMAT_VERSION
    # Chain position, set by Chain.seal (unsealed: "", 0, "", "").
    chain_id: str = ""
    seq: int = 0
    prev_hash: str = ""
    hash: str = ""
    # Session and identity.
    session_id: str | None = None
    client_address: str | None = None
    subject: str | None = None
    email: str | None = None
    groups: tuple[str, ...] = ()
    issuer: str | None = None
    database: str | None = None
    upstream_role: str | None = None
    application_name: str | None = None  # as the client sent it (its own words, not verified)
    login_user: str | None = None  # the user name of the startup packet (auth failures: who tried)
    # Statement (intent).
    statement_index: int | None = None
    text: str | None = None
    fingerprint: str | None = None
    category: str | None = None
    command: str | None = None
    relations: tuple[str, ...] = ()
    decision: Decision | None = None
    rule_id: str | None = None
    approval_id: str | None = None
    approvers: tuple[str, ...] = ()
    # Outcome.
    intent_id: str | None = None
    command_tag: str | None = None
    rows: int | None = None
    sqlstate: str | None = None
    error_message: str | None = None
    duration_ms: float | None = None
    # Auth failures, session end.
    reason: str | None = None
    # The JSON line of a sealed record, computed once by ``sealed_copy`` (not a field of the record).
    _line: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def sealed(self) -> bool:
        return self.seq > 0

    def to_json(self) -> str:
        """The record as one line of JSON (no newline): the canonical form, ``hash`` included."""
        if self._line is not None:
            return self._line
        return _join(_fragments(self, with_hash=True))

    def canonical_bytes(self) -> bytes:
        """The bytes the chain hashes: the canonical form without ``hash`` (see the module docstring)."""
        return _join(_fragments(self, with_hash=False)).encode("utf-8")

    def sealed_copy(self, chain_id: str, seq: int, prev_hash: str, hash_of: Callable[[bytes], str]) -> AuditRecord:
        """This record at position ``seq`` of ``chain_id``, its ``hash`` = ``hash_of(canonical bytes)``.

        For :class:`~pgproxy.audit.chain.Chain` (which checks ``chain_id`` and ``prev_hash``): the copy is
        not validated again, and its JSON line is computed here once rather than at every ``to_json``.
        """
        if not 0 < seq <= MAX_SAFE_INT:
            raise InvalidRecord("seq must be an integer in [1, 2**53)")
        copy = object.__new__(AuditRecord)
        values = copy.__dict__
        values.update(self.__dict__)
        values.update(chain_id=chain_id, seq=seq, prev_hash=prev_hash)
        fragments = _fragments(copy, with_hash=False)
        digest = hash_of(_join(fragments).encode("utf-8"))
        values["hash"] = digest
        fragments.append(f'"hash":"{digest}"')
        fragments.sort()  # every fragment starts with its quoted name, so this is the order of the names
        values["_line"] = _join(fragments)
        return copy

    @classmethod
    def trusted(cls, **values: Any) -> AuditRecord:
        """A record built without validation, for the proxy's hot path.

        Only for values pgproxy produced itself and already knows to be valid: strings decoded strictly
        (no lone surrogates), identity fields checked once per session by building one validated record,
        the enums and numbers of the record's own types. Everything else goes through the constructor.
        """
        record = object.__new__(cls)
        fields_ = record.__dict__
        fields_.update(_DEFAULTS)
        fields_["record_id"] = new_record_id()
        fields_.update(values)
        return record

    @classmethod
    def from_json(cls, text: str | bytes) -> AuditRecord:
        """Parse one JSON object; unknown or duplicate keys, NaN/Infinity and wrong types are refused."""
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidRecord(f"not a JSON audit record: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidRecord("an audit record is a JSON object")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditRecord:
        unknown = set(data) - _FIELD_NAMES
        if unknown:
            raise InvalidRecord(f"unknown audit record fields: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for name, raw in data.items():
            if raw is None:
                continue
            value = raw
            if name in _TUPLE_FIELDS:
                if not isinstance(raw, list):
                    raise InvalidRecord(f"{name} must be an array")
                value = tuple(raw)
            elif name == "kind":
                value = _enum(RecordKind, name, raw)
            elif name == "decision":
                value = _enum(Decision, name, raw)
            elif name == "duration_ms" and isinstance(raw, int) and not isinstance(raw, bool):
                value = float(raw)
            values[name] = value
        for required in ("kind", "time"):
            if required not in values:
                raise InvalidRecord(f"audit record without {required}")
        return cls(**values)


_FIELD_NAMES = frozenset(f.name for f in fields(AuditRecord) if f.init)
_PREFIXES = tuple((name, f'"{name}":') for name in sorted(_FIELD_NAMES))
_DEFAULTS = {f.name: f.default for f in fields(AuditRecord) if f.name != "record_id" and f.default is not MISSING}
_SORTED_FIELD_NAMES = tuple(sorted(_FIELD_NAMES))
_TUPLE_FIELDS = frozenset({"groups", "relations", "approvers"})
_INT_FIELDS = ("version", "seq", "statement_index", "rows")
_NON_STR_FIELDS = _TUPLE_FIELDS | set(_INT_FIELDS) | {"kind", "decision", "duration_ms"}
_STR_FIELDS = tuple(name for name in _SORTED_FIELD_NAMES if name not in _NON_STR_FIELDS)


def _validate(record: AuditRecord) -> None:
    if not isinstance(record.kind, RecordKind):
        raise InvalidRecord(f"kind must be a RecordKind, not {record.kind!r}")
    if record.decision is not None and not isinstance(record.decision, Decision):
        raise InvalidRecord(f"decision must be a Decision, not {record.decision!r}")
    texts: list[str] = []
    for name in _STR_FIELDS:
        value = getattr(record, name)
        if value is not None:
            if type(value) is not str:
                _check_text(name, value)
            texts.append(value)
    for name in _TUPLE_FIELDS:
        value = getattr(record, name)
        if not isinstance(value, tuple):
            raise InvalidRecord(f"{name} must be a tuple of strings")
        for item in value:
            if type(item) is not str:
                _check_text(name, item)
            texts.append(item)
    try:
        "".join(texts).encode("utf-8")  # one pass over every text for lone surrogates
    except UnicodeEncodeError:
        for name in (*_STR_FIELDS, *_TUPLE_FIELDS):  # name the offending field
            value = getattr(record, name)
            for item in value if isinstance(value, tuple) else (value,) if value is not None else ():
                _check_text(name, item)
    for name in _INT_FIELDS:
        value = getattr(record, name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SAFE_INT
        ):
            raise InvalidRecord(f"{name} must be an integer in [0, 2**53)")
    if record.version != FORMAT_VERSION:
        raise InvalidRecord(f"unsupported audit record version {record.version}")
    if not _TIME.fullmatch(record.time):
        raise InvalidRecord(f"time must be UTC ISO-8601 with microseconds (…T12:00:00.000000Z): {record.time!r}")
    try:
        datetime.fromisoformat(record.time)
    except ValueError:
        raise InvalidRecord(f"time is not a valid date: {record.time!r}") from None
    if not _ID.fullmatch(record.record_id):
        raise InvalidRecord(f"record_id must be 1-128 characters of [0-9A-Za-z_.:-]: {record.record_id!r}")
    if record.chain_id and not _ID.fullmatch(record.chain_id):
        raise InvalidRecord(f"chain_id must be 1-128 characters of [0-9A-Za-z_.:-]: {record.chain_id!r}")
    for name in ("prev_hash", "hash"):
        value = getattr(record, name)
        if value and not _HASH.fullmatch(value):
            raise InvalidRecord(f"{name} must be 64 lowercase hex digits or empty")
    if record.sqlstate is not None and not _SQLSTATE.fullmatch(record.sqlstate):
        raise InvalidRecord(f"sqlstate must be five characters of [0-9A-Z]: {record.sqlstate!r}")
    if record.duration_ms is not None:
        duration = record.duration_ms
        if isinstance(duration, bool) or not isinstance(duration, float | int):
            raise InvalidRecord("duration_ms must be a number")
        if not (math.isfinite(duration) and 0 <= duration < MAX_DURATION_MS):
            raise InvalidRecord("duration_ms must be finite and in [0, 1e15)")
        object.__setattr__(record, "duration_ms", round(float(duration), 3))
    if record.kind is RecordKind.STATEMENT and record.decision is None:
        raise InvalidRecord("a statement record carries the policy decision")
    if record.kind is RecordKind.OUTCOME and not record.intent_id:
        raise InvalidRecord("an outcome record names its statement record (intent_id)")


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise InvalidRecord(f"{name} must be a string, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRecord(f"{name} is not valid Unicode (lone surrogate)") from None


def _enum(enum: type[_E], name: str, value: object) -> _E:
    if not isinstance(value, str):
        raise InvalidRecord(f"{name} must be a string")
    try:
        return enum(value)
    except ValueError:
        raise InvalidRecord(f"{name}: unknown value {value!r}") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidRecord(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise InvalidRecord(f"{name} is not allowed in an audit record")


def _encode_number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def _fragments(record: AuditRecord, *, with_hash: bool) -> list[str]:
    """``"name":value`` for every member of the canonical form, in name order (``hash`` if asked)."""
    fragments = []
    values = record.__dict__
    for name, prefix in _PREFIXES:
        value = values[name]
        if value is None or value == () or (name == "hash" and not with_hash):
            continue
        kind = type(value)
        if kind is str:
            fragments.append(prefix + _STRING(value))
        elif kind is tuple:
            fragments.append(prefix + "[" + ",".join([_STRING(item) for item in value]) + "]")
        elif kind is float:
            fragments.append(prefix + _encode_number(value))
        elif kind is int:
            fragments.append(prefix + str(value))
        else:  # StrEnum
            fragments.append(prefix + _STRING(str(value)))
    return fragments


def _join(fragments: list[str]) -> str:
    return "{" + ",".join(fragments) + "}"


# The C string encoder json.dumps(ensure_ascii=False) uses: escapes exactly what RFC 8785 escapes.
_STRING: Callable[[str], str] = encode_basestring
