"""Request and response bodies of the HTTP API (pydantic v2)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from pathwarden.identity.authenticate import IssuedCertificate
from pathwarden.identity.tokens import IssuedToken
from pathwarden.store import TokenRecord

__all__ = [
    "ExchangeRequest",
    "IssueRequest",
    "RevokeRequest",
    "SshCertificateRequest",
    "SshCertificateResponse",
    "TokenInfo",
    "TokenResponse",
    "WhoAmI",
    "iso",
]

# A connection name as the configuration spells it; longer input is refused unread.
ConnectionName = Annotated[str, Field(min_length=1, max_length=63)]
Connections = Annotated[list[ConnectionName], Field(max_length=100)]
TtlText = Annotated[str, Field(min_length=1, max_length=32)]
# One OpenSSH public key line; a 16384-bit RSA key is about 2.8 KB.
PublicKeyText = Annotated[str, Field(min_length=1, max_length=8192)]


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, whole seconds."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExchangeRequest(_Request):
    """``POST /v1/token/exchange``: a CI provider's OIDC token for a pathwarden token."""

    oidc_token: Annotated[str, Field(min_length=1)]
    connections: Connections | None = None
    ttl: TtlText | None = None


class IssueRequest(_Request):
    """``POST /v1/tokens`` (admin): a token for a configured identity."""

    identity: Annotated[str, Field(min_length=1, max_length=63)]
    ttl: TtlText | None = None
    connections: Connections | None = None


class RevokeRequest(_Request):
    """``POST /v1/tokens/{token_ref}/revoke`` (admin)."""

    reason: Annotated[str, Field(max_length=500)] | None = None


class SshCertificateRequest(_Request):
    """``POST /v1/ssh/certificates``: certify a public key for the bearer token's identity."""

    public_key: PublicKeyText
    ttl: TtlText | None = None
    connections: Connections | None = None


class SshCertificateResponse(BaseModel):
    """A signed SSH user certificate (public: it is useless without the private key)."""

    certificate: str
    token_ref: str
    identity: str
    expires_at: str
    connections: list[str] | None

    @classmethod
    def of(cls, issued: IssuedCertificate) -> SshCertificateResponse:
        return cls(
            certificate=issued.certificate,
            token_ref=issued.token_ref,
            identity=issued.identity,
            expires_at=iso(issued.expires_at),
            connections=_names(issued.connections),
        )


class TokenResponse(BaseModel):
    """A freshly issued token: the secret itself, once, and what it grants."""

    token: str
    token_ref: str
    identity: str
    expires_at: str
    connections: list[str] | None
    claims: dict[str, str]

    @classmethod
    def of(cls, issued: IssuedToken) -> TokenResponse:
        return cls(
            token=issued.token,
            token_ref=issued.token_ref,
            identity=issued.identity,
            expires_at=iso(issued.expires_at),
            connections=list(issued.connections) if issued.connections is not None else None,
            claims=dict(issued.claims),
        )


class WhoAmI(BaseModel):
    """``GET /v1/whoami``: who a bearer token speaks for."""

    identity: str
    groups: list[str]
    claims: dict[str, str]
    token_ref: str | None
    expires_at: str | None
    connections: list[str]  # what the token may connect to now (identity and scope)
    token_scope: list[str] | None  # the token's own scope; None: unscoped
    admin: bool


class TokenInfo(BaseModel):
    """Metadata of an issued token (never the token)."""

    token_ref: str
    identity: str
    issued_at: str
    expires_at: str
    connections: list[str] | None
    claims: dict[str, str]
    state: Literal["valid", "expired", "revoked"]
    revoked_at: str | None
    revoked_reason: str | None

    @classmethod
    def of(cls, record: TokenRecord, now: datetime) -> TokenInfo:
        state: Literal["valid", "expired", "revoked"] = (
            "revoked" if record.revoked else "expired" if record.expired(now) else "valid"
        )
        return cls(
            token_ref=record.token_ref,
            identity=record.identity,
            issued_at=iso(record.issued_at),
            expires_at=iso(record.expires_at),
            connections=_names(record.connections),
            claims=dict(record.claims),
            state=state,
            revoked_at=iso(record.revoked_at) if record.revoked_at is not None else None,
            revoked_reason=record.revoked_reason,
        )


def _names(names: Sequence[str] | None) -> list[str] | None:
    return list(names) if names is not None else None
