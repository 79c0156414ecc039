"""Gateway tokens: short-lived EdDSA-signed JWTs that clients send as their password.

Theory of operation: the gateway holds one Ed25519 key pair in
``<data_dir>/keys/token-signing.key``. A token is a plain JWT (RFC 7519) signed
with EdDSA (RFC 8037) carrying ``iss`` (always ``pathwarden``), ``sub`` (the
identity), ``iat``/``nbf``/``exp``, a random 128-bit ``jti``, optionally
``cns`` (the connections it is scoped to; absent means unscoped) and ``clm``
(extra string claims such as a CI run id). The ``kid`` header is the key's
fingerprint so a key rotation can be recognised.

Verification accepts only ``alg: EdDSA`` with our key: ``none``, HS256 and
friends are refused before any claim is looked at. Time checks are done here,
not by PyJWT, so that callers (and tests) can pass ``now``; they allow
``LEEWAY`` (30 s) of clock skew in both directions, which means a token is
still accepted up to 30 s after its ``exp``.

The token itself is never stored or logged: ``token_ref`` (16 hex chars of
sha256(jti)) identifies it in the store, in audit records and in errors.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pathwarden.identity.keyfiles import LooseKeyFile, create_secret_file, read_secret_file

__all__ = [
    "ISSUER",
    "LEEWAY",
    "IssuedToken",
    "SigningKeyError",
    "TokenAuthority",
    "TokenClaims",
    "TokenError",
    "TokenErrorReason",
    "token_ref_for",
]

ISSUER = "pathwarden"
LEEWAY = timedelta(seconds=30)
KEY_FILE = Path("keys") / "token-signing.key"
# Real tokens are ~400 bytes; refusing huge input bounds the work an
# unauthenticated client can cause.
MAX_TOKEN_LENGTH = 8192
_REQUIRED = ("iss", "sub", "iat", "nbf", "exp", "jti")

TokenErrorReason = Literal[
    "malformed", "bad_signature", "expired", "not_yet_valid", "wrong_issuer", "unknown_key"
]
_EMPTY: Mapping[str, str] = MappingProxyType({})


class TokenError(Exception):
    """A token was refused. ``reason`` is a stable code; the message never contains the token."""

    def __init__(self, reason: TokenErrorReason, message: str) -> None:
        super().__init__(message)
        self.reason: TokenErrorReason = reason


class SigningKeyError(Exception):
    """The signing key could not be read, created or trusted."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a verified token says."""

    identity: str
    token_ref: str
    issued_at: datetime
    expires_at: datetime
    connections: tuple[str, ...] | None  # None: not scoped to particular connections
    claims: Mapping[str, str] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly minted token. ``token`` is the secret; it is kept out of ``repr``."""

    token: str = field(repr=False)
    token_ref: str
    identity: str
    issued_at: datetime
    expires_at: datetime
    connections: tuple[str, ...] | None
    claims: Mapping[str, str] = field(default_factory=lambda: _EMPTY)


def token_ref_for(jti: str) -> str:
    """The stored/logged handle of a token: 16 hex chars of sha256(jti)."""
    return hashlib.sha256(jti.encode()).hexdigest()[:16]


def _fingerprint(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _span(delta: timedelta) -> str:
    seconds = int(abs(delta.total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def _utc_now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


class TokenAuthority:
    """Issues and verifies gateway tokens with one Ed25519 key."""

    def __init__(
        self, public_key: Ed25519PublicKey, private_key: Ed25519PrivateKey | None = None
    ) -> None:
        self._public_key = public_key
        self._private_key = private_key
        self.key_id = _fingerprint(public_key)

    # -- construction ---------------------------------------------------------

    @classmethod
    def load_or_create(cls, data_dir: Path) -> TokenAuthority:
        """Load ``<data_dir>/keys/token-signing.key``, creating it on first use.

        Creation is atomic and race-free: the key is written to a private temp
        file and hard-linked into place, which fails if another process got
        there first, in which case that process's key is loaded instead.
        """
        path = Path(data_dir) / KEY_FILE
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise SigningKeyError(
                f"cannot create key directory {path.parent}: {exc.strerror}"
            ) from None
        if not path.exists():
            _create_key_file(path)
        return cls.from_private_key(_read_private_key(path))

    @classmethod
    def from_private_key(cls, private_key: Ed25519PrivateKey) -> TokenAuthority:
        return cls(private_key.public_key(), private_key)

    @classmethod
    def from_public_key(cls, public_key: Ed25519PublicKey | bytes) -> TokenAuthority:
        """A verify-only authority; ``public_key`` may be PEM (SubjectPublicKeyInfo) bytes."""
        if isinstance(public_key, bytes):
            loaded = serialization.load_pem_public_key(public_key)
            if not isinstance(loaded, Ed25519PublicKey):
                raise SigningKeyError("public key is not an Ed25519 key")
            public_key = loaded
        return cls(public_key)

    @property
    def signing_key(self) -> Ed25519PrivateKey | None:
        """The private key (None for a verify-only authority): also signs audit chain heads."""
        return self._private_key

    def public_key_pem(self) -> bytes:
        return self._public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    # -- issuing --------------------------------------------------------------

    def issue(
        self,
        identity: str,
        ttl: timedelta,
        connections: Sequence[str] | None = None,
        claims: Mapping[str, str] | None = None,
        now: datetime | None = None,
    ) -> IssuedToken:
        """Mint a token for ``identity`` valid for ``ttl`` (no policy checks here)."""
        if self._private_key is None:
            raise SigningKeyError("this token authority has no private key; it can only verify")
        if ttl <= timedelta(0):
            raise ValueError("ttl must be positive")
        # JWT times are whole seconds; truncate so the returned values equal what
        # verify() will later report.
        issued_at = _utc_now(now).replace(microsecond=0)
        expires_at = issued_at + timedelta(seconds=int(ttl.total_seconds()) or 1)
        jti = secrets.token_urlsafe(16)
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "sub": identity,
            "iat": int(issued_at.timestamp()),
            "nbf": int(issued_at.timestamp()),
            "exp": int(expires_at.timestamp()),
            "jti": jti,
        }
        scope = tuple(connections) if connections is not None else None
        if scope is not None:
            payload["cns"] = list(scope)
        extra = MappingProxyType(dict(claims or {}))
        if extra:
            payload["clm"] = dict(extra)
        token = jwt.encode(
            payload, self._private_key, algorithm="EdDSA", headers={"kid": self.key_id}
        )
        return IssuedToken(
            token=token,
            token_ref=token_ref_for(jti),
            identity=identity,
            issued_at=issued_at,
            expires_at=expires_at,
            connections=scope,
            claims=extra,
        )

    # -- verifying ------------------------------------------------------------

    def verify(self, token: str, now: datetime | None = None) -> TokenClaims:
        """Check signature, issuer and validity window; raises :class:`TokenError`."""
        moment = _utc_now(now)
        if not token or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
            raise TokenError("malformed", "the password is not a pathwarden token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("malformed", "the password is not a pathwarden token") from None
        if header.get("alg") != "EdDSA":
            raise TokenError(
                "bad_signature",
                f"token uses algorithm {str(header.get('alg'))[:20]!r}; only EdDSA tokens "
                f"issued by this gateway are accepted",
            )
        if header.get("kid") != self.key_id:
            raise TokenError(
                "unknown_key",
                "token was signed by a different gateway key (rotated or another "
                "installation); issue a new token from this gateway",
            )
        try:
            payload = jwt.decode(
                token,
                self._public_key,
                algorithms=["EdDSA"],
                issuer=ISSUER,
                options={
                    "require": list(_REQUIRED),
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise TokenError("bad_signature", "token signature is invalid") from None
        except jwt.InvalidIssuerError:
            raise TokenError(
                "wrong_issuer", "token was not issued by pathwarden (wrong issuer)"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError("malformed", f"token lacks the {exc.claim!r} claim") from None
        except jwt.PyJWTError:
            raise TokenError("malformed", "token could not be decoded") from None
        return self._check_claims(payload, moment)

    def _check_claims(self, payload: Mapping[str, Any], now: datetime) -> TokenClaims:
        identity = payload["sub"]
        jti = payload["jti"]
        if not isinstance(identity, str) or not isinstance(jti, str) or not jti:
            raise TokenError("malformed", "token has a malformed sub or jti claim")
        times: dict[str, datetime] = {}
        for name in ("iat", "nbf", "exp"):
            value = payload[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TokenError("malformed", f"token claim {name!r} is not a timestamp")
            try:
                times[name] = datetime.fromtimestamp(value, UTC)
            except (OverflowError, OSError, ValueError):
                raise TokenError("malformed", f"token claim {name!r} is out of range") from None
        scope = payload.get("cns")
        if scope is not None and not (
            isinstance(scope, list) and all(isinstance(c, str) for c in scope)
        ):
            raise TokenError("malformed", "token claim 'cns' is not a list of connection names")
        extra = payload.get("clm", {})
        if not isinstance(extra, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
        ):
            raise TokenError("malformed", "token claim 'clm' is not a string mapping")
        ref = token_ref_for(jti)
        if now > times["exp"] + LEEWAY:
            raise TokenError(
                "expired",
                f"token {ref} expired at {_iso(times['exp'])} ({_span(now - times['exp'])} ago); "
                f"issue a new one with: pathwarden token issue {identity}",
            )
        start = max(times["nbf"], times["iat"])
        if now + LEEWAY < start:
            raise TokenError(
                "not_yet_valid",
                f"token {ref} is not valid until {_iso(start)} (in {_span(start - now)}); "
                f"check the clocks of this gateway and the machine that issued it",
            )
        return TokenClaims(
            identity=identity,
            token_ref=ref,
            issued_at=times["iat"],
            expires_at=times["exp"],
            connections=tuple(scope) if scope is not None else None,
            claims=MappingProxyType(dict(extra)),
        )


def _create_key_file(path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        create_secret_file(path, pem)
    except OSError as exc:
        raise SigningKeyError(f"cannot create token signing key {path}: {exc.strerror}") from None


def _read_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        pem = read_secret_file(path)
    except LooseKeyFile as exc:
        raise SigningKeyError(f"token signing key {exc}") from None
    except OSError as exc:
        raise SigningKeyError(f"cannot read token signing key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise SigningKeyError(
            f"{path} is not a valid unencrypted PEM private key; move it aside to "
            f"generate a new one (all tokens issued so far will stop working)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} holds a {type(key).__name__}, expected an Ed25519 key")
    return key
