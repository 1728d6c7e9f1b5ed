"""The JSONL store (durable appends, resume, torn tails, 0600) and the group committer."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from pgproxy.audit import AuditRecord, Chain, ChainError, InvalidRecord, verify
from pgproxy.audit.jsonl import (
    AuditLogCorrupt,
    AuditStoreUnavailable,
    GroupCommitter,
    JsonlAuditStore,
    read_records,
)
from tests.unit.audit.factories import outcome, statement


async def opened(path: Path) -> JsonlAuditStore:
    store = JsonlAuditStore(path)
    await store.open()
    return store


async def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    store = await opened(path)
    chain = Chain("pgproxy-a")
    intent = statement("SELECT 'é\n'")
    first = chain.seal_all([intent])
    second = chain.seal_all([outcome(intent), statement("SELECT 2")])
    await store.append(first)
    await store.append(second)
    await store.append([])
    await store.close()
    assert list(read_records(path)) == first + second
    assert path.read_text(encoding="utf-8").splitlines() == [record.to_json() for record in first + second]
    assert verify(read_records(path)).ok


async def test_a_new_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    previous = os.umask(0)
    try:
        store = await opened(path)
    finally:
        os.umask(previous)
    await store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_an_existing_readable_file_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "audit.jsonl"
    path.touch(mode=0o644)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="pgproxy.audit.jsonl"):
        store = await opened(path)
    await store.close()
    assert "accessible to group or others" in caplog.text


async def test_reopening_resumes_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    store = JsonlAuditStore(path)
    assert await store.open() is None
    committer = GroupCommitter(store, Chain.resume(store.last, "pgproxy-a"))
    for index in range(3):
        await committer.submit(statement(f"SELECT {index}"))
    await store.close()

    store = JsonlAuditStore(path)
    last = await store.open()
    assert last is not None and last.seq == 3
    committer = GroupCommitter(store, Chain.resume(last, "pgproxy-a"))
    sealed = await committer.submit(statement("SELECT 3"))
    assert (sealed.seq, sealed.prev_hash) == (4, last.hash)
    await store.close()
    records = list(read_records(path))
    assert [record.seq for record in records] == [1, 2, 3, 4]
    assert verify(records).ok


async def test_a_torn_last_line_is_cut_and_the_chain_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    store = await opened(path)
    chain = Chain("pgproxy-a")
    kept = chain.seal_all([statement("SELECT 1"), statement("SELECT 2")])
    await store.append(kept)
    await store.close()
    lost = Chain.resume(kept[-1], "pgproxy-a").seal(statement("SELECT 3"))
    torn = lost.to_json().encode()[:57]
    with path.open("ab") as file:
        file.write(torn)
    assert list(read_records(path)) == kept  # a reader skips the uncommitted fragment

    store = JsonlAuditStore(path)
    last = await store.open()
    assert last == kept[-1]
    assert store.torn_bytes == len(torn)
    assert path.read_bytes().endswith(b"\n")
    next_record = Chain.resume(last, "pgproxy-a").seal(statement("SELECT 3 again"))
    await store.append([next_record])
    await store.close()
    assert verify(read_records(path)).ok
    assert [record.seq for record in read_records(path)] == [1, 2, 3]


async def test_a_file_holding_only_a_torn_line_opens_empty(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"kind":"sta')
    store = JsonlAuditStore(path)
    assert await store.open() is None
    await store.close()
    assert path.read_bytes() == b""


async def test_an_unreadable_last_line_is_not_repaired(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    records = Chain("pgproxy-a").seal_all([statement(), statement()])
    path.write_text(records[0].to_json() + "\n" + "garbage\n", encoding="utf-8")
    with pytest.raises(AuditLogCorrupt, match="last line unreadable"):
        await JsonlAuditStore(path).open()
    edited = records[1].to_json().replace("SELECT 1", "SELECT 2")
    path.write_text(records[0].to_json() + "\n" + edited + "\n", encoding="utf-8")
    store = JsonlAuditStore(path)
    with pytest.raises(AuditLogCorrupt, match="does not match its hash"):
        await store.open()
    assert path.read_text(encoding="utf-8").endswith(edited + "\n")  # left as found
    with pytest.raises(AuditStoreUnavailable):
        await store.append(records)


async def test_a_corrupt_line_in_the_middle_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    records = Chain("pgproxy-a").seal_all([statement() for _ in range(3)])
    lines = [record.to_json() for record in records]
    lines[1] = lines[1][:-1]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(AuditLogCorrupt, match="line 2") as caught:
        list(read_records(path))
    assert caught.value.line == 2


async def test_a_long_last_line_is_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    store = await opened(path)
    records = Chain("pgproxy-a").seal_all([statement("SELECT 1"), statement("SELECT '" + "x" * 200_000 + "'")])
    await store.append(records)
    await store.close()
    store = JsonlAuditStore(path)
    assert await store.open() == records[-1]
    await store.close()


async def test_appends_must_continue_their_chains(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    store = await opened(path)
    chain = Chain("pgproxy-a")
    first = chain.seal_all([statement()])
    skipped = chain.seal_all([statement()])
    third = chain.seal_all([statement()])
    await store.append(first)
    with pytest.raises(InvalidRecord, match="does not continue seq 1"):
        await store.append(third)
    with pytest.raises(InvalidRecord, match="not sealed"):
        await store.append([statement()])
    await store.append(skipped + third)
    await store.append(Chain("pgproxy-b").seal_all([statement()]))  # another writer's chain may interleave
    await store.close()
    assert [record.seq for record in read_records(path)] == [1, 2, 3, 1]


async def test_appending_to_a_store_that_is_not_open_fails(tmp_path: Path) -> None:
    store = JsonlAuditStore(tmp_path / "audit.jsonl")
    with pytest.raises(AuditStoreUnavailable, match="not open"):
        await store.append(Chain("pgproxy-a").seal_all([statement()]))
    await store.open()
    with pytest.raises(AuditStoreUnavailable, match="already open"):
        await store.open()
    await store.close()
    await store.close()


async def test_a_failed_sync_to_disk_fails_the_store_until_reopened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    store = await opened(path)
    chain = Chain("pgproxy-a")
    await store.append(chain.seal_all([statement()]))

    def broken_sync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken_sync)
    with pytest.raises(OSError, match="Input/output"):
        await store.append(chain.seal_all([statement()]))
    monkeypatch.undo()
    assert isinstance(store.failure, OSError)
    with pytest.raises(AuditStoreUnavailable, match="must be reopened"):
        await store.append(chain.seal_all([statement()]))

    # The unacknowledged record reached the file; after reopening the chain resumes from what is there.
    last = await store.reopen()
    assert last is not None and last.seq == 2
    await store.append(Chain.resume(last, "pgproxy-a").seal_all([statement()]))
    await store.close()
    assert verify(read_records(path)).ok


async def test_group_commit_acknowledges_every_record_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    store = await opened(path)
    batches: list[int] = []
    real_append = store.append

    async def counting_append(records: Sequence[AuditRecord]) -> None:
        batches.append(len(records))
        await real_append(records)

    store.append = counting_append  # type: ignore[method-assign]
    committer = GroupCommitter(store, Chain("pgproxy-a"), max_batch=64)

    async def submitter(worker: int) -> list[AuditRecord]:
        acked = []
        for index in range(10):
            record = statement(f"SELECT {worker}, {index}")
            sealed = await committer.submit(record)
            assert sealed.record_id == record.record_id
            assert sealed.seq <= path.read_bytes().count(b"\n")  # durable: already in the file
            acked.append(sealed)
        return acked

    results = await asyncio.gather(*(submitter(worker) for worker in range(50)))
    await committer.drain()
    await store.close()
    acked = [record for result in results for record in result]
    stored = list(read_records(path))
    assert sorted(acked, key=lambda record: record.seq) == stored
    assert [record.seq for record in stored] == list(range(1, 501))
    assert len({record.record_id for record in stored}) == 500
    assert verify(stored).ok
    assert sum(batches) == 500 and len(batches) < 500 and max(batches) <= 64


class GatedSink:
    """A store whose appends wait for a gate, recording each batch."""

    def __init__(self) -> None:
        self.batches: list[list[AuditRecord]] = []
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.error: Exception | None = None

    async def append(self, records: Sequence[AuditRecord]) -> None:
        self.entered.set()
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        self.batches.append(list(records))


async def test_submissions_during_a_flush_form_the_next_batch() -> None:
    sink = GatedSink()
    committer = GroupCommitter(sink, Chain("pgproxy-a"))
    first = asyncio.create_task(committer.submit(statement("SELECT 0")))
    await sink.entered.wait()
    waiting = [asyncio.create_task(committer.submit(statement(f"SELECT {index}"))) for index in range(1, 11)]
    pair = asyncio.create_task(committer.submit_many([statement("SELECT a"), statement("SELECT b")]))
    await asyncio.sleep(0)
    assert not any(task.done() for task in [first, *waiting, pair])
    sink.gate.set()
    await asyncio.gather(first, *waiting, pair)
    assert [len(batch) for batch in sink.batches] == [1, 12]
    assert [record.seq for record in pair.result()] == [12, 13]
    assert [record.seq for batch in sink.batches for record in batch] == list(range(1, 14))
    assert await committer.submit_many([]) == []


async def test_a_cancelled_submitter_does_not_withdraw_its_record() -> None:
    sink = GatedSink()
    committer = GroupCommitter(sink, Chain("pgproxy-a"))
    blocker = asyncio.create_task(committer.submit(statement("SELECT 0")))
    await sink.entered.wait()
    cancelled = asyncio.create_task(committer.submit(statement("SELECT 1")))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    sink.gate.set()
    await blocker
    await committer.drain()
    assert [batch[0].text for batch in sink.batches] == ["SELECT 0", "SELECT 1"]


async def test_a_failed_append_fails_every_waiter_until_restarted() -> None:
    sink = GatedSink()
    committer = GroupCommitter(sink, Chain("pgproxy-a"))
    first = asyncio.create_task(committer.submit(statement()))
    await sink.entered.wait()
    second = asyncio.create_task(committer.submit(statement()))
    await asyncio.sleep(0)
    sink.error = OSError(28, "No space left on device")
    sink.gate.set()
    for task in (first, second):
        with pytest.raises(AuditStoreUnavailable, match="No space left") as caught:
            await task
        assert isinstance(caught.value.__cause__, OSError)
    assert isinstance(committer.failure, OSError)
    with pytest.raises(AuditStoreUnavailable):
        await committer.submit(statement())

    sink.error = None
    committer.restart(Chain("pgproxy-a"))
    assert (await committer.submit(statement())).seq == 1
    assert committer.chain.last_seq == 1


async def test_a_sealed_record_cannot_be_submitted() -> None:
    committer = GroupCommitter(GatedSink(), Chain("pgproxy-a"))
    with pytest.raises(ChainError):
        await committer.submit(Chain("pgproxy-a").seal(statement()))


async def test_restart_waits_for_the_flush() -> None:
    sink = GatedSink()
    committer = GroupCommitter(sink, Chain("pgproxy-a"))
    task = asyncio.create_task(committer.submit(statement()))
    await sink.entered.wait()
    with pytest.raises(AuditStoreUnavailable, match="still running"):
        committer.restart(Chain("pgproxy-a"))
    sink.gate.set()
    await task


async def test_a_cancelled_append_fails_the_store_until_reopened(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    store = await opened(path)
    chain = Chain("pgproxy-a")
    entered, release = threading.Event(), threading.Event()
    real_write = store._write_sync

    def slow_write(data: bytes) -> None:
        real_write(data)  # the record reaches the file, but the caller is gone before it hears so
        entered.set()
        release.wait()

    store._write_sync = slow_write  # type: ignore[method-assign]
    task = asyncio.create_task(store.append(chain.seal_all([statement()])))
    await asyncio.to_thread(entered.wait)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    assert isinstance(store.failure, asyncio.CancelledError)
    with pytest.raises(AuditStoreUnavailable, match="must be reopened"):
        await store.append(chain.seal_all([statement()]))
    last = await store.reopen()  # waits for the job that was still running
    assert last is not None and last.seq == 1
    await store.append(Chain.resume(last, "pgproxy-a").seal_all([statement()]))
    await store.close()
    assert verify(read_records(path)).ok


async def test_the_committer_refuses_a_record_of_another_chain() -> None:
    committer = GroupCommitter(GatedSink(), Chain("pgproxy-a"))
    with pytest.raises(ChainError, match="belongs to chain"):
        await committer.submit(statement(chain_id="pgproxy-b"))
    assert committer.failure is None


async def test_one_writer_per_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = await opened(path)
    second = JsonlAuditStore(path)
    with pytest.raises(AuditStoreUnavailable, match="open for writing elsewhere"):
        await second.open()
    await first.close()
    await second.open()
    await second.close()
