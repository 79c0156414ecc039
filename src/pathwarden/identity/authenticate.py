"""Turn a client's (user, token, connection) into an :class:`~pathwarden.model.Identity`.

Theory of operation: the checks run cheapest and most fundamental first, and
the first failure wins:

1. the token verifies (signature, issuer, validity window; :mod:`.tokens`);
2. the login name the client sent is the identity the token was issued to
   (so a leaked token cannot be mistaken for another stage's in audit logs);
3. that identity is still configured;
4. the store knows the token and it is not revoked (open sessions are cut
   by the gateway's revocation check, not here);
5. the connection exists, is in the token's scope (``cns``) and is allowed
   for the identity.

Every refusal is an :class:`AuthError` whose message is safe to send to the
client: it names the token only by its ``token_ref`` and says how to fix the
problem. :meth:`Authenticator.verify_bearer` runs checks 1, 3 and 4 for a
token presented to the HTTP API, where there is no login name or connection.
Store failures are not authentication failures: :class:`StoreError`
propagates so the caller can report an internal error (and still refuse).

:meth:`Authenticator.issue_token` is the single place that mints tokens under
the configured caps and records them in the store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pathwarden.config import GatewayConfig, IdentityConfig, format_duration
from pathwarden.identity.tokens import IssuedToken, TokenAuthority, TokenClaims, TokenError
from pathwarden.model import Identity
from pathwarden.store import Store, TokenRecord

__all__ = ["AuthError", "Authenticator", "BearerGrant", "IssueError"]


class AuthError(Exception):
    """Authentication refused; the message may be shown to the client.

    ``reason`` is a stable code: a :class:`TokenError` reason, or one of
    ``identity_mismatch``, ``unknown_identity``, ``unknown_token``, ``revoked``,
    ``unknown_connection``, ``out_of_token_scope``, ``not_allowed``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class IssueError(Exception):
    """A token request exceeds what the configuration allows."""


@dataclass(frozen=True, slots=True)
class BearerGrant:
    """What a token presented to the HTTP API grants."""

    identity: Identity
    admin: bool  # identities.<name>.admin
    scope: tuple[str, ...] | None  # the token's own scope (None: unscoped)
    usable: tuple[str, ...]  # configured connections both token and identity allow


class Authenticator:
    """Checks tokens against configuration and the store; issues tokens within limits."""

    def __init__(self, config: GatewayConfig, authority: TokenAuthority, store: Store) -> None:
        self._config = config
        self._authority = authority
        self._store = store

    async def authenticate(self, *, user: str, token: str, connection: str) -> Identity:
        """Return who is connecting, or raise :class:`AuthError` saying why not."""
        claims = self._verify(token)
        if user != claims.identity:
            raise AuthError(
                "identity_mismatch",
                f"token {claims.token_ref} was issued for {claims.identity}, not {user}; "
                f"connect as user {claims.identity} or issue a token for {user}",
            )
        identity = await self._known(claims)
        ref = claims.token_ref
        if connection not in self._config.connections:
            raise AuthError(
                "unknown_connection",
                f"unknown connection {connection!r} (the database name); "
                f"available to {claims.identity}: {_allowed_names(self._config, identity)}",
            )
        if claims.connections is not None and connection not in claims.connections:
            raise AuthError(
                "out_of_token_scope",
                f"token {ref} is scoped to {', '.join(claims.connections) or '(nothing)'}, "
                f"not {connection}; issue one with: pathwarden token issue "
                f"{claims.identity} --connection {connection}",
            )
        if identity.connections is not None and connection not in identity.connections:
            raise AuthError(
                "not_allowed",
                f"identity {claims.identity} may not use connection {connection} "
                f"(allowed: {', '.join(identity.connections) or 'none'})",
            )
        return _identity(claims, identity)

    async def verify_bearer(self, token: str) -> Identity:
        """Who presents ``token`` to the HTTP API: checks 1, 3 and 4 of :meth:`authenticate`.

        Raises :class:`AuthError` (signature, configured identity, known and not
        revoked) or :class:`StoreError`.
        """
        return (await self.bearer_grant(token)).identity

    async def bearer_grant(self, token: str) -> BearerGrant:
        """:meth:`verify_bearer`, plus the connections the token may use."""
        claims = self._verify(token)
        settings = await self._known(claims)
        names = sorted(self._config.connections)
        if settings.connections is not None:
            names = [n for n in names if n in settings.connections]
        if claims.connections is not None:
            names = [n for n in names if n in claims.connections]
        return BearerGrant(
            identity=_identity(claims, settings),
            admin=settings.admin,
            scope=claims.connections,
            usable=tuple(names),
        )

    def _verify(self, token: str) -> TokenClaims:
        try:
            return self._authority.verify(token)
        except TokenError as exc:
            raise AuthError(exc.reason, str(exc)) from None

    async def _known(self, claims: TokenClaims) -> IdentityConfig:
        """The configuration of a verified token's identity, once the store vouches for it."""
        ref = claims.token_ref
        identity = self._config.identities.get(claims.identity)
        if identity is None:
            raise AuthError(
                "unknown_identity",
                f"identity {claims.identity} (token {ref}) is not configured on this gateway",
            )
        record = await self._store.token_status(ref)
        if record is None:
            raise AuthError(
                "unknown_token",
                f"token {ref} is not known to this gateway's store; "
                f"issue a new one with: pathwarden token issue {claims.identity}",
            )
        if record.revoked_at is not None:
            why = f" ({record.revoked_reason})" if record.revoked_reason else ""
            raise AuthError(
                "revoked",
                f"token {ref} was revoked at {_iso(record.revoked_at)}{why}",
            )
        return identity

    async def issue_token(
        self,
        identity: str,
        ttl: timedelta | None = None,
        connections: Sequence[str] | None = None,
        *,
        claims: Mapping[str, str] | None = None,
        now: datetime | None = None,
    ) -> IssuedToken:
        """Mint a token for ``identity`` within the configured caps and record it.

        ``ttl`` defaults to ``tokens.default_ttl`` capped by the identity's
        ``max_token_ttl``; ``connections`` None means unscoped. Raises
        :class:`IssueError` for requests the configuration does not allow.
        """
        settings = self._config.identities.get(identity)
        if settings is None:
            raise IssueError(
                f"unknown identity {identity!r}; configured identities: "
                f"{', '.join(sorted(self._config.identities)) or '(none)'}"
            )
        cap = min(settings.max_token_ttl, self._config.tokens.max_ttl)
        if ttl is None:
            ttl = min(self._config.tokens.default_ttl, cap)
        elif ttl <= timedelta(0):
            raise IssueError("token lifetime must be positive")
        elif ttl > cap:
            source = (
                f"identities.{identity}.max_token_ttl"
                if settings.max_token_ttl <= self._config.tokens.max_ttl
                else "tokens.max_ttl"
            )
            raise IssueError(
                f"requested lifetime {format_duration(ttl)} exceeds the {format_duration(cap)} "
                f"cap for {identity} ({source}); ask for {format_duration(cap)} or less"
            )
        scope = None if connections is None else tuple(dict.fromkeys(connections))
        if scope is not None:
            if not scope:
                raise IssueError("a scoped token needs at least one connection")
            for name in scope:
                if name not in self._config.connections:
                    raise IssueError(
                        f"unknown connection {name!r}; configured connections: "
                        f"{', '.join(sorted(self._config.connections)) or '(none)'}"
                    )
                if settings.connections is not None and name not in settings.connections:
                    raise IssueError(
                        f"identity {identity} may not use connection {name} "
                        f"(allowed: {', '.join(settings.connections) or 'none'})"
                    )
        issued = self._authority.issue(identity, ttl, scope, claims, now=now)
        await self._store.record_token(
            TokenRecord(
                token_ref=issued.token_ref,
                identity=identity,
                issued_at=issued.issued_at,
                expires_at=issued.expires_at,
                connections=issued.connections,
                claims=issued.claims,
            )
        )
        return issued


def _identity(claims: TokenClaims, settings: IdentityConfig) -> Identity:
    return Identity(
        name=claims.identity,
        groups=tuple(settings.groups),
        labels=dict(settings.labels),
        claims=claims.claims,
        token_ref=claims.token_ref,
        expires_at=claims.expires_at,
    )


def _allowed_names(config: GatewayConfig, identity: IdentityConfig) -> str:
    names = identity.connections if identity.connections is not None else config.connections
    return ", ".join(sorted(names)) or "(none)"


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
