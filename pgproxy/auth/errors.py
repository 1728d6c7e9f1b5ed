"""Why a token was refused. Pure: shared by the verifier and the key loaders."""

from __future__ import annotations


class TokenRejected(Exception):
    """The token was refused; ``reason`` is a sentence naming the failed check, never token content."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JWKSUnavailable(TokenRejected):
    """The signing keys could not be loaded (IdP down, bad document): not the client's fault."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"JWKS unavailable: {detail}")
        self.detail = detail
