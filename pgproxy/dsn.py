"""Parse the upstream connection string (libpq URI or keyword/value form) into a typed target.

Pure: no I/O, no DNS. Only the options pgproxy's upstream dialer understands are accepted; an
unknown option is an error rather than something silently ignored.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_KNOWN = frozenset(
    {"host", "port", "user", "password", "dbname", "sslmode", "sslrootcert", "sslcert", "sslkey",
     "connect_timeout"}
)
_KEYWORD_PAIR = re.compile(r"\s*(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)")


class DSNError(ValueError):
    """The connection string is malformed or names an option pgproxy does not support."""


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    host: str  # a hostname/IP, or a directory holding the server's Unix socket
    port: int
    user: str
    password: str | None
    database: str | None
    sslmode: str
    sslrootcert: str | None
    sslcert: str | None
    sslkey: str | None
    connect_timeout: float

    @property
    def is_unix_socket(self) -> bool:
        return self.host.startswith("/")

    @property
    def unix_socket_path(self) -> str:
        return f"{self.host}/.s.PGSQL.{self.port}"

    def describe(self) -> str:
        """Where we connect, without the password: safe for logs and errors."""
        where = self.unix_socket_path if self.is_unix_socket else f"{self.host}:{self.port}"
        return f"{self.user}@{where}"


def parse_dsn(dsn: str) -> UpstreamTarget:
    options = _parse_uri(dsn) if dsn.startswith(("postgresql://", "postgres://")) else _parse_keywords(dsn)
    unknown = set(options) - _KNOWN
    if unknown:
        raise DSNError(f"unsupported connection option(s): {', '.join(sorted(unknown))}")
    sslmode = options.get("sslmode", "prefer")
    if sslmode not in SSL_MODES:
        raise DSNError(f"invalid sslmode {sslmode!r}; expected one of {', '.join(SSL_MODES)}")
    user = options.get("user")
    if not user:
        raise DSNError("the upstream connection string must name a user")
    host = options.get("host") or "localhost"
    if "," in host:
        raise DSNError("multiple upstream hosts are not supported")
    try:
        port = int(options.get("port") or 5432)
        timeout = float(options.get("connect_timeout") or 10)
    except ValueError as exc:
        raise DSNError(f"invalid number in connection string: {exc}") from exc
    if not 0 < port < 65536:
        raise DSNError(f"invalid port {port}")
    return UpstreamTarget(
        host=host,
        port=port,
        user=user,
        password=options.get("password"),
        database=options.get("dbname") or None,
        sslmode=sslmode,
        sslrootcert=options.get("sslrootcert"),
        sslcert=options.get("sslcert"),
        sslkey=options.get("sslkey"),
        connect_timeout=timeout,
    )


def _parse_uri(dsn: str) -> dict[str, str]:
    try:
        parts = urlsplit(dsn)
        port = parts.port
    except ValueError as exc:
        raise DSNError(f"malformed connection URI: {exc}") from exc
    options: dict[str, str] = {}
    if parts.username:
        options["user"] = unquote(parts.username)
    if parts.password is not None:
        options["password"] = unquote(parts.password)
    # parts.hostname lower-cases, which would corrupt a percent-encoded socket directory.
    host_info = parts.netloc.rpartition("@")[2]
    host = host_info[1 : host_info.find("]")] if host_info.startswith("[") else host_info.partition(":")[0]
    if host:
        options["host"] = unquote(host)
    if port is not None:
        options["port"] = str(port)
    database = unquote(parts.path.lstrip("/"))
    if database:
        options["dbname"] = database
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        options[key] = value
    return options


def _parse_keywords(dsn: str) -> dict[str, str]:
    options: dict[str, str] = {}
    position = 0
    text = dsn.strip()
    while position < len(text):
        match = _KEYWORD_PAIR.match(text, position)
        if not match or match.end() == position:
            raise DSNError(f"malformed connection string near {text[position:position + 20]!r}")
        key, value = match.group(1), match.group(2)
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        options[key] = value
        position = match.end()
        while position < len(text) and text[position].isspace():
            position += 1
    return options


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine: ``localhost`` or a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
