"""Map the cancel keys pgproxy hands to clients onto the upstream backends behind them.

Each client gets BackendKeyData with the upstream backend's process id (so it agrees with
``pg_backend_pid()`` and with the pid in NotificationResponse) but a secret minted by pgproxy: the
upstream secret never leaves pgproxy, and a client can only cancel its own statements. The
registry is in-memory per process. It performs no I/O; ``pgproxy.server.upstream.send_cancel`` does.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from pgproxy.dsn import UpstreamTarget


@dataclass(frozen=True, slots=True)
class UpstreamKey:
    target: UpstreamTarget
    process_id: int
    secret_key: bytes
    # Also told of a cancel: stops a statement pgproxy itself holds (waiting for approval).
    on_cancel: Callable[[], None] | None = field(default=None, compare=False)


class CancelRegistry:
    def __init__(self) -> None:
        self._entries: dict[int, tuple[bytes, UpstreamKey]] = {}

    def register(self, upstream: UpstreamKey) -> tuple[int, bytes]:
        """Issue the client's (process id, secret) for an upstream backend and remember it."""
        secret = secrets.token_bytes(4)
        self._entries[upstream.process_id] = (secret, upstream)
        return upstream.process_id, secret

    def unregister(self, process_id: int) -> None:
        self._entries.pop(process_id, None)

    def resolve(self, process_id: int, secret_key: bytes) -> UpstreamKey | None:
        """The upstream backend for a cancel request, or None (unknown id or wrong secret)."""
        entry = self._entries.get(process_id)
        if entry is None or not hmac.compare_digest(entry[0], secret_key):
            return None
        return entry[1]

    def __len__(self) -> int:
        return len(self._entries)
