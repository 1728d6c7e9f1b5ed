"""The live policy set: loaded at start, replaced atomically on reload, never by a broken one.

Sessions read ``current`` for every decision they have not cached and watch ``version`` to drop
their caches when the set changes. A reload (SIGHUP, or a change seen on disk) loads the whole
directory into a new set first and swaps the reference only if every file is valid; otherwise the
running set stays and the problems are logged with file, line and field. This module reads files
(through ``loader``) but knows nothing of signals or event loops: the composition root schedules it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pgproxy.policy.loader import PolicyLoadError, load_policy_dir
from pgproxy.policy.model import PolicySet

log = logging.getLogger(__name__)

# What identifies the directory's content cheaply: every policy file's name, size and mtime.
Fingerprint = tuple[tuple[str, int, int], ...]


class PolicyStore:
    """Holds the policy set in force. ``PolicyLoadError`` from the constructor means: do not start."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fingerprint = self._scan()
        self._current = load_policy_dir(directory)
        self._version = 1
        self.last_error: str | None = None

    @property
    def current(self) -> PolicySet:
        return self._current

    @property
    def version(self) -> int:
        return self._version

    def reload(self) -> bool:
        """Load the directory again; True when the new set is now in force."""
        fingerprint = self._scan()
        try:
            policy_set = load_policy_dir(self.directory)
        except PolicyLoadError as exc:
            self._fingerprint = fingerprint  # do not retry the same broken files on every poll
            self.last_error = str(exc)
            log.error("policy reload failed; the previous policies stay in force:\n%s", exc)
            return False
        self._fingerprint = fingerprint
        self._current = policy_set
        self._version += 1
        self.last_error = None
        log.info("policies reloaded from %s (version %d)", self.directory, self._version)
        return True

    def reload_if_changed(self) -> bool:
        """Reload when a policy file was added, removed or modified since the last load."""
        if self._scan() == self._fingerprint:
            return False
        return self.reload()

    def _scan(self) -> Fingerprint:
        entries: list[tuple[str, int, int]] = []
        try:
            with os.scandir(self.directory) as listing:
                for entry in listing:
                    if entry.name.endswith((".yaml", ".yml")) and entry.is_file():
                        info = entry.stat()
                        entries.append((entry.name, info.st_size, info.st_mtime_ns))
        except OSError:
            return ()
        return tuple(sorted(entries))
