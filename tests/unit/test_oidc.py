"""OIDC token verification against a fake IdP on 127.0.0.1 (see tests/support/fake_idp.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgproxy.auth.identity import Identity, identity_from_claims
from pgproxy.auth.oidc import JWKSUnavailable, OIDCConfig, TokenRejected, TokenVerifier
from tests.support.fake_idp import FakeIdP, b64url, encode_jwt


class Clock:
    """A settable clock: the verifier's notion of now for expiry and the JWKS rate limit."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def assert_no_token_in(reason: str, token: str) -> None:
    """No piece of the token worth hiding appears in the reason."""
    if token:
        assert token not in reason
    for segment in token.split("."):
        if len(segment) >= 12:
            assert segment not in reason
    for start in range(0, max(len(token) - 16, 0), 8):
        assert token[start:start + 16] not in reason


async def rejection(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(TokenRejected) as info:
        await verifier.verify(token)
    reason = info.value.reason
    assert reason == str(info.value)
    assert_no_token_in(reason, token)
    return reason


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(fake_idp: FakeIdP, clock: Clock) -> TokenVerifier:
    return TokenVerifier(fake_idp.config(), clock=clock)


@pytest.fixture
def own_idp() -> Iterator[FakeIdP]:
    """A private IdP for tests that rotate keys or break the IdP."""
    with FakeIdP() as idp:
        yield idp


# -- the happy path -----------------------------------------------------------------------------------

async def test_valid_token_gives_identity(fake_idp: FakeIdP, verifier: TokenVerifier) -> None:
    token = fake_idp.mint("agent-x", email="x@example.com", name="Agent X", groups=["dba", "dev"],
                          expires_in=600)
    identity = await verifier.verify(token)
    assert identity.subject == "agent-x"
    assert identity.issuer == fake_idp.issuer
    assert identity.email == "x@example.com"
    assert identity.name == "Agent X"
    assert identity.groups == ("dba", "dev")
    assert identity.display == "x@example.com"
    assert identity.expires_at is not None
    assert abs(identity.expires_at - (time.time() + 600)) < 5


async def test_nested_groups_claim(fake_idp: FakeIdP, clock: Clock) -> None:
    verifier = TokenVerifier(fake_idp.config(groups_claim="realm_access.roles"), clock=clock)
    token = fake_idp.mint(extra_claims={"realm_access": {"roles": ["reader", "approver"]}})
    identity = await verifier.verify(token)
    assert identity.groups == ("reader", "approver")
    assert identity.display == "agent-x"


async def test_audience_list_containing_ours_is_accepted(fake_idp: FakeIdP, verifier: TokenVerifier) -> None:
    identity = await verifier.verify(fake_idp.mint(aud=["someone-else", fake_idp.audience]))
    assert identity.subject == "agent-x"


async def test_any_configured_audience_is_accepted(fake_idp: FakeIdP, clock: Clock) -> None:
    verifier = TokenVerifier(fake_idp.config(audience=("first", "second")), clock=clock)
    assert (await verifier.verify(fake_idp.mint(aud="second"))).subject == "agent-x"


async def test_token_without_kid_uses_the_single_fitting_key(
    fake_idp: FakeIdP, verifier: TokenVerifier
) -> None:
    # The JWKS holds one RSA key and one EC key: an RS256 token without kid can only mean the RSA one.
    assert (await verifier.verify(fake_idp.mint(include_kid=False))).subject == "agent-x"


@pytest.mark.parametrize("alg", ["PS256", "ES256"])
async def test_pss_and_ecdsa_tokens_verify(fake_idp: FakeIdP, verifier: TokenVerifier, alg: str) -> None:
    assert (await verifier.verify(fake_idp.mint(alg=alg))).subject == "agent-x"


# -- time ---------------------------------------------------------------------------------------------

async def test_expired_token(fake_idp: FakeIdP, verifier: TokenVerifier) -> None:
    assert await rejection(verifier, fake_idp.mint(expires_in=-120)) == "token expired"


async def test_expiry_within_leeway_is_accepted(fake_idp: FakeIdP, verifier: TokenVerifier) -> None:
    assert (await verifier.verify(fake_idp.mint(expires_in=-5))).subject == "agent-x"


async def test_expiry_follows_the_injected_clock(fake_idp: FakeIdP, verifier: TokenVerifier,
                                                 clock: Clock) -> None:
    token = fake_idp.mint(expires_in=300)
    await verifier.verify(token)
    clock.advance(301 + 30)
    assert await rejection(verifier, token) == "token expired"


async def test_not_yet_valid(fake_idp: FakeIdP, verifier: TokenVerifier) -> None:
    assert await rejection(verifier, fake_idp.mint(not_before=120)) == "token not yet valid"


async def test_exp_is_required(fake_idp: FakeIdP, verifier: TokenVerifier) -> None:
    assert await rejection(verifier, fake_idp.mint(expires_in=None)) == "token has no expiry (exp)"


@pytest.mark.parametrize("exp", [float("nan"), float("inf"), 10**400, "9999999999", True, [1]])
async def test_exp_must_be_a_finite_number(fake_idp: FakeIdP, verifier: TokenVerifier, exp: object) -> None:
    reason = await rejection(verifier, fake_idp.mint(extra_claims={"exp": exp}))
    assert reason == "claim 'exp' is not a finite number"


# -- audience and issuer ------------------------------------------------------------------------------

async def test_wrong_audience(fake_idp: FakeIdP, verifier: TokenVerifier) -> None:
    assert await rejection(verifier, fake_idp.mint(aud="other-app")) == "audience 'other-app' not accepted"


async def test_missing_audience(fake_idp: FakeIdP, verifier: TokenVerifier) -> None:
    token = fake_idp.mint(extra_claims={"aud": None})
    assert await rejection(verifier, token) == "token has no audience (aud)"


async def test_wrong_issuer(fake_idp: FakeIdP, verifier: TokenVerifier) -> None:
    reason = await rejection(verifier, fake_idp.mint(iss="https://evil.example"))
    assert reason.startswith("issuer 'https://evil.example' not accepted")


async def test_missing_subject(fake_idp: FakeIdP, verifier: TokenVerifier) -> None:
    token = fake_idp.mint(extra_claims={"sub": 42})
    assert await rejection(verifier, token) == "claim 'sub' must be a non-empty string"


async def test_required_claims(fake_idp: FakeIdP, clock: Clock) -> None:
    verifier = TokenVerifier(fake_idp.config(required_claims=("email",)), clock=clock)
    assert await rejection(verifier, fake_idp.mint()) == "required claim 'email' missing"
    assert (await verifier.verify(fake_idp.mint(email="a@b.c"))).email == "a@b.c"


# -- forgeries ----------------------------------------------------------------------------------------

async def test_alg_none_is_refused(fake_idp: FakeIdP, verifier: TokenVerifier) -> None:
    assert await rejection(verifier, fake_idp.mint_alg_none()) == "algorithm 'none' not allowed"


async def test_hs256_signed_with_the_public_key_is_refused(
    fake_idp: FakeIdP, verifier: TokenVerifier
) -> None:
    reason = await rejection(verifier, fake_idp.mint_hs256_with_public_key())
    assert reason == "algorithm 'HS256' not allowed"


async def test_algorithm_outside_the_configured_list(fake_idp: FakeIdP, clock: Clock) -> None:
    verifier = TokenVerifier(fake_idp.config(algorithms=("RS256",)), clock=clock)
    assert await rejection(verifier, fake_idp.mint(alg="PS256")) == "algorithm 'PS256' not allowed"


async def test_tampered_payload_fails_the_signature(fake_idp: FakeIdP, verifier: TokenVerifier) -> None:
    header, _, signature = fake_idp.mint("agent-x").split(".")
    _, admin_payload, _ = fake_idp.mint("admin", groups=["superusers"]).split(".")
    reason = await rejection(verifier, f"{header}.{admin_payload}.{signature}")
    assert reason == "signature verification failed"


async def test_tampered_signature(fake_idp: FakeIdP, verifier: TokenVerifier) -> None:
    header, payload, signature = fake_idp.mint().split(".")
    flipped = ("A" if signature[10] != "A" else "B").join((signature[:10], signature[11:]))
    reason = await rejection(verifier, f"{header}.{payload}.{flipped}")
    assert reason == "signature verification failed"


async def test_empty_signature(fake_idp: FakeIdP, verifier: TokenVerifier) -> None:
    header, payload, _ = fake_idp.mint().split(".")
    assert await rejection(verifier, f"{header}.{payload}.") == "signature verification failed"


async def test_rs_token_naming_an_ec_key_is_refused(fake_idp: FakeIdP, verifier: TokenVerifier) -> None:
    reason = await rejection(verifier, fake_idp.mint(kid="ec-1"))
    assert reason.startswith("signing key 'ec-1' cannot verify RS256: key type 'EC'")


async def test_critical_header_is_refused(fake_idp: FakeIdP, verifier: TokenVerifier) -> None:
    token = fake_idp.mint(headers={"crit": ["exp"]})
    assert await rejection(verifier, token) == "critical header extensions are not supported"


@pytest.mark.parametrize("token", [
    "", "not a jwt", "abc.def", "a.b.c.d", "a.b.c.d.e", "!!!.###.$$$", "eyJ.eyJ.sig",
    "e30.e30.", "W10.e30.c2ln", "bnVsbA.e30.c2ln", "x" * 20_000,
    b64url(b'{"alg":"RS256"}') + "." + b64url(b"[1]") + ".c2ln",
    b64url(b'{"alg":"RS256","kid":["k"]}') + ".e30.c2ln",
    b64url(b'{"alg":"RS256","kid":"rsa-1"}') + "." + b64url(b"\xff\xfe") + ".c2ln",
])
async def test_garbage_is_rejected_cleanly(verifier: TokenVerifier, token: str) -> None:
    await rejection(verifier, token)


# -- key sets: sources, unknown kids, rotation, rate limit ---------------------------------------------

async def test_jwks_by_discovery(own_idp: FakeIdP) -> None:
    verifier = TokenVerifier(own_idp.config())
    await verifier.verify(own_idp.mint())
    assert (own_idp.discovery_requests, own_idp.jwks_requests) == (1, 1)


async def test_jwks_by_url(own_idp: FakeIdP) -> None:
    verifier = TokenVerifier(own_idp.config(jwks=own_idp.jwks_url))
    await verifier.verify(own_idp.mint())
    await verifier.verify(own_idp.mint("someone-else"))
    assert (own_idp.discovery_requests, own_idp.jwks_requests) == (0, 1)


async def test_jwks_from_file_is_reread_on_unknown_kid(own_idp: FakeIdP, tmp_path: Path) -> None:
    clock = Clock()
    jwks_file = own_idp.write_jwks_file(tmp_path / "jwks.json")
    verifier = TokenVerifier(own_idp.config(jwks=str(jwks_file)), clock=clock)
    assert (await verifier.verify(own_idp.mint())).subject == "agent-x"

    own_idp.rotate()
    rotated = own_idp.mint("rotated")
    own_idp.write_jwks_file(jwks_file)
    assert await rejection(verifier, rotated) == "unknown signing key id 'rsa-2'"  # rate limited
    clock.advance(31)
    assert (await verifier.verify(rotated)).subject == "rotated"
    assert (own_idp.discovery_requests, own_idp.jwks_requests) == (0, 0)


async def test_unknown_kid_refetches_once(own_idp: FakeIdP) -> None:
    clock = Clock()
    verifier = TokenVerifier(own_idp.config(jwks=own_idp.jwks_url), clock=clock)
    await verifier.refresh_keys()
    clock.advance(31)
    assert await rejection(verifier, own_idp.mint_with_unknown_key()) == "unknown signing key id 'unknown-1'"
    assert own_idp.jwks_requests == 2
    assert await rejection(verifier, own_idp.mint_with_unknown_key()) == "unknown signing key id 'unknown-1'"
    assert own_idp.jwks_requests == 2


async def test_rotation_is_picked_up_with_one_refetch_and_bursts_are_rate_limited(own_idp: FakeIdP) -> None:
    clock = Clock()
    verifier = TokenVerifier(own_idp.config(jwks=own_idp.jwks_url), clock=clock)
    await verifier.verify(own_idp.mint())
    assert own_idp.jwks_requests == 1

    clock.advance(31)
    own_idp.rotate()
    assert (await verifier.verify(own_idp.mint("after-rotation"))).subject == "after-rotation"
    assert own_idp.jwks_requests == 2
    old = own_idp.mint(kid="rsa-1", key=own_idp._keys[0].private)  # the old key is still published
    assert (await verifier.verify(old)).subject == "agent-x"
    assert own_idp.jwks_requests == 2

    # A burst of unknown kids right after a fetch: no fetch at all.
    burst = [own_idp.mint_with_unknown_key(kid=f"bogus-{i}") for i in range(10)]
    results = await asyncio.gather(*(verifier.verify(t) for t in burst), return_exceptions=True)
    assert all(isinstance(r, TokenRejected) for r in results)
    assert own_idp.jwks_requests == 2

    # Once the interval has passed, a concurrent burst shares a single fetch.
    clock.advance(31)
    results = await asyncio.gather(*(verifier.verify(t) for t in burst), return_exceptions=True)
    assert all(isinstance(r, TokenRejected) for r in results)
    assert own_idp.jwks_requests == 3


async def test_concurrent_first_verifications_share_one_fetch(own_idp: FakeIdP) -> None:
    verifier = TokenVerifier(own_idp.config(jwks=own_idp.jwks_url))
    tokens = [own_idp.mint(f"agent-{i}") for i in range(20)]
    identities = await asyncio.gather(*(verifier.verify(t) for t in tokens))
    assert [i.subject for i in identities] == [f"agent-{i}" for i in range(20)]
    assert own_idp.jwks_requests == 1


async def test_jwks_outage_is_reported_and_rate_limited(own_idp: FakeIdP) -> None:
    clock = Clock()
    own_idp.jwks_status = 503
    verifier = TokenVerifier(own_idp.config(jwks=own_idp.jwks_url), clock=clock)
    token = own_idp.mint()
    with pytest.raises(JWKSUnavailable) as info:
        await verifier.verify(token)
    assert info.value.reason == f"JWKS unavailable: HTTP 503 from {own_idp.jwks_url}"
    assert (await rejection(verifier, token)).startswith("JWKS unavailable")
    assert own_idp.jwks_requests == 1

    own_idp.jwks_status = 200
    clock.advance(31)
    assert (await verifier.verify(token)).subject == "agent-x"
    assert own_idp.jwks_requests == 2


async def test_refresh_keys_raises_when_unreachable(own_idp: FakeIdP) -> None:
    verifier = TokenVerifier(own_idp.config(http_timeout=1.0))
    own_idp.close()
    with pytest.raises(JWKSUnavailable, match="cannot fetch"):
        await verifier.refresh_keys()


async def test_discovery_must_name_the_configured_issuer(own_idp: FakeIdP) -> None:
    own_idp.discovery_issuer = "https://someone-else.example"
    verifier = TokenVerifier(own_idp.config())
    reason = await rejection(verifier, own_idp.mint())
    assert reason.startswith("JWKS unavailable: discovery document names issuer 'https://someone-else.example'")
    assert own_idp.jwks_requests == 0


async def test_redirect_to_plain_http_off_loopback_is_refused(own_idp: FakeIdP) -> None:
    own_idp.jwks_redirect = "http://keys.example.invalid/jwks.json"  # refused before any connection
    verifier = TokenVerifier(own_idp.config(jwks=own_idp.jwks_url))
    with pytest.raises(JWKSUnavailable, match="redirect target must be an https URL"):
        await verifier.refresh_keys()
    own_idp.jwks_redirect = None
    await verifier.refresh_keys()


async def test_missing_jwks_file(tmp_path: Path) -> None:
    verifier = TokenVerifier(OIDCConfig(issuer="https://idp.example", audience=("a",),
                                        jwks=str(tmp_path / "missing.json")))
    with pytest.raises(JWKSUnavailable, match="cannot read"):
        await verifier.refresh_keys()


async def test_weak_and_private_keys_in_the_jwks(fake_idp: FakeIdP, tmp_path: Path, clock: Clock) -> None:
    jwks = fake_idp.jwks()
    rsa_key = next(k for k in jwks["keys"] if k["kid"] == fake_idp.kid)
    weak = {**rsa_key, "kid": "weak", "n": b64url((2**1023 + 1).to_bytes(128, "big"))}
    jwks["keys"] = [weak, {**rsa_key, "d": "c2VjcmV0"}]  # a private member must be ignored, not used
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks), encoding="utf-8")
    verifier = TokenVerifier(fake_idp.config(jwks=str(path)), clock=clock)
    assert (await verifier.verify(fake_idp.mint())).subject == "agent-x"
    reason = await rejection(verifier, fake_idp.mint(kid="weak"))
    assert reason == "signing key 'weak' is weaker than 2048 bits"


async def test_logs_never_contain_tokens(fake_idp: FakeIdP, clock: Clock,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    verifier = TokenVerifier(fake_idp.config(), clock=clock)
    tokens = [fake_idp.mint(), fake_idp.mint(expires_in=-600), fake_idp.mint_with_unknown_key(),
              fake_idp.mint_alg_none(), fake_idp.mint_hs256_with_public_key(), fake_idp.mint()[:-5] + "AAAAA"]
    for token in tokens:
        with contextlib.suppress(TokenRejected):
            await verifier.verify(token)
    assert caplog.records  # the JWKS load was logged
    for token in tokens:
        assert_no_token_in(caplog.text, token)


# -- configuration --------------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithms", [("RS256", "HS256"), ("none",), ("HS512",), ("EdDSA",), ()])
def test_config_refuses_bad_algorithm_lists(algorithms: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="algorithm"):
        OIDCConfig(issuer="https://idp.example", audience=("a",), algorithms=algorithms)


@pytest.mark.parametrize(("issuer", "jwks"), [
    ("http://idp.example", None),
    ("https://idp.example", "http://idp.example/jwks.json"),
    ("https://idp.example", "http://10.0.0.1/jwks.json"),
    ("https://idp.example", "ftp://idp.example/jwks.json"),
])
def test_config_refuses_plain_http_off_loopback(issuer: str, jwks: str | None) -> None:
    with pytest.raises(ValueError, match="https"):
        OIDCConfig(issuer=issuer, audience=("a",), jwks=jwks)


@pytest.mark.parametrize(("issuer", "jwks"), [
    ("https://idp.example", None),
    ("https://idp.example", "https://keys.idp.example/jwks.json"),
    ("http://127.0.0.1:8080", None),
    ("https://idp.example", "http://[::1]:8080/jwks.json"),
    ("https://idp.example", "http://localhost/jwks.json"),
    ("https://idp.example", "/etc/pgproxy/jwks.json"),
])
def test_config_accepts(issuer: str, jwks: str | None) -> None:
    OIDCConfig(issuer=issuer, audience=("a",), jwks=jwks)


def test_config_requires_an_audience() -> None:
    with pytest.raises(ValueError, match="audience"):
        OIDCConfig(issuer="https://idp.example", audience=())


def test_config_normalises_strings_and_lists_to_tuples() -> None:
    config = OIDCConfig(issuer="https://idp.example", audience="app", algorithms=["RS256"])  # type: ignore[arg-type]
    assert config.audience == ("app",)
    assert config.algorithms == ("RS256",)
    assert hash(config)


# -- identity_from_claims ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "groups"), [
    (["a", "b", "a"], ("a", "b")),
    ("a b,c  ,d", ("a", "b", "c", "d")),
    (["a", 1, None, "", "b"], ("a", "b")),
    (42, ()),
    ({"a": 1}, ()),
    (None, ()),
])
def test_groups_claim_shapes(value: object, groups: tuple[str, ...]) -> None:
    claims = {"sub": "s", "iss": "i", "groups": value}
    assert identity_from_claims(claims).groups == groups


def test_identity_claims() -> None:
    claims: dict[str, Any] = {
        "sub": "s", "iss": "i", "preferred_username": "jdoe", "exp": 100,
        "https://example.com/groups": ["namespaced"], "realm_access": {"roles": "x y"},
    }
    assert identity_from_claims(claims, "https://example.com/groups").groups == ("namespaced",)
    identity = identity_from_claims(claims, "realm_access.roles")
    assert identity == Identity(subject="s", issuer="i", email=None, name="jdoe", groups=("x", "y"),
                                expires_at=100.0)
    assert identity_from_claims(claims, "realm_access.missing.deeper").groups == ()
    with pytest.raises(ValueError, match="sub"):
        identity_from_claims({"iss": "i"})


# -- fuzz: anything the client sends ends as an Identity or a TokenRejected ---------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
_header = st.fixed_dictionaries(
    {"alg": st.sampled_from(["RS256", "ES256", "PS256", "none", "HS256"]) | _json},
    optional={"kid": st.sampled_from(["rsa-1", "ec-1", "nope"]) | _json, "crit": _json, "typ": _json},
)
_b64 = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/", max_size=60)
_tokens = st.one_of(
    st.text(max_size=300),
    st.lists(_b64, min_size=1, max_size=6).map(".".join),
    st.tuples(_header, _json, st.binary(max_size=64)).map(
        lambda t: encode_jwt(t[0], t[1], lambda _data: t[2])
    ),
)


@pytest.fixture(scope="module")
def fuzz_verifier(fake_idp: FakeIdP) -> TokenVerifier:
    return TokenVerifier(fake_idp.config(jwks=fake_idp.jwks_url))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(token=_tokens)
async def test_random_input_only_ever_raises_token_rejected(fuzz_verifier: TokenVerifier, token: str) -> None:
    try:
        await fuzz_verifier.verify(token)
    except TokenRejected as exc:
        if len(token) >= 16:
            assert_no_token_in(exc.reason, token)


_claims = st.dictionaries(
    st.sampled_from(["iss", "aud", "exp", "nbf", "iat", "sub", "groups", "email", "name"]), _json, max_size=3,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(claims=_claims)
async def test_hostile_claims_in_a_validly_signed_token(fake_idp: FakeIdP, fuzz_verifier: TokenVerifier,
                                                         claims: dict[str, Any]) -> None:
    token = fake_idp.mint(extra_claims=claims)
    try:
        identity = await fuzz_verifier.verify(token)
    except TokenRejected:
        return
    assert isinstance(identity.subject, str)
    assert isinstance(identity.groups, tuple)
