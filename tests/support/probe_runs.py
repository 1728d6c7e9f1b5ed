"""Running a driver probe as a child process (JDBC, node-postgres) and reading pgproxy's view of it."""

from __future__ import annotations

import subprocess

from tests.support.proxy_plugin import RunningProxy


def until_holding(run: subprocess.Popen[bytes]) -> bytes:
    """Read a held run's stderr up to its "holding" line; what came before it (all of it if the run failed)."""
    assert run.stderr is not None
    before = b""
    while line := run.stderr.readline():
        if line == b"holding\n":
            break
        before += line
    return before


def finish(run: subprocess.Popen[bytes], what: str, stderr_before: bytes = b"") -> str:
    """Let a (held) run go on and end; its stdout, or a failure with its stderr unless it exited 0."""
    try:
        stdout, stderr = run.communicate(b"go\n" if run.stdin else None, timeout=90)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    text = stdout.decode()
    assert run.returncode == 0, f"{what} failed:\n{(stderr_before + stderr).decode(errors='replace')}\n" \
                                f"--- stdout:\n{text}"
    return text


def relay_states(proxy: RunningProxy, subject: str) -> list[tuple[int, str]]:
    """(requests awaiting ReadyForQuery, transaction status) of each relayed session of token ``subject``."""

    def read() -> list[tuple[int, str]]:
        return [(c.relay.awaiting_ready, c.relay.transaction_status) for c in proxy.server.connections
                if c.identity is not None and c.identity.subject == subject and c.relay is not None]

    return proxy.call_soon(read)
