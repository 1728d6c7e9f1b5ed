"""How a refused request is answered: in the server's place in the pipeline, by the server itself.

A denied message is not dropped: pgproxy forwards a *stand-in* that the server is certain to reject
without side effects (an unparseable query, a Bind to a statement that cannot exist), then replaces
the server's error with pgproxy's. So the error arrives exactly where the server would have put one:
after the results of everything pipelined before it, in the right transaction state (an error inside
a transaction block aborts it, as the client expects), and the server skips the rest of an extended
batch up to Sync on its own. If the server skips the stand-in (an earlier error in the same batch),
the client sees only that earlier error — again what the server would have done.

Each stand-in carries a random marker; only an error naming a pending marker is replaced. Pure: the
caller forwards the bytes. The client's own SQL is never rewritten.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from pgproxy.policy.engine import Decision, Effect
from pgproxy.sql.statement import Category, Statement
from pgproxy.wire.codec import cstring, frame

DENIED_SQLSTATE = "42501"  # insufficient_privilege
OUTAGE_SQLSTATE = "58000"  # system_error: something outside the database (pgproxy's audit store) failed
OUTAGE_RULE = "pgproxy:audit-unavailable"


CATALOG_OUTAGE_RULE = "pgproxy:masking-catalog"  # masking cannot read the catalog: nothing reading tables runs


def outage_decision() -> Decision:
    """Every request is refused while the audit log cannot take records (fail closed)."""
    return Decision(
        Effect.DENY,
        OUTAGE_RULE,
        "pgproxy cannot write its audit log, so it runs no statement",
        "retry shortly; pgproxy resumes once its audit store accepts records again",
        None,
        False,
        Statement(Category.UNKNOWN, "?", reason="the audit store is unavailable"),
    )


def new_marker() -> str:
    # Lower case and unquoted: the server echoes it unchanged in its error message.
    return f"pgproxy_denied_{secrets.token_hex(8)}"


def query_stand_in(marker: str) -> bytes:
    """Replaces a Query or FunctionCall: a syntax error, answered by ErrorResponse + ReadyForQuery."""
    return frame(b"Q", cstring(marker))


def parse_stand_in(statement_name: bytes, marker: str) -> bytes:
    """Replaces a Parse, under the client's statement name: fails like the client's Parse would."""
    return frame(b"P", statement_name + b"\x00" + cstring(marker) + b"\x00\x00")


def bind_stand_in(portal_name: bytes, marker: str) -> bytes:
    """Replaces a Bind: binds to a statement that cannot exist."""
    # portal, statement, 0 parameter formats, 0 parameters, 0 result formats
    return frame(b"B", portal_name + b"\x00" + cstring(marker) + b"\x00\x00\x00\x00\x00\x00")


def error_response(sqlstate: str, message: str, *, detail: str | None, hint: str | None, codec: str) -> bytes:
    """An ERROR-severity ErrorResponse with text in the client's encoding."""
    fields = [("S", "ERROR"), ("V", "ERROR"), ("C", sqlstate), ("M", message)]
    if detail:
        fields.append(("D", detail))
    if hint:
        fields.append(("H", hint))
    body = b"".join(
        code.encode("ascii") + value.replace("\x00", " ").encode(codec, "replace") + b"\x00" for code, value in fields
    )
    return frame(b"E", body + b"\x00")


def decision_error(decision: Decision, codec: str) -> bytes:
    """The ErrorResponse a client gets for a denied (or, for now, held) request."""
    statement = decision.statement
    message = decision.reason
    if decision.rule_id not in message:
        message += f" (rule {decision.rule_id})"
    hint = decision.hint
    if decision.effect is Effect.REQUIRE_APPROVAL:
        message = f"approval required: {message}"
        # Until statements can be held for approval, the caller needs someone who may run it directly.
        needed = decision.approval.describe() if decision.approval is not None else "an approval"
        hint = f"this statement needs {needed}; pgproxy cannot hold it for approval yet, so it was not run"
    if decision.rule_id in (OUTAGE_RULE, CATALOG_OUTAGE_RULE):
        return error_response(OUTAGE_SQLSTATE, message, detail=None, hint=hint, codec=codec)
    detail = f"pgproxy policy: {decision.effect.value} by rule {decision.rule_id}; category {statement.category.value}"
    if statement.refusal:
        detail += f"; {statement.refusal}"
    return error_response(DENIED_SQLSTATE, message, detail=detail, hint=hint, codec=codec)


class StandIns:
    """The stand-ins of one session still unanswered: marker → the ErrorResponse to send instead."""

    __slots__ = ("errors",)

    def __init__(self) -> None:
        self.errors: dict[bytes, bytes] = {}

    def add(self, error: bytes, build: Callable[[str], bytes]) -> bytes:
        """The stand-in message ``build`` makes for a new marker; its server error becomes ``error``."""
        marker = new_marker()
        self.errors[marker.encode("ascii")] = error
        return build(marker)

    def replacement(self, error_payload: bytes) -> bytes | None:
        """pgproxy's ErrorResponse for a server error that names a pending marker (then forgotten)."""
        if not self.errors:
            return None
        for marker in self.errors:
            if marker in error_payload:
                return self.errors.pop(marker)
        return None

    def clear(self) -> None:
        self.errors.clear()
