"""Approval requests in PostgreSQL (asyncpg), shared by every pgproxy replica, with change notifications.

:class:`ApprovalStore` keeps :class:`~pgproxy.approvals.model.ApprovalRequest` values in the tables of
``pg_schema`` and changes them only through the pure model, inside one transaction per change:

* :meth:`~ApprovalStore.vote` locks the request row (``SELECT … FOR UPDATE``), reads its votes, applies
  ``ApprovalRequest.vote`` and writes the vote and new state in that transaction. Concurrent votes on one
  request thus run one after another, each seeing those committed before it: quorum is reached once and a
  person (same issuer and subject, or same email) counts once; unique indexes on ``approval_votes`` back
  this up. A vote when ``now`` is at or after ``expires_at`` expires the request (committed), refused.
* :meth:`~ApprovalStore.expire_due` and :meth:`~ApprovalStore.withdraw` lock the same way (expiry skips
  rows locked elsewhere: they are due again next time).
* :meth:`~ApprovalStore.consume` marks an approved "return now" request used with one conditional
  ``UPDATE``: of two sessions consuming it together exactly one gets it.

Every change sends ``NOTIFY <schema>_approvals, '<request id>'`` in its transaction, so listeners hear of
it once it is committed. :meth:`~ApprovalStore.listen` keeps a dedicated connection LISTENing and calls
back with each request id. When that connection drops (server restart, failover, a terminated backend)
it reconnects in the background, backing off; notifications sent meanwhile are lost, so after each
reconnection it calls ``on_reconnect`` and the caller catches up by re-reading the requests it waits on
(:meth:`~ApprovalStore.get`, or :meth:`~ApprovalStore.list` by ``holder``). A quiet connection is
checked every ``check_interval`` seconds.

The store's role needs (``pg_schema.grant_statements``): USAGE on the schema, SELECT on ``schema_version``,
SELECT and INSERT on both tables, UPDATE of ``approval_requests (state, decided_at, consumed_at, extra)``;
no DELETE. Migrating needs the schema's owner. Times are the caller's (``now``, epoch seconds), never the
database's clock. Bound calls with ``asyncio.timeout``: a cancelled call rolls back.

This module must not decide who may vote or when a request is decided (``model`` does), authenticate
voters, or talk to approvers (channels do).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from pgproxy.approvals import pg_schema as tables
from pgproxy.approvals.model import ApprovalRequest, RequestState, Vote, VoteRefused
from pgproxy.audit.pg_schema import checked_schema
from pgproxy.auth.identity import Identity

__all__ = ["ApprovalListener", "ApprovalStore", "ConnectionFactory", "RequestNotFound"]

log = logging.getLogger(__name__)

ConnectionFactory = Callable[[], Awaitable[asyncpg.Connection]]
Conn = asyncpg.Connection | PoolConnectionProxy
Requests = list[ApprovalRequest]

_UNSTORABLE = (asyncpg.CharacterNotInRepertoireError, asyncpg.UntranslatableCharacterError)
_RETRY_FIRST, _RETRY_LIMIT = 0.2, 10.0  # seconds before the first reconnection attempt, and between them at most


class RequestNotFound(LookupError):
    """No approval request has this id."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"no approval request {request_id}")
        self.request_id = request_id


class ApprovalStore:
    """Approval requests in ``<schema>.approval_requests`` and their votes, shared by replicas.

    ``dsn_or_connect`` is a DSN or an async callable returning a new ``asyncpg.Connection``; ``replica``
    names this pgproxy instance and is stored as the holder of the requests it creates.
    """

    def __init__(
        self,
        dsn_or_connect: str | ConnectionFactory,
        /,
        *,
        schema: str = "pgproxy",
        replica: str | None = None,
        max_connections: int = 4,
    ) -> None:
        self._connect: ConnectionFactory = (
            (lambda: asyncpg.connect(dsn_or_connect)) if isinstance(dsn_or_connect, str) else dsn_or_connect
        )
        self.schema = schema
        self.channel = tables.channel_name(schema)
        self.replica = replica
        self._max_connections = max_connections
        quoted = checked_schema(schema)  # pasted into SQL below
        self._requests, self._votes = f"{quoted}.{tables.REQUESTS_TABLE}", f"{quoted}.{tables.VOTES_TABLE}"
        self._select = f"SELECT {', '.join(tables.REQUEST_COLUMNS)} FROM {self._requests}"  # noqa: S608
        self._sql_insert_request = _insert(self._requests, tables.REQUEST_COLUMNS)
        self._sql_insert_vote = _insert(self._votes, tables.VOTE_COLUMNS)
        self._pool: asyncpg.Pool | None = None
        self._listeners: list[ApprovalListener] = []

    async def open(self) -> None:
        """Create or migrate the tables (read only when current), then open a small connection pool."""
        if self._pool is not None:
            raise RuntimeError(f"approval store (schema {self.schema}) is already open")
        conn = await self._connect()
        try:
            await tables.migrate(conn, self.schema)
        finally:
            await conn.close()

        async def connect(*_: Any, **__: Any) -> asyncpg.Connection:  # the pool's own arguments are unused
            return await self._connect()

        self._pool = await asyncpg.create_pool(connect=connect, min_size=1, max_size=self._max_connections)

    async def close(self) -> None:
        """Stop this store's listeners and close its connections."""
        while self._listeners:
            await self._listeners.pop().close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    # -- changes -------------------------------------------------------------------------------------
    async def create(self, request: ApprovalRequest) -> None:
        """Store a new request (and any votes it holds); raises :class:`ValueError` if its id is taken."""
        try:
            async with self._transaction() as conn:
                await conn.execute(self._sql_insert_request, *tables.request_row(request, self.replica))
                for seq, vote in enumerate(request.votes, 1):
                    await conn.execute(self._sql_insert_vote, *tables.vote_row(request.id, seq, vote))
                await self._notify(conn, request.id)
        except asyncpg.UniqueViolationError as exc:
            raise ValueError(f"approval request {request.id} already exists") from exc

    async def vote(self, request_id: str, vote: Vote, now: float) -> ApprovalRequest:
        """Count ``vote`` by the model's rules and return the request after it.

        Raises :class:`~pgproxy.approvals.model.VoteRefused` (nothing is stored, except that a request
        found due at ``now`` is expired) or :class:`RequestNotFound`.
        """
        refused: VoteRefused | None = None
        try:
            async with self._transaction() as conn:
                request = await self._locked(conn, request_id)
                after = request.expire(now)
                if after is not request:
                    refused = VoteRefused(f"request {request_id} expired before the vote")
                else:
                    after, seq = request.vote(vote), len(request.votes) + 1
                    await conn.execute(self._sql_insert_vote, *tables.vote_row(request_id, seq, vote))
                await self._changed(conn, request, after)
        except asyncpg.UniqueViolationError as exc:  # the indexes' backstop; the model refuses first
            raise VoteRefused(f"{vote.voter.display} has already voted on request {request_id}") from exc
        except _UNSTORABLE as exc:
            raise VoteRefused(f"the vote holds text that cannot be stored ({exc})") from exc
        if refused is not None:
            raise refused
        return after

    async def expire_due(self, now: float) -> Requests:
        """Expire every pending request due at ``now``; return those this call expired."""
        async with self._transaction() as conn:
            due = "state = 'pending' AND expires_at <= $1 ORDER BY expires_at, id FOR UPDATE SKIP LOCKED"
            rows = await conn.fetch(f"{self._select} WHERE {due}", now)
            expired: Requests = []
            for request in await self._with_votes(conn, rows):
                expired.append(request.expire(now))
                await self._changed(conn, request, expired[-1])
            return expired

    async def withdraw(self, request_id: str, now: float) -> ApprovalRequest:
        """Withdraw a pending request (its client went away); a decided one is returned unchanged."""
        async with self._transaction() as conn:
            request = await self._locked(conn, request_id)
            after = request.withdraw(now)
            await self._changed(conn, request, after)
            return after

    async def consume(self, request_id: str, now: float) -> ApprovalRequest | None:
        """Use an approved "return now" request once: the request if this call used it, else None.

        None when it is not approved, not bound to a statement digest, already used, or ``now`` is at or
        after its ``expires_at``. Atomic: of concurrent calls at most one gets the request.
        """
        usable = "state = 'approved' AND statement_digest IS NOT NULL AND consumed_at IS NULL AND $2 < expires_at"
        return await self._update(f"consumed_at = $2 WHERE id = $1 AND {usable}", request_id, now)

    async def set_extra(self, request_id: str, values: Mapping[str, str]) -> ApprovalRequest:
        """Merge ``values`` into the request's ``extra`` (channel bookkeeping such as a message id)."""
        request = await self._update("extra = extra || $2::jsonb WHERE id = $1", request_id, json.dumps(dict(values)))
        if request is None:
            raise RequestNotFound(request_id)
        return request

    # -- reading -------------------------------------------------------------------------------------
    async def get(self, request_id: str) -> ApprovalRequest | None:
        found = await self._read("WHERE id = $1", request_id)
        return found[0] if found else None

    async def list(
        self,
        *,
        states: Iterable[RequestState] | None = None,
        limit: int = 100,
        since: float | None = None,
        holder: str | None = None,
    ) -> Requests:
        """At most ``limit`` requests, newest first, filtered by state, ``created_at >= since`` and holder."""
        return await self._read(
            "WHERE ($1::text[] IS NULL OR state = ANY($1)) AND ($2::double precision IS NULL OR created_at >= $2) "
            "AND ($3::text IS NULL OR holder = $3) ORDER BY created_at DESC, id DESC LIMIT $4",
            None if states is None else [RequestState(state).value for state in states],
            since,
            holder,
            limit,
        )

    async def find_approved(self, statement_digest: str, requester: Identity, now: float) -> ApprovalRequest | None:
        """An approved request of ``requester`` (same issuer and subject) for this digest, unused and before its
        ``expires_at``; the latest decided. :meth:`consume` is what makes the approval single-use."""
        return await self._by_digest("state = 'approved' AND consumed_at IS NULL", statement_digest, requester, now)

    async def find_pending(self, statement_digest: str, requester: Identity, now: float) -> ApprovalRequest | None:
        """A pending request of ``requester`` (same issuer and subject) for this digest before its ``expires_at``."""
        return await self._by_digest("state = 'pending'", statement_digest, requester, now)

    async def _by_digest(self, state: str, digest: str, requester: Identity, now: float) -> ApprovalRequest | None:
        found = await self._read(
            f"WHERE statement_digest = $1 AND {state} AND requester_issuer = $2 AND requester_subject = $3 AND "
            "$4 < expires_at ORDER BY decided_at DESC NULLS LAST, created_at DESC, id LIMIT 1",
            digest, requester.issuer, requester.subject, now)  # fmt: skip
        return found[0] if found else None

    # -- notifications -------------------------------------------------------------------------------
    async def listen(
        self,
        callback: Callable[[str], object],
        *,
        on_reconnect: Callable[[], object] | None = None,
        check_interval: float = 30.0,
    ) -> ApprovalListener:
        """LISTEN on a dedicated connection; ``callback(request_id)`` for each committed change.

        Returns once listening. Callbacks run on the event loop and must not block; ``on_reconnect()`` runs
        after each re-established LISTEN (see the module docstring). :meth:`close` stops the listener too.
        """
        listener = ApprovalListener(self._connect, self.channel, callback, on_reconnect, check_interval)
        await listener.start()
        self._listeners.append(listener)
        return listener

    # -- internals -----------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _transaction(self, *, readonly: bool = False) -> AsyncIterator[Conn]:
        if self._pool is None:
            raise RuntimeError(f"approval store (schema {self.schema}) is not open")
        # Readers see one snapshot; writers read committed rows after locking them.
        isolation: Any = "repeatable_read" if readonly else "read_committed"
        async with self._pool.acquire() as conn, conn.transaction(isolation=isolation, readonly=readonly):
            yield conn

    async def _read(self, where: str, *args: object) -> Requests:
        async with self._transaction(readonly=True) as conn:
            return await self._with_votes(conn, await conn.fetch(f"{self._select} {where}", *args))

    async def _update(self, assignments_where: str, *args: object) -> ApprovalRequest | None:
        """``UPDATE … SET <assignments_where> RETURNING …`` with a notification when a row changed."""
        update = f"UPDATE {self._requests} SET {assignments_where} RETURNING {', '.join(tables.REQUEST_COLUMNS)}"  # noqa: S608
        async with self._transaction() as conn:
            row = await conn.fetchrow(update, *args)
            if row is None:
                return None
            await self._notify(conn, row["id"])
            return (await self._with_votes(conn, [row]))[0]

    async def _locked(self, conn: Conn, request_id: str) -> ApprovalRequest:
        rows = await conn.fetch(f"{self._select} WHERE id = $1 FOR UPDATE", request_id)
        if not rows:
            raise RequestNotFound(request_id)
        return (await self._with_votes(conn, rows))[0]

    async def _with_votes(self, conn: Conn, rows: Sequence[asyncpg.Record]) -> Requests:
        votes: dict[str, list[Vote]] = {}
        if rows:
            for vote in await conn.fetch(
                f"SELECT {', '.join(tables.VOTE_COLUMNS)} FROM {self._votes} "  # noqa: S608
                "WHERE request_id = ANY($1::text[]) ORDER BY request_id, seq",
                [row["id"] for row in rows],
            ):
                votes.setdefault(vote["request_id"], []).append(tables.vote_from(vote))
        return [tables.request_from(row, votes.get(row["id"], ())) for row in rows]

    async def _changed(self, conn: Conn, before: ApprovalRequest, after: ApprovalRequest) -> None:
        """Write ``after``'s state if it changed; notify if anything did (the model returns ``before`` if not)."""
        if after is before:
            return
        if (after.state, after.decided_at) != (before.state, before.decided_at):
            await conn.execute(
                f"UPDATE {self._requests} SET state = $2, decided_at = $3 WHERE id = $1",  # noqa: S608
                after.id, after.state.value, after.decided_at,
            )  # fmt: skip
        await self._notify(conn, after.id)

    async def _notify(self, conn: Conn, request_id: str) -> None:
        await conn.execute("SELECT pg_notify($1, $2)", self.channel, request_id)


class ApprovalListener:
    """One LISTEN kept alive on its own connection (see :meth:`ApprovalStore.listen`)."""

    def __init__(self, connect: ConnectionFactory, channel: str, callback: Callable[[str], object],
                 on_reconnect: Callable[[], object] | None = None, check_interval: float = 30.0) -> None:
        self.channel = channel
        self.reconnections = 0
        self._connect = connect
        self._callback = callback
        self._on_reconnect = on_reconnect
        self._check_interval = check_interval
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def server_pid(self) -> int | None:
        """The backend pid of the listening connection (None while reconnecting)."""
        return None if self._conn is None or self._conn.is_closed() else self._conn.get_server_pid()

    async def start(self) -> None:
        """LISTEN now (errors are raised), then keep listening in the background."""
        await self._establish()
        self._task = asyncio.create_task(self._watch(), name=f"listen {self.channel}")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def _establish(self) -> None:
        self._lost.clear()
        conn = await self._connect()
        try:
            conn.add_termination_listener(self._terminated)
            await conn.add_listener(self.channel, self._notified)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self._check_interval)
            if not self._lost.is_set():
                try:  # quiet for a while: is the connection still there?
                    if self._conn is not None and await self._conn.fetchval("SELECT 1", timeout=self._check_interval):
                        continue
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                    pass
            conn, self._conn = self._conn, None
            if conn is not None and not conn.is_closed():
                conn.terminate()
            delay = _RETRY_FIRST
            while True:
                await asyncio.sleep(delay)
                try:
                    await self._establish()
                    break
                except Exception as exc:  # whatever the factory raises: keep trying
                    log.warning("approvals listener on %s: reconnecting failed: %s", self.channel, exc)
                    delay = min(delay * 2, _RETRY_LIMIT)
            self.reconnections += 1
            if self._on_reconnect is not None:
                self._guarded(self._on_reconnect)

    def _terminated(self, conn: Any) -> None:
        if conn is self._conn:
            self._lost.set()

    def _notified(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        self._guarded(lambda: self._callback(str(payload)))

    def _guarded(self, call: Callable[[], object]) -> None:
        try:
            call()
        except Exception:
            log.exception("approvals listener on %s: callback failed", self.channel)


def _insert(table: str, columns: Sequence[str]) -> str:
    values = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values})"  # noqa: S608
