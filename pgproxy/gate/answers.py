"""Following the server's answers for one session's gate: the bookkeeping each answer settles, and the
bytes the client gets instead (pgproxy's errors for stand-ins, masked rows and COPY data, withheld error
texts).

Prepared-statement names, the audit trail's outcomes, the settings barrier, row limits and result
masking all follow the same messages; this function dispatches each message once, in order. Sans-IO.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pgproxy.gate.limits import LimitExceeded
from pgproxy.gate.reading import GateFatal
from pgproxy.gate.splice import Splice
from pgproxy.gate.trail import error_fields
from pgproxy.wire.framing import Frame

if TYPE_CHECKING:
    from pgproxy.gate.session import SessionGate

log = logging.getLogger(__name__)
_UNMASKABLE = "pgproxy could not mask a result and ended the session rather than send it unmasked"
_ENDINGS = {0x49: "empty query", 0x73: "portal suspended: more rows remain", 0x56: "function call returned"}


def follow_answers(gate: SessionGate, data: bytes, frames: Sequence[Frame]) -> bytes:
    """The bytes for the client for the server's complete messages ``frames`` of ``data``.

    Raises :class:`LimitExceeded` when a row goes over the session's limits.
    """
    prepared = gate.prepared
    splice: Splice | None = None
    followed = gate.followed
    limits = gate.limits
    results = gate.masking.results if gate.masking is not None else None
    for kind, start, end in frames:
        if kind not in followed:
            continue
        if limits is not None:
            reason = limits.over(kind)
            if reason is not None:
                allowed = splice.until(start - 5) if splice is not None else data[: start - 5]
                raise LimitExceeded(allowed, "54000", f"pgproxy ended the session: {reason}")
        masked = None
        if results is not None:
            if kind == 0x44 and results.maskers is None:
                continue  # a row of a result set with no masked column: relayed as it is
            try:
                masked = results.server_message(kind, data, start, end)
            except Exception as exc:  # MaskingError (a row or COPY chunk it could not take apart), or a bug
                log.exception("could not mask a result")
                raise GateFatal("XX000", _UNMASKABLE) from exc
            if masked is not None and kind != 0x45:
                if splice is None:
                    splice = Splice(data)
                splice.swap(start - 5, end, masked)
                continue
        if kind == 0x31:  # '1' ParseComplete
            prepared.parse_complete()
        elif kind == 0x43:  # 'C' CommandComplete
            prepared.command_complete()
            if gate.trail is not None:
                gate.trail.completed(data[start : end - 1].decode("ascii", "replace"))
        elif kind == 0x5A:  # 'Z' ReadyForQuery
            prepared.ready()
            if gate.trail is not None:
                gate.trail.ready()
            gate.barrier.ready()
            if gate.masking is not None:
                gate.masking.ready(chr(data[start]))
            if prepared.idle:
                gate.stand_ins.clear()  # every stand-in has been answered or skipped
        elif kind == 0x45:  # 'E' ErrorResponse
            prepared.error()
            replacement = gate.stand_ins.replacement(data[start:end]) or masked
            if replacement is not None:
                if splice is None:
                    splice = Splice(data)
                splice.swap(start - 5, end, replacement)
            if gate.trail is not None:
                body = data[start:end] if replacement is None else replacement[5:]
                gate.trail.failed(*error_fields(body, gate.reading.codec))
        elif kind == 0x33:  # '3' CloseComplete
            prepared.close_complete()
        elif kind in (0x49, 0x73):  # 'I' EmptyQueryResponse, 's' PortalSuspended
            prepared.execute_finished_without_command()
            if gate.trail is not None:
                gate.trail.ended_without_command(_ENDINGS[kind])
        elif kind == 0x56:  # 'V' FunctionCallResponse (followed only when auditing)
            assert gate.trail is not None
            gate.trail.ended_without_command(_ENDINGS[kind])
        elif kind == 0x47:  # 'G' CopyInResponse
            prepared.copy_in_started()
        elif kind == 0x53:  # 'S' ParameterStatus
            gate.reading.parameter_status(data, start, end)
            if results is not None:
                results.client_codec(gate.reading.codec)  # SET client_encoding: masked text follows it
    return data if splice is None else splice.until(len(data))
