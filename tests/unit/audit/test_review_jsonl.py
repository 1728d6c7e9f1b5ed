"""Search, show and export over JSONL files written by the real store, committer and chain."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from pgproxy.audit import AuditRecord, Chain, RecordKind, verify
from pgproxy.audit.export import CSV_COLUMNS, ExportFormat, csv_cell, encode
from pgproxy.audit.jsonl import GroupCommitter, JsonlAuditStore, read_records
from pgproxy.audit.query import Cursor, RecordFilter
from pgproxy.audit.review import AuditSourceError, JsonlAuditReader
from tests.unit.audit.factories import XSS, at, field_names, outcome, review_log, statement


async def write_log(path: Path, records: Sequence[AuditRecord], chain_id: str = "pgproxy-a") -> list[AuditRecord]:
    """Append ``records`` through a group committer; the sealed records, in file order."""
    store = JsonlAuditStore(path)
    last = await store.open()
    committer = GroupCommitter(store, Chain.resume(last, chain_id))
    try:
        return await committer.submit_many(records)
    finally:
        await committer.drain()
        await store.close()


@pytest.fixture
async def log(tmp_path: Path) -> tuple[Path, list[AuditRecord]]:
    path = tmp_path / "audit.jsonl"
    return path, await write_log(path, review_log())


async def collect(records: AsyncIterator[AuditRecord]) -> list[AuditRecord]:
    return [record async for record in records]


async def export_bytes(reader: JsonlAuditReader, flt: RecordFilter, fmt: ExportFormat) -> bytes:
    return b"".join([chunk async for chunk in encode(reader.export(flt), fmt)])


# -- search ------------------------------------------------------------------------------------------------


async def test_search_lists_newest_first_with_outcomes_joined(log: tuple[Path, list[AuditRecord]]) -> None:
    path, _ = log
    entries = await JsonlAuditReader([path]).search(RecordFilter(), limit=100)
    assert [entry.record.record_id for entry in entries] == [
        "ada-end", "bob-end", "ada-sleep", "mallory-failed", "bob-xss", "bob-alter", "bob-start", "ada-delete",
        "ada-read", "ada-start",
    ]
    joined = {entry.record.record_id: [o.record_id for o in entry.outcomes] for entry in entries}
    assert joined["ada-delete"] == ["ada-delete-done"]
    assert joined["bob-alter"] == ["bob-alter-done"]  # written after bob-xss and its outcome
    assert joined["ada-sleep"] == [] and joined["ada-start"] == []
    assert all(entry.record.sealed for entry in entries)


async def test_search_filters_limits_and_pages(log: tuple[Path, list[AuditRecord]]) -> None:
    reader = JsonlAuditReader([log[0]])
    ada = RecordFilter(identity="ADA@example.com", kinds=frozenset({RecordKind.STATEMENT}))
    first = await reader.search(ada, limit=2)
    assert [entry.record.record_id for entry in first] == ["ada-sleep", "ada-delete"]
    rest = await reader.search(ada, limit=2, start_after=Cursor.of(first[-1].record))
    assert [entry.record.record_id for entry in rest] == ["ada-read"]
    assert rest[0].outcomes[0].command_tag == "SELECT 1"
    oldest = await reader.search(RecordFilter(table="accounts"), limit=5, newest_first=False)
    assert [entry.record.record_id for entry in oldest] == ["ada-read", "ada-delete"]
    window = RecordFilter(since=at("10:00:00"), until=at("11:00:00"), database="billing")
    assert [entry.record.record_id for entry in await reader.search(window)] == ["bob-xss", "bob-alter", "bob-start"]
    assert await reader.search(RecordFilter(text="no such statement")) == []


async def test_files_of_several_chains_merge_by_time_and_rotated_files_join_in_any_order(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    early = statement("SELECT 'early'", record_id="early", time=at("08:00:00"))
    late = statement("SELECT 'late'", record_id="late", time=at("12:00:00"))
    await write_log(first, [early, late], "pgproxy-a")
    middle = statement("SELECT 'middle'", record_id="middle", time=at("10:00:00"))
    await write_log(second, [middle], "pgproxy-b")
    # The same chain continued in a rotated file: the outcome of "late" is in the newer file.
    rotated = tmp_path / "a.1.jsonl"
    first.rename(rotated)
    await write_log(first, [outcome(late, record_id="late-done", time=at("12:00:05"))], "pgproxy-a")
    reader = JsonlAuditReader([first, second, rotated])  # newest file first: order does not matter to search
    entries = await reader.search(RecordFilter(), limit=10)
    assert [entry.record.record_id for entry in entries] == ["late", "middle", "early"]
    assert [o.record_id for o in entries[0].outcomes] == ["late-done"]


# -- show --------------------------------------------------------------------------------------------------


async def test_show_a_statement_an_outcome_and_a_session(log: tuple[Path, list[AuditRecord]]) -> None:
    reader = JsonlAuditReader([log[0]])
    detail = await reader.show("ada-delete")
    assert detail is not None and detail.record is not None
    assert detail.record.text == "DELETE FROM accounts"
    assert [o.sqlstate for o in detail.outcomes] == ["42501"]
    assert [entry.record.record_id for entry in detail.session] == ["ada-start", "ada-end"]

    done = await reader.show("bob-alter-done")
    assert done is not None and done.intent is not None and done.intent.record_id == "bob-alter"

    session = await reader.show("s-bob")
    assert session is not None and session.record is None and not session.truncated
    assert [entry.record.record_id for entry in session.session] == ["bob-start", "bob-alter", "bob-xss", "bob-end"]
    assert [o.record_id for o in session.session[1].outcomes] == ["bob-alter-done"]
    cut = await reader.show("s-bob", session_limit=2)
    assert cut is not None and cut.truncated and len(cut.session) == 2

    assert await reader.show("no-such-record") is None
    assert await reader.show('"kind":"statement"') is None  # a needle that is in every line is not an id


# -- export ------------------------------------------------------------------------------------------------


async def test_exporting_everything_as_jsonl_gives_the_stored_lines_which_verify(
    log: tuple[Path, list[AuditRecord]], tmp_path: Path
) -> None:
    path, sealed = log
    data = await export_bytes(JsonlAuditReader([path]), RecordFilter(), ExportFormat.JSONL)
    assert data == path.read_bytes()
    copy = tmp_path / "export.jsonl"
    copy.write_bytes(data)
    report = verify(read_records(copy))
    assert report.ok and report.records == len(sealed), report.summary()


async def test_a_filtered_export_holds_matching_records_and_their_outcomes(
    log: tuple[Path, list[AuditRecord]],
) -> None:
    reader = JsonlAuditReader([log[0]])
    records = await collect(reader.export(RecordFilter(identity="bob@example.com")))
    assert [r.record_id for r in records] == ["bob-start", "bob-alter", "bob-xss", "bob-xss-done", "bob-alter-done"]
    report = verify(records)
    assert not report.ok  # a filtered export is not a whole chain: verify says where records are missing


async def test_csv_export_has_the_fixed_columns_and_neutralizes_formulas(
    log: tuple[Path, list[AuditRecord]],
) -> None:
    data = await export_bytes(JsonlAuditReader([log[0]]), RecordFilter(session_id="s-bob"), ExportFormat.CSV)
    assert data.startswith(b"time,kind,record_id,") and b"\r\n" in data
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    assert list(rows[0]) == list(CSV_COLUMNS)
    by_id = {row["record_id"]: row for row in rows}
    assert list(by_id) == ["bob-start", "bob-alter", "bob-xss", "bob-xss-done", "bob-alter-done", "bob-end"]
    assert by_id["bob-start"]["application_name"] == "'=cmd|' /C calc'!A0"
    assert by_id["bob-xss"]["text"] == XSS  # starts with SELECT: kept as is, markup and all
    assert by_id["bob-alter"]["approvers"] == "carol@example.com;Dave@example.com"
    assert by_id["bob-alter"]["decision"] == "require_approval"
    assert by_id["bob-xss-done"]["rows"] == "1" and by_id["bob-xss-done"]["duration_ms"] == "0.25"
    assert by_id["bob-xss-done"]["intent_id"] == "bob-xss" and by_id["bob-xss-done"]["text"] == ""


def test_csv_columns_cover_every_record_field() -> None:
    assert sorted(CSV_COLUMNS) == sorted(field_names())
    assert len(set(CSV_COLUMNS)) == len(CSV_COLUMNS)


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("-- comment\nDROP TABLE t", "'-- comment\nDROP TABLE t"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("SELECT 1 = 1", "SELECT 1 = 1"),
        (" =1", " =1"),
        (("=a", "b"), "'=a;b"),
        (("a", "=b"), "a;=b"),
        (12.5, "12.5"),
        (3.0, "3"),
        (0, "0"),
        (None, ""),
    ],
)
def test_csv_cells(value: object, cell: str) -> None:
    assert csv_cell(value) == cell


async def test_csv_quoting_round_trips_awkward_text(tmp_path: Path) -> None:
    awkward = 'SELECT \'a,b\', "q"\r\n, \x00, é'
    path = tmp_path / "audit.jsonl"
    await write_log(path, [statement(awkward, record_id="awkward")])
    data = await export_bytes(JsonlAuditReader([path]), RecordFilter(), ExportFormat.CSV)
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    assert rows[0]["text"] == awkward


async def test_export_streams_in_chunks_without_reading_the_whole_file_first(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    records = []
    for index in range(1500):
        intent = statement(f"SELECT {index}, '{'x' * 200}'", time=at("09:00:00"))
        records += [intent, outcome(intent, time=at("09:00:00"))]
    sealed = await write_log(path, records)
    with path.open("ab") as file:
        file.write(b'{"kind":"statement"}\n')  # a corrupt record at the very end
    reader = JsonlAuditReader([path])
    exported = []
    with pytest.raises(AuditSourceError, match=r"audit.jsonl: line 3001: .*"):
        async for record in reader.export(RecordFilter()):
            exported.append(record)
    # Records came out before the bad line was read, in file order.
    assert 0 < len(exported) <= 3000
    assert [r.record_id for r in exported] == [r.record_id for r in sealed[: len(exported)]]
    chunks = [chunk async for chunk in encode(_replay(exported), ExportFormat.JSONL)]
    assert len(chunks) > 5 and max(len(chunk) for chunk in chunks) < 70_000
    assert b"".join(chunks) == b"".join(r.to_json().encode() + b"\n" for r in exported)


async def _replay(records: list[AuditRecord]) -> AsyncIterator[AuditRecord]:
    for record in records:
        yield record


# -- unreadable logs ---------------------------------------------------------------------------------------


async def test_a_torn_last_line_is_skipped_and_a_missing_file_is_reported(
    log: tuple[Path, list[AuditRecord]], tmp_path: Path
) -> None:
    path, sealed = log
    with path.open("ab") as file:
        file.write(b'{"kind":"statement","time":"2024-05-01T12')  # a writer in the middle of an append
    reader = JsonlAuditReader([path])
    assert len(await collect(reader.export(RecordFilter()))) == len(sealed)
    assert len(await reader.search(RecordFilter(), limit=100)) == 10
    with pytest.raises(AuditSourceError, match=r"missing\.jsonl: no such file"):
        await JsonlAuditReader([tmp_path / "missing.jsonl"]).search(RecordFilter())


async def test_a_corrupt_line_is_reported_with_its_number(log: tuple[Path, list[AuditRecord]]) -> None:
    path, _ = log
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    broken = json.loads(lines[3])
    broken["decision"] = "perhaps"
    lines[3] = json.dumps(broken) + "\n"
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(AuditSourceError, match=r"line 4: decision: unknown value 'perhaps'"):
        await JsonlAuditReader([path]).search(RecordFilter())
