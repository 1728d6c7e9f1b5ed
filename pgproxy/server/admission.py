"""What a session is admitted with: its policy profile's settings upstream, its row limits, its origin.

Pure helpers for ``connection``: no sockets are touched here.
"""

from __future__ import annotations

import ipaddress

from pgproxy.gate.limits import RowLimits
from pgproxy.policy.engine import SessionProfile


def upstream_session_settings(profile: SessionProfile) -> tuple[tuple[str, str], ...]:
    """Startup settings that put the policy's limits inside PostgreSQL too (defense in depth).

    Set at startup rather than by SET, so they are the session's reset values: RESET ALL and
    DISCARD ALL return to them rather than to the login role's defaults.
    """
    settings: list[tuple[str, str]] = []
    if profile.upstream_role:
        settings.append(("role", profile.upstream_role))
    if profile.read_only:
        settings.append(("default_transaction_read_only", "on"))
    return tuple(settings)


def row_limits(profile: SessionProfile) -> RowLimits | None:
    if profile.limits is None:
        return None
    return RowLimits(profile.limits.max_rows, profile.limits.max_export_rows, f"session {profile.settings_id}")


def is_loopback(peer: object) -> bool:
    if isinstance(peer, str) or peer is None:  # Unix socket peers are local by construction
        return True
    if isinstance(peer, tuple) and peer:
        try:
            address = ipaddress.ip_address(str(peer[0]).split("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return address.ipv4_mapped.is_loopback
        return address.is_loopback
    return False
