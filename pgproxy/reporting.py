"""What a ``pgproxy`` subcommand produces: the text to print and the exit code.

The command modules (``policy.tooling``, ``audit.tooling``, ``approvals.cli``) return a :class:`Report`
and leave printing and exiting to ``pgproxy.cli``. Pure: nothing here prints or exits.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Report:
    text: str
    exit_code: int
