"""The local demo issuer: its key on disk, its JWKS, and tokens the real verifier accepts."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest
from jose import jwt

from pgproxy.auth.demo_issuer import DEMO_AUDIENCE, DEMO_ISSUER, DemoIssuer
from pgproxy.auth.oidc import OIDCConfig, TokenRejected, TokenVerifier


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo") / "issuer"


@pytest.fixture(scope="module")
def issuer(demo_dir: Path) -> DemoIssuer:
    return DemoIssuer.load_or_create(demo_dir)


async def test_minted_token_verifies_against_the_jwks_file(issuer: DemoIssuer) -> None:
    config = OIDCConfig(issuer=issuer.issuer, audience=(issuer.audience,), jwks=str(issuer.jwks_path))
    token = issuer.mint("alice", email="alice@example.com", name="Alice", groups=["dba", "dev"],
                        ttl_seconds=120)
    identity = await TokenVerifier(config).verify(token)
    assert identity.subject == "alice"
    assert identity.issuer == DEMO_ISSUER
    assert identity.email == "alice@example.com"
    assert identity.name == "Alice"
    assert identity.groups == ("dba", "dev")
    assert identity.expires_at is not None
    assert abs(identity.expires_at - (time.time() + 120)) < 5
    assert jwt.get_unverified_header(token)["kid"] == issuer.kid


async def test_oidc_config_helper(issuer: DemoIssuer) -> None:
    verifier = TokenVerifier(issuer.oidc_config())
    assert (await verifier.verify(issuer.mint("bob", groups="admins"))).groups == ("admins",)


async def test_expired_demo_token_is_rejected(issuer: DemoIssuer) -> None:
    token = issuer.mint("carol", ttl_seconds=1)
    verifier = TokenVerifier(issuer.oidc_config(leeway_seconds=0), clock=lambda: time.time() + 60)
    with pytest.raises(TokenRejected, match="token expired"):
        await verifier.verify(token)


def test_files_and_permissions(issuer: DemoIssuer, demo_dir: Path) -> None:
    assert issuer.audience == DEMO_AUDIENCE
    assert issuer.key_path.parent == demo_dir
    assert stat.S_IMODE(issuer.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(demo_dir.stat().st_mode) == 0o700
    jwks = json.loads(issuer.jwks_path.read_text(encoding="utf-8"))
    (key,) = jwks["keys"]
    assert key["kid"] == issuer.kid
    assert key["kty"] == "RSA" and key["alg"] == "RS256" and key["use"] == "sig"
    assert "d" not in key  # public only


def test_reload_keeps_the_key_and_kid_and_fixes_permissions(issuer: DemoIssuer, demo_dir: Path) -> None:
    issuer.key_path.chmod(0o644)
    issuer.jwks_path.unlink()
    again = DemoIssuer.load_or_create(demo_dir)
    assert again.kid == issuer.kid
    assert again.jwks_path.exists()
    assert stat.S_IMODE(again.key_path.stat().st_mode) == 0o600


def test_mint_argument_checks(issuer: DemoIssuer) -> None:
    with pytest.raises(ValueError, match="ttl"):
        issuer.mint("x", ttl_seconds=0)
    with pytest.raises(ValueError, match="subject"):
        issuer.mint("")
