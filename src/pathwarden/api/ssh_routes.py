"""SSH user certificates over HTTP: ``POST /v1/ssh/certificates``.

Theory of operation: a pipeline that holds a pathwarden token (from ``pathwarden
login``) sends its SSH public key and gets back an OpenSSH user certificate
signed by the gateway's SSH CA (:mod:`pathwarden.identity.ssh_ca`), which
``ssh -i key`` then presents to the gateway's SSH listener without a password.
The bearer token is the credential and decides everything the certificate
may do: the certificate is for the token's identity, carries the token's
claims (plus ``issued_with``: the bearer token's ref, and ``ssh_key``: the
key's fingerprint), expires no later than the token, and may narrow the
token's connection scope but never widen it. Behind the certificate is a new
token record, so revoking that ref (``pathwarden token revoke``) refuses the
certificate and ends its sessions; revoking the bearer token does not reach
certificates already issued with it.

The CA key is loaded once per data directory, on the first request.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints'
# annotations at run time.
import asyncio
import logging
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, Request

from pathwarden.api.auth import authenticate as _authenticate
from pathwarden.api.auth import bearer_token, store_unavailable
from pathwarden.api.errors import ApiError
from pathwarden.api.schemas import SshCertificateRequest, SshCertificateResponse, iso
from pathwarden.config import format_duration, parse_duration
from pathwarden.identity.authenticate import BearerGrant, IssueError
from pathwarden.identity.ssh_ca import SshCaError, SshCertificateAuthority, SshKeyError
from pathwarden.store import StoreError

if TYPE_CHECKING:
    from pathwarden.proxy.gateway import Gateway

__all__ = ["ssh_router"]

log = logging.getLogger(__name__)


def ssh_router(gateway: "Gateway") -> APIRouter:
    """The SSH certificate routes of ``gateway``'s API."""
    router = APIRouter()
    authorities: dict[Path, SshCertificateAuthority] = {}

    async def bearer(request: Request) -> BearerGrant:
        return await _authenticate(gateway, bearer_token(request), request)

    async def certificate_authority() -> SshCertificateAuthority:
        data_dir = Path(gateway.config.data_dir)
        ca = authorities.get(data_dir)
        if ca is None:
            try:
                ca = await asyncio.to_thread(SshCertificateAuthority.load_or_create, data_dir)
            except SshCaError as exc:
                log.error("API: the SSH CA key cannot be used: %s", exc)
                raise ApiError(500, "ssh_ca_unavailable",
                               "the gateway's SSH CA key cannot be used; see its log") from None
            authorities[data_dir] = ca
        return ca

    @router.post("/v1/ssh/certificates")
    async def issue_certificate(
        body: SshCertificateRequest, grant: Annotated[BearerGrant, Depends(bearer)],
    ) -> SshCertificateResponse:
        who = grant.identity
        ttl = _ttl(body.ttl)
        scope = grant.scope
        if body.connections is not None:
            if scope is not None:
                outside = [name for name in body.connections if name not in scope]
                if outside:
                    raise ApiError(
                        403, "scope_not_allowed",
                        f"token {who.token_ref} is scoped to {', '.join(scope)}; a certificate "
                        f"issued with it cannot reach {', '.join(outside)}")
            scope = tuple(body.connections)
        claims = dict(who.claims)
        if who.token_ref is not None:
            claims["issued_with"] = who.token_ref
        ca = await certificate_authority()
        try:
            issued = await gateway.authenticator.issue_ssh_certificate(
                ca, identity=who.name, public_key=body.public_key, ttl=ttl,
                connections=scope, claims=claims, not_after=who.expires_at)
        except SshKeyError as exc:
            raise ApiError(400, "invalid_request", f"public_key: {exc}") from None
        except IssueError as exc:
            raise ApiError(403, "not_allowed", f"pathwarden: {exc}") from None
        except StoreError as exc:
            raise store_unavailable("recording an SSH certificate's token", exc) from None
        log.info("API: SSH certificate for %s (token %s, expires %s, scope %s) issued with "
                 "token %s", issued.identity, issued.token_ref, iso(issued.expires_at),
                 ",".join(issued.connections) if issued.connections else "*", who.token_ref)
        return SshCertificateResponse.of(issued)

    return router


def _ttl(text: str | None) -> timedelta | None:
    if text is None:
        return None
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise ApiError(400, "invalid_request", f"ttl: {exc}") from None
    if value < timedelta(seconds=1):
        raise ApiError(400, "invalid_request",
                       f"ttl: a certificate lives at least 1s, not {format_duration(value)}")
    return value
