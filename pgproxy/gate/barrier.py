"""The settings barrier: no statement text is judged while the server may be reading text differently.

pgproxy parses with ``standard_conforming_strings = on`` and decodes with the session's
``client_encoding``. A statement that can change those settings (SET or set_config, and any code
pgproxy cannot see: DO, CALL, functions) takes effect on the server before the *next* message is
read, but pgproxy learns the outcome only from the ParameterStatus sent before its ReadyForQuery.
So after such a statement, text is held until that ReadyForQuery arrives (the gate then ends the
session if the reading changed). Inside an extended batch the ReadyForQuery comes only after the
client's Sync, which the held text would block, so text there is refused instead. Pure.
"""

from __future__ import annotations

from pgproxy.policy.engine import Decision, Effect
from pgproxy.sql.settings import READING_SETTINGS
from pgproxy.sql.statement import Category, Statement

# Statements that can change settings: SET/RESET/set_config (privilege), and code pgproxy cannot see.
_MAY_CHANGE_SETTINGS = frozenset({Category.PRIVILEGE, Category.PROCEDURAL, Category.UNKNOWN})


def changes_reading(statement: Statement) -> bool:
    return statement.category in _MAY_CHANGE_SETTINGS or statement.setting in READING_SETTINGS


class SettingsBarrier:
    """Counts ReadyForQuery answers against the request that raised the barrier."""

    __slots__ = ("_answered", "_batch_open", "until")

    def __init__(self) -> None:
        self.until: int | None = None  # ReadyForQuery answers to wait for; None: no barrier (read directly)
        self._batch_open = False  # raised inside an extended batch whose Sync has not been sent
        self._answered = 0

    @property
    def refuses(self) -> bool:
        """Text now must be refused (same batch) rather than held."""
        return self._batch_open

    def after_query(self, statements: tuple[Statement, ...], boundaries: int) -> None:
        """A Query went upstream; ``boundaries`` counts it."""
        if any(changes_reading(statement) for statement in statements):
            self.until = boundaries

    def after_execute(self, statement: Statement | None, boundaries: int) -> None:
        if statement is not None and changes_reading(statement):
            self.until = boundaries + 1  # answered at the batch's Sync
            self._batch_open = True

    def after_sync(self) -> None:
        self._batch_open = False

    def ready(self) -> None:
        """The server sent ReadyForQuery (after any ParameterStatus of the statement)."""
        self._answered += 1
        if self.until is not None and not self._batch_open and self._answered >= self.until:
            self.until = None


def barrier_decision() -> Decision:
    return Decision(
        Effect.DENY,
        "pgproxy:settings-barrier",
        "a statement that may change settings ran earlier in this batch, and pgproxy judges statement text"
        " only once the server has answered it",
        "send Sync after a statement that changes settings (SET, set_config, DO, CALL …), then the next one",
        None,
        False,
        Statement(Category.UNKNOWN, "?", reason="sent behind a statement that may change settings"),
    )


def check_string_syntax(standard_conforming_strings: str) -> str | None:
    """Why the session cannot be judged with this setting, or None."""
    # With it off the server reads '…\\'…' otherwise than pglast, so the two would split statements differently.
    if standard_conforming_strings.strip().lower() != "on":
        return "pgproxy requires standard_conforming_strings = on on the database server"
    return None
