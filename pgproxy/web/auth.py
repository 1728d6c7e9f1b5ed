"""Who may use the web pages: an OIDC token of a person in a reviewer group (or, for the approvals pages,
of any person the identity provider vouches for), checked on every request.

A request carries its token as ``Authorization: Bearer <token>`` (API clients) or in the ``pgproxy_review``
cookie, set by ``POST /login`` after a reviewer pasted a token into the login form, or by ``GET
/oidc/callback`` with the ID token of a sign-in through the identity provider: ``HttpOnly`` (no
script reads it), ``SameSite=Strict`` (no other site's page sends it, which also stops cross-site request
forgery), ``Secure`` when configured (always, behind HTTPS), ``Path=/``, and expiring with the token. The
cookie holds the token itself, never a session of ours, so :meth:`ReviewerAuth.authenticate` verifies it
again (signature, issuer, audience, expiry) on every request, and an expired token sends the reviewer
back to the login form.

Outcomes: a missing, malformed, expired or otherwise refused token is 401; a valid token of someone in
none of ``reviewer_groups`` is 403 (an empty list admits nobody; ``None`` admits every verified identity,
for pages where another check decides, as the approval model decides whose vote counts); keys that cannot
be fetched from the identity provider are 503. :class:`Denied` carries the status and a reason safe to
show (the verifier's reasons never quote a token). Login and logout forms are POSTs, refused when the
browser says they came from another origin.

This module must not log, store or echo tokens, nor read the audit log.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from fastapi import Request, Response

from pgproxy.auth.errors import JWKSUnavailable, TokenRejected
from pgproxy.auth.identity import Identity

COOKIE = "pgproxy_review"
MAX_COOKIE_TOKEN = 3800  # browsers drop cookies over 4096 bytes (name, value and attributes together)


class Verifier(Protocol):
    """What the web app needs from ``pgproxy.auth.oidc.TokenVerifier``."""

    async def verify(self, token: str) -> Identity: ...


class Denied(Exception):
    """The request may not proceed: ``status`` 401, 403 or 503, ``reason`` safe to show.

    ``expired``: the token was valid once and has expired (the login page says so). ``from_cookie``: the
    token came from the cookie, which the response should then clear.
    """

    def __init__(self, status: int, reason: str, *, expired: bool = False, from_cookie: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.expired = expired
        self.from_cookie = from_cookie


class ReviewerAuth:
    """Authenticates requests against one verifier and the groups whose members may review.

    ``reviewer_groups=None`` asks for a valid token only: any verified identity is admitted.
    """

    def __init__(
        self,
        verifier: Verifier,
        reviewer_groups: Sequence[str] | None,
        *,
        secure_cookies: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._verifier = verifier
        self._groups = None if reviewer_groups is None else frozenset(reviewer_groups)
        self._secure = secure_cookies
        self._clock = clock

    async def authenticate(self, request: Request) -> Identity:
        """The reviewer behind ``request`` (bearer header first, else the cookie), or raise :class:`Denied`."""
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Denied(401, "the Authorization header must be 'Bearer <token>'")
            return await self.check(token.strip())
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            raise Denied(401, "sign in with a token: Authorization: Bearer <token>, or the login page")
        try:
            return await self.check(cookie)
        except Denied as denied:
            denied.from_cookie = True
            raise

    async def check(self, token: str) -> Identity:
        """``token``'s identity if it is valid (and names a reviewer when groups are required), else Denied."""
        try:
            identity = await self._verifier.verify(token)
        except JWKSUnavailable:
            raise Denied(503, "the identity provider's signing keys cannot be loaded now; try again") from None
        except TokenRejected as exc:
            raise Denied(401, f"token refused: {exc.reason}", expired=exc.reason == "token expired") from None
        return self.admit(identity)

    def admit(self, identity: Identity) -> Identity:
        """``identity`` (already verified) if it names a reviewer when groups are required, else Denied 403."""
        if self._groups is not None and self._groups.isdisjoint(identity.groups):
            raise Denied(403, f"{identity.display} is not in a reviewer group of this audit log")
        return identity

    def set_cookie(self, response: Response, token: str, identity: Identity) -> None:
        """Keep ``token`` in the review cookie until the token expires."""
        max_age = None
        if identity.expires_at is not None:
            max_age = max(1, math.floor(identity.expires_at - self._clock()))
        response.set_cookie(
            COOKIE, token, max_age=max_age, path="/", secure=self._secure, httponly=True, samesite="strict"
        )

    def clear_cookie(self, response: Response) -> None:
        response.delete_cookie(COOKIE, path="/", secure=self._secure, httponly=True, samesite="strict")


async def read_form(request: Request, *, max_fields: int = 8, max_bytes: int = 64 * 1024) -> dict[str, str]:
    """A small urlencoded form body (the login forms); ValueError when it is not one."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise ValueError("expected a form (application/x-www-form-urlencoded)")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise ValueError("form too large")
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=max_fields)
    return {key: values[-1] for key, values in fields.items()}


def same_origin(request: Request) -> bool:
    """Whether a form POST came from this site: the ``Origin`` (else ``Referer``) host is ours, if sent."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if source is None:
        return True  # not a browser, or one that sends neither: SameSite=Strict still guards the cookie
    return urlsplit(source).netloc == request.headers.get("host", "")


def safe_next(target: str | None, default: str = "/audit") -> str:
    """``target`` if it is a path on this site (no scheme, host or backslash tricks), else ``default``."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    if any(ord(char) < 0x20 or char == "\\" for char in target):
        return default
    return target
