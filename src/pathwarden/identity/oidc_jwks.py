"""The signing keys of trusted OIDC issuers: fetched over HTTP, cached, rotated.

Theory of operation: an issuer publishes its public keys as a JWK Set
(RFC 7517) at the ``jwks_uri`` of its discovery document (OpenID Connect
Discovery 1.0, ``<issuer>/.well-known/openid-configuration``), or at the
configured ``jwks_url``. :class:`JwksCache` keeps one key set per issuer,
replaces it wholesale on each successful fetch (so removed keys stop
verifying), and throttles fetches so that forged key ids cannot turn the
gateway into a client hammering the issuer. Only asymmetric public signing
keys are kept: ``oct`` (shared-secret) entries and anything carrying private
material are ignored, which is half of the defence against HS256 tokens
"signed" with a public key; the other half is :func:`key_fits`.

:class:`ExchangeError` lives here because both this module and
:mod:`.oidc` raise it; import it from :mod:`pathwarden.identity.oidc`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from pathwarden.config.trust import TrustIssuer, url_problem

__all__ = ["ExchangeError", "JwksCache", "key_fits", "show"]

log = logging.getLogger(__name__)

# JWKS and discovery documents are a few KiB; a bound keeps a broken or hostile
# issuer from filling our memory.
MAX_DOCUMENT_SIZE = 256 * 1024
FETCH_TIMEOUT = 5.0
MIN_REFETCH_INTERVAL = 30.0
DEFAULT_MAX_AGE = 600.0
MIN_MAX_AGE, MAX_MAX_AGE = 60.0, 3600.0
MIN_RSA_BITS = 2048
MAX_KEYS = 100  # issuers publish two or three; more is a broken or hostile JWKS

_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)", re.IGNORECASE)
_CURVES: Mapping[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}
_ADVICE = {
    "malformed": "send the CI provider's OIDC token (a JWT) unchanged",
    "too_large": "send the CI provider's OIDC token unchanged",
    "unknown_issuer": "add the issuer under 'trust:' in the gateway configuration, "
    "or request the token from a trusted provider",
    "issuer": "make the configured issuer URL equal the token's 'iss' claim exactly",
    "algorithm": "use the provider's default signing algorithm or adjust the trust "
    "issuer's 'algorithms'",
    "unknown_key": "request a fresh token; if the provider rotated its keys, retry in a minute",
    "signature": "request a fresh token from the CI provider; this one was altered or "
    "signed by someone else",
    "expired": "request a fresh token from the CI provider and exchange it right away",
    "not_yet_valid": "check the clocks of this gateway and the CI provider",
    "issued_in_future": "check the clocks of this gateway and the CI provider",
    "audience": "request the token with the configured audience (e.g. "
    "core.getIDToken(audience) on GitHub, id_tokens: aud on GitLab)",
    "no_matching_rule": "add or adjust a rule under this trust issuer's 'rules'",
    "jwks_unavailable": "retry later; the gateway could not fetch the issuer's keys",
}


class ExchangeError(Exception):
    """An OIDC token was refused; the message is safe to show and never contains the token.

    ``check`` is the machine name of the failed check (``malformed``,
    ``too_large``, ``unknown_issuer``, ``issuer``, ``algorithm``,
    ``unknown_key``, ``signature``, ``expired``, ``not_yet_valid``,
    ``issued_in_future``, ``audience``, ``no_matching_rule``,
    ``jwks_unavailable``); ``issuer`` the trust issuer's name once known, so
    a caller can rate-limit failures per issuer.
    """

    def __init__(self, check: str, detail: str, issuer: str | None = None) -> None:
        advice = _ADVICE.get(check)
        super().__init__(
            f"OIDC token refused ({check}): {detail}" + (f"; {advice}" if advice else "")
        )
        self.check = check
        self.issuer = issuer


def show(value: object, limit: int = 80) -> str:
    """A value from a token, quoted and truncated, for messages and logs."""
    text = value if isinstance(value, str) else str(value)
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


# -- keys -----------------------------------------------------------------------------


class _FetchError(Exception):
    pass


def key_fits(key: Any, algorithm: str) -> bool:
    """Whether ``key`` (a cryptography public key) is the kind ``algorithm`` verifies with."""
    if algorithm.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS
    if algorithm in _CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(
            key.curve, _CURVES[algorithm]
        )
    if algorithm == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str | None
    key: Any  # a cryptography public key
    alg: str | None  # the JWK's own "alg", when it names one

    def fits(self, algorithm: str) -> bool:
        return (self.alg is None or self.alg == algorithm) and key_fits(self.key, algorithm)


def _parse_jwks(document: Mapping[str, Any]) -> list[_Key]:
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise _FetchError("the JWKS has no 'keys' list")
    keys: list[_Key] = []
    for entry in entries[:MAX_KEYS]:
        if not isinstance(entry, dict) or entry.get("kty") == "oct" or "d" in entry:
            continue  # never a shared secret or a private key, whatever the issuer publishes
        if entry.get("use", "sig") != "sig":
            continue
        ops = entry.get("key_ops")
        if isinstance(ops, list) and "verify" not in ops:
            continue
        try:
            parsed = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            log.debug("skipping a JWKS entry pathwarden cannot use (kid %r)", entry.get("kid"))
            continue
        kid, alg = entry.get("kid"), entry.get("alg")
        kid = kid if isinstance(kid, str) else None
        keys.append(_Key(kid, parsed.key, alg if isinstance(alg, str) else None))
    return keys


def _max_age(response: httpx.Response) -> float:
    header = response.headers.get("cache-control", "")
    if "no-store" in header.lower() or "no-cache" in header.lower():
        return MIN_MAX_AGE
    found = _MAX_AGE.search(header)
    seconds = float(found.group(1)) if found else DEFAULT_MAX_AGE
    return min(max(seconds, MIN_MAX_AGE), MAX_MAX_AGE)


@dataclass(slots=True)
class _IssuerKeys:
    keys: list[_Key] | None = None  # None: never fetched successfully
    expires_at: float = 0.0
    last_attempt: float = -math.inf
    last_error: str = ""
    jwks_uri: str | None = None
    jwks_uri_expires_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def find(self, kid: str | None) -> list[_Key]:
        if self.keys is None:
            return []
        if kid is None:
            return list(self.keys)
        return [key for key in self.keys if key.kid == kid]


class JwksCache:
    """The signing keys of trusted issuers, fetched over HTTP and cached.

    Keys are cached for the JWKS response's ``Cache-Control: max-age`` bounded
    to [1 min, 1 h] (10 min without one). An unknown ``kid`` triggers a refetch
    (the issuer may have rotated), but fetches for one issuer happen at most
    once per ``min_refetch_interval`` (30 s) so that tokens with made-up key
    ids cannot make us hammer the issuer. A successful fetch replaces the key
    set, dropping removed keys; a failed one keeps the cached set and logs a
    warning. ``clock`` returns seconds (``time.time`` by default).
    """

    def __init__(
        self,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        timeout: float = FETCH_TIMEOUT,
        min_refetch_interval: float = MIN_REFETCH_INTERVAL,
    ) -> None:
        self._client = client
        self._own_client = client is None
        self._clock = clock
        self._timeout = timeout
        self._min_interval = min_refetch_interval
        self._issuers: dict[tuple[str, str | None], _IssuerKeys] = {}

    async def aclose(self) -> None:
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def key_for(self, issuer: TrustIssuer, kid: str | None, algorithm: str) -> Any:
        """The public key that must have signed a token of ``issuer`` with ``kid``/``algorithm``.

        Raises :class:`ExchangeError` (``unknown_key``, ``algorithm`` or
        ``jwks_unavailable``).
        """
        state = self._issuers.setdefault((issuer.issuer, issuer.jwks_url), _IssuerKeys())
        if self._needs_fetch(state, kid):
            async with state.lock:  # concurrent logins wait for one fetch
                if self._needs_fetch(state, kid):
                    now = self._clock()
                    if now - state.last_attempt >= self._min_interval:
                        await self._refresh(issuer, state, now)
        if state.keys is None:
            raise ExchangeError(
                "jwks_unavailable",
                f"the signing keys of trust issuer {issuer.name} could not be fetched "
                f"({state.last_error})",
                issuer.name,
            )
        found = state.find(kid)
        suitable = [key for key in found if key.fits(algorithm)]
        if kid is None:
            if len(suitable) != 1:
                raise ExchangeError(
                    "unknown_key",
                    f"the token names no key id ('kid') and the keys of trust issuer "
                    f"{issuer.name} hold {len(suitable)} {algorithm} keys, not exactly one",
                    issuer.name,
                )
            return suitable[0].key
        if not found:
            raise ExchangeError(
                "unknown_key",
                f"trust issuer {issuer.name} publishes no key with id {show(kid, 64)}",
                issuer.name,
            )
        if not suitable:
            raise ExchangeError(
                "algorithm",
                f"the token says {algorithm} but key {show(kid, 64)} of trust issuer "
                f"{issuer.name} is not a key for {algorithm}",
                issuer.name,
            )
        return suitable[0].key

    def _needs_fetch(self, state: _IssuerKeys, kid: str | None) -> bool:
        return (
            state.keys is None
            or self._clock() >= state.expires_at
            or (kid is not None and not state.find(kid))
        )

    async def _refresh(self, issuer: TrustIssuer, state: _IssuerKeys, now: float) -> None:
        state.last_attempt = now
        try:
            jwks_uri = await self._jwks_uri(issuer, state, now)
            document, max_age = await self._get_json(jwks_uri)
            keys = _parse_jwks(document)
        except _FetchError as exc:
            state.jwks_uri = None  # rediscover next time: the JWKS may have moved
            state.last_error = str(exc)
            if state.keys is None:
                log.warning("cannot fetch the keys of trust issuer %s: %s", issuer.name, exc)
            else:
                log.warning(
                    "cannot refresh the keys of trust issuer %s, still using the %d cached: %s",
                    issuer.name,
                    len(state.keys),
                    exc,
                )
            return
        old = {key.kid for key in state.keys or ()}
        new = {key.kid for key in keys}
        if state.keys is not None and old != new:
            log.info(
                "keys of trust issuer %s changed: added %s, removed %s",
                issuer.name,
                sorted(map(str, new - old)),
                sorted(map(str, old - new)),
            )
        state.keys = keys
        state.expires_at = now + max_age
        state.last_error = ""

    async def _jwks_uri(self, issuer: TrustIssuer, state: _IssuerKeys, now: float) -> str:
        if issuer.jwks_url is not None:
            return issuer.jwks_url
        if state.jwks_uri is not None and now < state.jwks_uri_expires_at:
            return state.jwks_uri
        url = issuer.well_known_url()
        document, max_age = await self._get_json(url)
        if document.get("issuer") != issuer.issuer:
            raise _FetchError(
                f"the discovery document at {url} names issuer {show(document.get('issuer'))}, "
                f"not {issuer.issuer!r}"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise _FetchError(f"the discovery document at {url} has no jwks_uri")
        problem = url_problem(jwks_uri)
        if problem is not None:
            raise _FetchError(f"the discovery document at {url} gives a jwks_uri that {problem}")
        state.jwks_uri, state.jwks_uri_expires_at = jwks_uri, now + max_age
        return jwks_uri

    async def _get_json(self, url: str) -> tuple[dict[str, Any], float]:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout, follow_redirects=False, headers={"user-agent": "pathwarden"}
            )
        body = bytearray()
        try:
            async with asyncio.timeout(self._timeout):
                async with self._client.stream(
                    "GET", url, headers={"accept": "application/json"}
                ) as response:
                    if response.status_code != 200:
                        raise _FetchError(f"{url} answered HTTP {response.status_code}")
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_DOCUMENT_SIZE:
                            raise _FetchError(f"{url} sent more than {MAX_DOCUMENT_SIZE} bytes")
                    max_age = _max_age(response)
        except TimeoutError:
            raise _FetchError(f"{url} did not answer within {self._timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise _FetchError(f"cannot fetch {url}: {type(exc).__name__}") from None
        try:
            document = json.loads(body)
        except ValueError:
            raise _FetchError(f"{url} did not send JSON") from None
        if not isinstance(document, dict):
            raise _FetchError(f"{url} did not send a JSON object")
        return document, max_age
