"""Map the cancel keys pgproxy hands to clients onto the upstream backends behind them.

Each client session gets its own BackendKeyData from pgproxy (never the upstream's), so a client
can only cancel its own statement and never learns upstream backend ids. The registry is
in-memory per process. It performs no I/O; ``pgproxy.server.upstream.send_cancel`` does.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from pgproxy.dsn import UpstreamTarget

_MAX_PROCESS_ID = 2**31 - 1


@dataclass(frozen=True, slots=True)
class UpstreamKey:
    target: UpstreamTarget
    process_id: int
    secret_key: bytes


class CancelRegistry:
    def __init__(self) -> None:
        self._entries: dict[int, tuple[bytes, UpstreamKey]] = {}

    def register(self, upstream: UpstreamKey) -> tuple[int, bytes]:
        """Issue a fresh (process id, secret) for a client and remember where it points."""
        while True:
            process_id = secrets.randbelow(_MAX_PROCESS_ID) + 1
            if process_id not in self._entries:
                break
        secret = secrets.token_bytes(4)
        self._entries[process_id] = (secret, upstream)
        return process_id, secret

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
