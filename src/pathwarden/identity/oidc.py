"""OIDC federation: a CI job exchanges its provider's OIDC token for a pathwarden identity.

Theory of operation: GitHub Actions, GitLab CI and other CI systems give each
job a JWT signed by the provider (OpenID Connect Core 1.0, RFC 7519) whose
claims say which repository, branch, environment and workflow the job runs.
:meth:`OidcExchange.exchange` verifies such a token and maps it, through the
ordered rules of the configured :class:`~pathwarden.config.trust.TrustIssuer`, to the
identity and lifetime of a pathwarden token; minting that token is the
caller's job (:meth:`~.authenticate.Authenticator.issue_token`).

Verification, in order; the first failure is an :class:`ExchangeError` whose
``check`` names it:

1. size (``too_large``, 16 KiB) and shape (``malformed``);
2. the unverified ``iss`` selects the trust issuer (``unknown_issuer``); it
   must equal the configured URL exactly (``issuer``);
3. the header ``alg`` is in the issuer's allow-list, which can never hold
   ``none`` or HMAC algorithms (``algorithm``);
4. the key: the JWKS entry named by ``kid``, or the only suitable key when the
   token has no ``kid`` (``unknown_key``); its type must fit ``alg`` (RSA for
   RS/PS, the named curve for ES, Ed25519/Ed448 for EdDSA), which defeats
   HS256 tokens "signed" with the public key (``algorithm``);
5. the signature (``signature``), ``aud`` contains the configured audience
   (``audience``);
6. times: ``exp`` is required and checked strictly (``expired``); ``nbf``
   (``not_yet_valid``) and ``iat`` (``issued_in_future``) allow ``clock_skew``;
7. the first matching rule (``no_matching_rule``).

:class:`JwksCache` fetches keys over HTTP (``jwks_unavailable`` when it never
could). Messages and logs never contain the token; values taken from it are
truncated and quoted.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import MappingProxyType
from typing import Any

import jwt

from pathwarden.config.durations import format_duration
from pathwarden.config.trust import (
    TrustIssuer,
    TrustRule,
    claim_text,
    kept_claims,
    match_rule,
)
from pathwarden.identity.oidc_jwks import ExchangeError, JwksCache, show

__all__ = [
    "MAX_TOKEN_SIZE",
    "ExchangeError",
    "ExchangeResult",
    "JwksCache",
    "OidcExchange",
    "TrustIssuer",
    "TrustRule",
]

log = logging.getLogger(__name__)

MAX_TOKEN_SIZE = 16 * 1024


@dataclass(frozen=True, slots=True)
class ExchangeResult:
    """Who an accepted OIDC token becomes, and for how long at most."""

    issuer_name: str
    identity: str
    ttl: timedelta  # min(rule ttl, the provider token's remaining life), whole seconds
    claims: Mapping[str, str]
    rule_number: int = 1  # 1-based position of the matching rule


# -- the exchange ---------------------------------------------------------------------


class OidcExchange:
    """Verifies CI providers' OIDC tokens against the trusted issuers and their rules.

    ``clock`` returns UNIX seconds; the exchange owns (and :meth:`aclose` closes)
    a :class:`JwksCache` it creates itself, not one passed in.
    """

    def __init__(
        self,
        issuers: Sequence[TrustIssuer],
        *,
        jwks: JwksCache | None = None,
        clock: Callable[[], float] = time.time,
        max_token_size: int = MAX_TOKEN_SIZE,
    ) -> None:
        self._by_iss: dict[str, TrustIssuer] = {}
        names: set[str] = set()
        for issuer in issuers:
            key = issuer.issuer.rstrip("/")
            if key in self._by_iss or issuer.name in names:
                raise ValueError(f"trust issuer {issuer.name} ({issuer.issuer}) is listed twice")
            self._by_iss[key] = issuer
            names.add(issuer.name)
        self._own_jwks = jwks is None
        self._jwks = jwks if jwks is not None else JwksCache(clock=clock)
        self._clock = clock
        self._max_size = max_token_size

    async def aclose(self) -> None:
        if self._own_jwks:
            await self._jwks.aclose()

    async def exchange(self, token: str) -> ExchangeResult:
        """Verify ``token`` and map it to an identity; raises :class:`ExchangeError`."""
        try:
            result = await self._exchange(token)
        except ExchangeError as exc:
            log.info("OIDC exchange refused (%s) for trust issuer %s", exc.check, exc.issuer or "-")
            raise
        log.info(
            "OIDC token of trust issuer %s (sub %s) matched rule %d: identity %s for %s",
            result.issuer_name,
            show(result.claims.get("sub", "")),
            result.rule_number,
            result.identity,
            format_duration(result.ttl),
        )
        return result

    async def _exchange(self, token: str) -> ExchangeResult:
        if not isinstance(token, str) or len(token) > self._max_size:
            raise ExchangeError("too_large", f"the token is larger than {self._max_size} bytes")
        header, unverified = _peek(token)
        issuer = self._issuer_for(unverified.get("iss"))
        name = issuer.name
        algorithm = header.get("alg")
        if not isinstance(algorithm, str):
            raise ExchangeError("malformed", "the token header has no 'alg'", name)
        if algorithm not in issuer.algorithms:
            if algorithm.lower() == "none":
                detail = "unsigned tokens (alg 'none') are never accepted"
            else:
                detail = (
                    f"the token is signed with {show(algorithm, 20)}, which trust issuer "
                    f"{name} does not allow (allowed: {', '.join(issuer.algorithms)})"
                )
            raise ExchangeError("algorithm", detail, name)
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise ExchangeError("malformed", "the token header's 'kid' is not a string", name)
        key = await self._jwks.key_for(issuer, kid, algorithm)
        claims = _verify(token, key, algorithm, issuer)
        now = self._clock()
        remaining = _check_times(claims, now, issuer)
        found = match_rule(issuer, claims)
        if found is None:
            raise ExchangeError(
                "no_matching_rule",
                f"the token of trust issuer {name} (sub {show(claim_text(claims.get('sub')))}) "
                f"matches none of its {len(issuer.rules)} rules",
                name,
            )
        number, rule = found
        ttl = timedelta(seconds=math.floor(min(rule.ttl.total_seconds(), remaining)))
        if ttl < timedelta(seconds=1):
            raise ExchangeError("expired", "the token expires in less than a second", name)
        return ExchangeResult(
            issuer_name=name,
            identity=rule.identity,
            ttl=ttl,
            claims=MappingProxyType(kept_claims(issuer.provider, rule, claims)),
            rule_number=number,
        )

    def _issuer_for(self, iss: object) -> TrustIssuer:
        if not isinstance(iss, str) or not iss:
            raise ExchangeError("malformed", "the token has no 'iss' (issuer) claim")
        issuer = self._by_iss.get(iss.rstrip("/"))
        if issuer is None:
            raise ExchangeError(
                "unknown_issuer", f"issuer {show(iss, 100)} is not trusted by this gateway"
            )
        if iss != issuer.issuer:
            raise ExchangeError(
                "issuer",
                f"the token's issuer {show(iss, 100)} differs from the configured "
                f"{issuer.issuer!r} of trust issuer {issuer.name}",
                issuer.name,
            )
        return issuer


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a token, not yet verified."""
    if token.count(".") != 2:
        raise ExchangeError("malformed", "the token is not a JWT (three dot-separated parts)")
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, ValueError, TypeError):
        raise ExchangeError("malformed", "the token is not a decodable JWT") from None
    if not isinstance(claims, dict):
        raise ExchangeError("malformed", "the token's claims are not a JSON object")
    return header, claims


def _verify(token: str, key: Any, algorithm: str, issuer: TrustIssuer) -> dict[str, Any]:
    name = issuer.name
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience=issuer.audience,
            issuer=issuer.issuer,
            options={
                "require": ["exp", "iss", "aud"],
                "verify_exp": False,  # the time checks are ours, against the injected clock
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise ExchangeError(
            "signature", f"the signature does not verify with the keys of trust issuer {name}", name
        ) from None
    except jwt.MissingRequiredClaimError as exc:
        if exc.claim == "aud":
            raise ExchangeError(
                "audience",
                f"the token has no 'aud'; trust issuer {name} requires {issuer.audience!r}",
                name,
            ) from None
        raise ExchangeError("malformed", f"the token has no {exc.claim!r} claim", name) from None
    except jwt.InvalidAudienceError:
        raise ExchangeError(
            "audience", f"the token was not minted for audience {issuer.audience!r}", name
        ) from None
    except jwt.InvalidIssuerError:
        detail = f"the token's issuer is not {issuer.issuer!r}"
        raise ExchangeError("issuer", detail, name) from None
    except (jwt.InvalidAlgorithmError, jwt.InvalidKeyError):
        detail = f"algorithm {algorithm} does not fit the key"
        raise ExchangeError("algorithm", detail, name) from None
    except jwt.PyJWTError:
        raise ExchangeError("malformed", "the token's claims could not be read", name) from None
    return claims


def _check_times(claims: Mapping[str, Any], now: float, issuer: TrustIssuer) -> float:
    """Check exp/nbf/iat; return the seconds of life the token has left."""
    name, skew = issuer.name, issuer.clock_skew.total_seconds()
    times: dict[str, float] = {}
    for claim in ("exp", "nbf", "iat"):
        value = claims.get(claim)
        if value is None and claim != "exp":
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ExchangeError("malformed", f"the token's {claim!r} is not a timestamp", name)
        times[claim] = float(value)
    if now >= times["exp"]:
        raise ExchangeError("expired", f"the token expired {_ago(now - times['exp'])} ago", name)
    if "nbf" in times and now + skew < times["nbf"]:
        raise ExchangeError(
            "not_yet_valid",
            f"the token is not valid for another {_ago(times['nbf'] - now)} (nbf), beyond "
            f"the {format_duration(issuer.clock_skew)} clock skew allowed",
            name,
        )
    if "iat" in times and times["iat"] > now + skew:
        raise ExchangeError(
            "issued_in_future",
            f"the token claims to be issued {_ago(times['iat'] - now)} in the future (iat), "
            f"beyond the {format_duration(issuer.clock_skew)} clock skew allowed",
            name,
        )
    return times["exp"] - now


def _ago(seconds: float) -> str:
    return format_duration(timedelta(seconds=max(1, round(seconds))))
