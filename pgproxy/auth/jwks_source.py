"""Load OIDC discovery and JWKS documents: over https (http only from a loopback host) or from a file.

Blocking functions, meant to run in a worker thread (``asyncio.to_thread``). They bound what they read,
follow redirects only to URLs that pass the same check, and report every failure as
``JWKSUnavailable``. They never see tokens.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPMessage
from pathlib import Path
from typing import IO, Any
from urllib.request import Request

from pgproxy.auth.errors import JWKSUnavailable
from pgproxy.dsn import is_loopback_host

_MAX_DOCUMENT_BYTES = 1024 * 1024


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to a URL we would have accepted in the first place (no https -> http)."""

    def redirect_request(  # noqa: PLR0917 - urllib's signature
        self, req: Request, fp: IO[bytes], code: int, msg: str, headers: HTTPMessage, newurl: str
    ) -> Request | None:
        try:
            check_url(newurl, "redirect target")
        except ValueError:
            fp.close()  # urllib only closes the redirect response when it follows it
            raise
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_CheckedRedirects)
_LOOPBACK_OPENER = urllib.request.build_opener(_CheckedRedirects, urllib.request.ProxyHandler({}))


def check_url(url: str, what: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and is_loopback_host(parts.hostname):
        return
    raise ValueError(f"{what} must be an https URL (plain http only to a loopback host): {url!r}")


def http_get_json(url: str, timeout: float) -> object:
    """Blocking GET (run in a thread). The URL was checked by _check_url, so urllib's scheme is safe."""
    hostname = urllib.parse.urlsplit(url).hostname or ""
    opener = _LOOPBACK_OPENER if is_loopback_host(hostname) else _OPENER
    request = Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with opener.open(request, timeout=timeout) as response:
            body: bytes = response.read(_MAX_DOCUMENT_BYTES + 1)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise JWKSUnavailable(f"HTTP {exc.code} from {url}") from None
    except (OSError, ValueError) as exc:  # URLError, timeouts, refused redirects
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise JWKSUnavailable(f"cannot fetch {url}: {reason}") from None
    return _parse_json(body, url)


def read_json_file(path: Path) -> object:
    try:
        with path.open("rb") as handle:
            body = handle.read(_MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise JWKSUnavailable(f"cannot read {path}: {exc.strerror or exc}") from None
    return _parse_json(body, str(path))


def _parse_json(body: bytes, source: str) -> object:
    if len(body) > _MAX_DOCUMENT_BYTES:
        raise JWKSUnavailable(f"{source} is larger than {_MAX_DOCUMENT_BYTES} bytes")
    try:
        return json.loads(body)
    except ValueError:
        raise JWKSUnavailable(f"{source} is not valid JSON") from None


def parse_jwks(document: object) -> tuple[dict[str, Any], ...]:
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise JWKSUnavailable("JWKS document has no 'keys' list")
    return tuple(k for k in keys if isinstance(k, dict))
