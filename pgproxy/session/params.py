"""Which client startup parameters pgproxy passes upstream, and how it stamps application_name.

A startup parameter is a GUC set before the first statement, so it is a way around statement-level
policy (``options=-c role=admin``, ``search_path``, ``default_transaction_read_only``). Only settings
that change presentation or timeouts pass; anything else refuses the connection with a reason.
``pgproxy.approval`` (``wait``, the default, or ``return``) is pgproxy's own: how a statement that needs
approval is answered in this session (see docs/approvals.md); it is never passed upstream.
Pure functions: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

# Settings that only affect how values are presented or how long things may take.
PASSABLE_SETTINGS = frozenset(
    {
        "client_encoding",
        "datestyle",
        "timezone",
        "intervalstyle",
        "extra_float_digits",
        "bytea_output",
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "idle_session_timeout",
        "application_name",
        "geqo",
        "lc_messages",
        "lc_monetary",
        "lc_numeric",
        "lc_time",
    }
)
# Startup keys that are not settings: handled by the proxy itself.
PROXY_KEYS = frozenset({"user", "database", "options", "replication"})
APPROVAL_SETTING = "pgproxy.approval"
APPROVAL_MODES = ("wait", "return")  # wait for the approvers' verdict, or be refused at once naming the request
APPLICATION_NAME_MAX = 63  # NAMEDATALEN - 1: the server truncates beyond this


class StartupRefused(Exception):
    """The client's startup packet asks for something pgproxy will not pass upstream."""

    def __init__(self, message: str, sqlstate: str = "42501") -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate


@dataclass(frozen=True, slots=True)
class ClientStartup:
    """What a client asked for at startup, after vetting."""

    user: str
    database: str
    settings: tuple[tuple[str, str], ...]  # passable settings, lower-cased names, in client order
    application_name: str | None
    approval_mode: str = "wait"  # one of APPROVAL_MODES


def parse_options(options: str) -> list[tuple[str, str]]:
    """Parse libpq's ``options`` value (``-c name=value`` / ``--name=value``, backslash escapes)."""
    words: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in options:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch.isspace():
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(ch)
    if current:
        words.append("".join(current))
    pairs: list[tuple[str, str]] = []
    index = 0
    while index < len(words):
        word = words[index]
        if word == "-c" and index + 1 < len(words):
            assignment = words[index + 1]
            index += 2
        elif (word.startswith("-c") and len(word) > 2) or word.startswith("--"):
            assignment = word[2:]
            index += 1
        else:
            raise StartupRefused(f"startup option {word!r} is not allowed through pgproxy")
        name, sep, value = assignment.partition("=")
        if not sep:
            raise StartupRefused(f"startup option {assignment!r} has no value")
        pairs.append((name.replace("-", "_"), value))
    return pairs


def vet_startup(parameters: tuple[tuple[str, str], ...]) -> ClientStartup:
    """Split a StartupMessage's parameters into identity hints and settings that may pass."""
    given = dict(parameters)
    if "replication" in given and given["replication"].lower() not in ("false", "off", "no", "0"):
        raise StartupRefused("replication connections are not allowed through pgproxy")
    user = given.get("user", "")
    if not user:
        raise StartupRefused('no PostgreSQL user name specified in startup packet', "28000")
    database = given.get("database") or user
    settings: list[tuple[str, str]] = []
    for name, value in parameters:
        if name in PROXY_KEYS or name.startswith("_pq_."):
            continue
        settings.append((name, value))
    if given.get("options"):
        settings.extend(parse_options(given["options"]))
    vetted: list[tuple[str, str]] = []
    application_name = None
    approval_mode = "wait"
    for name, value in settings:
        key = name.lower()
        if key == APPROVAL_SETTING:
            approval_mode = value.strip().lower()
            if approval_mode not in APPROVAL_MODES:
                raise StartupRefused(
                    f"invalid value for {APPROVAL_SETTING}: {value!r} (use 'wait' or 'return')", "22023"
                )
            continue
        if key not in PASSABLE_SETTINGS:
            raise StartupRefused(
                f"startup parameter {name!r} is not allowed through pgproxy; "
                "set it with a statement after connecting, where policy can see it"
            )
        if key == "application_name":
            application_name = value
        else:
            vetted.append((key, value))
    return ClientStartup(user, database, tuple(vetted), application_name, approval_mode)


def stamped_application_name(identity_display: str, client_application: str | None) -> str:
    """``agent-x via pgproxy (psql)`` so pg_stat_activity shows who is behind each connection.

    The server keeps 63 bytes. The client's own name is cut first, then the identity, so that
    " via pgproxy" always survives and marks the session as proxied.
    """
    marker = " via pgproxy"
    room = APPLICATION_NAME_MAX - len(marker.encode())
    identity = identity_display.encode()[:room].decode(errors="ignore")
    stamp = f"{identity}{marker}"
    if client_application:
        stamp = f"{stamp} ({client_application})"
    return stamp.encode()[:APPLICATION_NAME_MAX].decode(errors="ignore")
