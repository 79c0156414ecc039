"""Who is connecting: gateway-issued tokens and the checks that turn them into identities."""

from pathwarden.identity.authenticate import Authenticator, AuthError, IssueError
from pathwarden.identity.tokens import (
    IssuedToken,
    SigningKeyError,
    TokenAuthority,
    TokenClaims,
    TokenError,
    token_ref_for,
)

__all__ = [
    "AuthError",
    "Authenticator",
    "IssueError",
    "IssuedToken",
    "SigningKeyError",
    "TokenAuthority",
    "TokenClaims",
    "TokenError",
    "token_ref_for",
]
