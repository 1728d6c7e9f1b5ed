"""How the server will read the client's text: the session's encoding and string syntax, kept current.

The gate must decode statement text exactly as the server will parse it. The server reports its
``client_encoding``, ``server_encoding`` and ``standard_conforming_strings`` in ParameterStatus messages
at login and whenever they change; :class:`TextReading` follows them. A change pgproxy cannot follow
(an encoding whose multibyte characters hide ASCII bytes, backslash escapes in ordinary strings) ends
the session with :class:`GateFatal`, since every later statement would be judged on a misreading.

Pure, no I/O. It must not judge statements; ``session`` does.
"""

from __future__ import annotations

from pgproxy.gate.barrier import check_string_syntax
from pgproxy.gate.encoding import UnsupportedEncoding, python_codec

_FOLLOWED = (b"client_encoding", b"server_encoding", b"standard_conforming_strings")


class GateFatal(Exception):
    """The session cannot continue safely (e.g. the client switched to an encoding pgproxy cannot read)."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


class TextReading:
    """The codec that reads this session's client text, as the server's ParameterStatus says."""

    __slots__ = ("codec", "server_encoding")

    def __init__(self, client_encoding: str, server_encoding: str, standard_conforming_strings: str) -> None:
        """Raises :class:`UnsupportedEncoding` or :class:`GateFatal` when the session cannot be read."""
        check_strings(standard_conforming_strings)
        self.server_encoding = server_encoding
        self.codec = python_codec(client_encoding, server_encoding)

    def parameter_status(self, data: bytes, start: int, end: int) -> None:
        """Follow one ParameterStatus payload (``data[start:end]``)."""
        name_end = data.find(b"\x00", start, end)
        name = data[start:name_end]
        if name not in _FOLLOWED:
            return
        value = data[name_end + 1 : end - 1].decode("ascii", "replace")
        if name == b"standard_conforming_strings":
            check_strings(value)
        elif name == b"server_encoding":
            self.server_encoding = value
        else:
            try:
                self.codec = python_codec(value, self.server_encoding)
            except UnsupportedEncoding as exc:
                raise GateFatal("0A000", str(exc)) from exc


def check_strings(standard_conforming_strings: str) -> None:
    """Raise :class:`GateFatal` unless ordinary strings are standard (no backslash escapes)."""
    problem = check_string_syntax(standard_conforming_strings)
    if problem is not None:
        raise GateFatal("0A000", problem)
