"""Verify the OIDC JWT a client presents as its Postgres password and turn it into an :class:`Identity`.

What it does: refuses any header ``alg`` outside an asymmetric allow-list (``none`` and ``HS*`` can never
be allowed); picks the key by ``kid`` from the issuer's JWKS (OIDC discovery, a URL, or a file) and checks
its ``kty``/``crv``/``use``/``key_ops``/``alg`` fit the token's ``alg``; verifies the signature and ``iss``
with python-jose; checks ``aud`` (string or list), ``exp`` (required), ``nbf``, ``iat`` and ``sub`` against
an injectable clock. An unknown ``kid`` refetches the JWKS, at most once per ``jwks_refresh_min_interval``,
and concurrent verifications share one in-flight fetch. python-jose lacks RSASSA-PSS, so PS* signatures
go through a small ``cryptography``-backed ``Key``.

What it must not do: log, store or echo a token or any part of it. ``TokenRejected.reason`` names the
failed check; the few header/claim values it quotes (alg, kid, aud, iss) appear only when short and made
of safe characters, and exceptions are raised ``from None`` so no token bytes ride along in a chain. Keys
are never fetched over plain HTTP except from a loopback host.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from jose import jwk, jwt
from jose.backends.base import Key
from jose.exceptions import ExpiredSignatureError, JOSEError, JWTClaimsError

from pgproxy.auth.errors import JWKSUnavailable, TokenRejected
from pgproxy.auth.identity import Identity, identity_from_claims
from pgproxy.auth.jwks_source import check_url, http_get_json, parse_jwks, read_json_file

__all__ = ["DEFAULT_ALGORITHMS", "JWKSUnavailable", "OIDCConfig", "TokenRejected", "TokenVerifier"]

log = logging.getLogger(__name__)

DEFAULT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
_KTY = {"RS": "RSA", "PS": "RSA", "ES": "EC"}
_CURVE = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_PUBLIC_MEMBERS = {"RSA": ("kty", "n", "e"), "EC": ("kty", "crv", "x", "y")}
_PSS_HASH: dict[str, type[hashes.HashAlgorithm]] = {
    "PS256": hashes.SHA256, "PS384": hashes.SHA384, "PS512": hashes.SHA512,
}
_MIN_RSA_BITS = 2048
_MAX_TOKEN_CHARS = 16 * 1024
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_PRINTABLE = re.compile(r"[A-Za-z0-9._:/@+=~-]{1,80}")
_JOSE_OPTIONS = {  # signature and iss by python-jose; time, aud and sub by _claims_problem
    "verify_signature": True, "verify_iss": True, "verify_sub": True, "verify_aud": False,
    "verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_jti": False,
    "verify_at_hash": False,  # an ID token's at_hash needs the access token, which we never see
}


@dataclass(frozen=True)
class OIDCConfig:
    """How to verify tokens. ``jwks``: https URL, http URL on a loopback host, or a local file path;
    ``None`` discovers it from the issuer. Invalid settings raise :class:`ValueError` at construction."""

    issuer: str
    audience: tuple[str, ...]
    jwks: str | None = None
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    groups_claim: str = "groups"
    leeway_seconds: int = 30
    jwks_refresh_min_interval: float = 30.0
    http_timeout: float = 5.0
    required_claims: tuple[str, ...] = ()  # extra claims that must be present (beyond iss/aud/exp/sub)

    def __post_init__(self) -> None:
        for name in ("audience", "algorithms", "required_claims"):  # accept a str or a list too
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if not isinstance(self.issuer, str) or not self.issuer:
            raise ValueError("issuer must be a non-empty string")
        if not self.audience or not all(isinstance(a, str) and a for a in self.audience):
            raise ValueError("audience must be one or more non-empty strings")
        if not self.algorithms:
            raise ValueError("algorithms must not be empty")
        for alg in self.algorithms:
            if alg.lower() == "none" or alg.upper().startswith("HS"):
                raise ValueError(f"algorithm {alg!r} must never be allowed: only asymmetric signatures")
            if alg not in DEFAULT_ALGORITHMS:
                raise ValueError(f"algorithm {alg!r} is not supported (choose from {DEFAULT_ALGORITHMS})")
        if not self.groups_claim:
            raise ValueError("groups_claim must not be empty")
        if self.leeway_seconds < 0 or self.jwks_refresh_min_interval < 0 or self.http_timeout <= 0:
            raise ValueError("leeway and refresh interval must be >= 0 and http_timeout > 0")
        if self.jwks is None:
            check_url(self.issuer, "issuer (used for OIDC discovery)")
        elif "://" in self.jwks:
            check_url(self.jwks, "jwks URL")
        elif not self.jwks.strip():
            raise ValueError("jwks must be a URL or a file path")


class TokenVerifier:
    """Verifies tokens against one issuer; caches its JWKS. Use one instance per configured issuer."""

    def __init__(self, config: OIDCConfig, *, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._clock = clock
        is_url = config.jwks is not None and "://" in config.jwks
        self._jwks_uri: str | None = config.jwks if is_url else None
        self._keys: tuple[dict[str, Any], ...] | None = None
        self._built: dict[tuple[int, str], Key] = {}
        self._fetch_started: float | None = None
        self._fetch_error: str | None = None
        self._inflight: asyncio.Task[None] | None = None

    @property
    def config(self) -> OIDCConfig:
        return self._config

    async def verify(self, token: str) -> Identity:
        """Return the token's identity, or raise :class:`TokenRejected` (never anything else)."""
        try:
            return await self._verify(token)
        except TokenRejected:
            raise
        except Exception as exc:  # any surprise from parsing hostile input is a rejection, not a crash
            log.debug("token rejected after unexpected %s", type(exc).__name__)
            raise TokenRejected("malformed token") from None

    async def refresh_keys(self) -> None:
        """Fetch the JWKS now, ignoring the rate limit (e.g. at startup). Raises :class:`JWKSUnavailable`."""
        await self._fetch_shared()

    async def _verify(self, token: str) -> Identity:
        if not isinstance(token, str) or not token:
            raise TokenRejected("malformed token: empty")
        if len(token) > _MAX_TOKEN_CHARS:
            raise TokenRejected("malformed token: too large")
        segments = token.split(".")
        if len(segments) == 5:
            raise TokenRejected("encrypted tokens (JWE) are not supported")
        if len(segments) != 3 or not all(_SEGMENT.fullmatch(s) for s in segments[:2]) or (
            segments[2] and not _SEGMENT.fullmatch(segments[2])  # empty: alg "none", refused below
        ):
            raise TokenRejected("malformed token: expected three base64url segments")
        try:
            header = jwt.get_unverified_header(token)
        except JOSEError:
            raise TokenRejected("malformed token header") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            raise TokenRejected("malformed token header: no algorithm")
        if alg.lower() == "none":
            raise TokenRejected("algorithm 'none' not allowed")
        if alg not in self._config.algorithms:
            raise TokenRejected(f"algorithm {_quote(alg)} not allowed")
        if "crit" in header:
            raise TokenRejected("critical header extensions are not supported")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenRejected("malformed token header: key id is not a string")
        key = await self._key_for(kid, alg)
        try:
            claims = jwt.decode(token, key, algorithms=[alg], issuer=self._config.issuer,
                                options={**_JOSE_OPTIONS, "leeway": self._config.leeway_seconds})
        except ExpiredSignatureError:
            raise TokenRejected("token expired") from None
        except JWTClaimsError:
            # The signature was good; our own checks name the claim python-jose disliked.
            problem = self._claims_problem(jwt.get_unverified_claims(token))
            raise TokenRejected(problem or "token claims rejected") from None
        except JOSEError as exc:  # python-jose's text is inspected, never echoed: it may quote input
            failed = "Signature verification failed" in str(exc)
            raise TokenRejected("signature verification failed" if failed else "malformed token") from None
        problem = self._claims_problem(claims)
        if problem is not None:
            raise TokenRejected(problem)
        return identity_from_claims(claims, self._config.groups_claim)

    def _claims_problem(self, claims: Mapping[str, Any]) -> str | None:
        cfg, now, leeway = self._config, self._clock(), self._config.leeway_seconds
        iss = claims.get("iss")
        if iss is None:
            return "token has no issuer (iss)"
        if iss != cfg.issuer:
            return f"issuer {_quote(iss)} not accepted (expected {cfg.issuer!r})"
        aud = claims.get("aud")
        if aud is None:
            return "token has no audience (aud)"
        auds = [aud] if isinstance(aud, str) else aud
        if not isinstance(auds, list) or not all(isinstance(a, str) for a in auds):
            return "malformed audience (aud) claim"
        if not set(auds) & set(cfg.audience):
            return f"audience {', '.join(_quote(a) for a in auds[:3]) or '[]'} not accepted"
        for name in ("exp", "nbf", "iat"):
            if name in claims and not _is_time(claims[name]):
                return f"claim {name!r} is not a finite number"
        if "exp" not in claims:
            return "token has no expiry (exp)"
        if now >= claims["exp"] + leeway:
            return "token expired"
        if "nbf" in claims and now + leeway < claims["nbf"]:
            return "token not yet valid"
        if "iat" in claims and now + leeway < claims["iat"]:
            return "token issued in the future (iat)"
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            return "claim 'sub' must be a non-empty string"
        missing = [name for name in cfg.required_claims if name not in claims]
        if missing:
            return f"required claim {missing[0]!r} missing"
        return None

    async def _key_for(self, kid: str | None, alg: str) -> Key:
        if self._keys is None:
            if self._inflight is None and self._recently_fetched() and self._fetch_error is not None:
                raise JWKSUnavailable(self._fetch_error)
            await self._fetch_shared()
        jwk_dict = self._select(kid, alg)
        if jwk_dict is None:  # unknown kid (or no kid and no fitting key): the IdP may have rotated
            if self._inflight is not None or not self._recently_fetched():
                await self._fetch_shared()
            jwk_dict = self._select(kid, alg)
        if jwk_dict is None:
            if kid is None:
                raise TokenRejected(f"token has no key id and the JWKS has no key for {alg}")
            raise TokenRejected(f"unknown signing key id {_quote(kid)}")
        return self._build(jwk_dict, kid, alg)

    def _select(self, kid: str | None, alg: str) -> dict[str, Any] | None:
        keys = self._keys or ()
        if kid is not None:
            same = [k for k in keys if k.get("kid") == kid]
            if not same:
                return None
            fitting = [k for k in same if _key_problem(k, alg) is None]
            if not fitting:
                problem = _key_problem(same[0], alg)
                raise TokenRejected(f"signing key {_quote(kid)} cannot verify {alg}: {problem}")
            return fitting[0]
        fitting = [k for k in keys if _key_problem(k, alg) is None]
        if len(fitting) > 1:
            raise TokenRejected(f"token has no key id and the JWKS has {len(fitting)} keys for {alg}")
        return fitting[0] if fitting else None

    def _build(self, jwk_dict: dict[str, Any], kid: str | None, alg: str) -> Key:
        cache_key = (id(jwk_dict), alg)  # the dicts live in self._keys, which owns this cache
        if cache_key in self._built:
            return self._built[cache_key]
        members = _PUBLIC_MEMBERS[jwk_dict["kty"]]
        label = _quote(kid) if kid is not None else "(no kid)"
        if not all(isinstance(jwk_dict.get(m), str) and jwk_dict[m] for m in members):
            raise TokenRejected(f"signing key {label} is incomplete")
        public = {m: str(jwk_dict[m]) for m in members}  # never hand private members to jose
        try:
            if public["kty"] == "RSA" and _b64_int(public["n"]).bit_length() < _MIN_RSA_BITS:
                raise TokenRejected(f"signing key {label} is weaker than {_MIN_RSA_BITS} bits")
            key = _RSAPSSKey(public, alg) if alg.startswith("PS") else jwk.construct(public, alg)
        except TokenRejected:
            raise
        except Exception:
            raise TokenRejected(f"signing key {label} is not a valid {public['kty']} key") from None
        self._built[cache_key] = key
        return key

    def _recently_fetched(self) -> bool:
        started = self._fetch_started
        return started is not None and self._clock() - started < self._config.jwks_refresh_min_interval

    async def _fetch_shared(self) -> None:
        if self._inflight is None:
            self._fetch_started = self._clock()
            task = asyncio.get_running_loop().create_task(self._fetch())
            task.add_done_callback(self._fetch_done)
            self._inflight = task
        await asyncio.shield(self._inflight)  # a cancelled caller does not cancel the shared fetch

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved here so an unawaited failure is not reported as lost

    async def _fetch(self) -> None:
        try:
            keys = parse_jwks(await self._load_document())
        except JWKSUnavailable as exc:
            self._fetch_error = exc.detail
            log.warning("%s", exc.reason)
            raise
        self._keys, self._fetch_error = keys, None
        self._built.clear()
        log.info("loaded %d signing keys for issuer %s", len(keys), self._config.issuer)

    async def _load_document(self) -> object:
        cfg = self._config
        if cfg.jwks is not None and "://" not in cfg.jwks:
            return await asyncio.to_thread(read_json_file, Path(cfg.jwks))
        if self._jwks_uri is None:
            self._jwks_uri = await self._discover()
        try:
            return await asyncio.to_thread(http_get_json, self._jwks_uri, cfg.http_timeout)
        except JWKSUnavailable:
            if cfg.jwks is None:
                self._jwks_uri = None  # rediscover next time
            raise

    async def _discover(self) -> str:
        cfg = self._config
        url = cfg.issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = await asyncio.to_thread(http_get_json, url, cfg.http_timeout)
        if not isinstance(doc, dict):
            raise JWKSUnavailable(f"discovery document at {url} is not a JSON object")
        if doc.get("issuer") != cfg.issuer:
            raise JWKSUnavailable(f"discovery document names issuer {_quote(doc.get('issuer'))}, "
                                  f"expected {cfg.issuer!r}")
        uri = doc.get("jwks_uri")
        if not isinstance(uri, str):
            raise JWKSUnavailable(f"discovery document at {url} has no jwks_uri")
        try:
            check_url(uri, "discovered jwks_uri")
        except ValueError as exc:
            raise JWKSUnavailable(str(exc)) from None
        return uri


class _RSAPSSKey(Key):
    """RSASSA-PSS verification (RFC 7518 3.5: MGF1 with the same hash, salt as long as the hash)."""

    def __init__(self, public: Mapping[str, str], algorithm: str) -> None:
        numbers = rsa.RSAPublicNumbers(_b64_int(public["e"]), _b64_int(public["n"]))
        self._public = numbers.public_key()
        self._hash = _PSS_HASH[algorithm]()

    def verify(self, msg: bytes, sig: bytes) -> bool:
        pss = padding.PSS(mgf=padding.MGF1(self._hash), salt_length=self._hash.digest_size)
        try:
            self._public.verify(sig, msg, pss, self._hash)
        except InvalidSignature:
            return False
        return True


def _key_problem(key: Mapping[str, Any], alg: str) -> str | None:
    kty = _KTY[alg[:2]]
    if key.get("kty") != kty:
        return f"key type {_quote(key.get('kty'))} does not fit {alg}"
    if key.get("use", "sig") != "sig":
        return "key is not for signatures (use)"
    ops = key.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return "key_ops does not allow verify"
    if key.get("alg", alg) != alg:
        return f"key is for {_quote(key.get('alg'))}"
    if kty == "EC" and key.get("crv") != _CURVE[alg]:
        return f"curve {_quote(key.get('crv'))} does not fit {alg}"
    return None


def _is_time(value: object) -> bool:
    """A NumericDate: a JSON number, finite and within float precision (no NaN, no 10**400)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) if isinstance(value, float) else abs(value) <= 2**53


def _b64_int(value: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")


def _quote(value: object) -> str:
    """Quote a short, safe token-supplied value for a reason; anything else is not echoed."""
    if isinstance(value, str) and _PRINTABLE.fullmatch(value):
        return repr(value)
    return "<unprintable>"
