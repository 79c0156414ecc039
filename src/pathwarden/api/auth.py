"""Who is calling the API: bearer tokens, failed-login limits, store failures.

Shared by every router: a bearer token is checked like a login (the same
failure limiter as the PostgreSQL listener, per client address), and a store
that cannot answer is a 503 rather than a refusal.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from fastapi import Request

from pathwarden.api.errors import ApiError
from pathwarden.identity.authenticate import AuthError, BearerGrant
from pathwarden.identity.ratelimit import retry_message, source_key
from pathwarden.store import StoreError

if TYPE_CHECKING:
    from pathwarden.proxy.gateway import Gateway

log = logging.getLogger(__name__)

__all__ = ["authenticate", "bearer_token", "client_of", "store_unavailable", "throttle"]


def client_of(request: Request) -> str:
    """The client's address (proxies' forwarding headers are not trusted)."""
    return source_key(request.client.host) if request.client is not None else "unknown"


def throttle(gateway: Gateway, source: str, subject: str | None = None) -> None:
    """Refuse with 429 while ``source`` (or ``subject``) has failed too often."""
    wait = gateway.auth_limiter.check(source, subject)
    if wait is not None:
        raise ApiError(429, "rate_limited", retry_message(wait),
                       {"Retry-After": str(max(1, math.ceil(wait)))})


def bearer_token(request: Request) -> str:
    """The token of an ``Authorization: Bearer`` header; 401 when there is none."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401, "missing_token",
            "send a pathwarden token as 'Authorization: Bearer <token>' "
            "(issue one with: pathwarden token issue <identity>)",
            {"WWW-Authenticate": 'Bearer realm="pathwarden"'},
        )
    return token


async def authenticate(gateway: Gateway, token: str, request: Request) -> BearerGrant:
    """Who ``token`` belongs to; 401 (counted as a failed login) when it is refused."""
    source = client_of(request)
    throttle(gateway, source)
    try:
        grant = await gateway.authenticator.bearer_grant(token)
    except AuthError as exc:
        gateway.auth_limiter.failed(source)
        log.info("API %s: bearer token refused for %s (%s)", request.url.path, source,
                 exc.reason)
        message = ("the bearer token is not a pathwarden token" if exc.reason == "malformed"
                   else str(exc))
        raise ApiError(401, exc.reason, f"pathwarden: {message}",
                       {"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
    except StoreError as exc:
        raise store_unavailable("checking a bearer token", exc) from None
    gateway.auth_limiter.succeeded(source)
    return grant


def store_unavailable(action: str, exc: StoreError) -> ApiError:
    """A 503 for a store failure (logged; the message does not say more than that)."""
    log.error("API: store failure while %s: %s", action, exc)
    return ApiError(503, "store_unavailable",
                    "the gateway's store is unavailable; retry in a moment",
                    {"Retry-After": "5"})
