"""The append-only JSONL audit store, and the group committer that batches appends to any store.

File format: one record per line, ``AuditRecord.to_json()`` followed by ``\\n`` (UTF-8; lines are split
on the byte ``\\n`` only, which JSON escapes inside strings). The file is only ever appended to: one
``write`` per batch, then ``fsync``; a batch is durable when :meth:`JsonlAuditStore.append` returns.

Crash recovery: a crash during an append can leave a *torn* last line (bytes after the last ``\\n``).
Those records were never acknowledged, so :meth:`JsonlAuditStore.open` cuts the file back to the last
``\\n`` (and logs how many bytes it dropped) before appending. Complete lines of an unacknowledged batch
may survive; they are valid, chained records. A last complete line that does not parse or does not
match its own hash is *not* repaired: ``open`` raises :class:`AuditLogCorrupt` and a human decides.

All file work runs on one dedicated thread per store, in submission order, so the event loop never
blocks on ``write``/``fsync`` and a cancelled caller cannot let a later batch overtake an earlier one.
After a failed (or cancelled) append the store refuses further appends (``AuditStoreUnavailable``;
the failing call itself raises the original ``OSError``) until it is closed and opened again
(:meth:`JsonlAuditStore.reopen`): a failed fsync may have lost pages the kernel no longer reports, so
retrying on the same descriptor could acknowledge records that are not on disk, and a cancelled
append may or may not still reach the file.

This module must not decide policy (fail closed or open is the caller's), seal records in the store
(the committer's single flush loop seals them, so file order is seal order), nor read the whole file
to open it (only the tail is read).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from pgproxy.audit.chain import Chain, ChainError, ChainHead, check_unsealed, record_hash
from pgproxy.audit.record import AuditRecord, InvalidRecord

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024


class AuditStoreUnavailable(RuntimeError):
    """The store cannot accept records now (not open, closed, or failed and not yet reopened)."""


class AuditLogCorrupt(RuntimeError):
    """A stored line that is not a valid record (tampering, disk damage); ``line`` is 1-based if known."""

    def __init__(self, path: Path, line: int | None, detail: str) -> None:
        super().__init__(f"{path}: {'last line' if line is None else f'line {line}'}: {detail}")
        self.path = path
        self.line = line


class AuditSink(Protocol):
    """What the group committer needs from a store: durable, in-order appends of sealed records."""

    async def append(self, records: Sequence[AuditRecord]) -> None: ...


class JsonlAuditStore:
    """An append-only JSONL file of sealed audit records.

    One writer per file: ``open`` takes an exclusive ``flock`` and refuses a file another store holds
    (replicas each write their own file; their chains can still be verified together).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._failure: BaseException | None = None
        self._heads: dict[str, ChainHead] = {}
        self.last: AuditRecord | None = None  # the last record in the file when opened
        self.torn_bytes = 0  # bytes of a torn last line cut off by the last open()

    @property
    def failure(self) -> BaseException | None:
        return self._failure

    async def open(self) -> AuditRecord | None:
        """Open (creating it 0600 if missing), cut a torn tail; return the last record, if any."""
        if self._fd is not None:
            raise AuditStoreUnavailable(f"{self.path} is already open")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgproxy-audit-jsonl")
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self._failure = None
        self._heads = {self.last.chain_id: ChainHead.of(self.last)} if self.last else {}
        return self.last

    async def append(self, records: Sequence[AuditRecord]) -> None:
        """Write ``records`` (sealed, continuing their chains) as one write, then fsync."""
        if self._fd is None or self._executor is None:
            raise AuditStoreUnavailable(f"{self.path} is not open")
        if self._failure is not None:
            raise AuditStoreUnavailable(f"{self.path} failed and must be reopened") from self._failure
        if not records:
            return
        self._heads.update(self._check_continuity(records))
        data = "".join([record.to_json() + "\n" for record in records]).encode("utf-8")
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._write_sync, data)
        except BaseException as exc:
            # Failed, or cancelled with the write possibly still to happen: either way what the file
            # holds is unknown until it is reopened.
            if self._failure is None:
                self._failure = exc
            raise

    async def reopen(self) -> AuditRecord | None:
        """Close and open again (after a failure): cuts a torn tail and re-reads the last record."""
        await self.close()
        return await self.open()

    async def close(self) -> None:
        """Wait for queued writes, then close the file."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_sync)
        finally:
            executor.shutdown(wait=False)

    def iter_records(self) -> Iterator[AuditRecord]:
        """Read the file back (blocking: run it in a thread from async code). See :func:`read_records`."""
        return read_records(self.path)

    def _check_continuity(self, records: Sequence[AuditRecord]) -> dict[str, ChainHead]:
        """The chain heads after ``records``; raises unless each record continues its chain."""
        last: dict[str, AuditRecord] = {}
        for record in records:
            if not record.sealed:
                raise InvalidRecord(f"record {record.record_id} is not sealed")
            chain_id = record.chain_id
            before = last.get(chain_id)
            if before is not None:
                seq, previous_hash = before.seq, before.hash
            else:
                head = self._heads.get(chain_id)
                if head is None:
                    last[chain_id] = record
                    continue
                seq, previous_hash = head.seq, head.hash
            if record.seq != seq + 1 or record.prev_hash != previous_hash:
                raise InvalidRecord(f"record seq {record.seq} of chain {chain_id} does not continue seq {seq}")
            last[chain_id] = record
        return {chain_id: ChainHead.of(record) for chain_id, record in last.items()}

    def _open_sync(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            created = True
        except FileExistsError:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            created = False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when fd is closed
            except BlockingIOError:
                raise AuditStoreUnavailable(f"{self.path} is open for writing elsewhere") from None
            if created:
                os.fchmod(fd, 0o600)  # whatever the umask allowed
                _fsync_directory(self.path.parent)
            else:
                mode = stat.S_IMODE(os.fstat(fd).st_mode)
                if mode & 0o077:
                    log.warning("audit log %s is accessible to group or others (mode %o)", self.path, mode)
            self.torn_bytes = _cut_torn_tail(fd, self.path)
            self.last = _last_record(fd, self.path)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _write_sync(self, data: bytes) -> None:
        if self._failure is not None:  # an earlier queued batch failed: write nothing after it
            raise AuditStoreUnavailable(f"{self.path} failed and must be reopened") from self._failure
        fd = self._fd
        if fd is None:
            raise AuditStoreUnavailable(f"{self.path} is closed")
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fdatasync(fd)  # the data and the file size: what reading the records back needs
        except BaseException as exc:
            self._failure = exc
            raise

    def _close_sync(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def read_records(path: str | os.PathLike[str]) -> Iterator[AuditRecord]:
    """Every record of a JSONL audit file, in file order (blocking).

    A torn last line (no ``\\n``) is not a committed record and is skipped; any other line that is not
    a valid record raises :class:`AuditLogCorrupt` with its line number.
    """
    path = Path(path)
    with path.open("rb") as file:
        for number, line in enumerate(file, start=1):
            if not line.endswith(b"\n"):
                return
            try:
                yield AuditRecord.from_json(line)
            except InvalidRecord as exc:
                raise AuditLogCorrupt(path, number, str(exc)) from None


def _cut_torn_tail(fd: int, path: Path) -> int:
    size = os.fstat(fd).st_size
    end = _last_newline(fd, size) + 1
    torn = size - end
    if torn:
        log.warning("audit log %s: dropping a torn last line of %d bytes (an unacknowledged write)", path, torn)
        os.ftruncate(fd, end)
        os.fsync(fd)
    return torn


def _last_record(fd: int, path: Path) -> AuditRecord | None:
    end = os.fstat(fd).st_size  # ends with "\n" (or is empty) after _cut_torn_tail
    if end == 0:
        return None
    start = _last_newline(fd, end - 1) + 1
    line = os.pread(fd, end - start, start)
    try:
        record = AuditRecord.from_json(line)
    except InvalidRecord as exc:
        raise AuditLogCorrupt(path, None, f"last line unreadable: {exc}") from None
    if not record.sealed or record_hash(record.prev_hash, record) != record.hash:
        raise AuditLogCorrupt(path, None, "last record does not match its hash; refusing to extend the chain")
    return record


def _last_newline(fd: int, end: int) -> int:
    """The offset of the last ``\\n`` before ``end``, or -1."""
    while end > 0:
        start = max(0, end - _CHUNK)
        index = os.pread(fd, end - start, start).rfind(b"\n")
        if index >= 0:
            return start + index
        end = start
    return -1


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class GroupCommitter:
    """Seal records into one chain and append them to a store in batches (group commit).

    ``await submit(record)`` returns the sealed record once the batch holding it is durable. While a
    batch is being written, new submissions accumulate and form the next batch, written as soon as the
    previous one finishes. Records nothing waits for (``enqueue(..., urgent=False)``: outcomes, session
    ends) do not start a write of their own: they go with the next urgent batch, or after ``lazy_delay``
    seconds at the latest, so a lone client pays one write per statement rather than two.
    If an append fails, every waiting and later submission raises
    :class:`AuditStoreUnavailable` until :meth:`restart` is given a chain resumed from what the store
    really holds (reopen the store first). Cancelling a waiting ``submit`` does not withdraw its record.
    """

    def __init__(self, store: AuditSink, chain: Chain, *, max_batch: int = 1000, lazy_delay: float = 0.05) -> None:
        self._store = store
        self._chain = chain
        self._max_batch = max_batch
        self._lazy_delay = lazy_delay
        self._pending: list[_Submission] = []
        self._flusher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._failure: BaseException | None = None

    @property
    def chain(self) -> Chain:
        return self._chain

    @property
    def failure(self) -> BaseException | None:
        return self._failure

    async def submit(self, record: AuditRecord) -> AuditRecord:
        return (await self.submit_many((record,)))[0]

    async def submit_many(self, records: Sequence[AuditRecord]) -> list[AuditRecord]:
        """Submit several records (one batch, in order); return them sealed once durable."""
        return await self.enqueue(records)

    def enqueue(self, records: Sequence[AuditRecord], *, urgent: bool = True) -> asyncio.Future[list[AuditRecord]]:
        """``submit_many`` without a coroutine: the future resolves to the sealed records once durable.

        For callers on the hot path that continue in a callback. Raises ``AuditStoreUnavailable`` at
        once when the store has failed. ``urgent=False``: written with the next urgent batch or after
        ``lazy_delay`` seconds, whichever comes first.
        """
        if self._failure is not None:
            raise AuditStoreUnavailable("the audit store failed") from self._failure
        for record in records:
            check_unsealed(record)
            if record.chain_id and record.chain_id != self._chain.chain_id:
                raise ChainError(f"record {record.record_id} belongs to chain {record.chain_id}")
        future: asyncio.Future[list[AuditRecord]] = asyncio.get_running_loop().create_future()
        if not records:
            future.set_result([])
            return future
        self._pending.append((tuple(records), future))
        if urgent:
            self._start_flush()
        elif self._flusher is None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._lazy_delay, self._start_flush)
        return future

    def _start_flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flusher is None and self._pending:
            self._flusher = asyncio.create_task(self._flush_loop())

    async def drain(self) -> None:
        """Wait until everything submitted so far is written (or failed)."""
        self._start_flush()
        while self._flusher is not None:
            await asyncio.shield(self._flusher)

    def restart(self, chain: Chain) -> None:
        """Accept submissions again after a failure, sealing into ``chain`` (resumed from the store)."""
        if self._flusher is not None:
            raise AuditStoreUnavailable("a flush is still running")
        self._chain = chain
        self._failure = None

    def _next_batch(self) -> list[_Submission]:
        count = size = 0
        for records, _ in self._pending:
            if count and size + len(records) > self._max_batch:
                break
            count += 1
            size += len(records)
        batch, self._pending = self._pending[:count], self._pending[count:]
        return batch

    async def _flush_loop(self) -> None:
        try:
            while self._pending and self._failure is None:
                batch = self._next_batch()
                try:
                    sealed = self._chain.seal_all([record for records, _ in batch for record in records])
                    await self._store.append(sealed)
                except BaseException as exc:
                    self._failure = exc
                    failed, self._pending = batch + self._pending, []
                    for _, future in failed:
                        if not future.done():
                            error = AuditStoreUnavailable(f"audit append failed: {exc!r}")
                            error.__cause__ = exc
                            future.set_exception(error)
                    if not isinstance(exc, Exception):
                        raise
                    return
                start = 0
                for records, future in batch:
                    if not future.done():
                        future.set_result(sealed[start : start + len(records)])
                    start += len(records)
        finally:
            self._flusher = None


_Submission = tuple[tuple[AuditRecord, ...], "asyncio.Future[list[AuditRecord]]"]
