"""Process helpers: commands as the service user, background services, free ports and /proc CPU time.

When the benchmark runs as root, PostgreSQL and pgbouncer refuse to start, so they are run as the
``postgres`` OS user through ``runuser -u postgres --``. Clients (pgbench, psql) and pgproxy run as the
invoking user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from benchkit import BenchError

SERVICE_USER = "postgres"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def is_root() -> bool:
    """True when this process has root privileges."""
    return os.geteuid() == 0


def service_prefix() -> list[str]:
    """The argv prefix that runs a server program as the service user (empty unless we are root)."""
    if not is_root():
        return []
    return ["runuser", "-u", SERVICE_USER, "--"]


def check_service_user() -> None:
    """Fail early when we are root but cannot switch to the ``postgres`` OS user."""
    if not is_root():
        return
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError as exc:
        raise BenchError(
            f"running as root needs an OS user {SERVICE_USER!r} (apt-get install postgresql)"
        ) from exc
    if shutil.which("runuser") is None:
        raise BenchError("running as root needs runuser(1) from util-linux")


def make_owned_by_service_user(path: Path) -> None:
    """Hand ``path`` to the service user when we are root, so PostgreSQL and pgbouncer can write there."""
    if is_root():
        entry = pwd.getpwnam(SERVICE_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_checked(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None, timeout: float | None = None
) -> str:
    """Run a command to completion and return its stdout; raise ``BenchError`` with its output on failure.

    If we are interrupted (Ctrl-C, SIGTERM) or time out meanwhile, the command and everything it started
    (runuser's child, pg_ctl's postmaster) are terminated before the exception propagates.
    """
    try:
        proc = subprocess.Popen(
            list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    except FileNotFoundError as exc:
        raise BenchError(f"command not found: {argv[0]}") from exc
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        terminate_tree(proc, group=False)
        raise BenchError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
    except BaseException:
        terminate_tree(proc, group=False)
        raise
    if proc.returncode != 0:
        raise BenchError(
            f"command failed (exit {proc.returncode}): {' '.join(argv)}\n{stdout}{stderr}".rstrip()
        )
    return stdout


def terminate_tree(proc: subprocess.Popen[Any], *, group: bool, timeout: float = 10.0) -> None:
    """SIGTERM ``proc`` and its descendants (and its process group if it leads one); SIGKILL whatever is
    still alive ``timeout`` seconds later."""
    pids = [proc.pid, *descendants(proc.pid)]
    leader = proc.pid if group else None
    _signal_all(leader, pids, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _signal_all(leader, pids, signal.SIGKILL)
        proc.wait(timeout)
    survivors = _wait_gone(pids[1:], deadline)
    _signal_all(None, survivors, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _wait_gone(pids: Sequence[int], deadline: float) -> list[int]:
    """Poll until every pid has exited or ``deadline`` passes; return the ones still alive."""
    alive = [pid for pid in pids if _alive(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if _alive(pid)]
    return alive


def wait_for_port(port: int, *, timeout: float, alive: Service | None = None) -> None:
    """Wait until 127.0.0.1:``port`` accepts TCP connections, failing fast if ``alive`` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None:
            alive.check_running()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)
    tail = f"\n{alive.log_tail()}" if alive is not None else ""
    raise BenchError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f}s{tail}")


@dataclass
class Service:
    """A long-running background program (pgbouncer, pgproxy) with its log file and process tree."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    def check_running(self) -> None:
        """Raise ``BenchError`` with the end of the log if the program has exited."""
        code = self.proc.poll()
        if code is not None:
            raise BenchError(f"{self.name} exited with status {code}\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines the program wrote."""
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"({self.name} log unavailable)"
        return "\n".join(f"  {self.name}| {line}" for line in text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        """User+system CPU time of the program and every process below it (workers, runuser's child)."""
        return tree_cpu_seconds(self.proc.pid)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the program and its descendants: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        try:
            terminate_tree(self.proc, group=True, timeout=timeout)
        finally:
            self._log.close()


def start_service(
    name: str, argv: Sequence[str], *, cwd: Path, log_path: Path, env: Mapping[str, str]
) -> Service:
    """Start ``argv`` in its own session (so Ctrl-C reaches only us), stdout+stderr going to ``log_path``."""
    log = log_path.open("ab")
    try:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        log.close()
        raise BenchError(f"cannot start {name}: {exc}") from exc
    return Service(name=name, proc=proc, log_path=log_path, _log=log)


def _signal_all(group: int | None, pids: Sequence[int], sig: signal.Signals) -> None:
    """Send ``sig`` to a process group (if given) and to each pid, ignoring ones already gone."""
    if group is not None:
        with contextlib.suppress(OSError):
            os.killpg(group, sig)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def _read_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, CPU ticks including reaped children) from /proc/PID/stat, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the ")" closing the command name start at field 3 (state); see proc(5).
    fields = text[text.rindex(")") + 2 :].split()
    ppid = int(fields[1])
    utime_stime_cutime_cstime = fields[11:15]
    return ppid, sum(int(value) for value in utime_stime_cutime_cstime)


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, CPU ticks) for every process visible in /proc."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _read_stat(int(entry.name))
            if stat is not None:
                table[int(entry.name)] = stat
    return table


def _tree(root: int, table: Mapping[int, tuple[int, int]]) -> list[int]:
    """``root`` (if alive) and all its live descendants."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _ticks) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    pending = [root] if root in table else []
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, []))
    return found


def descendants(root: int) -> list[int]:
    """Live descendants of ``root``, not including ``root`` itself."""
    return [pid for pid in _tree(root, _process_table()) if pid != root]


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user+system, plus reaped children) used so far by ``root`` and its live descendants."""
    table = _process_table()
    ticks = sum(table[pid][1] for pid in _tree(root, table))
    return ticks / _CLK_TCK
