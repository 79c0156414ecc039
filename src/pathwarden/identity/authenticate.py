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

SSH user certificates (:mod:`.ssh_ca`) are backed by a token record:
:meth:`Authenticator.issue_ssh_certificate` mints a token under the same caps
as :meth:`Authenticator.issue_token`, records it, discards the token and signs
a certificate whose key id names the token's ref and whose validity is the
token's. :meth:`Authenticator.authenticate_ssh_certificate` runs checks 4, 2,
3 and 5 on the record a presented certificate names (its signature and
validity window were checked by the SSH server), with the same helpers, so a
revoked or expired token refuses its certificates too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pathwarden.config import GatewayConfig, IdentityConfig, format_duration
from pathwarden.identity.ssh_ca import (
    SshCertificateAuthority,
    key_id_for,
    parse_user_public_key,
    token_ref_of,
)
from pathwarden.identity.tokens import (
    LEEWAY,
    IssuedToken,
    TokenAuthority,
    TokenClaims,
    TokenError,
)
from pathwarden.model import Identity
from pathwarden.store import Store, TokenRecord

__all__ = ["AuthError", "Authenticator", "BearerGrant", "IssueError", "IssuedCertificate"]


class AuthError(Exception):
    """Authentication refused; the message may be shown to the client.

    ``reason`` is a stable code: a :class:`TokenError` reason, or one of
    ``identity_mismatch``, ``unknown_identity``, ``unknown_token``, ``revoked``,
    ``unknown_connection``, ``out_of_token_scope``, ``not_allowed``; for SSH
    certificates also ``malformed`` (not a pathwarden key id), ``expired`` (the
    token behind it) and ``principal_mismatch``.
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


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A freshly signed SSH user certificate and the token record behind it."""

    certificate: str  # the OpenSSH line: "ssh-ed25519-cert-v01@openssh.com AAAA... comment"
    token_ref: str
    identity: str
    expires_at: datetime
    connections: tuple[str, ...] | None  # the token's scope (None: unscoped)


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
        self._check_connection(
            identity=claims.identity, ref=claims.token_ref, scope=claims.connections,
            settings=identity, connection=connection, named_by="the database name",
            reissue=f"pathwarden token issue {claims.identity} --connection {connection}",
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
        settings = self._configured(claims.identity, claims.token_ref)
        await self._record(claims.token_ref, f"pathwarden token issue {claims.identity}")
        return settings

    def _configured(self, identity: str, ref: str) -> IdentityConfig:
        """The configuration of ``identity`` (token ``ref``'s), or ``unknown_identity``."""
        settings = self._config.identities.get(identity)
        if settings is None:
            raise AuthError(
                "unknown_identity",
                f"identity {identity} (token {ref}) is not configured on this gateway",
            )
        return settings

    async def _record(self, ref: str, reissue: str) -> TokenRecord:
        """The store's record of token ``ref``: ``unknown_token`` or ``revoked`` if not usable.

        ``reissue`` is the command that gets a new credential, for the message.
        """
        record = await self._store.token_status(ref)
        if record is None:
            raise AuthError(
                "unknown_token",
                f"token {ref} is not known to this gateway's store; "
                f"issue a new one with: {reissue}",
            )
        if record.revoked_at is not None:
            why = f" ({record.revoked_reason})" if record.revoked_reason else ""
            raise AuthError(
                "revoked",
                f"token {ref} was revoked at {_iso(record.revoked_at)}{why}",
            )
        return record

    def _check_connection(
        self, *, identity: str, ref: str, scope: tuple[str, ...] | None,
        settings: IdentityConfig, connection: str, named_by: str, reissue: str,
    ) -> None:
        """Check 5: ``connection`` exists, is in the token's scope and allowed for the identity.

        ``named_by`` says where the client named the connection; ``reissue`` is
        the command that gets a credential scoped to it.
        """
        if connection not in self._config.connections:
            raise AuthError(
                "unknown_connection",
                f"unknown connection {connection!r} ({named_by}); "
                f"available to {identity}: {_allowed_names(self._config, settings)}",
            )
        if scope is not None and connection not in scope:
            raise AuthError(
                "out_of_token_scope",
                f"token {ref} is scoped to {', '.join(scope) or '(nothing)'}, "
                f"not {connection}; issue one with: {reissue}",
            )
        if settings.connections is not None and connection not in settings.connections:
            raise AuthError(
                "not_allowed",
                f"identity {identity} may not use connection {connection} "
                f"(allowed: {', '.join(settings.connections) or 'none'})",
            )

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
        settings = self._issuable(identity)
        ttl = self._lifetime(identity, settings, ttl)
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

    def _issuable(self, identity: str) -> IdentityConfig:
        settings = self._config.identities.get(identity)
        if settings is None:
            raise IssueError(
                f"unknown identity {identity!r}; configured identities: "
                f"{', '.join(sorted(self._config.identities)) or '(none)'}"
            )
        return settings

    def _lifetime(self, identity: str, settings: IdentityConfig,
                  ttl: timedelta | None) -> timedelta:
        """``ttl`` if the caps allow it; without one, ``tokens.default_ttl`` capped."""
        cap = min(settings.max_token_ttl, self._config.tokens.max_ttl)
        if ttl is None:
            return min(self._config.tokens.default_ttl, cap)
        if ttl <= timedelta(0):
            raise IssueError("token lifetime must be positive")
        if ttl > cap:
            source = (
                f"identities.{identity}.max_token_ttl"
                if settings.max_token_ttl <= self._config.tokens.max_ttl
                else "tokens.max_ttl"
            )
            raise IssueError(
                f"requested lifetime {format_duration(ttl)} exceeds the {format_duration(cap)} "
                f"cap for {identity} ({source}); ask for {format_duration(cap)} or less"
            )
        return ttl

    # -- SSH certificates -------------------------------------------------------

    async def issue_ssh_certificate(
        self,
        ca: SshCertificateAuthority,
        *,
        identity: str,
        public_key: str,
        ttl: timedelta | None,
        connections: Sequence[str] | None,
        claims: Mapping[str, str] | None = None,
        source_address: Sequence[str] | None = None,
        not_after: datetime | None = None,
        now: datetime | None = None,
    ) -> IssuedCertificate:
        """Certify ``public_key`` (an OpenSSH public key line) for ``identity``.

        The certificate is backed by a token minted and recorded as
        :meth:`issue_token` does (same caps, same scope checks; the token itself
        is discarded) and carries the claim ``ssh_key`` (the key's SHA256
        fingerprint) besides ``claims``. ``not_after`` (the expiry of the token
        a remote caller presented) shortens the lifetime so the certificate
        cannot outlive it. ``source_address``: CIDR networks the certificate may
        be used from. Raises :class:`~.ssh_ca.SshKeyError` for a key that cannot
        be certified and :class:`IssueError` for what the configuration does
        not allow.
        """
        key = parse_user_public_key(public_key)
        settings = self._issuable(identity)
        lifetime = self._lifetime(identity, settings, ttl)
        if not_after is not None:
            left = not_after - (now or datetime.now(UTC))
            if left < timedelta(seconds=1):
                raise IssueError(
                    f"the token asking for the certificate expires at {_iso(not_after)}; "
                    f"a certificate cannot outlive it: get a new token first"
                )
            lifetime = min(lifetime, timedelta(seconds=int(left.total_seconds())))
        extra = {**(claims or {}), "ssh_key": key.get_fingerprint("sha256")}
        issued = await self.issue_token(identity, lifetime, connections, claims=extra, now=now)
        certificate = ca.sign(
            key,
            identity=identity,
            key_id=key_id_for(issued.token_ref),
            # A token is accepted LEEWAY before it was issued (lagging clocks); so is this.
            valid_after=issued.issued_at - LEEWAY,
            valid_before=issued.expires_at,
            source_address=source_address,
        )
        return IssuedCertificate(
            certificate=certificate.export_certificate("openssh").decode("ascii").strip(),
            token_ref=issued.token_ref,
            identity=identity,
            expires_at=issued.expires_at,
            connections=issued.connections,
        )

    async def authenticate_ssh_certificate(
        self,
        *,
        key_id: str,
        principals: Sequence[str],
        valid_before: datetime,
        connection: str,
        user_identity: str | None,
    ) -> Identity:
        """Who logs in with a certificate this gateway's CA signed, or :class:`AuthError`.

        The SSH server has checked the CA signature, the validity window, the
        source address and the client's possession of the key. Here: the key
        id names a token the store knows, not revoked (4) or expired; the
        certificate's principals hold that token's identity, and so does the
        SSH user name when it names one (``user_identity``, 2); the identity is
        configured (3); ``connection`` is allowed by the token's scope and the
        identity (5). The identity carries the token's ref, claims and expiry
        (the earlier of the token's and the certificate's).
        """
        ref = token_ref_of(key_id)
        if ref is None:
            raise AuthError(
                "malformed",
                f"certificate key id {key_id[:80]!r} is not a pathwarden key id "
                f"(pathwarden:<token ref>); get a certificate with: pathwarden ssh cert",
            )
        record = await self._record(
            ref, f"pathwarden ssh cert {_or_identity(user_identity)} --key KEY.pub")
        name = record.identity
        now = datetime.now(UTC)
        expires_at = min(record.expires_at, valid_before)
        if now >= expires_at:
            raise AuthError(
                "expired",
                f"token {ref} behind this certificate expired at {_iso(expires_at)}; "
                f"get a new certificate with: pathwarden ssh cert {name} --key KEY.pub",
            )
        if name not in principals:
            raise AuthError(
                "principal_mismatch",
                f"the certificate of token {ref} names {', '.join(principals) or 'no one'}, "
                f"but the token was issued for {name}; get a new certificate with: "
                f"pathwarden ssh cert {name} --key KEY.pub",
            )
        if user_identity is not None and user_identity != name:
            raise AuthError(
                "identity_mismatch",
                f"certificate {ref} was issued for {name}, not {user_identity}; log in as "
                f"{name}+{connection} (or just {connection})",
            )
        settings = self._configured(name, ref)
        self._check_connection(
            identity=name, ref=ref, scope=record.connections, settings=settings,
            connection=connection, named_by="the SSH user name",
            reissue=f"pathwarden ssh cert {name} --key KEY.pub --connection {connection}",
        )
        return _identity_of(name, settings, record.claims, ref, expires_at)


def _identity(claims: TokenClaims, settings: IdentityConfig) -> Identity:
    return _identity_of(claims.identity, settings, claims.claims, claims.token_ref,
                        claims.expires_at)


def _identity_of(name: str, settings: IdentityConfig, claims: Mapping[str, str], ref: str,
                 expires_at: datetime) -> Identity:
    return Identity(
        name=name,
        groups=tuple(settings.groups),
        labels=dict(settings.labels),
        claims=claims,
        token_ref=ref,
        expires_at=expires_at,
    )


def _allowed_names(config: GatewayConfig, identity: IdentityConfig) -> str:
    names = identity.connections if identity.connections is not None else config.connections
    return ", ".join(sorted(names)) or "(none)"


def _or_identity(identity: str | None) -> str:
    return identity if identity is not None else "IDENTITY"


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
