"""Review filters: time parsing, the CLI/HTTP parser, what each filter matches, listings and export selection."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgproxy.audit import AuditRecord, Decision, RecordKind
from pgproxy.audit.query import FILTER_KEYS, Cursor, RecordFilter, parse_filter, parse_time
from pgproxy.audit.selection import ExportSelection, TopEntries
from tests.unit.audit.factories import at, review_log

LOG = review_log()
BY_ID = {record.record_id: record for record in LOG}


def ids(flt: RecordFilter, records: list[AuditRecord] = LOG) -> list[str]:
    return [record.record_id for record in records if flt.matches(record)]


# -- times -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
        ("2024-05-01T12:30", datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
        ("2024-05-01 12:30:15", datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC)),
        ("2024-05-01t12:30:15z", datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC)),
        ("2024-05-01T12:30:15.250Z", datetime(2024, 5, 1, 12, 30, 15, 250000, tzinfo=UTC)),
        ("2024-05-01T14:30:00+02:00", datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
        ("2024-05-01T00:30:00-05:00", datetime(2024, 5, 1, 5, 30, tzinfo=UTC)),
        (" 2024-05-01T12:00:00.000000Z ", datetime(2024, 5, 1, 12, tzinfo=UTC)),
    ],
)
def test_times_are_iso_8601_and_naive_ones_are_utc(text: str, expected: datetime) -> None:
    parsed = parse_time(text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["yesterday", "2024-13-01", "2024-05-01T25:00", "05/01/2024", "", "2024-05-01Tnoon"])
def test_a_bad_time_names_itself_and_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match="ISO-8601") as info:
        parse_time(text)
    assert repr(text) in str(info.value)


def test_filter_times_accept_datetimes_naive_datetimes_and_strings() -> None:
    expected = (datetime(2024, 5, 1, 10, tzinfo=UTC), datetime(2024, 5, 1, 11, tzinfo=UTC))
    assert RecordFilter(since="2024-05-01T10:00", until="2024-05-01T13:00:00+02:00").window == expected
    assert RecordFilter(since=datetime(2024, 5, 1, 10), until=datetime(2024, 5, 1, 11)).window == expected
    as_record_times = RecordFilter(since=at("10:00:00"), until=at("11:00:00"))
    assert RecordFilter(since=expected[0], until=expected[1]) == as_record_times
    with pytest.raises(ValueError, match="earlier"):
        RecordFilter(since="2024-05-01T10:00", until="2024-05-01T10:00")


def test_the_window_is_inclusive_at_since_and_exclusive_at_until() -> None:
    read = BY_ID["ada-read"]
    assert RecordFilter(since=read.time).matches(read)
    assert not RecordFilter(until=read.time).matches(read)
    assert RecordFilter(until=at("09:00:01.000001")).matches(read)
    assert not RecordFilter(since=at("09:00:01.000001")).matches(read)
    assert ids(RecordFilter(since=at("10:00:00"), until=at("10:31:00"))) == ["bob-start", "bob-alter"]


# -- the parser --------------------------------------------------------------------------------------------


def test_parse_filter_reads_every_key_and_skips_empty_values() -> None:
    flt = parse_filter({
        "identity": " Ada@Example.com ", "from": "2024-05-01", "to": "2024-05-02", "database": "app",
        "table": "accounts", "category": "WRITE", "decision": "require-approval", "approver": "carol@example.com",
        "text": "delete", "kind": "statement, auth_failure", "session": "s-ada", "rule": "no-deletes",
    })
    assert flt == RecordFilter(
        identity="Ada@Example.com", since="2024-05-01", until="2024-05-02", database="app", table="accounts",
        category="write", decision=Decision.REQUIRE_APPROVAL, approver="carol@example.com", text="delete",
        kinds=frozenset({RecordKind.STATEMENT, RecordKind.AUTH_FAILURE}), session_id="s-ada", rule_id="no-deletes",
    )
    assert parse_filter({key: "" for key in FILTER_KEYS}) == RecordFilter()
    assert parse_filter({"identity": "   ", "to": None}).is_empty
    assert parse_filter(flt.to_params()) == flt


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"from": "2024-05-02", "to": "2024-05-01"}, "from .* must be earlier than to"),
        ({"from": "2024-05-01", "to": "2024-05-01"}, "exclusive"),
        ({"from": "soon"}, "^from: invalid time 'soon'"),
        ({"to": "2024-02-30"}, "^to: invalid time"),
        ({"decision": "maybe"}, "decision: 'maybe' is not one of allow, deny, require_approval"),
        ({"kind": "statement,query"}, "kind: 'query' is not one of session_start"),
        ({"user": "ada"}, "unknown filter user"),
    ],
)
def test_parse_filter_errors_name_the_key_and_the_choices(values: dict[str, str | None], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_filter(values)


# -- what each filter matches ------------------------------------------------------------------------------


def test_identity_is_subject_or_email_in_any_case_and_never_an_outcome() -> None:
    bob = ["bob-start", "bob-alter", "bob-xss"]
    assert ids(RecordFilter(identity="bob@example.com")) == bob
    assert ids(RecordFilter(identity="USER-2")) == bob
    assert ids(RecordFilter(identity="bob")) == []  # exact, not a substring
    assert ids(RecordFilter(identity="mallory")) == []  # a failed login's user name is not an identity


def test_table_matches_bare_and_qualified_names_either_way() -> None:
    both = ["ada-read", "ada-delete"]
    assert ids(RecordFilter(table="accounts")) == both
    assert ids(RecordFilter(table="ACCOUNTS")) == both
    assert ids(RecordFilter(table="public.accounts")) == both  # ada-delete named it unqualified
    assert ids(RecordFilter(table="audit.accounts")) == ["ada-delete"]
    assert ids(RecordFilter(table="counts")) == []
    assert ids(RecordFilter(table="invoices")) == ["bob-alter"]
    assert ids(RecordFilter(table="billing.invoices")) == ["bob-alter"]
    assert ids(RecordFilter(table="public.invoices")) == []


def test_statement_fields_select_statements_only() -> None:
    assert ids(RecordFilter(category="DDL")) == ["bob-alter"]
    assert ids(RecordFilter(decision=Decision.DENY)) == ["ada-delete"]
    assert ids(RecordFilter(rule_id="reads")) == ["ada-read", "bob-xss", "ada-sleep"]
    assert ids(RecordFilter(approver="dave@EXAMPLE.com")) == ["bob-alter"]
    assert ids(RecordFilter(approver="dave")) == []
    assert ids(RecordFilter(text="<SCRIPT>")) == ["bob-xss"]
    assert ids(RecordFilter(text="token expired")) == []  # a session's reason is not statement text
    session_and_outcomes = RecordFilter(session_id="s-ada", text="")
    assert [BY_ID[i].kind for i in ids(session_and_outcomes)] == [RecordKind.STATEMENT] * 3


def test_lean_outcomes_match_only_on_what_they_carry() -> None:
    done = BY_ID["ada-delete-done"]
    assert RecordFilter(session_id="s-ada", since=at("09:00:00")).matches(done)
    assert RecordFilter(kinds=frozenset({RecordKind.OUTCOME})).matches(done)
    assert not RecordFilter(database="app").matches(done)
    assert not RecordFilter(identity="ada@example.com").matches(done)
    assert not RecordFilter(kinds=frozenset({RecordKind.STATEMENT})).matches(done)
    assert ids(RecordFilter(database="app")) == ["ada-start", "ada-read", "ada-delete", "ada-sleep"]


def test_listings_show_outcomes_only_when_asked() -> None:
    everything = RecordFilter()
    assert not everything.lists(BY_ID["ada-read-done"]) and everything.matches(BY_ID["ada-read-done"])
    assert RecordFilter(kinds=frozenset({RecordKind.OUTCOME})).lists(BY_ID["ada-read-done"])
    assert [r.record_id for r in LOG if RecordFilter(kinds=frozenset({RecordKind.AUTH_FAILURE})).lists(r)] == [
        "mallory-failed"
    ]


# -- cursors and listings ----------------------------------------------------------------------------------


def test_cursor_text_round_trips_and_rejects_garbage() -> None:
    cursor = Cursor.of(BY_ID["ada-read"])
    assert str(cursor) == "2024-05-01T09:00:01.000000Z,ada-read"
    assert Cursor.parse(str(cursor)) == cursor
    assert cursor.at == datetime(2024, 5, 1, 9, 0, 1, tzinfo=UTC)
    for bad in ("", "2024-05-01,ada-read", "2024-05-01T09:00:01.000000Z,", "2024-05-01T09:00:01.000000Z,a b"):
        with pytest.raises(ValueError, match="TIME,RECORD_ID"):
            Cursor.parse(bad)


def listed(flt: RecordFilter, *, newest_first: bool) -> list[str]:
    ordered = sorted((r for r in LOG if flt.lists(r)), key=Cursor.of, reverse=newest_first)
    return [record.record_id for record in ordered]


def page_through(records: list[AuditRecord], flt: RecordFilter, limit: int, *, newest_first: bool) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        top = TopEntries(flt, limit=limit, newest_first=newest_first, start_after=cursor)
        top.add_all(records)
        page = top.entries()
        seen += [entry.record.record_id for entry in page]
        if len(page) < limit:
            return seen
        cursor = Cursor.of(page[-1].record)


@given(
    limit=st.integers(1, 6),
    newest_first=st.booleans(),
    seed=st.integers(0, 2**32),
    identity=st.sampled_from([None, "ada@example.com", "user-2"]),
)
def test_paging_lists_every_entry_once_in_order_whatever_the_feed_order(
    limit: int, newest_first: bool, seed: int, identity: str | None
) -> None:
    shuffled = LOG[:]
    random.Random(seed).shuffle(shuffled)
    flt = RecordFilter(identity=identity)
    assert page_through(shuffled, flt, limit, newest_first=newest_first) == listed(flt, newest_first=newest_first)


def test_records_at_the_same_time_are_ordered_by_record_id_and_paged_without_loss() -> None:
    same = [replace(BY_ID["ada-read"], record_id=name) for name in ("b", "B", "_", "a", "0")]
    assert page_through(same, RecordFilter(), 2, newest_first=True) == ["b", "a", "_", "B", "0"]
    assert page_through(same, RecordFilter(), 1, newest_first=False) == ["0", "B", "_", "a", "b"]


def test_kept_statements_get_their_outcomes_joined_and_others_none() -> None:
    top = TopEntries(RecordFilter(session_id="s-ada", kinds=frozenset({RecordKind.STATEMENT})), limit=3)
    top.add_all(LOG)
    top.join(LOG)
    entries = {entry.record.record_id: entry.outcomes for entry in top.entries()}
    assert list(entries) == ["ada-sleep", "ada-delete", "ada-read"]
    assert [outcome.record_id for outcome in entries["ada-delete"]] == ["ada-delete-done"]
    assert entries["ada-delete"][0].sqlstate == "42501"
    assert entries["ada-sleep"] == ()  # still running
    with pytest.raises(ValueError, match="at least 1"):
        TopEntries(RecordFilter(), limit=0)


# -- export selection --------------------------------------------------------------------------------------


def exported(flt: RecordFilter) -> list[str]:
    selection = ExportSelection(flt)
    return [record.record_id for record in LOG if selection.admit(record)]


def test_an_export_joins_the_outcomes_of_the_statements_it_holds() -> None:
    assert exported(RecordFilter()) == [record.record_id for record in LOG]
    assert exported(RecordFilter(identity="ada@example.com")) == [
        "ada-start", "ada-read", "ada-read-done", "ada-delete", "ada-delete-done", "ada-sleep",
    ]
    assert exported(RecordFilter(identity="ada@example.com", kinds=frozenset({RecordKind.STATEMENT}))) == [
        "ada-read", "ada-delete", "ada-sleep",
    ]
    # The window holds bob-alter, whose outcome came after it closed, and not bob-xss, whose outcome is in it.
    assert exported(RecordFilter(since=at("10:01:00"), until=at("10:31:00"))) == ["bob-alter", "bob-alter-done"]
    assert exported(RecordFilter(since=at("10:31:00.1"), until=at("10:40:00"))) == ["bob-xss-done"]
