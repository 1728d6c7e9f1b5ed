"""Running a driver probe as a child process (JDBC, node-postgres) and reading pgproxy's view of it."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

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


def side_by_side(
    start_direct: Callable[[], subprocess.Popen[bytes]],
    start_proxied: Callable[[], subprocess.Popen[bytes]],
    proxy: RunningProxy,
    subject: str,
    scenario: str,
) -> tuple[list[str], list[tuple[int, str]] | None]:
    """Run a probe scenario directly and through pgproxy at once; the proxied run's output lines (checked
    equal to the direct run's) and pgproxy's relay state for the proxied session while the probe holds it
    open after its last answer (None if it exited early)."""
    direct_run = start_direct()
    try:
        proxied_run = start_proxied()
    except BaseException:
        direct_run.kill()
        direct_run.communicate()
        raise
    proxied_stderr, held = b"", None
    try:
        try:
            proxied_stderr = until_holding(proxied_run)
            # After the driver has had every answer, pgproxy must see the session idle: nothing awaiting a
            # ReadyForQuery (or shutdown and token expiry would never find a moment to end it), no transaction.
            held = relay_states(proxy, subject) if proxied_run.poll() is None else None
        finally:
            proxied = finish(proxied_run, f"{scenario} through pgproxy", proxied_stderr)
    finally:
        direct = finish(direct_run, f"{scenario} direct")
    assert proxied.splitlines() == direct.splitlines()
    return proxied.splitlines(), held
