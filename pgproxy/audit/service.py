"""The proxy's audit service: its stores, their group committers, fail closed (or open), recovery, forwarding.

``AuditService`` is what the proxy talks to. It owns one or two stores (a JSONL file, a PostgreSQL
schema), each with its own :class:`~pgproxy.audit.jsonl.GroupCommitter` and chain, and every record goes
to each of them.

* ``enqueue(records)`` is for records that must be durable before the proxy acts (a statement's intent,
  a session's start): the future resolves once every store has them. While a store is failed it raises
  ``AuditStoreUnavailable`` at once (fail closed), unless the service was built ``fail_open``: then the
  records wait in a backlog and the future resolves at once.
* ``record(records)`` is for records nothing waits for (outcomes, session ends, refused logins): written
  in the next batch; if a store fails they wait in that store's backlog (bounded) and are written when
  it is back, so an outage loses nothing that happened during it.
* Recovery: a failed store is reopened in the background (every ``retry_seconds``, backing off to 10 s),
  its chain resumed from what it really holds, and its backlog written.
* Forwarding: once durable, records can be handed to a forwarder (JSON lines to stdout or syslog).

It must not build records (the gate's trail and the connection do) nor decide what is refused (the
relay asks ``accepting``); it never blocks the event loop (the JSONL store writes on its own thread).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

from pgproxy.audit.chain import Chain, new_chain_id
from pgproxy.audit.jsonl import AuditStoreUnavailable, GroupCommitter, JsonlAuditStore
from pgproxy.audit.postgres import PostgresAuditStore
from pgproxy.audit.record import AuditRecord

log = logging.getLogger(__name__)

Forwarder = Callable[[Sequence[AuditRecord]], None]
MAX_RETRY_SECONDS = 10.0


@dataclass(eq=False)
class AuditTarget:
    """One store and the committer that seals and batches records into it."""

    store: JsonlAuditStore | PostgresAuditStore
    backlog: list[AuditRecord] = field(default_factory=list)
    committer: GroupCommitter | None = None
    dropped: int = 0  # records lost because the backlog was full

    @property
    def name(self) -> str:
        if isinstance(self.store, JsonlAuditStore):
            return f"JSONL file {self.store.path}"
        return f"PostgreSQL schema {self.store.schema}"

    @property
    def healthy(self) -> bool:
        return self.committer is not None and self.committer.failure is None

    async def open(self) -> None:
        """Open the store and start (or, for a JSONL file, continue) this instance's chain."""
        store = self.store
        if isinstance(store, JsonlAuditStore):
            last = await store.open()
            chain = Chain.resume(last, last.chain_id if last is not None else new_chain_id())
        else:
            await store.open()
            chain = Chain(new_chain_id())  # one chain per process: replicas never share one
        self.committer = GroupCommitter(store, chain)

    async def recover(self) -> None:
        """Reopen the failed store and continue the chain from the last record it really holds."""
        committer = self.committer
        assert committer is not None
        await committer.drain()
        chain_id = committer.chain.chain_id
        store = self.store
        if isinstance(store, JsonlAuditStore):
            last = await store.reopen()
        else:
            await store.reopen()
            last = await store.last_record(chain_id)
        committer.restart(Chain.resume(last, chain_id))

    def keep(self, records: Sequence[AuditRecord], limit: int) -> None:
        room = limit - len(self.backlog)
        if room < len(records):
            self.dropped += len(records) - max(room, 0)
            log.error("audit backlog of %s is full: %d records lost so far", self.name, self.dropped)
        self.backlog.extend(records[: max(room, 0)])


class AuditOpenError(RuntimeError):
    """A store could not be opened at start (pgproxy does not serve without its audit log)."""


class AuditService:
    """Durable audit records for the whole proxy."""

    def __init__(
        self,
        targets: Sequence[AuditTarget],
        *,
        fail_open: bool = False,
        forward: Forwarder | None = None,
        retry_seconds: float = 1.0,
        max_backlog: int = 100_000,
    ) -> None:
        if not targets:
            raise ValueError("an audit service needs at least one store")
        self.targets = tuple(targets)
        self.fail_open = fail_open
        self._forward = forward
        self._retry_seconds = retry_seconds
        self._max_backlog = max_backlog
        self._recovery: asyncio.Task[None] | None = None
        self._last_warning = 0.0

    async def open(self) -> None:
        """Open every store (raises when one cannot be opened: pgproxy does not start without its log)."""
        for target in self.targets:
            try:
                await target.open()
            except Exception as exc:
                raise AuditOpenError(f"{target.name}: {exc}") from exc
            assert target.committer is not None
            log.info("audit log: %s (chain %s)", target.name, target.committer.chain.chain_id)

    @property
    def healthy(self) -> bool:
        return all(target.healthy for target in self.targets)

    @property
    def accepting(self) -> bool:
        """Whether statements may run: every store takes records, or the service fails open."""
        return self.fail_open or self.healthy

    def enqueue(self, records: Sequence[AuditRecord]) -> asyncio.Future[object]:
        """Records to make durable before acting; raises ``AuditStoreUnavailable`` when failed closed."""
        if not self.healthy:
            if not self.fail_open:
                self._schedule_recovery()
                raise AuditStoreUnavailable("the audit log cannot take records")
            self.record(records)
            done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        futures = [self._submit(target, records, backlog_on_failure=self.fail_open, urgent=True)
                   for target in self.targets]
        if len(futures) == 1:
            return futures[0]
        return cast("asyncio.Future[object]", asyncio.gather(*futures))

    def record(self, records: Sequence[AuditRecord]) -> None:
        """Records nothing waits for: written in the next batch, or kept until the store is back."""
        if not records:
            return
        for target in self.targets:
            if target.healthy:
                self._submit(target, records, backlog_on_failure=True, urgent=False)
            else:
                target.keep(records, self._max_backlog)
                self._schedule_recovery()

    def _submit(
        self, target: AuditTarget, records: Sequence[AuditRecord], *, backlog_on_failure: bool, urgent: bool
    ) -> asyncio.Future[object]:
        assert target.committer is not None
        future: asyncio.Future[object] = target.committer.enqueue(records, urgent=urgent)  # type: ignore[assignment]
        forward = self._forward if target is self.targets[0] else None

        def written(done: asyncio.Future[object]) -> None:
            if done.cancelled():
                return
            error = done.exception()
            if error is not None:
                self._warn(target, error)
                if backlog_on_failure:
                    target.keep(records, self._max_backlog)
                self._schedule_recovery()
            elif forward is not None:
                sealed = done.result()
                assert isinstance(sealed, list)
                try:
                    forward(sealed)
                except Exception:
                    log.exception("could not forward audit records")

        future.add_done_callback(written)
        return future

    def _warn(self, target: AuditTarget, error: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 5.0:
            self._last_warning = now
            mode = "letting statements run unlogged for now" if self.fail_open else "refusing statements"
            log.error("audit store %s failed (%s); %s until it is back", target.name, error, mode)

    def _schedule_recovery(self) -> None:
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        delay = self._retry_seconds
        while True:
            pending = [target for target in self.targets if not target.healthy]
            for target in pending:
                try:
                    await target.recover()
                except Exception as exc:
                    self._warn(target, exc)
                    continue
                log.warning("audit store %s is back; writing %d held records", target.name, len(target.backlog))
                backlog, target.backlog = target.backlog, []
                for start in range(0, len(backlog), 1000):
                    self._submit(target, backlog[start : start + 1000], backlog_on_failure=True, urgent=True)
            if self.healthy:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_SECONDS)

    async def close(self) -> None:
        """Write what is queued (backlogs included, if the stores are back) and close the stores."""
        if self._recovery is not None and not self._recovery.done():
            self._recovery.cancel()
        for target in self.targets:
            if target.committer is not None:
                try:
                    await target.committer.drain()
                except Exception as exc:
                    log.error("audit store %s failed while closing: %s", target.name, exc)
            if target.backlog:
                log.error("%d audit records could not be written to %s", len(target.backlog), target.name)
            await target.store.close()
        close_forwarder = getattr(self._forward, "close", None)
        if callable(close_forwarder):
            close_forwarder()
