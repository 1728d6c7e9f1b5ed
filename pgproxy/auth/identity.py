"""The identity behind a session, built from verified token claims.

Pure: stdlib only, no I/O. The caller (``pgproxy.auth.oidc``) has already verified the token's signature,
issuer, audience and lifetime; this module only reads claims.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Identity", "identity_from_claims"]

_GROUP_SEPARATORS = re.compile(r"[\s,]+")


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified caller.

    ``expires_at`` is the token's ``exp`` in epoch seconds; sessions end then unless configured otherwise.
    """

    subject: str
    issuer: str
    email: str | None
    name: str | None
    groups: tuple[str, ...]
    expires_at: float | None

    @property
    def display(self) -> str:
        """The email when known, else the subject; used in ``application_name`` and logs."""
        return self.email or self.subject


def identity_from_claims(claims: Mapping[str, object], groups_claim: str = "groups") -> Identity:
    """Build an :class:`Identity` from already-verified claims.

    ``groups_claim`` names the claim holding the groups. A literal key wins (namespaced claims such as
    ``https://example.com/groups`` contain dots); otherwise it is read as a dotted path into nested
    objects, e.g. ``realm_access.roles`` for Keycloak. The value may be a list of strings or one string
    separated by spaces or commas; anything else yields no groups.

    Raises :class:`ValueError` when ``sub`` or ``iss`` is missing or not a non-empty string.
    """
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise ValueError("claim 'sub' must be a non-empty string")
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or not issuer:
        raise ValueError("claim 'iss' must be a non-empty string")
    return Identity(
        subject=subject,
        issuer=issuer,
        email=_string(claims.get("email")),
        name=_string(claims.get("name")) or _string(claims.get("preferred_username")),
        groups=_groups(_lookup(claims, groups_claim)),
        expires_at=_number(claims.get("exp")),
    )


def _string(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _lookup(claims: Mapping[str, object], path: str) -> object:
    if path in claims:
        return claims[path]
    node: object = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _groups(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        items = _GROUP_SEPARATORS.split(value)
    elif isinstance(value, list | tuple):
        items = [item.strip() for item in value if isinstance(item, str)]
    else:
        return ()
    # Keep the IdP's order, drop empties and duplicates.
    return tuple(dict.fromkeys(item for item in items if item))
